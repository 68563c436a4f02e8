//! The admin calls setup makes on services whose everyday calls live in `crate::aws`
//! (SQS, S3, DynamoDB, Scheduler): each a trait shaped around what setup does, with its
//! SDK implementation; they join their service's file in `aws/` once that exists.

pub mod dynamodb;
pub mod s3;
pub mod scheduler;
pub mod sqs;

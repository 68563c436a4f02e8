//! One file per AWS service the launcher uses.

pub mod dynamodb;

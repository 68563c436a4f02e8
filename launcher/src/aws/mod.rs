//! AWS, one file per service: a trait shaped around what `lease` does with the service,
//! its SDK implementation, and a fake for unit tests beside it.

pub mod iam;
pub mod lambda;
pub mod logs;
pub mod sns;

/// The stack's tag as a key and value, in the shape every service's tag builder takes.
pub type StackTag = (String, String);

//! The control socket: `leased status`, `leased complete` and `leased reload` talk to
//! the running daemon through it. [`protocol`] is the wire form both sides share;
//! [`server`] answers in the daemon.

pub mod protocol;
pub mod server;

pub use protocol::{ControlError, Reply, Request, SOCKET_NAME, request, socket_path};
pub use server::{bind, serve};

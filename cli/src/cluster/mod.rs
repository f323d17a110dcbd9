//! The cluster side of a session: the API client, connecting, permission checks, and the
//! session Lease.

pub mod access;
pub mod client;
pub mod connect;
pub mod lease;
pub mod selector;

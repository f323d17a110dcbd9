//! The listing stage: what the local tree holds, in the controller's entry shape, and how it
//! differs from the pod's.
//!
//! - [`walk`]: the walk, classifying each path from its lstat ([`stat`]) as synced or not.
//! - [`hashing`]: a file's entry, through the hash cache shared with the controller.
//! - [`partial`]: one path, or everything below a directory (the full listing is
//!   [`crate::sync::local_tree::LocalTree::scan`], which also feeds the safety net).
//! - [`local`]: what a listing says ([`local::Local`], [`local::Listing`]).
//! - [`diff`]: the local listing against the pod's: what to send and delete.

pub mod diff;
pub mod hashing;
pub mod local;
pub mod partial;
pub mod stat;
pub mod walk;

#[cfg(test)]
pub(crate) mod tests;

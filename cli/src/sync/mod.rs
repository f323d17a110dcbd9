//! Keeping the pod's tree equal to the local one, in three stages:
//!
//! - [`watch`]: which local paths may have changed — the watcher, and the safety net's
//!   periodic stat-only rescan for what it misses.
//! - [`listing`]: what the local tree holds (a walk, with file hashes through the hash cache
//!   shared with the controller), and how it differs from the pod's ([`listing::diff`]).
//! - [`transfer`]: sending the difference to the pod in patches.
//!
//! Across the stages: [`ignore`] decides what is synced at all, [`unsyncable`] names what cannot
//! be and why, [`local_tree`] is the local tree as the engine knows it (listings and the safety
//! net's stat picture, drawn in one walk), and [`engine`] drives listing, diff and transfer over
//! a controller session.

pub mod engine;
pub mod ignore;
pub mod listing;
pub mod local_tree;
pub mod subtree;
pub mod transfer;
pub mod unsyncable;
pub mod watch;

//! The `kdev` CLI as a library: each module is one concern of the developer-side loop, usable
//! (and tested) on its own.

pub mod access;
pub mod bootstrap;
pub mod client;
pub mod config;
pub mod debug;
pub mod deploy;
pub mod dev;
pub mod down;
pub mod forward;
pub mod hashcache;
#[cfg(target_os = "linux")]
pub mod inotify_tree;
pub mod lease;
pub mod rescan;
pub mod rewrite;
pub mod session;
pub mod sessions;
pub mod snapshot;
pub mod timings;
pub mod tree;
pub mod ui;
pub mod unsyncable;
pub mod watch;

//! Keeping the pod's tree equal to the local one: what is synced ([`ignore`]), what the local
//! tree holds ([`tree`], [`stat`], [`hashcache`], [`unsyncable`]), how it changes ([`watcher`],
//! [`inotify_tree`], and the safety net: [`snapshot`], [`rescan`]), how it differs from the
//! pod's ([`plan`]), and sending the difference ([`tar`], [`engine`]).

pub mod engine;
pub mod hashcache;
pub mod ignore;
#[cfg(target_os = "linux")]
pub mod inotify_tree;
pub mod plan;
pub mod rescan;
pub mod snapshot;
pub mod stat;
pub mod tar;
pub mod tree;
pub mod unsyncable;
pub mod watcher;

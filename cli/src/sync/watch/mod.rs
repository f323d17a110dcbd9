//! The watch stage: finding which local paths may have changed.
//!
//! - [`tree_watcher`]: the watcher ([`tree_watcher::TreeWatcher`]), debounced batches of paths
//!   from inotify (Linux, through [`inotify`]), notify's native watcher elsewhere, or polling.
//! - The safety net for what the watcher misses: [`rescan`], a stat-only rescan of the tree, run
//!   while idle as [`rescan_schedule`] says.

#[cfg(target_os = "linux")]
pub mod inotify;
pub mod rescan;
pub mod rescan_schedule;
pub mod tree_watcher;

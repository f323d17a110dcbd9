//! Warming the listing's hash cache while the session is quiet: the files patches wrote are
//! hashed once they have settled, so that the next listing (a restarted kdev, a reconnect)
//! reads none of them. Without it, the first restart after a 1 GB initial sync read the whole
//! gigabyte again: a file just written is hashed but not cached (see
//! [`kdev_protocol::hash_cache`]).
//!
//! The rules are a listing's ([`super::reconcile`]): the clock is read before the file is
//! opened, the hash is kept only if the file had settled by then, and its key is the fstat of
//! what was read. A path that is gone or no longer a regular file is left to the next listing.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kdev_protocol::hash_cache::{HashCache, SETTLE, StatKey};
use tokio::time::Instant;

use super::reconcile::{Unhashed, hash_regular_file};

/// How long after the last patch the written files are hashed: once they have settled.
const WARM_AFTER: Duration = SETTLE.saturating_add(Duration::from_millis(500));

/// The cache file is rewritten after a warm-up of at least this many files (or bytes): a
/// 100,000-file cache is megabytes, not worth writing for the one file of a save. Fewer stay
/// in memory until the next listing saves them.
const SAVE_AFTER_FILES: u64 = 1000;
const SAVE_AFTER_BYTES: u64 = 64 << 20;

/// The paths patches wrote since the last warm-up, and when to hash them.
#[derive(Debug, Default)]
pub(super) struct Settling {
    paths: BTreeSet<String>,
    due: Option<Instant>,
}

impl Settling {
    /// A patch wrote `applied` (files, symlinks, directories): hash them once the tree has been
    /// quiet for [`WARM_AFTER`].
    pub(super) fn wrote<'a>(&mut self, applied: impl IntoIterator<Item = &'a String>) {
        let before = self.paths.len();
        self.paths.extend(applied.into_iter().cloned());
        if self.paths.len() != before || self.due.is_some() {
            self.due = Some(Instant::now() + WARM_AFTER);
        }
    }

    /// When the warm-up is due (`None`: nothing to hash).
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Try again shortly (a warm-up is still running).
    pub(super) fn postpone(&mut self) {
        self.due = Some(Instant::now() + Duration::from_secs(1));
    }

    /// The paths to hash now.
    pub(super) fn take(&mut self) -> Vec<String> {
        self.due = None;
        std::mem::take(&mut self.paths).into_iter().collect()
    }
}

/// What one warm-up did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Warmed {
    /// Files read and hashed.
    pub files: u64,
    pub bytes: u64,
    /// Files the cache already knew.
    pub known: u64,
}

impl Warmed {
    /// Worth writing the cache file for.
    pub(super) fn worth_saving(&self) -> bool {
        self.files >= SAVE_AFTER_FILES || self.bytes >= SAVE_AFTER_BYTES
    }
}

/// Hash the regular files among `paths` (wire paths below `root`) the cache does not know,
/// and keep the hashes of those that had settled. Stops between files once `stop` is set.
pub(super) fn warm(
    root: &Path,
    paths: &[String],
    cache: &mut HashCache,
    stop: &AtomicBool,
) -> Warmed {
    let mut done = Warmed::default();
    for rel in paths {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let path = root.join(rel);
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !m.is_file() {
            continue;
        }
        let key = StatKey::of(&m);
        if cache.get(rel, &key).is_some() {
            done.known += 1;
            continue;
        }
        // Before the open: "settled" must hold from a moment before the read.
        let began = cache.now();
        if !key.settled(began) {
            // Changed again since the patch (the app writes there?): the next listing reads it.
            continue;
        }
        match hash_regular_file(&path, stop) {
            Ok((m, hash)) => {
                done.files += 1;
                done.bytes += m.len();
                cache.hashed(rel.clone(), StatKey::of(&m), hash, began);
            }
            Err(Unhashed::Stopped) => break,
            Err(Unhashed::Gone | Unhashed::Skip(_)) => {}
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::reconcile::list;
    use crate::serve::reconcile::tests::later;

    /// After a warm-up, a listing reads no file the patch wrote, and lists exactly what a
    /// listing with an empty cache lists (the slow twin).
    #[test]
    fn a_listing_after_a_warm_up_reads_nothing_and_agrees_with_a_cold_one() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mut written = Vec::new();
        for i in 0..50 {
            let rel = format!("pkg{}/f{i}.go", i % 7);
            fs::create_dir_all(root.join(format!("pkg{}", i % 7))).unwrap();
            fs::write(root.join(&rel), format!("package p // {i}")).unwrap();
            written.push(rel);
        }
        std::os::unix::fs::symlink("pkg0/f0.go", root.join("link")).unwrap();
        written.push("link".into());
        written.push("pkg1".into());
        written.push("gone.go".into());
        let stop = AtomicBool::new(false);

        // Just written: not settled, nothing kept.
        let mut cache = HashCache::default();
        let w = warm(root, &written, &mut cache, &stop);
        assert_eq!((w.files, cache.len()), (0, 0), "{w:?}");

        cache.set_clock(later);
        let w = warm(root, &written, &mut cache, &stop);
        assert_eq!((w.files, w.known, cache.len()), (50, 0, 50), "{w:?}");
        let again = warm(root, &written, &mut cache, &stop);
        assert_eq!((again.files, again.known), (0, 50));

        let warmed = list(root, &mut cache, &stop).unwrap();
        assert_eq!(warmed.cached, 50, "every written file came from the cache");
        let (hashed_before, _) = cache.counts();
        let cold = list(root, &mut HashCache::default(), &stop).unwrap();
        assert_eq!(warmed.entries, cold.entries);
        assert_eq!(cache.counts().0, hashed_before);
    }

    /// A file rewritten after the warm-up is read again by the next listing: the warm-up's
    /// hash stands only for what it read.
    #[test]
    fn a_rewrite_after_the_warm_up_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.go"), "aaaa").unwrap();
        let stop = AtomicBool::new(false);
        let mut cache = HashCache::default();
        cache.set_clock(later);
        warm(d.path(), &["a.go".into()], &mut cache, &stop);
        std::thread::sleep(Duration::from_millis(20));
        fs::write(d.path().join("a.go"), "bbbb").unwrap();
        let l = list(d.path(), &mut cache, &stop).unwrap();
        assert_eq!(l.cached, 0);
        assert_eq!(
            l.entries[0].hash.as_deref(),
            Some(kdev_protocol::hash_bytes(b"bbbb").as_str())
        );
    }

    #[test]
    fn the_warm_up_waits_for_the_tree_to_be_quiet() {
        let mut s = Settling::default();
        assert!(s.due().is_none());
        let t0 = Instant::now();
        s.wrote(&["a".to_string()]);
        let first = s.due().expect("due");
        assert!(first >= t0 + WARM_AFTER);
        std::thread::sleep(Duration::from_millis(5));
        s.wrote(&["b".to_string()]);
        assert!(
            s.due().expect("due") > first,
            "a later patch pushes it back"
        );
        assert_eq!(s.take(), ["a", "b"]);
        assert!(s.due().is_none());
        // A patch that wrote nothing schedules nothing.
        s.wrote(&[]);
        assert!(s.due().is_none());
    }
}

//! The hash cache both sides list their trees with: content hashes of files by wire path, reused
//! while the file's [`StatKey`] is unchanged, so that a listing reads only the files that
//! changed. The CLI lists the local tree with one ([`HashCache`]), the controller the pod's; both
//! keep theirs across restarts in the same file format ([`Store`]), so that a restarted
//! `kdev watch` or `serve` does not read unchanged files again.
//!
//! A cached hash is only worth keeping when the file had *settled* when it was hashed: its last
//! change at least [`SETTLE`] before the moment the hashing began. Timestamps are coarse (a
//! kernel tick; whole seconds on some file systems), so a same-size rewrite in the same tick as
//! the hashed write leaves the stat as it was; a write after a file settled always moves mtime or
//! ctime. Checking freshness when a cached hash is looked up instead is not enough: a file hashed
//! within a tick of its last write, then rewritten within that tick, looks settled and
//! unchanged a few seconds later. So a matching [`StatKey`] of a settled hash means the same
//! content, in this process or after a restart. Files changed recently are simply hashed again
//! each time, which costs little: they are the few being edited.

mod store;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::hash::ContentHash;

pub use store::{Store, write_atomically};

/// How long after its last change a file's timestamps can be trusted to move on the next write.
/// Two seconds covers every local file system's granularity.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What must be unchanged for a cached hash to hold: size, mtime, ctime, inode, device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
}

impl StatKey {
    #[cfg(unix)]
    pub fn of(m: &std::fs::Metadata) -> StatKey {
        use std::os::unix::fs::MetadataExt;
        StatKey {
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }

    /// Whether, seen at `now`, any later write would move mtime or ctime (see [`SETTLE`]).
    pub fn settled(&self, now: SystemTime) -> bool {
        settled(self.mtime, self.ctime, now)
    }
}

/// [`StatKey::settled`] for bare timestamps (seconds, nanoseconds).
pub fn settled(mtime: (i64, i64), ctime: (i64, i64), now: SystemTime) -> bool {
    let last = mtime.max(ctime);
    let last = if last.0 >= 0 {
        UNIX_EPOCH + Duration::new(last.0 as u64, last.1.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    };
    now.duration_since(last).is_ok_and(|d| d >= SETTLE)
}

/// File hashes by wire path, valid while the file's stat matches; only hashes of files that had
/// settled when their hashing began are kept.
///
/// The caller hashes: it looks a path up ([`Self::get`]), and on a miss reads the clock
/// ([`Self::now`]) *before* it opens the file, hashes it, and hands the hash back with the fstat
/// of what it read ([`Self::hashed`]). A full listing is a pass ([`Self::begin_pass`],
/// [`Self::end_pass`]): the paths it did not meet are dropped at its end.
#[derive(Debug)]
pub struct HashCache {
    map: HashMap<String, (StatKey, ContentHash)>,
    /// During a full listing: the paths met, to drop the others at its end.
    pass: Option<HashSet<String>>,
    hashed: u64,
    reused: u64,
    /// Where the cache is kept across restarts.
    persist: Option<Store>,
    /// Changed since it was loaded or saved.
    dirty: bool,
    /// The clock that decides whether a file is settled (tests move it forward).
    now: fn() -> SystemTime,
}

impl Default for HashCache {
    fn default() -> Self {
        HashCache {
            map: HashMap::new(),
            pass: None,
            hashed: 0,
            reused: 0,
            persist: None,
            dirty: false,
            now: SystemTime::now,
        }
    }
}

impl HashCache {
    /// The cache kept in `file` for the sync root `root`, holding what the file holds now.
    pub fn load(file: PathBuf, root: &Path) -> HashCache {
        let mut cache = HashCache::default();
        cache.persist_in(file, root);
        cache
    }

    /// Keep the cache in `file` across restarts, tagged with the sync root `root`: load what
    /// it holds now (nothing when it is missing, unreadable or another root's).
    pub fn persist_in(&mut self, file: PathBuf, root: &Path) {
        let (store, entries) = Store::open(file, root);
        if let Some(entries) = entries {
            self.map = entries
                .into_iter()
                .map(|(path, key, hash)| (path, (key, hash)))
                .collect();
        }
        self.persist = Some(store);
        self.dirty = false;
    }

    /// Write the cache to its file if it is kept in one and changed since it was loaded or saved.
    pub fn save(&mut self) -> io::Result<()> {
        let Some(store) = &self.persist else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        store.save(self.map.iter().map(|(p, (k, h))| (p.as_str(), k, h)))?;
        self.dirty = false;
        Ok(())
    }

    /// The cached hash of the file at `path` whose stat is now `key`, if it is still valid. A
    /// pass counts the path as met either way.
    pub fn get(&mut self, path: &str, key: &StatKey) -> Option<ContentHash> {
        if let Some(pass) = self.pass.as_mut() {
            pass.insert(path.to_string());
        }
        match self.map.get(path) {
            Some((k, hash)) if k == key => {
                self.reused += 1;
                Some(hash.clone())
            }
            _ => None,
        }
    }

    /// The cache's clock: read it before opening a file to hash, and hand the reading to
    /// [`Self::hashed`] ("settled" must hold from a moment before the content is read).
    pub fn now(&self) -> SystemTime {
        (self.now)()
    }

    /// The file at `path` was just hashed: `key` is the fstat of what was read, `began` the
    /// clock's reading before it was opened. The hash is kept only if the file had settled by
    /// then; otherwise any older one is dropped.
    pub fn hashed(&mut self, path: String, key: StatKey, hash: ContentHash, began: SystemTime) {
        self.hashed += 1;
        if key.settled(began) {
            self.map.insert(path, (key, hash));
            self.dirty = true;
        } else {
            self.forget(&path);
        }
    }

    /// Drop the hash of `path` (it is gone, or could not be read).
    pub fn forget(&mut self, path: &str) {
        self.dirty |= self.map.remove(path).is_some();
    }

    /// Start a full listing: paths it does not meet are dropped at [`Self::end_pass`].
    pub fn begin_pass(&mut self) {
        self.pass = Some(HashSet::new());
    }

    /// End a full listing: drop the paths it did not meet.
    pub fn end_pass(&mut self) {
        if let Some(met) = self.pass.take() {
            let before = self.map.len();
            self.map.retain(|p, _| met.contains(p));
            self.dirty |= self.map.len() != before;
        }
    }

    /// How many hashes it holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds no hash.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many files were hashed, and how many hashes were reused, so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.hashed, self.reused)
    }

    /// Replace the clock that decides whether a file has settled (tests move it forward).
    pub fn set_clock(&mut self, now: fn() -> SystemTime) {
        self.now = now;
    }
}

#[cfg(test)]
mod tests;

//! Content hashes of local files, reused while their stat says they are unchanged, so that a
//! listing after a reconnect (or the safety-net rescan's follow-up) reads only changed files.
//!
//! The key is (path, size, mtime, ctime, inode, dev). Timestamps are coarse, so a same-size
//! rewrite in the same tick as the hashed version leaves the key unchanged: a hash is therefore
//! only kept when the file was already [settled](crate::sync::tree::Stat::settled) (last changed at
//! least [`SETTLE`](kdev_protocol::hash_cache::SETTLE) before) at the moment it was hashed. Any write after
//! that moment moves mtime or ctime, so a matching key is the same content. Files changed
//! recently are simply hashed again each time, which costs little: they are the few being
//! edited.
//!
//! (Checking freshness at lookup time instead, as one could, is not enough: a file hashed within
//! a tick of its last write, then rewritten within that tick, looks settled and unchanged a few
//! seconds later.)
//!
//! The cache survives a restart of kdev: [`HashCache::persist_in`] loads it from a file (under
//! the user's cache directory, one per sync root, see [`cache_file`]) and [`HashCache::save`]
//! writes it back when it changed. Only settled hashes are ever in it, so a matching key after a
//! restart still means the same content ([`kdev_protocol::hash_cache`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kdev_protocol::hash_cache::{self, StatKey};
use kdev_protocol::{ContentHash, hash_reader};

use crate::sync::stat::{OpenError, Stat, open_regular};
use crate::sync::tree::Local;
use crate::sync::unsyncable::{Reason, Unsyncable};

type Key = StatKey;

fn key_of(s: &Stat) -> Key {
    StatKey {
        size: s.size,
        mtime: s.mtime,
        ctime: s.ctime,
        ino: s.ino,
        dev: s.dev,
    }
}

/// The cache file for the sync root `root`: `$XDG_CACHE_HOME/kdev/hashes/<hash of the root>`
/// (else `~/.cache/...`); `None` without a home.
pub fn cache_file(root: &Path) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let id = kdev_protocol::hash_bytes(root.as_os_str().as_encoded_bytes());
    Some(base.join("kdev/hashes").join(&id[..32]))
}

/// File hashes by wire path, valid while the file's stat matches.
#[derive(Debug)]
pub struct HashCache {
    map: HashMap<String, (Key, ContentHash)>,
    /// During a full listing: the paths met, to drop the others at its end.
    pass: Option<HashSet<String>>,
    hashed: u64,
    reused: u64,
    /// Where the cache is kept across restarts.
    persist: Option<hash_cache::Store>,
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
    /// The entry of the regular file at `abs` (wire path `wire`, lstat `stat`): its hash from the
    /// cache when the stat matches a settled hash, else read (without following a link or
    /// blocking on a FIFO).
    pub fn file_entry(&mut self, wire: String, abs: &Path, stat: &Stat) -> Local {
        if let Some(pass) = self.pass.as_mut() {
            pass.insert(wire.clone());
        }
        if let Some((key, hash)) = self.map.get(&wire)
            && *key == key_of(stat)
        {
            self.reused += 1;
            return Local::Entry(stat.entry(wire, Some(hash.clone())));
        }
        // Before the fstat: "settled" must hold from a moment before the content is read.
        let now = (self.now)();
        let (file, meta) = match open_regular(abs) {
            Ok(f) => f,
            Err(OpenError::Gone) => {
                self.forget(&wire);
                return Local::Absent;
            }
            Err(OpenError::NotRegular(reason)) => {
                self.forget(&wire);
                return Local::Unsyncable(Unsyncable::new(wire, reason));
            }
            Err(OpenError::Unreadable(e)) => {
                self.forget(&wire);
                let reason = Reason::UnreadableFile(Reason::io_text(&e));
                return Local::Unsyncable(Unsyncable::new(wire, reason));
            }
        };
        let hash = match hash_reader(&file) {
            Ok(h) => h,
            Err(e) => {
                self.forget(&wire);
                let reason = Reason::UnreadableFile(Reason::io_text(&e));
                return Local::Unsyncable(Unsyncable::new(wire, reason));
            }
        };
        self.hashed += 1;
        let stat = Stat::from_metadata(&meta, None);
        if stat.settled(now) {
            self.map.insert(wire.clone(), (key_of(&stat), hash.clone()));
            self.dirty = true;
        } else {
            self.forget(&wire);
        }
        Local::Entry(stat.entry(wire, Some(hash)))
    }

    /// Start a full listing: paths it does not meet are dropped at [`Self::end_pass`].
    pub(crate) fn begin_pass(&mut self) {
        self.pass = Some(HashSet::new());
    }

    pub(crate) fn end_pass(&mut self) {
        if let Some(met) = self.pass.take() {
            let before = self.map.len();
            self.map.retain(|p, _| met.contains(p));
            self.dirty |= self.map.len() != before;
        }
    }

    fn forget(&mut self, wire: &str) {
        self.dirty |= self.map.remove(wire).is_some();
    }

    /// Keep the cache in `file` across restarts, tagged with the sync root `root`: load what
    /// it holds now (nothing when it is missing, unreadable or another root's).
    pub fn persist_in(&mut self, file: PathBuf, root: &Path) {
        let (store, entries) = hash_cache::Store::open(file, root);
        if let Some(entries) = entries {
            self.map = entries
                .into_iter()
                .map(|(path, key, hash)| (path, (key, hash)))
                .collect();
        }
        self.persist = Some(store);
        self.dirty = false;
    }

    /// Write the cache to its file if it changed since it was loaded or saved.
    pub fn save(&mut self) -> std::io::Result<()> {
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

    /// How many files were read and hashed, and how many hashes were reused, so far.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64) {
        (self.hashed, self.reused)
    }

    /// Replace the clock that decides whether a file has settled (tests).
    #[cfg(test)]
    pub(crate) fn set_clock(&mut self, now: fn() -> SystemTime) {
        self.now = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn later() -> SystemTime {
        SystemTime::now() + crate::sync::stat::SETTLE + std::time::Duration::from_secs(1)
    }

    fn lookup(cache: &mut HashCache, abs: &Path) -> Option<String> {
        let stat = Stat::from_metadata(&fs::symlink_metadata(abs).unwrap(), None);
        match cache.file_entry("f.go".into(), abs, &stat) {
            Local::Entry(e) => e.hash,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_hash_is_reused_only_when_the_file_had_settled_when_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f.go");
        fs::write(&f, "aaaa").unwrap();
        let mut cache = HashCache::default();
        // Just written: hashed, not kept (a same-tick rewrite would keep its stat).
        let h = lookup(&mut cache, &f);
        assert_eq!(h, Some(kdev_protocol::hash_bytes(b"aaaa")));
        lookup(&mut cache, &f);
        assert_eq!(cache.counts(), (2, 0));
        // Seen after it settled: kept, and reused while the stat matches.
        cache.now = later;
        lookup(&mut cache, &f);
        assert_eq!(lookup(&mut cache, &f), h);
        assert_eq!(cache.counts(), (3, 1));
        // A rewrite moves the stat (in a later tick: the clock above pretends it had settled).
        std::thread::sleep(std::time::Duration::from_millis(50));
        fs::write(&f, "bbbb").unwrap();
        assert_eq!(
            lookup(&mut cache, &f),
            Some(kdev_protocol::hash_bytes(b"bbbb"))
        );
        assert_eq!(cache.counts(), (4, 1));
    }

    /// The cache is kept across restarts of kdev, and a file changed meanwhile is read again.
    #[test]
    fn the_cache_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let (f, g) = (tmp.path().join("f.go"), tmp.path().join("g.go"));
        fs::write(&f, "aaaa").unwrap();
        fs::write(&g, "gggg").unwrap();
        let file = tmp.path().join("cache/hashes");
        let lookup_as = |cache: &mut HashCache, wire: &str, abs: &Path| {
            let stat = Stat::from_metadata(&fs::symlink_metadata(abs).unwrap(), None);
            match cache.file_entry(wire.into(), abs, &stat) {
                Local::Entry(e) => e.hash,
                other => panic!("{other:?}"),
            }
        };
        let mut cache = HashCache::default();
        cache.persist_in(file.clone(), tmp.path());
        cache.now = later;
        lookup_as(&mut cache, "f.go", &f);
        lookup_as(&mut cache, "g.go", &g);
        cache.save().unwrap();
        // Changed while kdev was not running.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&g, "GGGG").unwrap();

        let mut restarted = HashCache::default();
        restarted.persist_in(file.clone(), tmp.path());
        assert_eq!(
            lookup_as(&mut restarted, "f.go", &f),
            Some(kdev_protocol::hash_bytes(b"aaaa"))
        );
        assert_eq!(
            lookup_as(&mut restarted, "g.go", &g),
            Some(kdev_protocol::hash_bytes(b"GGGG"))
        );
        assert_eq!(restarted.counts(), (1, 1), "only the changed file was read");
        // Another root's file is not used.
        let mut other = HashCache::default();
        other.persist_in(file, &tmp.path().join("elsewhere"));
        lookup_as(&mut other, "f.go", &f);
        assert_eq!(other.counts(), (1, 0));
    }
}

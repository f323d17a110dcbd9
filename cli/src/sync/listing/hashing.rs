//! Hashing a local file for the listing (listing stage), through the [`HashCache`] the CLI
//! shares with the controller ([`kdev_protocol::hash_cache`]): a file is read only when its stat
//! (size, mtime, ctime, inode, dev) does not match a hash kept from when it had settled, so that
//! a listing after a reconnect (or the safety-net rescan's follow-up) reads only changed files.
//!
//! The cache survives a restart of kdev: it is kept in a file under the user's cache directory,
//! one per sync root ([`cache_file`]).

use std::path::{Path, PathBuf};

use kdev_protocol::hash_cache::HashCache;
use kdev_protocol::hash_reader;

use crate::sync::listing::local::Local;
use crate::sync::listing::stat::{OpenError, Stat, open_regular};
use crate::sync::unsyncable::{Reason, Unsyncable};

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

/// The entry of the regular file at `abs` (wire path `wire`, lstat `stat`): its hash from
/// `cache` when the stat matches a settled hash, else read (without following a link or
/// blocking on a FIFO).
pub fn file_entry(cache: &mut HashCache, wire: String, abs: &Path, stat: &Stat) -> Local {
    if let Some(hash) = cache.get(&wire, &stat.key()) {
        return Local::Entry(stat.entry(wire, Some(hash)));
    }
    // Before the fstat: "settled" must hold from a moment before the content is read.
    let began = cache.now();
    let (file, meta) = match open_regular(abs) {
        Ok(f) => f,
        Err(OpenError::Gone) => {
            cache.forget(&wire);
            return Local::Absent;
        }
        Err(OpenError::NotRegular(reason)) => {
            cache.forget(&wire);
            return Local::Unsyncable(Unsyncable::new(wire, reason));
        }
        Err(OpenError::Unreadable(e)) => {
            cache.forget(&wire);
            let reason = Reason::UnreadableFile(Reason::io_text(&e));
            return Local::Unsyncable(Unsyncable::new(wire, reason));
        }
    };
    let hash = match hash_reader(&file) {
        Ok(h) => h,
        Err(e) => {
            cache.forget(&wire);
            let reason = Reason::UnreadableFile(Reason::io_text(&e));
            return Local::Unsyncable(Unsyncable::new(wire, reason));
        }
    };
    let stat = Stat::from_metadata(&meta, None);
    cache.hashed(wire.clone(), stat.key(), hash.clone(), began);
    Local::Entry(stat.entry(wire, Some(hash)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::SystemTime;

    fn later() -> SystemTime {
        SystemTime::now() + kdev_protocol::hash_cache::SETTLE + std::time::Duration::from_secs(1)
    }

    fn lookup(cache: &mut HashCache, abs: &Path) -> Option<String> {
        let stat = Stat::from_metadata(&fs::symlink_metadata(abs).unwrap(), None);
        match file_entry(cache, "f.go".into(), abs, &stat) {
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
        cache.set_clock(later);
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
            match file_entry(cache, wire.into(), abs, &stat) {
                Local::Entry(e) => e.hash,
                other => panic!("{other:?}"),
            }
        };
        let mut cache = HashCache::default();
        cache.persist_in(file.clone(), tmp.path());
        cache.set_clock(later);
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

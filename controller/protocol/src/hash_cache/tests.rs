//! Tests of the in-memory cache (the file format's are in `store.rs`).

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

fn key(size: u64, mtime: i64) -> StatKey {
    StatKey {
        size,
        mtime: (mtime, 0),
        ctime: (mtime, 0),
        ino: 7,
        dev: 1,
    }
}

/// Long after every key above changed.
fn later() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000)
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kdev-hash-cache-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn settled_means_two_seconds_past_the_last_change() {
    let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    assert!(settled((100, 0), (100, 0), t(102)));
    assert!(!settled((100, 0), (101, 0), t(102)), "ctime counts too");
    assert!(!settled((100, 0), (100, 0), t(101)));
}

#[test]
fn a_hash_is_kept_only_when_the_file_had_settled_when_its_hashing_began() {
    let mut cache = HashCache::default();
    let h = crate::hash_bytes(b"aaaa");
    // Hashed one second after the write: not kept (a same-tick rewrite would keep its stat).
    let began = UNIX_EPOCH + Duration::from_secs(101);
    cache.hashed("f.go".into(), key(4, 100), h.clone(), began);
    assert_eq!(cache.get("f.go", &key(4, 100)), None);
    // Hashed once settled: kept, and reused while the key matches.
    cache.hashed("f.go".into(), key(4, 100), h.clone(), later());
    assert_eq!(cache.get("f.go", &key(4, 100)), Some(h.clone()));
    assert_eq!(
        cache.get("f.go", &key(4, 200)),
        None,
        "a rewrite moves the key"
    );
    assert_eq!(cache.counts(), (2, 1));
    // Hashed again too soon after a change: the older hash goes too.
    cache.hashed("f.go".into(), key(4, 999), h, later());
    assert!(cache.is_empty());
}

#[test]
fn a_pass_drops_the_paths_it_did_not_meet() {
    let mut cache = HashCache::default();
    let h = crate::hash_bytes(b"x");
    for p in ["a", "b", "c"] {
        cache.hashed(p.into(), key(1, 100), h.clone(), later());
    }
    cache.begin_pass();
    assert!(cache.get("a", &key(1, 100)).is_some());
    assert!(cache.get("b", &key(2, 100)).is_none(), "met, but changed");
    cache.hashed("b".into(), key(2, 100), h, later());
    cache.end_pass();
    assert_eq!(cache.len(), 2);
    assert!(cache.get("c", &key(1, 100)).is_none());
}

/// The cache survives a restart, and only in its own sync root.
#[test]
fn the_cache_is_kept_across_restarts() {
    let tmp = TempDir::new();
    let (file, root) = (tmp.0.join("cache/hashes"), tmp.0.join("src"));
    let h = crate::hash_bytes(b"x");
    let mut cache = HashCache::load(file.clone(), &root);
    cache.set_clock(later);
    let began = cache.now();
    cache.hashed("a/b.go".into(), key(1, 100), h.clone(), began);
    cache.save().unwrap();
    let bytes = std::fs::read(&file).unwrap();
    // Nothing changed since: nothing written.
    std::fs::remove_file(&file).unwrap();
    cache.save().unwrap();
    assert!(!file.exists());
    std::fs::write(&file, bytes).unwrap();

    let mut restarted = HashCache::load(file.clone(), &root);
    assert_eq!(restarted.get("a/b.go", &key(1, 100)), Some(h));
    assert!(
        HashCache::load(file, &tmp.0).is_empty(),
        "another root's file"
    );
}

//! Listing the sync root: every file, directory and symlink (not followed), with BLAKE3 hashes
//! of file contents. Hashes are cached by (path, size, mtime, ctime, inode, device) so repeated
//! reconciles only read changed files. A hash is kept only when the file had settled (last
//! changed at least two seconds before) at the moment its hashing began: a same-size rewrite
//! within one timestamp tick of the hashed write would look unchanged, a later one cannot
//! ([`kdev_protocol::hash_cache`]). The cache is kept in `/kdev/run` across `serve` sessions,
//! so a restarted kdev finds the pod's tree listed without reading it; the files patches write
//! are hashed into it once they settle ([`super::warm`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use kdev_protocol::hash_cache::{HashCache, StatKey};
use kdev_protocol::{Entry, EntryKind, Refused, hash_reader};

use super::patch::is_temp_name;

fn interrupted() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "the session is ending")
}

/// A reader that fails once `stop` is set, so hashing a huge file ends promptly on SIGTERM.
struct Stoppable<'a, R>(R, &'a AtomicBool);

impl<R: Read> Read for Stoppable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.1.load(Ordering::Relaxed) {
            return Err(io::Error::other("the session is ending"));
        }
        self.0.read(buf)
    }
}

/// Why a file that `lstat` showed as regular was not hashed.
pub(super) enum Unhashed {
    /// It vanished since: not listed.
    Gone,
    /// The session is ending.
    Stopped,
    /// Listed as skipped, with this reason.
    Skip(String),
}

/// Hash the regular file at `path`, with the metadata of what was actually read. The name may
/// have been replaced since it was listed: it is opened without following a symlink and
/// without blocking (a FIFO would block `open` until a writer comes), then must be a regular
/// file.
pub(super) fn hash_regular_file(
    path: &Path,
    stop: &AtomicBool,
) -> Result<(fs::Metadata, String), Unhashed> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Unhashed::Gone,
            _ => Unhashed::Skip(format!("cannot open: {e}")),
        })?;
    let m = f
        .metadata()
        .map_err(|e| Unhashed::Skip(format!("cannot inspect: {e}")))?;
    if !m.is_file() {
        return Err(Unhashed::Skip(
            "not a regular file (replaced while the tree was listed)".into(),
        ));
    }
    let hash = hash_reader(Stoppable(f, stop)).map_err(|e| {
        if stop.load(Ordering::Relaxed) {
            Unhashed::Stopped
        } else {
            Unhashed::Skip(format!("cannot read: {e}"))
        }
    })?;
    Ok((m, hash))
}

/// The listing plus bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Refused>,
    pub cached: u32,
}

/// Walk `root` and list everything below it, sorted by path. Fails with
/// [`io::ErrorKind::Interrupted`] once `stop` is set (checked between entries).
pub(super) fn list(root: &Path, cache: &mut HashCache, stop: &AtomicBool) -> io::Result<Listing> {
    let meta = fs::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "sync root {} is not a directory",
            root.display()
        )));
    }
    // A pass: the hashes of files this listing does not meet are dropped at its end.
    cache.begin_pass();
    let mut walk = Walk {
        cache,
        stop,
        out: Listing::default(),
    };
    walk.run(root)?;
    let Walk { cache, mut out, .. } = walk;
    cache.end_pass();
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A directory being listed: the names in it not looked at yet.
struct Pending {
    dir: PathBuf,
    /// Its wire path and a `/` (empty for the root).
    prefix: String,
    /// Read in full when the directory is reached, so that a deep tree holds no descriptor
    /// per level; a read error ends the list.
    names: std::vec::IntoIter<io::Result<OsString>>,
}

impl Pending {
    fn read(dir: PathBuf, prefix: String) -> io::Result<Pending> {
        let mut names = Vec::new();
        for de in fs::read_dir(&dir)? {
            let end = de.is_err();
            names.push(de.map(|de| de.file_name()));
            if end {
                break;
            }
        }
        Ok(Pending {
            dir,
            prefix,
            names: names.into_iter(),
        })
    }
}

/// One listing in progress.
struct Walk<'a> {
    cache: &'a mut HashCache,
    stop: &'a AtomicBool,
    out: Listing,
}

impl Walk<'_> {
    /// List everything below `root`, parents before children, with an explicit stack of
    /// directories (not recursion: the tree may be as deep as paths can be).
    fn run(&mut self, root: &Path) -> io::Result<()> {
        let mut stack = vec![Pending::read(root.to_path_buf(), String::new())?];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.next() else {
                stack.pop();
                continue;
            };
            if self.stop.load(Ordering::Relaxed) {
                return Err(interrupted());
            }
            let name = match name {
                Ok(name) => name,
                Err(e) => {
                    self.out.skipped.push(Refused {
                        path: top.prefix.trim_end_matches('/').to_string(),
                        reason: format!("cannot read the rest of the directory: {e}"),
                    });
                    continue;
                }
            };
            let (dir, prefix) = (top.dir.clone(), top.prefix.clone());
            if let Some(sub) = self.entry(&dir, &prefix, &name)? {
                stack.push(sub);
            }
        }
        Ok(())
    }

    /// A subdirectory to descend into, or `None` when it is gone (replaced by a file) or
    /// unreadable (listed as skipped).
    fn subdir(&mut self, path: PathBuf, rel: &str) -> Option<Pending> {
        match Pending::read(path, format!("{rel}/")) {
            Ok(p) => Some(p),
            // Gone (or replaced by a file) since its parent was read.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                None
            }
            Err(e) => {
                self.out.skipped.push(Refused {
                    path: rel.to_string(),
                    reason: format!("cannot read directory: {e}"),
                });
                None
            }
        }
    }

    /// List the entry `name` of `dir` (wire path `prefix` + name). Returns the directory to
    /// descend into when it is one.
    fn entry(&mut self, dir: &Path, prefix: &str, name: &OsStr) -> io::Result<Option<Pending>> {
        let out = &mut self.out;
        let Some(name) = name.to_str() else {
            out.skipped.push(Refused {
                path: format!("{prefix}{}", name.to_string_lossy()),
                reason: "name is not valid UTF-8".into(),
            });
            return Ok(None);
        };
        if is_temp_name(name) {
            return Ok(None);
        }
        let rel = format!("{prefix}{name}");
        let path = dir.join(name);
        let m = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                out.skipped.push(Refused {
                    path: rel,
                    reason: e.to_string(),
                });
                return Ok(None);
            }
        };
        let mode = m.mode() & 0o7777;
        let ft = m.file_type();
        if ft.is_symlink() {
            let target = match fs::read_link(&path) {
                Ok(t) => t,
                // Gone since the directory was read: it is simply not listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    out.skipped.push(Refused {
                        path: rel,
                        reason: format!("cannot read the symlink: {e}"),
                    });
                    return Ok(None);
                }
            };
            let Some(target) = target.to_str() else {
                out.skipped.push(Refused {
                    path: rel,
                    reason: "symlink target is not valid UTF-8".into(),
                });
                return Ok(None);
            };
            out.entries.push(Entry {
                path: rel,
                kind: EntryKind::Symlink,
                size: target.len() as u64,
                mode,
                hash: None,
                target: Some(target.to_string()),
            });
        } else if ft.is_dir() {
            out.entries.push(Entry {
                path: rel.clone(),
                kind: EntryKind::Dir,
                size: 0,
                mode,
                hash: None,
                target: None,
            });
            return Ok(self.subdir(path, &rel));
        } else if ft.is_file() {
            self.file(rel, &path, m)?;
        } else {
            out.skipped.push(Refused {
                path: rel,
                reason: "not a regular file, directory or symlink".into(),
            });
        }
        Ok(None)
    }

    /// List the regular file at `path` (lstat `m`), hashing it unless the cache knows it.
    fn file(&mut self, rel: String, path: &Path, m: fs::Metadata) -> io::Result<()> {
        let (m, hash) = match self.cache.get(&rel, &StatKey::of(&m)) {
            Some(hash) => {
                self.out.cached += 1;
                (m, hash)
            }
            None => {
                // Before the open: "settled" must hold from a moment before the read.
                let began = self.cache.now();
                match hash_regular_file(path, self.stop) {
                    Ok((m, hash)) => {
                        self.cache
                            .hashed(rel.clone(), StatKey::of(&m), hash.clone(), began);
                        (m, hash)
                    }
                    Err(Unhashed::Gone) => {
                        self.cache.forget(&rel);
                        return Ok(());
                    }
                    Err(Unhashed::Stopped) => return Err(interrupted()),
                    Err(Unhashed::Skip(reason)) => {
                        self.cache.forget(&rel);
                        self.out.skipped.push(Refused { path: rel, reason });
                        return Ok(());
                    }
                }
            }
        };
        self.out.entries.push(Entry {
            path: rel,
            kind: EntryKind::File,
            size: m.size(),
            mode: m.mode() & 0o7777,
            hash: Some(hash),
            target: None,
        });
        Ok(())
    }
}

/// Split a listing into parts whose JSON stays under `budget` bytes even in the worst case
/// (every byte of a name escaped as `\u00XX`), each with at least one item; an empty listing
/// is one empty part.
pub(super) fn split(
    entries: Vec<Entry>,
    skipped: Vec<Refused>,
    budget: usize,
) -> Vec<(Vec<Entry>, Vec<Refused>)> {
    const OVERHEAD: usize = 200;
    let mut parts = vec![(Vec::new(), Vec::new())];
    let mut used = 0;
    let mut room = |cost: usize, parts: &mut Vec<(Vec<Entry>, Vec<Refused>)>| {
        let last = parts.last().expect("one part");
        if used + cost > budget && !(last.0.is_empty() && last.1.is_empty()) {
            parts.push((Vec::new(), Vec::new()));
            used = 0;
        }
        used += cost;
    };
    for e in entries {
        let cost = OVERHEAD + 6 * (e.path.len() + e.target.as_ref().map_or(0, String::len));
        room(cost, &mut parts);
        parts.last_mut().expect("one part").0.push(e);
    }
    for r in skipped {
        let cost = OVERHEAD + 6 * (r.path.len() + r.reason.len());
        room(cost, &mut parts);
        parts.last_mut().expect("one part").1.push(r);
    }
    parts
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn lists_and_caches() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/empty")).unwrap();
        fs::write(d.path().join("a/x.go"), "package a").unwrap();
        std::os::unix::fs::symlink("a/x.go", d.path().join("l")).unwrap();
        fs::write(d.path().join(".kdev-1-2.tmp"), "junk").unwrap();
        let mut cache = HashCache::default();
        let l = list(d.path(), &mut cache, &AtomicBool::new(false)).unwrap();
        let paths: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect();
        assert_eq!(
            paths,
            [
                ("a", EntryKind::Dir),
                ("a/empty", EntryKind::Dir),
                ("a/x.go", EntryKind::File),
                ("l", EntryKind::Symlink)
            ]
        );
        assert_eq!(
            l.entries[2].hash.as_deref(),
            Some(kdev_protocol::hash_bytes(b"package a").as_str())
        );
        assert_eq!(l.entries[3].target.as_deref(), Some("a/x.go"));
        // Files are fresh (just written), so the cache is not used yet.
        assert_eq!(l.cached, 0);
    }

    /// A clock past [`kdev_protocol::hash_cache::SETTLE`] from now: files written now look
    /// settled to a cache that reads it.
    pub(in crate::serve) fn later() -> std::time::SystemTime {
        std::time::SystemTime::now()
            + kdev_protocol::hash_cache::SETTLE
            + std::time::Duration::from_secs(1)
    }

    /// A hash is kept only when the file had settled when it was hashed: one taken within a
    /// tick of the last write would also stand for a same-size rewrite in that tick (same stat),
    /// so it is not reused later, even once the file looks settled.
    #[test]
    fn only_hashes_of_settled_files_are_kept() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f.go"), "aaaa").unwrap();
        let stop = AtomicBool::new(false);
        let mut cache = HashCache::default();
        let l = list(d.path(), &mut cache, &stop).unwrap();
        assert_eq!(
            (l.cached, cache.len()),
            (0, 0),
            "just written: hashed, not kept"
        );
        // Seconds later the file looks settled, but its first hash was not: read again.
        cache.set_clock(later);
        let l = list(d.path(), &mut cache, &stop).unwrap();
        assert_eq!((l.cached, cache.len()), (0, 1), "hashed again, now kept");
        let l = list(d.path(), &mut cache, &stop).unwrap();
        assert_eq!(l.cached, 1);
        // A rewrite moves the stat: hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(d.path().join("f.go"), "bbbb").unwrap();
        let l = list(d.path(), &mut cache, &stop).unwrap();
        assert_eq!(l.cached, 0);
        assert_eq!(
            l.entries[0].hash.as_deref(),
            Some(kdev_protocol::hash_bytes(b"bbbb").as_str())
        );
    }

    /// The cache survives the session: a new one loaded from the file reads nothing unchanged.
    #[test]
    fn the_cache_is_kept_across_sessions() {
        let d = tempfile::tempdir().unwrap();
        let (root, file) = (d.path().join("src"), d.path().join("run/reconcile-cache"));
        fs::create_dir_all(root.join("pkg")).unwrap();
        fs::write(root.join("pkg/a.go"), "package pkg").unwrap();
        fs::write(root.join("main.go"), "package main").unwrap();
        let stop = AtomicBool::new(false);
        let mut cache = HashCache::load(file.clone(), &root);
        cache.set_clock(later);
        let first = list(&root, &mut cache, &stop).unwrap();
        cache.save().unwrap();
        let mut again = HashCache::load(file.clone(), &root);
        let second = list(&root, &mut again, &stop).unwrap();
        assert_eq!(second.cached, 2, "both files from the saved cache");
        assert_eq!(first.entries, second.entries);
        // Another sync root's cache is not used.
        assert_eq!(HashCache::load(file, d.path()).len(), 0);
    }

    /// Lists `root` over and over in a thread while `change` runs; every listing must finish
    /// (within 5 s: a FIFO opened for reading blocks forever) and succeed.
    fn list_while(root: &Path, mut change: impl FnMut() + Send) {
        use std::sync::mpsc;
        use std::time::{Duration, Instant};
        let (tx, rx) = mpsc::channel();
        let root2 = root.to_path_buf();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let done2 = done.clone();
        // Not joined: if a listing blocks, the thread stays blocked and the test fails.
        std::thread::spawn(move || {
            let mut cache = HashCache::default();
            let stop = AtomicBool::new(false);
            while !done2.load(Ordering::Relaxed) {
                let r = list(&root2, &mut cache, &stop).map(|l| l.skipped.len());
                if tx.send(r).is_err() {
                    return;
                }
            }
        });
        std::thread::scope(|sc| {
            let done3 = done.clone();
            sc.spawn(move || {
                while !done3.load(Ordering::Relaxed) {
                    change();
                }
            });
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut n = 0;
            while Instant::now() < deadline {
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(Ok(_)) => n += 1,
                    Ok(Err(e)) => {
                        done.store(true, Ordering::Relaxed);
                        panic!("listing {n} failed: {e}");
                    }
                    Err(_) => {
                        done.store(true, Ordering::Relaxed);
                        panic!("listing {n} blocked for 5 s");
                    }
                }
            }
            done.store(true, Ordering::Relaxed);
        });
    }

    #[test]
    fn a_file_replaced_by_a_fifo_while_listed_is_skipped_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let (x, fifo, file) = (d.path().join("x"), d.path().join("f"), d.path().join("r"));
        fs::write(&x, "x").unwrap();
        list_while(d.path(), || {
            let _ = nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644));
            let _ = fs::rename(&fifo, &x);
            let _ = fs::write(&file, "x");
            let _ = fs::rename(&file, &x);
        });
    }

    #[test]
    fn a_symlink_that_vanishes_while_listed_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("l");
        list_while(d.path(), || {
            let _ = std::os::unix::fs::symlink("target", &l);
            let _ = fs::remove_file(&l);
        });
    }

    /// The walk keeps no stack frame (nor descriptor) per level: a tree as deep as a path can
    /// be is listed on a small stack. (The recursive walk used 1.9 of 2 MiB of stack at this
    /// depth in a release build; a debug build overflowed from depth ~385.)
    #[test]
    fn a_tree_as_deep_as_paths_allow_is_listed_on_a_small_stack() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        // As deep as PATH_MAX allows below this root, with room for a file name.
        let depth = (4000 - root.as_os_str().len()) / 2;
        let deepest = root.join(vec!["a"; depth].join("/"));
        fs::create_dir_all(&deepest).unwrap();
        fs::write(deepest.join("f"), "x").unwrap();
        let listing = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || list(&root, &mut HashCache::default(), &AtomicBool::new(false)))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(listing.skipped.is_empty(), "{:?}", listing.skipped);
        assert_eq!(listing.entries.len(), depth + 1);
        let last = listing.entries.last().unwrap();
        assert_eq!(last.kind, EntryKind::File);
        assert_eq!(last.path.len(), 2 * depth + 1);
    }

    #[test]
    fn split_keeps_order_and_budget() {
        let e = |p: &str| Entry {
            path: p.into(),
            kind: EntryKind::File,
            size: 0,
            mode: 0o644,
            hash: None,
            target: None,
        };
        let r = |p: &str| Refused {
            path: p.into(),
            reason: "r".into(),
        };
        assert_eq!(split(vec![], vec![], 1000), vec![(vec![], vec![])]);
        // Each item costs 206 bytes: two per part of 500.
        let parts = split(vec![e("a"), e("b"), e("c")], vec![r("x")], 500);
        assert_eq!(
            parts,
            vec![(vec![e("a"), e("b")], vec![]), (vec![e("c")], vec![r("x")])]
        );
        // An item over the budget still goes (alone).
        assert_eq!(split(vec![e("a"), e("b")], vec![], 10).len(), 2);
    }
}

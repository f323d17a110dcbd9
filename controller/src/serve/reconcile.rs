//! Listing the sync root: every file, directory and symlink (not followed), with BLAKE3 hashes
//! of file contents. Hashes are cached by (path, size, mtime, ctime, inode) so repeated
//! reconciles only read changed files; files modified in the last two seconds are never served
//! from the cache (a same-size rewrite within one timestamp tick would look unchanged).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

/// Content hashes of files seen before.
#[derive(Debug, Default)]
pub struct HashCache {
    map: HashMap<String, (Key, String)>,
}

/// The listing plus bookkeeping.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Refused>,
    pub cached: u32,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Walk `root` and list everything below it, sorted by path. Fails with
/// [`io::ErrorKind::Interrupted`] once `stop` is set (checked between entries).
pub fn list(root: &Path, cache: &mut HashCache, stop: &AtomicBool) -> io::Result<Listing> {
    let meta = fs::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "sync root {} is not a directory",
            root.display()
        )));
    }
    let mut out = Listing::default();
    let mut seen: HashMap<String, (Key, String)> = HashMap::new();
    let now = now_secs();
    walk(root, "", cache, &mut seen, now, stop, &mut out)?;
    cache.map = seen;
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    cache: &HashCache,
    seen: &mut HashMap<String, (Key, String)>,
    now: i64,
    stop: &AtomicBool,
    out: &mut Listing,
) -> io::Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if !prefix.is_empty() => {
            out.skipped.push(Refused {
                path: prefix.to_string(),
                reason: format!("cannot read directory: {e}"),
            });
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for de in rd {
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted());
        }
        let de = de?;
        let name = de.file_name();
        let Some(name) = name.to_str() else {
            out.skipped.push(Refused {
                path: format!("{prefix}{}", name.to_string_lossy()),
                reason: "name is not valid UTF-8".into(),
            });
            continue;
        };
        if is_temp_name(name) {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let path = de.path();
        let m = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.skipped.push(Refused {
                    path: rel,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let mode = m.mode() & 0o7777;
        let ft = m.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            let Some(target) = target.to_str() else {
                out.skipped.push(Refused {
                    path: rel,
                    reason: "symlink target is not valid UTF-8".into(),
                });
                continue;
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
            walk(&path, &format!("{rel}/"), cache, seen, now, stop, out)?;
        } else if ft.is_file() {
            let key = Key {
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                ino: m.ino(),
                dev: m.dev(),
            };
            let fresh = now - m.mtime().max(m.ctime()) < 2;
            let hash = match cache.map.get(&rel) {
                Some((k, h)) if *k == key && !fresh => {
                    out.cached += 1;
                    h.clone()
                }
                _ => match fs::File::open(&path).and_then(|f| hash_reader(Stoppable(f, stop))) {
                    Ok(h) => h,
                    Err(_) if stop.load(Ordering::Relaxed) => return Err(interrupted()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        out.skipped.push(Refused {
                            path: rel,
                            reason: format!("cannot read: {e}"),
                        });
                        continue;
                    }
                },
            };
            seen.insert(rel.clone(), (key, hash.clone()));
            out.entries.push(Entry {
                path: rel,
                kind: EntryKind::File,
                size: m.size(),
                mode,
                hash: Some(hash),
                target: None,
            });
        } else {
            out.skipped.push(Refused {
                path: rel,
                reason: "not a regular file, directory or symlink".into(),
            });
        }
    }
    Ok(())
}

/// Split a listing into parts whose JSON stays under `budget` bytes even in the worst case
/// (every byte of a name escaped as `\u00XX`), each with at least one item; an empty listing
/// is one empty part.
pub fn split(
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
mod tests {
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

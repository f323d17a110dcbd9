//! The local source tree: what is synced (ignore rules), what it holds (a listing in the same
//! shape as the controller's), and how it differs from the pod's (the reconcile plan).
//!
//! The listing never follows a symlink: the walk uses lstat (`d_type`, `fstatat` without
//! following), a single path is listed only when every parent is a real directory, and a
//! symlink is resolved against the links of the local tree with readlink only
//! ([`kdev_protocol::paths::resolve_symlink_target`]). What the pod cannot hold (sockets,
//! FIFOs, devices, links leaving the root, unreadable files and directories, names that are not
//! UTF-8) is classified as [`Unsyncable`] and left out, so that the rest keeps syncing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use kdev_protocol::paths::{check_symlink_target_form, resolve_symlink_target};
use kdev_protocol::{ContentHash, Entry, EntryKind, PathError, wire_path_from_relative};

use crate::hashcache::HashCache;
use crate::unsyncable::{Reason, Unsyncable};

/// Patterns never synced, whatever the ignore files say: VCS metadata and kdev's own state.
pub const ALWAYS_EXCLUDED: &[&str] = &[".git/", ".hg/", ".svn/", ".kdev/"];
/// The project-level ignore file, in `.gitignore` syntax, for what git tracks but the pod
/// does not need.
pub const KDEVIGNORE: &str = ".kdevignore";

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad exclude pattern `{pattern}`: {message}")]
    Pattern { pattern: String, message: String },
}

/// Decides whether a path under the sync root is synced: `.gitignore` files (at any depth, with
/// git's precedence: the deepest file wins), `.kdevignore`, the config's excludes, and
/// [`ALWAYS_EXCLUDED`].
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    root: PathBuf,
    /// Always-excluded, `.kdevignore` and config patterns, rooted at the sync root.
    base: Gitignore,
    /// `.gitignore` matchers by the directory that holds them.
    gitignores: BTreeMap<PathBuf, Gitignore>,
}

impl IgnoreRules {
    /// Load the rules for `root`: its `.kdevignore`, every `.gitignore` below it (skipping
    /// ignored directories), and `extra` patterns from the config.
    pub fn load(root: &Path, extra: &[String]) -> Result<IgnoreRules, TreeError> {
        let mut b = GitignoreBuilder::new(root);
        for p in ALWAYS_EXCLUDED
            .iter()
            .copied()
            .map(String::from)
            .chain(extra.iter().cloned())
        {
            b.add_line(None, &p).map_err(|e| TreeError::Pattern {
                pattern: p.clone(),
                message: e.to_string(),
            })?;
        }
        let kdevignore = root.join(KDEVIGNORE);
        if is_regular_file(&kdevignore)
            && let Some(e) = b.add(&kdevignore)
        {
            return Err(TreeError::Pattern {
                pattern: kdevignore.display().to_string(),
                message: e.to_string(),
            });
        }
        let base = b.build().map_err(|e| TreeError::Pattern {
            pattern: "<excludes>".into(),
            message: e.to_string(),
        })?;
        let mut rules = IgnoreRules {
            root: root.to_path_buf(),
            base,
            gitignores: BTreeMap::new(),
        };
        rules.load_gitignores(root)?;
        Ok(rules)
    }

    fn load_gitignores(&mut self, dir: &Path) -> Result<(), TreeError> {
        let file = dir.join(".gitignore");
        if is_regular_file(&file) {
            let (gi, _err) = Gitignore::new(&file);
            self.gitignores.insert(dir.to_path_buf(), gi);
        }
        let read = match std::fs::read_dir(dir) {
            Ok(r) => r,
            // Below the root, an unreadable directory is the listing's to report.
            Err(_) if dir != self.root => return Ok(()),
            Err(source) => {
                return Err(TreeError::Io {
                    path: dir.into(),
                    source,
                });
            }
        };
        for entry in read.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && !self.is_ignored(&path, true) {
                self.load_gitignores(&path)?;
            }
        }
        Ok(())
    }

    /// Pick up a `.gitignore` that was created, changed or deleted while watching.
    pub fn reload_gitignore(&mut self, file: &Path) {
        let Some(dir) = file.parent() else { return };
        if is_regular_file(file) {
            let (gi, _err) = Gitignore::new(file);
            self.gitignores.insert(dir.to_path_buf(), gi);
        } else {
            self.gitignores.remove(dir);
        }
    }

    /// Whether `path` (absolute, under the root) is excluded, itself or through a parent.
    pub fn is_ignored(&self, path: &Path, is_dir: bool) -> bool {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return true;
        };
        if rel.as_os_str().is_empty() {
            return false;
        }
        // A path is excluded when it or any of its parent directories is.
        let mut current = PathBuf::new();
        let components: Vec<_> = rel.components().collect();
        for (i, c) in components.iter().enumerate() {
            current.push(c);
            let last = i + 1 == components.len();
            if self.matches(&self.root.join(&current), if last { is_dir } else { true }) {
                return true;
            }
        }
        false
    }

    /// Whether `path` is excluded by its own name, its parents being synced (a walk's case: it
    /// only descends into synced directories).
    pub fn excludes(&self, path: &Path, is_dir: bool) -> bool {
        self.matches(path, is_dir)
    }

    fn matches(&self, path: &Path, is_dir: bool) -> bool {
        if self.base.matched(path, is_dir).is_ignore() {
            return true;
        }
        // The deepest .gitignore with an opinion decides (whitelists with `!` included).
        for (dir, gi) in self.gitignores.iter().rev() {
            if path.starts_with(dir) && path != dir {
                let m = gi.matched(path, is_dir);
                if m.is_ignore() {
                    return true;
                }
                if m.is_whitelist() {
                    return false;
                }
            }
        }
        false
    }
}

/// How long after its last change a file's timestamps can be trusted to move on the next write.
/// Timestamps are coarse (a kernel tick; whole seconds, or two, on some file systems): a write
/// in the same tick as the previous one leaves mtime and ctime as they were. Two seconds covers
/// every local file system's granularity (the controller's reconcile cache uses the same margin).
pub const SETTLE: Duration = Duration::from_secs(2);

/// lstat's view of one synced path: what the hash cache and the periodic rescan compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
    /// A symlink's target.
    pub target: Option<String>,
}

impl Stat {
    pub fn from_metadata(m: &Metadata, target: Option<String>) -> Stat {
        let ft = m.file_type();
        Stat {
            kind: if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::File
            },
            size: m.size(),
            mode: m.mode() & 0o7777,
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
            target,
        }
    }

    /// Whether, seen at `now`, any later write would show in mtime or ctime (see [`SETTLE`]).
    pub fn settled(&self, now: SystemTime) -> bool {
        let last = self.mtime.max(self.ctime);
        let last = if last.0 >= 0 {
            UNIX_EPOCH + Duration::new(last.0 as u64, last.1.clamp(0, 999_999_999) as u32)
        } else {
            UNIX_EPOCH
        };
        now.duration_since(last).is_ok_and(|d| d >= SETTLE)
    }

    /// The listing entry for this stat (`hash` for files).
    pub fn entry(&self, wire: String, hash: Option<ContentHash>) -> Entry {
        Entry {
            path: wire,
            kind: self.kind,
            size: match self.kind {
                EntryKind::Dir => 0,
                EntryKind::Symlink => self.target.as_ref().map_or(0, |t| t.len() as u64),
                EntryKind::File => self.size,
            },
            mode: self.mode,
            hash,
            target: self.target.clone(),
        }
    }
}

/// What one local path is, for syncing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// Synced: its entry.
    Entry(Entry),
    /// There, but it cannot be synced (the caller warns once, and treats it as absent).
    Unsyncable(Unsyncable),
    /// Not synced: gone, ignored, reached only through a symlink, or not under the root.
    Absent,
}

/// A listing: the synced entries (sorted by path) and what could not be synced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub unsyncable: Vec<Unsyncable>,
}

/// List the synced tree under `root` in the controller's [`Entry`] shape, sorted by path:
/// files with their BLAKE3 hash, symlinks with their target, and directories; plus the paths
/// that cannot be synced. Only an unreadable root is an error.
pub fn scan(root: &Path, rules: &IgnoreRules) -> Result<Listing, TreeError> {
    scan_cached(root, rules, &mut HashCache::default())
}

/// [`scan`], hashing only files whose stat is not in `cache`.
pub fn scan_cached(
    root: &Path,
    rules: &IgnoreRules,
    cache: &mut HashCache,
) -> Result<Listing, TreeError> {
    let mut out = Listing::default();
    cache.begin_pass();
    walk(root, rules, root, &mut |met| match met {
        Met::Unsyncable(u) => out.unsyncable.push(u),
        Met::Synced { wire, abs, stat } if stat.kind == EntryKind::File => {
            match cache.file_entry(wire, &abs, &stat) {
                Local::Entry(e) => out.entries.push(e),
                Local::Unsyncable(u) => out.unsyncable.push(u),
                Local::Absent => {}
            }
        }
        Met::Synced { wire, stat, .. } => out.entries.push(stat.entry(wire, None)),
    })?;
    cache.end_pass();
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    out.unsyncable.sort();
    Ok(out)
}

/// Everything below the synced directory `dir` (not `dir` itself), as [`scan`] lists it. A
/// directory that is gone has nothing below it.
pub fn scan_below(root: &Path, dir: &Path, rules: &IgnoreRules, cache: &mut HashCache) -> Listing {
    let mut out = Listing::default();
    let res = walk(root, rules, dir, &mut |met| match met {
        Met::Unsyncable(u) => out.unsyncable.push(u),
        Met::Synced { wire, abs, stat } if stat.kind == EntryKind::File => {
            match cache.file_entry(wire, &abs, &stat) {
                Local::Entry(e) => out.entries.push(e),
                Local::Unsyncable(u) => out.unsyncable.push(u),
                Local::Absent => {}
            }
        }
        Met::Synced { wire, stat, .. } => out.entries.push(stat.entry(wire, None)),
    });
    if let Err(TreeError::Io { source, .. }) = res
        && source.kind() != std::io::ErrorKind::NotFound
        && let Ok(rel) = dir.strip_prefix(root)
    {
        out.unsyncable.push(Unsyncable::new(
            rel,
            Reason::UnreadableDir(Reason::io_text(&source)),
        ));
    }
    out.entries.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// What the walk met.
pub(crate) enum Met {
    Synced {
        wire: String,
        abs: PathBuf,
        stat: Stat,
    },
    Unsyncable(Unsyncable),
}

/// Walk the synced tree below `dir` (the root, or a synced directory under it), parents before
/// children, never through a symlink. Problems with single paths are [`Met::Unsyncable`]; only
/// an unreadable `dir` is an error.
pub(crate) fn walk(
    root: &Path,
    rules: &IgnoreRules,
    dir: &Path,
    visit: &mut dyn FnMut(Met),
) -> Result<(), TreeError> {
    let io = |source| TreeError::Io {
        path: dir.into(),
        source,
    };
    let wire = match dir.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => String::new(),
        Ok(rel) => wire_path_from_relative(rel)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?,
        Err(_) => return Ok(()),
    };
    let entries = read_entries(dir).map_err(io)?;
    walk_entries(root, rules, &wire, entries, visit);
    Ok(())
}

fn read_entries(dir: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)?.collect()
}

fn walk_entries(
    root: &Path,
    rules: &IgnoreRules,
    dir_wire: &str,
    entries: Vec<std::fs::DirEntry>,
    visit: &mut dyn FnMut(Met),
) {
    let rel = |abs: &Path| abs.strip_prefix(root).unwrap_or(abs).to_path_buf();
    for de in entries {
        let abs = de.path();
        // lstat (fstatat without following), relative to the open directory.
        let meta = match de.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let reason = Reason::UnreadableFile(Reason::io_text(&e));
                visit(Met::Unsyncable(Unsyncable::new(rel(&abs), reason)));
                continue;
            }
        };
        // The parents are synced (the walk is below them): only this name can exclude it.
        if rules.excludes(&abs, meta.is_dir()) {
            continue;
        }
        let name = de.file_name();
        let Some(name) = name.to_str() else {
            visit(Met::Unsyncable(Unsyncable::new(
                rel(&abs),
                Reason::NameNotUtf8,
            )));
            continue;
        };
        let wire = if dir_wire.is_empty() {
            name.to_string()
        } else {
            format!("{dir_wire}/{name}")
        };
        match classify(root, &abs, wire, &meta) {
            None => {}
            Some(Met::Synced { wire, abs, stat }) if stat.kind == EntryKind::Dir => {
                // Listed before it is reported, so an unreadable directory is reported as such
                // rather than as an empty one (which would delete the pod's copy of its files).
                match read_entries(&abs) {
                    Ok(children) => {
                        visit(Met::Synced {
                            wire: wire.clone(),
                            abs,
                            stat,
                        });
                        walk_entries(root, rules, &wire, children, visit);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => visit(Met::Unsyncable(Unsyncable::new(
                        wire,
                        Reason::UnreadableDir(Reason::io_text(&e)),
                    ))),
                }
            }
            Some(met) => visit(met),
        }
    }
}

/// What the path at `abs` (wire path `wire`, lstat `meta`) is for syncing, without reading a
/// file's content; `None` when it vanished meanwhile.
pub(crate) fn classify(root: &Path, abs: &Path, wire: String, meta: &Metadata) -> Option<Met> {
    let ft = meta.file_type();
    let unsyncable = |wire: String, reason| Some(Met::Unsyncable(Unsyncable::new(wire, reason)));
    if ft.is_dir() || ft.is_file() {
        let stat = Stat::from_metadata(meta, None);
        return Some(Met::Synced {
            wire,
            abs: abs.to_path_buf(),
            stat,
        });
    }
    if ft.is_symlink() {
        let target = match std::fs::read_link(abs) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return unsyncable(wire, Reason::UnreadableFile(Reason::io_text(&e))),
        };
        let Some(target) = target.to_str() else {
            return unsyncable(wire, Reason::SymlinkTargetNotUtf8);
        };
        let target = target.to_string();
        let resolved = resolve_symlink_target(&wire, &target, |p| read_local_link(root, p));
        let resolved = resolved.and_then(|r| check_symlink_target_form(&wire, &target).map(|_| r));
        return match resolved {
            Ok(_) => {
                let stat = Stat::from_metadata(meta, Some(target));
                Some(Met::Synced {
                    wire,
                    abs: abs.to_path_buf(),
                    stat,
                })
            }
            Err(PathError::SymlinkAbsolute { .. }) => {
                unsyncable(wire, Reason::SymlinkAbsolute { target })
            }
            Err(PathError::SymlinkLoop { .. }) => unsyncable(wire, Reason::SymlinkLoop { target }),
            Err(PathError::SymlinkDotDotAfterName { suggestion, .. }) => {
                unsyncable(wire, Reason::SymlinkDotDot { target, suggestion })
            }
            Err(_) => unsyncable(wire, Reason::SymlinkOutside { target }),
        };
    }
    unsyncable(wire, special_reason(ft))
}

/// Why a path that is not a file, directory or symlink cannot be synced.
fn special_reason(ft: std::fs::FileType) -> Reason {
    if ft.is_fifo() {
        Reason::Fifo
    } else if ft.is_socket() {
        Reason::Socket
    } else if ft.is_block_device() {
        Reason::BlockDevice
    } else {
        Reason::CharDevice
    }
}

/// The target of the symlink at wire path `wire` in the local tree, `None` when it is not a
/// symlink. lstat and readlink only: the resolver hands in paths whose parents are already
/// resolved to real directories, so nothing is followed.
fn read_local_link(root: &Path, wire: &str) -> Option<String> {
    let path = root.join(wire);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    std::fs::read_link(&path)
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// Whether every parent of `rel` below `root` is a real directory (not a symlink): only then is
/// `root/rel` a path of the tree rather than one reached through a link.
pub fn parents_are_dirs(root: &Path, rel: &Path) -> bool {
    let mut dir = root.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(c) = components.next() {
        if components.peek().is_none() {
            return true;
        }
        dir.push(c);
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return false;
        }
    }
    true
}

/// The listing entry for one path (what the watcher reported), or why it is not synced.
pub fn entry_for(root: &Path, path: &Path, rules: &IgnoreRules) -> Local {
    entry_cached(root, path, rules, &mut HashCache::default())
}

/// [`entry_for`], hashing a file only when its stat is not in `cache`.
pub fn entry_cached(root: &Path, path: &Path, rules: &IgnoreRules, cache: &mut HashCache) -> Local {
    let Ok(rel) = path.strip_prefix(root) else {
        return Local::Absent;
    };
    if rel.as_os_str().is_empty() || !parents_are_dirs(root, rel) {
        return Local::Absent;
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Local::Absent,
        Err(e) => {
            let reason = Reason::UnreadableFile(Reason::io_text(&e));
            return Local::Unsyncable(Unsyncable::new(rel, reason));
        }
    };
    if rules.is_ignored(path, meta.is_dir()) {
        return Local::Absent;
    }
    let Ok(wire) = wire_path_from_relative(rel) else {
        return Local::Unsyncable(Unsyncable::new(rel, Reason::NameNotUtf8));
    };
    match classify(root, path, wire, &meta) {
        None => Local::Absent,
        Some(Met::Unsyncable(u)) => Local::Unsyncable(u),
        Some(Met::Synced { wire, abs, stat }) => match stat.kind {
            EntryKind::File => cache.file_entry(wire, &abs, &stat),
            EntryKind::Dir => match std::fs::read_dir(&abs) {
                Ok(_) => Local::Entry(stat.entry(wire, None)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Local::Absent,
                Err(e) => Local::Unsyncable(Unsyncable::new(
                    wire,
                    Reason::UnreadableDir(Reason::io_text(&e)),
                )),
            },
            EntryKind::Symlink => Local::Entry(stat.entry(wire, None)),
        },
    }
}

/// Why [`open_regular`] did not open a file.
#[derive(Debug)]
pub enum OpenError {
    /// Gone, or a symlink now (`O_NOFOLLOW`): the next event or rescan sees what it became.
    Gone,
    /// Not a regular file any more (a FIFO, a socket, ...): why it cannot be synced.
    NotRegular(Reason),
    /// It cannot be read.
    Unreadable(std::io::Error),
}

/// Open a regular file for reading, never following a symlink and never blocking (a path that
/// became a FIFO since it was listed would block a plain open until a writer came), and check
/// that what was opened is still a regular file. Returns the file and its fstat.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, Metadata), OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Err(OpenError::Gone);
        }
        Err(e) => return Err(OpenError::Unreadable(e)),
    };
    let meta = file.metadata().map_err(OpenError::Unreadable)?;
    if meta.is_dir() {
        return Err(OpenError::Gone); // a directory now: its events say so
    }
    if !meta.is_file() {
        return Err(OpenError::NotRegular(special_reason(meta.file_type())));
    }
    Ok((file, meta))
}

/// A regular file, not through a symlink (git does not follow a symlinked `.gitignore` either).
fn is_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// What to send so that the pod's tree equals the local one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// Files, symlinks and directories to send (in the tar), parents before children.
    pub send: Vec<String>,
    /// Paths to delete in the pod, children before parents.
    pub delete: Vec<String>,
}

impl SyncPlan {
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.delete.is_empty()
    }
}

/// Compare the local listing with the pod's. Files differ by content hash or executable bit;
/// a path whose kind changed is deleted and sent again; directories are sent only when missing.
pub fn plan(local: &[Entry], remote: &[Entry]) -> SyncPlan {
    let remote_by_path: BTreeMap<&str, &Entry> =
        remote.iter().map(|e| (e.path.as_str(), e)).collect();
    let local_paths: BTreeSet<&str> = local.iter().map(|e| e.path.as_str()).collect();
    let mut plan = SyncPlan::default();
    for l in local {
        match remote_by_path.get(l.path.as_str()) {
            None => plan.send.push(l.path.clone()),
            Some(r) if r.kind != l.kind => {
                plan.delete.push(l.path.clone());
                plan.send.push(l.path.clone());
            }
            Some(r) => {
                let differs = match l.kind {
                    EntryKind::File => {
                        r.hash != l.hash || (r.mode & 0o111 != 0) != (l.mode & 0o111 != 0)
                    }
                    EntryKind::Symlink => r.target != l.target,
                    EntryKind::Dir => false,
                };
                if differs {
                    plan.send.push(l.path.clone());
                }
            }
        }
    }
    for r in remote {
        if !local_paths.contains(r.path.as_str()) {
            plan.delete.push(r.path.clone());
        }
    }
    // Children before parents for deletion; a deleted directory takes its children with it, so
    // only its topmost path needs to be sent.
    plan.delete.sort_by(|a, b| b.cmp(a));
    let all = plan.delete.clone();
    plan.delete.retain(|p| {
        !all.iter()
            .any(|q| q != p && p.starts_with(&format!("{q}/")))
    });
    plan.delete
        .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    plan.send.sort();
    plan
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn file(path: &str, hash: &str, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            size: 1,
            mode,
            hash: Some(hash.into()),
            target: None,
        }
    }
    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            size: 0,
            mode: 0o755,
            hash: None,
            target: None,
        }
    }

    #[test]
    fn plan_sends_what_differs_and_deletes_what_is_gone() {
        let local = vec![
            file("main.go", "h1", 0o644),
            dir("handlers"),
            file("handlers/ping.go", "h2-new", 0o644),
            file("run.sh", "h3", 0o755),
            dir("newdir"),
            file("newdir/x.go", "h4", 0o644),
        ];
        let remote = vec![
            file("main.go", "h1", 0o600), // mode differs but not the exec bit: same
            dir("handlers"),
            file("handlers/ping.go", "h2-old", 0o644),
            file("run.sh", "h3", 0o644), // lost its exec bit
            dir("old"),
            file("old/a.go", "x", 0o644),
            file("old/deep/b.go", "x", 0o644),
            file("stale.go", "x", 0o644),
        ];
        let p = plan(&local, &remote);
        assert_eq!(
            p.send,
            vec!["handlers/ping.go", "newdir", "newdir/x.go", "run.sh"]
        );
        assert_eq!(p.delete, vec!["stale.go", "old"]);
    }

    #[test]
    fn kind_change_is_delete_then_send() {
        let local = vec![file("x", "h", 0o644)];
        let remote = vec![dir("x"), file("x/inner", "h", 0o644)];
        let p = plan(&local, &remote);
        assert_eq!(p.delete, vec!["x"]);
        assert_eq!(p.send, vec!["x"]);
    }

    #[test]
    fn identical_trees_need_nothing() {
        let t = vec![dir("a"), file("a/b.go", "h", 0o644)];
        assert!(plan(&t, &t).is_empty());
    }

    #[test]
    fn scan_respects_gitignore_kdevignore_and_excludes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join(".git/objects")).unwrap();
        fs::write(root.join(".git/HEAD"), "ref").unwrap();
        fs::write(root.join(".gitignore"), "/bin/\n*.log\n").unwrap();
        fs::write(root.join(".kdevignore"), "docs/\n").unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/app"), "x").unwrap();
        fs::create_dir_all(root.join("docs")).unwrap();
        fs::write(root.join("docs/a.md"), "x").unwrap();
        fs::create_dir_all(root.join("pkg/sub")).unwrap();
        fs::write(root.join("pkg/.gitignore"), "generated.go\n!keep.log\n").unwrap();
        fs::write(root.join("pkg/generated.go"), "x").unwrap();
        fs::write(root.join("pkg/keep.log"), "x").unwrap();
        fs::write(root.join("pkg/drop.log"), "x").unwrap();
        fs::write(root.join("pkg/sub/ok.go"), "package sub").unwrap();
        fs::write(root.join("main.go"), "package main").unwrap();
        fs::write(root.join("notes.tmp"), "x").unwrap();
        std::os::unix::fs::symlink("main.go", root.join("link.go")).unwrap();

        let rules = IgnoreRules::load(root, &["*.tmp".to_string()]).unwrap();
        let listing = scan(root, &rules).unwrap().entries;
        let paths: Vec<_> = listing.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                ".gitignore",
                ".kdevignore",
                "link.go",
                "main.go",
                "pkg",
                "pkg/.gitignore",
                "pkg/keep.log",
                "pkg/sub",
                "pkg/sub/ok.go"
            ]
        );
        let main = listing.iter().find(|e| e.path == "main.go").unwrap();
        assert_eq!(
            main.hash.as_deref(),
            Some(
                kdev_protocol::hash_bytes(b"package main")
                    .to_string()
                    .as_str()
            )
        );
        let link = listing.iter().find(|e| e.path == "link.go").unwrap();
        assert_eq!(link.target.as_deref(), Some("main.go"));
    }

    /// Tests run as root, which reads anything: run `f` in a thread whose effective
    /// capabilities lack DAC override (capabilities are per thread on Linux), so that mode 000
    /// means what it means for a developer. Not root: nothing to drop.
    pub(crate) fn without_dac_override<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                if unsafe { libc::geteuid() } == 0 {
                    #[repr(C)]
                    struct Header {
                        version: u32,
                        pid: i32,
                    }
                    #[repr(C)]
                    #[derive(Default, Clone, Copy)]
                    struct Data {
                        effective: u32,
                        permitted: u32,
                        inheritable: u32,
                    }
                    const V3: u32 = 0x2008_0522;
                    const CAP_DAC_OVERRIDE: u32 = 1;
                    const CAP_DAC_READ_SEARCH: u32 = 2;
                    let mut h = Header {
                        version: V3,
                        pid: 0,
                    };
                    let mut d = [Data::default(); 2];
                    unsafe {
                        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
                        d[0].effective &= !(1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH);
                        assert_eq!(libc::syscall(libc::SYS_capset, &h, d.as_ptr()), 0);
                    }
                }
                f()
            })
            .join()
            .unwrap()
        })
    }

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    /// A tree with one of each thing that cannot be synced, next to things that can.
    fn awkward_tree() -> (tempfile::TempDir, PathBuf, std::os::unix::net::UnixListener) {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("main.go"), "package main").unwrap();
        symlink("../..", root.join("a/b/top")).unwrap(); // the root itself: fine
        symlink("main.go", root.join("ok")).unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        symlink("../outside", root.join("up")).unwrap();
        symlink("a/b/top/..", root.join("x")).unwrap(); // outside, through `top`
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink(OsStr::from_bytes(b"t\xff"), root.join("badtarget")).unwrap();
        mkfifo(&root.join("a/pipe"));
        let sock = std::os::unix::net::UnixListener::bind(root.join("app.sock")).unwrap();
        fs::write(root.join(OsStr::from_bytes(b"bad\xff.go")), "x").unwrap();
        fs::create_dir(root.join(OsStr::from_bytes(b"dir\xfe"))).unwrap();
        fs::write(root.join(OsStr::from_bytes(b"dir\xfe/inner.go")), "x").unwrap();
        fs::write(root.join("secret.go"), "x").unwrap();
        fs::set_permissions(root.join("secret.go"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::create_dir(root.join("private")).unwrap();
        fs::write(root.join("private/p.go"), "x").unwrap();
        fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o000)).unwrap();
        (tmp, root, sock)
    }

    fn unsyncable_of(listing: &Listing) -> Vec<(String, String)> {
        listing
            .unsyncable
            .iter()
            .map(|u| (u.path.to_string_lossy().into_owned(), u.reason.to_string()))
            .collect()
    }

    #[test]
    fn scan_names_what_cannot_be_synced_and_lists_the_rest() {
        let (_tmp, root, _sock) = awkward_tree();
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        let listing = without_dac_override(|| scan(&root, &rules)).unwrap();
        let paths: Vec<_> = listing.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["a", "a/b", "a/b/top", "main.go", "ok"]);
        let denied = "permission denied".to_string();
        assert_eq!(
            unsyncable_of(&listing),
            vec![
                ("a/pipe".into(), "a FIFO (named pipe)".into()),
                ("app.sock".into(), "a socket".into()),
                (
                    "badtarget".into(),
                    "symlink whose target is not valid UTF-8".into()
                ),
                // Sorted by bytes: 0xff after `t`.
                ("bad\u{fffd}.go".into(), "name is not valid UTF-8".into()),
                ("dir\u{fffd}".into(), "name is not valid UTF-8".into()),
                (
                    "etc".into(),
                    "symlink to /etc, outside the sync root".into()
                ),
                (
                    "loop1".into(),
                    "symlink to loop2, a loop of symlinks".into()
                ),
                (
                    "loop2".into(),
                    "symlink to loop1, a loop of symlinks".into()
                ),
                (
                    "private".into(),
                    format!("cannot list the directory: {denied}")
                ),
                (
                    "secret.go".into(),
                    format!("cannot read the file: {denied}")
                ),
                (
                    "up".into(),
                    "symlink to ../outside, outside the sync root".into()
                ),
                (
                    "x".into(),
                    "symlink to a/b/top/.., outside the sync root".into()
                ),
            ]
        );
        // Each suggested pattern excludes its path, and nothing else.
        let patterns: Vec<String> = listing
            .unsyncable
            .iter()
            .map(|u| u.exclude_pattern())
            .collect();
        let rules = IgnoreRules::load(&root, &patterns).unwrap();
        let again = without_dac_override(|| scan(&root, &rules)).unwrap();
        assert!(again.unsyncable.is_empty(), "{:?}", again.unsyncable);
        assert_eq!(again.entries, listing.entries);
    }

    #[test]
    fn a_single_path_is_classified_like_the_scan_does() {
        let (_tmp, root, _sock) = awkward_tree();
        std::os::unix::fs::symlink("a", root.join("alias")).unwrap();
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        let reason =
            |p: &str| match without_dac_override(|| entry_for(&root, &root.join(p), &rules)) {
                Local::Unsyncable(u) => u.reason.to_string(),
                other => format!("{other:?}"),
            };
        assert_eq!(reason("a/pipe"), "a FIFO (named pipe)");
        assert_eq!(reason("etc"), "symlink to /etc, outside the sync root");
        assert_eq!(
            reason("secret.go"),
            "cannot read the file: permission denied"
        );
        assert_eq!(
            reason("private"),
            "cannot list the directory: permission denied"
        );
        // Reached through a symlink: not a path of the tree.
        assert_eq!(
            entry_for(&root, &root.join("alias/pipe"), &rules),
            Local::Absent
        );
        assert_eq!(
            entry_for(&root, &root.join("alias/b"), &rules),
            Local::Absent
        );
        assert_eq!(
            entry_for(&root, &root.join("gone.go"), &rules),
            Local::Absent
        );
        let Local::Entry(e) = entry_for(&root, &root.join("alias"), &rules) else {
            panic!()
        };
        assert_eq!(
            (e.kind, e.target.as_deref()),
            (EntryKind::Symlink, Some("a"))
        );
        let Local::Entry(e) = entry_for(&root, &root.join("main.go"), &rules) else {
            panic!()
        };
        assert_eq!(e.hash, Some(kdev_protocol::hash_bytes(b"package main")));
    }

    /// An unreadable subdirectory used to fail loading the rules (and so `kdev watch`).
    #[test]
    fn rules_load_past_an_unreadable_directory() {
        let (_tmp, root, _sock) = awkward_tree();
        without_dac_override(|| IgnoreRules::load(&root, &[])).unwrap();
    }

    /// A path listed as a file that is a FIFO by the time it is opened (for hashing or for the
    /// tar): a plain open would wait for a writer forever.
    #[test]
    fn opening_a_file_that_became_a_fifo_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.go");
        mkfifo(&path);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(match open_regular(&path) {
                Err(OpenError::NotRegular(r)) => Some(r),
                _ => None,
            });
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("open blocked on the FIFO");
        assert_eq!(got, Some(Reason::Fifo));
    }
}

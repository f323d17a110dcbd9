//! Watching a directory tree with inotify, one watch per directory inode (Linux only; the watch
//! stage's backend for [`crate::sync::watch::tree_watcher`]).
//!
//! # Why not notify's inotify backend
//!
//! inotify gives one watch descriptor (wd) per inode: adding a watch for a second name of an
//! already-watched directory returns the *same* wd. notify 8's backend keeps one path per wd
//! (`paths: HashMap<WatchDescriptor, PathBuf>`) and one wd per path, so:
//!
//! - watching a symlink to a watched directory (`alias -> handlers`; notify adds watches without
//!   `IN_DONT_FOLLOW`, and its caller had stat'ed the path with `is_dir()`, which follows links)
//!   re-labels `handlers`' wd as `alias`, and removing `alias` (its `IN_DELETE`) calls
//!   `inotify_rm_watch` on that shared wd: `handlers` is blind from then on;
//! - on `IN_DELETE`/`IN_MOVED_FROM` it removes the kernel watch of that name (and, recursively,
//!   every watch whose path starts with it), whatever other name still reaches the inode.
//!
//! Neither can be fixed from outside: the path↔wd maps are private and the removal happens inside
//! its event loop. So this module does the bookkeeping itself, on the `inotify` crate.
//!
//! # Mechanism
//!
//! - A watch belongs to a directory inode: the kernel's wd *is* the (dev, inode) identity, and
//!   each wd carries the set of names (absolute paths) that currently reach it. An event on a wd
//!   is reported under every one of its names.
//! - Symlinks are never followed: directories are found with `d_type`/lstat, and every watch is
//!   added with `IN_DONT_FOLLOW | IN_ONLYDIR`, so even a directory swapped for a symlink between
//!   the lstat and the add is refused by the kernel, not watched through.
//! - Removing a name never removes a watch: `IN_DELETE`/`IN_MOVED_FROM` of a child only detaches
//!   that name (and the names below it). A watch left with no name at the end of a read (a
//!   directory moved out of the tree) is removed then; one that is deleted is removed by the
//!   kernel (`IN_IGNORED`). A rename is `IN_MOVED_FROM` + `IN_MOVED_TO` in the same read: the
//!   new name re-walks the directory, the kernel hands back the existing wds, and they get their
//!   new names before anything is collected.
//! - A created or moved-in directory is watched (with its synced subdirectories) as soon as its
//!   event is read, and reported as changed: what was created in it before the watch existed is
//!   found by the sync loop's rescan of that directory.
//! - `IN_Q_OVERFLOW` (the kernel dropped events): every name is forgotten and the tree re-walked
//!   (the kernel returns the existing wds; new directories get watches; watches left without a
//!   name are removed), and the root is reported, which the sync loop takes as "rescan
//!   everything".
//! - A `.gitignore` event reloads that file's rules before deciding what to watch, and re-walks
//!   its directory so that directories it no longer ignores get watches.
//! - Only synced directories are watched; directories that become ignored keep their watch until
//!   they go away (their events are filtered by the caller).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::sync::ignore::IgnoreRules;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// `fs.inotify.max_user_watches` reached.
    #[error("inotify watch limit reached")]
    Limit,
    #[error("cannot watch {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What one read of the queue found.
#[derive(Debug, Default)]
pub struct Changes {
    /// Paths that may have changed (not filtered by the ignore rules), in event order.
    pub paths: Vec<PathBuf>,
    /// The kernel's queue overflowed: the root is in `paths`, and the watches were re-walked.
    pub overflowed: bool,
    /// Watching a new directory failed (e.g. the watch limit); the others are watched.
    pub error: Option<WatchError>,
}

/// One watched directory inode.
#[derive(Debug)]
struct Watched {
    wd: WatchDescriptor,
    /// (dev, inode) as seen when the watch was added (for diagnostics: the wd is the identity).
    inode: (u64, u64),
    /// Every name that reaches it (several with bind mounts, or in the middle of a rename).
    names: BTreeSet<PathBuf>,
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    // Never through a symlink, only directories, and no events for files already unlinked.
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::EXCL_UNLINK);

/// The watches of one tree, on one inotify instance (non-blocking).
pub struct DirWatches {
    inotify: Inotify,
    root: PathBuf,
    /// By wd number.
    watches: HashMap<i32, Watched>,
    /// Every known name of a watched directory → its wd number.
    names: BTreeMap<PathBuf, i32>,
    buffer: Vec<u8>,
}

impl AsRawFd for DirWatches {
    fn as_raw_fd(&self) -> RawFd {
        self.inotify.as_raw_fd()
    }
}

/// An event, copied out of the read buffer.
struct Raw {
    wd: i32,
    mask: EventMask,
    name: Option<OsString>,
}

impl DirWatches {
    /// An inotify instance for the tree at `root` (nothing watched yet: see [`Self::watch_tree`]).
    pub fn new(root: &Path) -> io::Result<DirWatches> {
        Ok(DirWatches {
            inotify: Inotify::init()?,
            root: root.to_path_buf(),
            watches: HashMap::new(),
            names: BTreeMap::new(),
            // Room for many events per read (each is 16 bytes plus its name).
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Watch `dir` and every synced directory below it, never through a symlink.
    pub fn watch_tree(&mut self, dir: &Path, rules: &IgnoreRules) -> Result<(), WatchError> {
        // A stack rather than recursion: trees can be deep.
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if !self.watch_dir(&d)? {
                continue;
            }
            // Listed after the watch exists, so nothing created in between is missed.
            let Ok(read) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in read.flatten() {
                // `file_type` is lstat's view (d_type): a symlink is never a directory here.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let path = entry.path();
                    if !rules.is_ignored(&path, true) {
                        stack.push(path);
                    }
                }
            }
        }
        Ok(())
    }

    /// Watch one directory under the name `path`; `false` when it is not (or no longer) a
    /// directory that can be watched.
    fn watch_dir(&mut self, path: &Path) -> Result<bool, WatchError> {
        let wd = match self.inotify.watches().add(path, MASK) {
            Ok(wd) => wd,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Err(WatchError::Limit),
            // Gone, not a directory, a symlink (ONLYDIR + DONT_FOLLOW), or unreadable (the scan
            // reports those): nothing to watch.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES | libc::ELOOP)
                ) =>
            {
                return Ok(false);
            }
            Err(source) => {
                return Err(WatchError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        let id = wd.get_watch_descriptor_id();
        let inode = std::fs::symlink_metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or_default();
        // The name may have pointed at another inode until now (a directory replaced by another).
        if let Some(old) = self.names.get(path).copied()
            && old != id
        {
            self.detach(path);
        }
        let watched = self.watches.entry(id).or_insert_with(|| Watched {
            wd,
            inode,
            names: BTreeSet::new(),
        });
        watched.names.insert(path.to_path_buf());
        self.names.insert(path.to_path_buf(), id);
        Ok(true)
    }

    /// Detach the name `path` and every name below it (their watches stay, see the module docs).
    fn forget_names_under(&mut self, path: &Path) {
        let doomed: Vec<PathBuf> = self
            .names
            .range(path.to_path_buf()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in doomed {
            self.detach(&p);
        }
    }

    fn detach(&mut self, name: &Path) {
        if let Some(id) = self.names.remove(name)
            && let Some(w) = self.watches.get_mut(&id)
        {
            w.names.remove(name);
        }
    }

    /// Remove the kernel watches of directories no name reaches any more.
    fn drop_nameless(&mut self) {
        let nameless: Vec<i32> = self
            .watches
            .iter()
            .filter(|(_, w)| w.names.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in nameless {
            if let Some(w) = self.watches.remove(&id) {
                tracing::debug!(
                    dev = w.inode.0,
                    ino = w.inode.1,
                    "unwatching a directory no name reaches"
                );
                // Fails only when the kernel already dropped it (deleted directory).
                let _ = self.inotify.watches().remove(w.wd);
            }
        }
    }

    /// Forget every name and walk the tree again (after an overflow).
    fn resync(&mut self, rules: &IgnoreRules) -> Result<(), WatchError> {
        self.names.clear();
        for w in self.watches.values_mut() {
            w.names.clear();
        }
        let root = self.root.clone();
        let res = self.watch_tree(&root, rules);
        self.drop_nameless();
        res
    }

    /// The names of all watched directories.
    #[cfg(test)]
    fn watched_dirs(&self) -> Vec<PathBuf> {
        self.names.keys().cloned().collect()
    }

    /// The (dev, inode) of the directory watched under `name`, if it is watched.
    #[cfg(test)]
    fn inode_of(&self, name: &Path) -> Option<(u64, u64)> {
        let id = self.names.get(name)?;
        self.watches.get(id).map(|w| w.inode)
    }

    /// Read everything queued, without blocking, and keep the watches in step with the tree.
    /// `Err(WouldBlock)` when nothing was queued. `rules` is updated for changed `.gitignore`s.
    pub fn read_changes(&mut self, rules: &mut IgnoreRules) -> io::Result<Changes> {
        let mut raw = Vec::new();
        loop {
            match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => {
                    let before = raw.len();
                    raw.extend(events.map(|e| Raw {
                        wd: e.wd.get_watch_descriptor_id(),
                        mask: e.mask,
                        name: e.name.map(|n| n.to_os_string()),
                    }));
                    if raw.len() == before {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if raw.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut changes = Changes::default();
        for ev in raw {
            self.handle(ev, rules, &mut changes);
        }
        self.drop_nameless();
        if changes.overflowed {
            if let Err(e) = self.resync(rules) {
                changes.error.get_or_insert(e);
            }
            changes.paths.push(self.root.clone());
        }
        Ok(changes)
    }

    fn handle(&mut self, ev: Raw, rules: &mut IgnoreRules, changes: &mut Changes) {
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            changes.overflowed = true;
            return;
        }
        let Some(watched) = self.watches.get(&ev.wd) else {
            return; // a watch already removed: its last events
        };
        if ev.mask.contains(EventMask::IGNORED) {
            // The kernel dropped the watch (directory deleted, file system unmounted).
            let names: Vec<PathBuf> = watched.names.iter().cloned().collect();
            self.watches.remove(&ev.wd);
            for n in names {
                self.names.remove(&n);
            }
            return;
        }
        let Some(name) = ev.name else {
            // About the directory itself: its parent reports it, unless it is the root.
            if watched.names.contains(&self.root)
                && ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
            {
                changes.paths.push(self.root.clone());
            }
            return;
        };
        let paths: Vec<PathBuf> = watched.names.iter().map(|d| d.join(&name)).collect();
        for path in paths {
            if ev
                .mask
                .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
            {
                self.forget_names_under(&path);
            }
            if ev.mask.contains(EventMask::ISDIR)
                && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                && !rules.is_ignored(&path, true)
                && let Err(e) = self.watch_tree(&path, rules)
            {
                changes.error.get_or_insert(e);
            }
            if name == ".gitignore" {
                rules.reload_gitignore(&path);
                if let Some(dir) = path.parent()
                    && let Err(e) = self.watch_tree(dir, rules)
                {
                    changes.error.get_or_insert(e);
                }
            }
            changes.paths.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree() -> (tempfile::TempDir, PathBuf, IgnoreRules, DirWatches) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("handlers/sub")).unwrap();
        fs::create_dir_all(root.join("node_modules/x")).unwrap();
        fs::write(root.join(".gitignore"), "node_modules/\n").unwrap();
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        let mut w = DirWatches::new(&root).unwrap();
        w.watch_tree(&root, &rules).unwrap();
        (tmp, root, rules, w)
    }

    /// Read until `want` is among the changes (events can take a moment to be queued).
    fn read_until(w: &mut DirWatches, rules: &mut IgnoreRules, want: &Path) -> Changes {
        let mut all = Changes::default();
        for _ in 0..200 {
            match w.read_changes(rules) {
                Ok(c) => {
                    all.overflowed |= c.overflowed;
                    all.paths.extend(c.paths);
                    if all.paths.iter().any(|p| p == want) {
                        return all;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{} never reported; got {:?}", want.display(), all.paths);
    }

    #[test]
    fn watches_synced_dirs_only_and_a_symlinked_alias_shares_nothing() {
        let (_tmp, root, mut rules, mut w) = tree();
        let dirs = |w: &DirWatches| w.watched_dirs();
        assert_eq!(
            dirs(&w),
            vec![
                root.clone(),
                root.join("handlers"),
                root.join("handlers/sub")
            ]
        );
        let inode = fs::metadata(root.join("handlers")).unwrap();
        assert_eq!(
            w.inode_of(&root.join("handlers")),
            Some((inode.dev(), inode.ino()))
        );
        std::os::unix::fs::symlink("handlers", root.join("alias")).unwrap();
        read_until(&mut w, &mut rules, &root.join("alias"));
        fs::remove_file(root.join("alias")).unwrap();
        read_until(&mut w, &mut rules, &root.join("alias"));
        assert_eq!(
            dirs(&w),
            vec![
                root.clone(),
                root.join("handlers"),
                root.join("handlers/sub")
            ]
        );
        fs::write(root.join("handlers/sub/a.go"), "x").unwrap();
        read_until(&mut w, &mut rules, &root.join("handlers/sub/a.go"));
    }

    #[test]
    fn a_dir_moved_out_of_the_tree_loses_its_watches_and_its_events() {
        let (tmp, root, mut rules, mut w) = tree();
        let outside = tmp.path().join("..").join(format!(
            "{}-out",
            tmp.path().file_name().unwrap().to_string_lossy()
        ));
        fs::rename(root.join("handlers"), &outside).unwrap();
        read_until(&mut w, &mut rules, &root.join("handlers"));
        assert_eq!(w.watched_dirs(), vec![root.clone()]);
        assert_eq!(w.watches.len(), 1, "the moved-out watches are removed");
        fs::write(outside.join("sub/a.go"), "x").unwrap();
        fs::write(root.join("sentinel"), "x").unwrap();
        let c = read_until(&mut w, &mut rules, &root.join("sentinel"));
        assert!(
            c.paths.iter().all(|p| p.starts_with(&root)),
            "{:?}",
            c.paths
        );
        fs::remove_dir_all(outside).unwrap();
    }

    /// More events than the kernel queues: the root is reported and the watches re-walked, so a
    /// directory created while events were being dropped is watched too.
    #[test]
    fn a_queue_overflow_reports_the_root_and_rewalks() {
        let (_tmp, root, mut rules, mut w) = tree();
        let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(16384);
        // Each new file is at least three events (create, modify, close-write).
        for i in 0..max / 2 {
            fs::write(root.join(format!("handlers/f{i}")), "x").unwrap();
        }
        fs::create_dir(root.join("late")).unwrap();
        let c = read_until(&mut w, &mut rules, &root);
        assert!(c.overflowed);
        assert!(w.watched_dirs().contains(&root.join("late")));
        fs::write(root.join("late/x.go"), "x").unwrap();
        read_until(&mut w, &mut rules, &root.join("late/x.go"));
    }

    #[test]
    fn a_gitignore_that_stops_ignoring_a_dir_gets_it_watched() {
        let (_tmp, root, mut rules, mut w) = tree();
        fs::write(root.join(".gitignore"), "").unwrap();
        read_until(&mut w, &mut rules, &root.join(".gitignore"));
        assert!(w.watched_dirs().contains(&root.join("node_modules/x")));
    }
}

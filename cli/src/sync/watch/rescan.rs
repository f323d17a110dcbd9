//! The safety net (watch stage): a cheap periodic rescan of the local tree, for the changes the
//! watcher missed.
//!
//! Watchers miss events (symlinks, editors, network file systems, overflowed queues). A
//! [`StatPicture`] keeps what lstat said about every synced path (kind, size, mtime, ctime,
//! inode, dev, mode, symlink target); the full listing
//! ([`crate::sync::local_tree::LocalTree::scan`]) draws it in the same walk.
//! [`StatPicture::rescan`] walks the tree again, stat only, under the same ignore rules and the
//! same [`Unsyncable`] classification as the listing, and returns the paths that changed since
//! the previous rescan: no file is read, so it costs a `readdir` per directory and an `fstatat`
//! per entry (the `rescan_cost` test of `local_tree` prints the figures). When it runs is
//! [`crate::sync::watch::rescan_schedule`]'s.
//!
//! What counts as a change: a file's size, mtime, ctime, inode, dev or mode; a directory's
//! mode; a symlink's target; a change of kind; appearing, vanishing, or becoming (un)syncable.
//! Timestamps are coarse, so a file last seen before it had [settled](Stat::settled) is reported
//! again by the next rescan even when its stat is unchanged: a write in the same tick as the one
//! before it leaves no trace in the stat.
//!
//! The loop, every few seconds while idle: `rescan`, then for each reported path the listing's
//! entry (hashing only what changed), compared with what the engine believes the pod holds;
//! whatever differs is a change the watcher missed. Paths the watcher already synced are
//! reported too, once, and compare equal: nothing needs to be fed back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kdev_protocol::EntryKind;

use crate::sync::ignore::IgnoreRules;
use crate::sync::listing::stat::{OpenError, Stat, open_regular};
use crate::sync::listing::walk::{ListError, Met, walk};
use crate::sync::unsyncable::{Reason, Unsyncable};

/// What a rescan found changed since the previous one (absolute paths, sorted).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Synced paths that were not there (or not syncable) before.
    pub added: Vec<PathBuf>,
    /// Synced paths that are gone (or no longer syncable).
    pub removed: Vec<PathBuf>,
    /// Synced paths whose stat moved (or was too recent to trust).
    pub modified: Vec<PathBuf>,
    /// Paths that cannot be synced and were not reported by the previous rescan.
    pub unsyncable: Vec<Unsyncable>,
}

impl Changes {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.modified.is_empty()
            && self.unsyncable.is_empty()
    }

    /// Every changed path, as a watcher batch would carry them.
    pub fn paths(&self) -> BTreeSet<PathBuf> {
        self.added
            .iter()
            .chain(&self.removed)
            .chain(&self.modified)
            .cloned()
            .collect()
    }
}

/// One synced path as the last rescan saw it.
#[derive(Debug, Clone)]
struct Seen {
    stat: Stat,
    /// The stat was taken long enough after the last change to be trusted (see module docs).
    settled: bool,
    /// A file that could not be opened for reading (then it is not synced).
    unreadable: Option<String>,
}

impl Seen {
    fn synced(&self) -> bool {
        self.unreadable.is_none()
    }
}

/// The stat-only picture of the synced tree, as the last listing or rescan saw it.
#[derive(Debug, Default)]
pub struct StatPicture {
    /// By wire path.
    seen: HashMap<String, Seen>,
    /// By path relative to the root.
    unsyncable: BTreeMap<PathBuf, Unsyncable>,
}

impl StatPicture {
    /// An empty picture with room for as many paths as this one holds (a listing draws the
    /// next one, and it replaces this one only when the listing succeeds).
    pub fn empty_like(&self) -> StatPicture {
        StatPicture {
            seen: HashMap::with_capacity(self.seen.len()),
            unsyncable: BTreeMap::new(),
        }
    }

    /// A listing met the path `wire` with lstat `stat` at `now`; `unreadable` says why a file
    /// could not be read (then it is not synced).
    pub fn saw(&mut self, wire: String, stat: Stat, unreadable: Option<String>, now: SystemTime) {
        let settled = stat.settled(now);
        self.seen.insert(
            wire,
            Seen {
                stat,
                settled,
                unreadable,
            },
        );
    }

    /// A listing met a path that cannot be synced.
    pub fn saw_unsyncable(&mut self, u: Unsyncable) {
        self.unsyncable.insert(u.path.clone(), u);
    }

    /// The paths that cannot be synced, as of the last rescan.
    #[cfg(test)]
    pub fn unsyncable(&self) -> impl Iterator<Item = &Unsyncable> {
        self.unsyncable.values()
    }

    /// How many synced paths the last rescan saw.
    pub fn synced_len(&self) -> usize {
        self.seen.values().filter(|s| s.synced()).count()
    }

    /// Walk the tree under `root` again (stat only, at `now`) and return what changed since the
    /// previous rescan (or listing).
    pub fn rescan(
        &mut self,
        root: &Path,
        rules: &IgnoreRules,
        now: SystemTime,
    ) -> Result<Changes, ListError> {
        // Each path met is taken out of the previous picture: what is left at the end is gone.
        let mut prev = std::mem::take(&mut self.seen);
        let mut next: HashMap<String, Seen> = HashMap::with_capacity(prev.len());
        let mut unsyncable: BTreeMap<PathBuf, Unsyncable> = BTreeMap::new();
        let mut changes = Changes::default();
        let walked = walk(root, rules, root, &mut |met| match met {
            Met::Unsyncable(u) => {
                unsyncable.insert(u.path.clone(), u);
            }
            Met::Synced { wire, abs, stat } => {
                let old = prev.remove(&wire);
                // Readability is known only by trying: once per new stat, not per rescan.
                let unreadable = match &old {
                    _ if stat.kind != EntryKind::File => None,
                    Some(p) if p.stat == stat => p.unreadable.clone(),
                    _ => unreadable(&abs),
                };
                if let Some(e) = &unreadable {
                    let u = Unsyncable::new(&wire, Reason::UnreadableFile(e.clone()));
                    unsyncable.insert(u.path.clone(), u);
                }
                let new = Seen {
                    settled: stat.settled(now),
                    stat,
                    unreadable,
                };
                match old {
                    Some(p) if p.synced() && !new.synced() => changes.removed.push(abs),
                    Some(p) if p.synced() => {
                        let trusted = p.settled || p.stat.kind != EntryKind::File;
                        if !(trusted && same(&p.stat, &new.stat)) {
                            changes.modified.push(abs);
                        }
                    }
                    _ if new.synced() => changes.added.push(abs),
                    _ => {}
                }
                next.insert(wire, new);
            }
        });
        if let Err(e) = walked {
            // Only an unreadable root fails, before anything is met: keep the old picture.
            self.seen = prev;
            return Err(e);
        }
        for (wire, p) in prev {
            if p.synced() {
                changes.removed.push(root.join(wire));
            }
        }
        changes.unsyncable = unsyncable
            .values()
            .filter(|u| !self.unsyncable.contains_key(&u.path))
            .cloned()
            .collect();
        changes.added.sort();
        changes.removed.sort();
        changes.modified.sort();
        self.seen = next;
        self.unsyncable = unsyncable;
        Ok(changes)
    }
}

/// Whether two stats of one path mean the same synced content.
fn same(a: &Stat, b: &Stat) -> bool {
    a.kind == b.kind
        && a.mode == b.mode
        && match a.kind {
            EntryKind::File => {
                (a.size, a.mtime, a.ctime, a.ino, a.dev) == (b.size, b.mtime, b.ctime, b.ino, b.dev)
            }
            EntryKind::Dir => true,
            EntryKind::Symlink => a.target == b.target,
        }
}

/// Why the file at `path` cannot be read, if it cannot (opened and closed, not read).
fn unreadable(path: &Path) -> Option<String> {
    match open_regular(path) {
        Err(OpenError::Unreadable(e)) => Some(Reason::io_text(&e)),
        // Gone or replaced since the lstat: the next rescan sees what it became.
        _ => None,
    }
}

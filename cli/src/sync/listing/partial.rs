//! Listing part of the local tree (listing stage): one path (what the watcher or the rescan
//! reported), or everything below a directory that appeared. The full listing is
//! [`crate::sync::local_tree::LocalTree::scan`].

use std::path::Path;

use kdev_protocol::EntryKind;
use kdev_protocol::hash_cache::HashCache;
use kdev_protocol::wire_path_from_relative;

use crate::sync::ignore::IgnoreRules;
use crate::sync::listing::hashing::file_entry;
use crate::sync::listing::local::{Listing, Local};
use crate::sync::listing::walk::{ListError, Met, classify, parents_are_dirs, walk};
use crate::sync::unsyncable::{Reason, Unsyncable};

/// The listing entry for one path (what the watcher reported), or why it is not synced,
/// hashing a file only when its stat is not in `cache`.
pub fn path_entry(root: &Path, path: &Path, rules: &IgnoreRules, cache: &mut HashCache) -> Local {
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
            EntryKind::File => file_entry(cache, wire, &abs, &stat),
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

/// Everything below the synced directory `dir` (not `dir` itself), as the full listing lists
/// it, hashing a file only when its stat is not in `cache`. A directory that is gone has
/// nothing below it.
pub fn below(root: &Path, dir: &Path, rules: &IgnoreRules, cache: &mut HashCache) -> Listing {
    let mut out = Listing::default();
    let res = walk(root, rules, dir, &mut |met| match met {
        Met::Unsyncable(u) => out.unsyncable.push(u),
        Met::Synced { wire, abs, stat } if stat.kind == EntryKind::File => {
            match file_entry(cache, wire, &abs, &stat) {
                Local::Entry(e) => out.entries.push(e),
                Local::Unsyncable(u) => out.unsyncable.push(u),
                Local::Absent => {}
            }
        }
        Met::Synced { wire, stat, .. } => out.entries.push(stat.entry(wire, None)),
    });
    if let Err(ListError::Io { source, .. }) = res
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

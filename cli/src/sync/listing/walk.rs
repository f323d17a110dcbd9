//! The walk of the local tree (listing stage): every path under the sync root that is synced,
//! each classified from its lstat as synced ([`Met::Synced`]) or not ([`Met::Unsyncable`]),
//! without reading a file's content. The listings, the safety net's rescan and the patch tar
//! all classify paths this way.
//!
//! It never follows a symlink: the walk uses lstat (`d_type`, `fstatat` without following), a
//! single path is of the tree only when every parent is a real directory
//! ([`parents_are_dirs`]), and a symlink is resolved against the links of the local tree with
//! readlink only ([`kdev_protocol::paths::resolve_symlink_target`]). What the pod cannot hold
//! (sockets, FIFOs, devices, links leaving the root, unreadable files and directories, names
//! that are not UTF-8) is classified as [`Unsyncable`] and left out, so that the rest keeps
//! syncing. What is synced at all is decided by [`crate::sync::ignore`].

use std::fs::Metadata;
use std::path::{Path, PathBuf};

use kdev_protocol::paths::{check_symlink_target_form, resolve_symlink_target};
use kdev_protocol::{EntryKind, PathError, wire_path_from_relative};

use crate::sync::ignore::IgnoreRules;
use crate::sync::listing::stat::Stat;
use crate::sync::unsyncable::{Reason, Unsyncable};

/// Only an unreadable directory to walk fails a walk (or a listing).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the walk met.
pub enum Met {
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
pub fn walk(
    root: &Path,
    rules: &IgnoreRules,
    dir: &Path,
    visit: &mut dyn FnMut(Met),
) -> Result<(), ListError> {
    let io = |source| ListError::Io {
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
    walk_entries(root, rules, wire, entries, visit);
    Ok(())
}

/// One name in a directory, with its lstat taken when the directory was read.
struct Child {
    abs: PathBuf,
    name: std::ffi::OsString,
    meta: std::io::Result<Metadata>,
}

/// The entries of `dir`, each with its lstat (`fstatat` without following, relative to the
/// open directory). Read whole, and the directory closed, so that a deep tree does not hold a
/// descriptor per level.
fn read_entries(dir: &Path) -> std::io::Result<Vec<Child>> {
    std::fs::read_dir(dir)?
        .map(|de| {
            let de = de?;
            Ok(Child {
                abs: de.path(),
                name: de.file_name(),
                meta: de.metadata(),
            })
        })
        .collect()
}

/// Visit `entries` (of the directory with wire path `dir_wire`) and everything below them,
/// parents before children, with an explicit stack of directories rather than recursion: the
/// tree may be as deep as paths can be.
fn walk_entries(
    root: &Path,
    rules: &IgnoreRules,
    dir_wire: String,
    entries: Vec<Child>,
    visit: &mut dyn FnMut(Met),
) {
    let mut stack = vec![(entries.into_iter(), dir_wire)];
    while let Some((entries, dir_wire)) = stack.last_mut() {
        let Some(child) = entries.next() else {
            stack.pop();
            continue;
        };
        if let Some(below) = walk_entry(root, rules, dir_wire, child, visit) {
            stack.push(below);
        }
    }
}

/// Visit one entry of the directory `dir_wire`; returns its own entries to walk next when it
/// is a synced directory.
fn walk_entry(
    root: &Path,
    rules: &IgnoreRules,
    dir_wire: &str,
    child: Child,
    visit: &mut dyn FnMut(Met),
) -> Option<(std::vec::IntoIter<Child>, String)> {
    let rel = |abs: &Path| abs.strip_prefix(root).unwrap_or(abs).to_path_buf();
    let Child { abs, name, meta } = child;
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            let reason = Reason::UnreadableFile(Reason::io_text(&e));
            visit(Met::Unsyncable(Unsyncable::new(rel(&abs), reason)));
            return None;
        }
    };
    // The parents are synced (the walk is below them): only this name can exclude it.
    if rules.excludes(&abs, meta.is_dir()) {
        return None;
    }
    let Some(name) = name.to_str() else {
        visit(Met::Unsyncable(Unsyncable::new(
            rel(&abs),
            Reason::NameNotUtf8,
        )));
        return None;
    };
    let wire = if dir_wire.is_empty() {
        name.to_string()
    } else {
        format!("{dir_wire}/{name}")
    };
    match classify(root, &abs, wire, &meta) {
        None => None,
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
                    Some((children.into_iter(), wire))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    visit(Met::Unsyncable(Unsyncable::new(
                        wire,
                        Reason::UnreadableDir(Reason::io_text(&e)),
                    )));
                    None
                }
            }
        }
        Some(met) => {
            visit(met);
            None
        }
    }
}

/// What the path at `abs` (wire path `wire`, lstat `meta`) is for syncing, without reading a
/// file's content; `None` when it vanished meanwhile.
pub fn classify(root: &Path, abs: &Path, wire: String, meta: &Metadata) -> Option<Met> {
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
    unsyncable(wire, Reason::of_special(ft))
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

//! Planning a patch: parse and validate the whole archive (it is in memory, at most one
//! frame) and turn every entry into a planned operation ([`Op`]) or a refusal, before anything
//! is written.
//!
//! Paths must be wire paths (no `..`, not absolute, UTF-8); only regular files, directories
//! and symlinks whose target stays inside the root are accepted; hard links, devices, FIFOs,
//! sparse files and anything unknown are refused, as are entries over the size limits. If the
//! archive itself is malformed (bad checksum, truncated, oversized extension headers) it is
//! refused as a whole ([`ArchiveError`]). A symlink's target is resolved through every
//! symlink it meets, in the tree as it will be after the patch (its own links, whatever their
//! order, and those on disk), so two links that are harmless alone cannot together lead
//! outside; and a `..` after a name in a target is refused, since a later patch could make
//! that name a symlink (see [`check_symlink_target_form`]).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;

use kdev_protocol::paths::{
    check_symlink_target, check_symlink_target_form, normalize_wire_path,
    normalize_wire_path_bytes, resolve_symlink_target,
};
use kdev_protocol::{PatchLimits, PathError, Refused};
use tar::EntryType;

use super::safe_root::FsError;
use crate::util::error_chain;

/// Why the archive as a whole was refused (nothing of the patch is applied).
#[derive(Debug, thiserror::Error)]
pub(super) enum ArchiveError {
    // The tar crate's errors carry their own cause, which the text never showed: these
    // embed the error rather than chain it.
    #[error("not a tar archive: {0}")]
    NotTar(io::Error),
    #[error("malformed tar archive at entry {entry}: {error}")]
    Malformed { entry: usize, error: io::Error },
    #[error("the archive has more than {0} entries; split the patch")]
    TooManyEntries(u32),
    #[error(
        "entry {entry} has {bytes} bytes of PAX/GNU extension headers (limit {limit}); refusing the archive"
    )]
    ExtensionHeaders {
        entry: usize,
        bytes: u64,
        limit: u64,
    },
    #[error("malformed tar archive: entry {entry} claims {size} bytes but the archive ends first")]
    BeyondTheEnd { entry: usize, size: u64 },
    #[error("the archive's files add up to more than {0} bytes; split the patch")]
    TooLarge(u64),
}

/// Why one entry or deletion was not applied (a [`Refused`]'s reason).
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("file of {size} bytes exceeds the limit of {limit}")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("symlink without a target")]
    NoTarget,
    #[error("symlink target is not valid UTF-8")]
    TargetNotUtf8,
    #[error("hard link (to {0:?}) refused: send the file's content instead")]
    HardLink(String),
    #[error("device file refused")]
    Device,
    #[error("FIFO refused")]
    Fifo,
    #[error("sparse file refused")]
    Sparse,
    #[error("unsupported tar entry type {0:?}")]
    Unsupported(EntryType),
    #[error("name too long: {0} bytes (at most {NAME_MAX})")]
    NameTooLong(usize),
    #[error(
        "path too long: {len} bytes below a sync root of {root} (at most {max} in all)",
        max = PATH_MAX - 1
    )]
    PathTooLong { len: usize, root: usize },
    #[error("symlink target too long: {len} bytes (at most {max})", len = .0, max = PATH_MAX - 1)]
    TargetTooLong(usize),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("not applied: the archive of this patch was refused")]
    ArchiveRefused,
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Record a refusal of `path`.
pub(super) fn refuse(out: &mut Vec<Refused>, path: impl Into<String>, why: impl Into<Refusal>) {
    out.push(Refused {
        path: path.into(),
        reason: error_chain(&why.into()),
    });
}

/// One change to make, in archive order.
#[derive(Debug)]
pub(super) enum Op {
    /// A regular file: its content is `len` bytes at `start` in the archive.
    File {
        path: String,
        start: usize,
        len: usize,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Op {
    pub(super) fn path(&self) -> &str {
        match self {
            Op::File { path, .. } | Op::Dir { path, .. } | Op::Symlink { path, .. } => path,
        }
    }

    pub(super) fn into_path(self) -> String {
        match self {
            Op::File { path, .. } | Op::Dir { path, .. } | Op::Symlink { path, .. } => path,
        }
    }
}

/// The longest name of a directory entry (Linux's `NAME_MAX`, in bytes).
const NAME_MAX: usize = 255;
/// The longest path the kernel takes, with its terminating NUL (Linux's `PATH_MAX`).
const PATH_MAX: usize = 4096;

/// Refuse a path the kernel could not create below a root of `root_len` bytes: a name over
/// `NAME_MAX`, or more than `PATH_MAX` in all (writes walk one name at a time and could go
/// deeper, but nothing could name the result: listing it, building it). Checked before
/// anything is written, so that such an entry leaves no directories behind.
fn check_fits(path: &str, root_len: usize) -> Result<(), Refusal> {
    if let Some(name) = path.split('/').find(|n| n.len() > NAME_MAX) {
        return Err(Refusal::NameTooLong(name.len()));
    }
    if root_len + 1 + path.len() >= PATH_MAX {
        let (len, root) = (path.len(), root_len);
        return Err(Refusal::PathTooLong { len, root });
    }
    Ok(())
}

/// Parse and validate the archive for the sync root `root`. `Err` = the archive as a whole is
/// unusable.
pub(super) fn plan(
    tar_bytes: &[u8],
    limits: &PatchLimits,
    root: &Path,
    refused: &mut Vec<Refused>,
) -> Result<Vec<Op>, ArchiveError> {
    let root_len = root.as_os_str().len();
    let mut ops = Vec::new();
    if tar_bytes.is_empty() {
        return Ok(ops);
    }
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive.entries().map_err(ArchiveError::NotTar)?;
    let mut prev_end: u64 = 0;
    let mut total: u64 = 0;
    for (index, entry) in entries.enumerate() {
        let entry = entry.map_err(|error| ArchiveError::Malformed {
            entry: index + 1,
            error,
        })?;
        if index as u64 >= u64::from(limits.max_entries) {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let (start, size) = content_span(&entry, index, limits, tar_bytes.len(), &mut prev_end)?;

        let raw_path = entry.path_bytes();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let ty = entry.header().entry_type();
        let path = match normalize_wire_path_bytes(&raw_path) {
            Ok(p) => p,
            Err(e) => {
                refuse(refused, shown, e);
                continue;
            }
        };
        let mode = entry.header().mode().unwrap_or(0o644);
        if matches!(
            ty,
            EntryType::Regular | EntryType::Continuous | EntryType::Directory | EntryType::Symlink
        ) && let Err(e) = check_fits(&path, root_len)
        {
            refuse(refused, path, e);
            continue;
        }
        match ty {
            EntryType::Regular | EntryType::Continuous => {
                if size > limits.max_file_size {
                    let limit = limits.max_file_size;
                    refuse(refused, path, Refusal::FileTooLarge { size, limit });
                    continue;
                }
                total += size;
                if total > limits.max_total_size {
                    return Err(ArchiveError::TooLarge(limits.max_total_size));
                }
                ops.push(Op::File {
                    path,
                    start: start as usize,
                    len: size as usize,
                    mode: mode & 0o777,
                });
            }
            EntryType::Directory => ops.push(Op::Dir {
                path,
                mode: (mode & 0o777) | 0o700,
            }),
            EntryType::Symlink => match symlink_target(&entry, &path) {
                Ok(target) => ops.push(Op::Symlink { path, target }),
                Err(e) => refuse(refused, path, e),
            },
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned());
                refuse(refused, path, Refusal::HardLink(target.unwrap_or_default()));
            }
            EntryType::Char | EntryType::Block => refuse(refused, path, Refusal::Device),
            EntryType::Fifo => refuse(refused, path, Refusal::Fifo),
            EntryType::GNUSparse => refuse(refused, path, Refusal::Sparse),
            other => refuse(refused, path, Refusal::Unsupported(other)),
        }
    }
    Ok(ops)
}

/// Where entry `index`'s content lies in the archive (start, size), after checking its
/// extension headers and that it ends within the archive. `prev_end` is where the previous
/// entry's content ended; it is moved past this one's.
fn content_span(
    entry: &tar::Entry<'_, &[u8]>,
    index: usize,
    limits: &PatchLimits,
    archive_len: usize,
    prev_end: &mut u64,
) -> Result<(u64, u64), ArchiveError> {
    // Bytes between the end of the previous entry and this entry's own header are its
    // PAX / GNU long-name extension headers. Measured on the real parse, so a PAX `size`
    // override cannot make this check see a different archive than the one applied.
    let header_pos = entry.raw_header_position();
    let ext = header_pos.saturating_sub(*prev_end);
    if ext > limits.max_extension_header + 3 * 512 {
        return Err(ArchiveError::ExtensionHeaders {
            entry: index + 1,
            bytes: ext,
            limit: limits.max_extension_header,
        });
    }
    let start = entry.raw_file_position();
    let size = entry.size();
    if start
        .checked_add(size)
        .is_none_or(|end| end > archive_len as u64)
    {
        return Err(ArchiveError::BeyondTheEnd {
            entry: index + 1,
            size,
        });
    }
    *prev_end = start + size.div_ceil(512) * 512;
    Ok((start, size))
}

/// The target of the symlink entry at wire path `path`, or why it is refused.
fn symlink_target(entry: &tar::Entry<'_, &[u8]>, path: &str) -> Result<String, Refusal> {
    let target = entry.link_name_bytes().ok_or(Refusal::NoTarget)?;
    // symlink(2) takes no longer target (and checking one costs its length squared).
    if target.len() >= PATH_MAX {
        return Err(Refusal::TargetTooLong(target.len()));
    }
    let target = String::from_utf8(target.into_owned()).map_err(|_| Refusal::TargetNotUtf8)?;
    // Lexically first (cheap); through the tree's other links after planning.
    check_symlink_target(path, &target)?;
    Ok(target)
}

/// The target of the symlink at wire path `rel` on disk, found without following any symlink
/// (every parent must be a real directory), or `None`. A target that is not UTF-8 counts as
/// leading outside.
fn disk_link(root: &Path, rel: &str) -> Option<String> {
    let mut path = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        path.push(c);
        if !fs::symlink_metadata(&path).ok()?.is_dir() {
            return None;
        }
    }
    path.push(comps[comps.len() - 1]);
    if !fs::symlink_metadata(&path).ok()?.file_type().is_symlink() {
        return None;
    }
    let target = fs::read_link(&path).ok()?;
    Some(target.to_str().unwrap_or("/").to_string())
}

/// Refuse the patch's symlinks that resolve outside the root, following every link met on the
/// way (see [`resolve_symlink_target`]) in the tree as it will be after the patch: the patch's
/// own links whatever their order, and the links on disk that it does not delete or replace.
/// Also refused: targets with a `..` after a name ([`check_symlink_target_form`]).
pub(super) fn refuse_escaping_links(
    root: &Path,
    deletes: &[String],
    ops: Vec<Op>,
    refused: &mut Vec<Refused>,
) -> Vec<Op> {
    if !ops.iter().any(|op| matches!(op, Op::Symlink { .. })) {
        return ops;
    }
    // Final state of each path the patch writes: a link (its target) or a file (no link).
    let mut planned: HashMap<&str, Option<&str>> = HashMap::new();
    for op in &ops {
        match op {
            Op::Symlink { path, target } => {
                planned.insert(path, Some(target));
            }
            Op::File { path, .. } => {
                planned.insert(path, None);
            }
            // make_dir never replaces a link.
            Op::Dir { .. } => {}
        }
    }
    let deleted: HashSet<String> = deletes
        .iter()
        .filter_map(|d| normalize_wire_path(d).ok())
        .collect();
    let gone = |p: &str| {
        deleted.contains(p) || p.match_indices('/').any(|(i, _)| deleted.contains(&p[..i]))
    };
    let lookup = |p: &str| match planned.get(p) {
        Some(t) => t.map(str::to_string),
        None if gone(p) => None,
        None => disk_link(root, p),
    };
    let mut verdicts = Vec::new();
    for op in &ops {
        if let Op::Symlink { path, target } = op {
            // A link that leads outside today says so; one that only might later, says that.
            let verdict = resolve_symlink_target(path, target, lookup)
                .and_then(|_| check_symlink_target_form(path, target));
            verdicts.push(verdict.err());
        }
    }
    let mut verdicts = verdicts.into_iter();
    ops.into_iter()
        .filter(|op| {
            let Op::Symlink { path, .. } = op else {
                return true;
            };
            match verdicts.next().flatten() {
                Some(e) => {
                    refuse(refused, path.clone(), e);
                    false
                }
                None => true,
            }
        })
        .collect()
}

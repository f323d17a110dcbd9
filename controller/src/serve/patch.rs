//! Applying a patch (deletions + tar) to the sync root, treating the input as hostile.
//!
//! Two phases. **Validate** parses the whole archive (it is in memory, at most one frame) and
//! turns every entry into a planned operation or a refusal: paths must be wire paths (no `..`,
//! not absolute, UTF-8), only regular files, directories and symlinks whose target stays inside
//! the root are accepted; hard links, devices,
//! FIFOs, sparse files and anything unknown are refused, as are entries over the size limits.
//! If the archive itself is malformed (bad checksum, truncated, oversized extension headers)
//! nothing at all is applied. A symlink's target is resolved through every symlink it meets,
//! in the tree as it will be after the patch (its own links, whatever their order, and those on
//! disk), so two links that are harmless alone cannot together lead outside; and a `..` after a
//! name in a target is refused, since a later patch could make that name a symlink (see
//! [`check_symlink_target_form`]). **Apply** then runs the deletions and the planned operations in
//! order. Every parent directory is checked with `lstat` and must be a real directory (never a
//! symlink), so a symlink planted earlier cannot be written through; files and symlinks are
//! created under a temporary name in their final directory (`O_CREAT|O_EXCL|O_NOFOLLOW`) and
//! renamed into place, so a reader never sees a half-written file. Refusals do not stop the
//! other entries; the result lists exactly what was applied and what was refused.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kdev_protocol::paths::{
    check_symlink_target, check_symlink_target_form, normalize_wire_path,
    normalize_wire_path_bytes, resolve_symlink_target,
};
use kdev_protocol::{PatchLimits, Refused};
use tar::EntryType;

/// Default limits (see [`PatchLimits`]).
pub fn default_limits() -> PatchLimits {
    PatchLimits {
        max_entries: 100_000,
        max_file_size: u64::from(kdev_protocol::MAX_FRAME_SIZE),
        max_total_size: u64::from(kdev_protocol::MAX_FRAME_SIZE),
        max_extension_header: 64 * 1024,
        max_deletes: kdev_protocol::MAX_DELETES,
    }
}

/// The name used in refusals that concern the whole archive.
pub const ARCHIVE: &str = kdev_protocol::ARCHIVE_PATH;

/// What applying a patch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PatchOutcome {
    pub applied: Vec<String>,
    pub deleted: Vec<String>,
    pub refused: Vec<Refused>,
    pub files: u32,
    pub bytes: u64,
    /// Stopped part-way because the session is ending (the rest was not applied).
    pub interrupted: bool,
}

impl PatchOutcome {
    /// Every path that changed (for deciding whether a build input was touched).
    pub fn touched(&self) -> impl Iterator<Item = &str> {
        self.applied
            .iter()
            .chain(self.deleted.iter())
            .map(String::as_str)
    }
    pub fn complete(&self) -> bool {
        self.refused.is_empty()
    }
}

#[derive(Debug)]
enum Op {
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

fn refuse(out: &mut Vec<Refused>, path: impl Into<String>, reason: impl Into<String>) {
    out.push(Refused {
        path: path.into(),
        reason: reason.into(),
    });
}

/// Parse and validate the archive. `Err` = the archive as a whole is unusable.
fn plan(
    tar_bytes: &[u8],
    limits: &PatchLimits,
    refused: &mut Vec<Refused>,
) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    if tar_bytes.is_empty() {
        return Ok(ops);
    }
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let mut prev_end: u64 = 0;
    let mut total: u64 = 0;
    for (index, entry) in entries.enumerate() {
        let entry =
            entry.map_err(|e| format!("malformed tar archive at entry {}: {e}", index + 1))?;
        if index as u64 >= u64::from(limits.max_entries) {
            return Err(format!(
                "the archive has more than {} entries; split the patch",
                limits.max_entries
            ));
        }
        // Bytes between the end of the previous entry and this entry's own header are its
        // PAX / GNU long-name extension headers. Measured on the real parse, so a PAX `size`
        // override cannot make this check see a different archive than the one applied.
        let header_pos = entry.raw_header_position();
        let ext = header_pos.saturating_sub(prev_end);
        if ext > limits.max_extension_header + 3 * 512 {
            return Err(format!(
                "entry {} has {ext} bytes of PAX/GNU extension headers (limit {}); refusing the archive",
                index + 1,
                limits.max_extension_header
            ));
        }
        let start = entry.raw_file_position();
        let size = entry.size();
        if start
            .checked_add(size)
            .is_none_or(|end| end > tar_bytes.len() as u64)
        {
            return Err(format!(
                "malformed tar archive: entry {} claims {size} bytes but the archive ends first",
                index + 1
            ));
        }
        prev_end = start + size.div_ceil(512) * 512;

        let raw_path = entry.path_bytes();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let ty = entry.header().entry_type();
        let path = match normalize_wire_path_bytes(&raw_path) {
            Ok(p) => p,
            Err(e) => {
                refuse(refused, shown, e.to_string());
                continue;
            }
        };
        let mode = entry.header().mode().unwrap_or(0o644);
        match ty {
            EntryType::Regular | EntryType::Continuous => {
                if size > limits.max_file_size {
                    refuse(
                        refused,
                        path,
                        format!(
                            "file of {size} bytes exceeds the limit of {}",
                            limits.max_file_size
                        ),
                    );
                    continue;
                }
                total += size;
                if total > limits.max_total_size {
                    return Err(format!(
                        "the archive's files add up to more than {} bytes; split the patch",
                        limits.max_total_size
                    ));
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
            EntryType::Symlink => {
                let Some(target) = entry.link_name_bytes() else {
                    refuse(refused, path, "symlink without a target");
                    continue;
                };
                let Ok(target) = String::from_utf8(target.into_owned()) else {
                    refuse(refused, path, "symlink target is not valid UTF-8");
                    continue;
                };
                // Lexically first (cheap); through the tree's other links after planning.
                if let Err(e) = check_symlink_target(&path, &target) {
                    refuse(refused, path, e.to_string());
                    continue;
                }
                ops.push(Op::Symlink { path, target });
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned());
                refuse(
                    refused,
                    path,
                    format!(
                        "hard link (to {:?}) refused: send the file's content instead",
                        target.unwrap_or_default()
                    ),
                );
            }
            EntryType::Char | EntryType::Block => refuse(refused, path, "device file refused"),
            EntryType::Fifo => refuse(refused, path, "FIFO refused"),
            EntryType::GNUSparse => refuse(refused, path, "sparse file refused"),
            other => refuse(
                refused,
                path,
                format!("unsupported tar entry type {other:?}"),
            ),
        }
    }
    Ok(ops)
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
fn refuse_escaping_links(
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
                    refuse(refused, path.clone(), e.to_string());
                    false
                }
                None => true,
            }
        })
        .collect()
}

/// Operations on paths below a root that never follow a symlink inside the root.
pub struct SafeRoot {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a file name is one of our temporary names, `.kdev-<pid>-<n>.tmp` (skipped by
/// reconcile, removed at startup). Exactly that shape, so a user's file is never taken for one.
pub fn is_temp_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix(".kdev-")
        .and_then(|n| n.strip_suffix(".tmp"))
        .and_then(|n| n.split_once('-'))
        .is_some_and(|(pid, n)| digits(pid) && digits(n))
}

impl SafeRoot {
    pub fn new(root: &Path) -> SafeRoot {
        SafeRoot {
            root: root.to_path_buf(),
        }
    }

    /// Check every parent of `rel` (a normalized wire path): each must be a real directory.
    /// Missing parents are created when `create`, otherwise `Ok(None)` is returned.
    fn parent_dir(&self, rel: &str, create: bool) -> Result<Option<PathBuf>, String> {
        let mut dir = self.root.clone();
        let comps: Vec<&str> = rel.split('/').collect();
        for (i, c) in comps[..comps.len() - 1].iter().enumerate() {
            dir.push(c);
            let shown = comps[..=i].join("/");
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "parent {shown:?} is a symlink; refusing to write through it"
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                        "parent {shown:?} is not a directory; delete it first"
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    match fs::DirBuilder::new().mode(0o755).create(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            // Raced with something; re-check on the next pass.
                            let m = fs::symlink_metadata(&dir)
                                .map_err(|e| format!("{shown:?}: {e}"))?;
                            if !m.is_dir() {
                                return Err(format!("parent {shown:?} is not a directory"));
                            }
                        }
                        Err(e) => return Err(format!("cannot create directory {shown:?}: {e}")),
                    }
                }
                Err(e) => return Err(format!("cannot inspect {shown:?}: {e}")),
            }
        }
        Ok(Some(dir))
    }

    fn temp_path(dir: &Path) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        dir.join(format!(".kdev-{}-{n}.tmp", std::process::id()))
    }

    fn final_name(rel: &str) -> &str {
        rel.rsplit('/').next().unwrap_or(rel)
    }

    /// Rename `tmp` over `dir/name`, refusing to replace a directory.
    fn install(tmp: &Path, dir: &Path, name: &str, rel: &str) -> Result<(), String> {
        let dest = dir.join(name);
        if let Ok(m) = fs::symlink_metadata(&dest)
            && m.is_dir()
        {
            let _ = fs::remove_file(tmp);
            return Err(format!("a directory exists at {rel:?}; delete it first"));
        }
        fs::rename(tmp, &dest).map_err(|e| {
            let _ = fs::remove_file(tmp);
            format!("cannot move {rel:?} into place: {e}")
        })
    }

    pub fn write_file(&self, rel: &str, data: &[u8], mode: u32) -> Result<(), String> {
        let dir = self.parent_dir(rel, true)?.expect("created");
        let tmp = Self::temp_path(&dir);
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(data)?;
            // Exact permission bits (the umask must not eat the executable bit).
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(format!("cannot write {rel:?}: {e}"));
        }
        Self::install(&tmp, &dir, Self::final_name(rel), rel)
    }

    pub fn make_dir(&self, rel: &str, mode: u32) -> Result<(), String> {
        let dir = self.parent_dir(rel, true)?.expect("created");
        let path = dir.join(Self::final_name(rel));
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
                Ok(())
            }
            Ok(_) => Err(format!(
                "a file or symlink exists at {rel:?}; delete it first"
            )),
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| format!("cannot create {rel:?}: {e}"))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("cannot set permissions of {rel:?}: {e}"))
            }
        }
    }

    pub fn make_symlink(&self, rel: &str, target: &str) -> Result<(), String> {
        let dir = self.parent_dir(rel, true)?.expect("created");
        let tmp = Self::temp_path(&dir);
        std::os::unix::fs::symlink(target, &tmp)
            .map_err(|e| format!("cannot create symlink {rel:?}: {e}"))?;
        Self::install(&tmp, &dir, Self::final_name(rel), rel)
    }

    /// Delete a file, symlink (not its target) or whole directory. Absent paths are fine.
    pub fn delete(&self, rel: &str) -> Result<(), String> {
        let Some(dir) = self.parent_dir(rel, false)? else {
            return Ok(());
        };
        let path = dir.join(Self::final_name(rel));
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot inspect {rel:?}: {e}")),
            // remove_dir_all does not follow symlinks inside the tree.
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&path).map_err(|e| format!("cannot delete {rel:?}: {e}"))
            }
            Ok(_) => fs::remove_file(&path).map_err(|e| format!("cannot delete {rel:?}: {e}")),
        }
    }
}

/// Apply deletions, then the tar's entries, below `root`. `stop` is checked between entries:
/// once set, nothing more is applied and the outcome says `interrupted`.
pub fn apply_patch(
    root: &Path,
    deletes: &[String],
    tar_bytes: &[u8],
    limits: &PatchLimits,
    stop: &AtomicBool,
) -> PatchOutcome {
    let stopped = |out: &mut PatchOutcome| {
        out.interrupted = stop.load(Ordering::Relaxed);
        out.interrupted
    };
    let mut out = PatchOutcome::default();
    let mut plan_refused = Vec::new();
    let ops = match plan(tar_bytes, limits, &mut plan_refused) {
        Ok(ops) => ops,
        Err(reason) => {
            // Nothing is applied: report the archive and every deletion as refused.
            refuse(&mut out.refused, ARCHIVE, reason);
            for d in deletes {
                refuse(
                    &mut out.refused,
                    d.clone(),
                    "not applied: the archive of this patch was refused",
                );
            }
            return out;
        }
    };
    let ops = refuse_escaping_links(root, deletes, ops, &mut plan_refused);
    let safe = SafeRoot::new(root);
    for d in deletes {
        if stopped(&mut out) {
            return out;
        }
        match normalize_wire_path(d)
            .map_err(|e| e.to_string())
            .and_then(|p| safe.delete(&p).map(|()| p))
        {
            Ok(p) => out.deleted.push(p),
            Err(reason) => refuse(&mut out.refused, d.clone(), reason),
        }
    }
    out.refused.extend(plan_refused);
    for op in ops {
        if stopped(&mut out) {
            return out;
        }
        let (path, res) = match op {
            Op::File {
                path,
                start,
                len,
                mode,
            } => {
                let res = safe.write_file(&path, &tar_bytes[start..start + len], mode);
                if res.is_ok() {
                    out.files += 1;
                    out.bytes += len as u64;
                }
                (path, res)
            }
            Op::Dir { path, mode } => {
                let res = safe.make_dir(&path, mode);
                (path, res)
            }
            Op::Symlink { path, target } => {
                let res = safe.make_symlink(&path, &target);
                (path, res)
            }
        };
        match res {
            Ok(()) => out.applied.push(path),
            Err(reason) => refuse(&mut out.refused, path, reason),
        }
    }
    out
}

/// Whether `path` matches one of the build-input patterns (see
/// [`kdev_protocol::SessionConfig::build_inputs`]). `None` matches everything.
pub fn is_build_input(path: &str, patterns: Option<&[String]>) -> bool {
    let Some(patterns) = patterns else {
        return true;
    };
    let name = path.rsplit('/').next().unwrap_or(path);
    patterns.iter().any(|p| {
        if let Some(dir) = p.strip_suffix('/') {
            path == dir || path.starts_with(p.as_str())
        } else if p.starts_with('.') {
            name.ends_with(p.as_str())
        } else {
            name == p || path == p
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static GO: AtomicBool = AtomicBool::new(false);

    fn header(ty: EntryType, path: &[u8], size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        // Write the raw name: set_path would refuse the malicious ones we want to test.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path);
        h.set_size(size);
        h.set_mode(mode);
        h.set_cksum();
        h
    }

    type Spec<'a> = (EntryType, &'a [u8], &'a [u8], Option<&'a str>);

    fn tar_of(entries: &[Spec<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (ty, path, data, link) in entries {
            let mut h = header(*ty, path, data.len() as u64, 0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
                h.set_cksum();
            }
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn applies_files_dirs_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            (EntryType::Regular, b"a/b/c.txt", b"hello", None),
            (EntryType::Directory, b"empty", b"", None),
            (EntryType::Symlink, b"a/link", b"", Some("b/c.txt")),
        ]);
        let out = apply_patch(dir.path(), &[], &t, &default_limits(), &GO);
        assert!(out.complete(), "{out:?}");
        assert_eq!(out.applied, ["a/b/c.txt", "empty", "a/link"]);
        assert_eq!(fs::read(dir.path().join("a/link")).unwrap(), b"hello");
        assert!(dir.path().join("empty").is_dir());
        assert_eq!((out.files, out.bytes), (1, 5));
    }

    #[test]
    fn refuses_escapes_but_applies_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            (EntryType::Regular, b"../evil", b"x", None),
            (EntryType::Regular, b"/abs", b"x", None),
            (EntryType::Symlink, b"up", b"", Some("../..")),
            (EntryType::Link, b"hl", b"", Some("/etc/passwd")),
            (EntryType::Char, b"dev", b"", None),
            (EntryType::Fifo, b"fifo", b"", None),
            (EntryType::Regular, b"ok.go", b"package main", None),
        ]);
        let out = apply_patch(root.path(), &["../x".into()], &t, &default_limits(), &GO);
        assert_eq!(out.applied, ["ok.go"]);
        let refused: Vec<&str> = out.refused.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            refused,
            ["../x", "../evil", "/abs", "up", "hl", "dev", "fifo"]
        );
        assert!(!root.path().join("up").exists());
    }

    #[test]
    fn never_writes_through_an_existing_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let t = tar_of(&[(EntryType::Regular, b"link/pwned", b"x", None)]);
        let out = apply_patch(
            root.path(),
            &["link/other".into()],
            &t,
            &default_limits(),
            &GO,
        );
        assert_eq!(out.refused.len(), 2, "{out:?}");
        assert!(out.refused[1].reason.contains("symlink"), "{out:?}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn malformed_archive_applies_nothing() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("keep"), "k").unwrap();
        let mut t = tar_of(&[(EntryType::Regular, b"a", b"12345", None)]);
        t[0] ^= 0xff; // break the checksum
        let out = apply_patch(root.path(), &["keep".into()], &t, &default_limits(), &GO);
        assert_eq!(out.refused[0].path, ARCHIVE);
        assert_eq!(out.refused[1].path, "keep");
        assert!(root.path().join("keep").exists());
        assert!(out.applied.is_empty() && out.deleted.is_empty());
    }

    #[test]
    fn oversized_long_name_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let long = "d/".repeat(40_000) + "f";
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"x"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let out = apply_patch(root.path(), &[], &t, &default_limits(), &GO);
        assert_eq!(out.refused.len(), 1, "{out:?}");
        assert!(
            out.refused[0].reason.contains("extension headers"),
            "{out:?}"
        );
    }

    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        // "<len> <key>=<value>\n", where <len> counts itself.
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn pax_path_is_honoured_and_oversized_pax_headers_are_refused() {
        let root = tempfile::tempdir().unwrap();
        // A PAX path override is what gets checked and applied (not the header's own name).
        let mut b = tar::Builder::new(Vec::new());
        let rec = pax_record("path", "../escaped");
        b.append(
            &header(EntryType::XHeader, b"pax", rec.len() as u64, 0o644),
            &rec[..],
        )
        .unwrap();
        b.append(
            &header(EntryType::Regular, b"innocent", 1, 0o644),
            &b"x"[..],
        )
        .unwrap();
        let out = apply_patch(
            root.path(),
            &[],
            &b.into_inner().unwrap(),
            &default_limits(),
            &GO,
        );
        assert_eq!(out.refused.len(), 1, "{out:?}");
        assert_eq!(out.refused[0].path, "../escaped");
        assert!(!root.path().join("innocent").exists());

        let mut b = tar::Builder::new(Vec::new());
        let rec = pax_record("comment", &"c".repeat(100_000));
        b.append(
            &header(EntryType::XHeader, b"pax", rec.len() as u64, 0o644),
            &rec[..],
        )
        .unwrap();
        b.append(&header(EntryType::Regular, b"f", 1, 0o644), &b"x"[..])
            .unwrap();
        let out = apply_patch(
            root.path(),
            &[],
            &b.into_inner().unwrap(),
            &default_limits(),
            &GO,
        );
        assert_eq!(out.refused[0].path, ARCHIVE, "{out:?}");
        assert!(out.refused[0].reason.contains("extension headers"));
        assert!(!root.path().join("f").exists());
    }

    #[test]
    fn declared_size_beyond_the_archive_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let h = header(EntryType::Regular, b"big", 1 << 40, 0o644);
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(&[0u8; 1024]);
        let out = apply_patch(root.path(), &[], &t, &default_limits(), &GO);
        assert_eq!(out.refused[0].path, ARCHIVE, "{out:?}");
        assert!(!root.path().join("big").exists());
    }

    #[test]
    fn too_many_entries() {
        let root = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            (EntryType::Regular, b"a", b"", None),
            (EntryType::Regular, b"b", b"", None),
        ]);
        let limits = PatchLimits {
            max_entries: 1,
            ..default_limits()
        };
        let out = apply_patch(root.path(), &[], &t, &limits, &GO);
        assert_eq!(out.refused[0].path, ARCHIVE);
        assert!(out.applied.is_empty());
    }

    #[test]
    fn executable_bit_and_file_replaced_by_directory() {
        let root = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(EntryType::Regular, b"run.sh", 3, 0o755);
        h.set_cksum();
        b.append(&h, &b"#!x"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let out = apply_patch(root.path(), &[], &t, &default_limits(), &GO);
        assert!(out.complete());
        let mode = fs::metadata(root.path().join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // Replace the file with a directory: delete + add in one patch.
        let t = tar_of(&[(EntryType::Regular, b"run.sh/inner", b"y", None)]);
        let out = apply_patch(root.path(), &["run.sh".into()], &t, &default_limits(), &GO);
        assert!(out.complete(), "{out:?}");
        assert!(root.path().join("run.sh/inner").is_file());
    }

    #[test]
    fn build_inputs() {
        let pats = vec![
            ".go".to_string(),
            "go.mod".to_string(),
            "assets/".to_string(),
        ];
        assert!(is_build_input("a/b.go", Some(&pats)));
        assert!(is_build_input("go.mod", Some(&pats)));
        assert!(is_build_input("assets/x.png", Some(&pats)));
        assert!(!is_build_input("README.md", Some(&pats)));
        assert!(is_build_input("README.md", None));
    }
}

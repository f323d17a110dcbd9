//! Filesystem operations below the sync root that never follow a symlink inside it: every
//! parent directory is checked with `lstat` and must be a real directory, so a symlink planted
//! earlier cannot be written through; a new file is created in place with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`, while whatever already exists (and every symlink) is replaced
//! by a temporary name in its final directory renamed into place, so a reader never sees a
//! half-written version of an existing file.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an operation on one path failed (the refusal's reason, with its cause).
#[derive(Debug, thiserror::Error)]
pub(super) enum FsError {
    #[error("parent {0:?} is a symlink; refusing to write through it")]
    ParentIsSymlink(String),
    #[error("parent {0:?} is not a directory; delete it first")]
    ParentNotADirectory(String),
    /// Created by someone else meanwhile, and not as a directory.
    #[error("parent {0:?} is not a directory")]
    ParentReplaced(String),
    #[error("{0:?}")]
    ParentVanished(String, #[source] io::Error),
    #[error("cannot create directory {0:?}")]
    CreateParent(String, #[source] io::Error),
    #[error("cannot inspect {0:?}")]
    Inspect(String, #[source] io::Error),
    #[error("cannot write {0:?}")]
    Write(String, #[source] io::Error),
    #[error("a directory exists at {0:?}; delete it first")]
    DirectoryInTheWay(String),
    #[error("a file or symlink exists at {0:?}; delete it first")]
    NotADirectoryInTheWay(String),
    #[error("cannot move {0:?} into place")]
    Move(String, #[source] io::Error),
    #[error("cannot create {0:?}")]
    CreateDir(String, #[source] io::Error),
    #[error("cannot set permissions of {0:?}")]
    SetPermissions(String, #[source] io::Error),
    #[error("cannot create symlink {0:?}")]
    CreateSymlink(String, #[source] io::Error),
    #[error("cannot delete {0:?}")]
    Delete(String, #[source] io::Error),
}

/// Operations on paths below a root that never follow a symlink inside the root. Paths are
/// normalized wire paths ([`kdev_protocol::normalize_wire_path`]).
///
/// One `SafeRoot` serves one patch (from several threads: see [`super::apply_patch`]): the
/// directories it checked (or made) while writing are remembered and not checked again for the
/// patch's other entries. Within the writing phase
/// nothing of the patch removes a directory (a file or symlink never replaces one), so a
/// directory checked once stays one; deletions, which come first, are never remembered.
pub(super) struct SafeRoot {
    root: PathBuf,
    /// Directories checked to be real directories (not symlinks) while writing this patch.
    verified: Mutex<HashSet<PathBuf>>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a file name is one of our temporary names, `.kdev-<pid>-<n>.tmp` (skipped by
/// reconcile, removed at startup). Exactly that shape, so a user's file is never taken for one.
pub(crate) fn is_temp_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix(".kdev-")
        .and_then(|n| n.strip_suffix(".tmp"))
        .and_then(|n| n.split_once('-'))
        .is_some_and(|(pid, n)| digits(pid) && digits(n))
}

impl SafeRoot {
    pub(super) fn new(root: &Path) -> SafeRoot {
        SafeRoot {
            root: root.to_path_buf(),
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Check every parent of `rel`: each must be a real directory. Missing parents are created
    /// when `create`, otherwise `Ok(None)` is returned.
    fn parent_dir(&self, rel: &str, create: bool) -> Result<Option<PathBuf>, FsError> {
        let mut dir = self.root.clone();
        let comps: Vec<&str> = rel.split('/').collect();
        for (i, c) in comps[..comps.len() - 1].iter().enumerate() {
            dir.push(c);
            if create && self.verified.lock().unwrap().contains(&dir) {
                continue;
            }
            let shown = || comps[..=i].join("/");
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(FsError::ParentIsSymlink(shown()));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(FsError::ParentNotADirectory(shown())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    match fs::DirBuilder::new().mode(0o755).create(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            // Raced with something (another of this patch's workers, or
                            // something in the pod): it must be a directory now.
                            let m = fs::symlink_metadata(&dir)
                                .map_err(|e| FsError::ParentVanished(shown(), e))?;
                            if !m.is_dir() {
                                return Err(FsError::ParentReplaced(shown()));
                            }
                        }
                        Err(e) => return Err(FsError::CreateParent(shown(), e)),
                    }
                }
                Err(e) => return Err(FsError::Inspect(shown(), e)),
            }
            if create {
                self.verified.lock().unwrap().insert(dir.clone());
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
    fn install(tmp: &Path, dir: &Path, name: &str, rel: &str) -> Result<(), FsError> {
        let dest = dir.join(name);
        // rename(2) never replaces a directory with a file or symlink: EISDIR (or ENOTEMPTY,
        // EEXIST) says one is in the way.
        fs::rename(tmp, &dest).map_err(|e| {
            let _ = fs::remove_file(tmp);
            match e.raw_os_error() {
                Some(libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST) => {
                    FsError::DirectoryInTheWay(rel.into())
                }
                _ => FsError::Move(rel.into(), e),
            }
        })
    }

    /// Write a regular file with exactly the permission bits `mode`.
    ///
    /// A path that does not exist yet is created in place (`O_CREAT|O_EXCL|O_NOFOLLOW`): nothing
    /// can be reading a file that is not there, and one rename less per file halved an initial
    /// sync's time in the pod (directory operations are most of it on ext4). Anything already
    /// at the path (a file, a symlink, a directory) is replaced through a temporary name and a
    /// rename, so a reader never sees a half-written version of an existing file. A session
    /// killed in the middle leaves the tree marked dirty; the next reconcile compares hashes.
    pub(super) fn write_file(&self, rel: &str, data: &[u8], mode: u32) -> Result<(), FsError> {
        let dir = self.parent_dir(rel, true)?.expect("created");
        let write = |path: &Path| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            let written = f.write_all(data).and_then(|()| {
                // Exact permission bits (the umask must not eat the executable bit).
                f.set_permissions(fs::Permissions::from_mode(mode))
            });
            if written.is_err() {
                let _ = fs::remove_file(path);
            }
            written
        };
        let dest = dir.join(Self::final_name(rel));
        match write(&dest) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FsError::Write(rel.into(), e)),
        }
        let tmp = Self::temp_path(&dir);
        write(&tmp).map_err(|e| FsError::Write(rel.into(), e))?;
        Self::install(&tmp, &dir, Self::final_name(rel), rel)
    }

    /// Create a directory (or set the mode of an existing one).
    pub(super) fn make_dir(&self, rel: &str, mode: u32) -> Result<(), FsError> {
        let dir = self.parent_dir(rel, true)?.expect("created");
        let path = dir.join(Self::final_name(rel));
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
                Ok(())
            }
            Ok(_) => Err(FsError::NotADirectoryInTheWay(rel.into())),
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| FsError::CreateDir(rel.into(), e))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| FsError::SetPermissions(rel.into(), e))
            }
        }
    }

    /// Create (or replace) a symlink; its target was checked by the caller.
    pub(super) fn make_symlink(&self, rel: &str, target: &str) -> Result<(), FsError> {
        let dir = self.parent_dir(rel, true)?.expect("created");
        let tmp = Self::temp_path(&dir);
        std::os::unix::fs::symlink(target, &tmp)
            .map_err(|e| FsError::CreateSymlink(rel.into(), e))?;
        Self::install(&tmp, &dir, Self::final_name(rel), rel)
    }

    /// Delete a file, symlink (not its target) or whole directory. Absent paths are fine.
    pub(super) fn delete(&self, rel: &str) -> Result<(), FsError> {
        let Some(dir) = self.parent_dir(rel, false)? else {
            return Ok(());
        };
        let path = dir.join(Self::final_name(rel));
        let delete = |e| FsError::Delete(rel.into(), e);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::Inspect(rel.into(), e)),
            // remove_dir_all does not follow symlinks inside the tree.
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).map_err(delete),
            Ok(_) => fs::remove_file(&path).map_err(delete),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_have_exactly_our_shape() {
        assert!(is_temp_name(".kdev-12-3.tmp"));
        for not in [
            ".kdev-12.tmp",
            ".kdev--3.tmp",
            ".kdev-1-2.tmp~",
            "kdev-1-2.tmp",
            ".kdev-a-2.tmp",
        ] {
            assert!(!is_temp_name(not), "{not}");
        }
    }

    #[test]
    fn errors_read_as_before() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let safe = SafeRoot::new(root.path());
        let e = safe.write_file("link/x", b"x", 0o644).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parent \"link\" is a symlink; refusing to write through it"
        );
        fs::create_dir(root.path().join("d")).unwrap();
        let e = safe.write_file("d", b"x", 0o644).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a directory exists at \"d\"; delete it first"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}

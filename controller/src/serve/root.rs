//! Choosing the sync root: `hello.config.sync_root` (or `--src-dir`) must be an absolute path
//! that neither is, contains nor lies inside kdev's `bin/`, `run/` or `cache/` directories (a
//! patch would overwrite the app binary or the controller, the state, the caches). Checked on
//! the path as given, before anything is created, and again with symlinks resolved.

use std::io;
use std::path::{Path, PathBuf};

use kdev_protocol::Layout;

use crate::util::lexical;

/// Why a sync root was refused (fatal `bad_sync_root`).
#[derive(Debug, thiserror::Error)]
pub(super) enum SyncRootError {
    #[error("the sync root {0} is not an absolute path")]
    NotAbsolute(PathBuf),
    #[error(
        "the sync root {root} overlaps kdev's directory for {what} ({dir}); use a directory of \
         its own, such as the default {default}",
        root = .root.display(),
        dir = .dir.display(),
        default = .default.display()
    )]
    Overlaps {
        root: PathBuf,
        what: &'static str,
        dir: PathBuf,
        default: PathBuf,
    },
    #[error("cannot create the sync root {}", .0.display())]
    Create(PathBuf, #[source] io::Error),
    #[error("cannot resolve the sync root {}", .0.display())]
    Resolve(PathBuf, #[source] io::Error),
    #[error("the sync root {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
}

/// Refuse a sync root that is, contains or is inside one of kdev's own directories.
fn check_placement(root: &Path, shown: &Path, layout: &Layout) -> Result<(), SyncRootError> {
    for (what, dir) in [
        ("binaries", &layout.bin),
        ("runtime files", &layout.run),
        ("build caches", &layout.cache),
    ] {
        let dir = dir.canonicalize().unwrap_or_else(|_| lexical(dir));
        if dir.starts_with(root) || root.starts_with(&dir) {
            return Err(SyncRootError::Overlaps {
                root: shown.to_path_buf(),
                what,
                dir,
                default: layout.src.clone(),
            });
        }
    }
    Ok(())
}

/// Check `root`, create it, and return its real path.
pub(super) fn prepare(root: &Path, layout: &Layout) -> Result<PathBuf, SyncRootError> {
    if !root.is_absolute() {
        return Err(SyncRootError::NotAbsolute(root.to_path_buf()));
    }
    // Before creating anything, then again on the real path (symlinks resolved).
    check_placement(&lexical(root), root, layout)?;
    std::fs::create_dir_all(root).map_err(|e| SyncRootError::Create(root.to_path_buf(), e))?;
    let real = root
        .canonicalize()
        .map_err(|e| SyncRootError::Resolve(root.to_path_buf(), e))?;
    if !real.is_dir() {
        return Err(SyncRootError::NotADirectory(root.to_path_buf()));
    }
    check_placement(&real, root, layout)?;
    Ok(real)
}

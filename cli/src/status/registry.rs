//! Where running sessions say where their status API is, so `kdev status` and `kdev ui` in
//! another terminal find them: one file per session, readable by this user only (it holds the
//! token), removed when the session ends (and, if it crashed, by the next reader).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One running session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    pub token: String,
    /// The project's root (where its kdev.yaml is).
    pub root: String,
    pub project: String,
}

impl Entry {
    /// The page's address.
    pub fn page_url(&self) -> String {
        format!("{}/?token={}", self.api, self.token)
    }
}

/// The directory: `$KDEV_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/kdev`, else `/tmp/kdev-<uid>`.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KDEV_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("kdev");
    }
    // SAFETY: getuid cannot fail.
    PathBuf::from(format!("/tmp/kdev-{}", unsafe { libc::getuid() }))
}

/// The session's file, removed when dropped.
pub struct Registered {
    path: PathBuf,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Write `entry`'s file.
pub fn register(entry: &Entry) -> std::io::Result<Registered> {
    let dir = dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    check_private(&dir)?;
    let path = dir.join(format!("{}.json", entry.pid));
    let tmp = dir.join(format!(".{}.json.tmp", entry.pid));
    // A leftover of a crashed session of the same pid; a new file, never followed through a
    // link.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(entry)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(Registered { path })
}

/// The directory must be this user's own, a real directory, readable by nobody else (in
/// `/tmp`, another user could have made it first).
fn check_private(dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of yours that only you can read (remove it, or set \
             KDEV_RUNTIME_DIR)",
            dir.display()
        )));
    }
    Ok(())
}

/// The sessions running now; files of processes that are gone are removed.
pub fn running() -> Vec<Entry> {
    let dir = dir();
    if check_private(&dir).is_err() {
        return Vec::new();
    }
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries: Vec<Entry> = read
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| {
            let entry: Entry = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            if alive(entry.pid) {
                Some(entry)
            } else {
                let _ = std::fs::remove_file(e.path());
                None
            }
        })
        .collect();
    entries.sort_by_key(|e| e.pid);
    entries
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only asks whether the process exists (and may be signalled).
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn registered_while_held_and_the_dead_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // SAFETY (env): this test is the only one in the crate that sets KDEV_RUNTIME_DIR.
        unsafe { std::env::set_var("KDEV_RUNTIME_DIR", dir.path()) };
        let me = Entry {
            pid: std::process::id(),
            api: "http://127.0.0.1:1".into(),
            token: "t".into(),
            root: "/r".into(),
            project: "p".into(),
        };
        let held = register(&me).unwrap();
        let mode = std::fs::metadata(dir.path().join(format!("{}.json", me.pid)))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // A session that crashed: a pid that cannot exist.
        let gone = Entry {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        std::mem::forget(register(&gone).unwrap());
        assert_eq!(running(), vec![me.clone()]);
        assert!(!dir.path().join(format!("{}.json", gone.pid)).exists());
        drop(held);
        assert!(running().is_empty());
        assert_eq!(me.page_url(), "http://127.0.0.1:1/?token=t");
        // A directory others can read (made first by someone else, say) is not used.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = register(&me).err().expect("refused");
        assert!(err.to_string().contains("only you can read"), "{err}");
    }
}

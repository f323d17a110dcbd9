//! The tar of a patch (transfer stage): what the pod gets for the paths that changed, each
//! classified again as the listing classifies it.

use std::path::Path;

use crate::sync::listing::stat::{OpenError, open_regular};
use crate::sync::listing::walk::{Met, classify, parents_are_dirs};
use crate::sync::unsyncable::{Reason, Unsyncable};

/// Building a patch's tar failed (the archive itself, not one path: those are skipped).
#[derive(Debug, thiserror::Error)]
#[error("building the patch: {0}")]
pub struct TarError(#[from] pub std::io::Error);

/// A patch's tar, and what was left out of it.
#[derive(Debug, Default)]
pub struct PatchTar {
    pub tar: Vec<u8>,
    /// How many entries the tar holds.
    pub count: usize,
    /// Paths that can no longer be synced (they changed since they were listed): left out, and
    /// named so that the caller can treat them as it treats the listing's.
    pub skipped: Vec<Unsyncable>,
}

/// What goes into the tar for one path.
enum Item {
    Dir,
    Link(String),
    File(std::fs::File),
}

/// [`build_patch_tar`]'s tar and entry count (what it skipped is dropped: the next event or
/// rescan classifies those paths again).
pub fn build_tar(root: &Path, paths: &[String]) -> Result<(Vec<u8>, usize), TarError> {
    let t = build_patch_tar(root, paths)?;
    Ok((t.tar, t.count))
}

/// A tar of `paths` (relative, `/`-separated) under `root`: files with their mode, symlinks as
/// symlinks, directories as directories. The paths were listed a moment ago and may have changed
/// since, so each is classified again, and nothing the pod cannot hold gets in: no path reached
/// through a symlink, no link leaving the root, no FIFO, socket or device (a file is opened with
/// `O_NOFOLLOW | O_NONBLOCK` and checked to still be a regular file, so a FIFO cannot block it),
/// and an unreadable file is skipped, not fatal. A path that vanished is skipped: the next event
/// for it will delete it.
pub fn build_patch_tar(root: &Path, paths: &[String]) -> Result<PatchTar, TarError> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut out = PatchTar::default();
    for p in paths {
        if !parents_are_dirs(root, Path::new(p)) {
            continue; // only reachable through a symlink now: not in the tree
        }
        let full = root.join(p);
        let unreadable =
            |e: &std::io::Error| Unsyncable::new(p, Reason::UnreadableFile(Reason::io_text(e)));
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.skipped.push(unreadable(&e));
                continue;
            }
        };
        let (meta, item) = if meta.is_file() {
            match open_regular(&full) {
                // The fstat of what was opened describes what is sent.
                Ok((f, m)) => (m, Item::File(f)),
                Err(OpenError::Gone) => continue,
                Err(OpenError::NotRegular(reason)) => {
                    out.skipped.push(Unsyncable::new(p, reason));
                    continue;
                }
                Err(OpenError::Unreadable(e)) => {
                    out.skipped.push(unreadable(&e));
                    continue;
                }
            }
        } else {
            match classify(root, &full, p.clone(), &meta) {
                None => continue,
                Some(Met::Unsyncable(u)) => {
                    out.skipped.push(u);
                    continue;
                }
                // The target checked by the classification is the one sent.
                Some(Met::Synced { stat, .. }) => match stat.target {
                    Some(t) => (meta, Item::Link(t)),
                    None => (meta, Item::Dir),
                },
            }
        };
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        // Deterministic mode drops the permission bits' detail; keep them exactly.
        {
            use std::os::unix::fs::PermissionsExt;
            header.set_mode(meta.permissions().mode() & 0o7777);
        }
        let res = match item {
            Item::Dir => {
                header.set_size(0);
                b.append_data(&mut header, p, std::io::empty())
            }
            Item::Link(target) => {
                header.set_size(0);
                b.append_link(&mut header, p, target)
            }
            Item::File(f) => {
                let len = meta.len();
                header.set_size(len);
                b.append_data(&mut header, p, std::io::Read::take(f, len))
            }
        };
        res.map_err(TarError)?;
        out.count += 1;
    }
    out.tar = b.into_inner().map_err(TarError)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tar_keeps_modes_symlinks_dirs_and_skips_vanished_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("pkg")).unwrap();
        std::fs::write(root.join("pkg/a.go"), "package pkg").unwrap();
        std::fs::write(root.join("run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("pkg/a.go", root.join("link")).unwrap();
        let paths: Vec<String> = ["pkg", "pkg/a.go", "run.sh", "link", "gone.go"]
            .map(String::from)
            .to_vec();
        let PatchTar {
            tar,
            count,
            skipped,
        } = build_patch_tar(root, &paths).unwrap();
        assert_eq!(count, 4);
        assert!(skipped.is_empty());
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let kind = e.header().entry_type();
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            seen.push((
                path,
                kind.is_dir(),
                kind.is_symlink(),
                mode & 0o777,
                data,
                link,
            ));
        }
        assert_eq!(seen[0].0, "pkg");
        assert!(seen[0].1);
        assert_eq!(
            (seen[1].0.as_str(), seen[1].4.as_str()),
            ("pkg/a.go", "package pkg")
        );
        assert_eq!(seen[1].3 & 0o111, 0, "a.go is not executable");
        assert_eq!(seen[2].3, 0o755, "run.sh keeps its executable bits");
        assert!(seen[3].2, "link is a symlink");
        assert_eq!(seen[3].5.as_deref(), Some("pkg/a.go"));
    }

    /// Paths listed a moment ago may have become something the pod cannot hold: the tar skips
    /// them (naming them), and a FIFO does not block it.
    #[test]
    fn tar_never_carries_or_blocks_on_what_cannot_be_synced() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir(root.join("handlers")).unwrap();
        std::fs::write(root.join("handlers/a.go"), "package handlers").unwrap();
        std::fs::write(root.join("ok.go"), "x").unwrap();
        std::os::unix::fs::symlink("handlers", root.join("alias")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../x", root.join("handlers/up")).unwrap();
        // Listed as a file, a FIFO by the time the tar is built.
        let fifo =
            std::ffi::CString::new(root.join("was-a-file.go").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(root.join("secret.go"), "x").unwrap();
        std::fs::set_permissions(
            root.join("secret.go"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        let paths: Vec<String> = [
            "alias/a.go",
            "etc",
            "handlers/up",
            "was-a-file.go",
            "secret.go",
            "ok.go",
        ]
        .map(String::from)
        .to_vec();
        let (tx, rx) = std::sync::mpsc::channel();
        let root2 = root.clone();
        std::thread::spawn(move || {
            let out = crate::sync::listing::tests::without_dac_override(|| {
                build_patch_tar(&root2, &paths)
            });
            let _ = tx.send(out);
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("build_tar blocked (on the FIFO?)")
            .unwrap();
        let mut archive = tar::Archive::new(out.tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["ok.go"]);
        assert_eq!(out.count, 1);
        let skipped: Vec<String> = out.skipped.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            skipped,
            vec![
                "etc: symlink to /etc, outside the sync root",
                "handlers/up: symlink to ../../x, outside the sync root",
                "was-a-file.go: a FIFO (named pipe)",
                "secret.go: cannot read the file: permission denied",
            ]
        );
    }
}

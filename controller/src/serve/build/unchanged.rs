//! Whether a successful build may skip the install and the restart: its binary is
//! byte-identical to the installed one, and the supervisor reports the app running, started
//! from that very file. Services that share a sync root (a monorepo) rebuild on each other's
//! changes; Go builds are reproducible for identical inputs, so such rebuilds give the same
//! bytes and restarting for them would only interrupt the app.
//!
//! Bytes that differ only in the Go build ID count as identical: a quick rebuild
//! ([`crate::quick_build`]) keeps the build ID of the `go build` it repeats, so the same sources
//! built quickly and by `go build` differ there (and in the GNU build ID derived from it) and
//! nowhere else, and neither is part of what the program does.
//!
//! Anything else installs and restarts as usual: no installed binary, the app not running
//! (crashed, never started, stopping, no supervisor), the running child started from an
//! earlier binary (a restart that failed or is still under way), or different bytes.

use std::io;
use std::path::Path;

use kdev_protocol::{AppState, Layout, hash_file};
use nix::errno::Errno;
use nix::sys::signal;
use nix::unistd::Pid;

use crate::run_files::{file_id, read_pid_file, read_status};

/// Why a successful build is installed and the app restarted (the usual case).
#[derive(Debug, thiserror::Error)]
pub(super) enum MustInstall {
    #[error("no app binary is installed")]
    NothingInstalled,
    #[error("the app is not running ({0})")]
    NotRunning(&'static str),
    #[error("the running app was not started from the installed binary")]
    StartedFromAnother,
    #[error("the new binary differs from the installed one")]
    Differs,
    #[error("cannot compare the new binary with the installed one: {0}")]
    Compare(#[source] io::Error),
}

/// Ok when the build's output can be dropped: the app runs a byte-identical binary. Reads a
/// few small files, then (only when everything else allows the skip) hashes both binaries
/// unless their sizes differ: about 4 ms per 15 MB.
pub(super) fn check(layout: &Layout) -> Result<(), MustInstall> {
    let app = layout.app_binary();
    let installed = file_id(&app).map_err(|_| MustInstall::NothingInstalled)?;
    // Read now, not the watcher's copy (up to a poll interval old): a crash a moment ago must
    // not be taken for a running app.
    let status = read_status(&layout.status_file())
        .ok_or(MustInstall::NotRunning("no supervisor status"))?;
    let pid = match (status.state, status.pid) {
        (AppState::Running, Some(pid)) => pid,
        (state, _) => {
            return Err(MustInstall::NotRunning(match state {
                AppState::Waiting => "never started",
                AppState::Backoff => "it exited, waiting to start again",
                AppState::Stopping => "being stopped",
                AppState::Stopped => "its supervisor stopped",
                AppState::Running => "no process",
            }));
        }
    };
    // A supervisor killed outright (its container restarting) leaves a status saying running.
    let supervisor = read_pid_file(&layout.pid_file())
        .map_err(|_| MustInstall::NotRunning("no supervisor PID file"))?;
    if supervisor != status.supervisor_pid || !alive(supervisor) {
        return Err(MustInstall::NotRunning("the supervisor is gone"));
    }
    if !alive(pid) {
        return Err(MustInstall::NotRunning("its process is gone"));
    }
    if status.app_binary.as_deref() != Some(&installed) {
        return Err(MustInstall::StartedFromAnother);
    }
    if !same_bytes(&layout.app_next(), &app, installed.size).map_err(MustInstall::Compare)? {
        return Err(MustInstall::Differs);
    }
    Ok(())
}

/// Whether two binaries are the same program: the same bytes, the Go build ID aside. False
/// when either cannot be read.
pub(super) fn same_binary(a: &Path, b: &Path) -> bool {
    std::fs::metadata(b).is_ok_and(|m| same_bytes(a, b, m.len()).unwrap_or(false))
}

/// Whether `next` has the bytes of `installed` (whose size is known), the Go build ID aside:
/// sizes, then BLAKE3, then (different hashes) both files with their build IDs blanked.
fn same_bytes(next: &Path, installed: &Path, installed_size: u64) -> io::Result<bool> {
    if std::fs::metadata(next)?.len() != installed_size {
        return Ok(false);
    }
    if hash_file(next)? == hash_file(installed)? {
        return Ok(true);
    }
    let (mut a, mut b) = (std::fs::read(next)?, std::fs::read(installed)?);
    Ok(blank_build_id(&mut a) && blank_build_id(&mut b) && a == b)
}

/// Zero the Go build ID (the ELF note "Go", type 4, and every other copy of its text) and the
/// GNU build ID the linker derives from it (note "GNU", type 3) in a binary; false if it has no
/// Go build ID.
fn blank_build_id(binary: &mut [u8]) -> bool {
    let Some(go) = note_desc(binary, b"Go\0\0", 4) else {
        return false;
    };
    let id = binary[go.clone()].to_vec();
    let copies: Vec<usize> = memchr::memmem::find_iter(binary, &id).collect();
    for at in copies {
        binary[at..at + id.len()].fill(0);
    }
    if let Some(gnu) = note_desc(binary, b"GNU\0", 3) {
        binary[gnu].fill(0);
    }
    true
}

/// Where the description of the first ELF note named `name` (4 bytes with its padding) of type
/// `kind` is (little-endian: namesz, descsz, type, name, desc).
fn note_desc(binary: &[u8], name: &[u8; 4], kind: u32) -> Option<std::ops::Range<usize>> {
    let mut head = kind.to_le_bytes().to_vec();
    head.extend_from_slice(name);
    let word = |at: usize| u32::from_le_bytes(binary[at..at + 4].try_into().unwrap_or([0; 4]));
    memchr::memmem::find_iter(binary, &head).find_map(|at| {
        let (namesz, descsz) = (word(at.checked_sub(8)?), word(at.checked_sub(4)?) as usize);
        let start = at + 8;
        (namesz as usize <= 4 && (1..=256).contains(&descsz) && start + descsz <= binary.len())
            .then_some(start..start + descsz)
    })
}

/// Whether a process exists (one we may not signal does).
fn alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => !matches!(signal::kill(Pid::from_raw(p), None), Err(Errno::ESRCH)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_compares_sizes_then_content() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"binary one").unwrap();
        std::fs::write(&b, b"binary one").unwrap();
        assert!(same_bytes(&a, &b, 10).unwrap());
        std::fs::write(&b, b"binary two").unwrap();
        assert!(!same_bytes(&a, &b, 10).unwrap());
        // A size that differs decides without reading.
        assert!(!same_bytes(&a, Path::new("/nonexistent"), 3).unwrap());
        assert!(same_bytes(&d.path().join("missing"), &b, 10).is_err());
    }

    #[test]
    fn binaries_that_differ_only_in_the_go_build_id_are_the_same() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        // Both notes, then the code; the Go build ID's text again in the code.
        let binary = |id: &str, gnu: &[u8; 4], code: &str| {
            let note = |name: &[u8; 4], kind: u32, desc: &[u8]| {
                [
                    &4u32.to_le_bytes()[..],
                    &(desc.len() as u32).to_le_bytes(),
                    &kind.to_le_bytes(),
                    name,
                    desc,
                ]
                .concat()
            };
            [
                &b"\x7fELF"[..],
                &note(b"Go\0\0", 4, id.as_bytes()),
                &note(b"GNU\0", 3, gnu),
                code.as_bytes(),
                id.as_bytes(),
            ]
            .concat()
        };
        std::fs::write(&a, binary("aaaa/bbbb/cccc/dddd", b"1234", "main")).unwrap();
        std::fs::write(&b, binary("aaaa/bbbb/cccc/eeee", b"5678", "main")).unwrap();
        let size = std::fs::metadata(&b).unwrap().len();
        assert!(same_bytes(&a, &b, size).unwrap());
        std::fs::write(&a, binary("aaaa/bbbb/cccc/dddd", b"1234", "mai!")).unwrap();
        assert!(!same_bytes(&a, &b, size).unwrap());
        // Without a build ID, different bytes are different.
        std::fs::write(&a, b"x".repeat(size as usize)).unwrap();
        std::fs::write(&b, b"y".repeat(size as usize)).unwrap();
        assert!(!same_bytes(&a, &b, size).unwrap());
    }

    #[test]
    fn liveness() {
        assert!(alive(std::process::id()));
        assert!(!alive(0));
        assert!(!alive(u32::MAX));
    }
}

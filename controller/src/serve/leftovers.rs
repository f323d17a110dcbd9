//! What an interrupted session leaves behind, cleaned up when the next one starts.
//!
//! * Temporary files of a patch that was being applied (`.kdev-<pid>-<n>.tmp`, files or
//!   symlinks, anywhere in the sync root): [`remove_temp_files`].
//! * A build that was running: a `serve` killed with SIGKILL (the CLI's take-over after 5 s,
//!   the OOM killer) runs no cleanup, and its build keeps writing the same `app.next` as the
//!   next session's build. So every build records its process group in `run/build.pgid`
//!   while it runs, and the next session kills that group at startup
//!   ([`kill_stale_build`]).
//! * A write of the listing's hash cache cut short (`run/.reconcile-cache.<pid>.tmp`):
//!   [`remove_cache_temp_files`].

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::patch::is_temp_name;
use crate::run_files::process_start_time as start_time;

/// `(state, pgrp)` of a process, from `/proc/<pid>/stat`.
fn state_and_group(pid: &str) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let pgrp = f.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether a process of group `pgid` is alive (zombies do not count: whoever inherited them
/// reaps them, but they run nothing and write nothing).
fn group_alive(pgid: i32) -> bool {
    if signal::killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
        return false;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|p| {
        let name = p.file_name();
        let name = name.to_string_lossy();
        name.bytes().all(|b| b.is_ascii_digit())
            && state_and_group(&name).is_some_and(|(st, g)| g == pgid && st != 'Z')
    })
}

/// Record the running build's process group (its leader's PID) in `file`.
pub(super) fn record_build(file: &Path, pgid: i32) {
    let start = start_time(pgid).unwrap_or(0);
    if let Err(e) = crate::util::write_atomic(file, format!("{pgid} {start}\n").as_bytes()) {
        eprintln!(
            "kdev-serve: cannot record the build's process group in {}: {e}",
            file.display()
        );
    }
}

/// Kill the build recorded in `file` by a session that did not clean up, wait (up to 5 s)
/// until its group is gone, and remove the record. Returns the group it killed.
pub(super) fn kill_stale_build(file: &Path) -> Option<i32> {
    let data = fs::read_to_string(file).ok()?;
    let _ = fs::remove_file(file);
    let mut f = data.split_whitespace();
    let pgid: i32 = f.next()?.parse().ok().filter(|p| *p > 1)?;
    let start: u64 = f.next()?.parse().ok()?;
    // The leader still runs: it must be the same process (not a reused PID). The leader gone
    // but the group alive: that group is the build's (a group ID is not reused while it has
    // members).
    match start_time(pgid) {
        Some(s) if s != start => return None,
        _ => {}
    }
    if !group_alive(pgid) {
        return None;
    }
    let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(pgid)
}

/// Remove our temporary files (exact names, see [`is_temp_name`]) anywhere below `root`,
/// descending only into real directories (never through a symlink). Returns how many went.
pub(super) fn remove_temp_files(root: &Path) -> usize {
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for de in rd.flatten() {
            // The entry's own type (d_type or lstat): a symlink is never followed.
            let Ok(ft) = de.file_type() else { continue };
            if ft.is_dir() {
                dirs.push(de.path());
            } else if de.file_name().to_str().is_some_and(is_temp_name) {
                match fs::remove_file(de.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => eprintln!(
                        "kdev-serve: cannot remove the temporary file {}: {e}",
                        de.path().display()
                    ),
                }
            }
        }
    }
    removed
}

/// Remove the temporary files of writes of `cache_file` that never finished
/// (`.<name>.<pid>.tmp` beside it, as `write_atomically` names them; a killed writer leaves its
/// one behind for good). Called with the session lock held: no other `serve` writes it now.
pub(super) fn remove_cache_temp_files(cache_file: &Path) -> usize {
    let (Some(dir), Some(name)) = (
        cache_file.parent(),
        cache_file.file_name().and_then(|n| n.to_str()),
    ) else {
        return 0;
    };
    let prefix = format!(".{name}.");
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for de in rd.flatten() {
        let file_name = de.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        let ours = n
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if ours && de.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(de.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unfinished_writes_of_the_cache_file_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("reconcile-cache");
        fs::write(&cache, "kept").unwrap();
        for n in [".reconcile-cache.123.tmp", ".reconcile-cache.9.tmp"] {
            fs::write(d.path().join(n), "half").unwrap();
        }
        let kept = [
            ".reconcile-cache.x1.tmp",
            ".reconcile-cache..tmp",
            ".other.12.tmp",
            "reconcile-cache.12.tmp",
        ];
        for n in kept {
            fs::write(d.path().join(n), "not ours").unwrap();
        }
        assert_eq!(remove_cache_temp_files(&cache), 2);
        assert!(cache.exists());
        for n in kept {
            assert!(d.path().join(n).exists(), "{n}");
        }
    }
}

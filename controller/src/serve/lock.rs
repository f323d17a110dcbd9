//! One session at a time: `run/serve.lock` (flock) and `run/serve.pid`. A previous `serve`
//! whose exec stream broke may still be alive (and building into the same `app.next`); the
//! newest session wins: it SIGTERMs the holder, SIGKILLs it after 5 s, and gives up after 10.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kdev_protocol::Layout;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::log;
use crate::run_files;

/// Why the session lock could not be taken (fatal `setup_failed`).
#[derive(Debug, thiserror::Error)]
pub(super) enum LockError {
    #[error("cannot open {}", .0.display())]
    Open(PathBuf, #[source] io::Error),
    #[error("cannot lock {}", .0.display())]
    Lock(PathBuf, #[source] Errno),
    #[error(
        "another kdev-controller serve session holds {} and did not stop; end the other kdev \
         session first",
        .0.display()
    )]
    Held(PathBuf),
}

/// Take the lock, stopping a previous session that holds it. Returns the lock (held until
/// dropped) and the PID of the session that was stopped, if any (0 if it was unknown).
pub(super) async fn take(layout: &Layout) -> Result<(Flock<File>, Option<u32>), LockError> {
    let lock_path = layout.serve_lock_file();
    let pid_path = layout.serve_pid_file();
    let open = || {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LockError::Open(lock_path.clone(), e))
    };
    let mut replaced = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = false;
    loop {
        match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let _ = run_files::write_pid_file(&pid_path);
                return Ok((lock, replaced));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                if replaced.is_none() {
                    let pid = run_files::read_pid_file(&pid_path)
                        .ok()
                        .filter(|p| *p != std::process::id());
                    if let Some(pid) = pid {
                        log(format!(
                            "a previous session (PID {pid}) is still running; stopping it"
                        ));
                        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    }
                    replaced = Some(pid.unwrap_or(0));
                }
                if Instant::now() > deadline - Duration::from_secs(5) && !killed {
                    if let Some(pid) = replaced.filter(|p| *p != 0) {
                        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                    killed = true;
                }
                if Instant::now() > deadline {
                    return Err(LockError::Held(lock_path));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((_, e)) => return Err(LockError::Lock(lock_path, e)),
        }
    }
}

//! One session at a time: `run/serve.lock` (flock) and `run/serve.pid`. A previous `serve`
//! whose exec stream broke may still be alive (and building into the same `app.next`); the
//! newest session wins: it SIGTERMs the holder, SIGKILLs it after 5 s, and gives up after 10.
//!
//! The holder is known by the record it writes into the lock file once it holds the lock: its
//! PID and start time, which together name one process even after the PID is reused. It is
//! signalled through a pidfd opened before its start time is checked, so a process that gets
//! the PID later can never receive the signal. A holder that cannot be identified that way
//! (its record is not written yet, or it is an older controller that writes none) is not
//! signalled at all; `run/serve.pid` is for people, never acted on. When two sessions take
//! over at once, the one that gets the lock wins and the other, finding a new holder instead
//! of the one it stopped, gives up with an error that says so.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kdev_protocol::Layout;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::log::serve as log;
use crate::run_files::{self, process_start_time};

/// How long the holder has to stop after SIGTERM before it is SIGKILLed.
const GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the lock before giving up.
const GIVE_UP: Duration = Duration::from_secs(10);

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
    #[error(
        "another kdev-controller serve session (PID {pid}) took over {path} at the same time as \
         this one; end the other kdev session first",
        pid = .1,
        path = .0.display()
    )]
    TakenMeanwhile(PathBuf, u32),
}

/// What a lock file says about its holder: `<pid> <start time>`.
type Record = (u32, u64);

pub(super) fn read_record(path: &Path) -> Option<Record> {
    let text = fs::read_to_string(path).ok()?;
    let mut f = text.split_whitespace();
    let pid = f.next()?.parse().ok().filter(|p| *p > 0)?;
    Some((pid, f.next()?.parse().ok()?))
}

/// Record this process as the holder of `lock` (empty when its start time is unknown).
fn write_record(lock: &File) -> io::Result<()> {
    lock.set_len(0)?;
    let pid = std::process::id();
    match process_start_time(pid as i32) {
        Some(start) => (&*lock).write_all(format!("{pid} {start}\n").as_bytes()),
        None => Ok(()),
    }
}

/// A process named by its PID and start time. Signals reach that process or none, never a
/// later one with the same PID.
struct Holder {
    record: Record,
    /// `None` without pidfds (Linux before 5.3, a seccomp filter): the start time is then
    /// checked again right before each signal, which leaves a window of microseconds.
    pidfd: Option<OwnedFd>,
}

impl Holder {
    /// The process of `record`, if it still runs.
    fn find(record: Record) -> Option<Holder> {
        let (pid, start) = record;
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(Errno::ESRCH) => return None,
            Err(_) => None,
        };
        // Checked after the pidfd was opened: had the PID been reused in between, it would
        // name a process with another start time now, so a match means the pidfd is the
        // holder's.
        (process_start_time(pid as i32) == Some(start)).then_some(Holder { record, pidfd })
    }

    fn pid(&self) -> u32 {
        self.record.0
    }

    fn signal(&self, sig: Signal) {
        match &self.pidfd {
            Some(fd) => {
                let _ = pidfd_send_signal(fd, sig);
            }
            None if process_start_time(self.pid() as i32) == Some(self.record.1) => {
                let _ = signal::kill(Pid::from_raw(self.pid() as i32), sig);
            }
            None => {}
        }
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open(2) takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_signal(fd: &OwnedFd, sig: Signal) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal(2) with a pidfd, a signal number, no siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// A takeover in progress: the holder that was sent SIGTERM, and when.
struct Stopping {
    holder: Holder,
    since: Instant,
    killed: bool,
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
    let started = Instant::now();
    let mut held = false;
    let mut stopping: Option<Stopping> = None;
    loop {
        match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if let Err(e) = write_record(&lock) {
                    log(format!(
                        "cannot record this session in {}: {e}",
                        lock_path.display()
                    ));
                }
                let _ = run_files::write_pid_file(&pid_path);
                let replaced = stopping.map_or(0, |s| s.holder.pid());
                return Ok((lock, held.then_some(replaced)));
            }
            Err((_, Errno::EWOULDBLOCK)) => held = true,
            Err((_, e)) => return Err(LockError::Lock(lock_path, e)),
        }
        let known = stopping.as_ref().map(|s| s.holder.record);
        let holder = read_record(&lock_path)
            .filter(|r| Some(*r) != known)
            .and_then(Holder::find);
        if let Some(holder) = holder {
            if stopping.is_some() {
                // Another session got the lock after the one this one stopped.
                return Err(LockError::TakenMeanwhile(lock_path, holder.pid()));
            }
            log(format!(
                "a previous session (PID {}) is still running; stopping it",
                holder.pid()
            ));
            holder.signal(Signal::SIGTERM);
            stopping = Some(Stopping {
                holder,
                since: Instant::now(),
                killed: false,
            });
        }
        let deadline = match &mut stopping {
            Some(s) => {
                if !s.killed && s.since.elapsed() > GRACE {
                    s.holder.signal(Signal::SIGKILL);
                    s.killed = true;
                }
                s.since + GIVE_UP
            }
            None => started + GIVE_UP,
        };
        if Instant::now() > deadline {
            return Err(LockError::Held(lock_path));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

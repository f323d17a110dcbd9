//! The supervisor's signals: which it handles, how it waits for them (blocked in every thread
//! and taken with `sigtimedwait`, so nothing runs in signal-handler context and PID 1's "no
//! default action" rule does not matter), how the app starts with none of them blocked, and
//! signalling a process group.

use std::io;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

/// What the supervisor acts on: SIGHUP (restart), SIGTERM/SIGINT (stop), SIGCHLD (reap);
/// SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to the app's group.
const HANDLED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGCHLD,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The handled signals, blocked in the calling thread (call it before any thread exists, so
/// every thread inherits the mask).
pub(super) fn block_handled() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(set)
}

/// Wait up to `timeout` for one of the signals in `set`.
pub(super) fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is a valid sigset_t, `info` may be null, `ts` is a valid timespec.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if r < 0 {
        return None; // EAGAIN (timeout) or EINTR
    }
    Signal::try_from(r).ok()
}

/// Run in the app between fork and exec: the supervisor blocks the signals it handles, and
/// the app must start with none blocked (std does not reset the mask, and a blocked SIGTERM
/// would survive exec), and with SIGPIPE's default action.
///
/// Only async-signal-safe calls (sigemptyset, sigprocmask, signal).
pub(super) fn reset_in_child() -> io::Result<()> {
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    Ok(())
}

/// `sig` to the process group `pgid`. The leader may have left its group (setsid): it is
/// signalled directly, but only while it is not reaped (after that its PID may belong to
/// someone else).
pub(super) fn send_group(pgid: Pid, sig: Signal, leader_alive: bool) {
    if signal::killpg(pgid, sig) == Err(Errno::ESRCH) && leader_alive {
        let _ = signal::kill(pgid, sig);
    }
}

/// Whether no process of group `pgid` is left.
pub(super) fn group_gone(pgid: Pid) -> bool {
    signal::killpg(pgid, None) == Err(Errno::ESRCH)
}

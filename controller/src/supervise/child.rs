//! Starting the app: its own process group (its PGID is its PID), no signal blocked, stdout
//! and stderr through pipes into [`super::app_log`]; and describing how it ended.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use kdev_protocol::{ExitInfo, Stream};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::app_log::{AppLog, copy_output};
use super::signals;
use crate::util::{ms, unix_ms};

/// The running app.
pub(super) struct Child {
    pub pid: Pid,
    pub started: Instant,
    /// The status file's `starts` value of this process.
    pub start_seq: u64,
    /// Receives one message per output thread when it finishes.
    pub output_done: mpsc::Receiver<()>,
    /// How it ended, once reaped.
    pub exited: Option<WaitStatus>,
}

/// Start `cmd` (non-empty) in a new process group, its output copied to `log`.
pub(super) fn spawn(cmd: &[String], start_seq: u64, log: &Arc<Mutex<AppLog>>) -> io::Result<Child> {
    let mut command = Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .process_group(0)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: reset_in_child only makes async-signal-safe calls.
    unsafe {
        command.pre_exec(signals::reset_in_child);
    }
    let mut child = command.spawn()?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        copy_in_thread(out, pid, Stream::Stdout, log.clone(), tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        copy_in_thread(err, pid, Stream::Stderr, log.clone(), tx);
    }
    // The std Child is dropped without waiting: the supervisor reaps with waitpid(-1) itself.
    drop(child);
    Ok(Child {
        pid: Pid::from_raw(pid as i32),
        started: Instant::now(),
        start_seq,
        output_done: rx,
        exited: None,
    })
}

/// [`copy_output`] in a thread of its own, which says on `done` when the pipe closed.
fn copy_in_thread<R: io::Read + Send + 'static>(
    pipe: R,
    pid: u32,
    stream: Stream,
    log: Arc<Mutex<AppLog>>,
    done: mpsc::Sender<()>,
) {
    thread::spawn(move || {
        copy_output(pipe, pid, stream, log);
        let _ = done.send(());
    });
}

impl Child {
    /// What the status file says about how it ended.
    pub(super) fn exit_info(&self, expected: bool) -> ExitInfo {
        let (code, signal) = match self.exited {
            Some(WaitStatus::Exited(_, code)) => (Some(code), None),
            Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
            _ => (None, None),
        };
        ExitInfo {
            pid: self.pid.as_raw() as u32,
            code,
            signal,
            at_ms: unix_ms(),
            runtime_ms: ms(self.started.elapsed()),
            expected,
            start_seq: self.start_seq,
        }
    }
}

/// `exit code 3`, `killed by SIGKILL`.
pub(super) fn describe_exit(i: &ExitInfo) -> String {
    match (i.code, i.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!(
            "killed by {}",
            Signal::try_from(s)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| s.to_string())
        ),
        _ => "unknown status".into(),
    }
}

//! Asking the supervisor to restart the app: SIGHUP to the PID in `run/supervisor.pid`, wait
//! for the status to show a new child (`Restarted`), then poll `127.0.0.1:<port>` until it
//! accepts (`Ready`, or `NotReady`). Anything that keeps the restart from happening is one
//! `RestartFailed` event with the reason.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kdev_protocol::{AppState, AppStatus, Event};
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::app_watch::AppWatch;
use super::io::Out;
use crate::run_files::read_pid_file;
use crate::util::{ms, unix_ms};

/// Everything a restart needs.
#[derive(Clone)]
pub(super) struct RestartCtx {
    pub pid_file: PathBuf,
    pub out: Out,
    pub watch: AppWatch,
    pub app_port: Option<u16>,
    pub ready_timeout: Duration,
    pub restart_timeout: Duration,
}

/// How long a build that finished before the main container's supervisor came up waits for
/// it (it starts the installed binary by itself); a pod whose main container never runs one
/// is told so after this.
const SUPERVISOR_START_WAIT: Duration = Duration::from_secs(10);

/// Why the app was not restarted (the `reason` of `RestartFailed`).
#[derive(Debug, thiserror::Error)]
enum RestartError {
    #[error(
        "no supervisor to restart the app: cannot read {} ({error}). Is the main container \
         running `kdev-controller supervise`? The new binary is in place and runs when it starts.",
        pid_file.display()
    )]
    NoPidFile { pid_file: PathBuf, error: io::Error },
    #[error(
        "PID {pid} from {} is not a kdev-controller supervisor (stale PID file?)",
        pid_file.display()
    )]
    NotASupervisor { pid: u32, pid_file: PathBuf },
    #[error(
        "the supervisor (PID {pid} from {}) is not running; is shareProcessNamespace enabled on the pod?",
        pid_file.display()
    )]
    SupervisorGone { pid: u32, pid_file: PathBuf },
    #[error(
        "cannot signal the supervisor (PID {pid}): {error}; run both containers as the same user \
         (or give this container CAP_KILL)"
    )]
    Signal { pid: u32, error: Errno },
    /// The new process exited at once: the supervisor's last error, or a generic reason.
    #[error("{}", .0.as_deref().unwrap_or("the new process exited right after starting"))]
    ExitedAtOnce(Option<String>),
    #[error("the supervisor did not start a new process within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Is `pid` a kdev-controller supervisor? Unknown (unreadable) counts as yes.
fn looks_like_supervisor(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => String::from_utf8_lossy(&c).contains("supervise"),
        Err(_) => true,
    }
}

/// Clears `restart_pending` when dropped.
struct PendingGuard(Arc<AtomicBool>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Ask the supervisor to restart the app after build `build_id` and report `Restarted` and
/// `Ready`.
pub(super) async fn restart_and_wait(ctx: RestartCtx, build_id: u64) {
    // Optional in the events: the protocol leaves room for a restart without a build.
    let build_id = Some(build_id);
    let before = ctx.watch.status.borrow().clone();
    let t_sig = Instant::now();
    let pid = match read_pid_file(&ctx.pid_file) {
        Ok(pid) => Some(pid),
        // A new pod's main container may not have started its supervisor yet (a build from a
        // warm cache beats it): the supervisor starts the installed binary by itself when it
        // comes up, so wait for that instead of failing.
        Err(error) if error.kind() == io::ErrorKind::NotFound && before.is_none() => None,
        Err(error) => {
            let pid_file = ctx.pid_file.clone();
            return fail(&ctx, build_id, RestartError::NoPidFile { pid_file, error }).await;
        }
    };
    ctx.watch.restart_pending.store(true, Ordering::SeqCst);
    let guard = PendingGuard(ctx.watch.restart_pending.clone());
    let status = match signal_and_wait(&ctx, pid, before).await {
        Ok(s) => s,
        Err(RestartError::Timeout(_)) if pid.is_none() => {
            let pid_file = ctx.pid_file.clone();
            let error = io::Error::new(
                io::ErrorKind::NotFound,
                format!("none came up within {} s", SUPERVISOR_START_WAIT.as_secs()),
            );
            return fail(&ctx, build_id, RestartError::NoPidFile { pid_file, error }).await;
        }
        Err(e) => return fail(&ctx, build_id, e).await,
    };
    let pid = status.pid.unwrap_or_default();
    let stop_ms = status
        .last_restart
        .as_ref()
        .filter(|r| r.start_seq == status.starts)
        .map(|r| r.stop_ms);
    ctx.out
        .event(Event::Restarted {
            build_id,
            pid,
            elapsed_ms: ms(t_sig.elapsed()),
            stop_ms,
            relay_port: status.relay_port,
        })
        .await;
    drop(guard);
    if let Some(port) = ctx.app_port {
        wait_ready(&ctx, build_id, &status, port, t_sig).await;
    }
}

async fn fail(ctx: &RestartCtx, build_id: Option<u64>, e: RestartError) {
    let reason = e.to_string();
    ctx.out
        .event(Event::RestartFailed { build_id, reason })
        .await;
}

/// SIGHUP the supervisor (unless it is still waiting for the first binary, or has not come up
/// yet: `pid` is `None`) and wait for the status of a new child, compared with `before`.
async fn signal_and_wait(
    ctx: &RestartCtx,
    pid: Option<u32>,
    before: Option<AppStatus>,
) -> Result<AppStatus, RestartError> {
    let before_starts = before.as_ref().map(|s| s.starts).unwrap_or(0);
    let before_supervisor = before.as_ref().map(|s| s.supervisor_pid);
    // A new child: the start count grew, or a different supervisor reports (restarted container).
    let is_new =
        |s: &AppStatus| s.starts > before_starts || Some(s.supervisor_pid) != before_supervisor;
    // A supervisor still waiting for the first binary starts it by itself: no signal needed
    // (one would only restart the process it is about to start).
    let waiting = before
        .as_ref()
        .is_some_and(|s| s.state == AppState::Waiting);
    if let Some(pid) = pid.filter(|_| !waiting) {
        let pid_file = ctx.pid_file.clone();
        if !looks_like_supervisor(pid) {
            return Err(RestartError::NotASupervisor { pid, pid_file });
        }
        match signal::kill(Pid::from_raw(pid as i32), Signal::SIGHUP) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Err(RestartError::SupervisorGone { pid, pid_file }),
            Err(error) => return Err(RestartError::Signal { pid, error }),
        }
    }
    let mut status_rx = ctx.watch.status.clone();
    let wait = match pid {
        Some(_) => ctx.restart_timeout,
        None => ctx.restart_timeout.min(SUPERVISOR_START_WAIT),
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        {
            let cur = status_rx.borrow_and_update();
            match cur.as_ref() {
                Some(s) if is_new(s) && s.pid.is_some() => return Ok(s.clone()),
                Some(s) if is_new(s) && s.state == AppState::Backoff => {
                    return Err(RestartError::ExitedAtOnce(s.last_error.clone()));
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(deadline, status_rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return Err(RestartError::Timeout(ctx.restart_timeout)),
        }
    }
}

/// Poll the app's port until it accepts (`Ready`), the app exits or the timeout passes
/// (`NotReady`).
async fn wait_ready(
    ctx: &RestartCtx,
    build_id: Option<u64>,
    status: &AppStatus,
    port: u16,
    t_sig: Instant,
) {
    let pid = status.pid.unwrap_or_default();
    let t_start = Instant::now();
    let started_at = status.started_at_ms.unwrap_or_else(unix_ms);
    let deadline = t_start + ctx.ready_timeout;
    loop {
        let addrs = [
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ];
        for addr in addrs {
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(250),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                let elapsed_ms = unix_ms().saturating_sub(started_at);
                ctx.out
                    .event(Event::Ready {
                        build_id,
                        pid,
                        port,
                        elapsed_ms,
                        since_signal_ms: ms(t_sig.elapsed()),
                    })
                    .await;
                return;
            }
        }
        let alive = ctx.watch.status.borrow().as_ref().and_then(|s| s.pid) == Some(pid);
        if !alive || Instant::now() >= deadline {
            let reason = if alive {
                format!(
                    "port {port} did not accept connections within {} s",
                    ctx.ready_timeout.as_secs()
                )
            } else {
                "the app exited before its port accepted connections".to_string()
            };
            ctx.out
                .event(Event::NotReady {
                    build_id,
                    port,
                    waited_ms: ms(t_start.elapsed()),
                    reason,
                })
                .await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

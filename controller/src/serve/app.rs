//! Watching the app through the supervisor's files, and asking the supervisor to restart.
//!
//! * The watcher polls `run/app-status.json` and tails `run/app.log` (every 25 ms; both are
//!   small local reads), turning changes into `AppStarted`, `AppExited` and `AppOutput` events.
//!   Output lines are sent with `try_send`: when the client falls behind they are dropped and
//!   counted (`AppOutputDropped`), never queued without bound and never blocking anything.
//! * A restart sends SIGHUP to the PID in `run/supervisor.pid`, waits for the status to show a
//!   new child (`Restarted`), then polls `127.0.0.1:<port>` until it accepts (`Ready`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kdev_protocol::{AppState, AppStatus, Event, OutputLine};
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::Out;
use crate::run_files::{LogRecord, read_pid_file, read_status};
use crate::util::{ms, unix_ms};

const POLL: Duration = Duration::from_millis(25);
const LAST_LINES: usize = 20;

/// Follows `app.log` across rotations.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Start at the current end of the log: old output is not replayed.
    fn new(path: PathBuf) -> Tail {
        let mut t = Tail {
            path,
            file: None,
            ino: 0,
            pos: 0,
            partial: Vec::new(),
        };
        if let Ok(mut f) = File::open(&t.path) {
            t.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
            t.pos = f.seek(SeekFrom::End(0)).unwrap_or(0);
            t.file = Some(f);
        }
        t
    }

    fn read_available(&mut self, out: &mut Vec<LogRecord>) {
        let Some(f) = &mut self.file else { return };
        let mut buf = Vec::new();
        // At most 4 MiB per poll, so a flood cannot starve the rest of the loop.
        if let Ok(n) = f.take(4 << 20).read_to_end(&mut buf) {
            self.pos += n as u64;
        }
        self.partial.extend_from_slice(&buf);
        let mut start = 0;
        while let Some(i) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + i];
            if let Ok(rec) = serde_json::from_slice::<LogRecord>(line) {
                out.push(rec);
            }
            start += i + 1;
        }
        self.partial.drain(..start);
        if self.partial.len() > 1 << 20 {
            self.partial.clear();
        }
    }

    fn poll(&mut self) -> Vec<LogRecord> {
        let mut out = Vec::new();
        self.read_available(&mut out);
        match std::fs::metadata(&self.path) {
            Ok(m) if self.file.is_none() || m.ino() != self.ino => {
                // Created or rotated: finish the old file (done above), then follow the new one
                // from its start.
                if let Ok(f) = File::open(&self.path) {
                    self.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    self.file = Some(f);
                    self.pos = 0;
                    self.partial.clear();
                    self.read_available(&mut out);
                }
            }
            Ok(m) if m.len() < self.pos => {
                // Truncated in place.
                if let Some(f) = &mut self.file {
                    let _ = f.seek(SeekFrom::Start(0));
                }
                self.pos = 0;
                self.partial.clear();
            }
            _ => {}
        }
        out
    }
}

/// Shared between the watcher and restart tasks.
#[derive(Clone)]
pub struct AppWatch {
    pub status: watch::Receiver<Option<AppStatus>>,
    /// Set while a restart we asked for is in flight, so its new child is reported as
    /// `Restarted` rather than `AppStarted`.
    pub restart_pending: Arc<AtomicBool>,
}

/// Spawn the watcher. Returns the handle to observe status with.
pub fn spawn_watcher(
    status_path: PathBuf,
    log_path: PathBuf,
    out: Out,
    forward_output: bool,
) -> (AppWatch, tokio::task::JoinHandle<()>) {
    let initial = read_status(&status_path);
    let (tx, rx) = watch::channel(initial.clone());
    let pending = Arc::new(AtomicBool::new(false));
    let w = AppWatch {
        status: rx,
        restart_pending: pending.clone(),
    };
    let handle = tokio::spawn(async move {
        let mut tail = Tail::new(log_path);
        let mut recent: VecDeque<LogRecord> = VecDeque::new();
        let mut prev = initial;
        let mut dropped: u64 = 0;
        loop {
            for rec in tail.poll() {
                if forward_output {
                    let ev = Event::AppOutput {
                        pid: rec.pid,
                        stream: rec.stream,
                        line: rec.line.clone(),
                    };
                    if out.try_event(ev) {
                        if dropped > 0 && out.try_event(Event::AppOutputDropped { lines: dropped })
                        {
                            dropped = 0;
                        }
                    } else {
                        dropped += 1;
                    }
                }
                recent.push_back(rec);
                if recent.len() > 200 {
                    recent.pop_front();
                }
            }
            let cur = read_status(&status_path);
            if let Some(c) = cur.as_ref().filter(|_| cur != prev) {
                let p = prev.as_ref();
                if let Some(exit) = &c.last_exit
                    && p.and_then(|p| p.last_exit.as_ref()) != Some(exit)
                {
                    let last_output: Vec<OutputLine> = {
                        let mine: Vec<&LogRecord> =
                            recent.iter().filter(|r| r.pid == exit.pid).collect();
                        mine[mine.len().saturating_sub(LAST_LINES)..]
                            .iter()
                            .map(|r| OutputLine {
                                stream: r.stream,
                                line: r.line.clone(),
                            })
                            .collect()
                    };
                    let next_start_in_ms = match c.state {
                        AppState::Backoff => {
                            c.next_start_at_ms.map(|t| t.saturating_sub(unix_ms()))
                        }
                        _ => None,
                    };
                    out.event(Event::AppExited {
                        pid: exit.pid,
                        code: exit.code,
                        signal: exit.signal,
                        expected: exit.expected,
                        runtime_ms: exit.runtime_ms,
                        next_start_in_ms,
                        last_output,
                    })
                    .await;
                }
                // A new supervisor (the main container restarted) counts starts from zero again.
                let new_supervisor = p.is_some_and(|p| p.supervisor_pid != c.supervisor_pid);
                let started = new_supervisor || c.starts > p.map(|p| p.starts).unwrap_or(0);
                if started
                    && let Some(pid) = c.pid
                    && !pending.load(Ordering::SeqCst)
                {
                    out.event(Event::AppStarted {
                        pid,
                        starts: c.starts,
                    })
                    .await;
                }
                let _ = tx.send(cur.clone());
                prev = cur;
            }
            tokio::time::sleep(POLL).await;
        }
    });
    (w, handle)
}

/// Everything a restart needs.
#[derive(Clone)]
pub struct RestartCtx {
    pub pid_file: PathBuf,
    pub out: Out,
    pub watch: AppWatch,
    pub app_port: Option<u16>,
    pub ready_timeout: Duration,
    pub restart_timeout: Duration,
}

/// Is `pid` a kdev-controller supervisor? Unknown (unreadable) counts as yes.
fn looks_like_supervisor(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => {
            let s = String::from_utf8_lossy(&c);
            s.contains("supervise")
        }
        Err(_) => true,
    }
}

/// Ask the supervisor to restart the app and report `Restarted` and `Ready`.
pub async fn restart_and_wait(ctx: RestartCtx, build_id: Option<u64>) {
    let fail = |reason: String| Event::RestartFailed { build_id, reason };
    let mut status_rx = ctx.watch.status.clone();
    let before = status_rx.borrow().clone();
    let before_starts = before.as_ref().map(|s| s.starts).unwrap_or(0);
    let before_supervisor = before.as_ref().map(|s| s.supervisor_pid);
    // A new child: the start count grew, or a different supervisor reports (restarted container).
    let is_new =
        |s: &AppStatus| s.starts > before_starts || Some(s.supervisor_pid) != before_supervisor;
    let t_sig = Instant::now();
    // A supervisor still waiting for the first binary starts it by itself: no signal needed
    // (one would only restart the process it is about to start).
    let waiting = before
        .as_ref()
        .is_some_and(|s| s.state == AppState::Waiting);
    let pid = match read_pid_file(&ctx.pid_file) {
        Ok(pid) => pid,
        Err(e) => {
            let reason = format!(
                "no supervisor to restart the app: cannot read {} ({e}). Is the main container \
                 running `kdev-controller supervise`? The new binary is in place and runs when it starts.",
                ctx.pid_file.display()
            );
            ctx.out.event(fail(reason)).await;
            return;
        }
    };
    ctx.watch.restart_pending.store(true, Ordering::SeqCst);
    let _guard = PendingGuard(ctx.watch.restart_pending.clone());
    if !waiting {
        if !looks_like_supervisor(pid) {
            let reason = format!(
                "PID {pid} from {} is not a kdev-controller supervisor (stale PID file?)",
                ctx.pid_file.display()
            );
            ctx.out.event(fail(reason)).await;
            return;
        }
        match signal::kill(Pid::from_raw(pid as i32), Signal::SIGHUP) {
            Ok(()) => {}
            Err(Errno::ESRCH) => {
                let reason = format!(
                    "the supervisor (PID {pid} from {}) is not running; is shareProcessNamespace enabled on the pod?",
                    ctx.pid_file.display()
                );
                ctx.out.event(fail(reason)).await;
                return;
            }
            Err(e) => {
                let reason = format!(
                    "cannot signal the supervisor (PID {pid}): {e}; run both containers as the same user \
                     (or give this container CAP_KILL)"
                );
                ctx.out.event(fail(reason)).await;
                return;
            }
        }
    }
    // Wait for the new child.
    let deadline = tokio::time::Instant::now() + ctx.restart_timeout;
    let status = loop {
        let seen: Result<Option<AppStatus>, String> = {
            let cur = status_rx.borrow_and_update();
            match cur.as_ref() {
                Some(s) if is_new(s) && s.pid.is_some() => Ok(Some(s.clone())),
                Some(s) if is_new(s) && s.state == AppState::Backoff => Err(s
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the new process exited right after starting".into())),
                _ => Ok(None),
            }
        };
        match seen {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(reason) => {
                ctx.out.event(fail(reason)).await;
                return;
            }
        }
        match tokio::time::timeout_at(deadline, status_rx.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                let reason = format!(
                    "the supervisor did not start a new process within {} s",
                    ctx.restart_timeout.as_secs()
                );
                ctx.out.event(fail(reason)).await;
                return;
            }
        }
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
        })
        .await;
    drop(_guard);
    let Some(port) = ctx.app_port else { return };
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
        let alive = status_rx.borrow().as_ref().and_then(|s| s.pid) == Some(pid);
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

struct PendingGuard(Arc<AtomicBool>);
impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

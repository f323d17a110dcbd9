//! `kdev-controller supervise`: run the app as a child, restart it on SIGHUP, restart it with
//! backoff when it exits, reap everything, stop it cleanly on SIGTERM.
//!
//! Signals are handled explicitly: they are blocked in every thread at startup and taken with
//! `sigtimedwait` in the main loop, so nothing runs in signal-handler context and PID 1's
//! "no default action" rule does not matter. The child runs in its own process group (its PGID
//! is its PID); stopping means: stop signal to the group, wait up to the grace period, SIGKILL
//! the group, then wait until no process of the group is left (this is what keeps the next
//! start from hitting "address already in use"). The same happens when the app's main process
//! exits by itself (exit 0 or crash): workers it forked are stopped before the next start, not
//! left holding its port. The supervisor is a child subreaper, so orphaned grandchildren are
//! reparented to it and reaped.
//!
//! Files: [`child`] starts the app, [`app_log`] records its output, [`delve_stop`] stops an
//! app under Delve (its process first), [`signals`] is how the
//! supervisor waits for and sends signals, [`relay`] is the forward relay kdev's port-forwards
//! go through; this file is the supervisor's state machine (start, restart, backoff, stop) and
//! its status file.

mod app_log;
mod child;
mod delve_stop;
pub mod relay;
mod signals;

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kdev_protocol::{AppState, AppStatus, Layout, RestartInfo};
use nix::errno::Errno;
use nix::sys::signal::{self, SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::log::supervise as log;
use crate::run_files;
use crate::util::{self, ms, unix_ms};
use app_log::AppLog;
use child::{Child, describe_exit};
use signals::{group_gone, send_group, wait_signal};

/// Settings for one supervisor.
#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// Where its files go (the `run` directory), and `bin/app`, which it only looks at: its
    /// identity at each start goes into the status (`app_binary`).
    pub layout: Layout,
    pub stop_signal: Signal,
    pub grace_period: Duration,
    pub wait_for: Option<PathBuf>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub healthy_after: Duration,
    pub log_max_bytes: u64,
    pub command: Vec<String>,
}

struct Supervisor {
    opts: SuperviseOptions,
    sigset: SigSet,
    status: AppStatus,
    log: Arc<Mutex<AppLog>>,
    child: Option<Child>,
    backoff: Duration,
    next_start: Option<Instant>,
    shutdown: Option<Signal>,
    restart_requested: Option<u64>,
    relay: Option<relay::Relay>,
}

/// Run the supervisor until it is told to stop. Returns the process exit code.
pub fn run(opts: SuperviseOptions) -> Result<i32> {
    anyhow::ensure!(
        !opts.command.is_empty(),
        "no command given: use `kdev-controller supervise -- CMD [ARGS...]`"
    );
    // Before any thread exists, so every thread inherits the mask.
    let sigset = signals::block_handled().context("blocking signals")?;
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log(format!(
            "cannot become a child subreaper ({e}); orphaned grandchildren may stay as zombies"
        ));
    }
    let layout = &opts.layout;
    fs::create_dir_all(&layout.run)
        .with_context(|| format!("creating the run directory {}", layout.run.display()))?;
    let pid_file = layout.pid_file();
    run_files::write_pid_file(&pid_file)
        .with_context(|| format!("writing the PID file {}", pid_file.display()))?;
    let app_log = AppLog::open(
        layout.log_file(),
        layout.rotated_log_file(),
        opts.log_max_bytes,
    );
    // kdev's port-forwards go through it; without it (it cannot bind) they go to the app.
    let relay = relay::start()
        .map_err(|e| log(format!("no forward relay: {e}")))
        .ok();
    let status = AppStatus {
        supervisor_pid: std::process::id(),
        state: AppState::Waiting,
        command: opts.command.clone(),
        relay_port: relay.as_ref().map(|r| r.port),
        ..Default::default()
    };
    let mut sup = Supervisor {
        log: Arc::new(Mutex::new(app_log)),
        backoff: opts.backoff_min,
        opts,
        sigset,
        status,
        child: None,
        next_start: None,
        shutdown: None,
        restart_requested: None,
        relay,
    };
    sup.write_status();
    let code = sup.main_loop();
    sup.status.state = AppState::Stopped;
    sup.status.pid = None;
    sup.status.app_binary = None;
    sup.status.next_start_at_ms = None;
    sup.write_status();
    let _ = fs::remove_file(&pid_file);
    Ok(code)
}

impl Supervisor {
    fn write_status(&mut self) {
        // The relay first: it must know of a stop before the app is signalled (the caller
        // signals after this returns).
        if let Some(r) = &self.relay {
            r.gate.send_replace(relay::AppGate {
                running: self.status.state == AppState::Running,
                stopping: self.status.state == AppState::Stopping,
                starts: self.status.starts,
                pid: self.status.pid,
            });
        }
        self.status.updated_at_ms = unix_ms();
        let path = self.opts.layout.status_file();
        match serde_json::to_vec_pretty(&self.status) {
            Ok(data) => {
                if let Err(e) = util::write_atomic(&path, &data) {
                    log(format!("cannot write {}: {e}", path.display()));
                }
            }
            Err(e) => log(format!("cannot encode status: {e}")),
        }
    }

    fn main_loop(&mut self) -> i32 {
        // Wait for the app binary before the first start.
        if let Some(path) = self.opts.wait_for.clone() {
            let mut logged = false;
            while !path.exists() {
                if !logged {
                    log(format!(
                        "waiting for {} to exist before starting the app",
                        path.display()
                    ));
                    logged = true;
                }
                if let Some(sig) = wait_signal(&self.sigset, Duration::from_millis(100)) {
                    self.on_signal(sig);
                }
                if let Some(sig) = self.shutdown {
                    log(format!("got {sig} while waiting; exiting"));
                    return 0;
                }
            }
            self.restart_requested = None;
        }
        self.next_start = Some(Instant::now());
        loop {
            if self.child.as_ref().is_some_and(|c| c.exited.is_some()) {
                self.on_unexpected_exit();
                continue;
            }
            if let Some(sig) = self.shutdown {
                if self.child.is_some() {
                    let stop_sig = if sig == Signal::SIGINT {
                        Signal::SIGINT
                    } else {
                        self.opts.stop_signal
                    };
                    log(format!("got {sig}: stopping the app with {stop_sig}"));
                    self.stop_child(stop_sig);
                }
                // Reap anything left (orphaned grandchildren).
                self.reap();
                return 0;
            }
            if let Some(requested_at_ms) = self.restart_requested.take() {
                self.restart(requested_at_ms);
                continue;
            }
            if self.child.is_none()
                && let Some(at) = self.next_start
                && Instant::now() >= at
            {
                self.next_start = None;
                self.start_child();
                continue;
            }
            let timeout = match (self.child.is_none(), self.next_start) {
                (true, Some(at)) => at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                _ => Duration::from_secs(1),
            };
            if let Some(sig) = wait_signal(&self.sigset, timeout) {
                self.on_signal(sig);
            }
        }
    }

    /// Record what a signal asks for; the main loop acts on it.
    fn on_signal(&mut self, sig: Signal) {
        match sig {
            Signal::SIGCHLD => self.reap(),
            Signal::SIGHUP => {
                if self.restart_requested.is_none() {
                    self.restart_requested = Some(unix_ms());
                }
            }
            Signal::SIGTERM | Signal::SIGINT => {
                if self.shutdown.is_none() {
                    self.shutdown = Some(sig);
                }
            }
            other => {
                if let Some(c) = &self.child
                    && c.exited.is_none()
                {
                    let _ = signal::killpg(c.pid, other);
                }
            }
        }
    }

    /// Reap every exited child (ours and reparented orphans).
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log(format!("waitpid: {e}"));
                    return;
                }
                Ok(st) => {
                    let pid = st.pid();
                    // Only recorded here: the main loop (or a stop in progress) acts on it.
                    if let Some(c) = &mut self.child
                        && Some(c.pid) == pid
                        && matches!(st, WaitStatus::Exited(..) | WaitStatus::Signaled(..))
                    {
                        c.exited = Some(st);
                    }
                }
            }
        }
    }

    /// Wait (briefly) for the output threads so the app's last lines are in the log before the
    /// exit is reported. Grandchildren may keep the pipes open: do not wait for them long.
    fn drain_output(&mut self) {
        if let Some(c) = &self.child {
            let deadline = Instant::now() + Duration::from_millis(300);
            for _ in 0..2 {
                let left = deadline.saturating_duration_since(Instant::now());
                if c.output_done.recv_timeout(left).is_err() {
                    break;
                }
            }
        }
    }

    /// The app's main process exited by itself (exit or crash). Workers it forked may live on
    /// in its process group (holding its port, its files): stop them the same way as a
    /// restart would, before anything new starts.
    fn on_unexpected_exit(&mut self) {
        if let Some(pgid) = self.child.as_ref().map(|c| c.pid)
            && !group_gone(pgid)
        {
            log(format!(
                "app (pid {pgid}) exited but left processes in its group; stopping them with {}",
                self.opts.stop_signal
            ));
            self.status.state = AppState::Stopping;
            self.write_status();
            self.stop_group(pgid, self.opts.stop_signal);
        }
        self.drain_output();
        let info = self.child.as_ref().map(|c| c.exit_info(false));
        let runtime = self
            .child
            .as_ref()
            .map(|c| c.started.elapsed())
            .unwrap_or_default();
        self.child = None;
        if runtime >= self.opts.healthy_after {
            self.backoff = self.opts.backoff_min;
        }
        let delay = self.next_backoff();
        if let Some(i) = &info {
            log(format!(
                "app (pid {}) exited on its own ({}) after {} ms; restarting in {} ms",
                i.pid,
                describe_exit(i),
                i.runtime_ms,
                delay.as_millis()
            ));
        }
        self.next_start = Some(Instant::now() + delay);
        self.status.state = AppState::Backoff;
        self.status.pid = None;
        self.status.app_binary = None;
        self.status.started_at_ms = None;
        self.status.last_exit = info;
        self.status.next_start_at_ms = Some(unix_ms() + ms(delay));
        self.write_status();
    }

    fn start_child(&mut self) {
        let cmd = &self.opts.command;
        self.status.starts += 1;
        // Before the exec: if serve installs a new binary in between, the child may run it
        // while the status names the old one, which only costs serve a restart it asks for
        // anyway after an install.
        self.status.app_binary = run_files::file_id(&self.opts.layout.app_binary())
            .ok()
            .map(Box::new);
        match child::spawn(cmd, self.status.starts, &self.log) {
            Ok(c) => {
                let pid = c.pid.as_raw() as u32;
                log(format!("started {} (pid {pid})", cmd.join(" ")));
                self.child = Some(c);
                self.status.state = AppState::Running;
                self.status.pid = Some(pid);
                self.status.started_at_ms = Some(unix_ms());
                self.status.next_start_at_ms = None;
                self.status.last_error = None;
            }
            Err(e) => {
                let msg = format!("cannot start {}: {e}", cmd[0]);
                let delay = self.next_backoff();
                log(format!("{msg}; retrying in {} ms", delay.as_millis()));
                self.next_start = Some(Instant::now() + delay);
                self.status.state = AppState::Backoff;
                self.status.pid = None;
                self.status.app_binary = None;
                self.status.last_error = Some(msg);
                self.status.next_start_at_ms = Some(unix_ms() + ms(delay));
            }
        }
        self.write_status();
    }

    /// The delay before the next start after an exit or a failed start; doubles each time,
    /// within the configured bounds.
    fn next_backoff(&mut self) -> Duration {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2)
            .min(self.opts.backoff_max)
            .max(self.opts.backoff_min);
        delay
    }

    /// SIGHUP: stop the running child (if any) and start the command again right away.
    fn restart(&mut self, requested_at_ms: u64) {
        let t0 = Instant::now();
        let mut killed = false;
        if self.child.is_some() {
            log(format!(
                "restart requested: stopping the app with {}",
                self.opts.stop_signal
            ));
            killed = self.stop_child(self.opts.stop_signal);
        }
        let stop_ms = ms(t0.elapsed());
        if self.shutdown.is_some() {
            return;
        }
        self.backoff = self.opts.backoff_min;
        self.next_start = None;
        // Recorded before the start so the one status write that shows the new child also
        // carries its restart info (readers wait for that write and must not see a gap).
        self.status.last_restart = Some(RestartInfo {
            requested_at_ms,
            stop_ms,
            killed,
            started_at_ms: unix_ms(),
            start_seq: self.status.starts + 1,
        });
        self.start_child();
        // A SIGHUP that arrived while we were stopping asked for the restart we just did.
        self.restart_requested = None;
    }

    /// Stop the child's process group: `sig`, grace period, SIGKILL, then wait until the group
    /// is empty. Returns whether SIGKILL was needed.
    fn stop_child(&mut self, sig: Signal) -> bool {
        let Some(c) = &self.child else { return false };
        let pgid = c.pid;
        self.status.state = AppState::Stopping;
        self.write_status();
        let running = self.child.as_ref().is_some_and(|c| c.exited.is_none());
        if running && delve_stop::delve_port(&self.opts.command).is_some() {
            delve_stop::kill_debuggees(pgid);
        }
        let killed = self.stop_group(pgid, sig);
        self.drain_output();
        let info = self.child.as_ref().map(|c| c.exit_info(true));
        if let Some(i) = &info {
            log(format!(
                "app (pid {}) stopped ({})",
                i.pid,
                describe_exit(i)
            ));
        }
        self.child = None;
        self.status.pid = None;
        self.status.app_binary = None;
        self.status.started_at_ms = None;
        self.status.last_exit = info;
        self.write_status();
        killed
    }

    /// `sig` to the process group `pgid`, wait up to the grace period, SIGKILL, then wait
    /// until the leader (if it is still our child) is reaped and no process of the group is
    /// left. Returns whether SIGKILL was needed.
    fn stop_group(&mut self, pgid: Pid, sig: Signal) -> bool {
        let leader_alive = |s: &Self| s.child.as_ref().is_some_and(|c| c.exited.is_none());
        send_group(pgid, sig, leader_alive(self));
        let deadline = Instant::now() + self.opts.grace_period;
        let mut killed = false;
        let mut kill_deadline: Option<Instant> = None;
        loop {
            self.reap();
            if !leader_alive(self) && group_gone(pgid) {
                break;
            }
            let now = Instant::now();
            if !killed && now >= deadline {
                log(format!(
                    "app did not stop within {} ms: sending SIGKILL to its process group",
                    self.opts.grace_period.as_millis()
                ));
                send_group(pgid, Signal::SIGKILL, leader_alive(self));
                killed = true;
                kill_deadline = Some(now + Duration::from_secs(10));
            }
            if let Some(kd) = kill_deadline
                && now >= kd
            {
                log(
                    "processes of the app's group survive SIGKILL (uninterruptible?); giving up waiting",
                );
                break;
            }
            // SIGCHLD: reaped at the top of the loop. A SIGHUP during a restart's stop asks for
            // the restart in progress (restart() clears it); after a crash it skips the backoff.
            if let Some(s) = wait_signal(&self.sigset, Duration::from_millis(20))
                && s != Signal::SIGCHLD
            {
                self.on_signal(s);
            }
        }
        killed
    }
}

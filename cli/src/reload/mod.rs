//! The reload loop: the heart of `kdev watch`.
//!
//! Each service's session, once set up and deployed ([`crate::session`]), runs in its own loop
//! ([`ReloadLoop`], on a [`ServiceSession`]):
//!
//! 1. **Connect**: find the dev pod, make sure it holds our controller (upload), open the one
//!    exec stream to `kdev-controller serve` ([`ControllerSession`]).
//! 2. **Reconcile**: make the pod's tree equal to the local one (the session's sync engine,
//!    [`crate::sync::engine`]).
//! 3. **Reload**, until the stream breaks: each batch from the watcher is synced; the
//!    controller builds and restarts the app and reports as events ([`report`]); while idle,
//!    the safety-net rescan catches what the watcher missed ([`crate::sync::watch::rescan`]);
//!    port-forward errors are summarised.
//! 4. **Recover**: a broken or silent stream is replaced over a new connection, and the loop
//!    goes back to 1. A lost session Lease ends it (the caller handles Ctrl-C).

pub mod report;
pub mod timings;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use k8s_openapi::api::core::v1::Pod;
use kdev_protocol::{Event, ServerMessage, SessionConfig};
use kube::ResourceExt;
use kube::api::Api;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::deploy;
use crate::error::SessionLost;
use crate::exit_code::{Exit, exit_code};
use crate::modules::Proxy;
use crate::pod::bootstrap::{self, Uploaded};
use crate::pod::controllers::node_arch;
use crate::pod::delve;
use crate::pod::forward::{ErrorSummary, ForwardEvent, ForwardTarget};
use crate::pod::session::{ControllerSession, SessionError};
use crate::project::Service;
use crate::session::ServiceSession;
use crate::status::{Command, State};
use crate::sync::watch::rescan_schedule::RescanSchedule;
use crate::sync::watch::tree_watcher::{Batch, Notice};
use crate::ui::{Ui, fmt_bytes, fmt_duration};
use report::Reload;

/// Identical forward errors within this window are counted, not repeated.
const FORWARD_ERROR_WINDOW: Duration = Duration::from_secs(10);
/// The longest wait between two attempts to reach the controller.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The loop of one service's session.
pub struct ReloadLoop<'a> {
    session: &'a mut ServiceSession,
    /// Sync paused from the status page: changes are kept in `held` until resumed.
    paused: bool,
    held: BTreeSet<PathBuf>,
}

/// One live session: the stream and the pod it reaches.
struct Live {
    stream: ControllerSession,
    pod: String,
    pods: Api<Pod>,
}

impl<'a> ReloadLoop<'a> {
    pub fn new(session: &'a mut ServiceSession) -> ReloadLoop<'a> {
        ReloadLoop {
            session,
            paused: false,
            held: BTreeSet::new(),
        }
    }

    /// Run until the session is lost (an error); Ctrl-C is the caller's.
    pub async fn run(mut self) -> Result<()> {
        self.session.engine.keep_hashes_across_restarts();
        let mut first = true;
        let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
        let mut forward_errors = ErrorSummary::new(FORWARD_ERROR_WINDOW);
        let mut delve_announced = false;
        loop {
            let Some(mut live) = self.connect(first, &mut backoff).await? else {
                continue;
            };
            first = false;
            let ended = self
                .serve(&mut live, &mut forward_errors, &mut delve_announced)
                .await?;
            self.recover(live, ended).await?;
        }
    }

    /// Find the pod, upload the controller, open the session and reconcile. `None` when it
    /// failed in a way worth retrying (said, and waited for, here).
    async fn connect(&mut self, first: bool, backoff: &mut Backoff) -> Result<Option<Live>> {
        let pods = self.session.conn.pods();
        let waiting = if first {
            "waiting for the dev pod"
        } else {
            "reconnecting"
        };
        self.session
            .report
            .set_state(State::Connecting, Some(waiting.into()));
        // Until the stream is up, the Lease is the only sign of this kdev's life.
        self.session.lease.set_connected(false);
        let pod = self.wait_for_pod().await?;
        let pod_name = pod.name_any();
        let name = pod_name.clone();
        self.session.report.update_status(|s, _| s.pod = Some(name));
        // Forward to the pod as soon as it is known, not only once the session is up: the old
        // one may be gone. Its relay is known again from the Welcome (a new pod has its own).
        self.session
            .forwards
            .target
            .send_replace(Some(ForwardTarget {
                pod: pod_name.clone(),
                pods: pods.clone(),
                relay: None,
                delve: self.session.debug.as_ref().map(|d| d.port),
                connection: crate::pod::forward::next_connection(),
            }));
        let Some(controller) = self.controller_for(&pods, &pod, backoff).await? else {
            return Ok(None);
        };
        let Some(mut stream) = self.open(&controller, &pods, &pod_name, backoff).await? else {
            return Ok(None);
        };
        let ui = &self.session.ui;
        if first {
            let root = self.session.engine.root.display();
            ui.ok(&format!("connected to {pod_name}; syncing {root}"));
        } else {
            ui.ok(&format!("reconnected to {pod_name}; reconciling"));
        }
        if !self.reconcile(&mut stream, &pod_name, backoff).await? {
            return Ok(None);
        }
        // The reconcile made the pod's tree equal to the local one, held changes included.
        if self.paused && !self.held.is_empty() {
            self.session.ui.warn(&format!(
                "the {} paths changed while sync was paused were synced by the reconnect; sync \
                 stays paused",
                self.held.len()
            ));
            self.held.clear();
            self.show_pending();
        }
        backoff.reset();
        // From now on the pod vouches for this kdev (it hears the stream's pings).
        self.session.lease.set_connected(true);
        Ok(Some(Live {
            stream,
            pod: pod_name,
            pods,
        }))
    }

    /// The dev pod, once it runs.
    async fn wait_for_pod(&mut self) -> Result<Pod> {
        let s = &mut *self.session;
        let (conn, selector) = (&s.conn, &s.workload.pod_selector);
        let waiting =
            deploy::wait_for_dev_pod(&conn.client, &conn.namespace, selector, s.pod_timeout);
        tokio::select! {
            p = waiting => Ok(p?),
            lost = s.lease.lost() => Err(SessionLost(lost).into()),
        }
    }

    /// The controller built for the pod's node, or stop: another would not run there. `None`
    /// when the node could not be asked (retry).
    async fn controller_for(
        &mut self,
        pods: &Api<Pod>,
        pod: &Pod,
        backoff: &mut Backoff,
    ) -> Result<Option<Arc<Vec<u8>>>> {
        match node_arch(&self.session.conn.client, pods, pod).await {
            Ok((node, arch)) => {
                let found = self
                    .session
                    .controllers
                    .for_node(&arch, &pod.name_any(), &node)?;
                Ok(Some(found.binary.clone()))
            }
            Err(e) => {
                let retry = fmt_duration(backoff.current());
                self.session.ui.warn(&format!("{e}; retrying in {retry}"));
                self.retry_wait(backoff).await?;
                Ok(None)
            }
        }
    }

    /// Upload and open the session stream. `None` when it failed in a way worth retrying.
    async fn open(
        &mut self,
        controller: &[u8],
        pods: &Api<Pod>,
        pod_name: &str,
        backoff: &mut Backoff,
    ) -> Result<Option<ControllerSession>> {
        let s = &mut *self.session;
        let with = OpenWith {
            ui: &s.ui,
            service: &s.service,
            debug: s.debug.is_some(),
            config: &s.session_config,
            modules: s.modules.clone(),
        };
        let opening = open_session(with, controller, pods, pod_name);
        let opened = tokio::select! {
            s = opening => s,
            lost = s.lease.lost() => return Err(SessionLost(lost).into()),
        };
        match opened {
            Ok(stream) => {
                let relay = stream
                    .welcome
                    .app_status
                    .as_ref()
                    .and_then(|a| a.relay_port);
                if let Some(port) = relay {
                    self.session.forwards.set_relay(port);
                }
                Ok(Some(stream))
            }
            // Waiting does not grant permissions: stop.
            Err(e) if exit_code(&e) == Exit::Forbidden => Err(e),
            // Nor does it change the controller kdev carries.
            Err(e)
                if matches!(
                    e.downcast_ref::<SessionError>(),
                    Some(SessionError::VersionMismatch(_))
                ) =>
            {
                Err(e)
            }
            Err(e) => {
                self.session.ui.warn(&format!(
                    "cannot reach the controller in {pod_name}: {e:#}; retrying in {}",
                    fmt_duration(backoff.current())
                ));
                self.retry_wait(backoff).await?;
                Ok(None)
            }
        }
    }

    /// Make the pod's tree equal to the local one, and say what that took. `false` when it
    /// failed (said, and waited for: reconnect).
    async fn reconcile(
        &mut self,
        stream: &mut ControllerSession,
        pod_name: &str,
        backoff: &mut Backoff,
    ) -> Result<bool> {
        let s = &mut *self.session;
        s.report
            .set_state(State::Syncing, Some(format!("reconciling with {pod_name}")));
        let synced = tokio::select! {
            r = s.engine.initial_sync(stream, &s.ui)
                .instrument(tracing::info_span!("reconcile", pod = %pod_name)) => r,
            lost = s.lease.lost() => return Err(SessionLost(lost).into()),
        };
        let ui = &s.ui;
        match synced {
            Ok(s) if s.in_sync => {
                ui.ok(&format!(
                    "the pod is in sync: {} files ({}) compared in {}; nothing to send or build",
                    s.files,
                    fmt_bytes(s.compared_bytes),
                    fmt_duration(s.started.elapsed())
                ));
                self.session.report.replace_all(None);
                self.session.report.set_state(State::Ready, None);
            }
            Ok(s) => {
                // Precise enough for a benchmark (tests/bench/sync reads it).
                ui.step(&format!(
                    "synced {} files ({}) in {}: sent {} files ({}), deleted {}",
                    s.files,
                    fmt_bytes(s.compared_bytes),
                    fmt_duration(s.started.elapsed()),
                    s.sent_files,
                    fmt_bytes(s.sent_bytes),
                    s.deleted,
                ));
                let files = vec![format!("{} files", s.files)];
                let report = &mut self.session.report;
                match s.build_id {
                    Some(build) => {
                        report.set_state(State::Building, None);
                        let reload = Reload::new(files, s.started, None)
                            .of_build(Some(build))
                            .initial();
                        report.replace_all(Some(reload));
                    }
                    // Nothing to build (no Go file changed): nothing more will come.
                    None => {
                        report.replace_all(None);
                        report.set_state(State::Ready, None);
                    }
                }
            }
            Err(e) => {
                ui.warn(&format!("sync with {pod_name} failed: {e:#}; reconnecting"));
                self.retry_wait(backoff).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A new client (dead pooled connections stay behind), then the backoff.
    async fn retry_wait(&mut self, backoff: &mut Backoff) -> Result<()> {
        self.session.conn.renew()?;
        tokio::select! {
            _ = tokio::time::sleep(backoff.next()) => {}
            lost = self.session.lease.lost() => return Err(SessionLost(lost).into()),
        }
        Ok(())
    }

    /// The reloads of one session, until its stream ends: returns why it ended. A lost Lease
    /// is an error.
    async fn serve(
        &mut self,
        live: &mut Live,
        forward_errors: &mut ErrorSummary,
        delve_announced: &mut bool,
    ) -> Result<anyhow::Error> {
        // The safety net: a periodic stat-only rescan while idle (see `sync::watch::rescan_schedule`).
        let mut rescan = RescanSchedule::new(Instant::now());
        let mut rescan_tick = tokio::time::interval(Duration::from_millis(250));
        rescan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = self.session.batches.recv() => {
                    let Some(batch) = batch else {
                        return Ok(anyhow!("the file watcher stopped"));
                    };
                    rescan.activity(Instant::now());
                    if self.paused {
                        self.hold(batch);
                    } else if let Err(e) = self.sync_batch(live, batch).await {
                        return Ok(e);
                    }
                }
                _ = rescan_tick.tick(), if !self.paused => {
                    if let Err(e) = self.rescan(live, &mut rescan).await {
                        return Ok(e);
                    }
                }
                Some(command) = next_command(&mut self.session.commands) => {
                    if let Err(e) = self.command(live, command).await {
                        return Ok(e);
                    }
                }
                msg = live.stream.next_event() => match msg {
                    Ok(m) => self.show(live, m, delve_announced).await,
                    Err(e) => return Ok(e.into()),
                },
                Some(()) = self.session.enter.recv() => {
                    if let Err(e) = live.stream.build() {
                        return Ok(e.into());
                    }
                    self.session.ui.step("building (asked for)");
                }
                Some(ev) = self.session.forwards.events.recv() => match ev {
                    ForwardEvent::Failed { local, error } => {
                        tracing::debug!(target: "kdev::forward", local, "{error}");
                        if let Some(line) = forward_errors.record(local, &error, Instant::now()) {
                            self.session.ui.warn(&line);
                        }
                    }
                },
                _ = forward_errors.flush_due() => {
                    for line in forward_errors.flush(Instant::now()) {
                        self.session.ui.warn(&line);
                    }
                }
                lost = self.session.lease.lost() => return Err(SessionLost(lost).into()),
            }
        }
    }

    /// Sync one batch from the watcher (after its notices). An error ends the stream.
    async fn sync_batch(&mut self, live: &mut Live, batch: Batch) -> Result<()> {
        let s = &mut *self.session;
        show_notices(&batch, &s.ui);
        let before = s.report.status.as_ref().map(|h| h.state());
        s.report.set_state(
            State::Syncing,
            Some(format!("syncing {} paths", batch.paths.len())),
        );
        let synced = s
            .engine
            .sync_paths(&mut live.stream, &batch.paths, &s.ui)
            .instrument(tracing::info_span!("patch"))
            .await?;
        match synced {
            Some(synced) => {
                if synced.build_id.is_some() {
                    s.report.set_state(State::Building, None);
                } else {
                    s.report
                        .set_state(State::Ready, Some("synced, not built".into()));
                }
                let reload = Reload::new(synced.changed, synced.started, batch.first_event_at)
                    .of_build(synced.build_id);
                s.report.start(reload);
            }
            // Nothing differed: back to what it was doing.
            None => {
                if let Some((state, detail)) = before {
                    s.report.set_state(state, detail);
                }
            }
        }
        Ok(())
    }

    /// While paused: keep the batch's paths for the resume (its notices are said now).
    fn hold(&mut self, batch: Batch) {
        show_notices(&batch, &self.session.ui);
        self.held.extend(batch.paths);
        self.show_pending();
    }

    fn show_pending(&self) {
        let (paused, pending) = (self.paused, self.held.len());
        self.session.report.update_status(|s, _| {
            s.paused = paused;
            s.pending = pending;
        });
    }

    /// A button of the status page. An error ends the stream.
    async fn command(&mut self, live: &mut Live, command: Command) -> Result<()> {
        let ui = self.session.ui.clone();
        match command {
            Command::Rebuild => {
                let request = live.stream.build()?;
                let s = &mut *self.session;
                s.report.set_state(State::Building, None);
                ui.step("building (asked for on the status page)");
                // A reload of its own: its line and its place in the history.
                let reload =
                    Reload::new(vec!["rebuild".into()], Instant::now(), None).of_request(request);
                s.report.start(reload);
            }
            Command::Restart => {
                live.stream.restart()?;
                self.session.report.set_state(State::Restarting, None);
                ui.step("restarting the app (asked for on the status page)");
            }
            Command::Pause if !self.paused => {
                self.paused = true;
                self.show_pending();
                ui.step("sync paused (status page); changes are kept until it resumes");
            }
            Command::Resume if self.paused => {
                self.paused = false;
                let paths = std::mem::take(&mut self.held);
                self.show_pending();
                ui.step(&format!(
                    "sync resumed (status page); syncing {} paths changed meanwhile",
                    paths.len()
                ));
                if !paths.is_empty() {
                    let batch = Batch {
                        paths,
                        notices: Vec::new(),
                        first_event_at: None,
                    };
                    self.sync_batch(live, batch).await?;
                }
            }
            Command::Pause | Command::Resume => {}
        }
        Ok(())
    }

    /// A message from the controller: shown, and what it means for the forwards (the app's
    /// exits, the relay's port) and for Delve (announced after a restart).
    async fn show(&mut self, live: &Live, m: ServerMessage, delve_announced: &mut bool) {
        let s = &mut *self.session;
        let ServerMessage::Event { event, .. } = &m else {
            report::show_message(m, &mut s.report, &s.ui);
            return;
        };
        let restarted = matches!(event, Event::Restarted { .. });
        if matches!(event, Event::AppExited { .. }) {
            s.forwards.app_exits.send_modify(|n| *n += 1);
        }
        if let Event::AppStarted {
            relay_port: Some(port),
            ..
        }
        | Event::Restarted {
            relay_port: Some(port),
            ..
        } = event
        {
            s.forwards.set_relay(*port);
        }
        report::show_message(m, &mut s.report, &s.ui);
        if let (true, Some(d)) = (restarted, &s.debug) {
            let name = &s.service.config.name;
            let editor = delve::EditorTarget {
                local_root: &s.engine.root,
                remote_root: &s.service.config.sync.remote,
                name: if name.is_empty() {
                    &s.project_name
                } else {
                    name
                },
            };
            delve::announce(&live.pods, &live.pod, d, &editor, &s.ui, delve_announced).await;
        }
    }

    /// One tick of the safety net: sync what an earlier rescan found once it has settled, or
    /// rescan if it is time.
    async fn rescan(&mut self, live: &mut Live, schedule: &mut RescanSchedule) -> Result<()> {
        let now = Instant::now();
        self.session.engine.save_hashes_if_due();
        if let Some((paths, found_at)) = schedule.take_settled(now) {
            if let Some(s) = self
                .session
                .engine
                .sync_paths(&mut live.stream, &paths, &self.session.ui)
                .await?
            {
                let n = s.changed.len();
                self.session.ui.warn(&format!(
                    "the watcher missed {n} change{}; synced",
                    if n == 1 { "" } else { "s" }
                ));
                let reload = Reload::new(s.changed, s.started, Some(found_at)).of_build(s.build_id);
                self.session.report.start(reload);
            }
        } else if schedule.due(now, self.session.report.reload.is_none()) {
            let engine = &mut self.session.engine;
            match engine.snapshot.rescan(&engine.rules) {
                Ok(changes) => {
                    tracing::debug!(
                        "rescan: {} paths in {:?}, {} changed",
                        engine.snapshot.len(),
                        now.elapsed(),
                        changes.paths().len()
                    );
                    engine.warn_unsyncable(&changes.unsyncable, &self.session.ui);
                    schedule.ran(Instant::now(), now.elapsed(), changes.paths());
                }
                Err(e) => {
                    self.session
                        .ui
                        .warn(&format!("rescanning {}: {e}", engine.root.display()));
                    schedule.ran(Instant::now(), now.elapsed(), BTreeSet::new());
                }
            }
        }
        Ok(())
    }

    /// After a session ended: say why in one line, start over on a new connection, and stop
    /// forwarding to the pod if it is gone.
    async fn recover(&mut self, live: Live, ended: anyhow::Error) -> Result<()> {
        let silent = ended
            .downcast_ref::<SessionError>()
            .is_some_and(|e| matches!(e, SessionError::Silent(_)));
        if silent {
            self.session.ui.warn(&format!(
                "{ended:#}; replacing the stream to {} over a new connection",
                live.pod
            ));
        } else {
            self.session.ui.warn(&format!(
                "lost the connection to {}: {ended:#}; reconnecting",
                live.pod
            ));
        }
        drop(live.stream);
        // No pod hears this kdev any more: renew often (and warn when a takeover becomes
        // possible) from now, not from the reconnect, which may first wait for the API server.
        self.session.lease.set_connected(false);
        self.session.conn.renew()?;
        // Keep forwarding to this pod while it lives (a broken stream often leaves it healthy);
        // stop at once if it is gone or going, rather than dial a dead pod.
        if !pod_alive(&self.session.conn.pods(), &live.pod).await {
            self.session.forwards.target.send_replace(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => Ok(()),
            lost = self.session.lease.lost() => Err(SessionLost(lost).into()),
        }
    }
}

/// The watcher's notices, said once.
fn show_notices(batch: &Batch, ui: &Ui) {
    for n in &batch.notices {
        match n {
            Notice::FellBackToPolling(why) => ui.warn(why),
            Notice::Error(e) => ui.warn(&format!("watcher: {e}")),
        }
    }
}

/// The next command from the status page (never, without one).
async fn next_command(
    commands: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Command>>,
) -> Option<Command> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether a pod exists and is not being deleted (unknown counts as alive: the forward then
/// fails on its own and says why).
async fn pod_alive(pods: &Api<Pod>, name: &str) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), pods.get_opt(name)).await {
        Ok(Ok(Some(p))) => p.metadata.deletion_timestamp.is_none(),
        Ok(Ok(None)) => false,
        _ => true,
    }
}

/// What opening a session takes from the service.
struct OpenWith<'a> {
    ui: &'a Ui,
    service: &'a Service,
    debug: bool,
    config: &'a SessionConfig,
    /// Answers the pod's module requests (`None`: the proxy is off for this service).
    modules: Option<Proxy>,
}

/// Upload the controller (if the pod lacks this one), Delve for `kdev debug`, and open the
/// session with the handshake.
async fn open_session(
    with: OpenWith<'_>,
    controller: &[u8],
    pods: &Api<Pod>,
    pod: &str,
) -> Result<ControllerSession> {
    let OpenWith {
        ui,
        service,
        debug,
        config,
        modules,
    } = with;
    let uploaded = bootstrap::upload(pods, pod, controller)
        .instrument(tracing::info_span!("upload", pod))
        .await?;
    if let Uploaded::Bytes(n) = uploaded {
        ui.step(&format!(
            "uploaded kdev-controller ({:.1} MiB) into {pod}",
            n as f64 / 1048576.0
        ));
    }
    let hello = kdev_protocol::handshake::hello(
        format!("kdev {}", env!("CARGO_PKG_VERSION")),
        config.clone(),
    );
    let mut session = ControllerSession::open(pods, pod, hello, modules).await?;
    if !session.welcome.module_env.is_empty() {
        tracing::debug!(target: "kdev::modules", "the pod's go: {:?}", session.welcome.module_env);
    }
    // Once the session is up: building Delve in the pod fetches its modules through it.
    if debug {
        let module_env = session.welcome.module_env.clone();
        let image = service.sidecar_image();
        let install = delve::install_delve(pods, pod, &image, &module_env, ui);
        // Building takes a minute: meanwhile the session's events are read (and kept for the
        // loop), so a chatty app cannot fill the stream and hold up the module requests.
        let installed = session.holding_events(install).await;
        match installed? {
            delve::DelveInstall::Built(took) => ui.ok(&format!(
                "built Delve {} in the pod in {}",
                delve::DELVE_VERSION,
                fmt_duration(took)
            )),
            delve::DelveInstall::Cached | delve::DelveInstall::FromImage => {}
        }
    }
    Ok(session)
}

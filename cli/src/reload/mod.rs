//! The reload loop: the heart of `kdev watch`.
//!
//! Once the dev workload is deployed ([`crate::cmd::watch`]), this loop owns the session:
//!
//! 1. **Connect**: find the dev pod, make sure it holds our controller (upload), open the one
//!    exec stream to `kdev-controller serve` ([`ControllerSession`]).
//! 2. **Reconcile**: make the pod's tree equal to the local one ([`SyncEngine::initial_sync`]).
//! 3. **Reload**, until the stream breaks: each batch from the watcher is synced
//!    ([`SyncEngine::sync_paths`]); the controller builds and restarts the app and reports as
//!    events ([`report`]); while idle, the safety-net rescan catches what the watcher missed
//!    ([`crate::sync::rescan`]); port-forward errors are summarised.
//! 4. **Recover**: a broken or silent stream is replaced over a new connection, and the loop
//!    goes back to 1. A lost session Lease ends it (the caller handles Ctrl-C).

pub mod report;
pub mod timings;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use k8s_openapi::api::core::v1::Pod;
use kdev_protocol::{Event, ServerMessage, SessionConfig};
use kube::ResourceExt;
use kube::api::Api;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::cluster::connect::Connection;
use crate::cluster::lease::SessionLease;
use crate::deploy;
use crate::error::SessionLost;
use crate::exit_code::{Exit, exit_code};
use crate::pod::bootstrap::{self, Uploaded};
use crate::pod::controllers::{Controllers, node_arch};
use crate::pod::delve::{self, DebugOptions};
use crate::pod::forward::{ErrorSummary, ForwardEvent, ForwardTarget};
use crate::pod::session::{ControllerSession, SessionError};
use crate::project::Service;
use crate::sync::engine::SyncEngine;
use crate::sync::watch::rescan_schedule::RescanSchedule;
use crate::sync::watch::tree_watcher::{Batch, Notice};
use crate::ui::{Ui, fmt_bytes, fmt_duration};
use report::{Reload, Report};

/// Identical forward errors within this window are counted, not repeated.
const FORWARD_ERROR_WINDOW: Duration = Duration::from_secs(10);
/// The longest wait between two attempts to reach the controller.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The forwards' side of the loop: which pod they dial, their errors, the app's exits.
pub struct Forwards {
    /// The pod (and API connection) new forwarded connections go to; `None` while there is none.
    pub target: watch::Sender<Option<ForwardTarget>>,
    pub events: mpsc::UnboundedReceiver<ForwardEvent>,
    /// Counts app exits: forwarded connections to an exited process are closed at once.
    pub app_exits: watch::Sender<u64>,
}

impl Forwards {
    /// The pod's forward relay is on `port` (from the Welcome, or a new supervisor's start).
    fn set_relay(&self, port: u16) {
        self.target.send_if_modified(|t| match t {
            Some(t) if t.relay != Some(port) => {
                t.relay = Some(port);
                true
            }
            _ => false,
        });
    }
}

/// Everything the loop needs, set up by `kdev watch`.
pub struct ReloadLoop<'a> {
    pub ui: &'a Ui,
    pub service: &'a Service,
    /// The project's name (for the editor's debug configuration).
    pub project_name: &'a str,
    pub conn: Connection,
    pub lease: &'a mut SessionLease,
    /// Labels that select the dev pod.
    pub pod_selector: BTreeMap<String, String>,
    pub pod_timeout: Duration,
    /// The static controllers, one per node architecture, that can be uploaded into the pod.
    pub controllers: Controllers,
    pub session_config: SessionConfig,
    pub debug: Option<DebugOptions>,
    pub forwards: Forwards,
    pub batches: mpsc::UnboundedReceiver<Batch>,
    pub engine: SyncEngine,
    pub report: Report,
    /// With `kdev debug --hold`: a line on stdin asks for the build.
    pub enter: mpsc::UnboundedReceiver<()>,
}

/// One live session: the stream and the pod it reaches.
struct Live {
    session: ControllerSession,
    pod: String,
    pods: Api<Pod>,
}

impl ReloadLoop<'_> {
    /// Run until the session is lost (an error); Ctrl-C is the caller's.
    pub async fn run(mut self) -> Result<()> {
        self.engine.keep_hashes_across_restarts();
        let mut first = true;
        let mut backoff = Duration::from_millis(250);
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
    async fn connect(&mut self, first: bool, backoff: &mut Duration) -> Result<Option<Live>> {
        let pods = self.conn.pods();
        let ns = self.conn.namespace.clone();
        let pod = tokio::select! {
            p = deploy::wait_for_dev_pod(&self.conn.client, &ns, &self.pod_selector, self.pod_timeout) => p?,
            lost = self.lease.lost() => return Err(SessionLost(lost).into()),
        };
        let pod_name = pod.name_any();
        // Forward to the pod as soon as it is known, not only once the session is up: the old
        // one may be gone. Its relay is known again from the Welcome (a new pod has its own).
        self.forwards.target.send_replace(Some(ForwardTarget {
            pod: pod_name.clone(),
            pods: pods.clone(),
            relay: None,
            delve: self.debug.as_ref().map(|d| d.port),
            connection: crate::pod::forward::next_connection(),
        }));
        // The controller built for the pod's node, or stop: another would not run there.
        let controller = match node_arch(&self.conn.client, &pods, &pod).await {
            Ok((node, arch)) => self
                .controllers
                .for_node(&arch, &pod_name, &node)?
                .binary
                .clone(),
            Err(e) => {
                self.ui
                    .warn(&format!("{e}; retrying in {}", fmt_duration(*backoff)));
                self.retry_wait(backoff).await?;
                return Ok(None);
            }
        };
        let opening = open_session(
            self.ui,
            self.service,
            &controller,
            self.debug.is_some(),
            &self.session_config,
            &pods,
            &pod_name,
        );
        let opened = tokio::select! {
            s = opening => s,
            lost = self.lease.lost() => return Err(SessionLost(lost).into()),
        };
        let mut session = match opened {
            Ok(s) => {
                if let Some(port) = s.welcome.app_status.as_ref().and_then(|a| a.relay_port) {
                    self.forwards.set_relay(port);
                }
                s
            }
            // Waiting does not grant permissions: stop.
            Err(e) if exit_code(&e) == Exit::Forbidden => return Err(e),
            // Nor does it change the controller kdev carries.
            Err(e)
                if matches!(
                    e.downcast_ref::<SessionError>(),
                    Some(SessionError::VersionMismatch(_))
                ) =>
            {
                return Err(e);
            }
            Err(e) => {
                self.ui.warn(&format!(
                    "cannot reach the controller in {pod_name}: {e:#}; retrying in {}",
                    fmt_duration(*backoff)
                ));
                self.retry_wait(backoff).await?;
                return Ok(None);
            }
        };
        if first {
            self.ui.ok(&format!(
                "connected to {pod_name}; syncing {}",
                self.engine.root.display()
            ));
        } else {
            self.ui
                .ok(&format!("reconnected to {pod_name}; reconciling"));
        }
        let synced = tokio::select! {
            r = self.engine.initial_sync(&mut session, self.ui)
                .instrument(tracing::info_span!("reconcile", pod = %pod_name)) => r,
            lost = self.lease.lost() => return Err(SessionLost(lost).into()),
        };
        match synced {
            Ok(s) if s.in_sync => {
                self.ui.ok(&format!(
                    "the pod is in sync: {} files ({}) compared in {}; nothing to send or build",
                    s.files,
                    fmt_bytes(s.compared_bytes),
                    fmt_duration(s.started.elapsed())
                ));
                self.report.reload = None;
            }
            Ok(s) => {
                // Precise enough for a benchmark (tests/bench/sync reads it).
                self.ui.step(&format!(
                    "synced {} files ({}) in {}: sent {} files ({}), deleted {}",
                    s.files,
                    fmt_bytes(s.compared_bytes),
                    fmt_duration(s.started.elapsed()),
                    s.sent_files,
                    fmt_bytes(s.sent_bytes),
                    s.deleted,
                ));
                self.report.reload = Some(Reload::new(
                    vec![format!("{} files", s.files)],
                    s.started,
                    None,
                ));
            }
            Err(e) => {
                self.ui
                    .warn(&format!("sync with {pod_name} failed: {e:#}; reconnecting"));
                self.retry_wait(backoff).await?;
                return Ok(None);
            }
        }
        *backoff = Duration::from_millis(250);
        Ok(Some(Live {
            session,
            pod: pod_name,
            pods,
        }))
    }

    /// A new client (dead pooled connections stay behind), then the backoff.
    async fn retry_wait(&mut self, backoff: &mut Duration) -> Result<()> {
        self.conn.renew()?;
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            lost = self.lease.lost() => return Err(SessionLost(lost).into()),
        }
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
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
        // The safety net: a periodic stat-only rescan while idle (see `sync::rescan`).
        let mut rescan = RescanSchedule::new(Instant::now());
        let mut rescan_tick = tokio::time::interval(Duration::from_millis(250));
        rescan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = self.batches.recv() => {
                    let Some(batch) = batch else {
                        return Ok(anyhow!("the file watcher stopped"));
                    };
                    for n in &batch.notices {
                        match n {
                            Notice::FellBackToPolling(why) => self.ui.warn(why),
                            Notice::Error(e) => self.ui.warn(&format!("watcher: {e}")),
                        }
                    }
                    rescan.activity(Instant::now());
                    let synced = self.engine.sync_paths(&mut live.session, &batch.paths, self.ui)
                        .instrument(tracing::info_span!("patch"))
                        .await;
                    match synced {
                        Ok(Some(s)) => {
                            self.report.reload = Some(Reload::new(s.changed, s.started, batch.first_event_at));
                        }
                        Ok(None) => {}
                        Err(e) => return Ok(e),
                    }
                }
                _ = rescan_tick.tick() => {
                    if let Err(e) = self.rescan(live, &mut rescan).await {
                        return Ok(e);
                    }
                }
                msg = live.session.next_event() => match msg {
                    Ok(m) => {
                        let restarted = matches!(&m, ServerMessage::Event { event: Event::Restarted { .. }, .. });
                        if matches!(&m, ServerMessage::Event { event: Event::AppExited { .. }, .. }) {
                            self.forwards.app_exits.send_modify(|n| *n += 1);
                        }
                        if let ServerMessage::Event {
                            event: Event::AppStarted { relay_port: Some(port), .. } | Event::Restarted { relay_port: Some(port), .. },
                            ..
                        } = &m {
                            self.forwards.set_relay(*port);
                        }
                        report::show_message(m, &mut self.report, self.ui);
                        if let (true, Some(d)) = (restarted, &self.debug) {
                            let editor = delve::EditorTarget {
                                local_root: &self.engine.root,
                                remote_root: &self.service.config.sync.remote,
                                name: if self.service.config.name.is_empty() {
                                    self.project_name
                                } else {
                                    &self.service.config.name
                                },
                            };
                            delve::announce(&live.pods, &live.pod, d, &editor, self.ui, delve_announced).await;
                        }
                    }
                    Err(e) => return Ok(e.into()),
                },
                Some(()) = self.enter.recv() => {
                    if let Err(e) = live.session.build() {
                        return Ok(e.into());
                    }
                    self.ui.step("building (asked for)");
                }
                Some(ev) = self.forwards.events.recv() => match ev {
                    ForwardEvent::Failed { local, error } => {
                        tracing::debug!(target: "kdev::forward", local, "{error}");
                        if let Some(line) = forward_errors.record(local, &error, Instant::now()) {
                            self.ui.warn(&line);
                        }
                    }
                },
                _ = forward_errors.flush_due() => {
                    for line in forward_errors.flush(Instant::now()) {
                        self.ui.warn(&line);
                    }
                }
                lost = self.lease.lost() => return Err(SessionLost(lost).into()),
            }
        }
    }

    /// One tick of the safety net: sync what an earlier rescan found once it has settled, or
    /// rescan if it is time.
    async fn rescan(&mut self, live: &mut Live, schedule: &mut RescanSchedule) -> Result<()> {
        let now = Instant::now();
        self.engine.save_hashes_if_due();
        if let Some((paths, found_at)) = schedule.take_settled(now) {
            if let Some(s) = self
                .engine
                .sync_paths(&mut live.session, &paths, self.ui)
                .await?
            {
                let n = s.changed.len();
                self.ui.warn(&format!(
                    "the watcher missed {n} change{}; synced",
                    if n == 1 { "" } else { "s" }
                ));
                self.report.reload = Some(Reload::new(s.changed, s.started, Some(found_at)));
            }
        } else if schedule.due(now, self.report.reload.is_none()) {
            let engine = &mut self.engine;
            match engine.snapshot.rescan(&engine.rules) {
                Ok(changes) => {
                    tracing::debug!(
                        "rescan: {} paths in {:?}, {} changed",
                        engine.snapshot.len(),
                        now.elapsed(),
                        changes.paths().len()
                    );
                    engine.warn_unsyncable(&changes.unsyncable, self.ui);
                    schedule.ran(Instant::now(), now.elapsed(), changes.paths());
                }
                Err(e) => {
                    self.ui
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
            self.ui.warn(&format!(
                "{ended:#}; replacing the stream to {} over a new connection",
                live.pod
            ));
        } else {
            self.ui.warn(&format!(
                "lost the connection to {}: {ended:#}; reconnecting",
                live.pod
            ));
        }
        drop(live.session);
        self.conn.renew()?;
        // Keep forwarding to this pod while it lives (a broken stream often leaves it healthy);
        // stop at once if it is gone or going, rather than dial a dead pod.
        if !pod_alive(&self.conn.pods(), &live.pod).await {
            self.forwards.target.send_replace(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => Ok(()),
            lost = self.lease.lost() => Err(SessionLost(lost).into()),
        }
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

/// Upload the controller (if the pod lacks this one), Delve for `kdev debug`, and open the
/// session with the handshake.
async fn open_session(
    ui: &Ui,
    service: &Service,
    controller: &[u8],
    debug: bool,
    config: &SessionConfig,
    pods: &Api<Pod>,
    pod: &str,
) -> Result<ControllerSession> {
    let uploaded = bootstrap::upload(pods, pod, controller)
        .instrument(tracing::info_span!("upload", pod))
        .await?;
    if let Uploaded::Bytes(n) = uploaded {
        ui.step(&format!(
            "uploaded kdev-controller ({:.1} MiB) into {pod}",
            n as f64 / 1048576.0
        ));
    }
    if debug {
        delve::install_delve(pods, pod, &service.sidecar_image()).await?;
    }
    let hello = kdev_protocol::handshake::hello(
        format!("kdev {}", env!("CARGO_PKG_VERSION")),
        config.clone(),
    );
    Ok(ControllerSession::open(pods, pod, hello).await?)
}

//! One service's session: everything its reload loop ([`crate::reload::ReloadLoop`]) works
//! with. Made by [`super::prepare_service`]; owned by `kdev watch` for as long as it runs, so
//! that Ctrl-C in any phase can release its Lease.

use std::net::SocketAddr;
use std::time::Duration;

use kdev_protocol::SessionConfig;
use tokio::sync::mpsc;

use super::forwards::{self, Forwards};
use crate::cluster::connect::Connection;
use crate::cluster::lease::SessionLease;
use crate::deploy::DevWorkload;
use crate::error::UsageError;
use crate::modules::Proxy;
use crate::pod::controllers::Controllers;
use crate::pod::delve::DebugOptions;
use crate::project::Service;
use crate::reload::report::Report;
use crate::status::Command;
use crate::sync::engine::SyncEngine;
use crate::sync::watch::tree_watcher::Batch;
use crate::ui::Ui;

/// A service's session, from its Lease to its sync engine.
pub struct ServiceSession {
    /// Its output: prefixed with its name when there are several services.
    pub ui: Ui,
    pub service: Service,
    /// Its dev workload (its name, the labels that select its pod, what the rewrite changed).
    pub workload: DevWorkload,
    /// The project's name (for the editor's debug configuration).
    pub project_name: String,
    /// Its own API connection, renewed after a lost stream.
    pub conn: Connection,
    pub lease: SessionLease,
    pub pod_timeout: Duration,
    /// The static controllers, one per node architecture, that can be uploaded into the pod.
    pub controllers: Controllers,
    /// What the controller is told at the handshake.
    pub session_config: SessionConfig,
    /// Answers the pod's module requests, when `session_config` asks for the module proxy.
    pub modules: Option<Proxy>,
    pub debug: Option<DebugOptions>,
    /// Local → remote ports, forwarded once [`ServiceSession::listen`] has run.
    pub ports: Vec<(u16, u16)>,
    /// The bound local addresses, with their remote ports.
    pub forwarded: Vec<(SocketAddr, u16)>,
    pub forwards: Forwards,
    /// The file watcher's batches of changed paths.
    pub batches: mpsc::UnboundedReceiver<Batch>,
    pub engine: SyncEngine,
    pub report: Report,
    /// The status page's buttons for this service (rebuild, restart, pause, resume).
    pub commands: Option<mpsc::UnboundedReceiver<Command>>,
    /// With `kdev debug --hold`: a line on stdin asks for the build.
    pub enter: mpsc::UnboundedReceiver<()>,
    /// The sending ends of `batches` and `enter`, until the watchers and the stdin reader take
    /// them (after apply). The session must not keep them: it would never see its watcher stop.
    pub batches_in: Option<mpsc::UnboundedSender<Batch>>,
    pub enter_in: Option<mpsc::UnboundedSender<()>>,
}

impl ServiceSession {
    /// The app's address and the debug endpoint, in the session's status.
    fn show_addresses(&self) {
        let delve = self.debug.as_ref().map(|d| d.port);
        let app = self
            .forwarded
            .iter()
            .find(|(_, remote)| Some(*remote) == self.report.app_port)
            .or_else(|| self.forwarded.iter().find(|(_, r)| Some(*r) != delve))
            .map(|(local, _)| format!("http://{local}"));
        let debugger = delve.and_then(|p| {
            self.forwarded
                .iter()
                .find(|(_, r)| *r == p)
                .map(|(local, _)| local.to_string())
        });
        self.report.update_status(|s, _| {
            s.url = app;
            s.debugger = debugger;
        });
    }

    /// Listen on the service's local ports.
    /// Under `kdev debug`, Delve's port on localhost is kdev's debug endpoint
    /// ([`crate::debugger`]), which reaches Delve through a forward of its own on a port of the
    /// system's choice.
    pub async fn listen(&mut self) -> anyhow::Result<()> {
        let delve = self.debug.as_ref().map(|d| d.port);
        let continue_at_start = self.debug.as_ref().is_some_and(|d| d.continue_at_start);
        let ports: Vec<(u16, u16)> = self
            .ports
            .iter()
            .map(|&(local, remote)| match delve {
                Some(p) if (local, remote) == (p, p) => (0, p),
                _ => (local, remote),
            })
            .collect();
        self.forwarded = self.forwards.listen(&ports).await?;
        if let Some(port) = delve
            && let Some(entry) = self.forwarded.iter_mut().find(|(_, r)| *r == port)
        {
            let status = self.report.status.clone();
            entry.0 = crate::debugger::start(
                port,
                entry.0,
                self.ui.clone(),
                status,
                continue_at_start,
            )
            .await
            .map_err(|e| {
                UsageError(format!(
                    "cannot listen on localhost:{port} for the debugger ({e}; is it in use? \
                         choose another with `kdev debug --port {}`)",
                    port.wrapping_add(1)
                ))
            })?;
        }
        Ok(())
    }

    /// Once applied: the probes the rewrite removed, and what the forwards reach.
    pub fn announce(&self) {
        self.show_addresses();
        let notes = &self.workload.notes;
        if !notes.removed_probes.is_empty() {
            let why = if notes.removed_probes.contains(&"readiness") {
                "a liveness or startup probe would kill an app that is being rebuilt; under the \
                 debugger a readiness probe's requests would stop at your breakpoints"
            } else {
                "it would kill an app that is being rebuilt"
            };
            self.ui.warn(&format!(
                "{} probe removed from container {} while developing ({why})",
                notes.removed_probes.join(" and "),
                notes.container
            ));
        }
        let delve = self.debug.as_ref().map(|d| d.port);
        self.ui.ok(&forwards::describe(
            &self.workload.workload.to_string(),
            &self.forwarded,
            delve,
        ));
    }
}

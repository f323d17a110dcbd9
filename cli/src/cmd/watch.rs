//! `kdev watch` and `kdev debug`: set up one session per service ([`crate::session`]: plan,
//! prepare each service, apply, watch), then run each in its reload loop ([`crate::reload`])
//! until Ctrl-C or until a session is lost.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;

use crate::project::Project;
use crate::reload::ReloadLoop;
use crate::session::{self, ServiceSession};
use crate::status::{Hub, registry, server};
use crate::ui::Ui;

pub use crate::session::WatchOptions;

/// Run `kdev watch` until Ctrl-C (`Ok`), or until a session is lost (an error).
pub async fn run(opts: WatchOptions) -> Result<()> {
    let base = Ui::detect();
    let command = if opts.debug.is_some() {
        "debug"
    } else {
        "watch"
    };
    let block = opts.status_block
        && std::io::stdout().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let hub = Hub::new(command, block, base.color());
    let ui = base.with_hub(hub.clone());
    // The status API runs in every session (`kdev status`, `kdev ui`); the page is announced
    // with --ui.
    let api = match server::start(hub.clone()).await {
        Ok(addr) => Some(addr),
        Err(e) => {
            ui.warn(&format!(
                "cannot serve the status page on 127.0.0.1 ({e}); `kdev status` will not see this session"
            ));
            None
        }
    };
    let mut registered = None;
    // The sessions (with their Leases) outlive the set-up's and the loops' futures, so Ctrl-C
    // in any phase can release the Leases.
    let mut sessions: Vec<ServiceSession> = Vec::new();
    let mut deployed = false;
    let status = StatusSetup {
        hub: &hub,
        api,
        page: opts.ui,
    };
    // One shutdown signal for every phase: deploy, upload, handshake, sync and retry waits.
    let outcome = tokio::select! {
        r = watch_until_lost(&opts, &ui, &mut sessions, &mut deployed, &status, &mut registered) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    hub.close_block();
    drop(registered);
    for s in sessions.drain(..) {
        s.lease.release().await;
    }
    outcome?;
    if deployed {
        ui.step("stopped; the dev pods keep running (`kdev down` removes them)");
    } else {
        ui.step("stopped");
    }
    Ok(())
}

/// Set up every service's session, in the order that applies nothing when something is wrong
/// (see [`crate::session`]), then run them all.
async fn watch_until_lost(
    opts: &WatchOptions,
    ui: &Ui,
    sessions: &mut Vec<ServiceSession>,
    deployed: &mut bool,
    status: &StatusSetup<'_>,
    registered: &mut Option<registry::Registered>,
) -> Result<()> {
    let mut plan = session::plan(opts, ui).await?;
    *registered = status.describe(&plan, ui);
    // The session Leases, then the local ports: another session of these workloads, or a port
    // in use, is found before anything is applied.
    for s in &plan.services {
        sessions.push(session::prepare_service(&plan, s).await?);
    }
    for s in sessions.iter_mut() {
        s.listen().await?;
    }
    session::apply(&mut plan, sessions, ui).await?;
    *deployed = true;
    let watchers = session::watch(sessions, plan.poll, plan.hold, ui)?;
    // All at once: startup takes as long as the slowest service; the first error ends all.
    let loops = sessions.iter_mut().map(|s| ReloadLoop::new(s).run());
    let result = futures::future::try_join_all(loops).await.map(|_| ());
    drop(watchers);
    result
}

/// The session's status and where its API listens.
struct StatusSetup<'a> {
    hub: &'a Arc<Hub>,
    api: Option<SocketAddr>,
    /// `--ui`: say the page's address.
    page: bool,
}

impl StatusSetup<'_> {
    /// Once the plan is made: what the session is, in its status and in the registry that
    /// `kdev status` reads; with --ui, the page's address.
    fn describe(&self, plan: &session::Plan, ui: &Ui) -> Option<registry::Registered> {
        let root = plan.project.root.display().to_string();
        self.hub.update(|s| {
            s.project = plan.project.name.clone();
            s.root = root.clone();
            s.namespace = plan.conn.namespace.clone();
            s.owner = plan.owner.clone();
        });
        let api = self.api?;
        let entry = registry::Entry {
            pid: std::process::id(),
            api: format!("http://{api}"),
            token: self.hub.token().to_string(),
            root: root.clone(),
            project: plan.project.name.clone(),
        };
        let url = entry.page_url();
        let shown = self.page;
        self.hub.update(|s| {
            s.ui_url = Some(url.clone());
            s.ui_url_shown = shown;
        });
        if self.page {
            ui.ok(&format!("status page: {url}"));
        }
        match registry::register(&entry) {
            Ok(r) => Some(r),
            Err(e) => {
                ui.warn(&format!(
                    "cannot write {} ({e}); `kdev status` and `kdev ui` will not find this session",
                    registry::dir().display()
                ));
                None
            }
        }
    }
}

/// `kdev debug --print-config`: the editor configuration, with nothing deployed.
pub fn print_debug_config(config_path: &std::path::Path, port: u16) -> Result<()> {
    let project = Project::load(config_path)?;
    for (i, service) in project.services().iter().enumerate() {
        crate::pod::delve::print_editor_config(
            &service.sync_root(),
            &service.config.sync.remote,
            port.saturating_add(i as u16),
            if service.config.name.is_empty() {
                &project.name
            } else {
                &service.config.name
            },
        );
    }
    Ok(())
}

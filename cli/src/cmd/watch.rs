//! `kdev watch` and `kdev debug`: set up one session per service ([`crate::session`]: plan,
//! prepare each service, apply, watch), then run each in its reload loop ([`crate::reload`])
//! until Ctrl-C or until a session is lost.

use anyhow::Result;

use crate::project::Project;
use crate::reload::ReloadLoop;
use crate::session::{self, ServiceSession};
use crate::ui::Ui;

pub use crate::session::WatchOptions;

/// Run `kdev watch` until Ctrl-C (`Ok`), or until a session is lost (an error).
pub async fn run(opts: WatchOptions) -> Result<()> {
    let ui = Ui::detect();
    // The sessions (with their Leases) outlive the set-up's and the loops' futures, so Ctrl-C
    // in any phase can release the Leases.
    let mut sessions: Vec<ServiceSession> = Vec::new();
    let mut deployed = false;
    // One shutdown signal for every phase: deploy, upload, handshake, sync and retry waits.
    let outcome = tokio::select! {
        r = watch_until_lost(&opts, &ui, &mut sessions, &mut deployed) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
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
) -> Result<()> {
    let mut plan = session::plan(opts, ui).await?;
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

//! `kdev watch` and `kdev debug`: deploy the dev workload, then run the reload loop
//! ([`crate::reload`]) until Ctrl-C or until the session is lost.
//!
//! Setup order, so that nothing is applied when something is wrong: the project and its
//! manifests, the cluster connection, the permission check, the session Lease (another kdev of
//! the same workload), the local ports (one in use), then apply, then the file watcher (started
//! before the first reconcile, so nothing saved in between is missed).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kdev_protocol::BuildMode;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::cluster::access;
use crate::cluster::connect::connect;
use crate::cluster::lease::{self, SessionLease};
use crate::deploy;
use crate::error::UsageError;
use crate::pod::bootstrap;
use crate::pod::delve::DebugOptions;
use crate::pod::forward::{self, ForwardTarget};
use crate::project::{Project, resolve_owner};
use crate::reload::report::Report;
use crate::reload::timings::TimingsLog;
use crate::reload::{Forwards, ReloadLoop};
use crate::sync::engine::SyncEngine;
use crate::sync::ignore::IgnoreRules;
use crate::sync::watcher::{DEFAULT_DEBOUNCE, Mode, TreeWatcher};
use crate::ui::Ui;

/// Options of `kdev watch` that do not come from kdev.yaml.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub config_path: PathBuf,
    pub namespace: Option<String>,
    pub context: Option<String>,
    pub poll: bool,
    pub pod_timeout: Duration,
    /// `kdev debug`: run the app under Delve.
    pub debug: Option<DebugOptions>,
    /// `--owner`: who is developing.
    pub owner: Option<String>,
    /// `--take-over`: take the session lock even if another kdev holds it.
    pub take_over: bool,
    /// `--timings FILE`: append each reload's timeline to FILE.
    pub timings: Option<PathBuf>,
}

/// Run `kdev watch` until Ctrl-C (`Ok`), or until its session is lost (an error).
pub async fn run(opts: WatchOptions) -> Result<()> {
    let ui = Ui::detect();
    // The session Lease outlives the loop's future, so Ctrl-C in any phase can release it.
    let mut lease: Option<SessionLease> = None;
    let mut deployed = false;
    // One shutdown signal for every phase: deploy, upload, handshake, sync and retry waits.
    let outcome = tokio::select! {
        r = watch_until_lost(&opts, &ui, &mut lease, &mut deployed) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    if let Some(l) = lease.take() {
        l.release().await;
    }
    outcome?;
    if deployed {
        ui.step("stopped; the dev pod keeps running (`kdev down` removes it)");
    } else {
        ui.step("stopped");
    }
    Ok(())
}

async fn watch_until_lost(
    opts: &WatchOptions,
    ui: &Ui,
    lease_slot: &mut Option<SessionLease>,
    deployed: &mut bool,
) -> Result<()> {
    let project = Project::load(&opts.config_path)?;
    let cfg = &project.config;
    // Before anything is deployed: a bad path is a usage error.
    let timings = opts
        .timings
        .as_deref()
        .map(TimingsLog::open)
        .transpose()
        .map_err(|e| UsageError(format!("{e:#}")))?;
    let context = opts.context.as_deref().or(cfg.context.as_deref());
    let conn = connect(
        context,
        opts.namespace.as_deref().or(cfg.namespace.as_deref()),
    )
    .await?;
    let (client, ns) = (conn.client.clone(), conn.namespace.clone());

    // What to deploy, and whether we may.
    let objects = deploy::load_manifests(&project.manifest_paths())?;
    let debug = opts.debug.clone();
    let owner = resolve_owner(opts.owner.as_deref(), cfg.owner.as_deref(), context)?;
    let mut plan = project.deploy_plan(&objects, &ns, debug.as_ref())?;
    deploy::personalize(&mut plan, &owner);
    let discovered = deploy::discover(&client, &ns, &plan.objects).await?;
    let kinds = deploy::resource_kinds(&discovered);
    access::require(&client, &ns, &access::needed_for_watch(&kinds)).await?;
    let controller_path = bootstrap::find_controller()?;
    let controller = std::fs::read(&controller_path)
        .with_context(|| format!("reading {}", controller_path.display()))?;

    // The session lock, then the local ports: another session of this workload, or a port in
    // use, is found before anything is applied.
    let lease = lease_slot.insert(
        lease::acquire(
            &client,
            &ns,
            &owner,
            &project.name,
            &plan.workload.name,
            opts.take_over,
        )
        .await?,
    );
    let (target_tx, target_rx) = watch::channel::<Option<ForwardTarget>>(None);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (app_exits_tx, app_exits_rx) = watch::channel(0u64);
    let mut ports: Vec<(u16, u16)> = match &cfg.run.ports {
        Some(p) => p.iter().map(|p| (p.local, p.remote)).collect(),
        None => plan.notes.ports.iter().map(|p| (*p, *p)).collect(),
    };
    let app_port = cfg.run.ready_port.or(ports.first().map(|p| p.1));
    if let Some(d) = &debug {
        ports.push((d.port, d.port));
    }
    let mut forwarded = Vec::new();
    for (local, remote) in &ports {
        let addr = forward::start(
            target_rx.clone(),
            app_exits_rx.clone(),
            *local,
            *remote,
            events_tx.clone(),
        )
        .await
        .map_err(|e| {
            UsageError(format!(
                "cannot listen on localhost:{local} ({e}; is it in use? map another port in \
                 kdev.yaml `run.ports: [\"{}:{remote}\"]`)",
                local.wrapping_add(1)
            ))
        })?;
        forwarded.push((addr, *remote));
    }

    ui.step(&format!(
        "applying {} objects to namespace {ns} ({} is the dev workload)",
        plan.objects.len(),
        plan.workload
    ));
    deploy::apply(&plan, &discovered)
        .instrument(tracing::info_span!("deploy", objects = plan.objects.len()))
        .await?;
    *deployed = true;
    if !plan.notes.removed_probes.is_empty() {
        ui.warn(&format!(
            "{} probe removed from container {} while developing (it would kill an app that is \
             being rebuilt)",
            plan.notes.removed_probes.join(" and "),
            plan.notes.container
        ));
    }
    for (addr, remote) in &forwarded {
        if debug.as_ref().is_some_and(|d| d.port == *remote) {
            ui.ok(&format!(
                "forwarding {addr} → Delve in the pod (port {remote})"
            ));
        } else {
            ui.ok(&format!("forwarding http://{addr} → pod port {remote}"));
        }
    }

    // Watch before the first reconcile, so nothing saved in between is missed.
    let sync_root = project.sync_root();
    let rules = IgnoreRules::load(&sync_root, &cfg.sync.exclude)?;
    let (watcher, batches) =
        TreeWatcher::start(&sync_root, rules.clone(), opts.poll, DEFAULT_DEBOUNCE)
            .context("starting the file watcher")?;
    match &watcher.mode {
        Mode::Native => {}
        Mode::Polling => ui.step("watching by polling (--poll)"),
        Mode::PollingFallback(why) => ui.warn(why),
    }
    let build_mode = if debug.as_ref().is_some_and(|d| d.hold) {
        BuildMode::Never
    } else {
        BuildMode::Auto
    };
    let enter = if build_mode == BuildMode::Never {
        ui.step("--hold: saves are synced but not built; press Enter to build and restart");
        enter_presses()
    } else {
        mpsc::unbounded_channel().1
    };

    let reload = ReloadLoop {
        ui,
        project: &project,
        conn,
        lease,
        pod_selector: plan.pod_selector.clone(),
        pod_timeout: opts.pod_timeout,
        controller,
        session_config: project.session_config(debug.is_some(), app_port),
        debug,
        forwards: Forwards {
            target: target_tx,
            events: events_rx,
            app_exits: app_exits_tx,
        },
        batches,
        engine: SyncEngine::new(&sync_root, rules, build_mode),
        report: Report {
            reload: None,
            app_port,
            timings,
            root: sync_root.clone(),
        },
        enter,
    };
    let result = reload.run().await;
    drop(watcher);
    result
}

/// Lines on stdin (Enter presses), read on a thread of their own (stdin blocks).
fn enter_presses() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    rx
}

/// `kdev debug --print-config`: the editor configuration, with nothing deployed.
pub fn print_debug_config(config_path: &std::path::Path, port: u16) -> Result<()> {
    let project = Project::load(config_path)?;
    crate::pod::delve::print_editor_config(
        &project.sync_root(),
        &project.config.sync.remote,
        port,
        &project.name,
    );
    Ok(())
}

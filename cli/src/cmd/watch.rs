//! `kdev watch` and `kdev debug`: deploy the dev workload, then run the reload loop
//! ([`crate::reload`]) until Ctrl-C or until the session is lost.
//!
//! Setup order, so that nothing is applied when something is wrong: the project and its
//! manifests, the cluster connection, the permission check, the session Lease (another kdev of
//! the same workload), the local ports (one in use), then apply, then the file watcher (started
//! before the first reconcile, so nothing saved in between is missed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
use crate::pod::controllers::Controllers;
use crate::pod::delve::DebugOptions;
use crate::pod::forward::{self, ForwardTarget};
use crate::project::{Project, Service, resolve_owner};
use crate::reload::report::Report;
use crate::reload::timings::TimingsLog;
use crate::reload::{Forwards, ReloadLoop};
use crate::sync::engine::SyncEngine;
use crate::sync::ignore::IgnoreRules;
use crate::sync::watch::tree_watcher::{Batch, DEFAULT_DEBOUNCE, Mode, TreeWatcher};
use crate::ui::Ui;

/// Options of `kdev watch` that do not come from kdev.yaml.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub config_path: PathBuf,
    pub namespace: Option<String>,
    pub context: Option<String>,
    /// The services to run in dev mode (kdev.yaml's `services:` names); all when empty.
    pub services: Vec<String>,
    pub poll: bool,
    pub pod_timeout: Duration,
    /// `kdev debug`: run the app under Delve (the first service on this port, the next ones
    /// on the following ports).
    pub debug: Option<DebugOptions>,
    /// `--owner`: who is developing.
    pub owner: Option<String>,
    /// `--take-over`: take the session lock even if another kdev holds it.
    pub take_over: bool,
    /// `--timings FILE`: append each reload's timeline to FILE.
    pub timings: Option<PathBuf>,
}

/// Run `kdev watch` until Ctrl-C (`Ok`), or until a session is lost (an error).
pub async fn run(opts: WatchOptions) -> Result<()> {
    let ui = Ui::detect();
    // The session Leases outlive the loops' futures, so Ctrl-C in any phase can release them.
    let mut leases: Vec<SessionLease> = Vec::new();
    let mut deployed = false;
    // One shutdown signal for every phase: deploy, upload, handshake, sync and retry waits.
    let outcome = tokio::select! {
        r = watch_until_lost(&opts, &ui, &mut leases, &mut deployed) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    for l in leases.drain(..) {
        l.release().await;
    }
    outcome?;
    if deployed {
        ui.step("stopped; the dev pods keep running (`kdev down` removes them)");
    } else {
        ui.step("stopped");
    }
    Ok(())
}

/// One dev service being set up: what its loop will need.
struct Setup {
    service: Service,
    ui: Ui,
    ports: Vec<(u16, u16)>,
    app_port: Option<u16>,
    debug: Option<DebugOptions>,
}

async fn watch_until_lost(
    opts: &WatchOptions,
    ui: &Ui,
    leases: &mut Vec<SessionLease>,
    deployed: &mut bool,
) -> Result<()> {
    let project = Project::load(&opts.config_path)?;
    let cfg = &project.config;
    let services = project.select_services(&opts.services)?;
    // Before anything is deployed: a bad path is a usage error.
    let timings = opts
        .timings
        .as_deref()
        .map(TimingsLog::open)
        .transpose()
        .map_err(|e| UsageError(format!("{e:#}")))?
        .map(|t| Arc::new(Mutex::new(t)));
    let context = opts.context.as_deref().or(cfg.context.as_deref());
    let conn = connect(
        context,
        opts.namespace.as_deref().or(cfg.namespace.as_deref()),
    )
    .await?;
    let (client, ns) = (conn.client.clone(), conn.namespace.clone());

    // What to deploy, and whether we may.
    let objects = project.load_manifests(&ns)?;
    let debug: BTreeMap<String, DebugOptions> = match &opts.debug {
        Some(d) => services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let port = d.port.saturating_add(i as u16);
                (s.config.name.clone(), DebugOptions { port, ..d.clone() })
            })
            .collect(),
        None => BTreeMap::new(),
    };
    let owner = resolve_owner(opts.owner.as_deref(), cfg.owner.as_deref(), context)?;
    let mut plan = project.deploy_plan(&objects, &ns, &services, &debug)?;
    deploy::personalize(&mut plan, &owner);
    let discovered = deploy::discover(&client, &ns, &plan.objects).await?;
    let kinds = deploy::resource_kinds(&discovered);
    access::require(&client, &ns, &access::needed_for_watch(&kinds)).await?;
    let controllers = Controllers::find()?;
    tracing::debug!("controllers: {}", controllers.describe());

    // Each service's name (a service without `services:` is named after its workload), output
    // and ports.
    let several = plan.workloads.len() > 1;
    let width = plan
        .workloads
        .iter()
        .map(|w| w.service.len())
        .max()
        .unwrap_or(0);
    let mut setups = Vec::new();
    for (i, w) in plan.workloads.iter().enumerate() {
        let service = services
            .iter()
            .find(|s| s.config.name == w.service || s.config.name.is_empty())
            .cloned()
            .context("each dev workload comes from a service")?;
        let mut ports: Vec<(u16, u16)> = match &service.config.run.ports {
            Some(p) => p.iter().map(|p| (p.local, p.remote)).collect(),
            None => w.notes.ports.iter().map(|p| (*p, *p)).collect(),
        };
        let app_port = service.config.run.ready_port.or(ports.first().map(|p| p.1));
        let debug = debug.get(&service.config.name).cloned();
        if let Some(d) = &debug {
            ports.push((d.port, d.port));
        }
        let ui = if several {
            ui.for_service(&w.service, i, width)
        } else {
            ui.clone()
        };
        setups.push(Setup {
            service,
            ui,
            ports,
            app_port,
            debug,
        });
    }
    check_local_ports(&setups)?;

    // The session locks, then the local ports: another session of these workloads, or a port
    // in use, is found before anything is applied.
    for w in &plan.workloads {
        leases.push(
            lease::acquire(
                &client,
                &ns,
                &owner,
                &project.name,
                &w.service,
                &w.workload.name,
                opts.take_over,
            )
            .await?,
        );
    }
    let mut forwards = Vec::new();
    let mut forwarded = Vec::new();
    for s in &setups {
        let (target_tx, target_rx) = watch::channel::<Option<ForwardTarget>>(None);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (app_exits_tx, app_exits_rx) = watch::channel(0u64);
        let mut addrs = Vec::new();
        for (local, remote) in &s.ports {
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
            addrs.push((addr, *remote));
        }
        forwarded.push(addrs);
        forwards.push(Forwards {
            target: target_tx,
            events: events_rx,
            app_exits: app_exits_tx,
        });
    }

    // Where builds keep Go's caches: a claim that outlives the pod, else the image's (one line).
    let cache = deploy::cache::prepare(
        &client,
        &ns,
        &mut plan,
        &project.labels(),
        &owner,
        &cfg.cache,
    )
    .await?;
    match &cache {
        deploy::cache::CacheChoice::Image { warn: true, .. } => ui.warn(&cache.describe()),
        _ => ui.step(&cache.describe()),
    }
    let dev: Vec<String> = plan
        .workloads
        .iter()
        .map(|w| w.workload.to_string())
        .collect();
    ui.step(&format!(
        "applying {} objects to namespace {ns} ({} in dev mode)",
        plan.objects.len(),
        dev.join(", ")
    ));
    deploy::apply(&plan, &discovered, &ns)
        .instrument(tracing::info_span!("deploy", objects = plan.objects.len()))
        .await?;
    *deployed = true;
    for ((s, w), addrs) in setups.iter().zip(&plan.workloads).zip(&forwarded) {
        if !w.notes.removed_probes.is_empty() {
            s.ui.warn(&format!(
                "{} probe removed from container {} while developing (it would kill an app that \
                 is being rebuilt)",
                w.notes.removed_probes.join(" and "),
                w.notes.container
            ));
        }
        let mut status: Vec<String> = Vec::new();
        for (addr, remote) in addrs {
            if s.debug.as_ref().is_some_and(|d| d.port == *remote) {
                status.push(format!("{addr} → Delve (port {remote})"));
            } else {
                status.push(format!("http://{addr} → pod port {remote}"));
            }
        }
        if status.is_empty() {
            s.ui.ok(&format!("{}: no ports to forward", w.workload));
        } else {
            s.ui.ok(&format!("{}: forwarding {}", w.workload, status.join(", ")));
        }
    }

    // Watch before the first reconcile, so nothing saved in between is missed: one watcher per
    // sync root, its batches to every service whose root it is.
    let mut watchers = Vec::new();
    type Subscribers<'a> = Vec<(mpsc::UnboundedSender<Batch>, &'a [String])>;
    let mut roots: Vec<(PathBuf, Subscribers<'_>)> = Vec::new();
    let mut batches = Vec::new();
    for s in &setups {
        let root = s.service.sync_root();
        let (tx, rx) = mpsc::unbounded_channel();
        batches.push(rx);
        let excludes = s.service.config.sync.exclude.as_slice();
        match roots.iter_mut().find(|(r, _)| *r == root) {
            Some((_, subscribers)) => subscribers.push((tx, excludes)),
            None => roots.push((root, vec![(tx, excludes)])),
        }
    }
    for (root, subscribers) in roots {
        // A root synced by one service is watched under its excludes (ignored trees cost no
        // watches); a shared one under the common rules, each service filtering with its own.
        let excludes = match subscribers.as_slice() {
            [(_, e)] => e.to_vec(),
            _ => Vec::new(),
        };
        let subscribers = subscribers.into_iter().map(|(tx, _)| tx).collect();
        let rules = IgnoreRules::load(&root, &excludes)?;
        let (watcher, rx) = TreeWatcher::start(&root, rules, opts.poll, DEFAULT_DEBOUNCE)
            .with_context(|| format!("starting the file watcher on {}", root.display()))?;
        match &watcher.mode {
            Mode::Native => {}
            Mode::Polling => ui.step("watching by polling (--poll)"),
            Mode::PollingFallback(why) => ui.warn(why),
        }
        tokio::spawn(fan_out(rx, subscribers));
        watchers.push(watcher);
    }

    let held = opts.debug.as_ref().is_some_and(|d| d.hold);
    let build_mode = if held {
        BuildMode::Never
    } else {
        BuildMode::Auto
    };
    let enters = if held {
        ui.step("--hold: saves are synced but not built; press Enter to build and restart");
        enter_presses(setups.len())
    } else {
        (0..setups.len())
            .map(|_| mpsc::unbounded_channel().1)
            .collect()
    };

    let mut loops = Vec::new();
    for ((((s, w), fwd), (lease, batch_rx)), enter) in setups
        .iter()
        .zip(&plan.workloads)
        .zip(forwards)
        .zip(leases.iter_mut().zip(batches))
        .zip(enters)
    {
        let root = s.service.sync_root();
        let rules = IgnoreRules::load(&root, &s.service.config.sync.exclude)?;
        let reload = ReloadLoop {
            ui: &s.ui,
            service: &s.service,
            project_name: &project.name,
            conn: connect(context, Some(&ns)).await?,
            lease,
            pod_selector: w.pod_selector.clone(),
            pod_timeout: opts.pod_timeout,
            controllers: controllers.clone(),
            session_config: s.service.session_config(s.debug.is_some(), s.app_port),
            debug: s.debug.clone(),
            forwards: fwd,
            batches: batch_rx,
            engine: SyncEngine::new(&root, rules, build_mode),
            report: Report {
                reload: None,
                app_port: s.app_port,
                timings: timings.clone(),
                service: several.then(|| w.service.clone()),
                root: root.clone(),
            },
            enter,
        };
        loops.push(reload.run());
    }
    // All at once: startup takes as long as the slowest service; the first error ends all.
    let result = futures::future::try_join_all(loops).await.map(|_| ());
    drop(watchers);
    result
}

/// Local ports forwarded for two services, found before anything is applied.
fn check_local_ports(setups: &[Setup]) -> Result<(), UsageError> {
    let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
    for s in setups {
        for (local, remote) in &s.ports {
            if let Some(other) = seen.insert(*local, &s.service.config.name) {
                return Err(UsageError(format!(
                    "services `{other}` and `{}` would both forward localhost:{local}; set \
                     `run.ports` of one, e.g. `[\"{}:{remote}\"]`",
                    s.service.config.name,
                    local.wrapping_add(1)
                )));
            }
        }
    }
    Ok(())
}

/// Hand each batch of one watcher to every service that syncs its root.
async fn fan_out(mut from: mpsc::Receiver<Batch>, to: Vec<mpsc::UnboundedSender<Batch>>) {
    while let Some(batch) = from.recv().await {
        for t in &to {
            let _ = t.send(batch.clone());
        }
    }
}

/// Lines on stdin (Enter presses), read on a thread of their own (stdin blocks), each handed
/// to all `n` services.
fn enter_presses(n: usize) -> Vec<mpsc::UnboundedReceiver<()>> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
            if senders.iter().map(|s| s.send(())).all(|r| r.is_err()) {
                break;
            }
        }
    });
    receivers
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

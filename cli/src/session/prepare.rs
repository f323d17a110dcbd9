//! Step 2 of the set-up: one service's [`ServiceSession`] from the [`Plan`]: its own
//! connection, its ignore rules (loaded once) and sync engine, whether its pod gets Go modules
//! through kdev, the channels its watcher, forwards and Enter presses feed, and last its
//! session Lease.

use anyhow::Result;
use kdev_protocol::ModuleProxyConfig;
use tokio::sync::mpsc;

use super::forwards::Forwards;
use super::plan::Plan;
use super::service::ServiceSession;
use super::service_plan::ServicePlan;
use crate::cluster::connect::connect;
use crate::cluster::lease;
use crate::modules::Proxy;
use crate::reload::report::Report;
use crate::sync::engine::SyncEngine;
use crate::sync::ignore::IgnoreRules;

/// Set up `s`'s session. Its Lease is taken last: once held, nothing waits before the session
/// is in the caller's hands, which release it on an error or Ctrl-C.
pub async fn prepare_service(plan: &Plan, s: &ServicePlan) -> Result<ServiceSession> {
    let ns = &plan.conn.namespace;
    let conn = connect(plan.context.as_deref(), Some(ns)).await?;
    let root = s.service.sync_root();
    let rules = IgnoreRules::load(&root, &s.service.config.sync.exclude)?;
    let (module_proxy, modules) = module_proxy(plan, s, &rules).await;
    let engine = SyncEngine::new(&root, rules, plan.build_mode());
    let (batches_in, batches) = mpsc::unbounded_channel();
    let (enter_in, enter) = mpsc::unbounded_channel();
    let (status, commands) = match s.ui.hub() {
        Some(hub) => {
            let (handle, commands) = hub.add_service(&s.workload.service);
            (Some(handle), Some(commands))
        }
        None => (None, None),
    };
    let lease = lease::acquire(
        &plan.conn.client,
        lease::LeaseRequest {
            namespace: ns,
            owner: &plan.owner,
            project: &plan.project.name,
            service: &s.workload.service,
            workload: &s.workload.workload.name,
            pod_selector: &s.workload.pod_selector,
            take_over: plan.take_over,
            leases_in_session: plan.services.len(),
        },
    )
    .await?;
    if let Some(note) = &lease.took_over {
        s.ui.warn(note);
    }
    Ok(ServiceSession {
        ui: s.ui.clone(),
        service: s.service.clone(),
        workload: s.workload.clone(),
        project_name: plan.project.name.clone(),
        conn,
        lease,
        pod_timeout: plan.pod_timeout,
        controllers: plan.controllers.clone(),
        session_config: s
            .service
            .session_config(s.debug.is_some(), s.app_port, module_proxy),
        modules,
        debug: s.debug.clone(),
        ports: s.ports.clone(),
        forwarded: Vec::new(),
        forwards: Forwards::default(),
        batches,
        engine,
        report: Report::new(
            s.app_port,
            plan.timings.clone(),
            s.timings_name.clone(),
            root,
        )
        .with_status(status),
        commands,
        enter,
        batches_in: Some(batches_in),
        enter_in: Some(enter_in),
    })
}

/// The pod's go gets modules through kdev unless the service is set up otherwise: the
/// session's setting (with the developer's GONOSUMDB, from `go env`, asked here the first
/// time) and what answers the requests.
async fn module_proxy(
    plan: &Plan,
    s: &ServicePlan,
    rules: &IgnoreRules,
) -> (Option<ModuleProxyConfig>, Option<Proxy>) {
    if !s.service.wants_module_proxy(rules) {
        return (None, None);
    }
    let config = ModuleProxyConfig {
        nosumdb: plan.modules.nosumdb().await,
    };
    if !plan.modules.go_installed().await {
        s.ui.warn(
            "go is not installed on this machine: the pod gets only the modules in your module \
             cache (`modules: {proxy: false}` in kdev.yaml lets it download them itself)",
        );
    }
    let proxy = Proxy::new(plan.modules.clone(), s.ui.clone());
    (Some(config), Some(proxy))
}

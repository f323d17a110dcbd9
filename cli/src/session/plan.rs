//! Step 1 of the set-up: the [`Plan`], everything decided before anything is created in the
//! cluster. The project and its selected services, `--timings`, the connection, the manifests
//! rewritten for development and made the owner's, the permission check, and each service's
//! part ([`ServicePlan`]). Reads the cluster, creates nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use kdev_protocol::BuildMode;

use super::options::WatchOptions;
use super::service_plan::{self, ServicePlan};
use crate::cluster::access;
use crate::cluster::connect::{Connection, connect};
use crate::deploy::{self, DeployPlan, Discovered};
use crate::error::UsageError;
use crate::modules::{GoEnv, ModuleSource};
use crate::pod::controllers::Controllers;
use crate::pod::delve::DebugOptions;
use crate::project::{Project, Service, resolve_owner};
use crate::reload::timings::TimingsLog;
use crate::ui::Ui;

/// What the session will deploy and run, checked.
pub struct Plan {
    pub project: Project,
    /// The kubeconfig context: `--context`, else kdev.yaml's (else the current one).
    pub context: Option<String>,
    /// The set-up's connection (each service's loop has its own).
    pub conn: Connection,
    /// Who is developing.
    pub owner: String,
    /// The objects to apply, the dev workloads rewritten and made the owner's.
    pub deploy: DeployPlan,
    /// Where each object of `deploy` lives in the API.
    pub discovered: Vec<Discovered>,
    pub controllers: Controllers,
    /// `--timings`, shared by the services.
    pub timings: Option<Arc<Mutex<TimingsLog>>>,
    /// One per dev workload.
    pub services: Vec<ServicePlan>,
    pub take_over: bool,
    pub pod_timeout: Duration,
    pub poll: bool,
    /// `kdev debug --hold`: saves are synced, built only when asked (Enter).
    pub hold: bool,
    /// Answers the pods' module requests, for every service that uses the module proxy.
    pub modules: Arc<ModuleSource>,
}

impl Plan {
    /// Whether a synced save builds.
    pub fn build_mode(&self) -> BuildMode {
        if self.hold {
            BuildMode::Never
        } else {
            BuildMode::Auto
        }
    }
}

/// Make the plan; any error here leaves the cluster as it was.
pub async fn plan(opts: &WatchOptions, ui: &Ui) -> Result<Plan> {
    let project = Project::load(&opts.config_path)?;
    let cfg = &project.config;
    let selected = project.select_services(&opts.services)?;
    let timings = open_timings(opts.timings.as_deref())?;
    let context = opts.context.clone().or_else(|| cfg.context.clone());
    let namespace = opts.namespace.as_deref().or(cfg.namespace.as_deref());
    let conn = connect(context.as_deref(), namespace).await?;

    // What to deploy, and whether we may.
    let debug = service_plan::debug_options(&selected, opts.debug.as_ref());
    let owner = opts.owner.as_deref();
    let (deploy, owner) = what_to_deploy(
        &project,
        &conn.namespace,
        &selected,
        &debug,
        owner,
        context.as_deref(),
    )?;
    let discovered = deploy::discover(&conn.client, &conn.namespace, &deploy.objects).await?;
    let needed = access::needed_for_watch(&deploy::resource_kinds(&discovered));
    access::require(&conn.client, &conn.namespace, &needed).await?;
    let controllers = Controllers::find()?;
    tracing::debug!("controllers: {}", controllers.describe());

    let services = service_plan::service_plans(&deploy.workloads, &selected, &debug, ui)?;
    Ok(Plan {
        project,
        context,
        conn,
        owner,
        deploy,
        discovered,
        controllers,
        timings,
        services,
        take_over: opts.take_over,
        pod_timeout: opts.pod_timeout,
        poll: opts.poll,
        hold: opts.debug.as_ref().is_some_and(|d| d.hold),
        modules: Arc::new(ModuleSource::new(GoEnv::developer())),
    })
}

/// `--timings FILE`, opened before anything is deployed: a bad path is a usage error.
fn open_timings(path: Option<&Path>) -> Result<Option<Arc<Mutex<TimingsLog>>>, UsageError> {
    let log = path
        .map(TimingsLog::open)
        .transpose()
        .map_err(|e| UsageError(format!("{e:#}")))?;
    Ok(log.map(|t| Arc::new(Mutex::new(t))))
}

/// The project's manifests for `namespace`, with the workloads of `services` rewritten for
/// development and everything made the owner's; and who the owner is.
fn what_to_deploy(
    project: &Project,
    namespace: &str,
    services: &[Service],
    debug: &BTreeMap<String, DebugOptions>,
    owner_flag: Option<&str>,
    context: Option<&str>,
) -> Result<(DeployPlan, String)> {
    let objects = project.load_manifests(namespace)?;
    let owner = resolve_owner(owner_flag, project.config.owner.as_deref(), context)?;
    let mut plan = project.deploy_plan(&objects, namespace, services, debug)?;
    deploy::personalize(&mut plan, &owner);
    Ok((plan, owner))
}

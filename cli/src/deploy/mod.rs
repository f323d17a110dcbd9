//! Deploy: read the project's manifests ([`manifests`]), turn the app's workload into a dev
//! workload ([`rewrite`], planned here), make every object the owner's own ([`personalize`]),
//! give it a build cache that outlives the pod ([`cache`]), apply with server-side apply
//! ([`apply`]), and find the dev pod ([`wait`]).

mod aliases;
mod apply;
pub mod cache;
mod manifests;
mod personalize;
pub mod render;
pub mod rewrite;
mod wait;

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy, StatefulSet};
use kube::ResourceExt;
use kube::api::DynamicObject;

use kdev_protocol::labels::{MANAGED_BY as LABEL_MANAGED_BY, MANAGED_BY_KDEV};

use crate::config::{WorkloadKind, WorkloadRef};

pub use apply::{Discovered, apply, discover, resource_kinds};
pub use manifests::ManifestObject;
use manifests::find_workload;
pub use personalize::{owner_from_user, personalize};
use rewrite::RewriteNotes;
pub use rewrite::{DebugSpec, DevPodSpec};
pub use wait::wait_for_dev_pod;

/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "kdev";

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: document {doc}: {message}")]
    Object {
        path: PathBuf,
        doc: usize,
        message: String,
    },
    #[error("no manifests found in {0}: point `manifests` in kdev.yaml at your YAML files")]
    NoManifests(String),
    #[error("rendering the manifests with `{command}`: {message}")]
    Render { command: String, message: String },
    #[error("{0}")]
    Workload(String),
    #[error(transparent)]
    Rewrite(#[from] rewrite::RewriteError),
    #[error("applying {kind}/{name}: {}", api_message(.source))]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("{0}")]
    Pod(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl DeployError {
    /// Whether this is the user's input to fix (a manifest, the workload's name) rather than
    /// something the cluster did.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DeployError::Read { .. }
                | DeployError::Yaml { .. }
                | DeployError::Object { .. }
                | DeployError::NoManifests(_)
                | DeployError::Render { .. }
                | DeployError::Workload(_)
                | DeployError::Rewrite(_)
        )
    }
}

/// The API server's own message for API errors (its Status, without the debug dump), else the
/// error itself.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// A workload to run in dev mode, as kdev.yaml's service describes it.
#[derive(Debug, Clone)]
pub struct DevTarget<'a> {
    /// The service's name (`""` for a kdev.yaml without `services:`).
    pub service: &'a str,
    /// kdev.yaml's `workload`; default: the workload named like the service, else the only one.
    pub workload: Option<&'a WorkloadRef>,
    pub dev: DevPodSpec,
}

/// One workload rewritten into a dev workload.
#[derive(Debug, Clone)]
pub struct DevWorkload {
    /// The kdev.yaml service it runs (the workload's name when kdev.yaml has no `services:`).
    pub service: String,
    pub workload: WorkloadRef,
    /// Labels that select the dev pod.
    pub pod_selector: BTreeMap<String, String>,
    pub notes: RewriteNotes,
    /// Its index in [`DeployPlan::objects`].
    pub index: usize,
    /// The manifests' Services that select its pods, by their names in the manifests: the names
    /// the developer's other services call it by.
    pub service_names: Vec<String>,
}

/// The objects to apply, with the dev workloads rewritten, everything labelled and namespaced.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    pub objects: Vec<DynamicObject>,
    pub workloads: Vec<DevWorkload>,
    /// Service names in the manifests → their names as applied (`orders` → `orders-alice`).
    pub renamed_services: BTreeMap<String, String>,
}

/// Build the deploy plan (pure: no cluster access). Objects not named by a target are applied
/// as the manifests say (labelled as kdev's).
pub fn prepare(
    objects: &[ManifestObject],
    targets: &[DevTarget<'_>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<DeployPlan, DeployError> {
    let mut indexes = Vec::new();
    for t in targets {
        let by_name = (!t.service.is_empty()).then_some(t.service);
        let index = find_workload(objects, t.workload, by_name, targets.len() == 1)?;
        if let Some(j) = indexes.iter().position(|i| *i == index) {
            return Err(DeployError::Workload(format!(
                "services `{}` and `{}` would both run {}",
                targets[j].service,
                t.service,
                objects[index].object.name_any()
            )));
        }
        indexes.push(index);
    }
    let mut out = Vec::new();
    let mut workloads = Vec::new();
    for (i, m) in objects.iter().enumerate() {
        let mut obj = m.object.clone();
        obj.metadata.namespace = Some(namespace.to_string());
        obj.metadata
            .labels
            .get_or_insert_with(Default::default)
            .extend(labels.clone());
        obj.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_MANAGED_BY.into(), MANAGED_BY_KDEV.into());
        if let Some(t) = indexes.iter().position(|x| *x == i) {
            let target = &targets[t];
            let (rewritten, workload, selector, notes) =
                rewrite_workload(obj, m, &target.dev, labels)?;
            obj = rewritten;
            let service = if target.service.is_empty() {
                workload.name.clone()
            } else {
                target.service.to_string()
            };
            workloads.push(DevWorkload {
                service,
                service_names: services_selecting(objects, m),
                workload,
                pod_selector: selector,
                notes,
                index: i,
            });
        }
        out.push(obj);
    }
    // In the order of the targets (kdev.yaml's order).
    workloads.sort_by_key(|w| indexes.iter().position(|i| *i == w.index));
    let renamed_services = objects
        .iter()
        .filter(|o| o.kind() == "Service")
        .map(|o| (o.object.name_any(), o.object.name_any()))
        .collect();
    Ok(DeployPlan {
        objects: out,
        workloads,
        renamed_services,
    })
}

/// The names of the Services in `objects` whose selector picks the pods of `workload` (every
/// selector label is on its pod template).
fn services_selecting(objects: &[ManifestObject], workload: &ManifestObject) -> Vec<String> {
    let pod_labels = workload.object.data["spec"]["template"]["metadata"]["labels"].as_object();
    let Some(pod_labels) = pod_labels else {
        return Vec::new();
    };
    objects
        .iter()
        .filter(|o| o.kind() == "Service")
        .filter(|o| {
            o.object.data["spec"]["selector"]
                .as_object()
                .is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
                })
        })
        .map(|o| o.object.name_any())
        .collect()
}

type Rewritten = (
    DynamicObject,
    WorkloadRef,
    BTreeMap<String, String>,
    RewriteNotes,
);

fn rewrite_workload(
    obj: DynamicObject,
    m: &ManifestObject,
    dev: &DevPodSpec,
    labels: &BTreeMap<String, String>,
) -> Result<Rewritten, DeployError> {
    let bad = |message: String| DeployError::Object {
        path: m.source.clone(),
        doc: 0,
        message,
    };
    // Back from the typed workload to the object that is applied.
    let finish = |typed: serde_json::Result<serde_json::Value>, kind, selector, notes| {
        let back = serde_json::from_value(typed.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
        let workload = WorkloadRef {
            kind,
            name: obj.name_any(),
        };
        Ok::<Rewritten, DeployError>((back, workload, selector, notes))
    };
    let value = serde_json::to_value(&obj).map_err(|e| bad(e.to_string()))?;
    let mut dev = dev.clone();
    dev.labels.extend(labels.clone());
    match m.kind() {
        "Deployment" => {
            let mut d: Deployment = serde_json::from_value(value)
                .map_err(|e| bad(format!("invalid Deployment: {e}")))?;
            let spec = d
                .spec
                .as_mut()
                .ok_or_else(|| bad("the Deployment has no spec".into()))?;
            // One dev pod, and never two at once: both would take the same edits.
            spec.replicas = Some(1);
            spec.strategy = Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            });
            let notes = rewrite::rewrite_pod_template(&mut spec.template, &dev)?;
            let selector = spec.selector.match_labels.clone().unwrap_or_default();
            finish(
                serde_json::to_value(&d),
                WorkloadKind::Deployment,
                selector,
                notes,
            )
        }
        "StatefulSet" => {
            let mut s: StatefulSet = serde_json::from_value(value)
                .map_err(|e| bad(format!("invalid StatefulSet: {e}")))?;
            let spec = s
                .spec
                .as_mut()
                .ok_or_else(|| bad("the StatefulSet has no spec".into()))?;
            spec.replicas = Some(1);
            let notes = rewrite::rewrite_pod_template(&mut spec.template, &dev)?;
            let selector = spec.selector.match_labels.clone().unwrap_or_default();
            finish(
                serde_json::to_value(&s),
                WorkloadKind::StatefulSet,
                selector,
                notes,
            )
        }
        other => Err(bad(format!("{other} is not a supported workload"))),
    }
}

#[cfg(test)]
mod tests;

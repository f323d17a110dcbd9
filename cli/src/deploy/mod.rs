//! Deploy: read the project's manifests ([`manifests`]), turn the app's workload into a dev
//! workload ([`rewrite`], planned here), make every object the owner's own ([`personalize`]),
//! apply with server-side apply ([`apply`]), and find the dev pod ([`wait`]).

mod apply;
mod manifests;
mod personalize;
pub mod rewrite;
mod wait;

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy, StatefulSet};
use kube::ResourceExt;
use kube::api::DynamicObject;

use kdev_protocol::labels::{MANAGED_BY as LABEL_MANAGED_BY, MANAGED_BY_KDEV};

use crate::config::{WorkloadKind, WorkloadRef};

pub use apply::{apply, discover, resource_kinds};
use manifests::find_workload;
pub use manifests::{ManifestObject, load_manifests};
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

/// The objects to apply, with the app's workload rewritten, everything labelled and namespaced.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    pub objects: Vec<DynamicObject>,
    pub workload: WorkloadRef,
    /// Labels that select the dev pod.
    pub pod_selector: BTreeMap<String, String>,
    pub notes: RewriteNotes,
}

/// Build the deploy plan (pure: no cluster access).
pub fn prepare(
    objects: &[ManifestObject],
    wanted: Option<&WorkloadRef>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    dev: &DevPodSpec,
) -> Result<DeployPlan, DeployError> {
    let index = find_workload(objects, wanted)?;
    let mut out = Vec::new();
    let mut result = None;
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
        if i == index {
            let (rewritten, workload, selector, notes) = rewrite_workload(obj, m, dev, labels)?;
            obj = rewritten;
            result = Some((workload, selector, notes));
        }
        out.push(obj);
    }
    let (workload, pod_selector, notes) = result.expect("the workload index is in range");
    Ok(DeployPlan {
        objects: out,
        workload,
        pod_selector,
        notes,
    })
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

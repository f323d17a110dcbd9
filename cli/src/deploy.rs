//! Deploy: read the project's manifests, turn the app's workload into a dev workload, apply
//! everything with server-side apply, and find the dev pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::config::{WorkloadKind, WorkloadRef};
use crate::rewrite::{self, DevPodSpec, RewriteNotes};

/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "kdev";
/// Label naming the kdev project (the directory of kdev.yaml) an object belongs to.
pub const LABEL_PROJECT: &str = "kdev.dev/project";

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

/// The API server's own message for API errors (its Status, without the debug dump), else the
/// error itself.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// One object read from a manifest file.
#[derive(Debug, Clone)]
pub struct ManifestObject {
    pub source: PathBuf,
    pub object: DynamicObject,
}

impl ManifestObject {
    pub fn kind(&self) -> &str {
        self.object
            .types
            .as_ref()
            .map(|t| t.kind.as_str())
            .unwrap_or("")
    }
}

/// Read every YAML document from the given files and directories (`*.yaml`, `*.yml`, sorted).
pub fn load_manifests(paths: &[PathBuf]) -> Result<Vec<ManifestObject>, DeployError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let read = std::fs::read_dir(p).map_err(|source| DeployError::Read {
                path: p.clone(),
                source,
            })?;
            let mut in_dir: Vec<PathBuf> = read
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| DeployError::Read {
            path: file.clone(),
            source,
        })?;
        out.extend(parse_manifests(&text, file)?);
    }
    if out.is_empty() {
        let names: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(DeployError::NoManifests(names.join(", ")));
    }
    Ok(out)
}

/// Parse a multi-document YAML text; `path` is for messages.
pub fn parse_manifests(text: &str, path: &Path) -> Result<Vec<ManifestObject>, DeployError> {
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            DeployError::Yaml {
                path: path.into(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        if value.is_null() {
            continue; // an empty document (`---` at the end)
        }
        let object: DynamicObject =
            serde_json::from_value(value).map_err(|e| DeployError::Object {
                path: path.into(),
                doc: i + 1,
                message: format!("not a Kubernetes object: {e}"),
            })?;
        if object.types.is_none() || object.metadata.name.is_none() {
            return Err(DeployError::Object {
                path: path.into(),
                doc: i + 1,
                message: "every object needs apiVersion, kind and metadata.name".into(),
            });
        }
        out.push(ManifestObject {
            source: path.into(),
            object,
        });
    }
    Ok(out)
}

/// Find the workload that runs the app: the configured one, or the only Deployment.
pub fn find_workload(
    objects: &[ManifestObject],
    wanted: Option<&WorkloadRef>,
) -> Result<usize, DeployError> {
    let kind_of = |o: &ManifestObject| match o.kind() {
        "Deployment" => Some(WorkloadKind::Deployment),
        "StatefulSet" => Some(WorkloadKind::StatefulSet),
        _ => None,
    };
    let workloads: Vec<(usize, WorkloadRef)> = objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            Some((
                i,
                WorkloadRef {
                    kind: kind_of(o)?,
                    name: o.object.name_any(),
                },
            ))
        })
        .collect();
    let list = || {
        workloads
            .iter()
            .map(|(_, w)| w.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(w) => workloads
            .iter()
            .find(|(_, x)| x == w)
            .map(|(i, _)| *i)
            .ok_or_else(|| {
                DeployError::Workload(format!(
                    "workload {w} is not in the manifests (they have: {})",
                    list()
                ))
            }),
        None => match workloads.as_slice() {
            [(i, _)] => Ok(*i),
            [] => Err(DeployError::Workload(
                "the manifests contain no Deployment or StatefulSet to run the app".into(),
            )),
            _ => Err(DeployError::Workload(format!(
                "the manifests contain several workloads ({}); name the app's in kdev.yaml, e.g. `workload: {}`",
                list(),
                workloads[0].1
            ))),
        },
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
            .insert(rewrite::LABEL_MANAGED_BY.into(), "kdev".into());
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

/// Label naming the developer an object belongs to.
pub const LABEL_OWNER: &str = "kdev.dev/owner";

/// Make the plan one developer's own, so several can share a namespace: workloads, Services,
/// ConfigMaps and Secrets get `-<owner>` appended to their names (and the pod templates refer
/// to the renamed ConfigMaps and Secrets), every object gets the owner label, and the selectors
/// of workloads and Services include it, so one developer's Service never selects another's
/// pods and one developer's config edit never reaches another's app.
pub fn personalize(plan: &mut DeployPlan, owner: &str) {
    let renamed = |name: &str| {
        let mut n = format!("{name}-{owner}");
        n.truncate(63);
        n.trim_end_matches(['-', '.']).to_string()
    };
    let names_of = |kind: &str| -> Vec<String> {
        plan.objects
            .iter()
            .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
            .map(|o| o.name_any())
            .collect()
    };
    let services = names_of("Service");
    let config_maps = names_of("ConfigMap");
    let secrets = names_of("Secret");
    for obj in &mut plan.objects {
        obj.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_OWNER.into(), owner.into());
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let owner_label = serde_json::Value::String(owner.to_string());
        match kind.as_str() {
            "Deployment" | "StatefulSet" => {
                obj.metadata.name = Some(renamed(&obj.name_any()));
                let spec = &mut obj.data["spec"];
                spec["selector"]["matchLabels"][LABEL_OWNER] = owner_label.clone();
                spec["template"]["metadata"]["labels"][LABEL_OWNER] = owner_label;
                if let Some(svc) = spec["serviceName"].as_str()
                    && services.iter().any(|s| s == svc)
                {
                    spec["serviceName"] = serde_json::Value::String(renamed(svc));
                }
                if let Some(pod) = spec.pointer_mut("/template/spec") {
                    rename_config_refs(pod, &config_maps, &secrets, &renamed);
                }
            }
            "ConfigMap" | "Secret" => {
                obj.metadata.name = Some(renamed(&obj.name_any()));
            }
            "Service" => {
                obj.metadata.name = Some(renamed(&obj.name_any()));
                if obj.data["spec"]["selector"].is_object() {
                    obj.data["spec"]["selector"][LABEL_OWNER] = owner_label;
                }
            }
            _ => {}
        }
    }
    plan.workload.name = renamed(&plan.workload.name);
    plan.pod_selector.insert(LABEL_OWNER.into(), owner.into());
}

/// Point a pod spec's references to the plan's ConfigMaps and Secrets at their renamed copies:
/// volumes (also projected), `envFrom`, `env[].valueFrom` and `imagePullSecrets`. References to
/// objects the manifests do not contain are shared ones and stay as they are.
fn rename_config_refs(
    pod: &mut serde_json::Value,
    config_maps: &[String],
    secrets: &[String],
    renamed: &dyn Fn(&str) -> String,
) {
    // Only existing fields are touched (`pointer_mut`): indexing a JSON value mutably would
    // insert the missing ones as nulls and corrupt the manifest.
    let rename = |item: &mut serde_json::Value, pointer: &str, names: &[String]| {
        if let Some(v) = item.pointer_mut(pointer)
            && let Some(n) = v.as_str()
            && names.iter().any(|x| x == n)
        {
            *v = serde_json::Value::String(renamed(n));
        }
    };
    for volume in array_mut(pod, "/volumes") {
        rename(volume, "/configMap/name", config_maps);
        rename(volume, "/secret/secretName", secrets);
        for source in array_mut(volume, "/projected/sources") {
            rename(source, "/configMap/name", config_maps);
            rename(source, "/secret/name", secrets);
        }
    }
    for pull in array_mut(pod, "/imagePullSecrets") {
        rename(pull, "/name", secrets);
    }
    for list in ["/initContainers", "/containers"] {
        for container in array_mut(pod, list) {
            for from in array_mut(container, "/envFrom") {
                rename(from, "/configMapRef/name", config_maps);
                rename(from, "/secretRef/name", secrets);
            }
            for env in array_mut(container, "/env") {
                rename(env, "/valueFrom/configMapKeyRef/name", config_maps);
                rename(env, "/valueFrom/secretKeyRef/name", secrets);
            }
        }
    }
}

/// The elements of the array at `pointer`, if there is one.
fn array_mut<'a>(
    v: &'a mut serde_json::Value,
    pointer: &str,
) -> std::slice::IterMut<'a, serde_json::Value> {
    match v.pointer_mut(pointer).and_then(|a| a.as_array_mut()) {
        Some(a) => a.iter_mut(),
        None => [].iter_mut(),
    }
}

/// A label-safe owner name from a user name (`alice@example.com` → `alice-example-com`).
pub fn owner_from_user(user: &str) -> Option<String> {
    let mut s: String = user
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(30);
    let s = s.trim_matches('-').to_string();
    crate::config::is_dns_label(&s).then_some(s)
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

/// Where an object lives in the API: its resource and an `Api` that reaches it.
#[derive(Clone)]
pub struct Discovered {
    pub resource: kube::discovery::ApiResource,
    pub api: Api<DynamicObject>,
}

/// Look up each object's resource through discovery (once per kind), in object order.
pub async fn discover(
    client: &Client,
    namespace: &str,
    objects: &[DynamicObject],
) -> Result<Vec<Discovered>, DeployError> {
    // Indexes into `out` of the first object of each kind already looked up.
    let mut seen: Vec<(GroupVersionKind, usize)> = Vec::new();
    let mut out: Vec<Discovered> = Vec::new();
    for obj in objects {
        let types = obj.types.as_ref().expect("checked when parsing");
        let gvk = GroupVersionKind::try_from(types).map_err(|e| DeployError::Object {
            path: PathBuf::from("<manifest>"),
            doc: 0,
            message: e.to_string(),
        })?;
        if let Some(&(_, i)) = seen.iter().find(|(g, _)| *g == gvk) {
            out.push(out[i].clone());
            continue;
        }
        let (resource, caps) =
            kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(|source| DeployError::Apply {
                    kind: types.kind.clone(),
                    name: obj.name_any(),
                    source,
                })?;
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            Api::namespaced_with(client.clone(), namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        seen.push((gvk, out.len()));
        out.push(Discovered { resource, api });
    }
    Ok(out)
}

/// The distinct (API group, plural resource) pairs, for permission checks.
pub fn resource_kinds(discovered: &[Discovered]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for d in discovered {
        let key = (d.resource.group.clone(), d.resource.plural.clone());
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// Apply every object with server-side apply (field manager `kdev`), in manifest order;
/// `discovered` is [`discover`]'s answer for `plan.objects`.
pub async fn apply(plan: &DeployPlan, discovered: &[Discovered]) -> Result<(), DeployError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (obj, d) in plan.objects.iter().zip(discovered) {
        d.api
            .patch(&obj.name_any(), &params, &Patch::Apply(obj))
            .await
            .map_err(|source| DeployError::Apply {
                kind: d.resource.kind.clone(),
                name: obj.name_any(),
                source,
            })?;
    }
    Ok(())
}

/// Container states that will not get better by waiting.
const FATAL_WAITING_REASONS: &[&str] = &[
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Wait for the newest live pod matching `selector` whose kdev sidecar is running (the point at
/// which the controller can be uploaded). Fails early, with the reason, on states that waiting
/// does not fix, and after `timeout` with the pod's conditions and recent events.
pub async fn wait_for_dev_pod(
    client: &Client,
    namespace: &str,
    selector: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Pod, DeployError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let label_selector = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Option<Pod> = None;
    loop {
        // Bounded: a pooled connection that a NAT forgot would otherwise hold this for minutes
        // (its connection is dropped on timeout, so the next attempt uses another).
        let listed = tokio::time::timeout(
            Duration::from_secs(10),
            pods.list(&ListParams::default().labels(&label_selector)),
        )
        .await;
        let list = match listed {
            Ok(l) => l?,
            Err(_) => {
                tracing::debug!("listing pods timed out; retrying");
                continue;
            }
        };
        let newest = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.init_containers
                        .iter()
                        .flatten()
                        .any(|c| c.name == rewrite::SIDECAR_NAME)
                })
            })
            .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        if let Some(pod) = newest {
            if let Some(reason) = fatal_reason(&pod) {
                return Err(DeployError::Pod(format!(
                    "pod {} cannot start: {reason}",
                    pod.name_any()
                )));
            }
            if sidecar_running(&pod) {
                return Ok(pod);
            }
            last = Some(pod);
        }
        if tokio::time::Instant::now() > deadline {
            let detail = match &last {
                Some(p) => describe_pending(client, namespace, p).await,
                None => format!(
                    "no pod matches {label_selector}; is the workload's controller running?"
                ),
            };
            return Err(DeployError::Pod(format!(
                "the dev pod did not start within {timeout:?}: {detail}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sidecar_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.name == rewrite::SIDECAR_NAME && c.state.as_ref().is_some_and(|s| s.running.is_some())
        })
}

fn fatal_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    for c in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
    {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            if FATAL_WAITING_REASONS.contains(&reason.as_str()) {
                let hint = if reason.contains("Image") {
                    format!(
                        " (image {}: is it present on the node or pullable? kdev.yaml `sidecar.image` sets the sidecar's)",
                        c.image
                    )
                } else {
                    String::new()
                };
                return Some(format!(
                    "container {}: {reason}: {}{hint}",
                    c.name,
                    w.message.clone().unwrap_or_default()
                ));
            }
        }
    }
    None
}

async fn describe_pending(client: &Client, namespace: &str, pod: &Pod) -> String {
    let mut parts = Vec::new();
    if let Some(status) = &pod.status {
        parts.push(format!(
            "phase {}",
            status.phase.clone().unwrap_or_default()
        ));
        for c in status.conditions.iter().flatten() {
            if c.status != "True" {
                parts.push(format!(
                    "{}: {} {}",
                    c.type_,
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                ));
            }
        }
    }
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.name={}", pod.name_any());
    if let Ok(list) = events.list(&ListParams::default().fields(&selector)).await {
        for e in list.items.iter().rev().take(5) {
            parts.push(format!(
                "event {}: {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            ));
        }
    }
    format!("pod {}: {}", pod.name_any(), parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: gin-hello
spec:
  replicas: 3
  selector:
    matchLabels: {app: gin-hello}
  template:
    metadata:
      labels: {app: gin-hello}
    spec:
      containers:
        - name: app
          image: kdev.local/gin-hello:dev
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: gin-hello
spec:
  selector: {app: gin-hello}
  ports: [{port: 8080}]
---
";

    fn dev() -> DevPodSpec {
        DevPodSpec {
            container: None,
            sidecar_image: "img".into(),
            args: None,
            stop_signal: None,
            grace_period_ms: None,
            labels: BTreeMap::new(),
            debug: None,
        }
    }

    #[test]
    fn parses_multi_document_manifests() {
        let objs = parse_manifests(MANIFEST, Path::new("k8s/app.yaml")).unwrap();
        assert_eq!(
            objs.iter().map(|o| o.kind()).collect::<Vec<_>>(),
            vec!["Deployment", "Service"]
        );
    }

    #[test]
    fn bad_yaml_names_file_and_line() {
        let err = parse_manifests("kind: Pod\nmetadata: [\n", Path::new("k8s/x.yaml")).unwrap_err();
        assert!(err.to_string().starts_with("k8s/x.yaml:"), "{err}");
        let err = parse_manifests("foo: bar\n", Path::new("k8s/x.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("apiVersion, kind and metadata.name")
                || err.to_string().contains("not a Kubernetes object"),
            "{err}"
        );
    }

    #[test]
    fn prepare_rewrites_the_only_deployment_and_labels_everything() {
        let objs = parse_manifests(MANIFEST, Path::new("a.yaml")).unwrap();
        let labels = BTreeMap::from([(LABEL_PROJECT.to_string(), "gin-hello".to_string())]);
        let plan = prepare(&objs, None, "dev", &labels, &dev()).unwrap();
        assert_eq!(plan.workload.to_string(), "deployment/gin-hello");
        assert_eq!(plan.pod_selector["app"], "gin-hello");
        for o in &plan.objects {
            assert_eq!(o.metadata.namespace.as_deref(), Some("dev"));
            assert_eq!(o.labels()[LABEL_PROJECT], "gin-hello");
        }
        let d: Deployment =
            serde_json::from_value(serde_json::to_value(&plan.objects[0]).unwrap()).unwrap();
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        assert_eq!(
            spec.template.spec.unwrap().share_process_namespace,
            Some(true)
        );
    }

    #[test]
    fn personalize_renames_and_selects_by_owner() {
        let objs = parse_manifests(MANIFEST, Path::new("a.yaml")).unwrap();
        let mut plan = prepare(&objs, None, "team", &BTreeMap::new(), &dev()).unwrap();
        personalize(&mut plan, "alice");
        assert_eq!(plan.workload.to_string(), "deployment/gin-hello-alice");
        assert_eq!(plan.pod_selector[LABEL_OWNER], "alice");
        let d = &plan.objects[0];
        assert_eq!(d.name_any(), "gin-hello-alice");
        assert_eq!(
            d.data["spec"]["selector"]["matchLabels"][LABEL_OWNER],
            "alice"
        );
        assert_eq!(
            d.data["spec"]["template"]["metadata"]["labels"][LABEL_OWNER],
            "alice"
        );
        let svc = &plan.objects[1];
        assert_eq!(svc.name_any(), "gin-hello-alice");
        assert_eq!(svc.data["spec"]["selector"][LABEL_OWNER], "alice");
        assert_eq!(svc.labels()[LABEL_OWNER], "alice");
        assert_eq!(
            owner_from_user("Alice@Example.com").as_deref(),
            Some("alice-example-com")
        );
        assert_eq!(owner_from_user("---"), None);
    }

    #[test]
    fn personalize_gives_each_owner_their_config_and_leaves_shared_refs() {
        let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      imagePullSecrets: [{name: pull}, {name: shared-pull}]
      volumes:
        - {name: cfg, configMap: {name: web-config}}
        - {name: creds, secret: {secretName: web-secret}}
        - {name: both, projected: {sources: [{configMap: {name: web-config}}, {secret: {name: shared}}]}}
        - {name: scratch, emptyDir: {}}
      containers:
        - name: app
          image: web
          envFrom: [{configMapRef: {name: web-config}}, {secretRef: {name: shared}}]
          env:
            - {name: A, valueFrom: {configMapKeyRef: {name: web-config, key: a}}}
            - {name: B, valueFrom: {secretKeyRef: {name: web-secret, key: b}}}
            - {name: C, value: plain}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {a: "1"}
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret}
stringData: {b: "2"}
---
apiVersion: v1
kind: Secret
metadata: {name: pull}
type: kubernetes.io/dockerconfigjson
stringData: {.dockerconfigjson: "{}"}
"#;
        let objs = parse_manifests(manifest, Path::new("a.yaml")).unwrap();
        let mut plan = prepare(&objs, None, "team", &BTreeMap::new(), &dev()).unwrap();
        personalize(&mut plan, "bob");
        let names: Vec<String> = plan.objects.iter().map(|o| o.name_any()).collect();
        assert_eq!(
            names,
            ["web-bob", "web-config-bob", "web-secret-bob", "pull-bob"]
        );
        let pod = &plan.objects[0].data["spec"]["template"]["spec"];
        let v = &pod["volumes"];
        assert_eq!(v[0]["configMap"]["name"], "web-config-bob");
        assert_eq!(v[1]["secret"]["secretName"], "web-secret-bob");
        assert_eq!(
            v[2]["projected"]["sources"][0]["configMap"]["name"],
            "web-config-bob"
        );
        // Not in the manifests: shared, left alone.
        assert_eq!(v[2]["projected"]["sources"][1]["secret"]["name"], "shared");
        assert_eq!(pod["imagePullSecrets"][0]["name"], "pull-bob");
        assert_eq!(pod["imagePullSecrets"][1]["name"], "shared-pull");
        let c = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "app")
            .unwrap();
        assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "web-config-bob");
        assert_eq!(c["envFrom"][1]["secretRef"]["name"], "shared");
        assert_eq!(
            c["env"][0]["valueFrom"]["configMapKeyRef"]["name"],
            "web-config-bob"
        );
        assert_eq!(
            c["env"][1]["valueFrom"]["secretKeyRef"]["name"],
            "web-secret-bob"
        );
        // Nothing was added where there was nothing to rename.
        assert_eq!(v[3], serde_json::json!({"name": "scratch", "emptyDir": {}}));
        assert_eq!(
            c["env"][2],
            serde_json::json!({"name": "C", "value": "plain"})
        );
    }

    #[test]
    fn missing_or_ambiguous_workloads_are_explained() {
        let objs = parse_manifests(MANIFEST, Path::new("a.yaml")).unwrap();
        let w: WorkloadRef = "deployment/other".parse().unwrap();
        let err = find_workload(&objs, Some(&w)).unwrap_err().to_string();
        assert!(
            err.contains("deployment/other is not in the manifests")
                && err.contains("deployment/gin-hello"),
            "{err}"
        );
        let two = [objs[0].clone(), objs[0].clone()];
        let err = find_workload(&two, None).unwrap_err().to_string();
        assert!(err.contains("several workloads"), "{err}");
    }
}

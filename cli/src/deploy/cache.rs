//! Go's build cache, kept where it outlives the dev pod.
//!
//! A replaced pod (a node drain, `kubectl delete pod`, a manifest change) starts with a new
//! `/kdev` emptyDir; with the image's own GOCACHE its first build recompiles everything the image
//! did not ship compiled (a vendored project: all of `vendor/`). So each dev workload gets a
//! PersistentVolumeClaim, `kdev-cache-<workload>` (the workload's name is already the owner's:
//! `kdev-cache-gin-hello-alice`), labelled like kdev's other per-owner objects plus
//! [`BUILD_CACHE`]. It is mounted at `/kdev/cache` in the sidecar only, and the sidecar's
//! `KDEV_PERSISTENT_CACHE` tells `kdev-controller serve` to build with it (GOCACHE there, seeded
//! once from the image's: see the controller's `serve/build/cache.rs`). One claim per workload
//! rather than per project: a ReadWriteOnce volume attaches to one node, and two services' pods
//! may be scheduled on two.
//!
//! Without one — the cluster has no default StorageClass, the developer may not create claims,
//! `cache.persistent: false` — builds use the image's caches, as before, and kdev says so in one
//! line. The alternatives were worse: a hostPath volume needs privileges (and PodSecurity
//! `baseline` forbids it) and ties the pod to a node; an emptyDir dies with the pod; copying the
//! old pod's cache to the new one needs the old pod alive (not after a node failure), and
//! re-uploading a cache from the laptop moves as many bytes as the build it saves compiles.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use kdev_protocol::labels::{
    BUILD_CACHE, MANAGED_BY as LABEL_MANAGED_BY, MANAGED_BY_KDEV, OWNER as LABEL_OWNER,
    PROJECT as LABEL_PROJECT,
};
use kdev_protocol::layout::{CACHE_DIR, PERSISTENT_CACHE_ENV};

use super::error::{DeployError, api_message};
use super::plan::DeployPlan;
use super::rewrite::{CACHE_VOLUME as VOLUME, SIDECAR_NAME};
use crate::cluster::access;
use crate::config::CacheConfig;
use crate::error::UsageError;

/// The value of the [`BUILD_CACHE`] label.
const BUILD_CACHE_GO: &str = "go";
/// How long a claim that is still being deleted (a `kdev down` a moment ago) is waited for.
const DELETING_WAIT: Duration = Duration::from_secs(60);

/// The claim that holds `workload`'s build cache (`workload` as applied: the owner's copy).
fn claim_name(workload: &str) -> String {
    format!("kdev-cache-{workload}")
}

/// Where the dev pods' build caches are.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheChoice {
    /// On these claims, one per dev workload in the plan's order.
    Claims {
        names: Vec<String>,
        storage_class: String,
        size: String,
    },
    /// The sidecar image's own caches, which start over in each new pod.
    Image { why: String, warn: bool },
}

impl CacheChoice {
    /// The one line `kdev watch` says at start.
    pub fn describe(&self) -> String {
        match self {
            CacheChoice::Claims {
                names,
                storage_class,
                size,
            } => format!(
                "build cache: PersistentVolumeClaim{} {} (StorageClass {storage_class}, {size}{}), \
                 kept when the pod is replaced",
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                if names.len() == 1 { "" } else { " each" },
            ),
            CacheChoice::Image { why, .. } => format!(
                "build cache: the sidecar image's, which starts over in each new pod ({why})"
            ),
        }
    }
}

/// The labels of a cache claim.
fn claim_labels(
    project_labels: &BTreeMap<String, String>,
    owner: &str,
) -> BTreeMap<String, String> {
    let mut labels = project_labels.clone();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_KDEV.into());
    labels.insert(LABEL_OWNER.into(), owner.into());
    labels.insert(BUILD_CACHE.into(), BUILD_CACHE_GO.into());
    labels
}

/// Whether a live claim is this owner's cache claim of this project.
fn is_ours(pvc: &PersistentVolumeClaim, project: &str, owner: &str) -> bool {
    let l = pvc.labels();
    l.get(LABEL_MANAGED_BY)
        .is_some_and(|v| v == MANAGED_BY_KDEV)
        && l.get(LABEL_OWNER).is_some_and(|v| v == owner)
        && l.get(LABEL_PROJECT).is_some_and(|v| v == project)
        && l.get(BUILD_CACHE).is_some()
}

/// Decide where the build caches of `plan`'s dev workloads are, creating their claims when
/// they can be had, and add the volume to the workloads. Only errors talking to the API server
/// (and a `cache.storageClass` the cluster does not have) fail; anything else falls back to the
/// image's caches, said in [`CacheChoice::describe`].
pub async fn prepare(
    client: &Client,
    ns: &str,
    plan: &mut DeployPlan,
    project_labels: &BTreeMap<String, String>,
    owner: &str,
    cfg: &CacheConfig,
) -> anyhow::Result<CacheChoice> {
    let choice = choose(client, ns, plan, project_labels, owner, cfg).await?;
    if let CacheChoice::Claims { names, .. } = &choice {
        for (w, claim) in plan.workloads.iter().zip(names) {
            add_to_workload(&mut plan.objects[w.index].data, claim);
        }
    }
    Ok(choice)
}

async fn choose(
    client: &Client,
    ns: &str,
    plan: &DeployPlan,
    project_labels: &BTreeMap<String, String>,
    owner: &str,
    cfg: &CacheConfig,
) -> anyhow::Result<CacheChoice> {
    let image = |why: String, warn: bool| Ok(CacheChoice::Image { why, warn });
    if !cfg.persistent {
        return image("`cache.persistent: false` in kdev.yaml".into(), false);
    }
    let missing = access::missing(client, ns, &access::needed_for_cache()).await?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
        return image(
            format!(
                "missing permission in namespace {ns}: {}; manifests/rbac/role.yaml grants it",
                list.join(", ")
            ),
            true,
        );
    }
    if let Some(class) = &cfg.storage_class {
        // Without permission to read StorageClasses (cluster-wide), trust kdev.yaml.
        let classes: Api<StorageClass> = Api::all(client.clone());
        if let Ok(None) = classes.get_opt(class).await {
            return Err(UsageError(format!(
                "kdev.yaml: cache.storageClass: the cluster has no StorageClass `{class}`"
            ))
            .into());
        }
    }
    let project = project_labels
        .get(LABEL_PROJECT)
        .cloned()
        .unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let labels = claim_labels(project_labels, owner);
    let mut names = Vec::new();
    let (mut class, mut size) = (String::new(), String::new());
    for w in &plan.workloads {
        let name = claim_name(&w.workload.name);
        match ensure_claim(&claims, &name, &labels, &project, owner, cfg).await? {
            Ok((c, _)) if c.is_empty() => {
                return image("the cluster has no default StorageClass".into(), false);
            }
            Ok(c) => (class, size) = c,
            Err(why) => return image(why, true),
        }
        names.push(name);
    }
    Ok(CacheChoice::Claims {
        names,
        storage_class: class,
        size,
    })
}

/// The claim `name`, created if missing: its StorageClass (`""` when the cluster has no default
/// one: the claim is then deleted again) and size, or why it cannot be used. An existing claim
/// is used as it is (`cache.size` applies when it is created).
async fn ensure_claim(
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
    labels: &BTreeMap<String, String>,
    project: &str,
    owner: &str,
    cfg: &CacheConfig,
) -> Result<Result<(String, String), String>, DeployError> {
    let deadline = tokio::time::Instant::now() + DELETING_WAIT;
    loop {
        match claims.get_opt(name).await? {
            Some(pvc) if pvc.metadata.deletion_timestamp.is_some() => {
                // Its old pod still uses it (`kdev down` just ran): a new pod would not start
                // on a claim being deleted.
                if tokio::time::Instant::now() > deadline {
                    return Ok(Err(format!(
                        "the PersistentVolumeClaim {name} is still being deleted"
                    )));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Some(pvc) if !is_ours(&pvc, project, owner) => {
                return Ok(Err(format!(
                    "a PersistentVolumeClaim {name} exists that kdev did not create for you"
                )));
            }
            Some(pvc) => {
                return Ok(Ok(class_and_size(&pvc)));
            }
            None => {
                let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "labels": labels},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": cfg.size}},
                        "storageClassName": cfg.storage_class,
                    }
                }))
                .map_err(|e| DeployError::Pod(e.to_string()))?;
                let created = match claims.create(&PostParams::default(), &pvc).await {
                    Ok(c) => c,
                    // Made meanwhile: look again.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    // Refused (a quota, a policy): build without it.
                    Err(e @ kube::Error::Api(_)) => {
                        return Ok(Err(format!(
                            "creating the PersistentVolumeClaim {name} failed: {}",
                            api_message(&e)
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
                let (class, size) = class_and_size(&created);
                if class.is_empty() {
                    // No default StorageClass gave it one: it would wait for a volume forever.
                    claims.delete(name, &DeleteParams::background()).await?;
                }
                return Ok(Ok((class, size)));
            }
        }
    }
}

/// A claim's StorageClass (`""` if none) and requested size.
fn class_and_size(pvc: &PersistentVolumeClaim) -> (String, String) {
    let spec = pvc.spec.as_ref();
    let class = spec.and_then(|s| s.storage_class_name.clone());
    let size = spec
        .and_then(|s| {
            s.resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("storage")
                .cloned()
        })
        .map(|q| q.0)
        .unwrap_or_default();
    (class.unwrap_or_default(), size)
}

/// Mount the claim at `/kdev/cache` in the sidecar and tell the controller (its environment).
pub fn add_to_workload(workload: &mut Value, claim: &str) {
    let Some(pod) = workload.pointer_mut("/spec/template/spec") else {
        return;
    };
    push(
        pod,
        "volumes",
        json!({"name": VOLUME, "persistentVolumeClaim": {"claimName": claim}}),
    );
    let Some(sidecar) = pod
        .get_mut("initContainers")
        .and_then(Value::as_array_mut)
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == SIDECAR_NAME))
    else {
        return;
    };
    push(
        sidecar,
        "volumeMounts",
        json!({"name": VOLUME, "mountPath": CACHE_DIR}),
    );
    push(
        sidecar,
        "env",
        json!({"name": PERSISTENT_CACHE_ENV, "value": CACHE_DIR}),
    );
}

fn push(obj: &mut Value, key: &str, item: Value) {
    match obj.get_mut(key).and_then(Value::as_array_mut) {
        Some(a) => a.push(item),
        None => obj[key] = json!([item]),
    }
}

/// For a dev pod that does not start: its cache claim, if it is not bound yet, and what to do.
pub async fn pending_claim(client: &Client, ns: &str, pod: &Pod) -> Option<String> {
    let claim = pod
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == VOLUME)?
        .persistent_volume_claim
        .as_ref()?
        .claim_name
        .clone();
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(&claim)
        .await
        .ok()??;
    let phase = pvc.status.and_then(|s| s.phase).unwrap_or_default();
    (phase != "Bound").then(|| {
        format!(
            "the build cache's PersistentVolumeClaim {claim} is {} (no volume yet); \
             `cache: {{persistent: false}}` in kdev.yaml builds without it",
            if phase.is_empty() { "unbound" } else { &phase }
        )
    })
}

/// `kdev down`: delete the cache claims of `workloads` (names as applied) that are this owner's
/// of this project. Returns the deleted names.
pub async fn delete_claims(
    client: &Client,
    ns: &str,
    workloads: &[String],
    project: &str,
    owner: &str,
) -> Result<Vec<String>, kube::Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let mut deleted = Vec::new();
    for w in workloads {
        let name = claim_name(w);
        if let Some(pvc) = claims.get_opt(&name).await?
            && is_ours(&pvc, project, owner)
            && pvc.metadata.deletion_timestamp.is_none()
        {
            claims.delete(&name, &DeleteParams::background()).await?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_is_mounted_in_the_sidecar_only() {
        let mut d = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "app", "volumeMounts": [{"name": "kdev", "mountPath": "/kdev"}]}],
            "initContainers": [{"name": "kdev", "env": [{"name": "CGO_ENABLED", "value": "0"}],
                                "volumeMounts": [{"name": "kdev", "mountPath": "/kdev"}]}],
            "volumes": [{"name": "kdev", "emptyDir": {}}]
        }}}});
        add_to_workload(&mut d, "kdev-cache-gin-hello-alice");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][1],
            json!({"name": "kdev-cache", "persistentVolumeClaim": {"claimName": "kdev-cache-gin-hello-alice"}})
        );
        let sidecar = &pod["initContainers"][0];
        assert_eq!(
            sidecar["volumeMounts"][1],
            json!({"name": "kdev-cache", "mountPath": "/kdev/cache"})
        );
        assert_eq!(
            sidecar["env"][1],
            json!({"name": "KDEV_PERSISTENT_CACHE", "value": "/kdev/cache"})
        );
        assert_eq!(
            pod["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn the_start_line_says_where_the_cache_is() {
        let one = CacheChoice::Claims {
            names: vec![claim_name("gin-hello-alice")],
            storage_class: "standard".into(),
            size: "5Gi".into(),
        };
        assert_eq!(
            one.describe(),
            "build cache: PersistentVolumeClaim kdev-cache-gin-hello-alice (StorageClass \
             standard, 5Gi), kept when the pod is replaced"
        );
        let image = CacheChoice::Image {
            why: "the cluster has no default StorageClass".into(),
            warn: false,
        };
        assert_eq!(
            image.describe(),
            "build cache: the sidecar image's, which starts over in each new pod (the cluster \
             has no default StorageClass)"
        );
    }

    #[test]
    fn only_this_owners_cache_claims_of_this_project_are_ours() {
        let labels = claim_labels(
            &BTreeMap::from([(LABEL_PROJECT.to_string(), "gin-hello".to_string())]),
            "alice",
        );
        let pvc = |labels: BTreeMap<String, String>| PersistentVolumeClaim {
            metadata: kube::api::ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(is_ours(&pvc(labels.clone()), "gin-hello", "alice"));
        assert!(!is_ours(&pvc(labels.clone()), "gin-hello", "bob"));
        let mut manifest_claim = labels;
        manifest_claim.remove(BUILD_CACHE);
        assert!(
            !is_ours(&pvc(manifest_claim), "gin-hello", "alice"),
            "a claim of the project's manifests is not the build cache"
        );
    }
}

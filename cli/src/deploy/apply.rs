//! Applying: find each object's API resource (discovery), then server-side apply as kdev.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};

use super::error::DeployError;
use super::plan::DeployPlan;

/// Field manager for server-side apply.
const FIELD_MANAGER: &str = "kdev";

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

/// Apply every object with server-side apply (field manager `kdev`): first everything but the
/// dev workloads, in manifest order, then the dev workloads with `hostAliases` to the
/// developer's copies of the dev services ([`super::aliases`]), whose ClusterIPs are known by
/// then. `discovered` is [`discover`]'s answer for `plan.objects`.
pub async fn apply(
    plan: &DeployPlan,
    discovered: &[Discovered],
    namespace: &str,
) -> Result<(), DeployError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let is_dev = |i: usize| plan.workloads.iter().any(|w| w.index == i);
    let mut cluster_ips = BTreeMap::new();
    for (i, (obj, d)) in plan.objects.iter().zip(discovered).enumerate() {
        if is_dev(i) {
            continue;
        }
        let applied = patch(d, obj, &params).await?;
        if d.resource.kind == "Service"
            && let Some(ip) = applied.data["spec"]["clusterIP"].as_str()
            && ip != "None"
            && !ip.is_empty()
        {
            cluster_ips.insert(applied.name_any(), ip.to_string());
        }
    }
    let aliases = super::aliases::host_aliases(plan, &cluster_ips, namespace);
    for w in &plan.workloads {
        let mut obj = plan.objects[w.index].clone();
        super::aliases::add_to_workload(&mut obj.data, &aliases);
        patch(&discovered[w.index], &obj, &params).await?;
    }
    Ok(())
}

async fn patch(
    d: &Discovered,
    obj: &DynamicObject,
    params: &PatchParams,
) -> Result<DynamicObject, DeployError> {
    d.api
        .patch(&obj.name_any(), params, &Patch::Apply(obj))
        .await
        .map_err(|source| DeployError::Apply {
            kind: d.resource.kind.clone(),
            name: obj.name_any(),
            source,
        })
}

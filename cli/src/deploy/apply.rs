//! Applying: find each object's API resource (discovery), then server-side apply as kdev.

use std::path::PathBuf;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};

use super::{DeployError, DeployPlan, FIELD_MANAGER};

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

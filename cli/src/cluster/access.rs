//! Check up front that the user may do what kdev is about to do, so a missing permission is
//! named before anything is applied, instead of failing halfway through a session.

use crate::error::MissingPermissions;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// One permission: `verb` on `group/resource[/subresource]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub group: String,
    pub resource: String,
    pub subresource: Option<&'static str>,
    pub verb: &'static str,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        match self.subresource {
            Some(sub) => write!(f, "{} {}{group}/{sub}", self.verb, self.resource),
            None => write!(f, "{} {}{group}", self.verb, self.resource),
        }
    }
}

fn perm(
    group: &str,
    resource: &str,
    subresource: Option<&'static str>,
    verb: &'static str,
) -> Permission {
    Permission {
        group: group.to_string(),
        resource: resource.to_string(),
        subresource,
        verb,
    }
}

/// What `kdev watch`/`kdev debug` need, given the kinds (`group`, plural resource) they apply.
pub fn needed_for_watch(applied: &[(String, String)]) -> Vec<Permission> {
    let mut p = vec![
        perm("", "pods", None, "get"),
        perm("", "pods", None, "list"),
        perm("", "pods", None, "watch"),
        perm("", "pods", Some("exec"), "get"),
        perm("", "pods", Some("exec"), "create"),
        perm("", "pods", Some("portforward"), "get"),
        perm("", "pods", Some("portforward"), "create"),
        perm("", "events", None, "list"),
        perm("coordination.k8s.io", "leases", None, "get"),
        perm("coordination.k8s.io", "leases", None, "create"),
        perm("coordination.k8s.io", "leases", None, "update"),
        perm("coordination.k8s.io", "leases", None, "delete"),
    ];
    // Server-side apply is a patch, and a create when the object does not exist yet.
    for (group, resource) in applied {
        p.push(perm(group, resource, None, "create"));
        p.push(perm(group, resource, None, "patch"));
    }
    p
}

/// What a build cache that outlives the pod needs (`kdev watch`: find or create its
/// PersistentVolumeClaim, delete it again when the cluster has no default StorageClass).
/// Optional: without it kdev builds with the image's caches, and says why.
pub fn needed_for_cache() -> Vec<Permission> {
    ["get", "create", "delete"]
        .map(|verb| perm("", "persistentvolumeclaims", None, verb))
        .to_vec()
}

/// What `kdev down` needs to remove the build cache's claims. Optional, as for `watch`.
pub fn needed_for_down_cache() -> Vec<Permission> {
    ["get", "delete"]
        .map(|verb| perm("", "persistentvolumeclaims", None, verb))
        .to_vec()
}

/// What `kdev gc` needs to remove abandoned sessions' build cache claims. Optional, as for
/// Secrets.
pub fn needed_for_gc_cache() -> Vec<Permission> {
    ["list", "delete"]
        .map(|verb| perm("", "persistentvolumeclaims", None, verb))
        .to_vec()
}

/// What `kdev sessions` needs.
pub fn needed_for_sessions() -> Vec<Permission> {
    vec![
        perm("coordination.k8s.io", "leases", None, "list"),
        perm("", "pods", None, "list"),
    ]
}

/// What `kdev gc` needs.
pub fn needed_for_gc() -> Vec<Permission> {
    let mut p = needed_for_sessions();
    p.push(perm("coordination.k8s.io", "leases", None, "delete"));
    for (group, resource) in [
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("", "services"),
        ("", "configmaps"),
    ] {
        p.push(perm(group, resource, None, "list"));
        p.push(perm(group, resource, None, "delete"));
    }
    p
}

/// What `kdev gc` needs to remove abandoned sessions' Secrets too. Optional: the Role grants
/// nothing on Secrets (a team whose manifests hold Secrets adds rules for them).
pub fn needed_for_gc_secrets() -> Vec<Permission> {
    ["list", "delete"]
        .map(|verb| perm("", "secrets", None, verb))
        .to_vec()
}

/// What `kdev down` needs for the kinds it removes.
pub fn needed_for_down(applied: &[(String, String)]) -> Vec<Permission> {
    applied
        .iter()
        .flat_map(|(group, resource)| {
            ["get", "delete"].map(|verb| perm(group, resource, None, verb))
        })
        .collect()
}

/// Ask the API server (SelfSubjectAccessReview) about each permission in `namespace`; fail naming
/// every one that is missing.
pub async fn require(
    client: &Client,
    namespace: &str,
    needed: &[Permission],
) -> anyhow::Result<()> {
    let missing: Vec<String> = missing(client, namespace, needed)
        .await?
        .iter()
        .map(|p| p.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingPermissions {
            namespace: namespace.to_string(),
            missing,
        }
        .into())
    }
}

/// The permissions of `needed` the user does not have in `namespace`.
pub async fn missing(
    client: &Client,
    namespace: &str,
    needed: &[Permission],
) -> anyhow::Result<Vec<Permission>> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for p in needed {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    group: Some(p.group.clone()),
                    resource: Some(p.resource.clone()),
                    subresource: p.subresource.map(String::from),
                    verb: Some(p.verb.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.map(|s| s.allowed).unwrap_or(false) {
            missing.push(p.clone());
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_kubectl_auth_can_i() {
        let applied = vec![
            ("apps".to_string(), "deployments".to_string()),
            ("".to_string(), "services".to_string()),
        ];
        let w: Vec<String> = needed_for_watch(&applied)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(w.contains(&"create pods/exec".to_string()), "{w:?}");
        assert!(w.contains(&"patch deployments.apps".to_string()), "{w:?}");
        assert!(w.contains(&"patch services".to_string()), "{w:?}");
        let d: Vec<String> = needed_for_down(&applied)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            d,
            vec![
                "get deployments.apps",
                "delete deployments.apps",
                "get services",
                "delete services"
            ]
        );
    }
}

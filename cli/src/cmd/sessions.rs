//! `kdev sessions` and `kdev gc`: the dev sessions of a namespace, from their Leases.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use kdev_protocol::labels::{
    BUILD_CACHE, CONNECTION_ANNOTATION, MANAGED_BY as LABEL_MANAGED_BY, OWNER as LABEL_OWNER,
    PROJECT as LABEL_PROJECT, SERVICE_ANNOTATION, WORKLOAD_ANNOTATION,
};

use crate::cluster::access;
use crate::cluster::connect::connect;
use crate::cluster::lease::LEASE_SECONDS;
use crate::cluster::selector::label_selector;
use crate::ui::Ui;

/// One dev session, as its Lease and pod describe it.
#[derive(Debug, Clone)]
pub struct Session {
    pub lease: String,
    pub owner: String,
    pub project: String,
    /// The kdev.yaml service (empty for sessions of older kdevs).
    pub service: String,
    pub workload: String,
    pub holder: String,
    pub acquired: Option<Timestamp>,
    pub renewed: Option<Timestamp>,
    pub duration_s: i64,
    pub pod: Option<String>,
    /// What its kdev last wrote: `connected` or `connecting` (empty from older kdevs).
    pub connection: String,
}

impl Session {
    /// Seconds since the Lease expired (negative while it is live).
    fn expired_for(&self, now: Timestamp) -> i64 {
        let last = self
            .renewed
            .or(self.acquired)
            .map(|t| t.as_second())
            .unwrap_or(0);
        now.as_second() - (last + self.duration_s)
    }
}

fn selector(owner: &str, project: &str) -> String {
    format!("{LABEL_MANAGED_BY}=kdev,{LABEL_OWNER}={owner},{LABEL_PROJECT}={project}")
}

/// Every kdev session in the namespace.
pub async fn list(client: &Client, ns: &str) -> Result<Vec<Session>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for l in leases
        .list(&ListParams::default().labels(&format!("{LABEL_MANAGED_BY}=kdev")))
        .await?
        .items
    {
        let labels = l.labels().clone();
        let owner = labels.get(LABEL_OWNER).cloned().unwrap_or_default();
        let project = labels.get(LABEL_PROJECT).cloned().unwrap_or_default();
        let annotation = |key: &str| l.annotations().get(key).cloned().unwrap_or_default();
        let workload = annotation(WORKLOAD_ANNOTATION);
        let pod = workload_pod(client, ns, &workload).await;
        let spec = l.spec.clone().unwrap_or_default();
        out.push(Session {
            lease: l.name_any(),
            service: annotation(SERVICE_ANNOTATION),
            workload,
            owner,
            project,
            holder: spec.holder_identity.unwrap_or_default(),
            acquired: spec.acquire_time.map(|t| t.0),
            renewed: spec.renew_time.map(|t| t.0),
            duration_s: spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS) as i64,
            pod,
            connection: annotation(CONNECTION_ANNOTATION),
        });
    }
    out.sort_by(|a, b| {
        (&a.owner, &a.service, &a.workload).cmp(&(&b.owner, &b.service, &b.workload))
    });
    Ok(out)
}

/// The live pod of a workload (`Deployment` name or `kind/name`), by the workload's selector.
async fn workload_pod(client: &Client, ns: &str, workload: &str) -> Option<String> {
    let (kind, name) = workload.split_once('/').unwrap_or(("deployment", workload));
    let selector = match kind {
        "statefulset" => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .ok()??
                .spec?
                .selector
                .match_labels?
        }
        _ => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .ok()??
                .spec?
                .selector
                .match_labels?
        }
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&label_selector(&selector)))
        .await
        .ok()?
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
}

fn ago(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let s = (now.as_second() - t.as_second()).max(0);
            if s < 120 {
                format!("{s}s")
            } else if s < 7200 {
                format!("{}m", s / 60)
            } else {
                format!("{}h", s / 3600)
            }
        }
    }
}

/// `kdev sessions`: print the table of the namespace's sessions.
pub async fn print(context: Option<&str>, namespace: Option<&str>) -> Result<()> {
    let conn = connect(context, namespace).await?;
    print_sessions(&conn.client, &conn.namespace).await
}

/// `kdev gc`: remove the sessions whose Lease expired more than `older_than` ago.
pub async fn gc(
    context: Option<&str>,
    namespace: Option<&str>,
    older_than: Duration,
) -> Result<()> {
    let conn = connect(context, namespace).await?;
    gc_sessions(&conn.client, &conn.namespace, older_than, &Ui::detect())
        .await
        .map(|_| ())
}

async fn print_sessions(client: &Client, ns: &str) -> Result<()> {
    access::require(client, ns, &access::needed_for_sessions()).await?;
    let now = Timestamp::now();
    let sessions = list(client, ns).await?;
    if sessions.is_empty() {
        println!("no kdev sessions in namespace {ns}");
        return Ok(());
    }
    println!(
        "{:<16} {:<14} {:<28} {:<36} {:>6} {:>8}  STATE",
        "OWNER", "SERVICE", "WORKLOAD", "POD", "AGE", "RENEWED"
    );
    for s in sessions {
        let state = if s.expired_for(now) > 0 {
            format!("expired {}s ago", s.expired_for(now))
        } else if s.connection.is_empty() {
            format!("live ({})", s.holder)
        } else {
            format!("live, {} ({})", s.connection, s.holder)
        };
        println!(
            "{:<16} {:<14} {:<28} {:<36} {:>6} {:>8}  {state}",
            s.owner,
            if s.service.is_empty() {
                "-"
            } else {
                &s.service
            },
            s.workload,
            s.pod.as_deref().unwrap_or("-"),
            ago(now, s.acquired),
            ago(now, s.renewed),
        );
    }
    Ok(())
}

/// Delete every `K` in `ns` that `lp` selects.
async fn delete_all<K>(client: &Client, ns: &str, lp: &ListParams) -> Result<()>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    for o in api.list(lp).await?.items {
        api.delete(&o.name_any(), &DeleteParams::background())
            .await?;
    }
    Ok(())
}

/// `kdev gc`: remove the workloads, Services, ConfigMaps, Secrets and build cache claims (those
/// two when the caller may) and Lease of every session whose Lease expired more than `older_than` ago; live sessions and
/// everything else are left alone.
async fn gc_sessions(client: &Client, ns: &str, older_than: Duration, ui: &Ui) -> Result<usize> {
    access::require(client, ns, &access::needed_for_gc()).await?;
    let may_delete_secrets = access::missing(client, ns, &access::needed_for_gc_secrets())
        .await?
        .is_empty();
    let may_delete_caches = access::missing(client, ns, &access::needed_for_gc_cache())
        .await?
        .is_empty();
    let now = Timestamp::now();
    let mut removed = 0;
    for s in list(client, ns).await? {
        if s.expired_for(now) <= older_than.as_secs() as i64 {
            continue;
        }
        let lp = ListParams::default().labels(&selector(&s.owner, &s.project));
        delete_all::<Deployment>(client, ns, &lp).await?;
        delete_all::<StatefulSet>(client, ns, &lp).await?;
        delete_all::<Service>(client, ns, &lp).await?;
        delete_all::<ConfigMap>(client, ns, &lp).await?;
        if may_delete_secrets {
            delete_all::<Secret>(client, ns, &lp).await?;
        }
        if may_delete_caches {
            // Only the build caches: a claim of the project's manifests may hold shared data.
            let caches = ListParams::default()
                .labels(&format!("{},{BUILD_CACHE}", selector(&s.owner, &s.project)));
            delete_all::<PersistentVolumeClaim>(client, ns, &caches).await?;
        }
        Api::<Lease>::namespaced(client.clone(), ns)
            .delete(&s.lease, &DeleteParams::background())
            .await?;
        ui.ok(&format!(
            "removed {}'s session of {} (lease expired {}s ago)",
            s.owner,
            s.workload,
            s.expired_for(now)
        ));
        removed += 1;
    }
    if removed == 0 {
        ui.step(&format!(
            "no session in {ns} expired more than {}s ago",
            older_than.as_secs()
        ));
    }
    Ok(removed)
}

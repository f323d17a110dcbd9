//! The session lock: a `coordination.k8s.io` Lease per owner and workload, renewed while
//! `kdev watch` runs, so a second kdev for the same developer's workload does not sync into the
//! same pod. A crashed session's Lease simply expires.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};

use crate::deploy::{LABEL_OWNER, LABEL_PROJECT};
use crate::rewrite::LABEL_MANAGED_BY;

/// How long a Lease lives without renewal.
pub const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A held session Lease; renewed in the background until released or dropped.
pub struct SessionLease {
    api: Api<Lease>,
    name: String,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
}

/// This process's identity as a Lease holder: `owner@host/pid`.
pub fn holder_identity(owner: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{owner}@{host}/{}", std::process::id())
}

/// The Lease's name for a (personalized) workload name.
pub fn lease_name(workload: &str) -> String {
    let mut n = format!("kdev-{workload}");
    n.truncate(63);
    n.trim_end_matches('-').to_string()
}

fn expired(l: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &l.spec else { return true };
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS) as i64;
    renew.0.as_second() + secs < now.as_second()
}

/// Take the session Lease for `workload`, or fail naming who holds it and since when.
pub async fn acquire(
    client: &Client,
    namespace: &str,
    owner: &str,
    project: &str,
    workload: &str,
    take_over: bool,
) -> anyhow::Result<SessionLease> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let name = lease_name(workload);
    let holder = holder_identity(owner);
    let now = Timestamp::now();
    let mut lease: Lease = serde_json::from_value(serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "labels": { LABEL_MANAGED_BY: "kdev", LABEL_OWNER: owner, LABEL_PROJECT: project },
            "annotations": { "kdev.dev/workload": workload }
        },
        "spec": { "holderIdentity": holder, "leaseDurationSeconds": LEASE_SECONDS }
    }))?;
    if let Some(spec) = lease.spec.as_mut() {
        spec.acquire_time = Some(MicroTime(now));
        spec.renew_time = Some(MicroTime(now));
    }
    match api.get_opt(&name).await? {
        None => {
            api.create(&PostParams::default(), &lease).await?;
        }
        Some(current) => {
            let spec = current.spec.clone().unwrap_or_default();
            let other = spec.holder_identity.clone().unwrap_or_default();
            if !expired(&current, now) && !take_over {
                let since = spec
                    .acquire_time
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(|| "?".into());
                let ago = spec
                    .renew_time
                    .map(|t| now.as_second() - t.0.as_second())
                    .unwrap_or(0);
                anyhow::bail!(
                    "{workload} is already being developed by {other} (session since {since}, renewed \
                     {ago}s ago). Stop that kdev first, wait {LEASE_SECONDS}s after it crashed, or \
                     pass --take-over"
                );
            }
            lease.metadata.resource_version = current.resource_version();
            api.replace(&name, &PostParams::default(), &lease).await?;
        }
    }
    let renewer = tokio::spawn(renew_loop(api.clone(), name.clone(), holder.clone()));
    Ok(SessionLease {
        api,
        name,
        holder,
        renewer,
    })
}

async fn renew_loop(api: Api<Lease>, name: String, holder: String) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let Ok(Some(mut lease)) = api.get_opt(&name).await else {
            continue;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(holder.as_str()) {
            eprintln!(
                "kdev: warning: the session lease was taken over by {}; this kdev no longer holds it",
                spec.holder_identity.clone().unwrap_or_default()
            );
            return;
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let _ = api.replace(&name, &PostParams::default(), &lease).await;
    }
}

impl SessionLease {
    /// Stop renewing and delete the Lease if this session still holds it.
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(Some(l)) = self.api.get_opt(&self.name).await
            && l.spec.and_then(|s| s.holder_identity).as_deref() == Some(self.holder.as_str())
        {
            let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
        }
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_expiry() {
        assert_eq!(lease_name("gin-hello-alice"), "kdev-gin-hello-alice");
        assert!(holder_identity("alice").starts_with("alice@"));
        let now = Timestamp::now();
        let mut l = Lease::default();
        assert!(expired(&l, now));
        l.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(15),
            ..Default::default()
        });
        assert!(!expired(&l, now));
        let later = Timestamp::from_second(now.as_second() + 16).unwrap();
        assert!(expired(&l, later));
    }
}

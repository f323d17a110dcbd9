//! The session lock: a `coordination.k8s.io` Lease per owner and workload, renewed while
//! `kdev watch` runs, so a second kdev for the same developer's workload does not sync into the
//! same pod. A crashed session's Lease simply expires.

use std::time::Duration;

use crate::error::SessionLost;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};

use kdev_protocol::labels::{
    MANAGED_BY as LABEL_MANAGED_BY, MANAGED_BY_KDEV, OWNER as LABEL_OWNER,
    PROJECT as LABEL_PROJECT, SERVICE_ANNOTATION, WORKLOAD_ANNOTATION,
};

/// How long a Lease lives without renewal.
pub const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// One renewal's requests must answer within this: a connection a NAT forgot would otherwise
/// hold the renewal (and let the Lease expire) for minutes. A timed-out request's connection is
/// dropped, so the next attempt dials or takes another.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// A held session Lease; renewed in the background until released or dropped.
pub struct SessionLease {
    api: Api<Lease>,
    name: String,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
    /// Set by the renewer when the Lease is no longer ours: why.
    lost: tokio::sync::watch::Receiver<Option<String>>,
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
    service: &str,
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
            "labels": { LABEL_MANAGED_BY: MANAGED_BY_KDEV, LABEL_OWNER: owner, LABEL_PROJECT: project },
            "annotations": { WORKLOAD_ANNOTATION: workload, SERVICE_ANNOTATION: service }
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
                return Err(SessionLost(format!(
                    "{workload} is already being developed by {other} (session since {since}, \
                     renewed {ago}s ago). Stop that kdev first, wait {LEASE_SECONDS}s after it \
                     crashed, or pass --take-over"
                ))
                .into());
            }
            lease.metadata.resource_version = current.resource_version();
            api.replace(&name, &PostParams::default(), &lease).await?;
        }
    }
    let (lost_tx, lost) = tokio::sync::watch::channel(None);
    let renewer = tokio::spawn(renew_loop(
        api.clone(),
        name.clone(),
        holder.clone(),
        lost_tx,
    ));
    Ok(SessionLease {
        api,
        name,
        holder,
        renewer,
        lost,
    })
}

/// What a renewal found.
#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    /// Still ours: renew it.
    Ours,
    /// Gone or someone else's: the session must stop, for this reason.
    Lost(String),
}

/// Decide from the Lease as read (None: it no longer exists).
fn check_renewal(name: &str, current: Option<&Lease>, holder: &str) -> Renewal {
    let Some(lease) = current else {
        return Renewal::Lost(format!(
            "the session Lease {name} was deleted (by `kdev down`, or `kdev gc`); stopping so \
             this kdev does not sync into a pod it no longer holds. Run `kdev watch` again to \
             start a new session"
        ));
    };
    let other = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    if other == holder {
        Renewal::Ours
    } else {
        Renewal::Lost(format!(
            "the session Lease {name} was taken over by {other}; stopping (this kdev no longer \
             holds the session)"
        ))
    }
}

async fn renew_loop(
    api: Api<Lease>,
    name: String,
    holder: String,
    lost: tokio::sync::watch::Sender<Option<String>>,
) {
    let mut last_renewed = tokio::time::Instant::now();
    let mut warned = false;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let read = tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(&name)).await;
        let current = match read {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::debug!("renewing the session lease: {e}");
                continue;
            }
            Err(_) => {
                if !warned && last_renewed.elapsed() > Duration::from_secs(LEASE_SECONDS as u64) {
                    crate::status::write_stderr(&format!(
                        "kdev: warning: the session Lease {name} could not be renewed for {}s (the \
                         API server does not answer); still trying\n",
                        last_renewed.elapsed().as_secs()
                    ));
                    warned = true;
                }
                continue;
            }
        };
        let mut lease = match check_renewal(&name, current.as_ref(), &holder) {
            Renewal::Lost(why) => {
                let _ = lost.send(Some(why));
                return;
            }
            Renewal::Ours => current.unwrap_or_default(),
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.replace(&name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(Ok(_)) => {
                last_renewed = tokio::time::Instant::now();
                warned = false;
            }
            Ok(Err(e)) => tracing::debug!("renewing the session lease: {e}"),
            Err(_) => tracing::debug!("renewing the session lease: timed out"),
        }
    }
}

impl SessionLease {
    /// Resolves (with the reason) once the Lease is no longer this session's: deleted by
    /// `kdev down`/`gc`, or taken over. Never resolves while it is held.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(|l| l.is_some()).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The renewer ended without saying why (aborted): keep waiting forever.
            Err(_) => std::future::pending().await,
        }
    }

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
    fn renewal_notices_a_deleted_or_taken_lease() {
        let l = Lease {
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some("alice@h/1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check_renewal("n", Some(&l), "alice@h/1"), Renewal::Ours);
        assert!(matches!(
            check_renewal("n", Some(&l), "alice@h/2"),
            Renewal::Lost(why) if why.contains("taken over by alice@h/1")
        ));
        assert!(matches!(
            check_renewal("n", None, "alice@h/1"),
            Renewal::Lost(why) if why.contains("deleted")
        ));
    }

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

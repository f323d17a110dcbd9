//! Waiting for the dev pod: the newest one whose sidecar runs, or a clear reason why none will.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::error::DeployError;
use super::rewrite;

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
    if let Some(claim) = super::cache::pending_claim(client, namespace, pod).await {
        parts.push(claim);
    }
    format!("pod {}: {}", pod.name_any(), parts.join("; "))
}

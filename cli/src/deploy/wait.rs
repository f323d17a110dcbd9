//! Waiting for the dev pod: the newest one whose sidecar runs, or a clear reason why none will.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
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

/// What the pods matching the dev pod's selector say, at one moment.
#[derive(Debug)]
enum DevPodState {
    /// The newest live pod's sidecar runs: the controller can be uploaded.
    Running(Pod),
    /// The newest live pod is stuck in a state waiting does not fix.
    Stuck(String),
    /// Not yet (the newest live pod so far, if any).
    Waiting(Option<Pod>),
}

/// Judge the pods a watch knows of: the newest live one (not being deleted, with kdev's
/// sidecar) decides.
fn dev_pod_state<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> DevPodState {
    let newest = pods
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
    let Some(pod) = newest else {
        return DevPodState::Waiting(None);
    };
    if let Some(reason) = fatal_reason(pod) {
        return DevPodState::Stuck(format!("pod {} cannot start: {reason}", pod.name_any()));
    }
    if sidecar_running(pod) {
        return DevPodState::Running(pod.clone());
    }
    DevPodState::Waiting(Some(pod.clone()))
}

/// Wait for the newest live pod matching `selector` whose kdev sidecar is running (the point at
/// which the controller can be uploaded). Fails early, with the reason, on states that waiting
/// does not fix, and after `timeout` with the pod's conditions and recent events.
///
/// A watch through kube's reflector, judged after every change. A watch on a connection that a
/// NAT forgot dies within the client's keepalive bound (`cluster::client`) and starts again
/// with a fresh list; so does any other transport error. The API server's refusals (a missing
/// permission, a namespace that does not exist) end the wait at once.
pub async fn wait_for_dev_pod(
    client: &Client,
    namespace: &str,
    selector: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Pod, DeployError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let label_selector = crate::cluster::selector::label_selector(selector);
    let (store, writer) = reflector::store();
    let events = reflector(
        writer,
        watcher(pods, watcher::Config::default().labels(&label_selector)),
    )
    .default_backoff();
    let mut events = std::pin::pin!(events);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Option<Pod> = None;
    while let Ok(event) = tokio::time::timeout_at(deadline, events.next()).await {
        match event {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if let Some(refused) = api_refusal(e) {
                    return Err(DeployError::Kube(refused));
                }
                continue;
            }
            // A backed-off watcher never ends; if it did, waiting longer would not help.
            None => break,
        }
        let state = store.state();
        match dev_pod_state(state.iter().map(|p| p.as_ref())) {
            DevPodState::Running(pod) => return Ok(pod),
            DevPodState::Stuck(reason) => return Err(DeployError::Pod(reason)),
            DevPodState::Waiting(pod) => last = pod.or(last),
        }
    }
    let detail = match &last {
        Some(p) => describe_pending(client, namespace, p).await,
        None => format!("no pod matches {label_selector}; is the workload's controller running?"),
    };
    Err(DeployError::Pod(format!(
        "the dev pod did not start within {timeout:?}: {detail}"
    )))
}

/// The API server's own refusal inside a watch error (4xx: a missing permission, no such
/// namespace), which no retry fixes; `None` for what a new watch may get past (transport
/// errors, 5xx, an expired resource version).
fn api_refusal(e: watcher::Error) -> Option<kube::Error> {
    let kube_error = match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => k,
        other => {
            tracing::debug!("watching pods: {other}; the watch starts again");
            return None;
        }
    };
    match &kube_error {
        kube::Error::Api(status) if (400..500).contains(&status.code) && status.code != 410 => {
            Some(kube_error)
        }
        other => {
            tracing::debug!("watching pods: {other}; the watch starts again");
            None
        }
    }
}

/// A pod kdev can connect to: not being deleted, its sidecar running. Its phase may still say
/// `Pending` (the sidecar starts before the app's container) while a kdev already works in it.
pub fn connectable(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && sidecar_running(pod)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod created at second `created`, with kdev's sidecar in the given state.
    fn pod(name: &str, created: i64, sidecar: serde_json::Value, deleting: bool) -> Pod {
        let mut meta = serde_json::json!({
            "name": name,
            "creationTimestamp": format!("2026-12-06T00:00:{created:02}Z"),
        });
        if deleting {
            meta["deletionTimestamp"] = "2026-12-06T00:01:00Z".into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": meta,
            "spec": {
                "initContainers": [{"name": rewrite::SIDECAR_NAME, "image": "kdev-toolchain"}],
                "containers": [{"name": "app", "image": "app"}],
            },
            "status": {"initContainerStatuses": [{
                "name": rewrite::SIDECAR_NAME, "image": "kdev-toolchain", "imageID": "",
                "ready": false, "restartCount": 0, "state": sidecar,
            }]},
        }))
        .expect("a Pod")
    }

    fn running() -> serde_json::Value {
        serde_json::json!({"running": {}})
    }

    fn waiting(reason: &str) -> serde_json::Value {
        serde_json::json!({"waiting": {"reason": reason, "message": "why"}})
    }

    #[test]
    fn the_newest_live_pod_decides() {
        let old = pod("old", 1, running(), false);
        let new = pod("new", 2, waiting("ContainerCreating"), false);
        match dev_pod_state([&old, &new]) {
            DevPodState::Waiting(Some(p)) => assert_eq!(p.name_any(), "new"),
            other => panic!("expected to wait for the new pod, got {other:?}"),
        }
        let new = pod("new", 2, running(), false);
        match dev_pod_state([&old, &new]) {
            DevPodState::Running(p) => assert_eq!(p.name_any(), "new"),
            other => panic!("expected the new pod, got {other:?}"),
        }
    }

    #[test]
    fn a_pod_being_deleted_or_without_the_sidecar_is_not_the_dev_pod() {
        let deleting = pod("going", 5, running(), true);
        let mut plain = pod("plain", 6, running(), false);
        plain.spec.as_mut().expect("spec").init_containers = None;
        assert!(matches!(
            dev_pod_state([&deleting, &plain]),
            DevPodState::Waiting(None)
        ));
        let live = pod("live", 1, running(), false);
        assert!(matches!(
            dev_pod_state([&deleting, &plain, &live]),
            DevPodState::Running(p) if p.name_any() == "live"
        ));
    }

    #[test]
    fn a_state_waiting_does_not_fix_ends_the_wait_with_its_reason() {
        let stuck = pod("stuck", 1, waiting("ErrImageNeverPull"), false);
        match dev_pod_state([&stuck]) {
            DevPodState::Stuck(reason) => {
                assert!(reason.contains("pod stuck cannot start"), "{reason}");
                assert!(reason.contains("ErrImageNeverPull: why"), "{reason}");
                assert!(reason.contains("sidecar.image"), "{reason}");
            }
            other => panic!("expected stuck, got {other:?}"),
        }
        // Pulling takes time: not stuck.
        let pulling = pod("pulling", 1, waiting("ContainerCreating"), false);
        assert!(matches!(
            dev_pod_state([&pulling]),
            DevPodState::Waiting(Some(_))
        ));
    }

    #[test]
    fn only_the_api_servers_refusals_end_a_watch() {
        let status = |code: u16| {
            kube::Error::Api(
                serde_json::from_value(serde_json::json!({
                    "status": "Failure", "message": "no", "reason": "x", "code": code
                }))
                .expect("a Status"),
            )
        };
        assert!(api_refusal(watcher::Error::InitialListFailed(status(403))).is_some());
        assert!(api_refusal(watcher::Error::WatchStartFailed(status(404))).is_some());
        // An expired resource version and server errors: a new watch gets past them.
        assert!(api_refusal(watcher::Error::WatchFailed(status(410))).is_none());
        assert!(api_refusal(watcher::Error::InitialListFailed(status(503))).is_none());
    }
}

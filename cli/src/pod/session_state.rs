//! Ask a workload's dev pods whether a kdev is connected to them (`kdev-controller
//! session-state`): what decides, when another kdev's Lease is live but not fresh, whether that
//! kdev is still there (see `cluster::lease`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::cluster::selector::label_selector;
use crate::deploy::connectable;
use crate::deploy::rewrite::{CONTROLLER_PATH, KDEV_DIR};
use crate::pod::bootstrap::exec_sh;

/// How long one pod may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a pod's controller said.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PodSession {
    /// A `serve` holds the session lock.
    pub held: bool,
    /// Milliseconds since that `serve` last heard its kdev.
    #[serde(default)]
    pub heard_ms_ago: Option<u64>,
}

/// Every dev pod of `selector` a kdev could be connected to (its sidecar runs) with its answer
/// (or why it could not answer). A pod without a controller yet has no session.
pub async fn ask_pods(
    client: &Client,
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> Result<Vec<(String, Result<PodSession, String>)>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let labels = label_selector(selector);
    let listed = pods.list(&ListParams::default().labels(&labels)).await?;
    let mut answers = Vec::new();
    for pod in listed.items.iter().filter(|p| connectable(p)) {
        let name = pod.name_any();
        let answer = match tokio::time::timeout(ASK_TIMEOUT, ask(&pods, &name)).await {
            Ok(a) => a,
            Err(_) => Err(format!("no answer within {}s", ASK_TIMEOUT.as_secs())),
        };
        answers.push((name, answer));
    }
    Ok(answers)
}

async fn ask(pods: &Api<Pod>, pod: &str) -> Result<PodSession, String> {
    // No controller in the pod: no kdev ever connected to it.
    let script = format!(
        "if [ -x {CONTROLLER_PATH} ]; then exec {CONTROLLER_PATH} session-state \
         --kdev-dir={KDEV_DIR}; else echo '{{\"held\":false}}'; fi"
    );
    let out = exec_sh(pods, pod, &script, None).await?;
    parse(&out)
}

fn parse(out: &str) -> Result<PodSession, String> {
    serde_json::from_str(out.trim()).map_err(|e| {
        format!(
            "unexpected answer from kdev-controller session-state ({e}): {}",
            out.trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::rewrite::SIDECAR_NAME;

    #[test]
    fn answers_parse() {
        assert_eq!(
            parse("{\"held\":true,\"pid\":31,\"heard_ms_ago\":1800}\n").unwrap(),
            PodSession {
                held: true,
                heard_ms_ago: Some(1800)
            }
        );
        assert!(!parse("{\"held\":false}").unwrap().held);
        assert!(parse("error: unrecognized subcommand").is_err());
    }

    /// A kdev connects once the sidecar runs; the pod's phase says `Running` only once the
    /// app's container has started too, and the API server may learn that seconds later. Such
    /// a pod was not asked, and a connected kdev was reported as "no dev pod runs".
    #[test]
    fn a_pod_whose_sidecar_runs_is_asked_whatever_its_phase() {
        let pod = |phase: &str, sidecar: serde_json::Value, deleting: bool| -> Pod {
            let mut meta = serde_json::json!({"name": "p"});
            if deleting {
                meta["deletionTimestamp"] = "2026-12-07T00:00:00Z".into();
            }
            serde_json::from_value(serde_json::json!({
                "metadata": meta,
                "spec": {"containers": [{"name": "app"}]},
                "status": {"phase": phase, "initContainerStatuses": [{
                    "name": SIDECAR_NAME, "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": sidecar,
                }]},
            }))
            .expect("a Pod")
        };
        let running = serde_json::json!({"running": {}});
        let creating = serde_json::json!({"waiting": {"reason": "ContainerCreating"}});
        assert!(connectable(&pod("Pending", running.clone(), false)));
        assert!(connectable(&pod("Running", running.clone(), false)));
        assert!(!connectable(&pod("Running", running, true)));
        assert!(!connectable(&pod("Pending", creating, false)));
    }
}

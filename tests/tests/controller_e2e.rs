//! End-to-end, below the CLI: a hand-written pod with the two containers kdev runs (the Go
//! toolchain sidecar and the app's own image under `kdev-controller supervise`), the static
//! controller uploaded and `kdev-controller serve` started through exec, and patches sent over
//! that one stream. A patch must make the app in the *other* container serve new code with no
//! container restarted. Prints the phase timings of one small reload.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kdev::testing::{ControllerSession, build_tar};
use kdev_protocol::{BuildConfig, BuildMode, BuildOutcome, Event, ServerMessage, SessionConfig};
use kdev_tests::{
    APP_IMAGE, TOOLCHAIN_IMAGE, TestNamespace, client, http_get_via_portforward, poll_until,
    repo_root, restart_counts, set_ping_message, wait_pod_running,
};
use kube::api::{Api, PostParams};

const POD: &str = "controller";

fn dev_pod() -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": POD },
        "spec": {
            "shareProcessNamespace": true,
            "terminationGracePeriodSeconds": 1,
            "volumes": [{ "name": "kdev", "emptyDir": {} }],
            // Native sidecar: it starts first, and its startup probe holds the app container
            // back until the controller binary is there to run.
            "initContainers": [{
                "name": "kdev",
                "image": TOOLCHAIN_IMAGE,
                "imagePullPolicy": "Never",
                "restartPolicy": "Always",
                "command": ["sh", "-c", "mkdir -p /kdev/bin /kdev/src /kdev/run; \
                    trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done"],
                "volumeMounts": [{ "name": "kdev", "mountPath": "/kdev" }],
                "startupProbe": {
                    "exec": { "command": ["test", "-x", "/kdev/bin/kdev-controller"] },
                    "periodSeconds": 1,
                    "failureThreshold": 300
                }
            }],
            // The app's own image (static, no shell): only the supervisor is ours.
            "containers": [{
                "name": "app",
                "image": APP_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/kdev/bin/kdev-controller", "supervise", "--kdev-dir=/kdev",
                    "--wait-for=/kdev/bin/app", "--", "/kdev/bin/app"],
                "ports": [{ "containerPort": 8080 }],
                "volumeMounts": [{ "name": "kdev", "mountPath": "/kdev" }]
            }]
        }
    }))?)
}

/// Every file of a directory tree, as paths relative to it.
fn files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Phase timings of one reload, from the controller's events.
#[derive(Debug, Default)]
struct Reload {
    patch: Duration,
    build_ms: u64,
    restart_ms: u64,
    ready_ms: u64,
}

/// Send `paths` under `root` as one patch and wait for the restarted app to accept.
async fn reload(s: &mut ControllerSession, root: &Path, paths: &[String]) -> Result<Reload> {
    let (tar, _) = build_tar(root, paths)?;
    let t0 = Instant::now();
    let result = s.patch(Vec::new(), tar, BuildMode::Auto).await?;
    let mut r = Reload {
        patch: t0.elapsed(),
        ..Default::default()
    };
    ensure!(result.complete, "patch refused: {:?}", result.refused);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, s.next_event())
            .await
            .context("no Ready event within 180 s")??;
        let ServerMessage::Event { event, .. } = msg else {
            continue;
        };
        match event {
            Event::BuildFinished {
                outcome,
                elapsed_ms,
                output,
                ..
            } => match outcome {
                BuildOutcome::Succeeded => r.build_ms = elapsed_ms,
                BuildOutcome::Cancelled => {}
                _ => bail!("the build failed: {output}"),
            },
            Event::Restarted { elapsed_ms, .. } => r.restart_ms = elapsed_ms,
            Event::Ready { elapsed_ms, .. } => {
                r.ready_ms = elapsed_ms;
                return Ok(r);
            }
            Event::RestartFailed { reason, .. } => bail!("restart failed: {reason}"),
            Event::NotReady { reason, .. } => bail!("the app did not get ready: {reason}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_through_exec_makes_the_other_container_serve_new_code() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-controller").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    pods.create(&PostParams::default(), &dev_pod()?).await?;

    // The sidecar runs (not yet "started": its probe waits for the controller); upload it.
    poll_until(Duration::from_secs(120), "the sidecar to run", || {
        let pods = pods.clone();
        async move {
            let pod = pods.get(POD).await?;
            Ok(pod
                .status
                .and_then(|s| s.init_container_statuses)
                .into_iter()
                .flatten()
                .any(|c| c.name == "kdev" && c.state.and_then(|s| s.running).is_some()))
        }
    })
    .await?;
    let binary = kdev::testing::host_controller()?;
    kdev::testing::upload(&pods, POD, &binary).await?;
    wait_pod_running(&pods, POD, Duration::from_secs(120)).await?;

    let config = SessionConfig {
        sync_root: Some("/kdev/src".into()),
        build: BuildConfig {
            package: Some(".".into()),
            ..Default::default()
        },
        app_port: Some(8080),
        forward_app_output: false,
        ..Default::default()
    };
    let hello = kdev_protocol::handshake::hello("controller e2e", config);
    // Over kdev's own client (TCP_NODELAY), so the patch timing is what kdev users get.
    let kdev_client = kdev::testing::client(kube::Config::infer().await?)?;
    let kdev_pods: Api<Pod> = Api::namespaced(kdev_client, ns.name());
    let mut session = ControllerSession::open(&kdev_pods, POD, hello, None).await?;

    // The whole example, then one edit.
    let work = tempfile::tempdir()?;
    let root = work.path().join("gin-hello");
    kdev_tests::copy_dir(&repo_root().join("examples/gin-hello"), &root)?;
    std::fs::remove_file(root.join("kdev.yaml"))?;
    let first = reload(&mut session, &root, &files(&root)).await?;
    let body = http_get_via_portforward(&pods, POD, 8080, "/ping").await?;
    ensure!(
        body.contains(r#"{"message":"pong"}"#),
        "first answer: {body}"
    );

    set_ping_message(&root, "patched")?;
    let edit = reload(&mut session, &root, &["main.go".to_string()]).await?;
    let body = http_get_via_portforward(&pods, POD, 8080, "/ping").await?;
    ensure!(
        body.contains(r#"{"message":"patched"}"#),
        "after the patch: {body}"
    );

    let pod = pods.get(POD).await?;
    let counts = restart_counts(&pod);
    ensure!(
        counts.len() == 2 && counts.iter().all(|(_, n)| *n == 0),
        "no container may restart: {counts:?}"
    );
    eprintln!(
        "first sync ({} files): patch {:?}, build {} ms, restart {} ms, ready {} ms",
        files(&root).len(),
        first.patch,
        first.build_ms,
        first.restart_ms,
        first.ready_ms
    );
    eprintln!(
        "one-file reload: patch {:?}, build {} ms, restart {} ms, ready {} ms",
        edit.patch, edit.build_ms, edit.restart_ms, edit.ready_ms
    );
    session.close().await;
    Ok(())
}

//! Smoke test of the test cluster itself: the Kubernetes features kdev is built on work here.
//!
//! One pod with `shareProcessNamespace: true`, two toolchain containers sharing an `emptyDir`,
//! and the example app. A tar streamed through exec stdin into one container is read back from
//! the other; a process of one container is seen and signalled from the other; a port-forward
//! reaches the app's TCP server; the pod reaches the `kubernetes` Service through kube-proxy.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kdev_tests::{
    APP_IMAGE, TOOLCHAIN_IMAGE, TestNamespace, client, exec, http_get_via_portforward, poll_until,
    tar_files, wait_pod_running,
};
use kube::api::{Api, PostParams};

const POD: &str = "smoke";
// `b` publishes its PID so container `a` can look for that process in the shared PID namespace.
// (Kubernetes expands `$(VAR)` in commands and turns `$$` into `$`: `$$$$` reaches sh as `$$`.)
const B_SCRIPT: &str = "echo $$$$ > /shared/b.pid; trap 'echo got-usr1 > /shared/usr1' USR1; \
    while true; do sleep 0.2; done";

fn smoke_pod() -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": POD },
        "spec": {
            "shareProcessNamespace": true,
            "terminationGracePeriodSeconds": 1,
            "volumes": [{ "name": "shared", "emptyDir": {} }],
            "containers": [
                {
                    "name": "a",
                    "image": TOOLCHAIN_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "exec sleep 3600"],
                    "volumeMounts": [{ "name": "shared", "mountPath": "/shared" }]
                },
                {
                    "name": "b",
                    "image": TOOLCHAIN_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", B_SCRIPT],
                    "volumeMounts": [{ "name": "shared", "mountPath": "/shared" }]
                },
                {
                    "name": "app",
                    "image": APP_IMAGE,
                    "imagePullPolicy": "Never",
                    "ports": [{ "containerPort": 8080 }]
                }
            ]
        }
    }))?)
}

/// A file of the sample tar: path, content, mode.
type SampleFile = (&'static str, &'static [u8], u32);

/// A tar with a nested directory, an executable and a name with a space and unicode.
fn sample_tar() -> Result<(Vec<u8>, Vec<SampleFile>)> {
    let files: Vec<(&str, &[u8], u32)> = vec![
        ("main.go", b"package main\n\nfunc main() {}\n", 0o644),
        ("handlers/ping handler é.go", b"package handlers\n", 0o644),
        ("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
    ];
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, path, *data)?;
    }
    Ok((builder.into_inner()?, files))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_supports_what_kdev_needs() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-smoke").await?;
    let pods: Api<Pod> = Api::namespaced(ns.client(), ns.name());
    pods.create(&PostParams::default(), &smoke_pod()?)
        .await
        .context("creating the smoke pod")?;
    wait_pod_running(&pods, POD, Duration::from_secs(120)).await?;

    // 1. A tar streamed through exec stdin into `a` lands in the shared emptyDir...
    let (tarball, files) = sample_tar()?;
    exec(
        &pods,
        POD,
        "a",
        &["sh", "-c", "mkdir -p /shared/in && tar -x -C /shared/in"],
        Some(&tarball),
    )
    .await?
    .ok()
    .context("unpacking the tar in container a")?;
    // ...and `b` reads back the same files, contents and executable bits.
    let out = exec(
        &pods,
        POD,
        "b",
        &["tar", "-c", "-C", "/shared/in", "."],
        None,
    )
    .await?
    .ok()?;
    let mut seen: Vec<_> = tar_files(&out.stdout)?
        .into_iter()
        .map(|(path, (data, mode))| (path, data, mode))
        .collect();
    seen.sort();
    let mut expected: Vec<_> = files
        .iter()
        .map(|(p, d, m)| (p.to_string(), d.to_vec(), *m))
        .collect();
    expected.sort();
    ensure!(
        seen == expected,
        "files read back from container b differ: {seen:?}"
    );

    // 2. The PID namespace is shared: `a` sees `b`'s shell and the app, and can signal `b`.
    let ps = exec(&pods, POD, "a", &["ps", "-o", "pid,args"], None)
        .await?
        .ok()?
        .stdout_str();
    ensure!(
        ps.contains("/app/gin-hello"),
        "container a does not see the app process:\n{ps}"
    );
    let pid = exec(&pods, POD, "a", &["cat", "/shared/b.pid"], None)
        .await?
        .ok()?
        .stdout_str();
    let pid = pid.trim();
    let cmdline = exec(
        &pods,
        POD,
        "a",
        &["cat", &format!("/proc/{pid}/cmdline")],
        None,
    )
    .await?
    .ok()
    .context("container a cannot see b's process")?;
    ensure!(
        String::from_utf8_lossy(&cmdline.stdout).contains("got-usr1"),
        "PID {pid} seen from container a is not b's shell: {:?}",
        cmdline.stdout_str()
    );
    exec(&pods, POD, "a", &["kill", "-USR1", pid], None)
        .await?
        .ok()
        .context("signalling b from a")?;
    poll_until(
        Duration::from_secs(20),
        "b to record the signal from a",
        || {
            let pods = pods.clone();
            async move {
                let out = exec(&pods, POD, "b", &["cat", "/shared/usr1"], None).await?;
                Ok(out.status == "Success" && out.stdout_str().trim() == "got-usr1")
            }
        },
    )
    .await?;

    // 3. A port-forward reaches the app's TCP server (retry: the app may still be starting).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let response = loop {
        match http_get_via_portforward(&pods, POD, 8080, "/ping").await {
            Ok(r) if r.contains("200 OK") => break r,
            other if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("GET /ping through a port-forward failed: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    ensure!(
        response.contains(r#"{"message":"pong"}"#),
        "unexpected response: {response}"
    );

    // 4. The pod reaches the API server through the `kubernetes` Service (kube-proxy's rules).
    let probe = "nc -w 5 \"$KUBERNETES_SERVICE_HOST\" \"$KUBERNETES_SERVICE_PORT\" </dev/null \
        && echo reachable";
    let out = exec(&pods, POD, "a", &["sh", "-c", probe], None).await?;
    ensure!(
        out.stdout_str().contains("reachable"),
        "the kubernetes Service is not reachable from the pod: {out:?}"
    );
    Ok(())
}

//! End-to-end: the real `kdev` binary, as a subprocess, against the real cluster, on a copy of
//! examples/gin-hello. Every save must be served by the same pod (no container restarts) and,
//! after every kind of change and every disruption, the pod's tree must equal the local one.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kdev_tests::watch::{Watch, assert_pod_tree_equals_local, dev_pod};
use kdev_tests::{TestNamespace, client, exec, kdev_bin, poll_until, restart_counts};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

/// The pod's whole tree equals the local one (content, mode, link targets).
async fn assert_trees_equal(pods: &Api<Pod>, w: &Watch) -> Result<()> {
    assert_pod_tree_equals_local(pods, &w.project(), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_serves_every_kind_of_change_and_recovers() -> Result<()> {
    let client: Client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-watch").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start(ns.name())?;

    // First deploy: the example answers pong through the forwarded port.
    w.wait_served("pong", Duration::from_secs(240)).await?;
    assert_trees_equal(&pods, &w).await?;
    let pod = dev_pod(&pods).await?;
    let restarts = restart_counts(&pod);

    // An edit is served by the same pod, with no container restarted.
    w.set_message("\"pong v2\"");
    w.wait_served("pong v2", Duration::from_secs(60)).await?;
    let after = dev_pod(&pods).await?;
    ensure!(after.name_any() == pod.name_any(), "the pod was replaced");
    ensure!(
        restart_counts(&after) == restarts,
        "containers restarted: {:?} → {:?}",
        restarts,
        restart_counts(&after)
    );
    // It was a quick rebuild (the compile and the link without the go command): the compiled
    // main package is where only a quick rebuild writes it (`quick/` of the records directory
    // in the sidecar's temporary directory, see controller/README.md).
    let quick = exec(
        &pods,
        &after.name_any(),
        "kdev",
        &[
            "sh",
            "-c",
            "test -s /tmp/kdev-quick-build-*/quick/compile@main.a && echo quick",
        ],
        None,
    )
    .await?
    .stdout_str();
    ensure!(
        quick.contains("quick"),
        "the edit of main.go was not a quick rebuild:\n{}",
        w.output()
    );

    // A new file used by main.
    w.write(
        "extra.go",
        "package main\n\nfunc extraMessage() string { return \"from extra.go\" }\n",
    );
    w.set_message("\"pong \" + \"v3\"");
    w.wait_served("pong v3", Duration::from_secs(60)).await?;
    w.write("ping_extra.go", "package main\n\nvar _ = extraMessage()\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.set_message("\"pong v4\"");
    w.wait_served("pong v4", Duration::from_secs(60)).await?;
    assert_trees_equal(&pods, &w).await?;

    // Delete files: the pod loses them too (and the build still works without them).
    std::fs::remove_file(w.project().join("ping_extra.go"))?;
    std::fs::remove_file(w.project().join("extra.go"))?;
    w.set_message("\"pong v5\"");
    w.wait_served("pong v5", Duration::from_secs(60)).await?;
    assert_trees_equal(&pods, &w).await?;

    // Rename a file (delete + add) and add a nested directory.
    std::fs::rename(
        w.project().join("handlers/hello.go"),
        w.project().join("handlers/greet.go"),
    )?;
    w.write(
        "internal/deep/nested/version.go",
        "package nested\n\nconst Version = \"1\"\n",
    );
    w.set_message("\"pong v6\"");
    w.wait_served("pong v6", Duration::from_secs(60)).await?;
    assert_trees_equal(&pods, &w).await?;

    // A compile error: the old version keeps serving, the error names the local file.
    w.set_message("undefinedThing");
    poll_until(
        Duration::from_secs(60),
        "the compile error in kdev's output",
        || {
            let out = w.output();
            async move { Ok(out.contains("main.go:") && out.contains("undefined: undefinedThing")) }
        },
    )
    .await?;
    w.wait_served("pong v6", Duration::from_secs(5)).await?;
    let out = w.output();
    let line = out
        .lines()
        .find(|l| l.contains("undefined: undefinedThing"))
        .unwrap();
    ensure!(
        line.trim_start().starts_with("main.go:"),
        "the error should name the local path: {line}"
    );
    w.set_message("\"pong v7\"");
    w.wait_served("pong v7", Duration::from_secs(60)).await?;

    // Kill the controller's exec stream: kdev reconnects, reconciles, and later edits arrive.
    let pod_name = dev_pod(&pods).await?.name_any();
    let kill_serve = "for p in /proc/[0-9]*; do \
        if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^/kdev/bin/kdev-controller serve'; then \
        kill -9 ${p#/proc/}; echo killed; fi; done";
    let killed = exec(&pods, &pod_name, "kdev", &["sh", "-c", kill_serve], None)
        .await?
        .stdout_str();
    ensure!(killed.contains("killed"), "no serve process found to kill");
    w.write("handlers/after_kill.go", "package handlers\n");
    w.set_message("\"pong v8\"");
    w.wait_served("pong v8", Duration::from_secs(90)).await?;
    assert_trees_equal(&pods, &w).await?;

    // Delete the pod: kdev finds the new one, uploads the controller, re-syncs everything.
    pods.delete(&pod_name, &DeleteParams::default().grace_period(0))
        .await?;
    poll_until(Duration::from_secs(120), "a new dev pod", || {
        let pods = pods.clone();
        let old = pod_name.clone();
        async move {
            Ok(dev_pod(&pods)
                .await
                .map(|p| p.name_any() != old)
                .unwrap_or(false))
        }
    })
    .await?;
    w.set_message("\"pong v9\"");
    w.wait_served("pong v9", Duration::from_secs(180)).await?;
    assert_trees_equal(&pods, &w).await?;

    // Ctrl-C stops kdev cleanly (exit 0) and leaves the pod running.
    let mut w = w;
    let pid = w.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc_kill(pid, 2) };
    let status = wait_child(&mut w.child, Duration::from_secs(20))?;
    ensure!(
        status.success(),
        "kdev exited with {status} after Ctrl-C:\n{}",
        w.output()
    );
    let out = w.output();
    ensure!(!out.contains("panicked"), "kdev panicked:\n{out}");

    // `kdev down` removes the Deployment and the Service it applied (named per owner).
    let (ok, down_out) = run_kdev(&w.project(), &["down"], &[]);
    ensure!(ok, "kdev down failed: {down_out}");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), ns.name());
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), ns.name());
    let ours = ListParams::default().labels("kdev.dev/project=gin-hello");
    poll_until(
        Duration::from_secs(30),
        "kdev down to remove the Deployment and Service",
        || {
            let (d, s, lp) = (deployments.clone(), services.clone(), ours.clone());
            async move { Ok(d.list(&lp).await?.items.is_empty() && s.list(&lp).await?.items.is_empty()) }
        },
    )
    .await?;
    Ok(())
}

/// Large trees exhaust inotify watches (the field's users hit it on monorepos): kdev must say
/// so with the fix, fall back to polling and keep serving. The limit is lowered for kdev alone,
/// in a user namespace of its own (the sysctl is per user namespace), not for the machine.
/// The same run checks `--timings`: every served edit has a complete timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_falls_back_to_polling_when_inotify_watches_run_out() -> Result<()> {
    let client: Client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-poll").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let timings = tempfile::NamedTempFile::new()?;
    let timings_path = timings.path().to_string_lossy().into_owned();
    // One watch: the root is watched, its first subdirectory is not.
    let limit_one_watch = "echo 1 > /proc/sys/user/max_inotify_watches && exec \"$@\"";
    let w = Watch::start_with(
        ns.name(),
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            limit_one_watch,
            "sh",
        ],
        &["--timings", &timings_path],
    )?;
    w.wait_served("pong", Duration::from_secs(240)).await?;
    let out = w.output();
    ensure!(
        out.contains("inotify watch limit reached")
            && out.contains("sysctl fs.inotify.max_user_watches="),
        "kdev must say the limit was reached and how to raise it:\n{out}"
    );

    // Changes are still found, now by polling: an edit in a subdirectory and a deleted file.
    w.write(
        "handlers/polled.go",
        "package handlers\n\nconst Polled = true\n",
    );
    w.set_message("\"pong polled\"");
    w.wait_served("pong polled", Duration::from_secs(60))
        .await?;
    std::fs::remove_file(w.project().join("handlers/polled.go"))?;
    w.set_message("\"pong polled again\"");
    w.wait_served("pong polled again", Duration::from_secs(60))
        .await?;
    assert_trees_equal(&pods, &w).await?;

    // `--timings`: one JSON line per reload; a served edit's phases are all there, in order.
    let text = std::fs::read_to_string(timings.path())?;
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("--timings lines are JSON:\n{text}"))?;
    let edit = records
        .iter()
        .rev()
        .find(|r| r["paths"].to_string().contains("main.go"))
        .with_context(|| format!("no --timings record for main.go:\n{text}"))?;
    let at = |k: &str| {
        edit[k]
            .as_u64()
            .with_context(|| format!("{k} missing in {edit}"))
    };
    let ends = [
        at("event_at_ms")?,
        at("sync_at_ms")?,
        at("applied_at_ms")?,
        at("built_at_ms")?,
        at("restarted_at_ms")?,
        at("ready_at_ms")?,
    ];
    ensure!(
        ends.windows(2).all(|w| w[0] <= w[1]),
        "phases out of order: {edit}"
    );
    ensure!(edit["build_ms"].as_u64().is_some(), "{edit}");
    Ok(())
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn wait_child(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            bail!("kdev did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_kdev(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(kdev_bin());
    cmd.args(args).current_dir(dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

//! The fault suite: what a new user met on real projects, each reproduced against the real
//! cluster. Every test ends the same way: the pod's whole tree equals the local one (content,
//! mode, link targets) and the newest edit is served.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kdev_tests::netfault::{BlackHole, ProxiedApi};
use kdev_tests::watch::{Watch, WatchOptions, assert_pod_tree_equals_local, dev_pod};
use kdev_tests::{TestNamespace, client, exec, kdev_bin, poll_until};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

/// Lines of kdev's output that contain `needle`.
fn count_lines(output: &str, needle: &str) -> usize {
    output.lines().filter(|l| l.contains(needle)).count()
}

/// Kill `kdev-controller serve` in the dev pod with SIGKILL (as the OOM killer would).
async fn kill_serve(pods: &Api<Pod>) -> Result<()> {
    let pod = dev_pod(pods).await?.name_any();
    let script = "for p in /proc/[0-9]*; do \
        if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^/kdev/bin/kdev-controller serve'; then \
        kill -9 ${p#/proc/}; echo killed; fi; done";
    let out = exec(pods, &pod, "kdev", &["sh", "-c", script], None)
        .await?
        .stdout_str();
    ensure!(out.contains("killed"), "no serve process found to kill");
    Ok(())
}

/// Watching a symlink to a directory re-used that directory's inotify watch, and
/// removing the link dropped both: later edits in the directory were never synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_directory_does_not_blind_the_watcher() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-symdir").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;

    let root = w.project();
    std::os::unix::fs::symlink("handlers", root.join("alias"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_pod_tree_equals_local(&pods, &root, &[]).await?;
    std::fs::remove_file(root.join("alias"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // An edit in the directory the link pointed to, and then one that changes the answer.
    let hello = root.join("handlers/hello.go");
    let mut text = std::fs::read_to_string(&hello)?;
    text.push_str("\n// edited after the alias went away\n");
    std::fs::write(&hello, &text)?;
    w.write(
        "handlers/message.go",
        "package handlers\n\nconst Message = \"from handlers\"\n",
    );
    w.set_message("handlers.Message");
    w.wait_served("from handlers", Duration::from_secs(60))
        .await?;
    assert_pod_tree_equals_local(&pods, &root, &[]).await?;
    ensure!(
        !w.output().contains("reconnecting"),
        "no reconnect may be needed:\n{}",
        w.output()
    );
    Ok(())
}

/// Entries that cannot be synced (a link to an absolute path, two links that
/// together resolve outside the root, a FIFO) are named once each, and everything else keeps
/// syncing — no reconnect loop, no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_cannot_be_synced_are_named_once_and_the_rest_syncs() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-unsyncable").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;
    let root = w.project();

    std::os::unix::fs::symlink("/etc", root.join("etc-link"))?;
    std::fs::create_dir_all(root.join("a/b"))?;
    // Harmless alone (it is the root itself); together with `x`, `x` points above the root.
    std::os::unix::fs::symlink("../..", root.join("a/b/top"))?;
    std::os::unix::fs::symlink("a/b/top/..", root.join("x"))?;
    let fifo = root.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status()?;
    ensure!(made.success(), "mkfifo failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.set_message("\"still syncing\"");
    w.wait_served("still syncing", Duration::from_secs(60))
        .await?;
    // Later edits too, and after a while nothing is warned about again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    w.set_message("\"and again\"");
    w.wait_served("and again", Duration::from_secs(60)).await?;

    let out = w.output();
    for name in ["etc-link", "x", "fifo"] {
        ensure!(
            out.lines()
                .any(|l| l.contains(&format!(" {name} cannot be synced"))),
            "{name} must be named as not syncable:\n{out}"
        );
    }
    ensure!(
        count_lines(&out, "cannot be synced") == 3,
        "each entry is named exactly once:\n{out}"
    );
    ensure!(
        !out.contains("reconnecting"),
        "refused entries must not break the session:\n{out}"
    );
    assert_pod_tree_equals_local(&pods, &root, &["etc-link", "x", "fifo"]).await?;
    Ok(())
}

/// A connection silently forgotten by a NAT (no reset, every packet dropped both
/// ways) hung kdev forever. The heartbeat notices within seconds, says so in one line, and a
/// new connection carries the edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_is_noticed_and_replaced() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-blackhole").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let api = ProxiedApi::start().await?;
    let kc = api.kubeconfig();
    let w = Watch::start_opts(
        ns.name(),
        WatchOptions {
            env: &[("KUBECONFIG", &kc)],
            ..Default::default()
        },
    )?;
    w.wait_served("pong", Duration::from_secs(240)).await?;
    // Idle, as a developer reading code is.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let ports = api.proxy.client_ports();
    let hole = BlackHole::swallow(api.proxy.port, &ports)?;
    let t0 = Instant::now();
    w.set_message("\"through a new connection\"");
    let noticed = w
        .wait_output("over a new connection", Duration::from_secs(30))
        .await?;
    w.wait_served("through a new connection", Duration::from_secs(60))
        .await?;
    let served = t0.elapsed();
    eprintln!(
        "black-holed {} connections: noticed after {noticed:?}, edit served {served:?} after the \
         black hole",
        ports.len()
    );
    ensure!(
        noticed <= Duration::from_secs(16),
        "a dead stream must be noticed within 15 s (took {noticed:?})"
    );
    // A client request made during the black hole (the poller's) went through the dead
    // connection: kdev closes it when it replaces the session, so the client retries at once
    // (it hung until its own 10 s timeout before: served 10.3 s after noticed).
    ensure!(
        served <= noticed + Duration::from_secs(6),
        "the edit was served {:?} after the dead stream was noticed",
        served.saturating_sub(noticed)
    );
    ensure!(
        count_lines(&w.output(), "over a new connection") == 1,
        "one line says so:\n{}",
        w.output()
    );
    assert_pod_tree_equals_local(&pods, &w.project(), &[]).await?;
    drop(hole);
    Ok(())
}

/// A kdev whose laptop lost its network holds a Lease that lives 90 s, renewed only every 30 s
/// while connected: its pod, no longer hearing it, lets the next kdev take over within
/// seconds, and the old kdev stops once it is back, saying it was taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kdev_that_lost_its_network_is_taken_over_and_stops_when_back() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-netgone").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let api = ProxiedApi::start().await?;
    let kc = api.kubeconfig();
    let mut first = Watch::start_opts(
        ns.name(),
        WatchOptions {
            env: &[("KUBECONFIG", &kc)],
            ..Default::default()
        },
    )?;
    first.wait_served("pong", Duration::from_secs(240)).await?;

    let hole = BlackHole::whole_port(api.proxy.port)?;
    let t0 = Instant::now();
    // The same developer starts kdev again (another copy of the project: the same workload).
    let mut refused = Vec::new();
    let second = loop {
        let mut w = Watch::start(ns.name())?;
        let took = w
            .wait_output_or_exit("took over ", Duration::from_secs(60))
            .await?;
        if took.is_some() {
            break w;
        }
        let status = w.wait_exit(Duration::from_secs(5))?;
        ensure!(
            status.code() == Some(5),
            "a refused kdev exits with 5 ({status}):\n{}",
            w.output()
        );
        refused.push(w.output());
        ensure!(
            t0.elapsed() < Duration::from_secs(45),
            "not taken over 45 s after the network went; last refusal:\n{}",
            refused.last().map_or("", |s| s.as_str())
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let taken = t0.elapsed();
    eprintln!(
        "taken over {taken:?} after the network went, after {} refusals",
        refused.len()
    );
    ensure!(
        refused
            .first()
            .is_some_and(|r| r.contains("it is connected to pod gin-hello-")),
        "right after the network went, the pod still vouches for the first kdev: {refused:?}"
    );
    ensure!(
        second
            .output()
            .contains("no kdev is connected to pod gin-hello-"),
        "{}",
        second.output()
    );
    second.wait_served("pong", Duration::from_secs(120)).await?;
    // The first kdev cannot learn of the takeover while offline, but says it can happen.
    first
        .wait_output(
            "another `kdev watch` of this workload can take the session over now",
            Duration::from_secs(30),
        )
        .await?;

    // The network is back: the first kdev learns it lost the session, and stops.
    drop(hole);
    let status = first.wait_exit(Duration::from_secs(60))?;
    ensure!(
        status.code() == Some(5) && first.output().contains("was taken over by"),
        "the first kdev must stop, saying why ({status}):\n{}",
        first.output()
    );
    second.set_message("\"second kdev\"");
    second
        .wait_served("second kdev", Duration::from_secs(60))
        .await?;
    assert_pod_tree_equals_local(&pods, &second.project(), &[]).await?;
    Ok(())
}

/// `GOFLAGS=-mod=mod` in the sidecar made a vendored project ignore `vendor/`. The
/// test vendors the example and adds a function to the vendored gin that exists nowhere else,
/// so only a build from `vendor/` succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendored_module_builds_from_its_vendor_tree() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-vendor").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let vendor = |project: &std::path::Path| -> Result<()> {
        kdev_tests::go_mod_vendor(project)?;
        std::fs::write(
            project.join("vendor/github.com/gin-gonic/gin/kdev_vendored.go"),
            "package gin\n\n// KdevVendored exists only in this vendor tree.\nconst KdevVendored = \"from vendor\"\n",
        )?;
        kdev_tests::set_ping_expr(project, "gin.KdevVendored")?;
        Ok(())
    };
    let w = Watch::start_opts(
        ns.name(),
        WatchOptions {
            prepare: Some(Box::new(vendor)),
            ..Default::default()
        },
    )?;
    w.wait_served("from vendor", Duration::from_secs(240))
        .await?;
    // An edit of the vendored code is a build input like any other.
    let f = w
        .project()
        .join("vendor/github.com/gin-gonic/gin/kdev_vendored.go");
    let text = std::fs::read_to_string(&f)?.replace("from vendor", "vendor edited");
    std::fs::write(&f, text)?;
    w.wait_served("vendor edited", Duration::from_secs(90))
        .await?;
    assert_pod_tree_equals_local(&pods, &w.project(), &[]).await?;
    Ok(())
}

/// After the pod was replaced, forwards kept dialing the deleted pod (40 identical
/// error lines in 10 s). Now they wait for the new pod, dial it as soon as it is known, and
/// repeated errors are summarised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_pod_is_dialled_at_once_and_errors_are_summarised() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-replaced").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;
    let old = dev_pod(&pods).await?.name_any();
    // Until its Lease was last renewed over 15 s ago (connected, it renews every 30 s): the
    // stream's loss then must not make kdev say it can be taken over, since its first
    // renewal answers at once (it said so, falsely, when it warned before trying).
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns.name());
    poll_until(
        Duration::from_secs(40),
        "a Lease renewed over 15 s ago",
        || {
            let leases = leases.clone();
            async move {
                let list = leases.list(&Default::default()).await?;
                Ok(list.items.iter().any(|l| {
                    l.spec
                        .as_ref()
                        .and_then(|s| s.renew_time.as_ref())
                        .is_some_and(|t| {
                            k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second() > 16
                        })
                }))
            }
        },
    )
    .await?;

    // A client keeps asking through the forward while the pod is replaced.
    let port = w.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = kdev_tests::http_get(port, "/ping", Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    pods.delete(&old, &DeleteParams::default()).await?;
    w.set_message("\"new pod\"");
    w.wait_served("new pod", Duration::from_secs(180)).await?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = poller.join();
    let new = dev_pod(&pods).await?.name_any();
    ensure!(new != old, "the pod was not replaced");
    let out = w.output();
    ensure!(
        !out.contains(&format!("port-forward to {old}")),
        "no connection may be forwarded to the deleted pod:\n{out}"
    );
    ensure!(
        !out.contains("can take the session over now"),
        "a healthy reconnect must not say the session can be taken over:\n{out}"
    );
    let forward_lines = count_lines(&out, &format!("localhost:{port}:"));
    ensure!(
        forward_lines <= 6,
        "{forward_lines} forward error lines: repeated errors must be summarised:\n{out}"
    );
    assert_pod_tree_equals_local(&pods, &w.project(), &[]).await?;
    Ok(())
}

/// An app that forks a worker and then crashes left the worker holding the port, so
/// every later start failed with "address already in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_apps_worker_does_not_keep_the_port() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-fork").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;

    let fork = |crash: bool| {
        format!(
            r#"package main

import (
	"log"
	"net/http"
	"os"
	"os/exec"
	"time"
)

const forkAndCrash = {crash}

// A worker that holds the app's port, started by a main process that then crashes.
func init() {{
	if os.Getenv("KDEV_TEST_WORKER") == "1" {{
		log.Printf("worker %d holding :8080", os.Getpid())
		_ = http.ListenAndServe(":8080", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {{
			_, _ = w.Write([]byte(`{{"message":"stale worker"}}`))
		}}))
		os.Exit(0)
	}}
	if forkAndCrash {{
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "KDEV_TEST_WORKER=1")
		if err := cmd.Start(); err != nil {{
			log.Fatalf("starting the worker: %v", err)
		}}
		time.Sleep(500 * time.Millisecond)
		log.Fatalf("main process crashing, leaving worker %d behind", cmd.Process.Pid)
	}}
}}
"#
        )
    };
    w.write("fork.go", &fork(true));
    w.wait_output("main process crashing", Duration::from_secs(60))
        .await?;
    // Let it crash a few times, then fix it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.write("fork.go", &fork(false));
    w.set_message("\"after the crash\"");
    w.wait_served("after the crash", Duration::from_secs(60))
        .await?;
    // Exactly one app process is left: no worker survived.
    let pod = dev_pod(&pods).await?.name_any();
    let count = "n=0; for p in /proc/[0-9]*; do \
        if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^/kdev/bin/app'; then n=$((n+1)); fi; \
        done; echo $n";
    let n = exec(&pods, &pod, "kdev", &["sh", "-c", count], None)
        .await?
        .stdout_str();
    ensure!(
        n.trim() == "1",
        "one app process expected, found {}",
        n.trim()
    );
    assert_pod_tree_equals_local(&pods, &w.project(), &[]).await?;
    Ok(())
}

/// A `serve` killed mid-patch must leave no temporary files, must not let a stale
/// build run, and the next session must know the tree needs a build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_mid_patch_leaves_a_consistent_pod() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-killpatch").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;

    // A large change (several frames), with the kill landing while it is applied.
    let big: String = (0..200_000)
        .map(|i| format!("// line {i} of a large generated file\n"))
        .collect();
    for i in 0..6 {
        w.write(&format!("gen/big{i}.go"), &format!("package gen\n{big}"));
    }
    w.set_message("\"after the kill\"");
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_serve(&pods).await?;
    w.wait_served("after the kill", Duration::from_secs(120))
        .await?;
    assert_pod_tree_equals_local(&pods, &w.project(), &[]).await?;
    Ok(())
}

/// A FIFO in the pod's tree made the controller's listing hang forever (it opened it
/// for hashing). Now it is skipped, and since it is not in the local tree, deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_the_pod_does_not_hang_the_reconcile() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-podfifo").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;
    let pod = dev_pod(&pods).await?.name_any();
    exec(
        &pods,
        &pod,
        "kdev",
        &["sh", "-c", "mkfifo /kdev/src/pipe && ls -l /kdev/src/pipe"],
        None,
    )
    .await?
    .ok()?;
    // A new session lists the pod's tree (the reconcile).
    kill_serve(&pods).await?;
    w.set_message("\"after the fifo\"");
    w.wait_served("after the fifo", Duration::from_secs(90))
        .await?;
    assert_pod_tree_equals_local(&pods, &w.project(), &[]).await?;
    Ok(())
}

/// `kdev down` while `kdev watch` runs deleted the Lease, and the watch "renewed" a
/// Lease that no longer existed, forever. It must stop with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdev_down_under_a_live_watch_stops_it() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-downlive").await?;
    let mut w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;
    let down = Command::new(kdev_bin())
        .arg("down")
        .current_dir(w.project())
        .output()?;
    ensure!(
        down.status.success(),
        "kdev down failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let status = w.wait_exit(Duration::from_secs(20))?;
    ensure!(
        !status.success(),
        "the watch must fail: it lost its session"
    );
    let out = w.output();
    ensure!(
        out.contains("session Lease") && out.contains("deleted"),
        "the watch must say it lost its Lease:\n{out}"
    );
    // And it left nothing running that renews a Lease.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns.name());
    poll_until(Duration::from_secs(10), "no Lease left", || {
        let leases = leases.clone();
        async move { Ok(leases.list(&Default::default()).await?.items.is_empty()) }
    })
    .await?;
    Ok(())
}

/// Ctrl-C pressed while kdev waits to retry (here: a controller that cannot start)
/// was lost. One shutdown signal covers every phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_retrying_stops_kdev_at_once() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-ctrlc").await?;
    let broken = tempfile::NamedTempFile::new()?;
    std::fs::write(
        broken.path(),
        "#!/bin/sh\necho this controller is broken >&2\nexit 3\n",
    )?;
    let bin = broken.path().to_string_lossy().into_owned();
    let mut w = Watch::start_opts(
        ns.name(),
        WatchOptions {
            env: &[("KDEV_CONTROLLER_BIN", &bin)],
            ..Default::default()
        },
    )?;
    w.wait_output("retrying in", Duration::from_secs(240))
        .await?;
    w.wait_output("retrying in 1", Duration::from_secs(30))
        .await?;
    let t0 = Instant::now();
    w.interrupt();
    let status = w.wait_exit(Duration::from_secs(10))?;
    eprintln!("kdev stopped {:?} after Ctrl-C", t0.elapsed());
    ensure!(status.success(), "Ctrl-C is a clean stop: {status}");
    ensure!(
        w.output().contains("stopped"),
        "kdev says it stopped:\n{}",
        w.output()
    );
    Ok(())
}

/// A restart on an unchanged tree printed nothing after "syncing". It says the pod
/// is in sync, with what was compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_an_unchanged_tree_says_the_pod_is_in_sync() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-insync").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let mut w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;
    let status = w.restart()?;
    ensure!(status.success(), "the first kdev stops cleanly: {status}");
    w.wait_output("the pod is in sync", Duration::from_secs(60))
        .await?;
    let out = w.output();
    ensure!(
        !out.contains("sending"),
        "nothing is sent for an unchanged tree:\n{out}"
    );
    w.set_message("\"after the restart\"");
    w.wait_served("after the restart", Duration::from_secs(60))
        .await?;
    assert_pod_tree_equals_local(&pods, &w.project(), &[]).await?;
    Ok(())
}

/// The safety net: a change the watcher cannot see is found by the idle rescan, synced, and
/// reported once. A write through a shared mapping produces no inotify event; the only event,
/// IN_CLOSE_WRITE, comes when the last reference to the file goes, so the writer maps the file,
/// closes its descriptor, writes later and keeps the mapping until the test ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_watcher_missed_is_found_by_the_rescan() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-rescan").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;
    let main = w.project().join("main.go");
    let script = "import mmap, sys, time\n\
f = open(sys.argv[1], 'r+b')\n\
m = mmap.mmap(f.fileno(), 0)\n\
f.close()\n\
time.sleep(1.5)\n\
i = m.find(b'\"pong\"')\n\
assert i >= 0\n\
m[i:i + 6] = b'\"PONG\"'\n\
m.flush()\n\
print('written', flush=True)\n\
time.sleep(600)\n";
    let mut writer = Command::new("python3")
        .args(["-c", script])
        .arg(&main)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.take().context("stdout")?),
        &mut line,
    )?;
    ensure!(line.trim() == "written", "the mmap write failed: {line}");
    let served = w.wait_served("PONG", Duration::from_secs(30)).await;
    let _ = writer.kill();
    let _ = writer.wait();
    let took = served?;
    eprintln!("a change the watcher missed was served after {took:?}");
    let out = w.output();
    ensure!(
        count_lines(&out, "the watcher missed 1 change; synced") == 1,
        "the rescan says so, once:\n{out}"
    );
    assert_pod_tree_equals_local(&pods, &w.project(), &[]).await?;
    Ok(())
}

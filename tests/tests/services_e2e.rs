//! End-to-end: several services in one session, on a copy of examples/shop (a gateway that
//! calls `orders` by its Service name; one Go module, a package both use). Restart counts and
//! the supervisor's start counts prove which service restarted; two developers in one
//! namespace each reach their own copies, and one who runs only the gateway reaches the shared
//! backend.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kdev_tests::watch::{Node, local_nodes, pod_nodes, tree_diff};
use kdev_tests::{
    KdevProcess as Kdev, TestNamespace, client, exec, free_port, http_get, kdev_bin, repo_root,
    set_const, shop_project,
};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};

/// `kdev watch ARGS` in `project` as `owner`.
fn watch(project: &Path, owner: &str, args: &[&str]) -> Result<Kdev> {
    let mut all = vec!["watch"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--owner", owner]);
    Kdev::start(project, &all)
}

/// GET /orders on localhost:`port` until the JSON answer satisfies `want`; returns it.
async fn wait_answer(
    port: u16,
    what: &str,
    timeout: Duration,
    kdev: &Kdev,
    want: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        let got =
            tokio::task::spawn_blocking(move || http_get(port, "/orders", Duration::from_secs(5)))
                .await?;
        match got {
            Ok(resp) => {
                let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
                    && want(&v)
                {
                    return Ok(v);
                }
                last = resp;
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!(
                "{what} not answered within {timeout:?}; last answer: {last}\nkdev output:\n{}",
                kdev.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The live dev pod of `workload` (a Deployment name), through its selector.
async fn pod_of(client: &kube::Client, ns: &str, workload: &str) -> Result<String> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(workload)
        .await?;
    let labels = d
        .spec
        .and_then(|s| s.selector.match_labels)
        .context("a selector")?;
    let sel: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&sel.join(",")))
        .await?
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .with_context(|| format!("no pod of {workload}"))
}

/// The supervisor's start count and app PID in a dev pod.
async fn starts(pods: &Api<Pod>, pod: &str) -> Result<(u64, u64)> {
    let out = exec(
        pods,
        pod,
        "kdev",
        &["cat", "/kdev/run/app-status.json"],
        None,
    )
    .await?
    .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["starts"].as_u64().context("starts")?,
        v["pid"].as_u64().context("pid")?,
    ))
}

/// The pod's tree equals the local project's (content, mode, link targets).
async fn assert_tree(pods: &Api<Pod>, pod: &str, root: &Path) -> Result<()> {
    let mut last = Vec::new();
    for _ in 0..50 {
        let local: std::collections::BTreeMap<String, Node> = local_nodes(root, &[])?;
        last = tree_diff(&local, &pod_nodes(pods, pod).await?);
        if last.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "{pod}'s tree differs from the local one:\n{}",
        last.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_start_together_and_reload_only_what_changed() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-shop").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let dir = tempfile::tempdir()?;
    let (gw, op) = (free_port(), free_port());
    let project = shop_project(dir.path(), ns.name(), gw, op)?;
    let t0 = Instant::now();
    let kdev = watch(&project, "dev", &[])?;
    // The gateway answers with the orders service's answer: both run, and the gateway reaches
    // orders by its Service name.
    let first = wait_answer(gw, "the gateway", Duration::from_secs(300), &kdev, |v| {
        v["orders"]["message"] == "no orders yet"
    })
    .await?;
    eprintln!("both services served {:?} after start", t0.elapsed());
    ensure!(first["service"] == "gateway", "{first}");
    let out = kdev.output();
    ensure!(
        out.lines()
            .any(|l| l.starts_with("orders ") && l.contains("forwarding"))
            && out
                .lines()
                .any(|l| l.starts_with("gateway") && l.contains("forwarding")),
        "one status line per service, prefixed with its name:\n{out}"
    );
    let orders_pod = pod_of(&client, ns.name(), "orders-dev").await?;
    let gateway_pod = pod_of(&client, ns.name(), "gateway-dev").await?;
    let (o0, _) = starts(&pods, &orders_pod).await?;
    let (g0, gpid) = starts(&pods, &gateway_pod).await?;

    // An edit in cmd/orders: both pods build, only orders restarts.
    set_const(
        &project,
        "cmd/orders/main.go",
        "ordersMessage",
        "two orders",
    )?;
    let t = Instant::now();
    wait_answer(
        gw,
        "the new orders message",
        Duration::from_secs(90),
        &kdev,
        |v| v["orders"]["message"] == "two orders",
    )
    .await?;
    eprintln!(
        "an orders edit was served through the gateway after {:?}",
        t.elapsed()
    );
    // The gateway's own build finishes too; give it the time to say so.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kdev
        .output()
        .contains("the binary is unchanged, not restarted")
    {
        ensure!(
            Instant::now() < deadline,
            "the gateway must say its binary is unchanged:\n{}",
            kdev.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (o1, _) = starts(&pods, &orders_pod).await?;
    let (g1, gpid1) = starts(&pods, &gateway_pod).await?;
    ensure!(o1 == o0 + 1, "orders restarted once: {o0} → {o1}");
    ensure!(
        (g1, gpid1) == (g0, gpid),
        "the gateway was not restarted: starts {g0} → {g1}, pid {gpid} → {gpid1}"
    );
    ensure!(
        kdev.output()
            .lines()
            .any(|l| l.starts_with("gateway") && l.contains("unchanged, not restarted")),
        "the gateway's reload line says so:\n{}",
        kdev.output()
    );

    // A change in the shared package reloads both.
    set_const(&project, "internal/version/version.go", "Version", "2.0.0")?;
    let t = Instant::now();
    let both = wait_answer(gw, "the new version", Duration::from_secs(90), &kdev, |v| {
        v["version"] == "2.0.0" && v["orders"]["version"] == "2.0.0"
    })
    .await?;
    eprintln!(
        "a shared-package edit was served by both after {:?}",
        t.elapsed()
    );
    ensure!(both["orders"]["message"] == "two orders", "{both}");
    let (o2, _) = starts(&pods, &orders_pod).await?;
    let (g2, _) = starts(&pods, &gateway_pod).await?;
    ensure!(
        o2 == o1 + 1 && g2 == g1 + 1,
        "both restarted: orders {o1} → {o2}, gateway {g1} → {g2}"
    );
    assert_tree(&pods, &orders_pod, &project).await?;
    assert_tree(&pods, &gateway_pod, &project).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_owner_reaches_their_own_copies_and_the_shared_backend_stays_shared() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-team-shop").await?;
    // The team's shared orders, applied as its manifest says (not by kdev).
    let text = std::fs::read_to_string(repo_root().join("examples/shop/k8s/orders.yaml"))?;
    for doc in text.split("\n---") {
        let value: serde_json::Value = match yaml_serde::from_str(doc) {
            Ok(v) => v,
            Err(_) => continue,
        };
        match value["kind"].as_str() {
            Some("Deployment") => {
                Api::<Deployment>::namespaced(client.clone(), ns.name())
                    .create(&PostParams::default(), &serde_json::from_value(value)?)
                    .await?;
            }
            Some("Service") => {
                Api::<Service>::namespaced(client.clone(), ns.name())
                    .create(&PostParams::default(), &serde_json::from_value(value)?)
                    .await?;
            }
            _ => {}
        }
    }
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for (owner, message, only_gateway) in [
        ("alice", Some("alice's orders"), false),
        ("bob", Some("bob's orders"), false),
        ("carol", None, true),
    ] {
        let (gw, op) = (free_port(), free_port());
        let project = shop_project(&dir.path().join(owner), ns.name(), gw, op)?;
        if let Some(m) = message {
            set_const(&project, "cmd/orders/main.go", "ordersMessage", m)?;
        }
        let args: &[&str] = if only_gateway { &["gateway"] } else { &[] };
        let kdev = watch(&project, owner, args)?;
        runs.push((owner, message, gw, project, kdev));
    }
    for (owner, message, gw, _, kdev) in &runs {
        let want = message.unwrap_or("no orders yet");
        let answer = wait_answer(
            *gw,
            &format!("{owner}'s gateway"),
            Duration::from_secs(300),
            kdev,
            |v| v["orders"]["message"] == want,
        )
        .await?;
        eprintln!("{owner}'s gateway reaches {}", answer["orders"]["message"]);
    }
    // Several answers in a row, so a Service that also selected someone else's copy would show.
    for (owner, message, gw, _, kdev) in &runs {
        let want = message.unwrap_or("no orders yet");
        for _ in 0..10 {
            wait_answer(
                *gw,
                &format!("{owner}'s gateway"),
                Duration::from_secs(5),
                kdev,
                |v| v["orders"]["message"] == want,
            )
            .await?;
        }
    }
    // alice stops and runs `kdev down`: bob's services keep serving.
    let (_, _, _, alice_project, alice) = runs.remove(0);
    drop(alice);
    let down = Command::new(kdev_bin())
        .args(["down", "--owner", "alice"])
        .current_dir(&alice_project)
        .output()?;
    ensure!(
        down.status.success(),
        "kdev down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let (_, _, bob_gw, _, bob) = &runs[0];
    for _ in 0..10 {
        wait_answer(
            *bob_gw,
            "bob's gateway after alice's down",
            Duration::from_secs(10),
            bob,
            |v| v["orders"]["message"] == "bob's orders",
        )
        .await?;
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns.name());
    let names: Vec<String> = deployments
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    ensure!(
        !names.iter().any(|n| n.ends_with("-alice")),
        "alice's copies are gone: {names:?}"
    );
    ensure!(
        names.contains(&"orders".to_string()) && names.contains(&"orders-bob".to_string()),
        "the shared orders and bob's copy stay: {names:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_services_are_refused_before_anything_is_applied() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-badshop").await?;
    let dir = tempfile::tempdir()?;
    let project = shop_project(dir.path(), ns.name(), free_port(), free_port())?;
    let good = std::fs::read_to_string(project.join("kdev.yaml"))?;
    let gateway_port_line = good
        .lines()
        .find(|l| l.contains("run:") && good.find(l) > good.find("name: gateway"))
        .context("the gateway's run line")?
        .to_string();
    let orders_port_line = good
        .lines()
        .find(|l| l.contains("run:"))
        .context("the orders' run line")?
        .to_string();
    let cases = [
        (
            good.replace("name: gateway", "name: orders"),
            "service `orders`: the name is used by two services",
        ),
        (
            good.replace("deployment/gateway", "deployment/payments"),
            "workload deployment/payments is not in the manifests",
        ),
        (
            good.replace(&gateway_port_line, &orders_port_line),
            "is also forwarded for service `orders`",
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(project.join("kdev.yaml"), &yaml)?;
        let out = Command::new(kdev_bin())
            .args(["watch", "--owner", "dev"])
            .current_dir(&project)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.code() == Some(2),
            "a usage error (exit 2) for `{expected}`: {:?}\n{text}",
            out.status
        );
        ensure!(text.contains(expected), "expected `{expected}` in:\n{text}");
        ensure!(!text.contains("applying"), "nothing is applied:\n{text}");
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default())
        .await?;
    ensure!(deployments.items.is_empty(), "nothing was applied");
    Ok(())
}

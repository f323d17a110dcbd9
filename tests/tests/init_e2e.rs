//! End-to-end: `kdev init` on copies of the examples — as they are, with an `.air.toml`, with a
//! Kustomize overlay, with a Helm chart — writes a kdev.yaml with which `kdev watch` serves an
//! edit on the real cluster. Along the way: the Helm and Kustomize render paths (the overlay's
//! patch and the chart's values reach the cluster) and a `build.before` hook (`go generate`
//! writes a file the app serves, and runs again before each build).
//!
//! The only change a test makes to what init wrote is the local port (the suite runs tests in
//! parallel, and init forwards the container's own port number): it first asserts what init
//! wrote, then moves the local side to a free port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kdev_tests::{
    KdevProcess, TOOLCHAIN_IMAGE, TestNamespace, client, copy_dir, free_port, http_get, kdev_bin,
    repo_root, set_const, set_ping_expr, set_ping_message,
};
use kube::api::Api;

/// A copy of `examples/<name>` without its kdev.yaml, in `dir`.
fn copy_example(dir: &Path, name: &str) -> Result<PathBuf> {
    let project = dir.join(name);
    copy_dir(&repo_root().join("examples").join(name), &project)?;
    std::fs::remove_file(project.join("kdev.yaml"))?;
    Ok(project.canonicalize()?)
}

/// `kdev init ARGS` in `project` (stdin not a terminal): its output, or an error with it.
fn init(project: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(kdev_bin())
        .arg("init")
        .args(["--sidecar-image", TOOLCHAIN_IMAGE])
        .args(args)
        .current_dir(project)
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "kdev init failed: {text}");
    Ok(text)
}

/// Replace `from` by `to` in the project's kdev.yaml (which must hold `from`); returns the text
/// as init wrote it.
fn edit_config(project: &Path, from: &str, to: &str) -> Result<String> {
    let path = project.join("kdev.yaml");
    let text = std::fs::read_to_string(&path)?;
    ensure!(text.contains(from), "kdev.yaml has no `{from}`:\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1))?;
    Ok(text)
}

/// `kdev watch` in `project`, in namespace `ns`.
fn watch(project: &Path, ns: &str) -> Result<KdevProcess> {
    KdevProcess::start(project, &["watch", "-n", ns])
}

/// GET `path` on localhost:`port` until the body contains `want`.
async fn wait_body(
    kdev: &KdevProcess,
    port: u16,
    path: &str,
    want: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        let p = path.to_string();
        let got =
            tokio::task::spawn_blocking(move || http_get(port, &p, Duration::from_secs(5))).await?;
        match got {
            Ok(body) if body.contains(want) => return Ok(()),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!(
                "`{want}` not served on {path} within {timeout:?}; last answer: {last}\n\
                 kdev output:\n{}",
                kdev.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Whether a Deployment in `ns` satisfies `check` (what a render put in its metadata).
async fn some_deployment(
    client: &kube::Client,
    ns: &str,
    check: impl Fn(&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool,
) -> Result<bool> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let found = deployments.list(&Default::default()).await?.items;
    Ok(found.iter().any(|d| check(&d.metadata)))
}

const SERVE_TIMEOUT: Duration = Duration::from_secs(180);
const EDIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The single-service example as it is, plus an `.air.toml` whose `pre_cmd` runs `go generate`
/// (the app serves the generated constant) and whose excluded directory and env carry over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_the_gin_example_with_an_air_toml_serves_edits_and_runs_its_hook() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-init-air").await?;
    let dir = tempfile::tempdir()?;
    let project = copy_example(dir.path(), "gin-hello")?;
    std::fs::write(
        project.join(".air.toml"),
        "root = \".\"\ntmp_dir = \"tmp\"\n\n[build]\n\
         cmd = \"go build -o ./tmp/main .\"\n\
         full_bin = \"APP_ENV=dev ./tmp/main\"\n\
         exclude_dir = [\"tmp\", \"assets\"]\n\
         pre_cmd = [\"go generate ./...\"]\n",
    )?;
    // `go generate` writes zz_generated.go (in the pod only) from stamp.txt.
    std::fs::write(
        project.join("gen.go"),
        "package main\n\n//go:generate sh -c \"printf 'package main\\n\\nconst generated = \\\"%s\\\"\\n' \\\"$(cat stamp.txt)\\\" > zz_generated.go\"\n",
    )?;
    std::fs::write(project.join("stamp.txt"), "generated-1")?;
    set_ping_expr(&project, "generated")?;

    let said = init(&project, &[])?;
    ensure!(said.contains("deployment/gin-hello built from ."), "{said}");
    let written = edit_config(&project, "ports: [\"8080\"]", "ports: [\"PORT:8080\"]")?;
    for want in [
        "# yaml-language-server: $schema=.kdev/kdev.schema.json",
        "workload: deployment/gin-hello",
        "- \"go generate ./...\"",
        "exclude: [/tmp/, /assets/]",
        "APP_ENV: \"dev\"",
    ] {
        ensure!(
            written.contains(want),
            "kdev.yaml lacks `{want}`:\n{written}"
        );
    }
    ensure!(project.join(".kdev/kdev.schema.json").is_file());
    let port = free_port();
    edit_config(&project, "PORT:8080", &format!("{port}:8080"))?;

    let kdev = watch(&project, ns.name())?;
    wait_body(&kdev, port, "/ping", "generated-1", SERVE_TIMEOUT).await?;
    // The hook runs before every build: a new stamp is a new constant.
    std::fs::write(project.join("stamp.txt"), "generated-2")?;
    wait_body(&kdev, port, "/ping", "generated-2", EDIT_TIMEOUT).await?;
    // An ordinary edit still works, and a second init refuses to replace the file.
    set_ping_message(&project, "after-init")?;
    wait_body(&kdev, port, "/ping", "after-init", EDIT_TIMEOUT).await?;
    let again = Command::new(kdev_bin())
        .arg("init")
        .current_dir(&project)
        .output()?;
    ensure!(again.status.code() == Some(2), "{again:?}");
    ensure!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    Ok(())
}

/// The two-service example: init pairs both workloads with their packages and moves the second
/// one's local port; an orders edit is served through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_the_shop_example_writes_both_services() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-init-shop").await?;
    let dir = tempfile::tempdir()?;
    let project = copy_example(dir.path(), "shop")?;
    let said = init(&project, &[])?;
    ensure!(
        said.contains("deployment/gateway built from ./cmd/gateway")
            && said.contains("deployment/orders built from ./cmd/orders"),
        "{said}"
    );
    let (gateway, orders) = (free_port(), free_port());
    let written = edit_config(
        &project,
        "ports: [\"8080\"]",
        &format!("ports: [\"{gateway}:8080\"]"),
    )?;
    ensure!(
        written.contains("services:\n  - name: gateway"),
        "{written}"
    );
    edit_config(
        &project,
        "ports: [\"8081:8080\"]",
        &format!("ports: [\"{orders}:8080\"]"),
    )?;

    let kdev = watch(&project, ns.name())?;
    wait_body(
        &kdev,
        gateway,
        "/orders",
        "\"service\":\"gateway\"",
        SERVE_TIMEOUT,
    )
    .await?;
    set_const(&project, "cmd/orders/main.go", "ordersMessage", "from-init")?;
    wait_body(&kdev, gateway, "/orders", "from-init", EDIT_TIMEOUT).await?;
    wait_body(&kdev, orders, "/orders", "from-init", EDIT_TIMEOUT).await?;
    Ok(())
}

/// The gin example's manifests as a Kustomize base and a dev overlay that patches the
/// Deployment: init picks the overlay, and the patch reaches the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_a_kustomize_overlay_renders_it_and_serves_an_edit() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-init-kust").await?;
    let dir = tempfile::tempdir()?;
    let project = copy_example(dir.path(), "gin-hello")?;
    let k8s = project.join("k8s");
    std::fs::create_dir_all(k8s.join("base"))?;
    std::fs::create_dir_all(k8s.join("overlays/dev"))?;
    std::fs::rename(k8s.join("gin-hello.yaml"), k8s.join("base/gin-hello.yaml"))?;
    std::fs::write(
        k8s.join("base/kustomization.yaml"),
        "resources: [gin-hello.yaml]\n",
    )?;
    std::fs::write(
        k8s.join("overlays/dev/kustomization.yaml"),
        "resources: [../../base]\n\
         patches:\n  - target: {kind: Deployment, name: gin-hello}\n    patch: |-\n\
         \x20     - op: add\n        path: /metadata/annotations\n        value: {overlay: dev}\n",
    )?;
    let said = init(&project, &[])?;
    ensure!(
        said.contains("Kustomize directory k8s/overlays/dev"),
        "{said}"
    );
    let port = free_port();
    let written = edit_config(
        &project,
        "ports: [\"8080\"]",
        &format!("ports: [\"{port}:8080\"]"),
    )?;
    ensure!(
        written.contains("- kustomize: k8s/overlays/dev"),
        "{written}"
    );

    let kdev = watch(&project, ns.name())?;
    set_ping_message(&project, "kustomized")?;
    wait_body(&kdev, port, "/ping", "kustomized", SERVE_TIMEOUT).await?;
    ensure!(
        some_deployment(&client, ns.name(), |m| m
            .annotations
            .as_ref()
            .is_some_and(|a| a.get("overlay").map(String::as_str) == Some("dev")))
        .await?,
        "the overlay's patch did not reach the cluster"
    );
    Ok(())
}

/// The gin example's manifests as a Helm chart in deploy/chart (names from the release, the
/// port and a label from values): init finds it, `helm template` renders it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_a_helm_chart_renders_it_and_serves_an_edit() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-init-helm").await?;
    let dir = tempfile::tempdir()?;
    let project = copy_example(dir.path(), "gin-hello")?;
    let chart = project.join("deploy/chart");
    std::fs::create_dir_all(chart.join("templates"))?;
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: gin-hello\nversion: 0.1.0\n",
    )?;
    std::fs::write(chart.join("values.yaml"), "port: 8080\nteam: payments\n")?;
    let manifest = std::fs::read_to_string(project.join("k8s/gin-hello.yaml"))?
        .replace(
            "name: gin-hello\n  labels:",
            "name: {{ .Release.Name }}-web\n  labels:\n    team: {{ .Values.team }}",
        )
        .replace("containerPort: 8080", "containerPort: {{ .Values.port }}");
    std::fs::write(chart.join("templates/app.yaml"), manifest)?;
    std::fs::remove_dir_all(project.join("k8s"))?;

    let said = init(&project, &[])?;
    ensure!(
        said.contains("Helm chart deploy/chart") && said.contains("deployment/gin-hello-web"),
        "{said}"
    );
    let port = free_port();
    edit_config(
        &project,
        "ports: [\"8080\"]",
        &format!("ports: [\"{port}:8080\"]"),
    )?;

    let kdev = watch(&project, ns.name())?;
    set_ping_message(&project, "charted")?;
    wait_body(&kdev, port, "/ping", "charted", SERVE_TIMEOUT).await?;
    ensure!(
        some_deployment(&client, ns.name(), |m| m
            .labels
            .as_ref()
            .is_some_and(|l| l.get("team").map(String::as_str) == Some("payments")))
        .await?,
        "the chart's values did not reach the cluster"
    );
    Ok(())
}

/// A chart that does not render: init (and watch) stop, naming the command and its stderr.
#[test]
fn a_chart_that_does_not_render_is_named_with_helms_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let project = copy_example(dir.path(), "gin-hello")?;
    std::fs::remove_dir_all(project.join("k8s"))?;
    let chart = project.join("deploy/chart");
    std::fs::create_dir_all(chart.join("templates"))?;
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: x\nversion: 0.1.0\n",
    )?;
    std::fs::write(
        chart.join("templates/app.yaml"),
        "kind: {{ .Values.nope.deeper }}\n",
    )?;
    let out = Command::new(kdev_bin())
        .arg("init")
        .current_dir(&project)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "init succeeded on a broken chart");
    ensure!(
        err.contains("`helm template gin-hello deploy/chart --namespace default`")
            && err.contains("nil pointer evaluating"),
        "{err}"
    );
    ensure!(!project.join("kdev.yaml").exists(), "nothing is written");
    Ok(())
}

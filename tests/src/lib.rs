//! Shared helpers for kdev's end-to-end tests, which run against a real Kubernetes cluster
//! (`tests/cluster/up` starts one on this machine; any cluster named by `KUBECONFIG` works).
//!
//! Tests never skip: without a reachable cluster they fail and say how to start one.

pub mod browser;
pub mod dap;
pub mod dlv_connect;
pub mod module_proxy;
pub mod netfault;
pub mod tmux;
pub mod watch;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, AttachParams, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The sidecar image: Go toolchain, Delve, busybox (sh, tar). Built by tests/cluster/build-images.
pub const TOOLCHAIN_IMAGE: &str = "kdev.local/go-toolchain:dev";
/// The same without Delve (/go/bin/dlv deleted by one layer on top; otherwise the same config).
pub const TOOLCHAIN_NODLV_IMAGE: &str = "kdev.local/go-toolchain-nodlv:dev";
/// The example Gin service, built static into an image with no shell.
pub const APP_IMAGE: &str = "kdev.local/gin-hello:dev";

/// A client for the cluster named by `KUBECONFIG` (or the default kubeconfig), with an error
/// that says how to get one when there is none.
pub async fn client() -> Result<Client> {
    let client = Client::try_default().await.context(
        "no Kubernetes cluster configured: start the test cluster with `sudo tests/cluster/up` \
         and export the KUBECONFIG it prints, or point KUBECONFIG at another cluster",
    )?;
    client.apiserver_version().await.context(
        "the Kubernetes API server named by KUBECONFIG does not answer; is the cluster up?",
    )?;
    Ok(client)
}

/// Set to `1`, test namespaces are kept instead of deleted, for inspecting what a failing test
/// left. Tests return `Result`, so a namespace's drop cannot tell a pass from a failure: every
/// namespace of the run is kept. Run the failing test alone with it.
pub const KEEP_NAMESPACES_ENV: &str = "KDEV_KEEP_NAMESPACES";

/// Whether `KDEV_KEEP_NAMESPACES=1` asks to keep test namespaces.
fn keep_namespaces() -> bool {
    std::env::var(KEEP_NAMESPACES_ENV).is_ok_and(|v| v == "1")
}

/// A uniquely named namespace that is deleted when the value is dropped, so a failing test does
/// not leave its pods behind (unless `KDEV_KEEP_NAMESPACES=1`: see [`KEEP_NAMESPACES_ENV`]).
pub struct TestNamespace {
    client: Client,
    name: String,
}

impl TestNamespace {
    /// Create `<prefix>-<random>` and wait for its default ServiceAccount (pods cannot be created
    /// before the controller-manager has made it).
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": { "kdev.dev/test": "true" } }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let this = TestNamespace {
            client: client.clone(),
            name,
        };
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &this.name);
        poll_until(
            Duration::from_secs(60),
            "the namespace's default ServiceAccount",
            || {
                let sas = sas.clone();
                async move { Ok(sas.get_opt("default").await?.is_some()) }
            },
        )
        .await?;
        Ok(this)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if keep_namespaces() {
            // Not eprintln!, which the test harness captures for passing tests: the names are
            // wanted whatever the outcome.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "kept namespace {} for inspection",
                self.name
            );
            return;
        }
        let client = self.client.clone();
        let name = self.name.clone();
        // Drop cannot be async; delete from a thread with its own runtime and wait for the
        // request (not for the namespace to finish terminating).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::background())
                        .await;
                });
            }
        })
        .join();
    }
}

/// Poll `check` every 200 ms until it returns true, or fail after `timeout` naming `what`.
pub async fn poll_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the pod is Running with every container ready, or fail with its status.
pub async fn wait_pod_running(pods: &Api<Pod>, name: &str, timeout: Duration) -> Result<Pod> {
    let running = await_condition(pods.clone(), name, conditions::is_pod_running());
    match tokio::time::timeout(timeout, running).await {
        Ok(Ok(Some(pod))) => Ok(pod),
        Ok(Ok(None)) => bail!("pod {name} was deleted while waiting for it to run"),
        Ok(Err(e)) => Err(e).context(format!("watching pod {name}")),
        Err(_) => {
            let pod = pods.get(name).await?;
            bail!(
                "pod {name} not running after {timeout:?}: {}",
                serde_json::to_string_pretty(&pod.status).unwrap_or_default()
            )
        }
    }
}

/// What a command run through `exec` produced.
#[derive(Debug)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `Success` or `Failure` as the API server reported it.
    pub status: String,
    pub message: Option<String>,
}

impl ExecOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Fail with the command's stderr unless it succeeded.
    pub fn ok(self) -> Result<Self> {
        if self.status == "Success" {
            Ok(self)
        } else {
            bail!(
                "command failed ({}): {}; stderr: {}",
                self.status,
                self.message.as_deref().unwrap_or(""),
                String::from_utf8_lossy(&self.stderr)
            )
        }
    }
}

/// Run `command` in a container through the exec API, feeding it `stdin` if given.
///
/// kube's exec needs care: stdout and stderr must be drained while stdin is written (or the
/// stream stalls once a buffer fills), stdin must be shut down explicitly (dropping the writer
/// does not send EOF), and the `AttachedProcess` must be kept until its status has arrived.
pub async fn exec(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[&str],
    stdin: Option<&[u8]>,
) -> Result<ExecOutput> {
    let params = AttachParams::default()
        .container(container)
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true);
    let mut proc = pods
        .exec(
            pod,
            command.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &params,
        )
        .await
        .with_context(|| format!("exec {command:?} in {pod}/{container}"))?;
    let mut out = proc.stdout().context("no stdout stream")?;
    let mut err = proc.stderr().context("no stderr stream")?;
    let status = proc.take_status().context("no status stream")?;
    let read_out = tokio::spawn(async move {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).await.map(|_| buf)
    });
    let read_err = tokio::spawn(async move {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).await.map(|_| buf)
    });
    if let Some(input) = stdin {
        let mut w = proc.stdin().context("no stdin stream")?;
        w.write_all(input)
            .await
            .context("writing to the command's stdin")?;
        w.shutdown().await.context("closing the command's stdin")?;
    }
    let status = status.await;
    let stdout = read_out.await??;
    let stderr = read_err.await??;
    proc.join().await.context("exec stream")?;
    let (status, message) = match status {
        Some(s) => (s.status.unwrap_or_default(), s.message),
        None => (
            "Unknown".to_string(),
            Some("the exec stream ended without a status".into()),
        ),
    };
    Ok(ExecOutput {
        stdout,
        stderr,
        status,
        message,
    })
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

/// The `kdev` binary next to the running test's (cargo puts both under target/<profile>/).
pub fn kdev_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("kdev");
    assert!(
        bin.is_file(),
        "{} not built: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// The repository's root. From the variable cargo sets when it runs a test, before the path
/// compiled in: checkouts that share a target directory (CI clones and a working copy) can
/// share test binaries too, since cargo names them independently of the checkout's path.
pub fn repo_root() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Copy a directory tree (files and directories only).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// A localhost port that was free a moment ago, below the kernel's ephemeral range: a port
/// picked by binding port 0 comes from that range, and an outgoing connection of any process
/// (kdev's own connections to the API server, a parallel test's) may take it before the test's
/// kdev binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread over 20000..32000, starting at a place that differs between test processes.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (rand_u32() % 12_000) as u16;
    for _ in 0..12_000 {
        let offset = NEXT.fetch_add(7, Ordering::Relaxed);
        let port = 20_000 + (base - 20_000 + offset) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// A copy of examples/gin-hello under `dir`, with a kdev.yaml for the test cluster that deploys
/// into `namespace` and forwards the app to localhost:`http_port`. Returns its (canonical) root.
pub fn example_project(
    dir: &std::path::Path,
    namespace: &str,
    http_port: u16,
) -> Result<std::path::PathBuf> {
    example_copy(
        dir,
        "gin-hello",
        &format!(
            "manifests: [k8s/]\nnamespace: {namespace}\nsidecar:\n  image: {TOOLCHAIN_IMAGE}\n\
             run:\n  ports: [\"{http_port}:8080\"]\n"
        ),
    )
}

/// A copy of examples/`name` under `dir` with `kdev_yaml` as its kdev.yaml; its canonical root.
fn example_copy(dir: &std::path::Path, name: &str, kdev_yaml: &str) -> Result<std::path::PathBuf> {
    let project = dir.join(name);
    copy_dir(&repo_root().join("examples").join(name), &project)?;
    std::fs::write(project.join("kdev.yaml"), kdev_yaml)?;
    Ok(project.canonicalize()?)
}

/// A copy of examples/shop under `dir` with a kdev.yaml for the test cluster: its two services
/// (orders, gateway) in `namespace`, each forwarded to its localhost port.
pub fn shop_project(
    dir: &std::path::Path,
    namespace: &str,
    gateway_port: u16,
    orders_port: u16,
) -> Result<std::path::PathBuf> {
    example_copy(
        dir,
        "shop",
        &format!(
            "manifests: [k8s/]\nnamespace: {namespace}\nservices:\n\
             \x20 - name: orders\n    workload: deployment/orders\n    build: {{package: ./cmd/orders}}\n\
             \x20   run: {{ports: [\"{orders_port}:8080\"]}}\n    sidecar: {{image: {img}}}\n\
             \x20 - name: gateway\n    workload: deployment/gateway\n    build: {{package: ./cmd/gateway}}\n\
             \x20   run: {{ports: [\"{gateway_port}:8080\"]}}\n    sidecar: {{image: {img}}}\n",
            img = TOOLCHAIN_IMAGE
        ),
    )
}

/// Start `cmd` with stdout and stderr collected (and echoed to the test's stderr as `kdev| …`).
pub fn spawn_captured(
    cmd: &mut std::process::Command,
) -> Result<(
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
)> {
    use std::io::{BufRead, BufReader, Read};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting kdev")?;
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped")),
        Box::new(child.stderr.take().expect("piped")),
    ];
    for stream in streams {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("kdev| {line}");
                let mut o = output.lock().unwrap_or_else(|e| e.into_inner());
                o.push_str(&line);
                o.push('\n');
            }
        });
    }
    Ok((child, output))
}

/// `GET path` on `127.0.0.1:port` over HTTP/1.0; the whole response (status line, headers,
/// body). Blocking, so a test can hold a request open on a thread (e.g. while a debugger has the
/// handler stopped); async tests call it through `spawn_blocking`.
pub fn http_get(port: u16, path: &str, read_timeout: Duration) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )?;
    s.set_read_timeout(Some(read_timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The regular files of a tar (as `tar -c -C DIR .` writes it): path without `./` →
/// (content, permission bits).
pub fn tar_files(data: &[u8]) -> Result<std::collections::BTreeMap<String, (Vec<u8>, u32)>> {
    let mut files = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(data).entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mode = entry.header().mode()? & 0o777;
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content)?;
        files.insert(path, (content, mode));
    }
    Ok(files)
}

/// Rewrite the example's `const pingMessage = …` line in `project`'s main.go to
/// `const pingMessage = <go_expr>` (any Go expression, or something that does not compile).
pub fn set_ping_expr(project: &std::path::Path, go_expr: &str) -> Result<()> {
    set_const_expr(project, "main.go", "pingMessage", go_expr)
}

/// `go mod vendor` in `project`, through the module proxy.
pub fn go_mod_vendor(project: &std::path::Path) -> Result<()> {
    let out = std::process::Command::new("go")
        .args(["mod", "vendor"])
        .current_dir(project)
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("running go mod vendor (needs Go and the module proxy)")?;
    anyhow::ensure!(
        out.status.success(),
        "go mod vendor: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Replace the `const NAME = ...` line of `file` in `project` by `const NAME = "value"`.
pub fn set_const(project: &std::path::Path, file: &str, name: &str, value: &str) -> Result<()> {
    set_const_expr(project, file, name, &format!("\"{value}\""))
}

/// Rewrite the line `const <name> = …` in `project`'s `file` to `const <name> = <go_expr>`.
fn set_const_expr(project: &std::path::Path, file: &str, name: &str, go_expr: &str) -> Result<()> {
    let path = project.join(file);
    let text = std::fs::read_to_string(&path)?;
    let start = text
        .find(&format!("const {name} = "))
        .with_context(|| format!("no `const {name} = ` line in {file}"))?;
    let end = start + text[start..].find('\n').context("no newline after it")?;
    std::fs::write(
        &path,
        format!("{}const {name} = {go_expr}{}", &text[..start], &text[end..]),
    )?;
    Ok(())
}

/// `kdev ARGS` running in a project, its output collected (and echoed as `kdev| …`); killed on
/// drop.
pub struct KdevProcess {
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl KdevProcess {
    pub fn start(project: &std::path::Path, args: &[&str]) -> Result<KdevProcess> {
        let mut cmd = std::process::Command::new(kdev_bin());
        cmd.args(args).current_dir(project);
        KdevProcess::spawn(&mut cmd)
    }

    /// `cmd` (another kdev binary, say) run the same way.
    pub fn spawn(cmd: &mut std::process::Command) -> Result<KdevProcess> {
        let (child, output) = spawn_captured(cmd)?;
        Ok(KdevProcess { child, output })
    }

    /// Kill it, wait for it, and return all it printed.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for KdevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Make the example answer `{"message":"<msg>"}` on GET /ping.
pub fn set_ping_message(project: &std::path::Path, msg: &str) -> Result<()> {
    set_ping_expr(project, &format!("\"{msg}\""))
}

/// Each container's restart count (init containers, e.g. native sidecars, included).
pub fn restart_counts(pod: &Pod) -> std::collections::BTreeMap<String, i32> {
    let s = pod.status.clone().unwrap_or_default();
    s.init_container_statuses
        .into_iter()
        .flatten()
        .chain(s.container_statuses.into_iter().flatten())
        .map(|c| (c.name, c.restart_count))
        .collect()
}

/// `GET <path>` (HTTP/1.0) to `port` of `pod` through a port-forward; the whole response.
pub async fn http_get_via_portforward(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
    path: &str,
) -> Result<String> {
    let mut pf = pods.portforward(pod, &[port]).await?;
    let mut stream = pf.take_stream(port).context("no stream for the port")?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    drop(stream);
    // Once the pod side has closed the connection, kube's forwarder may report "sending after
    // closing" on join; the response has been read in full by then, so that is not a failure.
    let _ = pf.join().await;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

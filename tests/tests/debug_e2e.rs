//! End-to-end: `kdev debug` on a copy of examples/gin-hello. A Delve JSON-RPC client on the
//! forwarded port sets a breakpoint in the /ping handler by LOCAL path (mapped through the
//! printed launch.json's substitutePath, as an editor would), sees it hit with the handler's
//! argument, continues, and gets the response; after a save, the same works on the new code.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kdev_tests::{
    TOOLCHAIN_IMAGE, TOOLCHAIN_NODLV_IMAGE, TestNamespace, client, example_project, exec,
    free_port, http_get, kdev_bin, poll_until, set_ping_message, spawn_captured,
};
use serde_json::{Value, json};

struct Debug {
    child: Child,
    output: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
    project: PathBuf,
    http_port: u16,
    dlv_port: u16,
}

impl Drop for Debug {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Debug {
    fn start(namespace: &str) -> Result<Debug> {
        Self::start_with_image(namespace, None)
    }

    /// With `image` as the sidecar instead of the toolchain image.
    fn start_with_image(namespace: &str, image: Option<&str>) -> Result<Debug> {
        let dir = tempfile::tempdir()?;
        let (http_port, dlv_port) = (free_port(), free_port());
        let project = example_project(dir.path(), namespace, http_port)?;
        if let Some(image) = image {
            let yaml = std::fs::read_to_string(project.join("kdev.yaml"))?;
            let yaml = yaml.replace(TOOLCHAIN_IMAGE, image);
            std::fs::write(project.join("kdev.yaml"), yaml)?;
        }
        let (child, output) = spawn_captured(
            Command::new(kdev_bin())
                .args(["debug", "--port", &dlv_port.to_string()])
                .current_dir(&project)
                .stdin(Stdio::null()),
        )?;
        Ok(Debug {
            child,
            output,
            _dir: dir,
            project,
            http_port,
            dlv_port,
        })
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn set_message(&self, msg: &str) {
        set_ping_message(&self.project, msg).unwrap();
    }

    /// The launch.json entry kdev printed.
    fn launch_json(&self) -> Result<Value> {
        let out = self.output();
        let start = out
            .find("VS Code (.vscode/launch.json")
            .context("no launch.json printed")?;
        let json_start = start
            + out[start..]
                .find('{')
                .context("no JSON after the heading")?;
        let json_end = json_start + out[json_start..].find("\n}").context("unterminated JSON")? + 2;
        serde_json::from_str(&out[json_start..json_end])
            .context("the printed launch.json is not valid JSON")
    }
}

async fn wait_served(d: &Debug, message: &str, timeout: Duration) -> Result<()> {
    let want = format!(r#"{{"message":"{message}"}}"#);
    let port = d.http_port;
    poll_until(timeout, &format!("{want} on /ping"), || {
        let want = want.clone();
        async move {
            let body = tokio::task::spawn_blocking(move || {
                http_get(port, "/ping", Duration::from_secs(60))
            })
            .await?;
            Ok(body.map(|b| b.contains(&want)).unwrap_or(false))
        }
    })
    .await
    .with_context(|| d.output())
}

/// A minimal Delve JSON-RPC (API v2) client.
struct Delve {
    conn: TcpStream,
    reader: serde_json::StreamDeserializer<'static, serde_json::de::IoRead<TcpStream>, Value>,
    id: u64,
}

impl Delve {
    fn connect(port: u16) -> Result<Delve> {
        let conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.set_read_timeout(Some(Duration::from_secs(120)))?;
        let reader = serde_json::Deserializer::from_reader(conn.try_clone()?).into_iter();
        Ok(Delve {
            conn,
            reader,
            id: 0,
        })
    }

    fn send(&mut self, method: &str, params: Value) -> Result<u64> {
        self.id += 1;
        let req =
            json!({ "method": format!("RPCServer.{method}"), "params": [params], "id": self.id });
        self.conn
            .write_all(serde_json::to_string(&req)?.as_bytes())?;
        Ok(self.id)
    }

    fn recv(&mut self, id: u64) -> Result<Value> {
        loop {
            let msg = self
                .reader
                .next()
                .context("Delve closed the connection")??;
            if msg["id"] == id {
                if !msg["error"].is_null() {
                    bail!("Delve error: {}", msg["error"]);
                }
                return Ok(msg["result"].clone());
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.send(method, params)?;
        self.recv(id)
    }
}

/// Break in the /ping handler (set by local path, mapped like an editor would), request /ping,
/// check the stop and the handler's argument, continue, and check the response.
fn breakpoint_round_trip(d: &Debug, launch: &Value, expected: &str) -> Result<()> {
    let local_main = d.project.join("main.go");
    let line = std::fs::read_to_string(&local_main)?
        .lines()
        .position(|l| l.contains("\"message\": pingMessage"))
        .context("no c.JSON line in the ping handler")?
        + 1;
    let from = launch["substitutePath"][0]["from"]
        .as_str()
        .context("no substitutePath.from")?;
    let to = launch["substitutePath"][0]["to"]
        .as_str()
        .context("no substitutePath.to")?;
    let remote_file = local_main.to_string_lossy().replacen(from, to, 1);

    let mut dlv = Delve::connect(d.dlv_port)?;
    dlv.call("Command", json!({ "name": "halt" }))?;
    let bp = dlv.call(
        "CreateBreakpoint",
        json!({ "Breakpoint": { "file": remote_file, "line": line } }),
    )?;
    ensure!(
        bp["Breakpoint"]["line"] == line,
        "breakpoint not where asked: {bp}"
    );
    let cont = dlv.send("Command", json!({ "name": "continue" }))?;

    let port = d.http_port;
    let request = std::thread::spawn(move || http_get(port, "/ping", Duration::from_secs(60)));
    let state = dlv.recv(cont)?;
    let thread = &state["State"]["currentThread"];
    ensure!(
        thread["line"] == line && thread["file"] == remote_file.as_str(),
        "stopped elsewhere: {state}"
    );
    let args = dlv.call(
        "ListFunctionArgs",
        json!({
            "Scope": { "GoroutineID": -1, "Frame": 0, "DeferredCall": 0 },
            "Cfg": { "FollowPointers": false, "MaxVariableRecurse": 0, "MaxStringLen": 64, "MaxArrayValues": 8, "MaxStructFields": 0 }
        }),
    )?;
    let names: Vec<_> = args["Args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str())
        .collect();
    ensure!(
        names.contains(&"c"),
        "the handler's argument `c` is not visible: {args}"
    );
    // Clear the breakpoint and let the request finish.
    dlv.call("ClearBreakpoint", json!({ "Id": bp["Breakpoint"]["id"] }))?;
    dlv.send("Command", json!({ "name": "continue" }))?;
    let body = request.join().unwrap()?;
    ensure!(
        body.contains(&format!(r#"{{"message":"{expected}"}}"#)),
        "unexpected response: {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_hits_breakpoints_before_and_after_a_save() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-debug").await?;
    let d = Debug::start(ns.name())?;

    wait_served(&d, "pong", Duration::from_secs(240)).await?;
    poll_until(Duration::from_secs(60), "the editor configuration", || {
        let out = d.output();
        async move { Ok(out.contains("GoLand:")) }
    })
    .await?;
    let launch = d.launch_json()?;
    ensure!(
        launch["mode"] == "remote" && launch["port"] == d.dlv_port,
        "{launch}"
    );
    ensure!(
        launch["substitutePath"][0]["from"] == d.project.to_string_lossy().as_ref(),
        "{launch}"
    );
    ensure!(launch["substitutePath"][0]["to"] == "/kdev/src", "{launch}");

    let launch2 = launch.clone();
    let dd = &d;
    tokio::task::block_in_place(|| breakpoint_round_trip(dd, &launch2, "pong"))?;

    // A save rebuilds and restarts the app under a new Delve (the documented default); the
    // debugger re-attaches and the breakpoint works on the new code.
    d.set_message("pong debugged");
    wait_served(&d, "pong debugged", Duration::from_secs(90)).await?;
    poll_until(Duration::from_secs(30), "the re-attach notice", || {
        let out = d.output();
        async move { Ok(out.contains("re-attach")) }
    })
    .await?;
    tokio::task::block_in_place(|| breakpoint_round_trip(dd, &launch, "pong debugged"))?;
    Ok(())
}

/// A sidecar image without `dlv`: kdev builds Delve in the pod with the pod's own Go, every
/// module Delve needs coming from this machine through the session's module proxy (the test
/// cluster's pods have no network), and a breakpoint hits in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delve_is_built_in_a_pod_whose_image_has_none() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-dlvbuild").await?;
    let d = Debug::start_with_image(ns.name(), Some(TOOLCHAIN_NODLV_IMAGE))?;
    wait_served(&d, "pong", Duration::from_secs(420)).await?;
    poll_until(Duration::from_secs(60), "the editor configuration", || {
        let out = d.output();
        async move { Ok(out.contains("GoLand:")) }
    })
    .await?;
    let out = d.output();
    ensure!(
        out.contains("no Delve in kdev.local/go-toolchain-nodlv:dev")
            && out.contains("built Delve"),
        "kdev must say it builds Delve and that it did:\n{out}"
    );
    // The sidecar really has no dlv of its own; the one that runs is the one kdev built.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), ns.name());
    let pod = kdev_tests::watch::dev_pod(&pods).await?;
    let pod = kube::ResourceExt::name_any(&pod);
    let script = "command -v dlv || echo no-dlv-in-image; ls /kdev/cache/tools/; \
                  /kdev/bin/dlv version | head -2";
    let seen = exec(&pods, &pod, "kdev", &["sh", "-c", script], None)
        .await?
        .ok()?
        .stdout_str();
    ensure!(
        seen.contains("no-dlv-in-image")
            && seen.contains("dlv-v")
            && seen.contains("Delve Debugger"),
        "{seen}"
    );
    let launch = d.launch_json()?;
    let dd = &d;
    tokio::task::block_in_place(|| breakpoint_round_trip(dd, &launch, "pong"))?;
    Ok(())
}

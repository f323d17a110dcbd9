//! End-to-end: `kdev debug` on a copy of examples/gin-hello. A JSON-RPC client (as GoLand and
//! `dlv connect` speak to Delve) and then a DAP client (as VS Code attaches) each attach once to
//! kdev's debug endpoint and set a breakpoint in the /ping handler by the pod's path or the
//! LOCAL one (mapped through the printed launch.json's substitutePath, as an editor would); it
//! hits, and after a save it hits again in the new code on the same connection, the new value
//! visible (for DAP, after lines were added above the handler).

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kdev_tests::dap::Dap;
use kdev_tests::dlv_connect::DlvConnect;
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
        // A local variable holds the answer, so a debugger sees the new code's value (Delve
        // cannot evaluate a Go constant).
        let main_go = project.join("main.go");
        let text = std::fs::read_to_string(&main_go)?;
        let text = text.replacen(
            "\tc.JSON(http.StatusOK, gin.H{\"message\": pingMessage})",
            "\tmsg := pingMessage\n\tc.JSON(http.StatusOK, gin.H{\"message\": msg})",
            1,
        );
        ensure!(
            text.contains("msg := pingMessage"),
            "the ping handler changed: {text}"
        );
        std::fs::write(&main_go, text)?;
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

/// The line of `c.JSON` in the /ping handler of the local main.go, and that file as the pod
/// knows it (mapped through the printed launch.json's substitutePath, as an editor would).
fn ping_line(d: &Debug, launch: &Value) -> Result<(i64, String)> {
    let local_main = d.project.join("main.go");
    let line = std::fs::read_to_string(&local_main)?
        .lines()
        .position(|l| l.contains("\"message\": msg"))
        .context("no c.JSON line in the ping handler")?
        + 1;
    let from = launch["substitutePath"][0]["from"]
        .as_str()
        .context("no substitutePath.from")?;
    let to = launch["substitutePath"][0]["to"]
        .as_str()
        .context("no substitutePath.to")?;
    Ok((
        line as i64,
        local_main.to_string_lossy().replacen(from, to, 1),
    ))
}

/// An edit of main.go: `msg` as pingMessage, and `above` comment lines added above the handler.
fn edit_main(d: &Debug, msg: &str, above: usize) -> Result<()> {
    set_ping_message(&d.project, msg)?;
    let path = d.project.join("main.go");
    let text = std::fs::read_to_string(&path)?;
    let text = text.replacen(
        "func ping(",
        &format!("{}func ping(", "// moved down\n".repeat(above)),
        1,
    );
    std::fs::write(&path, text)?;
    Ok(())
}

/// `pingMessage` evaluated where the JSON-RPC client stopped.
fn rpc_ping_message(dlv: &mut Delve) -> Result<String> {
    let v = dlv.call(
        "Eval",
        json!({
            "Scope": { "GoroutineID": -1, "Frame": 0, "DeferredCall": 0 },
            "Expr": "msg",
            "Cfg": { "FollowPointers": false, "MaxVariableRecurse": 0, "MaxStringLen": 64, "MaxArrayValues": 8, "MaxStructFields": 0 }
        }),
    )?;
    Ok(v["Variable"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// The JSON-RPC client (as GoLand and `dlv connect` speak it) on one connection: a breakpoint
/// hits in the first app, then, after a save, in the new one with no new attach and no new
/// breakpoint; the new value is visible.
fn json_rpc_stays_attached(d: &Debug, launch: &Value) -> Result<()> {
    let (line, remote_file) = ping_line(d, launch)?;
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
    let id = bp["Breakpoint"]["id"].clone();
    let cont = dlv.send("Command", json!({ "name": "continue" }))?;
    let port = d.http_port;
    let request = std::thread::spawn(move || http_get(port, "/ping", Duration::from_secs(120)));
    let state = dlv.recv(cont)?;
    let thread = &state["State"]["currentThread"];
    ensure!(
        thread["line"] == line && thread["file"] == remote_file.as_str(),
        "stopped elsewhere: {state}"
    );
    ensure!(rpc_ping_message(&mut dlv)? == "pong");
    let running = dlv.send("Command", json!({ "name": "continue" }))?;
    let body = request.join().unwrap()?;
    ensure!(
        body.contains(r#"{"message":"pong"}"#),
        "unexpected response: {body}"
    );

    // The save: the app is rebuilt and restarted under a new Delve, and kdev sets the
    // breakpoint again in it. The `continue` that was running when the old process went keeps
    // waiting (kdev sends it to the new Delve), and returns when the new process stops.
    let before = d.output().matches("debugger (JSON-RPC): attached").count();
    edit_main(d, "pong debugged", 0)?;
    let t0 = std::time::Instant::now();
    while d.output().matches("debugger (JSON-RPC): attached").count() == before {
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "kdev never set the breakpoint again:\n{}",
            d.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cont = running;
    let request = std::thread::spawn(move || http_get(port, "/ping", Duration::from_secs(120)));
    let state = dlv.recv(cont)?;
    let thread = &state["State"]["currentThread"];
    ensure!(
        thread["line"] == line,
        "stopped elsewhere after the save: {state}"
    );
    ensure!(
        thread["breakPoint"]["id"] == id,
        "the breakpoint keeps its ID across Delves: {state}"
    );
    let value = rpc_ping_message(&mut dlv)?;
    ensure!(
        value == "pong debugged",
        "the new code's value, not {value}"
    );
    dlv.call("ClearBreakpoint", json!({ "Id": id }))?;
    dlv.send("Command", json!({ "name": "continue" }))?;
    let body = request.join().unwrap()?;
    ensure!(
        body.contains(r#"{"message":"pong debugged"}"#),
        "unexpected response: {body}"
    );
    Ok(())
}

/// `pingMessage` evaluated in the frame where the DAP client stopped.
fn dap_ping_message(dap: &mut Dap, stopped: &Value) -> Result<String> {
    let trace = dap.call(
        "stackTrace",
        json!({"threadId": stopped["body"]["threadId"], "levels": 1}),
    )?;
    let frame = trace["body"]["stackFrames"][0]["id"].clone();
    let v = dap.call(
        "evaluate",
        json!({"expression": "msg", "frameId": frame, "context": "watch"}),
    )?;
    Ok(v["body"]["result"].as_str().unwrap_or_default().to_string())
}

/// GET /ping, continuing every stop at the breakpoint (each with `expected` in `msg`) until it
/// is answered: the answer.
fn request_through_stops(dap: &mut Dap, port: u16, expected: &str) -> Result<String> {
    let request = std::thread::spawn(move || http_get(port, "/ping", Duration::from_secs(120)));
    through_stops(dap, request, expected, 1)
}

/// Continue every stop at the breakpoint (each with `expected` in `msg`) until `request` is
/// answered, and at least `min_hits`. Stops are not counted exactly: a request the old app
/// never answered reaches the new one too (the forward relay sends it again after a restart).
fn through_stops(
    dap: &mut Dap,
    request: std::thread::JoinHandle<Result<String>>,
    expected: &str,
    min_hits: usize,
) -> Result<String> {
    let t0 = std::time::Instant::now();
    let mut hits = 0;
    while !request.is_finished() {
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "GET /ping never finished"
        );
        let Ok(stopped) = dap.wait("a stop", Duration::from_millis(500), |m| {
            m["event"] == "stopped"
        }) else {
            continue;
        };
        let value = dap_ping_message(dap, &stopped)?;
        ensure!(
            value == format!("\"{expected}\""),
            "msg is {value}, not {expected:?}"
        );
        hits += 1;
        dap.call("continue", json!({"threadId": stopped["body"]["threadId"]}))?;
    }
    ensure!(hits >= min_hits, "the breakpoint never hit");
    let body = request.join().unwrap()?;
    ensure!(body.contains(expected), "unexpected response: {body}");
    Ok(body)
}

/// Wait until kdev's output holds `needle` more than `before` times.
fn wait_output_count(d: &Debug, needle: &str, before: usize) -> Result<()> {
    let t0 = std::time::Instant::now();
    while d.output().matches(needle).count() <= before {
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "no new {needle:?} in kdev's output:\n{}",
            d.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A DAP client (as VS Code attaches with the printed configuration) on one connection: a hit
/// in the current app, then a save that adds lines above the handler (the editor moves its
/// breakpoint with the text and says so), and a hit in the new code.
fn dap_stays_attached(d: &Debug, launch: &Value) -> Result<()> {
    let (line, _) = ping_line(d, launch)?;
    let local_main = d.project.join("main.go").display().to_string();
    let mut dap = Dap::connect(d.dlv_port)?;
    dap.attach(launch["substitutePath"].clone(), &[(&local_main, &[line])])?;
    let port = d.http_port;
    request_through_stops(&mut dap, port, "pong dlv")?;

    // A save that does not build: the old process stays under the debugger, attached as it
    // was, and its breakpoint still hits with the old value.
    let attached = "debugger (DAP): attached again";
    let before = d.output().matches(attached).count();
    let failed = d.output().matches("build failed").count();
    let main_go = d.project.join("main.go");
    let good = std::fs::read_to_string(&main_go)?;
    std::fs::write(&main_go, format!("{good}\nfunc broken( {{\n"))?;
    wait_output_count(d, "build failed", failed)?;
    request_through_stops(&mut dap, port, "pong dlv")?;
    ensure!(
        d.output().matches(attached).count() == before,
        "a failed build replaced nothing:\n{}",
        d.output()
    );

    // The app stopped at the breakpoint when the next save comes: it is replaced (kdev says
    // so); the editor moves its breakpoint with the 3 lines added above and says so; a request
    // stops in the new code with the new value.
    let request = std::thread::spawn(move || http_get(port, "/ping", Duration::from_secs(120)));
    let stopped = dap.event("stopped", Duration::from_secs(60))?;
    ensure!(dap_ping_message(&mut dap, &stopped)? == "\"pong dlv\"");
    let replaced = "debugger (DAP): the app was stopped in your debugger";
    let was_stopped = d.output().matches(replaced).count();
    std::fs::write(&main_go, &good)?;
    edit_main(d, "pong moved", 3)?;
    dap.set_breakpoints(&local_main, &[line + 3])?;
    dap.wait(
        "the moved breakpoint set in the new app",
        Duration::from_secs(120),
        |m| {
            m["event"] == "breakpoint"
                && m["body"]["breakpoint"]["line"] == line + 3
                && m["body"]["breakpoint"]["verified"] == true
        },
    )
    .with_context(|| d.output())?;
    wait_output_count(d, replaced, was_stopped)?;
    // The request the old process held is sent again to the new one by the forward relay;
    // it may get there before kdev has set the breakpoint again (the new process runs as soon
    // as Delve has started it) or after, and stop in the new code: either is right, so its
    // stops are continued but not counted on (CI saw it stop, and wait there unanswered).
    let old = through_stops(&mut dap, request, "pong moved", 0)?;
    eprintln!("the request the old process held: {old:?}");
    dap.clear();
    let body = request_through_stops(&mut dap, port, "pong moved")?;
    dap.set_breakpoints(&local_main, &[])?;
    ensure!(
        body.contains(r#"{"message":"pong moved"}"#),
        "unexpected response: {body}"
    );
    ensure!(dap.open(), "the editor's connection stayed open");
    Ok(())
}

/// A DAP client attaches, its breakpoint hits with `expected` as pingMessage, it leaves.
fn dap_hits_once(d: &Debug, launch: &Value, expected: &str) -> Result<()> {
    let (line, _) = ping_line(d, launch)?;
    let local_main = d.project.join("main.go").display().to_string();
    let mut dap = Dap::connect(d.dlv_port)?;
    dap.attach(launch["substitutePath"].clone(), &[(&local_main, &[line])])?;
    request_through_stops(&mut dap, d.http_port, expected)?;
    dap.set_breakpoints(&local_main, &[])?;
    Ok(())
}

/// `dlv connect` itself, typed into: a breakpoint by the pod's path hits; `continue`; a save
/// while that `continue` waits; it returns at the breakpoint in the new code, which has the new
/// value, with nothing typed in between.
fn dlv_connect_stays_attached(d: &Debug, launch: &Value) -> Result<()> {
    let (line, remote_file) = ping_line(d, launch)?;
    let wait = Duration::from_secs(60);
    let mut dlv = DlvConnect::start(d.dlv_port)?;
    dlv.type_line(&format!("break {remote_file}:{line}"))?;
    let set = dlv.expect(" set at ", wait)?;
    let id = set
        .rsplit("Breakpoint ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .context("no breakpoint number")?
        .to_string();
    dlv.type_line("continue")?;
    let port = d.http_port;
    let request = std::thread::spawn(move || http_get(port, "/ping", Duration::from_secs(120)));
    dlv.expect(&format!("[Breakpoint {id}] main.ping()"), wait)?;
    dlv.type_line("print msg")?;
    dlv.expect("\"pong debugged\"", wait)?;
    dlv.type_line("continue")?;
    request.join().unwrap()?;

    let before = d
        .output()
        .matches("debugger (JSON-RPC): attached again")
        .count();
    edit_main(d, "pong dlv", 0)?;
    let t0 = std::time::Instant::now();
    while d
        .output()
        .matches("debugger (JSON-RPC): attached again")
        .count()
        == before
    {
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "kdev never set the breakpoint again:\n{}",
            d.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let request = std::thread::spawn(move || http_get(port, "/ping", Duration::from_secs(120)));
    let hit = dlv.expect(
        &format!("[Breakpoint {id}] main.ping()"),
        Duration::from_secs(120),
    )?;
    ensure!(
        !hit.contains("has exited"),
        "the client saw the old process exit:\n{hit}"
    );
    dlv.type_line("print msg")?;
    dlv.expect("\"pong dlv\"", wait)?;
    dlv.type_line(&format!("clear {id}"))?;
    dlv.expect("cleared", wait)?;
    dlv.type_line("continue")?;
    let body = request.join().unwrap()?;
    ensure!(body.contains("pong dlv"), "unexpected response: {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_attach_lasts_across_saves_for_json_rpc_dap_and_dlv_connect() -> Result<()> {
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
    let dd = &d;
    tokio::task::block_in_place(|| json_rpc_stays_attached(dd, &launch))
        .with_context(|| d.output())?;
    // `dlv connect` before the DAP client: after a DAP client's session the process is the
    // one Delve's DAP side runs, and the terminal's first call waits until it stops.
    tokio::task::block_in_place(|| dlv_connect_stays_attached(dd, &launch))
        .with_context(|| d.output())?;
    tokio::task::block_in_place(|| dap_stays_attached(dd, &launch)).with_context(|| d.output())?;
    ensure!(
        !d.output().contains("re-attach"),
        "no re-attach is asked for:\n{}",
        d.output()
    );
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
    tokio::task::block_in_place(|| dap_hits_once(dd, &launch, "pong"))?;
    Ok(())
}

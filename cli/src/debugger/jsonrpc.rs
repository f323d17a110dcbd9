//! A JSON-RPC client's session (GoLand, `dlv connect`), kept across Delves.
//!
//! Delve keeps breakpoints per debugger, not per connection, and a new Delve has none: kdev
//! follows the breakpoints this client created, amended, toggled and cleared, and creates them
//! again in each new Delve **with the same IDs** (Delve takes a requested ID), halting the new
//! process for it. A breakpoint the new code has no place for is created suspended, so it is
//! still listed (with no address) rather than gone. Calls the old Delve never answered are sent
//! again to the new one: a client waiting in `continue` keeps waiting, and its `continue`
//! returns when the new process stops.
//!
//! The new process must run (it serves the app): when the client is not waiting in a command,
//! kdev continues it. Its `continue` then belongs to kdev: the client's next `continue` joins it
//! (answered when it returns), or, if the process stopped meanwhile, is answered at once with
//! that stop, so a breakpoint hit while the client was not waiting is not run past unseen.
//!
//! `Detach` with `Kill` is sent without it: the app's life is kdev's, one client leaving must
//! not end it for everyone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWrite;

use super::keeper::{ClientStep, EXIT_HOLD, Keeper, Replayed, call_timeout};
use super::link::Link;

/// Commands that run the process until it stops.
const RUNNING_COMMANDS: &[&str] = &[
    "continue",
    "next",
    "step",
    "stepOut",
    "stepInstruction",
    "reverseStepInstruction",
    "rewind",
    "call",
];

/// A breakpoint as this client made it, ready to be created again.
#[derive(Debug, Clone)]
struct Kept {
    /// `api.Breakpoint` without what belongs to one process (addresses, hit counts).
    breakpoint: Value,
    /// The location expression it was created from (`main.go:12`, `main.handler`), which a
    /// new binary resolves again.
    loc_expr: String,
    substitute_path_rules: Value,
}

/// The JSON-RPC session of one client connection.
#[derive(Debug, Default)]
pub struct RpcKeeper {
    breakpoints: BTreeMap<i64, Kept>,
    /// Calls sent to the current Delve, unanswered, by their ID's JSON text.
    pending: BTreeMap<String, Value>,
    /// kdev's own `continue` of the current process, while it runs.
    own_continue: Option<String>,
    /// The client's `continue` that joined kdev's.
    joined: Option<Value>,
    /// kdev's `continue` returned (the process stopped) and the client has not seen it.
    unseen_stop: Option<Value>,
    detaching: bool,
    /// The last state Delve gave this client says the process is stopped.
    halted: bool,
    /// The answer to a running command saying the process exited, held back until then
    /// ([`EXIT_HOLD`]); its call stays pending meanwhile, so that a reload sends it again to
    /// the new Delve (the client's `continue` goes on in the new process).
    exited: Option<(Instant, Value)>,
    next_id: u64,
}

fn method(msg: &Value) -> &str {
    msg["method"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("RPCServer.")
}

fn command_name(msg: &Value) -> &str {
    msg["params"][0]["name"].as_str().unwrap_or_default()
}

/// An ID's JSON text (Delve echoes IDs as raw JSON).
fn id_key(id: &Value) -> String {
    id.to_string()
}

/// Whether Delve's answer to a running command says the process exited (a state saying so, or
/// the error Delve gives when the process died under the command).
fn says_exited(answer: &Value) -> bool {
    answer["result"]["State"]["exited"] == true
        || answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("has exited with status"))
}

/// `bp` without what is only true of one process.
fn replayable(bp: &Value) -> Value {
    let mut bp = bp.clone();
    if let Some(o) = bp.as_object_mut() {
        for k in ["addr", "addrs", "addrpid", "hitCount", "totalHitCount"] {
            o.remove(k);
        }
    }
    bp
}

impl RpcKeeper {
    pub fn new() -> RpcKeeper {
        RpcKeeper::default()
    }

    fn own_id(&mut self) -> Value {
        self.next_id += 1;
        json!(format!("kdev-{}", self.next_id))
    }

    /// Follow what an answered call did to the client's breakpoints.
    fn answered(&mut self, req: &Value, resp: &Value) {
        if !resp["error"].is_null() {
            return;
        }
        let result = &resp["result"]["Breakpoint"];
        let id = result["id"].as_i64();
        match (method(req), id) {
            ("CreateBreakpoint", Some(id)) => {
                let p = &req["params"][0];
                let mut bp = replayable(&p["Breakpoint"]);
                bp["id"] = json!(id);
                let loc_expr = p["LocExpr"].as_str().unwrap_or_default().to_string();
                if !loc_expr.is_empty() {
                    // The expression decides the place in each new binary.
                    if let Some(o) = bp.as_object_mut() {
                        for k in ["file", "line", "functionName"] {
                            o.remove(k);
                        }
                    }
                } else {
                    // Without an expression the place is the one Delve resolved.
                    for k in ["file", "line", "functionName"] {
                        if bp[k].is_null() || bp[k] == "" || bp[k] == 0 {
                            bp[k] = result[k].clone();
                        }
                    }
                }
                self.breakpoints.insert(
                    id,
                    Kept {
                        breakpoint: bp,
                        loc_expr,
                        substitute_path_rules: p["SubstitutePathRules"].clone(),
                    },
                );
            }
            ("ClearBreakpoint", Some(id)) => {
                self.breakpoints.remove(&id);
            }
            ("AmendBreakpoint", _) => {
                let bp = replayable(&req["params"][0]["Breakpoint"]);
                if let Some(k) = bp["id"].as_i64().and_then(|i| self.breakpoints.get_mut(&i)) {
                    k.breakpoint = bp;
                }
            }
            ("ToggleBreakpoint", Some(id)) => {
                if let Some(k) = self.breakpoints.get_mut(&id) {
                    k.breakpoint["disabled"] = result["disabled"].clone();
                }
            }
            _ => {}
        }
    }

    /// Send a call of kdev's own to Delve and wait for its answer.
    async fn call<W: AsyncWrite + Unpin>(
        &mut self,
        up: &mut Link<W>,
        name: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.own_id();
        let req = json!({"method": format!("RPCServer.{name}"), "params": [params], "id": id});
        up.send(&req).await.map_err(|e| e.to_string())?;
        call_timeout(async {
            while let Some(m) = up.recv().await {
                if m["id"] == id {
                    return Ok(m);
                }
            }
            Err(format!(
                "Delve closed the connection before answering {name}"
            ))
        })
        .await
    }

    /// Stop the new process (Delve sets breakpoints only in a stopped one). Its `--continue`
    /// may start running it just after a first halt: halt until it stays halted.
    async fn halt<W: AsyncWrite + Unpin>(&mut self, up: &mut Link<W>) -> Result<(), String> {
        for _ in 0..50 {
            self.call(up, "Command", json!({"name": "halt"})).await?;
            let state = self.call(up, "State", json!({"NonBlocking": true})).await?;
            if state["result"]["State"]["Running"] != true {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("the new process would not stay halted".into())
    }
}

impl Keeper for RpcKeeper {
    const PROTOCOL: &'static str = "JSON-RPC";

    fn on_client(&mut self, mut msg: Value) -> ClientStep {
        let m = method(&msg).to_string();
        if m == "Command" && command_name(&msg) == "continue" {
            if let Some(state) = self.unseen_stop.take() {
                return ClientStep::Answer(
                    json!({"id": msg["id"], "result": state, "error": null}),
                );
            }
            if self.own_continue.is_some() {
                self.joined = Some(msg);
                return ClientStep::Hold;
            }
        } else if m == "Command" || m == "Restart" {
            self.unseen_stop = None;
        }
        if m == "Command" && RUNNING_COMMANDS.contains(&command_name(&msg)) {
            self.halted = false;
        }
        if m == "Detach" {
            self.detaching = true;
            if let Some(p) = msg["params"][0].as_object_mut() {
                p.insert("Kill".into(), json!(false));
            }
        }
        self.pending.insert(id_key(&msg["id"]), msg.clone());
        ClientStep::Forward(msg)
    }

    fn on_upstream(&mut self, mut msg: Value) -> Vec<Value> {
        let key = id_key(&msg["id"]);
        if self.own_continue.as_deref() == Some(&key) {
            self.own_continue = None;
            return match self.joined.take() {
                Some(req) => {
                    msg["id"] = req["id"].clone();
                    vec![msg]
                }
                None => {
                    self.unseen_stop = Some(msg["result"].take());
                    Vec::new()
                }
            };
        }
        if let Some(running) = msg["result"]["State"]["Running"].as_bool() {
            self.halted = !running && msg["result"]["State"]["exited"] != true;
        }
        let Some(req) = self.pending.get(&key).cloned() else {
            // An answer to one of kdev's calls of an earlier replay: not the client's.
            return Vec::new();
        };
        if method(&req) == "Command"
            && RUNNING_COMMANDS.contains(&command_name(&req))
            && says_exited(&msg)
        {
            self.exited = Some((Instant::now() + EXIT_HOLD, msg));
            return Vec::new();
        }
        self.pending.remove(&key);
        self.answered(&req, &msg);
        vec![msg]
    }

    fn lost(&mut self) -> Vec<Value> {
        // The exit was the restart's: the call it answered is sent to the next Delve.
        self.exited = None;
        self.own_continue = None;
        self.halted = false;
        self.unseen_stop = None;
        // The client's `continue` that waited on kdev's waits on the next process.
        if let Some(req) = self.joined.take() {
            self.pending.insert(id_key(&req["id"]), req);
        }
        Vec::new()
    }

    fn ending(&self) -> bool {
        self.detaching
    }

    fn stopped(&self) -> bool {
        self.halted
            && !self
                .pending
                .values()
                .any(|r| method(r) == "Command" && RUNNING_COMMANDS.contains(&command_name(r)))
    }

    fn held_until(&self) -> Option<Instant> {
        self.exited.as_ref().map(|(at, _)| *at)
    }

    fn release(&mut self) -> Vec<Value> {
        let Some((_, msg)) = self.exited.take() else {
            return Vec::new();
        };
        if let Some(req) = self.pending.remove(&id_key(&msg["id"])) {
            self.answered(&req, &msg);
        }
        vec![msg]
    }

    async fn replay<W: AsyncWrite + Unpin + Send>(
        &mut self,
        up: &mut Link<W>,
    ) -> Result<(Vec<Value>, Replayed), String> {
        let mut done = Replayed::default();
        self.halt(up).await?;
        for (id, kept) in self.breakpoints.clone() {
            let resp = self
                .call(
                    up,
                    "CreateBreakpoint",
                    json!({
                        "Breakpoint": kept.breakpoint,
                        "LocExpr": kept.loc_expr,
                        "SubstitutePathRules": kept.substitute_path_rules,
                        // Kept (listed, with no address) where the new code has no such place.
                        "Suspended": true,
                    }),
                )
                .await?;
            done.breakpoints += 1;
            let error = resp["error"].as_str().unwrap_or_default();
            let set = &resp["result"]["Breakpoint"];
            let placed = set["addrs"].as_array().is_some_and(|a| !a.is_empty());
            if !placed && !error.contains("exists") {
                let place = if kept.loc_expr.is_empty() {
                    format!("{}:{}", kept.breakpoint["file"], kept.breakpoint["line"])
                } else {
                    kept.loc_expr.clone()
                };
                done.unverified.push(if error.is_empty() {
                    format!("{id} at {place}")
                } else {
                    format!("{id} at {place} ({error})")
                });
            }
        }
        // What the client waits for, the new Delve answers.
        let waiting: Vec<Value> = self.pending.values().cloned().collect();
        let mut runs = false;
        for req in &waiting {
            runs |= method(req) == "Command" && RUNNING_COMMANDS.contains(&command_name(req));
            up.send(req).await.map_err(|e| e.to_string())?;
        }
        if !runs {
            let id = self.own_id();
            let req =
                json!({"method": "RPCServer.Command", "params": [{"name": "continue"}], "id": id});
            up.send(&req).await.map_err(|e| e.to_string())?;
            self.own_continue = Some(id_key(&id));
        }
        Ok((Vec::new(), done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64, name: &str, params: Value) -> Value {
        json!({"method": format!("RPCServer.{name}"), "params": [params], "id": id})
    }

    fn answer(id: u64, result: Value) -> Value {
        json!({"id": id, "result": result, "error": null})
    }

    #[test]
    fn breakpoints_are_followed_as_the_client_changes_them() {
        let mut k = RpcKeeper::new();
        let create = call(
            1,
            "CreateBreakpoint",
            json!({"Breakpoint": {"id": 0, "addrs": [4242], "Cond": "n > 1"}, "LocExpr": "main.go:12"}),
        );
        k.on_client(create);
        k.on_upstream(answer(
            1,
            json!({"Breakpoint": {"id": 3, "file": "/src/main.go", "line": 12, "addrs": [4242]}}),
        ));
        let kept = &k.breakpoints[&3];
        assert_eq!(kept.loc_expr, "main.go:12");
        assert_eq!(kept.breakpoint["id"], 3);
        assert_eq!(kept.breakpoint["Cond"], "n > 1");
        assert!(kept.breakpoint.get("addrs").is_none());
        k.on_client(call(2, "ToggleBreakpoint", json!({"Id": 3})));
        k.on_upstream(answer(
            2,
            json!({"Breakpoint": {"id": 3, "disabled": true}}),
        ));
        assert_eq!(k.breakpoints[&3].breakpoint["disabled"], true);
        k.on_client(call(3, "ClearBreakpoint", json!({"Id": 3})));
        k.on_upstream(answer(3, json!({"Breakpoint": {"id": 3}})));
        assert!(k.breakpoints.is_empty());
    }

    #[test]
    fn the_clients_continue_joins_kdevs_or_gets_the_stop_it_missed() {
        let mut k = RpcKeeper::new();
        k.own_continue = Some(id_key(&json!("kdev-1")));
        // Joins kdev's running continue, answered under the client's ID when it returns.
        assert!(matches!(
            k.on_client(call(7, "Command", json!({"name": "continue"}))),
            ClientStep::Hold
        ));
        let out = k.on_upstream(
            json!({"id": "kdev-1", "result": {"State": {"Running": false}}, "error": null}),
        );
        assert_eq!(out[0]["id"], 7);
        // A stop nobody waited for is the answer to the next continue.
        k.own_continue = Some(id_key(&json!("kdev-2")));
        assert!(
            k.on_upstream(json!({"id": "kdev-2", "result": {"State": {"x": 1}}, "error": null}))
                .is_empty()
        );
        match k.on_client(call(8, "Command", json!({"name": "continue"}))) {
            ClientStep::Answer(a) => {
                assert_eq!(a["id"], 8);
                assert_eq!(a["result"]["State"]["x"], 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_waiting_continue_waits_on_the_next_delve_and_detach_never_kills() {
        let mut k = RpcKeeper::new();
        k.on_client(call(4, "Command", json!({"name": "halt"})));
        k.on_upstream(answer(4, json!({"State": {"Running": false}})));
        assert!(k.stopped());
        k.on_client(call(5, "Command", json!({"name": "continue"})));
        assert!(!k.stopped());
        assert!(k.lost().is_empty());
        assert!(k.pending.contains_key("5"));
        // A continue that ends because the process exited is held; the reload sends it again.
        let exited =
            json!({"id": 5, "result": null, "error": "Process 139 has exited with status -1"});
        assert!(k.on_upstream(exited.clone()).is_empty());
        assert!(k.held_until().is_some());
        k.lost();
        assert!(k.pending.contains_key("5") && k.held_until().is_none());
        // With Delve still there after the hold, the client gets it.
        k.on_upstream(exited);
        assert_eq!(k.release()[0]["id"], 5);
        assert!(!k.pending.contains_key("5"));
        match k.on_client(call(6, "Detach", json!({"Kill": true}))) {
            ClientStep::Forward(m) => assert_eq!(m["params"][0]["Kill"], false),
            other => panic!("{other:?}"),
        }
        assert!(k.ending());
    }
}

//! A DAP client's session, kept across Delves: what the editor configured (its `initialize` and
//! `attach`, every `setBreakpoints` per source, function, instruction and exception
//! breakpoints, `configurationDone`) is replayed on each new Delve, and the editor hears of the
//! change in DAP's own terms: `continued` when the process it saw stopped is gone, a
//! `breakpoint` event (`changed`, verified or not) for each breakpoint set again, and a console
//! line. Breakpoint IDs are the editor's: each new Delve numbers its own, so they are mapped
//! back ([`IdMap`]). Requests the old Delve never answered get an error response (frames,
//! variables and threads they name belong to a process that is gone).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::AsyncWrite;

use super::keeper::{ClientStep, EXIT_HOLD, Keeper, Replayed, call_timeout};
use super::link::Link;

/// Sequence numbers of kdev's own requests: far above any editor's.
const FIRST_OWN_SEQ: i64 = 1 << 40;

/// What a set of breakpoints belongs to: one source file's `setBreakpoints`, or the session's
/// function or instruction breakpoints (each request replaces the whole set).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Source(String),
    Functions,
    Instructions,
}

impl Slot {
    fn of(command: &str, args: &Value) -> Option<Slot> {
        match command {
            "setBreakpoints" => Some(Slot::Source(source_key(args))),
            "setFunctionBreakpoints" => Some(Slot::Functions),
            "setInstructionBreakpoints" => Some(Slot::Instructions),
            _ => None,
        }
    }

    fn command(&self) -> &'static str {
        match self {
            Slot::Source(_) => "setBreakpoints",
            Slot::Functions => "setFunctionBreakpoints",
            Slot::Instructions => "setInstructionBreakpoints",
        }
    }
}

/// A source's identity in `setBreakpoints` (its path; a name for sources without one).
fn source_key(args: &Value) -> String {
    let source = &args["source"];
    source["path"]
        .as_str()
        .or_else(|| source["name"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Breakpoint IDs as the editor knows them. The first Delve's are the editor's own; after
/// that, each Delve's ID is mapped to the editor's ID of the same breakpoint (same slot, same
/// place in the request), and a breakpoint new to the editor gets an ID no other one had.
#[derive(Debug, Default)]
pub(super) struct IdMap {
    /// Which Delve this is (0: the first).
    generation: u32,
    to_editor: HashMap<i64, i64>,
    /// Above every ID the editor has seen.
    next: i64,
}

impl IdMap {
    /// A new Delve: its IDs mean nothing yet.
    fn next_generation(&mut self) {
        self.generation += 1;
        self.to_editor.clear();
    }

    /// The editor's ID for Delve's `id`.
    fn editor_id(&mut self, id: i64) -> i64 {
        if self.generation == 0 {
            self.next = self.next.max(id + 1);
            return id;
        }
        if let Some(e) = self.to_editor.get(&id) {
            return *e;
        }
        let e = self.next.max(1);
        self.next = e + 1;
        self.to_editor.insert(id, e);
        e
    }

    /// Delve's `id` is the breakpoint the editor knows as `editor`.
    fn bind(&mut self, id: i64, editor: i64) {
        self.next = self.next.max(editor + 1);
        self.to_editor.insert(id, editor);
    }
}

/// The DAP session of one editor connection.
#[derive(Debug, Default)]
pub struct DapKeeper {
    initialize: Option<Value>,
    attach: Option<Value>,
    configured: bool,
    /// The last request of each slot, whole (its arguments are replayed).
    sets: BTreeMap<Slot, Value>,
    exceptions: Option<Value>,
    /// The editor's IDs of each slot's breakpoints, in request order.
    known: BTreeMap<Slot, Vec<Option<i64>>>,
    ids: IdMap,
    /// Requests sent to the current Delve and not answered yet: seq → command.
    pending: BTreeMap<i64, String>,
    /// The thread the editor saw stop, until it hears the process continued.
    stopped_thread: Option<i64>,
    /// The editor asked to end the session: the Delve connection ending is the end.
    ending: bool,
    /// An `exited` event held back until then ([`EXIT_HOLD`]).
    exited: Option<(Instant, Value)>,
    /// The app crashed under the debugger: kdev's request for its stack (its seq), and what
    /// Delve said of the crash.
    crash: Option<(i64, String)>,
    own: Vec<Value>,
    notes: Vec<String>,
    next_seq: i64,
}

impl DapKeeper {
    pub fn new() -> DapKeeper {
        DapKeeper {
            next_seq: FIRST_OWN_SEQ,
            ..DapKeeper::default()
        }
    }

    /// Rewrite Delve's breakpoint IDs in a breakpoint object to the editor's.
    fn map_breakpoint(&mut self, bp: &mut Value) -> Option<i64> {
        let id = bp["id"].as_i64()?;
        let e = self.ids.editor_id(id);
        bp["id"] = json!(e);
        Some(e)
    }

    /// Send `command` to Delve and wait for its response.
    async fn call<W: AsyncWrite + Unpin>(
        &mut self,
        up: &mut Link<W>,
        command: &str,
        arguments: &Value,
    ) -> Result<Value, String> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let req =
            json!({"seq": seq, "type": "request", "command": command, "arguments": arguments});
        up.send(&req).await.map_err(|e| e.to_string())?;
        call_timeout(async {
            while let Some(m) = up.recv().await {
                if m["type"] == "response" && m["request_seq"] == seq {
                    return Ok(m);
                }
            }
            Err(format!(
                "Delve closed the connection before answering {command}"
            ))
        })
        .await
    }

    /// Replay one slot's breakpoints; the editor's `breakpoint` events for them.
    async fn replay_slot<W: AsyncWrite + Unpin>(
        &mut self,
        up: &mut Link<W>,
        slot: &Slot,
        req: &Value,
        done: &mut Replayed,
    ) -> Result<Vec<Value>, String> {
        let resp = self.call(up, slot.command(), &req["arguments"]).await?;
        let mut events = Vec::new();
        let known = self.known.get(slot).cloned().unwrap_or_default();
        let mut ids = Vec::new();
        let wanted = req["arguments"]["breakpoints"].as_array().cloned();
        let got = resp["body"]["breakpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, mut bp) in got.into_iter().enumerate() {
            let editor = match (bp["id"].as_i64(), known.get(i).copied().flatten()) {
                (Some(id), Some(e)) => {
                    self.ids.bind(id, e);
                    bp["id"] = json!(e);
                    Some(e)
                }
                _ => self.map_breakpoint(&mut bp),
            };
            ids.push(editor);
            let verified = bp["verified"].as_bool().unwrap_or(false);
            done.breakpoints += 1;
            if !verified {
                let wanted = wanted.as_ref().and_then(|w| w.get(i));
                done.unverified.push(describe(slot, wanted, &bp));
            }
            events.push(json!({
                "seq": 0, "type": "event", "event": "breakpoint",
                "body": {"reason": "changed", "breakpoint": bp},
            }));
        }
        self.known.insert(slot.clone(), ids);
        Ok(events)
    }
}

/// A breakpoint that could not be set, for kdev's line: where, and Delve's reason.
fn describe(slot: &Slot, wanted: Option<&Value>, bp: &Value) -> String {
    let place = match (slot, wanted) {
        (Slot::Source(path), Some(w)) => format!(
            "{}:{}",
            path.rsplit('/').next().unwrap_or(path),
            w["line"].as_i64().unwrap_or(0)
        ),
        (Slot::Functions, Some(w)) => w["name"].as_str().unwrap_or("?").to_string(),
        (_, Some(w)) => w.to_string(),
        (_, None) => "?".into(),
    };
    match bp["message"].as_str() {
        Some(m) if !m.is_empty() => format!("{place} ({m})"),
        _ => place,
    }
}

impl Keeper for DapKeeper {
    const PROTOCOL: &'static str = "DAP";

    fn on_client(&mut self, msg: Value) -> ClientStep {
        if msg["type"] != "request" {
            return ClientStep::Forward(msg);
        }
        let command = msg["command"].as_str().unwrap_or_default().to_string();
        let args = &msg["arguments"];
        match command.as_str() {
            "initialize" => self.initialize = Some(msg.clone()),
            "attach" | "launch" => self.attach = Some(msg.clone()),
            "configurationDone" => self.configured = true,
            "setExceptionBreakpoints" => self.exceptions = Some(msg.clone()),
            "disconnect" | "terminate" => self.ending = true,
            // The editor runs the process itself: Delve sends no `continued` for it.
            "continue" | "next" | "stepIn" | "stepOut" | "stepBack" | "reverseContinue" => {
                self.stopped_thread = None
            }
            _ => {
                if let Some(slot) = Slot::of(&command, args) {
                    self.sets.insert(slot, msg.clone());
                }
            }
        }
        if let Some(seq) = msg["seq"].as_i64() {
            self.pending.insert(seq, command);
        }
        ClientStep::Forward(msg)
    }

    fn on_upstream(&mut self, mut msg: Value) -> Vec<Value> {
        match msg["type"].as_str() {
            Some("response") => {
                let seq = msg["request_seq"].as_i64().unwrap_or(-1);
                if seq >= FIRST_OWN_SEQ {
                    if let Some((_, what)) = self.crash.take_if(|(s, _)| *s == seq) {
                        self.notes.push(crash_note(&what, &msg));
                    }
                    return Vec::new();
                }
                let command = self.pending.remove(&seq);
                if let Some(bps) = msg["body"]["breakpoints"].as_array_mut() {
                    let mut bps = std::mem::take(bps);
                    let ids: Vec<Option<i64>> =
                        bps.iter_mut().map(|b| self.map_breakpoint(b)).collect();
                    msg["body"]["breakpoints"] = Value::Array(bps);
                    let slot = command.as_deref().and_then(|c| {
                        let req = self.sets.values().find(|r| r["seq"] == seq)?;
                        Slot::of(c, &req["arguments"])
                    });
                    if let Some(slot) = slot {
                        self.known.insert(slot, ids);
                    }
                }
            }
            Some("event") => match msg["event"].as_str() {
                Some("stopped") => {
                    let thread = msg["body"]["threadId"].as_i64().unwrap_or(0);
                    self.stopped_thread = Some(thread);
                    if msg["body"]["reason"] == "exception" {
                        // A panic or a fatal error: kdev says so, with the stack the editor sees.
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        self.own.push(json!({
                            "seq": seq, "type": "request", "command": "stackTrace",
                            "arguments": {"threadId": thread, "levels": 20},
                        }));
                        let body = &msg["body"];
                        let what = format!(
                            "{}: {}",
                            body["description"].as_str().unwrap_or("exception"),
                            body["text"].as_str().unwrap_or("")
                        );
                        self.crash = Some((seq, what));
                    }
                    if let Some(hit) = msg["body"]["hitBreakpointIds"].as_array_mut() {
                        for id in hit.iter_mut() {
                            if let Some(i) = id.as_i64() {
                                *id = json!(self.ids.editor_id(i));
                            }
                        }
                    }
                }
                Some("continued") => self.stopped_thread = None,
                Some("breakpoint") => {
                    let mut bp = msg["body"]["breakpoint"].take();
                    self.map_breakpoint(&mut bp);
                    msg["body"]["breakpoint"] = bp;
                }
                // The process ends with each restart; the editor's session does not.
                Some("terminated") if !self.ending => return Vec::new(),
                Some("exited") if !self.ending => {
                    self.exited = Some((Instant::now() + EXIT_HOLD, msg));
                    return Vec::new();
                }
                _ => {}
            },
            _ => {}
        }
        vec![msg]
    }

    fn lost(&mut self) -> Vec<Value> {
        // The exit was the restart's.
        self.exited = None;
        let mut out: Vec<Value> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(seq, command)| {
                json!({
                    "seq": 0, "type": "response", "request_seq": seq, "success": false,
                    "command": command,
                    "message": "kdev: the app restarted under a new Delve before this was answered",
                })
            })
            .collect();
        if let Some(thread) = self.stopped_thread.take() {
            out.push(json!({
                "seq": 0, "type": "event", "event": "continued",
                "body": {"threadId": thread, "allThreadsContinued": true},
            }));
        }
        out.push(console(
            "kdev: the connection to Delve ended (the app restarts, or the connection dropped); attaching again, with your breakpoints\n",
        ));
        self.ids.next_generation();
        out
    }

    fn ending(&self) -> bool {
        self.ending
    }

    fn stopped(&self) -> bool {
        self.stopped_thread.is_some()
    }

    fn held_until(&self) -> Option<Instant> {
        self.exited.as_ref().map(|(at, _)| *at)
    }

    fn own_requests(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.own)
    }

    fn notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn release(&mut self) -> Vec<Value> {
        self.exited.take().map(|(_, m)| m).into_iter().collect()
    }

    async fn replay<W: AsyncWrite + Unpin + Send>(
        &mut self,
        up: &mut Link<W>,
    ) -> Result<(Vec<Value>, Replayed), String> {
        let mut done = Replayed::default();
        let mut events = Vec::new();
        if let Some(init) = self.initialize.clone() {
            self.call(up, "initialize", &init["arguments"]).await?;
        }
        if let Some(attach) = self.attach.clone() {
            let command = attach["command"].as_str().unwrap_or("attach").to_string();
            let resp = self.call(up, &command, &attach["arguments"]).await?;
            if resp["success"] == false {
                return Err(format!(
                    "Delve refused to attach again: {}",
                    resp["body"]["error"]["format"]
                        .as_str()
                        .or(resp["message"].as_str())
                        .unwrap_or("?")
                ));
            }
        }
        for (slot, req) in self.sets.clone() {
            events.extend(self.replay_slot(up, &slot, &req, &mut done).await?);
        }
        if let Some(ex) = self.exceptions.clone() {
            self.call(up, "setExceptionBreakpoints", &ex["arguments"])
                .await?;
        }
        if self.configured {
            self.call(up, "configurationDone", &json!({})).await?;
        }
        let line = match done.unverified.len() {
            0 => format!(
                "kdev: attached again; {} breakpoints set again\n",
                done.breakpoints
            ),
            n => format!(
                "kdev: attached again; {} breakpoints set again, {n} not verified: {}\n",
                done.breakpoints,
                done.unverified.join(", ")
            ),
        };
        events.push(console(&line));
        Ok((events, done))
    }
}

/// kdev's words on a crash under the debugger: what Delve said, and the stack.
fn crash_note(what: &str, stack: &Value) -> String {
    let mut note = format!(
        "the app crashed under the debugger ({what}); it is stopped there in your debugger \
         (continue to let it exit):"
    );
    for f in stack["body"]["stackFrames"]
        .as_array()
        .into_iter()
        .flatten()
    {
        note.push_str(&format!(
            "\n    {} ({}:{})",
            f["name"].as_str().unwrap_or("?"),
            f["source"]["path"].as_str().unwrap_or("?"),
            f["line"]
        ));
    }
    note
}

/// A line in the editor's debug console.
fn console(text: &str) -> Value {
    json!({"seq": 0, "type": "event", "event": "output", "body": {"category": "console", "output": text}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(seq: i64, command: &str, arguments: Value) -> Value {
        json!({"seq": seq, "type": "request", "command": command, "arguments": arguments})
    }

    #[test]
    fn ids_stay_the_editors_across_delves() {
        let mut k = DapKeeper::new();
        let set = request(
            3,
            "setBreakpoints",
            json!({"source": {"path": "/p/main.go"}, "breakpoints": [{"line": 10}, {"line": 20}]}),
        );
        assert!(matches!(k.on_client(set), ClientStep::Forward(_)));
        let out = k.on_upstream(json!({
            "type": "response", "request_seq": 3, "success": true, "command": "setBreakpoints",
            "body": {"breakpoints": [{"id": 1, "verified": true}, {"id": 2, "verified": true}]}
        }));
        assert_eq!(out[0]["body"]["breakpoints"][1]["id"], 2);
        // A new Delve numbers from 1 again; a breakpoint it reports as 1 that the replay bound
        // to the editor's 2 is 2, one it never bound gets a fresh ID.
        k.lost();
        k.ids.bind(1, 2);
        let hit = k.on_upstream(json!({
            "type": "event", "event": "stopped", "body": {"threadId": 7, "hitBreakpointIds": [1]}
        }));
        assert_eq!(hit[0]["body"]["hitBreakpointIds"][0], 2);
        let bp = k.on_upstream(json!({
            "type": "event", "event": "breakpoint", "body": {"breakpoint": {"id": 5}}
        }));
        assert_eq!(bp[0]["body"]["breakpoint"]["id"], 3);
        assert!(k.stopped());
    }

    #[test]
    fn a_lost_delve_answers_what_it_owed_and_says_the_process_continued() {
        let mut k = DapKeeper::new();
        k.on_client(request(4, "variables", json!({"variablesReference": 1000})));
        k.on_upstream(json!({"type": "event", "event": "stopped", "body": {"threadId": 9}}));
        let out = k.lost();
        assert_eq!(out[0]["request_seq"], 4);
        assert_eq!(out[0]["success"], false);
        assert_eq!(out[1]["event"], "continued");
        assert_eq!(out[1]["body"]["threadId"], 9);
        assert_eq!(out[2]["event"], "output");
        assert!(!k.stopped());
        // An exit is held back, and dropped when Delve goes (the restart's)...
        assert!(
            k.on_upstream(json!({"type": "event", "event": "exited", "body": {"exitCode": 137}}))
                .is_empty()
        );
        assert!(k.held_until().is_some());
        k.lost();
        assert!(k.held_until().is_none());
        // ...and given once the hold is over with Delve still there.
        k.on_upstream(json!({"type": "event", "event": "exited", "body": {"exitCode": 2}}));
        assert_eq!(k.release()[0]["body"]["exitCode"], 2);
        // Delve's `terminated` at a restart is not the end of the editor's session...
        assert!(
            k.on_upstream(json!({"type": "event", "event": "terminated"}))
                .is_empty()
        );
        // ...unless the editor asked for it.
        k.on_client(request(5, "disconnect", json!({})));
        assert_eq!(
            k.on_upstream(json!({"type": "event", "event": "terminated"}))
                .len(),
            1
        );
        assert!(k.ending());
    }

    #[test]
    fn a_crash_is_said_with_its_stack() {
        let mut k = DapKeeper::new();
        let out = k.on_upstream(json!({"type": "event", "event": "stopped", "body": {
            "reason": "exception", "description": "panic", "text": "boom", "threadId": 3}}));
        assert_eq!(out.len(), 1, "the editor gets the stop");
        let ask = k.own_requests();
        assert_eq!(ask[0]["command"], "stackTrace");
        let stack = json!({"type": "response", "request_seq": ask[0]["seq"], "success": true,
            "body": {"stackFrames": [{"name": "main.ping", "line": 32, "source": {"path": "/kdev/src/main.go"}}]}});
        assert!(
            k.on_upstream(stack).is_empty(),
            "kdev's answer is not the editor's"
        );
        let note = k.notes().remove(0);
        assert!(
            note.contains("panic: boom") && note.contains("main.ping (/kdev/src/main.go:32)"),
            "{note}"
        );
    }

    #[test]
    fn the_last_set_of_each_slot_is_kept() {
        let mut k = DapKeeper::new();
        let path = |p: &str| json!({"source": {"path": p}, "breakpoints": [{"line": 1}]});
        k.on_client(request(1, "setBreakpoints", path("/a.go")));
        k.on_client(request(2, "setBreakpoints", path("/b.go")));
        k.on_client(request(
            3,
            "setBreakpoints",
            json!({"source": {"path": "/a.go"}, "breakpoints": []}),
        ));
        k.on_client(request(
            4,
            "setFunctionBreakpoints",
            json!({"breakpoints": [{"name": "main.f"}]}),
        ));
        assert_eq!(k.sets.len(), 3);
        assert_eq!(k.sets[&Slot::Source("/a.go".into())]["seq"], 3);
        assert_eq!(
            describe(
                &Slot::Source("/p/main.go".into()),
                Some(&json!({"line": 40})),
                &json!({"message": "no code"})
            ),
            "main.go:40 (no code)"
        );
    }
}

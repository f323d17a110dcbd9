//! A scripted DAP client, as an editor drives Delve: requests with their responses, and the
//! events that arrive meanwhile (kept, so a test can wait for one that came early).

use std::io::BufReader;
use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub struct Dap {
    write: TcpStream,
    incoming: mpsc::Receiver<Value>,
    /// Messages read but not yet asked for.
    seen: Vec<Value>,
    seq: i64,
}

impl Dap {
    pub fn connect(port: u16) -> Result<Dap> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connecting to the debug endpoint on port {port}"))?;
        let read = stream.try_clone()?;
        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut read = BufReader::new(read);
            while let Ok(Some(msg)) = read_message(&mut read) {
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
        Ok(Dap {
            write: stream,
            incoming,
            seen: Vec::new(),
            seq: 0,
        })
    }

    /// Send a request; its sequence number.
    pub fn send(&mut self, command: &str, arguments: Value) -> Result<i64> {
        self.seq += 1;
        let body =
            json!({"seq": self.seq, "type": "request", "command": command, "arguments": arguments})
                .to_string();
        write!(self.write, "Content-Length: {}\r\n\r\n{body}", body.len())?;
        self.write.flush()?;
        Ok(self.seq)
    }

    /// Send a request and wait for its response, which must be a success.
    pub fn call(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let seq = self.send(command, arguments)?;
        let resp = self.wait(
            &format!("the response to {command}"),
            Duration::from_secs(30),
            |m| m["type"] == "response" && m["request_seq"] == seq,
        )?;
        if resp["success"] != true {
            bail!("{command} failed: {resp}");
        }
        Ok(resp)
    }

    /// The first message (seen earlier or arriving within `timeout`) that `pred` accepts.
    pub fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        if let Some(i) = self.seen.iter().position(&pred) {
            return Ok(self.seen.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.incoming.recv_timeout(left) {
                Ok(m) if pred(&m) => return Ok(m),
                Ok(m) => self.seen.push(m),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no {what} in {timeout:?}; seen: {}", self.describe_seen())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "the connection closed before {what}; seen: {}",
                        self.describe_seen()
                    )
                }
            }
        }
    }

    /// Wait for an event by name.
    pub fn event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        self.wait(&format!("{name} event"), timeout, |m| {
            m["type"] == "event" && m["event"] == name
        })
    }

    /// Forget the messages seen so far (a test step starts afresh).
    pub fn clear(&mut self) {
        while let Ok(m) = self.incoming.try_recv() {
            self.seen.push(m);
        }
        self.seen.clear();
    }

    /// Whether the connection is still open (nothing closed it since).
    pub fn open(&mut self) -> bool {
        loop {
            match self.incoming.try_recv() {
                Ok(m) => self.seen.push(m),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn describe_seen(&self) -> String {
        let short: Vec<String> = self
            .seen
            .iter()
            .map(|m| {
                let t = m.to_string();
                t.chars().take(200).collect()
            })
            .collect();
        short.join("\n  ")
    }

    /// Attach as VS Code does to kdev's endpoint (mode remote), with `substitute_path`
    /// (local → pod) and `breakpoints` by local path and lines; then `configurationDone`.
    pub fn attach(&mut self, substitute_path: Value, breakpoints: &[(&str, &[i64])]) -> Result<()> {
        self.call(
            "initialize",
            json!({"clientID": "kdev-tests", "adapterID": "go", "linesStartAt1": true,
                   "columnsStartAt1": true, "pathFormat": "path"}),
        )?;
        self.call(
            "attach",
            json!({"request": "attach", "mode": "remote", "substitutePath": substitute_path}),
        )?;
        for (path, lines) in breakpoints {
            self.set_breakpoints(path, lines)?;
        }
        self.call("configurationDone", json!({}))?;
        Ok(())
    }

    /// `setBreakpoints` for one source: the response's breakpoints.
    pub fn set_breakpoints(&mut self, path: &str, lines: &[i64]) -> Result<Vec<Value>> {
        let bps: Vec<Value> = lines.iter().map(|l| json!({"line": l})).collect();
        let resp = self.call(
            "setBreakpoints",
            json!({"source": {"path": path}, "breakpoints": bps}),
        )?;
        Ok(resp["body"]["breakpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Wait for a `stopped` event, then the value of local variable `name` in the top frame.
    pub fn stopped_with(&mut self, name: &str, timeout: Duration) -> Result<(Value, String)> {
        let stopped = self.event("stopped", timeout)?;
        let thread = stopped["body"]["threadId"].clone();
        let trace = self.call("stackTrace", json!({"threadId": thread, "levels": 1}))?;
        let frame = trace["body"]["stackFrames"][0]["id"].clone();
        let scopes = self.call("scopes", json!({"frameId": frame}))?;
        for scope in scopes["body"]["scopes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let vars = self.call(
                "variables",
                json!({"variablesReference": scope["variablesReference"]}),
            )?;
            for v in vars["body"]["variables"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                if v["name"] == name {
                    let value = v["value"].as_str().unwrap_or_default().to_string();
                    return Ok((stopped, value));
                }
            }
        }
        bail!("no variable {name} in the top frame at {stopped}")
    }
}

/// One DAP message; `None` at the end of the stream.
fn read_message(read: &mut impl BufRead) -> Result<Option<Value>> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if read.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            if length.is_some() {
                break;
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("Content-Length:") {
            length = Some(v.trim().parse::<usize>()?);
        }
    }
    let mut body = vec![0; length.unwrap_or(0)];
    read.read_exact(&mut body)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

//! `dlv connect`, Delve's own terminal client, driven through its stdin as a person types:
//! a command, then wait for what it prints.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct DlvConnect {
    child: Child,
    stdin: ChildStdin,
    output: Arc<Mutex<String>>,
    /// Output before this offset was already matched.
    seen: usize,
}

impl DlvConnect {
    /// `dlv connect 127.0.0.1:<port>` (dlv from PATH: `tests/tools/install` builds it).
    pub fn start(port: u16) -> Result<DlvConnect> {
        let mut child = Command::new("dlv")
            .args(["connect", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running `dlv connect` (is dlv on PATH? tests/tools/install builds it)")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let output = Arc::new(Mutex::new(String::new()));
        for mut from in [
            Box::new(child.stdout.take().context("no stdout")?) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().context("no stderr")?),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Ok(DlvConnect {
            child,
            stdin,
            output,
            seen: 0,
        })
    }

    /// Type `line` and Enter.
    pub fn type_line(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Wait until the output after what was matched before contains `text`; the output up to
    /// the end of it.
    pub fn expect(&mut self, text: &str, timeout: Duration) -> Result<String> {
        let t0 = Instant::now();
        loop {
            {
                let out = self.output.lock().unwrap();
                if let Some(i) = out[self.seen..].find(text) {
                    let end = self.seen + i + text.len();
                    let got = out[self.seen..end].to_string();
                    self.seen = end;
                    return Ok(got);
                }
            }
            if t0.elapsed() > timeout {
                bail!(
                    "dlv connect did not print {text:?} in {timeout:?}; it printed:\n{}",
                    self.output.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it printed.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for DlvConnect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

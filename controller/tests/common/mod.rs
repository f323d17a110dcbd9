//! Helpers for the integration tests: run the real `kdev-controller` binary in a tempdir.
#![allow(dead_code)]

pub mod go_session;
pub mod rng;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kdev_protocol::{
    AppStatus, ClientCodec, ClientMessage, Event, ServerMessage, SessionConfig, Welcome,
};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_kdev-controller");

/// Poll `f` until it returns `Some`, or panic after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_status(kdev: &Path) -> Option<AppStatus> {
    serde_json::from_slice(&fs::read(kdev.join("run/app-status.json")).ok()?).ok()
}

/// Whether a process exists (a zombie counts as existing).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a process exists and is not a zombie (an orphan is reaped by whoever inherits it,
/// which may take its time).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
    state != Some('Z')
}

/// The app log's records as (pid, line).
pub fn log_lines(kdev: &Path) -> Vec<(u32, String)> {
    let Ok(data) = fs::read_to_string(kdev.join("run/app.log")) else {
        return vec![];
    };
    data.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["pid"].as_u64().unwrap_or(0) as u32,
                v["line"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

pub fn log_records(kdev: &Path) -> Vec<serde_json::Value> {
    let Ok(data) = fs::read_to_string(kdev.join("run/app.log")) else {
        return vec![];
    };
    data.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A supervisor child process, killed on drop.
pub struct Supervisor {
    pub child: Child,
    pub kdev: PathBuf,
}

impl Supervisor {
    pub fn start(kdev: &Path, extra: &[&str], cmd: &[&str], env: &[(&str, &str)]) -> Supervisor {
        let stderr = fs::File::create(kdev.join("supervisor.stderr")).unwrap();
        let stdout = fs::File::create(kdev.join("supervisor.stdout")).unwrap();
        let mut c = Command::new(BIN);
        c.arg("supervise")
            .arg("--kdev-dir")
            .arg(kdev)
            .args(extra)
            .arg("--")
            .args(cmd);
        c.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = c.spawn().expect("start supervisor");
        Supervisor {
            child,
            kdev: kdev.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        signal::kill(Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.kdev.join("supervisor.stderr")).unwrap_or_default()
    }

    /// Wait until the status shows a running child whose start count is above `after`.
    pub fn wait_running(&self, after: u64, timeout: Duration) -> AppStatus {
        wait_for(timeout, "the supervised app to be running", || {
            read_status(&self.kdev).filter(|s| {
                s.starts > after && s.pid.is_some() && s.state == kdev_protocol::AppState::Running
            })
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Kill whatever app process group is left.
        if let Some(s) = read_status(&self.kdev)
            && let Some(pid) = s.pid
        {
            let _ = signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// A `serve` session over pipes.
pub struct Serve {
    pub child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Result<ServerMessage, String>>,
    /// Every message received so far.
    pub seen: Vec<ServerMessage>,
    pub stderr_path: PathBuf,
}

impl Serve {
    pub fn start(kdev: &Path, extra: &[&str]) -> Serve {
        Serve::start_with_env(kdev, extra, &[], &[])
    }

    /// Like [`Serve::start`], with `env` added to and `unset` removed from the environment it
    /// inherits (the sidecar's).
    pub fn start_with_env(
        kdev: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        unset: &[&str],
    ) -> Serve {
        let stderr_path = kdev.join(format!("serve-{}.stderr", std::process::id() ^ rand_u32()));
        let stderr = fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(BIN);
        for k in unset {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--kdev-dir")
            .arg(kdev)
            .args(extra)
            // Anything relative it might create lands in the test's directory.
            .current_dir(kdev)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start serve");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut codec = ClientCodec::new();
            loop {
                match codec.read_blocking(&mut stdout) {
                    Ok(Some(m)) => {
                        if tx.send(Ok(m)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        Serve {
            stdin: child.stdin.take(),
            child,
            rx,
            seen: Vec::new(),
            stderr_path,
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn send(&mut self, m: &ClientMessage) {
        ClientCodec::new()
            .write_blocking(self.stdin.as_mut().expect("stdin open"), m)
            .expect("write to serve");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let w = self.stdin.as_mut().expect("stdin open");
        let _ = w.write_all(bytes);
        let _ = w.flush();
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next message, or `None` when the stream ends. Panics on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Option<ServerMessage> {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(m)) => {
                self.seen.push(m.clone());
                Some(m)
            }
            Ok(Err(e)) => panic!("bad frame from serve: {e}\nstderr:\n{}", self.stderr()),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "no message from serve within {timeout:?}; seen: {:#?}\nstderr:\n{}",
                    self.seen,
                    self.stderr()
                )
            }
        }
    }

    /// Receive until `f` picks a message.
    pub fn recv_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out waiting for {what}; seen: {:#?}\nstderr:\n{}",
                    self.seen,
                    self.stderr()
                );
            }
            match self.recv(left) {
                Some(m) => {
                    if let Some(v) = f(&m) {
                        return v;
                    }
                }
                None => panic!(
                    "serve ended while waiting for {what}; seen: {:#?}\nstderr:\n{}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Receive until an event matching `f`.
    pub fn event_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        self.recv_until(timeout, what, |m| match m {
            ServerMessage::Event { event, .. } => f(event),
            _ => None,
        })
    }

    /// Like [`Serve::event_until`], but first looks at everything already received.
    pub fn event_seen_or_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        for m in &self.seen {
            if let ServerMessage::Event { event, .. } = m
                && let Some(v) = f(event)
            {
                return v;
            }
        }
        self.event_until(timeout, what, f)
    }

    pub fn hello(&mut self, config: SessionConfig) -> Welcome {
        self.send(&ClientMessage::Hello(kdev_protocol::handshake::hello(
            "kdev-tests",
            config,
        )));
        match self.recv(Duration::from_secs(20)) {
            Some(ServerMessage::Welcome(w)) => w,
            other => panic!(
                "expected welcome, got {other:?}\nstderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Wait for the process to exit and return its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let status = wait_for(timeout, "serve to exit", || self.child.try_wait().unwrap());
        status.code().unwrap_or_else(|| {
            panic!(
                "serve died from a signal: {status:?}\nstderr:\n{}",
                self.stderr()
            )
        })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn rand_u32() -> u32 {
    rand_u64() as u32
}

/// Bits that differ from run to run (std's per-process hash keys, and the time).
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Read the stderr of a supervisor with its path for debug output.
pub fn dump(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(f) = fs::File::open(path) {
        for l in BufReader::new(f).lines().map_while(Result::ok) {
            s.push_str(&l);
            s.push('\n');
        }
    }
    s
}

/// A tar of regular files (mode 644) with these paths and contents.
pub fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    tar_with_links(files, &[])
}

/// A tar of regular files (mode 644) and symbolic links (`(path, target)`).
pub fn tar_with_links(files: &[(&str, &str)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    for (path, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, path, target).unwrap();
    }
    b.into_inner().unwrap()
}

/// Use the machine's Go build cache when there is one (much faster), else one next to the
/// test binaries that later runs reuse.
pub fn gocache() -> PathBuf {
    let out = Command::new("go")
        .args(["env", "GOCACHE"])
        .output()
        .expect("the go toolchain is needed for this test");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !p.is_empty() && p != "off" {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gocache")
}

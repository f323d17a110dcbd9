//! Watching the app through the supervisor's files: the watcher polls `run/app-status.json`
//! and tails `run/app.log` (every 25 ms; both are small local reads), turning changes into
//! `AppStarted`, `AppExited` and `AppOutput` events. Output lines are sent with `try_send`:
//! when the client falls behind they are dropped and counted (`AppOutputDropped`), never
//! queued without bound and never blocking anything.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kdev_protocol::{AppState, AppStatus, Event, OutputLine};
use tokio::sync::watch;

use super::io::Out;
use crate::run_files::{LogRecord, read_status};
use crate::util::unix_ms;

const POLL: Duration = Duration::from_millis(25);
/// The app's output lines sent with `AppExited`.
const LAST_LINES: usize = 20;

/// Follows `app.log` across rotations.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Start at the current end of the log: old output is not replayed.
    fn new(path: PathBuf) -> Tail {
        let mut t = Tail {
            path,
            file: None,
            ino: 0,
            pos: 0,
            partial: Vec::new(),
        };
        if let Ok(mut f) = File::open(&t.path) {
            t.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
            t.pos = f.seek(SeekFrom::End(0)).unwrap_or(0);
            t.file = Some(f);
        }
        t
    }

    fn read_available(&mut self, out: &mut Vec<LogRecord>) {
        let Some(f) = &mut self.file else { return };
        let mut buf = Vec::new();
        // At most 4 MiB per poll, so a flood cannot starve the rest of the loop.
        if let Ok(n) = f.take(4 << 20).read_to_end(&mut buf) {
            self.pos += n as u64;
        }
        self.partial.extend_from_slice(&buf);
        let mut start = 0;
        while let Some(i) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + i];
            if let Ok(rec) = serde_json::from_slice::<LogRecord>(line) {
                out.push(rec);
            }
            start += i + 1;
        }
        self.partial.drain(..start);
        if self.partial.len() > 1 << 20 {
            self.partial.clear();
        }
    }

    fn poll(&mut self) -> Vec<LogRecord> {
        let mut out = Vec::new();
        self.read_available(&mut out);
        match std::fs::metadata(&self.path) {
            Ok(m) if self.file.is_none() || m.ino() != self.ino => {
                // Created or rotated: finish the old file (done above), then follow the new one
                // from its start.
                if let Ok(f) = File::open(&self.path) {
                    self.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    self.file = Some(f);
                    self.pos = 0;
                    self.partial.clear();
                    self.read_available(&mut out);
                }
            }
            Ok(m) if m.len() < self.pos => {
                // Truncated in place.
                if let Some(f) = &mut self.file {
                    let _ = f.seek(SeekFrom::Start(0));
                }
                self.pos = 0;
                self.partial.clear();
            }
            _ => {}
        }
        out
    }
}

/// Shared between the watcher and restart tasks.
#[derive(Clone)]
pub(super) struct AppWatch {
    pub status: watch::Receiver<Option<AppStatus>>,
    /// Set while a restart we asked for is in flight, so its new child is reported as
    /// `Restarted` rather than `AppStarted`.
    pub restart_pending: Arc<AtomicBool>,
}

/// Spawn the watcher. Returns the handle to observe status with.
pub(super) fn spawn_watcher(
    status_path: PathBuf,
    log_path: PathBuf,
    out: Out,
    forward_output: bool,
) -> (AppWatch, tokio::task::JoinHandle<()>) {
    let initial = read_status(&status_path);
    let (tx, rx) = watch::channel(initial.clone());
    let pending = Arc::new(AtomicBool::new(false));
    let w = AppWatch {
        status: rx,
        restart_pending: pending.clone(),
    };
    let handle = tokio::spawn(async move {
        let mut tail = Tail::new(log_path);
        let mut recent: VecDeque<LogRecord> = VecDeque::new();
        let mut prev = initial;
        let mut dropped: u64 = 0;
        loop {
            for rec in tail.poll() {
                if forward_output {
                    let ev = Event::AppOutput {
                        pid: rec.pid,
                        stream: rec.stream,
                        line: rec.line.clone(),
                    };
                    if out.try_event(ev) {
                        if dropped > 0 && out.try_event(Event::AppOutputDropped { lines: dropped })
                        {
                            dropped = 0;
                        }
                    } else {
                        dropped += 1;
                    }
                }
                recent.push_back(rec);
                if recent.len() > 200 {
                    recent.pop_front();
                }
            }
            let cur = read_status(&status_path);
            if let Some(c) = cur.as_ref().filter(|_| cur != prev) {
                let p = prev.as_ref();
                if let Some(exit) = &c.last_exit
                    && p.and_then(|p| p.last_exit.as_ref()) != Some(exit)
                {
                    let last_output: Vec<OutputLine> = {
                        let mine: Vec<&LogRecord> =
                            recent.iter().filter(|r| r.pid == exit.pid).collect();
                        mine[mine.len().saturating_sub(LAST_LINES)..]
                            .iter()
                            .map(|r| OutputLine {
                                stream: r.stream,
                                line: r.line.clone(),
                            })
                            .collect()
                    };
                    let next_start_in_ms = match c.state {
                        AppState::Backoff => {
                            c.next_start_at_ms.map(|t| t.saturating_sub(unix_ms()))
                        }
                        _ => None,
                    };
                    out.event(Event::AppExited {
                        pid: exit.pid,
                        code: exit.code,
                        signal: exit.signal,
                        expected: exit.expected,
                        runtime_ms: exit.runtime_ms,
                        next_start_in_ms,
                        last_output,
                    })
                    .await;
                }
                // A new supervisor (the main container restarted) counts starts from zero again.
                let new_supervisor = p.is_some_and(|p| p.supervisor_pid != c.supervisor_pid);
                let started = new_supervisor || c.starts > p.map(|p| p.starts).unwrap_or(0);
                if started
                    && let Some(pid) = c.pid
                    && !pending.load(Ordering::SeqCst)
                {
                    out.event(Event::AppStarted {
                        pid,
                        starts: c.starts,
                        relay_port: c.relay_port,
                    })
                    .await;
                }
                let _ = tx.send(cur.clone());
                prev = cur;
            }
            tokio::time::sleep(POLL).await;
        }
    });
    (w, handle)
}

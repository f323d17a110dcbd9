//! One stream from kdev, from its OPEN to its end: the connection to the app (waiting for one,
//! reconnecting after a restart, detaching an idle one), the bytes kept for sending again, and
//! the frames both ways. The rules it follows are in the `relay` module docs.

use std::io;
use std::time::Duration;

use kdev_protocol::relay as frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::gate::AppGate;
use super::loss::{self, Loss};

/// How long a connection waits for an app to accept it.
pub(super) const WAIT_FOR_APP: Duration = Duration::from_secs(10);
/// The most client bytes kept for sending again after a restart.
const REPLAY_LIMIT: usize = 1 << 20;
/// How long a connection whose app restarted stays open without the client sending anything.
const DETACHED_FOR: Duration = Duration::from_secs(10);
/// How often a refused connection to the app is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(5);
/// Above this much unsent data in one direction, the other side is not read from.
const BUFFER_LIMIT: usize = 256 * 1024;

/// One stream from kdev.
struct Conn {
    gate: watch::Receiver<AppGate>,
    wait_for_app: Duration,
    /// From OPEN: the app's port and whether the connection may outlive the app process.
    port: u16,
    resume: bool,
    opened: bool,
    app_r: Option<OwnedReadHalf>,
    app_w: Option<OwnedWriteHalf>,
    /// The `starts` of the app this connection reaches.
    app_starts: u64,
    /// Client bytes not yet written to the app.
    to_app: Vec<u8>,
    /// Client bytes since the app last sent anything (including `to_app`): what the app has
    /// not answered; `None` once over [`REPLAY_LIMIT`].
    unanswered: Option<Vec<u8>>,
    /// Frames not yet written to kdev.
    to_kdev: Vec<u8>,
    /// Waiting for an app to accept: (next attempt, give up at).
    dialing: Option<(Instant, Instant)>,
    /// Detached after a restart, until this instant.
    detached: Option<Instant>,
    /// kdev sent EOF: once `to_app` is written, shut the app's write side.
    client_eof: bool,
    app_shut: bool,
    /// APP_EOF was queued.
    app_eof: bool,
    /// Stop once `to_kdev` is written.
    finish: bool,
}

pub(super) async fn serve(kdev: TcpStream, gate: watch::Receiver<AppGate>, wait_for_app: Duration) {
    let (mut kr, mut kw) = kdev.into_split();
    let mut c = Conn {
        gate,
        wait_for_app,
        port: 0,
        resume: false,
        opened: false,
        app_r: None,
        app_w: None,
        app_starts: 0,
        to_app: Vec::new(),
        unanswered: Some(Vec::new()),
        to_kdev: Vec::new(),
        dialing: None,
        detached: None,
        client_eof: false,
        app_shut: false,
        app_eof: false,
        finish: false,
    };
    frame::encode(frame::HELLO, frame::HELLO_PAYLOAD, &mut c.to_kdev);
    let mut from_kdev = Vec::new();
    let mut kbuf = vec![0u8; 64 * 1024];
    let mut abuf = vec![0u8; frame::MAX_PAYLOAD];
    loop {
        if c.to_kdev.is_empty()
            && (c.finish || (c.app_eof && c.client_eof && c.to_app.is_empty() && c.app_shut))
        {
            return;
        }
        // Shut the app's write side once everything the client sent is written.
        if c.client_eof
            && !c.app_shut
            && c.to_app.is_empty()
            && let Some(w) = c.app_w.as_mut()
        {
            let _ = w.shutdown().await;
            c.app_shut = true;
        }
        let read_kdev = !c.finish && c.to_app.len() < BUFFER_LIMIT && !c.client_eof;
        let read_app = c.to_kdev.len() < BUFFER_LIMIT;
        let next_dial = c.dialing.map(|(next, _)| next);
        tokio::select! {
            n = kr.read(&mut kbuf), if read_kdev => match n {
                // kdev closed the stream without an EOF frame: the client is gone.
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    from_kdev.extend_from_slice(&kbuf[..n]);
                    loop {
                        match frame::decode(&mut from_kdev) {
                            Ok(Some((kind, payload))) => c.on_frame(kind, payload),
                            Ok(None) => break,
                            Err(e) => {
                                c.error(&e.to_string());
                                break;
                            }
                        }
                    }
                }
            },
            n = read_opt(c.app_r.as_mut(), &mut abuf), if read_app => match n {
                Ok(0) => c.app_lost(None).await,
                Ok(n) => {
                    frame::encode(frame::APP_DATA, &abuf[..n], &mut c.to_kdev);
                    // Answered: what the client sent so far needs no replay.
                    if c.to_app.len() <= REPLAY_LIMIT {
                        c.unanswered = Some(c.to_app.clone());
                    }
                }
                Err(e) => c.app_lost(Some(e)).await,
            },
            n = write_opt(c.app_w.as_mut(), &c.to_app), if !c.to_app.is_empty() => match n {
                Ok(n) => {
                    c.to_app.drain(..n);
                }
                Err(e) => c.app_lost(Some(e)).await,
            },
            n = kw.write(&c.to_kdev), if !c.to_kdev.is_empty() => match n {
                Ok(n) if n > 0 => {
                    c.to_kdev.drain(..n);
                }
                _ => return,
            },
            _ = sleep_opt(next_dial) => c.dial().await,
            _ = sleep_opt(c.detached) => {
                // Nobody used it since the app restarted: close it as the app did.
                c.detached = None;
                frame::encode(frame::APP_EOF, &[], &mut c.to_kdev);
                c.finish = true;
            }
        }
    }
}

impl Conn {
    fn on_frame(&mut self, kind: u8, payload: Vec<u8>) {
        match kind {
            frame::OPEN if !self.opened => {
                let Some((port, flags)) = frame::parse_open(&payload) else {
                    return self.error("a short OPEN frame");
                };
                self.opened = true;
                self.port = port;
                self.resume = flags & frame::OPEN_RESUME != 0;
                self.wait_for_app();
            }
            frame::DATA if self.opened => {
                self.to_app.extend_from_slice(&payload);
                if let Some(u) = self.unanswered.as_mut() {
                    u.extend_from_slice(&payload);
                    if u.len() > REPLAY_LIMIT {
                        self.unanswered = None;
                    }
                }
                if self.detached.take().is_some() {
                    self.wait_for_app();
                }
            }
            frame::EOF if self.opened => {
                self.client_eof = true;
                // Detached: the old app closed it, and there is nothing to send to a new one.
                if self.detached.take().is_some() {
                    frame::encode(frame::APP_EOF, &[], &mut self.to_kdev);
                    self.finish = true;
                }
            }
            other => self.error(&format!("unexpected relay frame {other:#x}")),
        }
    }

    fn error(&mut self, message: &str) {
        frame::encode(frame::ERROR, message.as_bytes(), &mut self.to_kdev);
        self.app_r = None;
        self.app_w = None;
        self.dialing = None;
        self.detached = None;
        self.finish = true;
    }

    fn wait_for_app(&mut self) {
        let now = Instant::now();
        self.dialing = Some((now, now + self.wait_for_app));
    }

    /// One attempt to connect to the app (the dial timer fired).
    async fn dial(&mut self) {
        let Some((_, give_up)) = self.dialing else {
            return;
        };
        let gate = *self.gate.borrow();
        if gate.running {
            let connect = TcpStream::connect(("127.0.0.1", self.port));
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                self.app_r = Some(r);
                self.app_w = Some(w);
                self.app_starts = gate.starts;
                self.app_shut = false;
                self.dialing = None;
                // What the previous app left unanswered goes first (on a first connection it
                // is exactly what is waiting).
                if let Some(u) = &self.unanswered {
                    self.to_app = u.clone();
                }
                return;
            }
        }
        let now = Instant::now();
        if now >= give_up {
            let state = if gate.running {
                format!(
                    "the app runs but does not accept connections on port {}",
                    self.port
                )
            } else if gate.stopping {
                "the app is still stopping".to_string()
            } else {
                "no app is running (it exited, or crashed and waits to be restarted)".to_string()
            };
            let message = format!(
                "nothing accepted the connection in {}s: {state}",
                self.wait_for_app.as_secs_f64()
            );
            return self.error(&message);
        }
        self.dialing = Some((now + RETRY_EVERY, give_up));
    }

    /// The app's side of the connection ended (EOF, or an error reading or writing).
    async fn app_lost(&mut self, error: Option<io::Error>) {
        let loss = if self.resume {
            loss::classify(&self.gate, self.app_starts).await
        } else {
            Loss::Closed
        };
        let waiting = self.unanswered.as_ref().map(|u| !u.is_empty());
        match (loss, waiting) {
            (Loss::Restart, Some(true)) => {
                self.app_r = None;
                self.app_w = None;
                self.wait_for_app();
            }
            (Loss::Restart | Loss::Crash, Some(false)) => {
                self.app_r = None;
                self.app_w = None;
                self.to_app.clear();
                self.detached = Some(Instant::now() + DETACHED_FOR);
            }
            (Loss::Crash, Some(true)) => self.error(
                "the app exited before answering (not sent again: it may be what crashed it)",
            ),
            _ => match error {
                Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    self.error(&format!("the app's connection failed: {e}"))
                }
                // The app closed it: pass that on; the client may still send (a half-close).
                _ => {
                    self.app_r = None;
                    if !self.app_eof {
                        self.app_eof = true;
                        frame::encode(frame::APP_EOF, &[], &mut self.to_kdev);
                    }
                    if self.app_w.is_none() || error.is_some() {
                        self.app_w = None;
                        self.to_app.clear();
                        self.app_shut = true;
                    }
                }
            },
        }
    }
}

/// Read into `buf` from `r`, or never when there is none.
async fn read_opt(r: Option<&mut OwnedReadHalf>, buf: &mut [u8]) -> io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_opt(w: Option<&mut OwnedWriteHalf>, data: &[u8]) -> io::Result<usize> {
    match w {
        Some(w) => w.write(data).await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

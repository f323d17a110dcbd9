//! The forward relay: `kdev`'s port-forwards end here, and the relay connects to the app.
//!
//! A Kubernetes port-forward stream connects to its port in the pod when it is opened, so a
//! stream straight to the app can neither be opened ahead of need (it would be a connection to
//! whichever app runs then, holding up that app's graceful shutdown) nor outlive the app it
//! reached. The relay listens on 127.0.0.1 (an ephemeral port, published in the status as
//! `relay_port`) for as long as the supervisor lives, so `kdev` keeps a warm spare stream to it,
//! and it sees the app's restarts as they happen (the supervisor publishes its state to it). It
//! speaks [`kdev_protocol::relay`] frames with `kdev`; per stream:
//!
//! - **Open**: on `OPEN(port)`, connect to `127.0.0.1:port`, retrying while it refuses and
//!   waiting while the app is stopped, in crash backoff or not yet started, for up to
//!   [`WAIT_FOR_APP`]; then `ERROR` (kdev closes the client's connection and says why). Client
//!   bytes that arrive meanwhile are kept and sent once connected.
//! - **Restart** (only for connections opened with `OPEN_RESUME`: kdev's app ports, not
//!   Delve's): when the app closes the connection (or resets it) while the supervisor is
//!   stopping it, or after a new app started, the client's connection is kept. The bytes the
//!   client sent since the app last sent anything (at most [`REPLAY_LIMIT`]) got no answer from
//!   the old app: when there are some (a request that reached it as it shut down, or was sent
//!   on a kept-alive connection as the app closed it), the relay connects to the next app and
//!   sends them again. When there are none (an idle kept-alive connection: graceful shutdowns
//!   close those), the connection is detached: the next bytes the client sends connect to the
//!   app then running; a connection left detached for [`DETACHED_FOR`] is closed.
//! - **Crash**: the app's close while it was running, when its process is gone (a zombie not
//!   yet reaped, or the supervisor reports the exit): an idle connection is detached as above;
//!   one that was waiting for an answer gets `ERROR` (its request may be what crashed the app:
//!   it is not sent again).
//! - Any other close by the app is passed on (`APP_EOF`), as is every close for connections
//!   without `OPEN_RESUME`.
//!
//! This is connection-level and protocol-agnostic, so its limits are those of the protocol
//! spoken. Sound for request/response protocols where the client speaks first and a request
//! that got no byte of answer can be sent again (HTTP/1, gRPC on a new connection, most RPC):
//! the old app either drained the request (a graceful shutdown answers what it read) or never
//! read it. A request the old app read and then dropped without answering (an app without a
//! graceful shutdown, killed mid-request) is sent to the new app again, so it may run twice.
//! Pipelined requests after an answered one are not kept (the first answer byte counts for
//! all). A server-push stream (SSE, a WebSocket the app closes) whose app restarts is detached
//! and closed only after [`DETACHED_FOR`], unless the client sends something; a protocol where
//! the server speaks first sees nothing from the new app until the client sends.

use std::io;
use std::time::Duration;

use kdev_protocol::relay as frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a connection waits for an app to accept it.
pub const WAIT_FOR_APP: Duration = Duration::from_secs(10);
/// The most client bytes kept for sending again after a restart.
pub const REPLAY_LIMIT: usize = 1 << 20;
/// How long a connection whose app restarted stays open without the client sending anything.
pub const DETACHED_FOR: Duration = Duration::from_secs(10);
/// How often a refused connection to the app is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(5);
/// Above this much unsent data in one direction, the other side is not read from.
const BUFFER_LIMIT: usize = 256 * 1024;

/// What the relay knows of the app, from the supervisor's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppGate {
    /// A child runs (and has not been asked to stop).
    pub running: bool,
    /// The supervisor is stopping the child (a restart or shutdown).
    pub stopping: bool,
    /// How many children were started so far.
    pub starts: u64,
    /// The running child's PID.
    pub pid: Option<u32>,
}

/// A running relay: its port, and where the supervisor publishes the app's state.
pub struct Relay {
    pub port: u16,
    pub gate: watch::Sender<AppGate>,
}

/// Bind 127.0.0.1:0 and serve connections on a thread of its own.
pub fn start() -> io::Result<Relay> {
    start_with(WAIT_FOR_APP)
}

/// [`start`], with connections waiting up to `wait_for_app` for an app.
pub fn start_with(wait_for_app: Duration) -> io::Result<Relay> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let (gate, rx) = watch::channel(AppGate::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("kdev-relay".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return eprintln!("kdev-supervise: relay: {e}"),
                };
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(serve(stream, rx.clone(), wait_for_app));
                        }
                        // Out of file descriptors, most likely: wait for some to be freed.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        })?;
    Ok(Relay { port, gate })
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

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMM) STATE ...": COMM may hold anything, so look after its last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => false,
    }
}

/// Why the app's side of a connection ended, as far as the relay can tell.
#[derive(Debug, PartialEq, Eq)]
enum Loss {
    /// The supervisor stopped the app (or a new one already runs).
    Restart,
    /// The app died on its own.
    Crash,
    /// The app closed this connection and goes on running.
    Closed,
}

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

async fn serve(kdev: TcpStream, gate: watch::Receiver<AppGate>, wait_for_app: Duration) {
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

    /// Why the app's side ended; probes the port when the supervisor has not said yet.
    async fn classify(&self) -> Loss {
        let gate = *self.gate.borrow();
        if gate.stopping || (gate.running && gate.starts != self.app_starts) {
            return Loss::Restart;
        }
        if !gate.running {
            return Loss::Crash;
        }
        // The supervisor may not have reaped a crashed app yet: it is a zombie by then (its
        // sockets are closed before), or gone.
        if gate.pid.is_some_and(alive) {
            return Loss::Closed;
        }
        // Give the supervisor a moment to say whether it was stopping it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let gate = *self.gate.borrow();
        if gate.stopping || gate.starts != self.app_starts {
            Loss::Restart
        } else {
            Loss::Crash
        }
    }

    /// The app's side of the connection ended (EOF, or an error reading or writing).
    async fn app_lost(&mut self, error: Option<io::Error>) {
        let loss = if self.resume {
            self.classify().await
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn relay_client(relay: &Relay, port: u16, flags: u8) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
        s.write_all(&frame::open(port, flags)).await.unwrap();
        s
    }

    /// Frames from the relay until `until` is seen (or the stream ends); APP_DATA joined.
    async fn read_until(s: &mut TcpStream, until: u8) -> (Vec<u8>, Vec<u8>) {
        let mut buf = Vec::new();
        let mut data = Vec::new();
        let mut kinds = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some((kind, payload)) = frame::decode(&mut buf).unwrap() {
                kinds.push(kind);
                if kind == frame::APP_DATA {
                    data.extend_from_slice(&payload);
                }
                if kind == until {
                    return (kinds, data);
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("the relay answers")
                .unwrap();
            if n == 0 {
                return (kinds, data);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn data(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode_data(frame::DATA, bytes, &mut out);
        out
    }

    /// An "app" answering each line with "v<version>:<line>"; aborting it closes its
    /// connections, as an exit would.
    async fn app(listener: TcpListener, version: u32) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            connections.spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = tokio::io::BufReader::new(r);
                let mut line = String::new();
                use tokio::io::AsyncBufReadExt;
                while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let _ = w.write_all(format!("v{version}:{line}").as_bytes()).await;
                    line.clear();
                }
            });
        }
    }

    #[tokio::test]
    async fn a_connection_waits_for_the_app_and_survives_its_restart() {
        let relay = start().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // No app yet: the request waits.
        let mut s = relay_client(&relay, port, frame::OPEN_RESUME).await;
        s.write_all(&data(b"one\n")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let l1 = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let a1 = tokio::spawn(app(l1, 1));
        relay.gate.send_replace(AppGate {
            running: true,
            stopping: false,
            starts: 1,
            pid: Some(std::process::id()),
        });
        let (_, got) = read_until(&mut s, frame::APP_DATA).await;
        assert_eq!(got, b"v1:one\n");

        // A restart: the app closes the idle connection; the next request reaches app 2.
        relay.gate.send_replace(AppGate {
            running: false,
            stopping: true,
            starts: 1,
            pid: None,
        });
        a1.abort();
        let _ = a1.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(&data(b"two\n")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let l2 = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(app(l2, 2));
        relay.gate.send_replace(AppGate {
            running: true,
            stopping: false,
            starts: 2,
            pid: Some(std::process::id()),
        });
        let (kinds, got) = read_until(&mut s, frame::APP_DATA).await;
        assert_eq!(got, b"v2:two\n", "frames: {kinds:x?}");
    }

    fn gate(running: bool, starts: u64) -> AppGate {
        AppGate {
            running,
            stopping: !running,
            starts,
            pid: running.then(std::process::id),
        }
    }

    #[tokio::test]
    async fn a_request_the_stopping_app_dropped_is_sent_to_the_next_one() {
        let relay = start().unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l1.local_addr().unwrap().port();
        relay.gate.send_replace(gate(true, 1));
        let mut s = relay_client(&relay, port, frame::OPEN_RESUME).await;
        s.write_all(&data(b"lost?\n")).await.unwrap();
        // The old app reads the request and, stopping, closes without answering.
        let (mut conn, _) = l1.accept().await.unwrap();
        let mut got = [0u8; 6];
        conn.read_exact(&mut got).await.unwrap();
        relay.gate.send_replace(gate(false, 1));
        drop(conn);
        drop(l1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let l2 = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(app(l2, 2));
        relay.gate.send_replace(gate(true, 2));
        let (kinds, got) = read_until(&mut s, frame::APP_DATA).await;
        assert_eq!(got, b"v2:lost?\n", "frames: {kinds:x?}");
    }

    #[tokio::test]
    async fn a_close_by_the_running_app_is_passed_on() {
        let relay = start().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        relay.gate.send_replace(gate(true, 1));
        let mut s = relay_client(&relay, port, frame::OPEN_RESUME).await;
        let (conn, _) = l.accept().await.unwrap();
        drop(conn);
        let (kinds, _) = read_until(&mut s, frame::APP_EOF).await;
        assert_eq!(kinds, [frame::HELLO, frame::APP_EOF]);
    }

    #[tokio::test]
    async fn a_request_in_flight_when_the_app_crashed_is_not_sent_again() {
        let relay = start().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // A PID that does not exist: the app is gone, the supervisor has not said so yet.
        relay.gate.send_replace(AppGate {
            running: true,
            stopping: false,
            starts: 1,
            pid: Some(u32::MAX / 2),
        });
        let mut s = relay_client(&relay, port, frame::OPEN_RESUME).await;
        s.write_all(&data(b"boom\n")).await.unwrap();
        let (mut conn, _) = l.accept().await.unwrap();
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).await.unwrap();
        drop(conn);
        let (kinds, _) = read_until(&mut s, frame::ERROR).await;
        assert_eq!(kinds.last(), Some(&frame::ERROR));
    }

    #[test]
    fn this_process_is_alive_and_a_missing_one_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX / 2));
    }

    #[tokio::test]
    async fn without_resume_the_apps_close_is_passed_on() {
        let relay = start().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        relay.gate.send_replace(AppGate {
            running: true,
            stopping: false,
            starts: 1,
            pid: Some(std::process::id()),
        });
        let mut s = relay_client(&relay, port, 0).await;
        let (conn, _) = l.accept().await.unwrap();
        drop(conn);
        let (kinds, _) = read_until(&mut s, frame::APP_EOF).await;
        assert_eq!(kinds, [frame::HELLO, frame::APP_EOF]);
    }

    #[tokio::test]
    async fn no_app_in_time_is_an_error() {
        let relay = start_with(Duration::from_millis(300)).unwrap();
        let mut s = relay_client(&relay, 1, frame::OPEN_RESUME).await;
        let (kinds, _) = read_until(&mut s, frame::ERROR).await;
        assert_eq!(kinds.last(), Some(&frame::ERROR));
    }
}

//! Port-forwards from localhost to the dev pod that survive app restarts and pod replacement.
//!
//! The local listener lives for the whole session; each accepted connection gets its own
//! upstream port-forward stream to whichever pod is current at that moment. A restarted app or a
//! replaced pod therefore never affects the listener (unlike `kubectl port-forward`, which dies
//! with its pod).
//!
//! **Through the relay.** A pod whose supervisor runs the forward relay (it says so with
//! `relay_port`: [`kdev_protocol::relay`], and `supervise/relay.rs` in the controller for what
//! the relay does) is reached through it: the stream goes to the relay's port, and the relay
//! connects to the app's. Two things follow:
//! - **Warm spares.** A stream to the relay does not depend on the app, so [`SPARES`] streams
//!   per forwarded port are opened ahead of need (once the relay has said hello on each), and a
//!   new local connection is attached to one at once, instead of waiting for a new TLS
//!   connection to the API server and the port-forward upgrade (several round trips: 190 ms of
//!   the "ready" phase at 50 ms RTT). A used spare is replaced in the background; spares of a
//!   previous pod or relay are dropped when the target changes, and a spare whose stream ended
//!   is never handed out. (kube pools HTTP/1.1 connections to the API server, but each upgrade
//!   takes one for good, so without spares every local connection pays a handshake.)
//! - **Reloads without errors.** The relay sees the app's restarts as they happen: a connection
//!   that arrives while the app restarts waits for the new one (up to 10 s, then it is closed
//!   and kdev says why), and a kept-alive connection whose app restarted stays open and reaches
//!   the next app (for the app's ports; Delve's connections end with their Delve). Its limits
//!   (what it sends again, and to which protocols that is sound) are in the relay's docs.
//!
//! **Straight to the app**, for a controller without the relay (and until the relay's port is
//! known): when the app process exits (a restart after a save), connections to it are closed
//! here at once. Otherwise a client's kept-alive connection, as every browser keeps, would hang
//! for a second on its next request: containerd's port-forward waits up to 1 s for the client's
//! side to finish after the app closed its own (measured: 1.0 s through both
//! `kubectl port-forward` and kdev, 0 ms straight to the pod). The relay avoids that wait too:
//! it says in-band when the app closed a connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kdev_protocol::relay as frame;
use kube::api::{Api, Portforwarder};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};

/// How long opening the upstream stream may take: a pooled connection to the API server that a
/// NAT forgot would otherwise hold the client's connection for minutes.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Warm streams kept open to the relay, per forwarded port (a browser opens several
/// connections at once). `KDEV_FORWARD_SPARES` overrides it (0: none), to measure what they
/// buy.
pub const SPARES: usize = 2;

fn spares_wanted() -> usize {
    std::env::var("KDEV_FORWARD_SPARES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SPARES)
}
/// The longest wait before trying again to open a spare after a failure.
const SPARE_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often idle spares are checked for having ended.
const SPARE_CHECK: Duration = Duration::from_secs(5);

/// The pod to forward to, with the API handle of the session's current connection.
#[derive(Clone)]
pub struct ForwardTarget {
    pub pod: String,
    pub pods: Api<Pod>,
    /// The port of the pod's forward relay, once known; `None`: straight to the app.
    pub relay: Option<u16>,
    /// Delve's port (`kdev debug`): its connections end with the Delve they reached.
    pub delve: Option<u16>,
    /// Which session (and API connection) `pods` belongs to, from [`next_connection`]: warm
    /// spares opened over another one are dropped, since that connection may be the dead one
    /// the session was replaced for.
    pub connection: u64,
}

/// A number for a new session's connection (see [`ForwardTarget::connection`]).
pub fn next_connection() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a forwarder reports.
#[derive(Debug, Clone)]
pub enum ForwardEvent {
    /// A connection could not be forwarded.
    Failed { local: u16, error: String },
}

/// Listen on `127.0.0.1:<local>` and forward each connection to `<remote>` of the current pod.
/// `app_exits` counts exits of the app process: without the relay, a connection accepted
/// before the count moved is closed when it moves. Returns the bound address (useful when
/// `local` is 0).
pub async fn start(
    target: watch::Receiver<Option<ForwardTarget>>,
    app_exits: watch::Receiver<u64>,
    local: u16,
    remote: u16,
    events: mpsc::UnboundedSender<ForwardEvent>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", local)).await?;
    let addr = listener.local_addr()?;
    let spares = Spares::start(target.clone(), addr.port());
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let _ = conn.set_nodelay(true);
            let mut target = target.clone();
            let mut exits = app_exits.clone();
            let events = events.clone();
            let spares = spares.clone();
            tokio::spawn(async move {
                let span = tracing::info_span!("forward", local = addr.port(), remote);
                let forwarded = forward_one(&mut target, &mut exits, conn, remote, &spares);
                if let Err(error) = tracing::Instrument::instrument(forwarded, span).await {
                    let _ = events.send(ForwardEvent::Failed {
                        local: addr.port(),
                        error,
                    });
                }
            });
        }
    });
    Ok(addr)
}

async fn forward_one(
    current: &mut watch::Receiver<Option<ForwardTarget>>,
    app_exits: &mut watch::Receiver<u64>,
    conn: TcpStream,
    remote: u16,
    spares: &Spares,
) -> Result<(), String> {
    // While the pod is being replaced there is none: wait for the next one rather than failing.
    let target = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Some(t) = current.borrow_and_update().clone() {
                return Ok(t);
            }
            if current.changed().await.is_err() {
                return Err("kdev is shutting down".to_string());
            }
        }
    })
    .await
    .map_err(|_| "no dev pod to forward to".to_string())??;
    // A forwarded connection lives on its session's API connection. When kdev replaces the
    // session, that connection may be the dead one it was replaced for: close the client's
    // side so it reconnects at once instead of waiting on a stream that never answers.
    let over = session_over(current, target.connection);
    let forwarded = async {
        match target.relay {
            Some(relay) => via_relay(&target, relay, conn, remote, spares).await,
            None => straight(&target, app_exits, conn, remote).await,
        }
    };
    tokio::select! {
        r = forwarded => r,
        () = over => {
            tracing::debug!("the session it was forwarded through is over: closed");
            Ok(())
        }
    }
}

/// Resolves once the target is no longer reached through session `connection` (another
/// session, or none while the pod is being found).
async fn session_over(current: &mut watch::Receiver<Option<ForwardTarget>>, connection: u64) {
    loop {
        if current.borrow_and_update().as_ref().map(|t| t.connection) != Some(connection) {
            return;
        }
        if current.changed().await.is_err() {
            // kdev is shutting down; the runtime ends the forward.
            std::future::pending::<()>().await;
        }
    }
}

/// Open a port-forward stream to `port` of the target's pod.
async fn dial(target: &ForwardTarget, port: u16) -> Result<(Portforwarder, DuplexStream), String> {
    let pod = &target.pod;
    let mut pf = tokio::time::timeout(DIAL_TIMEOUT, target.pods.portforward(pod, &[port]))
        .await
        .map_err(|_| {
            format!(
                "port-forward to {pod}:{port}: no answer within {}s",
                DIAL_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("port-forward to {pod}:{port}: {e}"))?;
    let stream = pf.take_stream(port).ok_or("port-forward gave no stream")?;
    Ok((pf, stream))
}

/// Without the relay: a stream straight to the app's port.
async fn straight(
    target: &ForwardTarget,
    app_exits: &mut watch::Receiver<u64>,
    mut conn: TcpStream,
    remote: u16,
) -> Result<(), String> {
    let pod = &target.pod;
    let (pf, mut upstream) = dial(target, remote).await?;
    // Only exits from now on end this connection: it reaches whichever process runs now.
    app_exits.mark_unchanged();
    let copied = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => copied,
        // The process this connection reached is gone: close it now (see the module docs).
        // The port-forward itself winds down in the background.
        Ok(()) = app_exits.changed() => return Ok(()),
    };
    drop(upstream);
    let _ = pf.join().await;
    match copied {
        Ok(_) => Ok(()),
        // The client hanging up early is normal (browsers do it all the time).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("{pod}:{remote}: {e}")),
    }
}

/// Through the relay: a warm spare if there is one, else a new stream; the relay's frames.
async fn via_relay(
    target: &ForwardTarget,
    relay: u16,
    conn: TcpStream,
    remote: u16,
    spares: &Spares,
) -> Result<(), String> {
    let pod = &target.pod;
    let (pf, stream) = match spares.take(target) {
        Some(s) => {
            tracing::debug!("on a warm spare stream");
            (s.pf, s.stream)
        }
        None => dial(target, relay).await?,
    };
    let flags = if target.delve == Some(remote) {
        0
    } else {
        frame::OPEN_RESUME
    };
    let (mut from_relay, mut to_relay) = tokio::io::split(stream);
    let (mut from_client, mut to_client) = conn.into_split();
    // Client → relay, until the client shuts its side.
    let up = async {
        to_relay.write_all(&frame::open(remote, flags)).await?;
        let mut buf = vec![0u8; frame::MAX_PAYLOAD];
        let mut out = Vec::with_capacity(frame::MAX_PAYLOAD + frame::HEADER_LEN);
        loop {
            let n = from_client.read(&mut buf).await?;
            out.clear();
            if n == 0 {
                frame::encode(frame::EOF, &[], &mut out);
                to_relay.write_all(&out).await?;
                return std::io::Result::Ok(());
            }
            frame::encode(frame::DATA, &buf[..n], &mut out);
            to_relay.write_all(&out).await?;
        }
    };
    // Relay → client, until the app's side ends.
    let down = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some((kind, payload)) = frame::decode(&mut buf).map_err(|e| e.to_string())? {
                match kind {
                    frame::HELLO => {}
                    frame::APP_DATA => {
                        if to_client.write_all(&payload).await.is_err() {
                            // The client is gone; `up` sees it too.
                            return Ok(false);
                        }
                    }
                    frame::APP_EOF => {
                        let _ = to_client.shutdown().await;
                        return Ok(true);
                    }
                    frame::ERROR => return Err(String::from_utf8_lossy(&payload).into_owned()),
                    other => return Err(format!("unexpected relay frame {other:#x}")),
                }
            }
            let n = from_relay
                .read(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the port-forward stream ended".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::pin!(up, down);
    let mut up_done = false;
    let outcome = loop {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                // The client reset its connection, or the stream broke (`down` says which).
                Err(_) => break Ok(()),
            },
            r = &mut down => match r {
                // The app closed its side: done once the client closes its own.
                Ok(true) if !up_done => {
                    let _ = (&mut up).await;
                    break Ok(());
                }
                Ok(_) => break Ok(()),
                Err(e) => break Err(format!("{pod}:{remote}: {e}")),
            },
        }
    };
    // The port-forward winds down in the background.
    pf.abort();
    outcome
}

/// A warm stream to a pod's relay, with what keeps it open.
struct Spare {
    pod: String,
    relay: u16,
    connection: u64,
    pf: Portforwarder,
    stream: DuplexStream,
}

impl Spare {
    /// Whether it leads where `target` forwards: its pod's relay, over its session's connection.
    fn serves(&self, target: &ForwardTarget) -> bool {
        self.pod == target.pod
            && target.relay == Some(self.relay)
            && self.connection == target.connection
    }

    /// Whether its stream still stands (nothing may arrive on a spare before it is used).
    fn alive(&mut self) -> bool {
        let mut byte = [0u8; 1];
        self.stream.read(&mut byte).now_or_never().is_none()
    }
}

/// The warm spares of one forwarded port, kept by a task of their own.
#[derive(Clone)]
struct Spares {
    ready: Arc<Mutex<Vec<Spare>>>,
    taken: Arc<Notify>,
}

impl Spares {
    fn start(target: watch::Receiver<Option<ForwardTarget>>, local: u16) -> Spares {
        let spares = Spares {
            ready: Arc::default(),
            taken: Arc::new(Notify::new()),
        };
        let keeper = spares.clone();
        tokio::spawn(async move {
            let span = tracing::debug_span!("spares", local);
            tracing::Instrument::instrument(keeper.keep(target), span).await
        });
        spares
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Spare>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live spare to the target's relay, over its connection, if one is ready.
    fn take(&self, target: &ForwardTarget) -> Option<Spare> {
        let mut ready = self.lock();
        let mut found = None;
        while let Some(mut s) = ready.pop() {
            if s.serves(target) && s.alive() {
                found = Some(s);
                break;
            }
        }
        drop(ready);
        self.taken.notify_one();
        found
    }

    /// Keep [`SPARES`] live spares to the current target's relay, opening the missing ones
    /// at the same time.
    async fn keep(self, mut target: watch::Receiver<Option<ForwardTarget>>) {
        let wanted = spares_wanted();
        let mut backoff = Duration::from_millis(250);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut opening = tokio::task::JoinSet::new();
        loop {
            let current = target.borrow_and_update().clone();
            // Drop spares of another pod, relay or connection, and those whose stream ended.
            let have = {
                let mut ready = self.lock();
                ready.retain_mut(|s| current.as_ref().is_some_and(|t| s.serves(t)) && s.alive());
                ready.len()
            };
            if let Some(t) = &current
                && let Some(relay) = t.relay
                && retry_at.is_none_or(|at| at <= tokio::time::Instant::now())
            {
                retry_at = None;
                for _ in have + opening.len()..wanted {
                    let t = t.clone();
                    opening.spawn(async move { open_spare(&t, relay).await });
                }
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = target.changed() => if r.is_err() { return },
                _ = self.taken.notified() => {}
                _ = tokio::time::sleep(SPARE_CHECK) => {}
                _ = retry => {}
                Some(opened) = opening.join_next() => match opened {
                    Ok(Ok(s)) => {
                        backoff = Duration::from_millis(250);
                        // The target may have moved on while it was opening.
                        if target.borrow().as_ref().is_some_and(|t| s.serves(t)) {
                            self.lock().push(s);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!("opening a spare stream: {e}");
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(SPARE_MAX_BACKOFF);
                    }
                    Err(_) => {}
                },
            }
        }
    }
}

/// A stream to the relay, ready once the relay said hello on it.
async fn open_spare(target: &ForwardTarget, relay: u16) -> Result<Spare, String> {
    let (pf, mut stream) = dial(target, relay).await?;
    let mut hello = vec![0u8; frame::HEADER_LEN + frame::HELLO_PAYLOAD.len()];
    tokio::time::timeout(DIAL_TIMEOUT, stream.read_exact(&mut hello))
        .await
        .map_err(|_| "the relay did not say hello".to_string())?
        .map_err(|e| format!("the relay's stream ended: {e}"))?;
    match frame::decode(&mut hello) {
        Ok(Some((frame::HELLO, p))) if p == frame::HELLO_PAYLOAD => Ok(Spare {
            pod: target.pod.clone(),
            connection: target.connection,
            relay,
            pf,
            stream,
        }),
        _ => Err(format!(
            "port {relay} of {} is not kdev's relay",
            target.pod
        )),
    }
}

/// Repeated forward errors, summarised: the first of a kind is shown at once; identical ones
/// within the window are counted and shown as one line when the window ends (a browser
/// retrying against a pod being replaced would otherwise print dozens of identical lines).
#[derive(Debug)]
pub struct ErrorSummary {
    window: Duration,
    /// (local port, error) → (window end, repeats since the first).
    open: BTreeMap<(u16, String), (Instant, u32)>,
}

impl ErrorSummary {
    pub fn new(window: Duration) -> ErrorSummary {
        ErrorSummary {
            window,
            open: BTreeMap::new(),
        }
    }

    /// Record an error; returns the line to show now, if any.
    pub fn record(&mut self, local: u16, error: &str, now: Instant) -> Option<String> {
        let key = (local, error.to_string());
        match self.open.get_mut(&key) {
            Some((end, repeats)) if now < *end => {
                *repeats += 1;
                None
            }
            _ => {
                self.open.insert(key, (now + self.window, 0));
                Some(format!("localhost:{local}: {error}"))
            }
        }
    }

    /// Close the windows that ended; returns a line for each that saw repeats.
    pub fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        self.open.retain(|(local, error), (end, repeats)| {
            if now < *end {
                return true;
            }
            if *repeats > 0 {
                lines.push(format!(
                    "localhost:{local}: {error} ({repeats} more times in {}s)",
                    self.window.as_secs()
                ));
            }
            false
        });
        lines
    }

    /// Resolves when the earliest open window ends (never, when none is open).
    pub async fn flush_due(&self) {
        match self.open.values().map(|(end, _)| *end).min() {
            Some(end) => tokio::time::sleep_until(end.into()).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_are_counted_then_summarised_once() {
        let t0 = Instant::now();
        let mut s = ErrorSummary::new(Duration::from_secs(10));
        assert_eq!(
            s.record(8080, "refused", t0).as_deref(),
            Some("localhost:8080: refused")
        );
        for i in 1..=39 {
            assert!(
                s.record(8080, "refused", t0 + Duration::from_millis(i * 100))
                    .is_none()
            );
        }
        // Another error or port is its own line.
        assert!(s.record(8080, "reset", t0).is_some());
        assert!(s.record(9090, "refused", t0).is_some());
        assert!(s.flush(t0 + Duration::from_secs(5)).is_empty());
        let lines = s.flush(t0 + Duration::from_secs(10));
        assert_eq!(
            lines,
            ["localhost:8080: refused (39 more times in 10s)"],
            "windows without repeats end silently"
        );
        // After the window, the same error is shown again at once.
        assert!(
            s.record(8080, "refused", t0 + Duration::from_secs(11))
                .is_some()
        );
    }
}

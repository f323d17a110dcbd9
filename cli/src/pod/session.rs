//! The CLI's side of the one long-lived exec stream to `kdev-controller serve`.
//!
//! A new exec per change would cost a round trip through the API server and the kubelet, which
//! is most of what a small change should cost; so one stream carries every request, response and
//! event of a session. Events can arrive at any time, also while a request waits for its
//! response: they are queued and handed out by [`ControllerSession::next_event`]. The pod's
//! module requests are the exception: the reader hands each to the module proxy at once
//! ([`crate::modules::Proxy`]), since the pod's go waits on them while the caller may be busy
//! elsewhere (awaiting a patch's result); they are answered concurrently, part by part.
//!
//! The stream can die silently: a NAT or a cloud load balancer forgets an idle flow without a
//! reset, and nothing ever arrives again. So the session keeps a heartbeat: when nothing has
//! been heard for [`PING_AFTER`] a `Ping` goes out (the controller answers it from its reader,
//! even while it applies a large patch), and when nothing at all has been heard for
//! [`DEAD_AFTER`] — while no frame of ours is still making progress on the way out — the
//! session is declared dead ([`SessionError::Silent`]) and the caller replaces it over a new
//! connection. One reader task and one writer task own the two halves of the stream, so every
//! method here is cancel-safe (a frame is never half written because a `select!` moved on).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kdev_protocol::handshake::client_handshake;
use kdev_protocol::{
    BuildMode, ClientCodec, ClientMessage, ErrorMessage, FrameError, Hello, ListingDigest,
    ModuleRequest, Patch, PatchResult, Ping, Reconcile, ReconcileContinue, ReconcileResult,
    ServerMessage, Welcome,
};
use kube::api::Api;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::deploy::rewrite::{CONTROLLER_PATH, KDEV_DIR, SIDECAR_NAME};
use crate::modules::{Answer, Proxy};
use crate::pod::exec_stream::{self, ExecStream};
use crate::task::AbortOnDrop;

/// Silence after which a `Ping` is sent.
const PING_AFTER: Duration = Duration::from_secs(4);
/// Silence after which the stream is declared dead (a dead stream is noticed within this plus
/// one heartbeat check).
const DEAD_AFTER: Duration = Duration::from_secs(12);
/// How often the heartbeat looks at the stream.
const HEARTBEAT_CHECK: Duration = Duration::from_millis(500);
/// How long the controller may take to answer a patch once it is sent. Pings keep the stream
/// alive meanwhile; this bounds a controller that answers pings but never the patch.
const PATCH_REPLY_DEADLINE: Duration = Duration::from_secs(120);
/// Listing a large tree hashes every file the controller has not seen yet.
const RECONCILE_REPLY_DEADLINE: Duration = Duration::from_secs(600);
/// Frames are written in slices of this size, so a stalled write is noticed per slice.
const WRITE_SLICE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot start kdev-controller in pod {pod}: {source}")]
    Exec {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("handshake with kdev-controller failed: {0}")]
    Handshake(String),
    /// The controller kdev uploaded speaks another protocol: retrying cannot help.
    #[error(
        "the kdev-controller kdev uploaded speaks another protocol ({0}); it was built from \
         other sources than this kdev: rebuild kdev (`cargo install --locked --path cli`), or \
         the controller named by KDEV_CONTROLLER_BIN (`controller/build-static`)"
    )]
    VersionMismatch(String),
    #[error("the controller refused the request: {}: {}", .0.code, .0.message)]
    Refused(ErrorMessage),
    #[error("the exec stream to kdev-controller ended{}", stderr_suffix(.0))]
    Closed(String),
    #[error("writing to kdev-controller: {0}")]
    Write(String),
    #[error("unreadable message from kdev-controller: {0}")]
    Decode(String),
    #[error("building the patch: {0}")]
    Tar(std::io::Error),
    #[error("kdev-controller did not answer within {0:?}")]
    Timeout(Duration),
    #[error("nothing heard from kdev-controller for {}s (the connection went silent)", .0.as_secs())]
    Silent(Duration),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// What the reader task hands over.
enum Incoming {
    Message(Box<ServerMessage>),
    /// The stream ended (cleanly, or with the error that ended it).
    Ended(Option<FrameError>),
}

/// When the stream last showed life, shared by the reader, the writer and the heartbeat.
#[derive(Debug)]
struct Liveness {
    started: Instant,
    /// Last message received.
    last_rx: Instant,
    /// Last progress writing a frame that is not a ping (a ping "written" into a dead
    /// connection's buffers proves nothing).
    last_tx: Instant,
}

impl Liveness {
    fn new() -> Liveness {
        let now = Instant::now();
        Liveness {
            started: now,
            last_rx: now,
            last_tx: now,
        }
    }
}

/// The heartbeat's decision, a pure function of the times involved.
#[derive(Debug, PartialEq, Eq)]
enum Beat {
    Fine,
    Ping,
    Dead(Duration),
}

fn beat(now: Instant, live: &Liveness, last_ping: Option<Instant>) -> Beat {
    let heard = now.saturating_duration_since(live.last_rx);
    let silent = now.saturating_duration_since(live.last_rx.max(live.last_tx));
    if silent >= DEAD_AFTER {
        return Beat::Dead(silent);
    }
    let ping_due = last_ping.is_none_or(|p| now.saturating_duration_since(p) >= PING_AFTER);
    if heard >= PING_AFTER && ping_due {
        Beat::Ping
    } else {
        Beat::Fine
    }
}

/// A frame on its way to the writer task.
struct Outgoing {
    frame: Vec<u8>,
    is_ping: bool,
    /// Told once the frame is written (a module answer queues its next part then).
    written: Option<oneshot::Sender<()>>,
}

/// A running `kdev-controller serve`.
pub struct ControllerSession {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Set by the writer task when a write fails or stalls.
    write_failed: watch::Receiver<Option<String>>,
    incoming: mpsc::Receiver<Incoming>,
    events: VecDeque<ServerMessage>,
    ended: Option<SessionError>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    liveness: Arc<Mutex<Liveness>>,
    last_ping: Option<Instant>,
    next_id: u64,
    /// Patches sent and not answered yet: their size and when they were queued.
    in_flight: BTreeMap<u64, (usize, Instant)>,
    peak_in_flight: usize,
    pub welcome: Welcome,
    /// The reader task, with the module answers it started: they end with the session.
    _reader: AbortOnDrop,
    // Kept so the stream stays open (the exec, or a local process); dropping it ends it.
    _transport: Box<dyn Send>,
}

impl ControllerSession {
    /// Exec `kdev-controller serve` in the pod's sidecar and do the handshake. `modules`
    /// answers the pod's module requests (`None` when the Hello did not ask for the proxy).
    pub async fn open(
        pods: &Api<Pod>,
        pod: &str,
        hello: Hello,
        modules: Option<Proxy>,
    ) -> Result<ControllerSession, SessionError> {
        // Build with the image's own Go caches (which it may ship pre-filled), where `go env`
        // says they are in that image.
        let script = format!(
            "m=$(go env GOMODCACHE 2>/dev/null); c=$(go env GOCACHE 2>/dev/null); \
             exec {CONTROLLER_PATH} serve --kdev-dir={KDEV_DIR} ${{m:+--gomodcache=\"$m\"}} \
             ${{c:+--gocache=\"$c\"}}"
        );
        let command = vec!["sh".to_string(), "-c".into(), script];
        // Large stdin messages (kube's own exec sends 1 KiB ones: see `exec_stream`).
        let open = exec_stream::exec(pods, pod, SIDECAR_NAME, command);
        let ExecStream {
            stdin,
            stdout,
            stderr,
            task,
        } = tokio::time::timeout(DEAD_AFTER, open)
            .await
            .map_err(|_| SessionError::Timeout(DEAD_AFTER))?
            .map_err(|source| SessionError::Exec {
                pod: pod.into(),
                source,
            })?;
        Self::start(stdout, stdin, stderr, hello, Box::new(task), modules).await
    }

    /// The session over any byte streams to a `kdev-controller serve` (its stdout, stdin and
    /// stderr): the handshake, then the reader and writer tasks. `transport` is kept for as
    /// long as the session lives; `modules` answers module requests.
    pub async fn start(
        mut stdout: impl AsyncRead + Send + Unpin + 'static,
        stdin: impl AsyncWrite + Send + Unpin + 'static,
        stderr: impl AsyncRead + Send + Unpin + 'static,
        hello: Hello,
        transport: Box<dyn Send>,
        modules: Option<Proxy>,
    ) -> Result<ControllerSession, SessionError> {
        let mut writer: Writer = Box::new(stdin);

        // The controller logs to stderr; keep the last lines to explain a broken stream.
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        {
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "kdev::controller", "{line}");
                    let mut t = lock(&tail);
                    t.push_back(line);
                    if t.len() > 20 {
                        t.pop_front();
                    }
                }
            });
        }

        let mut codec = ClientCodec::new();
        let welcome = tokio::time::timeout(
            Duration::from_secs(30),
            client_handshake(&mut codec, &mut stdout, &mut writer, hello),
        )
        .await
        .map_err(|_| SessionError::Timeout(Duration::from_secs(30)))?
        .map_err(|e| {
            let tail = lock(&stderr_tail)
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            match e {
                kdev_protocol::HandshakeError::Refused {
                    code: kdev_protocol::ErrorCode::ProtocolVersionMismatch,
                    message,
                } => SessionError::VersionMismatch(message),
                e @ kdev_protocol::HandshakeError::VersionMismatch { .. } => {
                    SessionError::VersionMismatch(e.to_string())
                }
                e => SessionError::Handshake(format!("{e}{}", stderr_suffix(&tail))),
            }
        })?;

        let liveness = Arc::new(Mutex::new(Liveness::new()));
        let (tx, incoming) = mpsc::channel(1024);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let reader = {
            let liveness = liveness.clone();
            // Weak: the writer must still see the queue end when the session closes.
            let out = out_tx.downgrade();
            // Dropped with the reader (the stream ended, or the session was dropped): the pod
            // answers go 503 for what was not answered yet, and go retries.
            let mut answers = JoinSet::new();
            tokio::spawn(async move {
                loop {
                    let got = codec.read(&mut stdout).await;
                    let item = match got {
                        Ok(Some(ServerMessage::ModuleRequest(request))) => {
                            lock(&liveness).last_rx = Instant::now();
                            answers.spawn(answer_module(modules.clone(), request, out.clone()));
                            // Reap the finished ones, so a long session does not keep them.
                            while answers.try_join_next().is_some() {}
                            continue;
                        }
                        Ok(Some(msg)) => {
                            lock(&liveness).last_rx = Instant::now();
                            Incoming::Message(Box::new(msg))
                        }
                        Ok(None) => Incoming::Ended(None),
                        Err(e) => Incoming::Ended(Some(e)),
                    };
                    let ended = matches!(item, Incoming::Ended(_));
                    if tx.send(item).await.is_err() || ended {
                        break;
                    }
                }
            })
        };
        let (failed_tx, write_failed) = watch::channel(None);
        tokio::spawn(writer_task(writer, out_rx, failed_tx, liveness.clone()));
        Ok(ControllerSession {
            outgoing: out_tx,
            write_failed,
            incoming,
            events: VecDeque::new(),
            ended: None,
            stderr_tail,
            liveness,
            last_ping: None,
            next_id: 1,
            in_flight: BTreeMap::new(),
            peak_in_flight: 0,
            welcome,
            _reader: AbortOnDrop::new(reader),
            _transport: transport,
        })
    }

    fn closed(&self) -> SessionError {
        SessionError::Closed(
            lock(&self.stderr_tail)
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queue a message for the writer task (never blocks, so it is cancel-safe).
    fn send(&mut self, msg: &ClientMessage) -> Result<(), SessionError> {
        let frame = ClientCodec::encode(msg).map_err(|e| SessionError::Write(e.to_string()))?;
        let is_ping = matches!(msg, ClientMessage::Ping(_));
        self.outgoing
            .send(Outgoing {
                frame,
                is_ping,
                written: None,
            })
            .map_err(|_| self.write_error())
    }

    fn write_error(&self) -> SessionError {
        SessionError::Write(
            self.write_failed
                .borrow()
                .clone()
                .unwrap_or_else(|| "the stream is closed".into()),
        )
    }

    /// The next message from the controller, keeping the heartbeat while waiting. Pongs are
    /// consumed here. Cancel-safe.
    async fn recv(&mut self) -> Result<ServerMessage, SessionError> {
        if let Some(e) = &self.ended {
            return Err(clone_ended(e));
        }
        let mut check = tokio::time::interval(HEARTBEAT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = self.incoming.recv() => match item {
                    Some(Incoming::Message(m)) => match *m {
                        ServerMessage::Pong(_) => continue,
                        m => return Ok(m),
                    },
                    Some(Incoming::Ended(err)) => {
                        let e = match err {
                            Some(FrameError::Io(_) | FrameError::Truncated { .. }) | None => {
                                self.closed()
                            }
                            Some(e) => SessionError::Decode(e.to_string()),
                        };
                        self.ended = Some(clone_ended(&e));
                        return Err(e);
                    }
                    None => {
                        let e = self.closed();
                        self.ended = Some(clone_ended(&e));
                        return Err(e);
                    }
                },
                _ = self.write_failed.changed() => {
                    let e = self.write_error();
                    self.ended = Some(clone_ended(&e));
                    return Err(e);
                }
                _ = check.tick() => {
                    let decision = beat(Instant::now(), &lock(&self.liveness), self.last_ping);
                    match decision {
                        Beat::Fine => {}
                        Beat::Ping => {
                            let id = self.id();
                            self.last_ping = Some(Instant::now());
                            self.send(&ClientMessage::Ping(Ping { id }))?;
                        }
                        Beat::Dead(silent) => {
                            let e = SessionError::Silent(silent);
                            self.ended = Some(clone_ended(&e));
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Wait for the response `pick` accepts, queueing events that arrive meanwhile.
    async fn response<T>(
        &mut self,
        id: u64,
        timeout: Duration,
        mut pick: impl FnMut(ServerMessage) -> Result<T, Box<ServerMessage>>,
    ) -> Result<T, SessionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| SessionError::Timeout(timeout))??;
            if let ServerMessage::Error(e) = &msg
                && (e.id == Some(id)
                    || e.id.is_some_and(|i| self.in_flight.contains_key(&i))
                    || e.fatal)
            {
                return Err(SessionError::Refused(e.clone()));
            }
            match pick(msg) {
                Ok(t) => return Ok(t),
                Err(other) => self.events.push_back(*other),
            }
        }
    }

    /// The pod's listing of the sync root.
    pub async fn reconcile(&mut self) -> Result<ReconcileResult, SessionError> {
        let id = self.request_listing(false)?;
        self.listing(id).await
    }

    /// Ask for the pod's listing without waiting for it (see [`Self::listing`]): the pod lists
    /// its tree while the caller lists the local one. Returns the request's id. With
    /// `digest_first`, the pod answers with the listing's digest ([`Self::listing_digest`])
    /// and keeps the listing until [`Self::continue_listing`].
    pub fn request_listing(&mut self, digest_first: bool) -> Result<u64, SessionError> {
        let id = self.id();
        self.send(&ClientMessage::Reconcile(Reconcile { id, digest_first }))?;
        Ok(id)
    }

    /// The digest of the listing asked for with `request_listing(true)`.
    pub async fn listing_digest(&mut self, id: u64) -> Result<ListingDigest, SessionError> {
        let pick = move |m| match m {
            ServerMessage::ListingDigest(d) if d.id == id => Ok(d),
            other => Err(Box::new(other)),
        };
        self.response(id, RECONCILE_REPLY_DEADLINE, pick).await
    }

    /// After [`Self::listing_digest`]: have the listing sent (then read it with
    /// [`Self::listing`]), or dropped.
    pub fn continue_listing(&mut self, id: u64, send: bool) -> Result<(), SessionError> {
        self.send(&ClientMessage::ReconcileContinue(ReconcileContinue {
            id,
            send,
        }))
    }

    /// The listing asked for with [`Self::request_listing`].
    pub async fn listing(&mut self, id: u64) -> Result<ReconcileResult, SessionError> {
        let part = move |m| match m {
            ServerMessage::ReconcileResult(r) if r.id == id => Ok(r),
            other => Err(Box::new(other)),
        };
        // A large listing comes in parts: all but the last say `more`.
        let mut listing = self.response(id, RECONCILE_REPLY_DEADLINE, part).await?;
        while listing.more {
            let next = self.response(id, RECONCILE_REPLY_DEADLINE, part).await?;
            listing.absorb(next);
        }
        Ok(listing)
    }

    /// Send deletions plus a tar of files; returns what was applied.
    pub async fn patch(
        &mut self,
        deletes: Vec<String>,
        tar: Vec<u8>,
        build: BuildMode,
    ) -> Result<PatchResult, SessionError> {
        let id = self.send_patch(deletes, tar, build)?;
        self.patch_result(id).await
    }

    /// Queue a patch without waiting for its result (see [`Self::patch_result`]); returns its
    /// id. The controller applies patches one at a time in the order they were sent, so several
    /// can be on the way at once (its input queue is bounded: the stream's flow control holds
    /// the sender back once it is full).
    pub fn send_patch(
        &mut self,
        deletes: Vec<String>,
        tar: Vec<u8>,
        build: BuildMode,
    ) -> Result<u64, SessionError> {
        let id = self.id();
        let bytes = tar.len();
        self.send(&ClientMessage::Patch(Patch {
            id,
            deletes,
            build,
            tar,
        }))?;
        self.in_flight.insert(id, (bytes, Instant::now()));
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight.len());
        Ok(id)
    }

    /// The most patches that were on the way at once (tests).
    #[cfg(test)]
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight
    }

    /// Wait for the result of the patch `id` sent with [`Self::send_patch`]. A refusal of any
    /// patch still on its way fails this wait too: the caller stops and reconciles.
    pub async fn patch_result(&mut self, id: u64) -> Result<PatchResult, SessionError> {
        let is_it = |m: &ServerMessage| matches!(m, ServerMessage::PatchResult(r) if r.id == id);
        let result = if let Some(i) = self.events.iter().position(is_it) {
            match self.events.remove(i) {
                Some(ServerMessage::PatchResult(r)) => r,
                _ => unreachable!("found above"),
            }
        } else {
            self.response(id, PATCH_REPLY_DEADLINE, |m| match m {
                ServerMessage::PatchResult(r) if r.id == id => Ok(r),
                other => Err(Box::new(other)),
            })
            .await?
        };
        if let Some((bytes, t0)) = self.in_flight.remove(&id) {
            tracing::debug!(
                "patch {id}: {bytes} bytes, applied in the pod in {} ms, answered after {:?}",
                result.elapsed_ms,
                t0.elapsed()
            );
        }
        Ok(result)
    }

    /// Build now (and restart on success); the outcome arrives as events. Returns the request's
    /// id (`BuildStarted` names it).
    pub fn build(&mut self) -> Result<u64, SessionError> {
        let id = self.id();
        self.send(&ClientMessage::Build(kdev_protocol::BuildRequest { id }))?;
        Ok(id)
    }

    /// Restart the app without building (the status page's button).
    pub fn restart(&mut self) -> Result<(), SessionError> {
        let id = self.id();
        self.send(&ClientMessage::Restart(kdev_protocol::RestartRequest {
            id,
        }))
    }

    /// The next event (or unsolicited message); an error when the stream has ended or went
    /// silent. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<ServerMessage, SessionError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        self.recv().await
    }

    /// Run `work` while reading the session (heartbeat, module requests behind events): the
    /// events that arrive meanwhile are kept for [`Self::next_event`], in order. A session that
    /// ends meanwhile is reported by the next call that reads it.
    pub async fn holding_events<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut held = VecDeque::new();
        let out = loop {
            tokio::select! {
                out = &mut work => break out,
                ev = self.recv(), if self.ended.is_none() => {
                    if let Ok(m) = ev {
                        held.push_back(m);
                    }
                }
            }
        };
        self.events.extend(held);
        out
    }

    /// How long this session has been up.
    pub fn age(&self) -> Duration {
        lock(&self.liveness).started.elapsed()
    }

    /// End the session politely: say bye and give the writer a moment to send it.
    pub async fn close(mut self) {
        if self.send(&ClientMessage::Bye).is_ok() {
            let (tx, _) = mpsc::unbounded_channel();
            // Dropping the sender lets the writer finish its queue and shut the stream down.
            drop(std::mem::replace(&mut self.outgoing, tx));
            let _ = tokio::time::timeout(
                Duration::from_millis(500),
                self.write_failed.wait_for(|f| f.is_some()),
            )
            .await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking holder cannot leave these plain values half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `SessionError` holds a non-clonable `kube::Error` in one variant that never ends a running
/// session; the ones that do are re-created from their text.
fn clone_ended(e: &SessionError) -> SessionError {
    match e {
        SessionError::Silent(d) => SessionError::Silent(*d),
        SessionError::Closed(s) => SessionError::Closed(s.clone()),
        SessionError::Decode(s) => SessionError::Decode(s.clone()),
        SessionError::Timeout(d) => SessionError::Timeout(*d),
        other => SessionError::Write(other.to_string()),
    }
}

/// Owns the write half: writes whole frames in order, slice by slice, each slice within
/// [`DEAD_AFTER`]; records progress for the heartbeat; reports the first failure and stops.
/// When the queue's sender is dropped it shuts the stream down (the controller sees EOF).
async fn writer_task(
    mut writer: Writer,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    failed: watch::Sender<Option<String>>,
    liveness: Arc<Mutex<Liveness>>,
) {
    let fail = |why: String| {
        let _ = failed.send(Some(why));
    };
    while let Some(out) = rx.recv().await {
        for slice in out.frame.chunks(WRITE_SLICE) {
            match tokio::time::timeout(DEAD_AFTER, writer.write_all(slice)).await {
                Ok(Ok(())) => {
                    if !out.is_ping {
                        lock(&liveness).last_tx = Instant::now();
                    }
                }
                Ok(Err(e)) => return fail(e.to_string()),
                Err(_) => {
                    return fail(format!(
                        "no progress sending to the pod for {}s",
                        DEAD_AFTER.as_secs()
                    ));
                }
            }
        }
        match tokio::time::timeout(DEAD_AFTER, writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(e.to_string()),
            Err(_) => return fail("flushing to the pod timed out".into()),
        }
        if let Some(written) = out.written {
            let _ = written.send(());
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    fail("closed".into());
}

/// Parts of one module answer queued for the writer at once: enough to keep the stream busy
/// while the next is read and encoded (one at a time left it idle between parts: 49 MB/s
/// against 79 for a raw exec, `tests/bench/modules`), few enough that a patch queued meanwhile
/// waits for at most this many MiB.
const PARTS_IN_FLIGHT: usize = 4;

/// Answer one module request through the writer's queue, a few parts at a time
/// ([`PARTS_IN_FLIGHT`]): a part is queued once the one that many before it is written, so a
/// patch queued meanwhile goes out between parts rather than after a whole zip. Stops when
/// the session's queue is gone.
async fn answer_module(
    modules: Option<Proxy>,
    request: ModuleRequest,
    out: mpsc::WeakUnboundedSender<Outgoing>,
) {
    let answer = match &modules {
        Some(proxy) => proxy.answer(&request.path).await,
        None => Answer::failed("kdev did not ask for the module proxy in this session"),
    };
    let mut parts = answer.into_parts(request.id);
    let mut in_flight: VecDeque<oneshot::Receiver<()>> = VecDeque::new();
    while let Some(part) = parts.next().await {
        if in_flight.len() >= PARTS_IN_FLIGHT
            && let Some(oldest) = in_flight.pop_front()
            && oldest.await.is_err()
        {
            return;
        }
        let frame = match ClientCodec::encode(&ClientMessage::ModuleResponse(part)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("module response {}: {e}", request.id);
                return;
            }
        };
        let (done, written) = oneshot::channel();
        let queued = out.upgrade().is_some_and(|out| {
            out.send(Outgoing {
                frame,
                is_ping: false,
                written: Some(done),
            })
            .is_ok()
        });
        if !queued {
            return;
        }
        in_flight.push_back(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_pings_when_quiet_and_declares_a_silent_stream_dead() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let live = Liveness {
            started: t0,
            last_rx: t0,
            last_tx: t0,
        };
        assert_eq!(beat(s(1), &live, None), Beat::Fine);
        assert_eq!(beat(s(4), &live, None), Beat::Ping);
        // One ping per PING_AFTER while the silence lasts.
        assert_eq!(beat(s(5), &live, Some(s(4))), Beat::Fine);
        assert_eq!(beat(s(8), &live, Some(s(4))), Beat::Ping);
        assert_eq!(beat(s(12), &live, Some(s(8))), Beat::Dead(DEAD_AFTER));
        // A frame of ours still going out keeps it alive (a large patch on a slow link)...
        let sending = Liveness {
            last_tx: s(11),
            ..live
        };
        assert_eq!(beat(s(12), &sending, Some(s(12))), Beat::Fine);
        // ...but not forever once it stalls.
        assert!(matches!(beat(s(23), &sending, Some(s(20))), Beat::Dead(_)));
        // Hearing anything resets it.
        let heard = Liveness {
            last_rx: s(11),
            ..live
        };
        assert_eq!(beat(s(12), &heard, Some(s(8))), Beat::Fine);
    }

    /// A controller on in-memory streams: the Welcome, then whatever the test does with its
    /// codec and the two ends.
    mod fake {
        use super::*;
        use kdev_protocol::{PatchLimits, ServerCodec};
        use tokio::io::{DuplexStream, duplex};

        pub struct Controller {
            pub codec: ServerCodec,
            /// What the client sends.
            pub rx: DuplexStream,
            /// What the client receives.
            pub tx: DuplexStream,
        }

        impl Controller {
            pub async fn read(&mut self) -> ClientMessage {
                self.codec
                    .read(&mut self.rx)
                    .await
                    .unwrap()
                    .expect("a message")
            }
            pub async fn write(&mut self, m: ServerMessage) {
                self.codec.write(&mut self.tx, &m).await.unwrap();
            }
        }

        /// A session to a fake controller (run by `controller` in its own task).
        pub async fn session<F, Fut>(modules: Option<Proxy>, controller: F) -> ControllerSession
        where
            F: FnOnce(Controller) -> Fut + Send + 'static,
            Fut: std::future::Future<Output = ()> + Send,
        {
            let (client_out, rx) = duplex(1 << 16);
            let (tx, client_in) = duplex(1 << 16);
            let (_, stderr) = duplex(64);
            tokio::spawn(async move {
                let mut c = Controller {
                    codec: ServerCodec::new(),
                    rx,
                    tx,
                };
                let ClientMessage::Hello(_) = c.read().await else {
                    panic!("not a hello");
                };
                c.write(ServerMessage::Welcome(welcome())).await;
                controller(c).await;
            });
            let hello = kdev_protocol::handshake::hello("session test", Default::default());
            ControllerSession::start(client_in, client_out, stderr, hello, Box::new(()), modules)
                .await
                .expect("the handshake")
        }

        fn welcome() -> Welcome {
            Welcome {
                protocol_version: kdev_protocol::PROTOCOL_VERSION,
                controller_version: "test".into(),
                sync_root: "/src".into(),
                app_binary: "/bin/app".into(),
                app_binary_present: false,
                needs_build: true,
                supervisor_pid: None,
                app_status: None,
                max_frame_size: kdev_protocol::MAX_FRAME_SIZE,
                limits: PatchLimits {
                    max_entries: 1000,
                    max_file_size: 1 << 20,
                    max_total_size: 1 << 20,
                    max_extension_header: 1 << 10,
                    max_deletes: 1000,
                },
                module_env: Default::default(),
            }
        }
    }

    /// The pod's go asks for a module while the client waits for a patch's result, which the
    /// controller only sends once the module has arrived: the reader answers it on its own.
    #[tokio::test]
    async fn module_requests_are_answered_while_a_patch_waits() {
        use crate::modules::{GoEnv, ModuleSource};
        use kdev_protocol::{MODULE_RESPONSE_PART, ModuleResponse, ModuleStatus};

        // A module cache holding one zip of two and a half parts, and no go.
        let cache = tempfile::tempdir().unwrap();
        let at_v = cache.path().join("cache/download/example.com/dep/@v");
        std::fs::create_dir_all(&at_v).unwrap();
        let zip: Vec<u8> = (0..MODULE_RESPONSE_PART * 5 / 2).map(|i| i as u8).collect();
        std::fs::write(at_v.join("v1.0.0.zip"), &zip).unwrap();
        let go = GoEnv {
            program: cache.path().join("no-go-here"),
            vars: [("GOMODCACHE".into(), cache.path().display().to_string())].into(),
        };
        let proxy = Proxy::new(Arc::new(ModuleSource::new(go)), crate::ui::Ui::plain());

        let (got_tx, got) = oneshot::channel();
        let mut session = fake::session(Some(proxy), |mut c| async move {
            let ClientMessage::Patch(patch) = c.read().await else {
                panic!("not a patch");
            };
            let path = "example.com/dep/@v/v1.0.0.zip".to_string();
            c.write(ServerMessage::ModuleRequest(ModuleRequest { id: 9, path }))
                .await;
            let mut parts: Vec<ModuleResponse> = Vec::new();
            while parts.last().is_none_or(|p| p.more) {
                match c.read().await {
                    ClientMessage::ModuleResponse(r) => parts.push(r),
                    other => panic!("{other:?} before the module's last part"),
                }
            }
            let _ = got_tx.send(parts);
            let result = PatchResult {
                id: patch.id,
                complete: true,
                applied: vec![],
                deleted: vec![],
                refused: vec![],
                applied_count: 0,
                deleted_count: 0,
                refused_count: 0,
                files: 0,
                bytes: 0,
                elapsed_ms: 1,
                cancelled_build: None,
                build_id: None,
            };
            c.write(ServerMessage::PatchResult(result)).await;
            // Keep the stream open until the test is done with it.
            let _ = c.codec.read(&mut c.rx).await;
        })
        .await;

        let patched = session.patch(vec![], vec![], BuildMode::Never);
        let result = tokio::time::timeout(Duration::from_secs(10), patched)
            .await
            .expect("the patch's result, which waits for the module")
            .unwrap();
        assert!(result.complete);
        let parts = got.await.unwrap();
        assert_eq!(parts.len(), 3);
        for p in &parts {
            assert_eq!(
                (p.id, p.status, p.size),
                (9, ModuleStatus::Ok, zip.len() as u64)
            );
            assert!(p.body.len() <= MODULE_RESPONSE_PART);
        }
        let body: Vec<u8> = parts.into_iter().flat_map(|p| p.body).collect();
        assert_eq!(body, zip);
    }

    /// A patch sent while a zip goes out is not queued behind the whole zip: it goes between
    /// two of its parts.
    #[tokio::test]
    async fn a_patch_goes_out_between_the_parts_of_a_large_module() {
        use crate::modules::{GoEnv, ModuleSource};
        use kdev_protocol::{MODULE_RESPONSE_PART, WireMessage};

        const PARTS: usize = 12;
        let cache = tempfile::tempdir().unwrap();
        let at_v = cache.path().join("cache/download/example.com/big/@v");
        std::fs::create_dir_all(&at_v).unwrap();
        std::fs::write(
            at_v.join("v1.0.0.zip"),
            vec![7u8; MODULE_RESPONSE_PART * PARTS],
        )
        .unwrap();
        let go = GoEnv {
            program: cache.path().join("no-go-here"),
            vars: [("GOMODCACHE".into(), cache.path().display().to_string())].into(),
        };
        let proxy = Proxy::new(Arc::new(ModuleSource::new(go)), crate::ui::Ui::plain());

        let (first_tx, first) = oneshot::channel();
        let (order_tx, order) = oneshot::channel();
        let mut session = fake::session(Some(proxy), |mut c| async move {
            let path = "example.com/big/@v/v1.0.0.zip".to_string();
            c.write(ServerMessage::ModuleRequest(ModuleRequest { id: 1, path }))
                .await;
            let mut first_tx = Some(first_tx);
            let mut seen = Vec::new();
            while seen.len() < PARTS + 1 {
                let m = c.read().await;
                seen.push(m.kind());
                if let Some(tx) = first_tx.take() {
                    // A slow link: time enough to queue every part, were they all queued at
                    // once. Then the client sends its patch.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = tx.send(());
                }
            }
            let _ = order_tx.send(seen);
            let _ = c.codec.read(&mut c.rx).await;
        })
        .await;
        first.await.unwrap();
        session
            .send_patch(vec![], vec![], BuildMode::Never)
            .unwrap();
        let order = tokio::time::timeout(Duration::from_secs(10), order)
            .await
            .expect("every part and the patch")
            .unwrap();
        let patch_at = order.iter().position(|k| *k == "patch").unwrap();
        assert!(
            patch_at < PARTS,
            "the patch came after the whole module: {order:?}"
        );
    }

    /// While the CLI waits on something else (`kdev debug` building Delve), more events than
    /// the reader's queue holds arrive before a module request: the request is still answered
    /// (the events are read meanwhile), and the events are kept, in order, for the loop.
    #[tokio::test]
    async fn events_are_held_while_work_waits_on_a_module_answer() {
        use kdev_protocol::Event;
        const EVENTS: u64 = 3000;

        let (answered_tx, answered) = oneshot::channel();
        let mut session = fake::session(None, |mut c| async move {
            for lines in 0..EVENTS {
                let event = Event::AppOutputDropped { lines };
                c.write(ServerMessage::Event { at_ms: 0, event }).await;
            }
            let path = "example.com/dep/@v/v1.0.0.mod".to_string();
            c.write(ServerMessage::ModuleRequest(ModuleRequest { id: 9, path }))
                .await;
            let _ = answered_tx.send(c.read().await);
            let _ = c.codec.read(&mut c.rx).await;
        })
        .await;
        let answer =
            tokio::time::timeout(Duration::from_secs(10), session.holding_events(answered))
                .await
                .expect("the module request was answered while the events were held")
                .unwrap();
        assert!(matches!(answer, ClientMessage::ModuleResponse(r) if r.id == 9));
        for want in 0..EVENTS {
            match session.next_event().await.unwrap() {
                ServerMessage::Event {
                    event: Event::AppOutputDropped { lines },
                    ..
                } => assert_eq!(lines, want),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Without a module proxy (the Hello did not ask for one), a request is still answered:
    /// failed, at once, so the pod's go does not wait.
    #[tokio::test]
    async fn a_module_request_without_a_proxy_fails_at_once() {
        use kdev_protocol::ModuleStatus;

        let (got_tx, got) = oneshot::channel();
        let _session = fake::session(None, |mut c| async move {
            let path = "example.com/dep/@v/v1.0.0.mod".to_string();
            c.write(ServerMessage::ModuleRequest(ModuleRequest { id: 3, path }))
                .await;
            let _ = got_tx.send(c.read().await);
            let _ = c.codec.read(&mut c.rx).await;
        })
        .await;
        let answer = tokio::time::timeout(Duration::from_secs(10), got)
            .await
            .expect("an answer")
            .unwrap();
        let ClientMessage::ModuleResponse(r) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!((r.id, r.status, r.more), (3, ModuleStatus::Failed, false));
    }
}

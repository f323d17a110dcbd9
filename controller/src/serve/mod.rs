//! `kdev-controller serve`: one session of the kdev protocol on stdin/stdout.
//!
//! Tasks: a reader (frames from stdin), a writer (the only thing that touches stdout), the app
//! watcher ([`app`]), at most one build and at most one restart tracker. The main loop owns the
//! session state and handles one client message at a time; build completions come back to it
//! through a channel. The reader answers pings itself, so they never wait behind the work. Builds coalesce: a patch (or build request) that arrives while a build
//! runs kills that build's process group before the patch is applied, and a new build starts
//! after it, so the newest tree always wins and a half-patched tree is never installed.

pub mod app;
pub mod build;
pub mod leftovers;
pub mod patch;
pub mod reconcile;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kdev_protocol::{
    BuildMode, BuildOutcome, ClientMessage, ErrorCode, ErrorMessage, Event, Frame, FrameError,
    Layout, MAX_FRAME_SIZE, PROTOCOL_VERSION, Patch, PatchLimits, PatchResult, Ping,
    ReconcileResult, ServerCodec, ServerMessage, SessionConfig, Welcome, check_hello,
};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::run_files::{read_pid_file, write_pid_file};
use crate::util::{self, ms, unix_ms};
use build::{BuildDefaults, BuildResult, BuildSpec};

/// Paths echoed per list in a `PatchResult` (the counts say how many there were).
const MAX_LISTED: usize = 1000;

/// Budget of one `ReconcileResult` part, in worst-case JSON bytes (see [`reconcile::split`]).
const LISTING_PART_BYTES: usize = 16 << 20;

/// Exit codes of `serve`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_HANDSHAKE: i32 = 3;
pub const EXIT_SETUP: i32 = 4;

fn log(msg: impl AsRef<str>) {
    eprintln!("kdev-serve: {}", msg.as_ref());
}

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub layout: Layout,
    pub build: BuildDefaults,
    /// Grace period of the supervisor, to size the restart timeout.
    pub restart_timeout: Duration,
}

/// The sending side of stdout. Cheap to clone.
#[derive(Clone)]
pub struct Out {
    tx: mpsc::Sender<ServerMessage>,
    t0: Instant,
}

impl Out {
    pub async fn send(&self, m: ServerMessage) {
        let _ = self.tx.send(m).await;
    }
    fn wrap(&self, event: Event) -> ServerMessage {
        ServerMessage::Event {
            at_ms: ms(self.t0.elapsed()),
            event,
        }
    }
    pub async fn event(&self, e: Event) {
        let m = self.wrap(e);
        self.send(m).await;
    }
    /// Send unless the queue is full (for output lines). Returns whether it was queued.
    pub fn try_event(&self, e: Event) -> bool {
        self.tx.try_send(self.wrap(e)).is_ok()
    }
    /// A handle that does not keep the writer running: the session ends (and the writer
    /// drains and stops) when the last `Out` is dropped, whatever still holds a `WeakOut`.
    fn downgrade(&self) -> WeakOut {
        WeakOut(self.tx.downgrade())
    }
}

/// See [`Out::downgrade`].
struct WeakOut(mpsc::WeakSender<ServerMessage>);

impl WeakOut {
    async fn send(&self, m: ServerMessage) {
        if let Some(tx) = self.0.upgrade() {
            let _ = tx.send(m).await;
        }
    }
}

async fn writer_task(mut rx: mpsc::Receiver<ServerMessage>) {
    let mut stdout = tokio::io::stdout();
    let codec = ServerCodec::new();
    while let Some(m) = rx.recv().await {
        match codec.write(&mut stdout, &m).await {
            Ok(()) => {}
            // Too large for one frame (e.g. a listing of a gigantic tree): say so instead.
            Err(FrameError::Codec(e)) => {
                log(format!("cannot send a message: {e}"));
                let id = match &m {
                    ServerMessage::ReconcileResult(r) => Some(r.id),
                    ServerMessage::PatchResult(r) => Some(r.id),
                    _ => None,
                };
                let err = error(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "a reply could not be sent: {e}; reduce the synced tree (ignore generated files)"
                    ),
                    id,
                );
                if codec.write(&mut stdout, &err).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log(format!("cannot write to the client ({e}); it went away"));
                return;
            }
        }
    }
}

/// A frame from stdin (or how reading ended), with its share of the queue's byte budget.
struct Inbound {
    frame: Result<Option<Frame>, FrameError>,
    _queued: Option<OwnedSemaphorePermit>,
}

/// How many bytes of frames may wait for the main loop (besides the one it handles).
const QUEUED_BYTES: usize = MAX_FRAME_SIZE as usize;

/// The largest frame that can be a ping (a header of at most 256 bytes, no body).
const MAX_PING_FRAME: usize = 4 + 256;

/// A small frame that is a ping.
fn as_ping(frame: &Frame) -> Option<Ping> {
    if frame.len() > MAX_PING_FRAME {
        return None;
    }
    match ServerCodec::decode(frame.clone()) {
        Ok(ClientMessage::Ping(p)) => Some(p),
        _ => None,
    }
}

/// Reads frames and hands them to the main loop in order, except pings after the handshake:
/// those are answered here at once. A ping checks that the stream is alive, not that the work
/// is done, so it must not wait behind a long patch, listing or build cancellation.
async fn reader_task(tx: mpsc::Sender<Inbound>, out: WeakOut) {
    let mut stdin = tokio::io::stdin();
    let mut codec = ServerCodec::new();
    let budget = Arc::new(Semaphore::new(QUEUED_BYTES));
    let mut handshake = true;
    loop {
        let frame = codec.read_frame(&mut stdin).await;
        let mut queued = None;
        if let Ok(Some(p)) = &frame {
            if !handshake && let Some(ping) = as_ping(p) {
                out.send(ServerMessage::Pong(ping)).await;
                continue;
            }
            handshake = false;
            // Memory stays bounded however fast the client sends: wait for room.
            let n = p.len().clamp(1, QUEUED_BYTES) as u32;
            queued = budget.clone().acquire_many_owned(n).await.ok();
        }
        let stop = !matches!(frame, Ok(Some(_)));
        let msg = Inbound {
            frame,
            _queued: queued,
        };
        if tx.send(msg).await.is_err() || stop {
            return;
        }
    }
}

fn fatal(code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error(ErrorMessage {
        code,
        message,
        fatal: true,
        id: None,
    })
}

fn error(code: ErrorCode, message: String, id: Option<u64>) -> ServerMessage {
    ServerMessage::Error(ErrorMessage {
        code,
        message,
        fatal: false,
        id,
    })
}

/// `run/build-state.json`: the tree changed since the last successful build (`dirty`), so a
/// new session knows it must build even if reconcile finds no difference.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct BuildState {
    dirty: bool,
    last_success_at_ms: Option<u64>,
}

struct RunningBuild {
    id: u64,
    cancel: Option<oneshot::Sender<()>>,
    /// Patches whose changes it was building (re-queued if it is cancelled).
    patch_ids: Vec<u64>,
}

struct Session {
    opts: ServeOptions,
    config: SessionConfig,
    root: PathBuf,
    out: Out,
    limits: PatchLimits,
    state: BuildState,
    build: Option<RunningBuild>,
    done_tx: mpsc::Sender<(u64, BuildResult)>,
    done_rx: mpsc::Receiver<(u64, BuildResult)>,
    next_build_id: u64,
    pending_patches: Vec<u64>,
    restart_task: Option<JoinHandle<()>>,
    restart_ctx: app::RestartCtx,
    cache: Arc<Mutex<reconcile::HashCache>>,
    /// Set on SIGTERM/SIGINT: a patch or listing in progress stops between entries.
    stop: Arc<AtomicBool>,
}

/// Run one session. Returns the process exit code.
pub async fn run(opts: ServeOptions) -> i32 {
    let t0 = Instant::now();
    let (out_tx, out_rx) = mpsc::channel::<ServerMessage>(1024);
    let writer = tokio::spawn(writer_task(out_rx));
    let out = Out { tx: out_tx, t0 };
    let (in_tx, mut in_rx) = mpsc::channel(64);
    // Weak: the reader may sit in read(2) until the client goes away, long after the session
    // ended (SIGTERM); it must not keep the writer, and so the process, waiting.
    tokio::spawn(reader_task(in_tx, out.downgrade()));
    // SIGTERM/SIGINT end the session gracefully (the running build's process group is killed).
    // `stop` reaches into a patch or listing in progress (blocking code that cannot await).
    let (term_tx, mut term_rx) = watch::channel(false);
    let stop = Arc::new(AtomicBool::new(false));
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut t), Ok(mut i)) => {
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                    stop.store(true, Ordering::Relaxed);
                    let _ = term_tx.send(true);
                });
            }
            _ => log("cannot install signal handlers; SIGTERM will end the session abruptly"),
        }
    }

    let finish = |out: Out, code: i32| async move {
        drop(out);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        code
    };

    // Handshake.
    let first = tokio::select! {
        m = in_rx.recv() => m.map(|m| m.frame),
        _ = term_rx.changed() => {
            log("terminated before the handshake");
            return finish(out, EXIT_OK).await;
        }
    };
    let hello = match first {
        None | Some(Ok(None)) => {
            log("the client closed the stream before saying hello");
            return finish(out, EXIT_BAD_INPUT).await;
        }
        Some(Err(e)) => {
            log(format!("bad first frame: {e}"));
            out.send(fatal(ErrorCode::BadFrame, e.to_string())).await;
            return finish(out, EXIT_BAD_INPUT).await;
        }
        Some(Ok(Some(payload))) => match check_hello(payload) {
            Ok(h) => h,
            Err(e) => {
                log(format!("refusing the session: {e}"));
                out.send(ServerMessage::Error(e.to_error_message())).await;
                return finish(out, EXIT_HANDSHAKE).await;
            }
        },
    };
    log(format!(
        "session from {} (protocol {})",
        hello.client_version, hello.protocol_version
    ));
    if let Err(e) = std::fs::create_dir_all(&opts.layout.run) {
        out.send(fatal(
            ErrorCode::SetupFailed,
            format!("cannot create {}: {e}", opts.layout.run.display()),
        ))
        .await;
        return finish(out, EXIT_SETUP).await;
    }
    // One session at a time: a previous `serve` whose exec stream broke may still be alive
    // (and building into the same app.next). The newest session wins.
    let (_lock, replaced) = match take_session_lock(&opts.layout).await {
        Ok(v) => v,
        Err(e) => {
            out.send(fatal(ErrorCode::SetupFailed, e)).await;
            return finish(out, EXIT_SETUP).await;
        }
    };
    // A previous session killed without cleaning up (SIGKILL) may have left its build running,
    // writing the same app.next as ours will.
    let stale_build = {
        let f = opts.layout.build_group_file();
        tokio::task::spawn_blocking(move || leftovers::kill_stale_build(&f))
            .await
            .ok()
            .flatten()
    };
    if let Some(pg) = stale_build {
        log(format!(
            "stopped a build (process group {pg}) left running by a previous session"
        ));
    }
    let config = hello.config;
    let root = match prepare_root(
        config
            .sync_root
            .as_deref()
            .map(Path::new)
            .unwrap_or(&opts.layout.src),
        &opts.layout,
    ) {
        Ok(r) => r,
        Err(e) => {
            out.send(fatal(ErrorCode::BadSyncRoot, e)).await;
            return finish(out, EXIT_SETUP).await;
        }
    };
    // Temporary files of a patch that an interrupted session was applying.
    {
        let root = root.clone();
        if let Ok(n @ 1..) =
            tokio::task::spawn_blocking(move || leftovers::remove_temp_files(&root)).await
        {
            log(format!(
                "removed {n} temporary files left by an interrupted patch"
            ));
        }
    }
    for d in [&opts.layout.bin, &opts.layout.run] {
        if let Err(e) = std::fs::create_dir_all(d) {
            out.send(fatal(
                ErrorCode::SetupFailed,
                format!("cannot create {}: {e}", d.display()),
            ))
            .await;
            return finish(out, EXIT_SETUP).await;
        }
    }
    let state: BuildState = std::fs::read(opts.layout.build_state_file())
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    let (watch, watcher) = app::spawn_watcher(
        opts.layout.status_file(),
        opts.layout.log_file(),
        out.clone(),
        config.forward_app_output,
    );
    let app_binary = opts.layout.app_binary();
    let app_present = app_binary.is_file();
    let supervisor_pid = read_pid_file(&opts.layout.pid_file()).ok();
    let limits = patch::default_limits();
    let welcome = Welcome {
        protocol_version: PROTOCOL_VERSION,
        controller_version: kdev_protocol::CRATE_VERSION.into(),
        sync_root: root.to_string_lossy().into_owned(),
        app_binary: app_binary.to_string_lossy().into_owned(),
        app_binary_present: app_present,
        needs_build: state.dirty || !app_present,
        supervisor_pid,
        app_status: watch.status.borrow().clone(),
        max_frame_size: MAX_FRAME_SIZE,
        limits: limits.clone(),
    };
    out.send(ServerMessage::Welcome(welcome)).await;
    if let Some(pid) = replaced {
        out.event(Event::Warning {
            code: "replaced_session".into(),
            message: format!("stopped a previous kdev-controller serve session (PID {pid}) still running in the pod"),
        })
        .await;
    }

    if let Some(pg) = stale_build {
        out.event(Event::Warning {
            code: "stale_build".into(),
            message: format!(
                "stopped a build (process group {pg}) that a previous kdev-controller serve session left running"
            ),
        })
        .await;
    }

    let restart_ctx = app::RestartCtx {
        pid_file: opts.layout.pid_file(),
        out: out.clone(),
        watch,
        app_port: config.app_port,
        ready_timeout: Duration::from_millis(config.ready_timeout_ms.unwrap_or(60_000)),
        restart_timeout: opts.restart_timeout,
    };
    let (done_tx, done_rx) = mpsc::channel(4);
    let mut s = Session {
        opts,
        config,
        root,
        out,
        limits,
        state,
        build: None,
        done_tx,
        done_rx,
        next_build_id: 1,
        pending_patches: Vec::new(),
        restart_task: None,
        restart_ctx,
        cache: Arc::new(Mutex::new(reconcile::HashCache::default())),
        stop,
    };
    let code = s.main_loop(&mut in_rx, &mut term_rx).await;

    // Shut down: no build keeps running without a session (the tree stays marked dirty).
    s.cancel_build().await;
    if let Some(t) = s.restart_task.take() {
        t.abort();
        let _ = t.await;
    }
    watcher.abort();
    let _ = watcher.await;
    let Session {
        out, restart_ctx, ..
    } = s;
    drop(restart_ctx);
    finish(out, code).await
}

/// Take `run/serve.lock` (flock), stopping a previous session that holds it. Returns the lock
/// (held until dropped) and the PID of the session that was stopped, if any.
async fn take_session_lock(layout: &Layout) -> Result<(Flock<std::fs::File>, Option<u32>), String> {
    let lock_path = layout.serve_lock_file();
    let pid_path = layout.serve_pid_file();
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))
    };
    let mut replaced = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = false;
    loop {
        match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let _ = write_pid_file(&pid_path);
                return Ok((lock, replaced));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                if replaced.is_none() {
                    let pid = read_pid_file(&pid_path)
                        .ok()
                        .filter(|p| *p != std::process::id());
                    if let Some(pid) = pid {
                        log(format!(
                            "a previous session (PID {pid}) is still running; stopping it"
                        ));
                        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    }
                    replaced = Some(pid.unwrap_or(0));
                }
                if Instant::now() > deadline - Duration::from_secs(5) && !killed {
                    if let Some(pid) = replaced.filter(|p| *p != 0) {
                        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                    killed = true;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "another kdev-controller serve session holds {} and did not stop; \
                         end the other kdev session first",
                        lock_path.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((_, e)) => return Err(format!("cannot lock {}: {e}", lock_path.display())),
        }
    }
}

/// `p` with `.` and `..` resolved lexically (no filesystem access).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Refuse a sync root that is, contains or is inside one of kdev's own directories (a patch
/// would overwrite the app binary or the controller in `bin/`, the state in `run/`, the caches).
fn check_root_placement(root: &Path, shown: &Path, layout: &Layout) -> Result<(), String> {
    for (what, dir) in [
        ("binaries", &layout.bin),
        ("runtime files", &layout.run),
        ("build caches", &layout.cache),
    ] {
        let dir = dir.canonicalize().unwrap_or_else(|_| lexical(dir));
        if dir.starts_with(root) || root.starts_with(&dir) {
            return Err(format!(
                "the sync root {} overlaps kdev's directory for {what} ({}); use a directory of \
                 its own, such as the default {}",
                shown.display(),
                dir.display(),
                layout.src.display()
            ));
        }
    }
    Ok(())
}

fn prepare_root(root: &Path, layout: &Layout) -> Result<PathBuf, String> {
    if !root.is_absolute() {
        return Err(format!(
            "the sync root {} is not an absolute path",
            root.display()
        ));
    }
    // Before creating anything, then again on the real path (symlinks resolved).
    check_root_placement(&lexical(root), root, layout)?;
    std::fs::create_dir_all(root)
        .map_err(|e| format!("cannot create the sync root {}: {e}", root.display()))?;
    let real = root
        .canonicalize()
        .map_err(|e| format!("cannot resolve the sync root {}: {e}", root.display()))?;
    if !real.is_dir() {
        return Err(format!(
            "the sync root {} is not a directory",
            root.display()
        ));
    }
    check_root_placement(&real, root, layout)?;
    Ok(real)
}

impl Session {
    async fn main_loop(
        &mut self,
        in_rx: &mut mpsc::Receiver<Inbound>,
        term: &mut watch::Receiver<bool>,
    ) -> i32 {
        loop {
            tokio::select! {
                // A SIGTERM that arrived while a message was handled wins over the next one.
                biased;
                _ = term.changed() => {
                    log("terminated (a newer session took over, or the pod is stopping); ending the session");
                    self.out.send(fatal(
                        ErrorCode::Terminated,
                        "kdev-controller serve was terminated (a newer session took over, or the pod is stopping)".into(),
                    )).await;
                    return EXIT_OK;
                }
                msg = in_rx.recv() => {
                    // Its budget share is released here: it is no longer queued.
                    let payload = match msg.map(|m| m.frame) {
                        None | Some(Ok(None)) => {
                            log("the client closed the stream; ending the session");
                            return EXIT_OK;
                        }
                        Some(Err(e)) => {
                            log(format!("bad frame: {e}"));
                            self.out.send(fatal(ErrorCode::BadFrame, format!("{e}; ending the session"))).await;
                            return EXIT_BAD_INPUT;
                        }
                        Some(Ok(Some(p))) => p,
                    };
                    let msg = match ServerCodec::decode(payload) {
                        Ok(m) => m,
                        Err(e) => {
                            log(format!("bad message: {e}"));
                            self.out.send(fatal(ErrorCode::BadMessage, format!("{e}; ending the session"))).await;
                            return EXIT_BAD_INPUT;
                        }
                    };
                    if !self.handle(msg).await {
                        return EXIT_OK;
                    }
                }
                Some((id, res)) = self.done_rx.recv() => self.on_build_done(id, res).await,
            }
        }
    }

    /// Handle one client message. Returns false to end the session.
    async fn handle(&mut self, msg: ClientMessage) -> bool {
        match msg {
            ClientMessage::Hello(_) => {
                self.out
                    .send(error(
                        ErrorCode::UnexpectedMessage,
                        "hello was already received".into(),
                        None,
                    ))
                    .await;
            }
            ClientMessage::Reconcile(r) => self.reconcile(r.id).await,
            ClientMessage::Patch(p) => self.patch(p).await,
            ClientMessage::Build(b) => {
                let cancelled = self.cancel_build().await;
                if cancelled.is_some() {
                    log("build request: cancelled the running build");
                }
                self.start_build(Some(b.id));
            }
            ClientMessage::Restart(_) => self.spawn_restart(None),
            ClientMessage::Ping(p) => self.out.send(ServerMessage::Pong(p)).await,
            ClientMessage::Bye => return false,
        }
        true
    }

    async fn reconcile(&mut self, id: u64) {
        let t0 = Instant::now();
        let root = self.root.clone();
        let cache = self.cache.clone();
        let stop = self.stop.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            reconcile::list(&root, &mut cache, &stop)
        })
        .await;
        let msg = match res {
            // SIGTERM: the main loop ends the session right after.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Ok(Ok(l)) => {
                // In parts that each fit a frame whatever the tree's size.
                let parts = reconcile::split(l.entries, l.skipped, LISTING_PART_BYTES);
                let n = parts.len();
                for (i, (entries, skipped)) in parts.into_iter().enumerate() {
                    let part = ReconcileResult {
                        id,
                        root: self.root.to_string_lossy().into_owned(),
                        entries,
                        skipped,
                        elapsed_ms: ms(t0.elapsed()),
                        cached: l.cached,
                        more: i + 1 < n,
                    };
                    self.out.send(ServerMessage::ReconcileResult(part)).await;
                }
                return;
            }
            Ok(Err(e)) => error(
                ErrorCode::ReconcileFailed,
                format!("cannot list {}: {e}", self.root.display()),
                Some(id),
            ),
            Err(e) => error(
                ErrorCode::ReconcileFailed,
                format!("listing failed: {e}"),
                Some(id),
            ),
        };
        self.out.send(msg).await;
    }

    async fn patch(&mut self, p: Patch) {
        let t0 = Instant::now();
        let Patch {
            id,
            deletes,
            build,
            tar,
        } = p;
        // Refused before anything changes (the running build goes on).
        if deletes.len() > self.limits.max_deletes as usize {
            let msg = format!(
                "patch {id} has more than {} deletions (limits.max_deletes); nothing was applied: \
                 split it into several patches",
                self.limits.max_deletes
            );
            log(&msg);
            self.out
                .send(error(ErrorCode::TooManyDeletes, msg, Some(id)))
                .await;
            return;
        }
        let cancelled_build = self.cancel_build().await;
        // Recorded before the tree changes, so a session killed in the middle of the patch
        // leaves it marked as needing a build; undone below if no build input changed.
        let was_dirty = self.state.dirty;
        let changes = !deletes.is_empty() || !tar.is_empty();
        if changes {
            self.set_dirty(true);
        }
        let root = self.root.clone();
        let limits = self.limits.clone();
        let stop = self.stop.clone();
        let outcome = match tokio::task::spawn_blocking(move || {
            patch::apply_patch(&root, &deletes, &tar, &limits, &stop)
        })
        .await
        {
            Ok(o) => o,
            Err(e) => {
                self.out
                    .send(error(
                        ErrorCode::PatchFailed,
                        format!("applying the patch failed: {e}"),
                        Some(id),
                    ))
                    .await;
                return;
            }
        };
        if outcome.interrupted {
            // SIGTERM: the tree stays marked dirty; the main loop ends the session right after.
            log(format!("patch {id}: interrupted, the session is ending"));
            return;
        }
        let inputs = self.config.build_inputs.as_deref();
        if outcome.touched().any(|p| patch::is_build_input(p, inputs)) || cancelled_build.is_some()
        {
            self.set_dirty(true);
        } else if changes && !was_dirty {
            self.state.dirty = false;
            self.save_state();
        }
        self.pending_patches.push(id);
        let do_build = match build {
            BuildMode::Never => false,
            BuildMode::Always => true,
            BuildMode::Auto => self.state.dirty || !self.opts.layout.app_binary().is_file(),
        };
        // Echo bounded lists: a patch of 100 000 paths must not make a reply of 100 000 paths.
        fn capped<T>(mut v: Vec<T>) -> (Vec<T>, u64) {
            let n = v.len() as u64;
            v.truncate(MAX_LISTED);
            v.shrink_to_fit();
            (v, n)
        }
        let complete = outcome.complete();
        let (applied, applied_count) = capped(outcome.applied);
        let (deleted, deleted_count) = capped(outcome.deleted);
        let (refused, refused_count) = capped(outcome.refused);
        let result = PatchResult {
            id,
            complete,
            files: outcome.files,
            bytes: outcome.bytes,
            elapsed_ms: ms(t0.elapsed()),
            cancelled_build,
            build_id: do_build.then_some(self.next_build_id),
            applied,
            deleted,
            refused,
            applied_count,
            deleted_count,
            refused_count,
        };
        if !result.complete {
            log(format!("patch {id}: {refused_count} entries refused"));
        }
        self.out.send(ServerMessage::PatchResult(result)).await;
        if do_build {
            self.start_build(None);
        }
    }

    fn set_dirty(&mut self, dirty: bool) {
        if self.state.dirty == dirty && dirty {
            return;
        }
        self.state.dirty = dirty;
        if !dirty {
            self.state.last_success_at_ms = Some(unix_ms());
        }
        self.save_state();
    }

    /// Write `run/build-state.json`.
    fn save_state(&self) {
        if let Ok(data) = serde_json::to_vec(&self.state)
            && let Err(e) = util::write_atomic(&self.opts.layout.build_state_file(), &data)
        {
            log(format!("cannot record the build state: {e}"));
        }
    }

    fn start_build(&mut self, request_id: Option<u64>) {
        let id = self.next_build_id;
        self.next_build_id += 1;
        let mut spec = BuildSpec::resolve(
            &self.config.build,
            &self.opts.build,
            &self.root,
            &self.opts.layout.app_next(),
        );
        spec.group_file = Some(self.opts.layout.build_group_file());
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let patch_ids = std::mem::take(&mut self.pending_patches);
        self.build = Some(RunningBuild {
            id,
            cancel: Some(cancel_tx),
            patch_ids: patch_ids.clone(),
        });
        let ev = Event::BuildStarted {
            build_id: id,
            patch_ids,
            request_id,
            command: spec.argv.clone(),
        };
        // Queue the event before the task can finish, so BuildStarted precedes BuildFinished.
        let out = self.out.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            out.event(ev).await;
            let res = build::run(spec, cancel_rx).await;
            let _ = done.send((id, res)).await;
        });
    }

    /// Cancel the running build, if any, and wait until it is gone. Returns its id.
    async fn cancel_build(&mut self) -> Option<u64> {
        let mut b = self.build.take()?;
        // Its changes are still unbuilt: the next build includes them.
        let mut ids = std::mem::take(&mut b.patch_ids);
        ids.append(&mut self.pending_patches);
        self.pending_patches = ids;
        if let Some(c) = b.cancel.take() {
            let _ = c.send(());
        }
        while let Some((id, res)) = self.done_rx.recv().await {
            let mine = id == b.id;
            self.report_build(id, res, false).await;
            if mine {
                break;
            }
        }
        Some(b.id)
    }

    async fn on_build_done(&mut self, id: u64, res: BuildResult) {
        if self.build.as_ref().map(|b| b.id) == Some(id) {
            self.build = None;
        }
        self.report_build(id, res, true).await;
    }

    /// Install a successful build, report it, and restart the app.
    async fn report_build(&mut self, id: u64, mut res: BuildResult, may_install: bool) {
        let mut installed = false;
        if res.outcome == BuildOutcome::Succeeded {
            if may_install {
                match std::fs::rename(self.opts.layout.app_next(), self.opts.layout.app_binary()) {
                    Ok(()) => installed = true,
                    Err(e) => {
                        res.outcome = BuildOutcome::Error;
                        res.output.push_str(&format!(
                            "\ncannot move {} to {}: {e}",
                            self.opts.layout.app_next().display(),
                            self.opts.layout.app_binary().display()
                        ));
                    }
                }
            } else {
                // It finished just as it was cancelled: the tree changed since, do not install.
                res.outcome = BuildOutcome::Cancelled;
            }
        }
        log(format!(
            "build {id}: {:?} in {} ms",
            res.outcome,
            res.elapsed.as_millis()
        ));
        self.out
            .event(Event::BuildFinished {
                build_id: id,
                outcome: res.outcome,
                exit_code: res.exit_code,
                elapsed_ms: ms(res.elapsed),
                output: res.output,
                output_truncated: res.truncated,
                installed,
            })
            .await;
        if installed {
            self.set_dirty(false);
            self.spawn_restart(Some(id));
        }
    }

    fn spawn_restart(&mut self, build_id: Option<u64>) {
        if let Some(t) = self.restart_task.take() {
            t.abort();
        }
        let ctx = self.restart_ctx.clone();
        self.restart_task = Some(tokio::spawn(app::restart_and_wait(ctx, build_id)));
    }
}

/// Used by `main` for the `--help`-documented exit codes.
pub fn describe_exit_codes() -> &'static str {
    "exit codes: 0 session ended by the client, 2 bad input on stdin, 3 handshake refused \
     (protocol version mismatch), 4 setup failed (sync root or /kdev not usable)"
}

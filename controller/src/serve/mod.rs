//! `kdev-controller serve`: one session of the kdev protocol on stdin/stdout.
//!
//! This file starts a session: the I/O tasks ([`io`]), the handshake, setup (the session lock
//! ([`lock`]), what an interrupted session left behind ([`leftovers`]), the sync root
//! ([`root`])), the app watcher ([`app_watch`]), the module proxy ([`module_proxy`]) and the
//! Welcome; then [`session`] runs the conversation, with [`reconcile`] (listing), [`patch`]
//! (applying changes) and [`build`] (building, installing and restarting through
//! [`restart`]); and at the end everything is stopped in order, with one of the [`exit`]
//! codes.

mod app_watch;
pub(crate) mod build;
mod exit;
mod io;
mod leftovers;
pub mod liveness;
mod lock;
mod module_proxy;
mod patch;
mod reconcile;
mod restart;
pub(crate) mod root;
mod session;
mod warm;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeMap;

use kdev_protocol::{
    ErrorCode, Event, Hello, Layout, MAX_FRAME_SIZE, PROTOCOL_VERSION, PatchLimits, ServerMessage,
    SessionConfig, Welcome, check_hello,
};
use nix::fcntl::Flock;
use tokio::sync::{mpsc, watch};

pub use crate::build_spec::BuildDefaults;
use crate::log::serve as log;
use crate::run_files::read_pid_file;
use crate::util::error_chain;
use app_watch::AppWatch;
use build::Builds;
use exit::{EXIT_BAD_INPUT, EXIT_HANDSHAKE, EXIT_OK, EXIT_SETUP};
use io::{Inbound, Out, fatal};
use module_proxy::ModuleProxy;
use restart::RestartCtx;
use session::Session;

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub layout: Layout,
    pub build: BuildDefaults,
    /// A volume that outlives the pod for Go's caches (see [`build::cache`]).
    pub persistent_cache: Option<PathBuf>,
    /// How long to wait for the supervisor to start the new binary after SIGHUP.
    pub restart_timeout: Duration,
}

/// Why a session could not start after the handshake.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("cannot create {}", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    SyncRoot(#[from] root::SyncRootError),
}

impl SetupError {
    fn code(&self) -> ErrorCode {
        match self {
            SetupError::SyncRoot(_) => ErrorCode::BadSyncRoot,
            _ => ErrorCode::SetupFailed,
        }
    }
}

/// What setup leaves for the session.
struct Prepared {
    /// The process group of a build a killed session left running, now stopped.
    stale_build: Option<i32>,
    /// The sync root's real path.
    root: PathBuf,
}

fn create_dir(dir: &Path) -> Result<(), SetupError> {
    std::fs::create_dir_all(dir).map_err(|e| SetupError::CreateDir(dir.to_path_buf(), e))
}

/// One session at a time; the newest wins. Returns the lock, held until the process ends,
/// and the PID of the session that was stopped (0 if unknown).
async fn take_lock(layout: &Layout) -> Result<(Flock<File>, Option<u32>), SetupError> {
    create_dir(&layout.run)?;
    Ok(lock::take(layout).await?)
}

/// The rest of the setup between the hello and the Welcome.
async fn prepare(layout: &Layout, sync_root: Option<&str>) -> Result<Prepared, SetupError> {
    // A previous session killed without cleaning up (SIGKILL) may have left its build running,
    // writing the same app.next as ours will.
    let stale_build = {
        let f = layout.build_group_file();
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
    let root = root::prepare(sync_root.map(Path::new).unwrap_or(&layout.src), layout)?;
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
    create_dir(&layout.bin)?;
    create_dir(&layout.run)?;
    Ok(Prepared { stale_build, root })
}

/// SIGTERM/SIGINT end the session gracefully (the running build's process group is killed):
/// the returned flag reaches into a patch or listing in progress (blocking code that cannot
/// await), the channel into the session's loop.
fn on_termination() -> (Arc<AtomicBool>, watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (term_tx, term_rx) = watch::channel(false);
    let stop = Arc::new(AtomicBool::new(false));
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
    (stop, term_rx)
}

/// The handshake: the client's first frame must be a hello of this protocol. Returns the exit
/// code when the session cannot start (the refusal already sent).
async fn receive_hello(
    in_rx: &mut mpsc::Receiver<Inbound>,
    out: &Out,
    term_rx: &mut watch::Receiver<bool>,
) -> Result<Hello, i32> {
    let first = tokio::select! {
        m = in_rx.recv() => m.map(|m| m.frame),
        _ = term_rx.changed() => {
            log("terminated before the handshake");
            return Err(EXIT_OK);
        }
    };
    let hello = match first {
        None | Some(Ok(None)) => {
            log("the client closed the stream before saying hello");
            return Err(EXIT_BAD_INPUT);
        }
        Some(Err(e)) => {
            log(format!("bad first frame: {e}"));
            out.send(fatal(ErrorCode::BadFrame, e.to_string())).await;
            return Err(EXIT_BAD_INPUT);
        }
        Some(Ok(Some(frame))) => match check_hello(frame) {
            Ok(h) => h,
            Err(e) => {
                log(format!("refusing the session: {e}"));
                out.send(ServerMessage::Error(e.to_error_message())).await;
                return Err(EXIT_HANDSHAKE);
            }
        },
    };
    log(format!(
        "session from {} (protocol {})",
        hello.client_version, hello.protocol_version
    ));
    Ok(hello)
}

/// The handshake's answer: where things are and in what state.
fn welcome(
    layout: &Layout,
    root: &Path,
    builds: &Builds,
    watch: &AppWatch,
    limits: &PatchLimits,
    module_env: BTreeMap<String, String>,
) -> Welcome {
    let app_binary = layout.app_binary();
    Welcome {
        protocol_version: PROTOCOL_VERSION,
        controller_version: kdev_protocol::CRATE_VERSION.into(),
        sync_root: root.to_string_lossy().into_owned(),
        app_binary: app_binary.to_string_lossy().into_owned(),
        app_binary_present: app_binary.is_file(),
        needs_build: builds.needed(),
        supervisor_pid: read_pid_file(&layout.pid_file()).ok(),
        app_status: watch.status.borrow().clone(),
        max_frame_size: MAX_FRAME_SIZE,
        limits: limits.clone(),
        module_env,
    }
}

/// Start the module proxy when the session asked for it: the environment of the session's
/// go commands, and a warning to send after the Welcome when it could not start.
async fn start_module_proxy(
    config: &SessionConfig,
    out: &Out,
    modules: &ModuleProxy,
    volume: Option<&Path>,
) -> (BTreeMap<String, String>, Option<String>) {
    let Some(proxy) = &config.module_proxy else {
        return Default::default();
    };
    if !module_proxy::wanted(&config.build.env) {
        log("no module proxy: build.env sets GOPROXY");
        return Default::default();
    }
    match modules.start(proxy, out, volume).await {
        Ok(env) => (env, None),
        Err(e) => {
            let message = format!(
                "the module proxy could not start ({}): go commands in the pod use the image's \
                 module settings",
                error_chain(&e)
            );
            log(&message);
            (BTreeMap::new(), Some(message))
        }
    }
}

/// Warnings after the Welcome: this session stopped a previous one, or the build it left
/// running.
async fn warn_of_takeover(out: &Out, replaced: Option<u32>, stale_build: Option<i32>) {
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
}

/// Run one session. Returns the process exit code.
pub async fn run(opts: ServeOptions) -> i32 {
    let (stop, mut term_rx) = on_termination();
    let (out, writer) = io::spawn_writer(term_rx.clone());
    let modules = ModuleProxy::default();
    let heard = Arc::new(liveness::Heard::default());
    let mut in_rx = io::spawn_reader(&out, modules.pending(), heard.clone());

    // The writer's queue is written out before the process ends, unless the client does not
    // read it: 5 s for a client that reads slowly, 1 s once SIGTERM says to stop now.
    let terminated = term_rx.clone();
    let finish = |out: Out, code: i32| async move {
        drop(out);
        let wait = match *terminated.borrow() {
            true => Duration::from_secs(1),
            false => Duration::from_secs(5),
        };
        let _ = tokio::time::timeout(wait, writer).await;
        code
    };

    let hello = match receive_hello(&mut in_rx, &out, &mut term_rx).await {
        Ok(h) => h,
        Err(code) => return finish(out, code).await,
    };
    let layout = &opts.layout;
    let mut config = hello.config;
    // The lock is held until this function returns, also while an error below is sent.
    let (lock, replaced) = match take_lock(layout).await {
        Ok(v) => v,
        Err(e) => {
            out.send(fatal(e.code(), error_chain(&e))).await;
            return finish(out, EXIT_SETUP).await;
        }
    };
    // A second kdev asks whether this session's kdev is still heard (`session-state`).
    let _marker = liveness::Marker::start(&lock, heard)
        .map_err(|e| log(format!("cannot mark the session lock as heard: {e}")))
        .ok();
    let Prepared { stale_build, root } = match prepare(layout, config.sync_root.as_deref()).await {
        Ok(p) => p,
        Err(e) => {
            out.send(fatal(e.code(), error_chain(&e))).await;
            return finish(out, EXIT_SETUP).await;
        }
    };

    let (watch, watcher) = app_watch::spawn_watcher(
        layout.status_file(),
        layout.log_file(),
        out.clone(),
        config.forward_app_output,
    );
    let restart_ctx = RestartCtx {
        pid_file: layout.pid_file(),
        out: out.clone(),
        watch: watch.clone(),
        app_port: config.app_port,
        ready_timeout: Duration::from_millis(config.ready_timeout_ms.unwrap_or(60_000)),
        restart_timeout: opts.restart_timeout,
    };
    let mut caches = build::cache::resolve(&opts.build, opts.persistent_cache.as_deref());
    log(format!(
        "GOCACHE={} GOMODCACHE={}",
        caches.defaults.gocache.display(),
        caches.defaults.gomodcache.display()
    ));
    let (module_env, proxy_warning) =
        start_module_proxy(&config, &out, &modules, caches.module_store.as_deref()).await;
    // Every go command of the session (builds, their hooks, quick rebuilds and the go
    // commands they ask) runs with the build's environment; build.env wins.
    config.build.env = module_proxy::with_module_env(&module_env, config.build.env);
    let builds = Builds::new(
        layout.clone(),
        caches.defaults.clone(),
        config.build,
        root.clone(),
        restart_ctx,
        caches.ready.clone(),
    );
    let limits = patch::default_limits();
    let welcome = welcome(layout, &root, &builds, &watch, &limits, module_env);
    out.send_welcome(welcome).await;
    caches.start(&out).await;
    if let Some(message) = proxy_warning {
        out.event(Event::Warning {
            code: "module_proxy".into(),
            message,
        })
        .await;
    }
    warn_of_takeover(&out, replaced, stale_build).await;

    let cache = {
        let (file, root) = (layout.reconcile_cache_file(), root.clone());
        tokio::task::spawn_blocking(move || {
            leftovers::remove_cache_temp_files(&file);
            kdev_protocol::hash_cache::HashCache::load(file, &root)
        })
        .await
        .unwrap_or_default()
    };
    let mut s = Session {
        root,
        build_inputs: config.build_inputs,
        out,
        limits,
        builds,
        cache: Arc::new(Mutex::new(cache)),
        stop,
        kept_listing: None,
        settling: Default::default(),
        warming: None,
    };
    let code = s.main_loop(&mut in_rx, &mut term_rx).await;

    // Shut down: go commands waiting for modules hear at once (and the proxy's requests stop
    // holding the writer); no build keeps running without a session (the tree stays marked
    // dirty).
    modules.end().await;
    // A warm-up of the hash cache stops between files; one writing the cache file finishes it
    // (the runtime's shutdown would kill it mid-write, leaving a temporary file behind).
    s.stop.store(true, Ordering::Relaxed);
    if let Some(warming) = s.warming.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), warming).await;
    }
    let Session { out, builds, .. } = s;
    builds.shutdown().await;
    watcher.abort();
    let _ = watcher.await;
    finish(out, code).await
}

//! The `kdev-controller` binary: `supervise` and `serve`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use kdev_controller::quick_build;
use kdev_controller::serve::{self, BuildDefaults, ServeOptions};
use kdev_controller::supervise::{self, SuperviseOptions};
use kdev_protocol::{Layout, parse_duration};
use nix::sys::signal::Signal;

/// `--stop-signal`: any signal name or number the supervisor can send.
fn parse_signal(s: &str) -> Result<Signal, String> {
    let sig = kdev_protocol::Signal::parse(s).map_err(|e| e.to_string())?;
    Signal::try_from(sig.number())
        .map_err(|_| format!("signal {sig} cannot be used as a stop signal"))
}

/// The in-pod half of kdev: runs and restarts your app, and syncs and builds its sources.
///
/// Both roles share a directory (default /kdev, a volume mounted in both containers of the pod
/// with shareProcessNamespace: true): src/ is the sync root, bin/ holds the built app, run/
/// holds the supervisor's PID file, the app's status and its output log.
#[derive(Debug, Parser)]
#[command(name = "kdev-controller", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the app as a supervised child (the main container's entrypoint).
    ///
    /// Starts CMD in its own process group and keeps it running: SIGHUP restarts it (stop
    /// signal, grace period, SIGKILL to the whole group, wait until the group is gone, start CMD
    /// again from disk); when it exits on its own, what is left of its group is stopped the same
    /// way and it is started again after a growing delay
    /// (reset after a healthy run), so the container never exits and kubelet's CrashLoopBackOff
    /// never applies; SIGTERM/SIGINT stop it the same way and exit. SIGQUIT, SIGUSR1 and SIGUSR2
    /// are forwarded to the app's process group. Orphaned grandchildren are reaped.
    ///
    /// Files: <run-dir>/supervisor.pid (this process's PID), <run-dir>/app-status.json (state,
    /// PID, start count, last exit, the identity of <kdev-dir>/bin/app when the app was
    /// started, as JSON, rewritten atomically on every change),
    /// <run-dir>/app.log (the app's stdout/stderr as JSON lines, rotated past --log-max-bytes).
    /// The app's output is also copied to this process's stdout/stderr, so `kubectl logs` works.
    ///
    /// Example: kdev-controller supervise --wait-for /kdev/bin/app -- /kdev/bin/app --port 8080
    #[command(verbatim_doc_comment)]
    Supervise(SuperviseArgs),
    /// Speak the kdev protocol on stdin/stdout (run by the kdev CLI through one exec stream).
    ///
    /// Reads length-delimited frames from stdin and writes frames to stdout; logs go to stderr
    /// only. After the versioned handshake it lists the sync root (reconcile), applies patches
    /// (a tar plus deletions, refusing anything that would escape the sync root), builds the app
    /// (default: go build -o <bin-dir>/app.next <package> with CGO_ENABLED=0), moves the new
    /// binary to <bin-dir>/app, sends SIGHUP to the supervisor and reports build output,
    /// restart and readiness as events; a binary byte-identical to the one the app is running
    /// is dropped instead, and the app keeps running. Not meant to be run by hand.
    ///
    /// Exit codes: 0 session ended by the client, 2 bad input on stdin (garbage, truncated or
    /// oversized frame), 3 handshake refused (protocol version mismatch), 4 setup failed.
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Print whether a kdev session is connected to this pod, as one JSON line.
    ///
    /// {"held":true,"pid":31,"heard_ms_ago":1800}: a `serve` holds <run-dir>/serve.lock and
    /// last heard its kdev that long ago (a live kdev is heard every few seconds);
    /// {"held":false}: no session. A second kdev asks this before it refuses to start (another
    /// kdev is connected) or takes over a session whose kdev is gone. Never changes anything.
    #[command(verbatim_doc_comment)]
    SessionState(CommonArgs),
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// The shared kdev directory; src/, bin/, run/ and cache/ default to directories in it.
    #[arg(long, env = "KDEV_DIR", default_value = "/kdev", value_name = "DIR")]
    kdev_dir: PathBuf,
    /// Runtime files (PID file, app status, app log) [default: <kdev-dir>/run].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SuperviseArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Signal that asks the app to stop (name like TERM, INT, QUIT, or a number).
    #[arg(long, default_value = "TERM", value_parser = parse_signal, value_name = "SIGNAL")]
    stop_signal: Signal,
    /// How long the app may take to stop before its process group is killed (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    grace_period: Duration,
    /// Do not start the app before this path exists (logged once while waiting).
    #[arg(long, value_name = "PATH")]
    wait_for: Option<PathBuf>,
    /// Delay before restarting an app that exited on its own, the first time.
    #[arg(long, default_value = "250ms", value_parser = parse_duration, value_name = "DURATION")]
    backoff_min: Duration,
    /// The delay doubles after each consecutive exit, up to this.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    backoff_max: Duration,
    /// A run at least this long counts as healthy and resets the delay.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    healthy_after: Duration,
    /// Rotate <run-dir>/app.log (to app.log.1) when it would grow past this many bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    log_max_bytes: u64,
    /// The app and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The sync root, unless the client's hello names one [default: <kdev-dir>/src].
    #[arg(long, value_name = "DIR")]
    src_dir: Option<PathBuf>,
    /// Where the app binary is built (app.next) and installed (app) [default: <kdev-dir>/bin].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Build caches [default: <kdev-dir>/cache].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The go command used by the default build command.
    #[arg(long, default_value = "go", value_name = "PATH")]
    go: String,
    /// GOCACHE for builds [default: $GOCACHE if set, else <cache-dir>/go-build].
    #[arg(long, value_name = "DIR")]
    gocache: Option<PathBuf>,
    /// GOMODCACHE for builds [default: $GOMODCACHE if set, else <cache-dir>/mod].
    #[arg(long, value_name = "DIR")]
    gomodcache: Option<PathBuf>,
    /// A volume that outlives the pod for the Go caches: GOCACHE becomes DIR/go-build (seeded
    /// once from --gocache when missing), GOMODCACHE DIR/mod when --gomodcache is empty.
    #[arg(long, env = kdev_protocol::layout::PERSISTENT_CACHE_ENV, value_name = "DIR")]
    persistent_cache: Option<PathBuf>,
    /// How long to wait for the supervisor to start the new binary after SIGHUP.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    restart_timeout: Duration,
}

fn layout(common: &CommonArgs) -> Layout {
    let mut p = Layout::new(&common.kdev_dir);
    if let Some(r) = &common.run_dir {
        p.run = r.clone();
    }
    p
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn main() {
    // The go command's -toolexec wrapper (quick rebuilds): not a user-facing subcommand, and run
    // for every tool the go command starts, so it skips parsing the command line.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(OsStr::new(quick_build::RECORD_TOOL)) {
        let e = quick_build::record::run(args.collect());
        eprintln!("kdev-controller record-tool: {e}");
        std::process::exit(127);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Supervise(a) => run_supervise(a),
        Command::Serve(a) => run_serve(a),
        Command::SessionState(a) => run_session_state(a),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("kdev-controller: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run_supervise(a: SuperviseArgs) -> Result<i32> {
    supervise::run(SuperviseOptions {
        layout: layout(&a.common),
        stop_signal: a.stop_signal,
        grace_period: a.grace_period,
        wait_for: a.wait_for,
        backoff_min: a.backoff_min,
        backoff_max: a.backoff_max.max(a.backoff_min),
        healthy_after: a.healthy_after,
        log_max_bytes: a.log_max_bytes,
        command: a.command,
    })
}

fn run_session_state(a: CommonArgs) -> Result<i32> {
    let state = serve::liveness::state(&layout(&a))?;
    println!("{}", serde_json::to_string(&state)?);
    Ok(0)
}

fn run_serve(a: ServeArgs) -> Result<i32> {
    let mut p = layout(&a.common);
    if let Some(d) = a.src_dir {
        p.src = d;
    }
    if let Some(d) = a.bin_dir {
        p.bin = d;
    }
    if let Some(d) = a.cache_dir {
        p.cache = d;
    }
    let build = BuildDefaults {
        go: a.go,
        gocache: a
            .gocache
            .or_else(|| env_path("GOCACHE"))
            .unwrap_or_else(|| p.gocache()),
        gomodcache: a
            .gomodcache
            .or_else(|| env_path("GOMODCACHE"))
            .unwrap_or_else(|| p.gomodcache()),
    };
    let opts = ServeOptions {
        layout: p,
        build,
        persistent_cache: a.persistent_cache.filter(|d| !d.as_os_str().is_empty()),
        restart_timeout: a.restart_timeout,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    let code = rt.block_on(serve::run(opts));
    // Do not wait for the blocking stdin reader thread: it may sit in read(2) forever.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(code)
}

//! `kdev`: the developer-side CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Hot-reload inner loop for Go services on Kubernetes.
///
/// kdev syncs your Go sources into a running pod, rebuilds them there and restarts the app,
/// about a second after each save: no image build, no registry push, no pod restart.
///
/// Start with `kdev init` in your Go module's root (it writes kdev.yaml), then run `kdev watch`.
#[derive(Debug, Parser)]
#[command(name = "kdev", version, about, long_about, after_help = kdev::EXIT_CODES_HELP)]
struct Cli {
    /// The project's config file; its directory is the project root.
    #[arg(
        long,
        short = 'f',
        global = true,
        default_value = "kdev.yaml",
        value_name = "FILE"
    )]
    file: PathBuf,
    /// Namespace to use [default: kdev.yaml's, else the kubeconfig context's].
    #[arg(long, short = 'n', global = true, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// kubeconfig context to use [default: kdev.yaml's, else the current one].
    #[arg(long, global = true, value_name = "CONTEXT")]
    context: Option<String>,
    /// Who is developing: names and labels your objects and session lock, so several developers
    /// can share a namespace [default: kdev.yaml's `owner`, else the kubeconfig user].
    #[arg(long, global = true, value_name = "NAME")]
    owner: Option<String>,
    /// Log what kdev does internally: `-v` shows each phase (deploy, upload, reconcile, patch,
    /// build, restart, forward) with its duration, `-vv` everything.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Look at the project and write a kdev.yaml that works as is.
    ///
    /// Finds go.mod's main packages, the manifests (YAML in k8s/ or deploy/ and similar, a
    /// Kustomize directory or overlay, a Helm chart), their Deployments and StatefulSets with
    /// containers and ports, and an existing .air.toml (its build package and flags, excluded
    /// directories, args, env and pre_cmd carry over). Each workload named like a main package
    /// becomes a service; what cannot be decided is asked on a terminal, or given with
    /// --service. Also writes .kdev/kdev.schema.json, which the file's first line points editors
    /// to. Never replaces an existing kdev.yaml without --force.
    Init {
        /// Replace an existing kdev.yaml.
        #[arg(long)]
        force: bool,
        /// Develop WORKLOAD built from PACKAGE, e.g. `--service orders=./cmd/orders`
        /// (repeatable). With it, exactly the named workloads are services and nothing is asked.
        #[arg(long = "service", value_name = "WORKLOAD=PACKAGE")]
        services: Vec<String>,
        /// The manifests (a YAML file or directory, a Kustomize directory, a Helm chart)
        /// [default: found in k8s/, deploy/, kubernetes/, manifests/, charts/, helm/ …].
        #[arg(long, value_name = "PATH")]
        manifests: Option<PathBuf>,
        /// The sidecar image that builds the app [default: golang:<go.mod's go version>].
        #[arg(long, value_name = "IMAGE")]
        sidecar_image: Option<String>,
    },
    /// Deploy the dev workload, sync your sources into it, rebuild and restart on every save.
    ///
    /// Applies the project's manifests with the app's workload rewritten into a dev pod (a Go
    /// sidecar that builds, a supervisor that restarts the app), forwards the app's ports to
    /// localhost, and then keeps the pod's source tree equal to yours. Each save shows one line:
    /// what changed and how long syncing, building, restarting and becoming ready took. Compile
    /// errors are shown with local paths while the previous version keeps serving. If the
    /// stream to the pod breaks or the pod is replaced, kdev reconnects and re-syncs by itself.
    /// Ctrl-C stops watching and leaves the pod running; `kdev down` removes it.
    Watch {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Like `watch`, with the app built for debugging and run under Delve, port-forwarded.
    ///
    /// The app is built with `-gcflags=all=-N -l` (and uncompressed DWARF) and started as
    /// `dlv exec --headless --accept-multiclient` in its container (Delve is copied there from
    /// the sidecar image, or built in the pod).
    /// Delve's port is forwarded to localhost, and once it listens kdev prints the VS Code
    /// launch.json entry and the GoLand settings that attach to it, with the path mapping from
    /// your project to the pod.
    ///
    /// Attach once: localhost:PORT is kdev's debug endpoint, which keeps your debugger (DAP or
    /// JSON-RPC) attached across saves. Each save rebuilds and restarts the app under a new
    /// Delve, like `watch`, and kdev sets your breakpoints again in it. With --hold, saves are
    /// synced but nothing is rebuilt until you press Enter.
    Debug {
        /// Delve's port, in the pod and on localhost.
        #[arg(long, default_value_t = kdev::DELVE_DEFAULT_PORT, value_name = "PORT")]
        port: u16,
        /// Start the app stopped: it runs only once a debugger continues it.
        #[arg(long)]
        stop_at_start: bool,
        /// Sync saves but build and restart only when you press Enter.
        #[arg(long)]
        hold: bool,
        /// Print the editor configuration and exit, without deploying anything.
        #[arg(long)]
        print_config: bool,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Remove what `kdev watch` applied for this project (only objects kdev labelled as its own).
    Down,
    /// Print the JSON Schema of kdev.yaml (for editors: see the README's "Editor support").
    Schema,
    /// Print a shell completion script, e.g. `kdev completions bash > ~/.local/share/bash-completion/completions/kdev`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show the kdev sessions running on this machine: each service's state, last reload and
    /// its phases, p50/p95, restarts and addresses (from each session's status API).
    ///
    /// `-o json` prints the same documents the status page reads (`GET /api/status`, see the
    /// README's "Status page and API"), one array of sessions.
    Status {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: kdev::cmd::status::Format,
    },
    /// Print the status page's address of the session running for this project (or the only
    /// one running), to open in a browser.
    Ui,
    /// List the dev sessions in the namespace: owner, workload, pod, age, last renewal, state.
    Sessions,
    /// Remove the workloads, Services, ConfigMaps, Secrets and Leases of sessions whose Lease
    /// expired long ago (abandoned by a crashed or closed laptop); live sessions are never
    /// touched.
    Gc {
        /// How long a session's Lease must have been expired, e.g. 10m or 1h.
        #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
        older_than: Duration,
    },
}

/// Flags of the dev loop that `watch` and `debug` share.
#[derive(Debug, clap::Args)]
struct SessionArgs {
    /// The services to develop, by their names in kdev.yaml's `services:` [default: all]. The
    /// others are applied as the manifests say.
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
    /// Watch by polling instead of inotify (for network file systems or VMs that do not
    /// deliver file events).
    #[arg(long)]
    poll: bool,
    /// How long to wait for the dev pod to start, e.g. 120s or 5m.
    #[arg(long, default_value = "180s", value_parser = parse_duration, value_name = "DURATION")]
    pod_timeout: Duration,
    /// Take the session lock even if another kdev of yours holds it for this workload.
    #[arg(long)]
    take_over: bool,
    /// Append one JSON line per reload to FILE: when the change was seen, synced, built,
    /// restarted and ready (milliseconds since the epoch). For benchmarks and slow-reload reports.
    #[arg(long, value_name = "FILE")]
    timings: Option<PathBuf>,
    /// Print the address of the status page (127.0.0.1, with a token): each service's state,
    /// its reloads' phases as a chart, build errors that open in your editor, filtered logs,
    /// and buttons to rebuild, restart and pause. `kdev ui` prints it from another terminal.
    #[arg(long)]
    ui: bool,
    /// No live status block below the lines on a terminal (it is also off with -v, and
    /// whenever stdout is not a terminal).
    #[arg(long)]
    no_status_block: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    kdev_protocol::parse_duration(s).map_err(|e| e.to_string())
}

fn watch_options(
    cli: &Cli,
    session: &SessionArgs,
    debug: Option<kdev::DebugOptions>,
) -> kdev::cmd::watch::WatchOptions {
    kdev::cmd::watch::WatchOptions {
        config_path: cli.file.clone(),
        namespace: cli.namespace.clone(),
        context: cli.context.clone(),
        services: session.services.clone(),
        poll: session.poll,
        pod_timeout: session.pod_timeout,
        debug,
        owner: cli.owner.clone(),
        take_over: session.take_over,
        timings: session.timings.clone(),
        ui: session.ui,
        status_block: !session.no_status_block && cli.verbose == 0,
    }
}

/// `kdev --version`: kdev's version, the protocol it speaks with its in-pod controller, and the
/// controllers it carries.
fn version() -> &'static str {
    // Built once per process; clap keeps a `&'static str`.
    Box::leak(
        format!(
            "{} (protocol {}); controllers: {}",
            env!("CARGO_PKG_VERSION"),
            kdev_protocol::PROTOCOL_VERSION,
            kdev::embedded_controllers()
        )
        .into_boxed_str(),
    )
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command()
        .version(version())
        .get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.verbose);
    let result = main_impl(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the chain of causes on one line, without a backtrace.
            eprintln!("kdev: error: {e:#}");
            ExitCode::from(kdev::exit_code(&e) as u8)
        }
    }
}

/// `-v`: kdev's own debug lines, and one line per phase span as it closes, with its duration.
fn init_logging(verbose: u8) {
    let filter = match verbose {
        0 => "warn",
        1 => "kdev=debug,info",
        _ => "debug",
    };
    let spans = if verbose > 0 {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KDEV_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_span_events(spans)
        // Above the status block when it is on the same terminal.
        .with_writer(kdev::status::StderrLines)
        .init();
}

/// Write to stdout; a reader that went away (`kdev schema | head`) is not an error.
fn print_out(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn main_impl(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Watch { session } => {
                kdev::cmd::watch::run(watch_options(&cli, session, None)).await
            }
            Command::Debug {
                port,
                stop_at_start,
                hold,
                print_config,
                session,
            } => {
                if *print_config {
                    return kdev::cmd::watch::print_debug_config(&cli.file, *port);
                }
                let debug = kdev::DebugOptions {
                    port: *port,
                    continue_at_start: !stop_at_start,
                    hold: *hold,
                };
                kdev::cmd::watch::run(watch_options(&cli, session, Some(debug))).await
            }
            Command::Status { output } => kdev::cmd::status::print(*output).await,
            Command::Ui => kdev::cmd::status::print_page_url(&cli.file),
            Command::Sessions => {
                kdev::cmd::sessions::print(cli.context.as_deref(), cli.namespace.as_deref()).await
            }
            Command::Gc { older_than } => {
                kdev::cmd::sessions::gc(
                    cli.context.as_deref(),
                    cli.namespace.as_deref(),
                    *older_than,
                )
                .await
            }
            Command::Init {
                force,
                services,
                manifests,
                sidecar_image,
            } => kdev::init::run(&kdev::init::InitOptions {
                config_path: cli.file.clone(),
                force: *force,
                services: services.clone(),
                manifests: manifests.clone(),
                sidecar_image: sidecar_image.clone(),
            }),
            Command::Schema => print_out(format!("{}\n", kdev::schema_json()).as_bytes()),
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                let mut script = Vec::new();
                clap_complete::generate(*shell, &mut cmd, "kdev", &mut script);
                print_out(&script)
            }
            Command::Down => {
                kdev::cmd::down::down(
                    &cli.file,
                    cli.namespace.as_deref(),
                    cli.context.as_deref(),
                    cli.owner.as_deref(),
                )
                .await
            }
        }
    });
    // The watcher and forwarders run on the runtime; do not wait for them on exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_takes_hours_and_days_as_the_readme_shows() {
        let cli = Cli::try_parse_from(["kdev", "gc", "--older-than", "1h"]).unwrap();
        assert!(
            matches!(cli.command, Command::Gc { older_than } if older_than == Duration::from_secs(3600))
        );
        assert!(Cli::try_parse_from(["kdev", "gc", "--older-than", "2d"]).is_ok());
        assert!(Cli::try_parse_from(["kdev", "gc", "--older-than", "soon"]).is_err());
    }
}

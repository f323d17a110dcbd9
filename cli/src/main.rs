//! `kdev`: the developer-side CLI.
//!
//! Today it only identifies itself; the commands arrive with the issues that build them, and
//! `--help` lists only what exists.

use clap::Parser;

/// Hot-reload inner loop for Go services on Kubernetes.
///
/// kdev syncs your Go sources into a running pod, rebuilds them there and restarts the app
/// without rebuilding images or restarting the pod. This build provides no commands yet.
#[derive(Debug, Parser)]
#[command(name = "kdev", version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("kdev: no commands are implemented in this build yet; see `kdev --help`.");
    std::process::exit(2);
}

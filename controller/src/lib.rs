//! `kdev-controller`: the in-pod half of kdev.
//!
//! * [`supervise`]: the main container's entrypoint; runs the app, restarts it on SIGHUP and
//!   after crashes, reaps, stops cleanly.
//! * [`serve`]: one protocol session on stdin/stdout (run by the CLI through a long-lived exec):
//!   reconcile, patch, build, restart, report.
//! * [`quick_build`]: rebuilds that skip the go command when only the main package's Go files
//!   changed (the `record-tool` wrapper of full builds, the Go file header they are judged by).
//!
//! The two roles talk through files under `<kdev-dir>/run` ([`kdev_protocol::Layout`],
//! formats in `run_files`) and one signal (SIGHUP to the PID in `run/supervisor.pid`). The
//! binary (`main.rs`) only parses the command line; this library is what it runs.

mod build_spec;
mod log;
pub mod quick_build;
mod run_files;
pub mod serve;
pub mod supervise;
mod util;

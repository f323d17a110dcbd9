//! `kdev-controller`: the in-pod half of kdev.
//!
//! * [`supervise`]: the main container's entrypoint; runs the app, restarts it on SIGHUP and
//!   after crashes, reaps, stops cleanly, and relays kdev's port-forwards to it.
//! * [`serve`]: one protocol session on stdin/stdout (run by the CLI through a long-lived exec):
//!   reconcile, patch, build, restart, report.
//! * [`quick_build`]: rebuilds that skip the go command when only Go files of packages the last
//!   full build compiled changed: the compiler runs again on those packages and on every
//!   package that imports them, then the linker, exactly as that build ran them (recorded by
//!   the `record-tool` wrapper of full builds), and a shadow `go build` proves the result.
//!
//! Below them, shared by more than one: [`build_spec`] (a build command fully resolved: what
//! `serve` runs, and what quick rebuilds make), [`run_files`] (formats of the files under
//! `<kdev-dir>/run`), [`log`] (stderr lines prefixed with the role) and [`util`].
//!
//! The two roles talk through files under `<kdev-dir>/run` ([`kdev_protocol::Layout`],
//! formats in [`run_files`]) and one signal (SIGHUP to the PID in `run/supervisor.pid`). The
//! binary (`main.rs`) only parses the command line; this library is what it runs.

mod build_spec;
mod log;
pub mod quick_build;
mod run_files;
pub mod serve;
pub mod supervise;
mod util;

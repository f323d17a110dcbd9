//! The `kdev` CLI. `main.rs` parses the command line and calls [`cmd`]; everything else is
//! private to the crate. The layout, by concern:
//!
//! - [`cmd`]: the subcommands (`watch`/`debug`, `status`/`ui`, `down`, `sessions`, `gc`).
//! - `session`: setting up a watch: a plan (project, connection, manifests, owner, access),
//!   then one `ServiceSession` per service (its Lease, forwards, watcher, sync engine).
//! - `reload`: the reload loop — connect, reconcile, sync each save, show each reload, recover.
//! - `sync`: keeping the pod's tree equal to the local one, by stage: watching (the watcher and
//!   the safety-net rescan), listing and diffing, transferring; and the sync engine driving them.
//! - `modules`: the developer's side of the pods' module proxy (their module cache and go).
//! - `pod`: the dev pod (controller upload, the session stream, port-forwards, Delve).
//! - `debugger`: `kdev debug`'s endpoint, which keeps the editor attached across reloads.
//! - [`status`]: the session's state as the terminal block, the status page and its API, and
//!   `kdev status` show it.
//! - `deploy`: manifests, the dev-pod rewrite, per-owner names, apply, waiting for the pod.
//! - `cluster`: the API client, connecting, permission checks, the session Lease.
//! - [`init`]: `kdev init`, which looks at a project and writes its kdev.yaml.
//! - `project`, `config`: kdev.yaml and what it means; `ui`: output; `error`: the typed errors
//!   that decide the exit code, `exit_code`: which code (above every layer); `backoff`, `task`:
//!   the one exponential backoff and the one task guard.

mod backoff;
mod cluster;
pub mod cmd;
mod config;
mod debugger;
mod deploy;
mod error;
mod exit_code;
pub mod init;
mod modules;
mod pod;
mod project;
mod reload;
mod session;
pub mod status;
mod sync;
mod task;
mod ui;

pub use exit_code::{EXIT_CODES_HELP, Exit, exit_code};

/// kdev.yaml's JSON Schema, pretty-printed (`kdev schema`).
pub fn schema_json() -> String {
    serde_json::to_string_pretty(&config::schema::schema()).unwrap_or_default()
}
pub use pod::controllers::embedded as embedded_controllers;
pub use pod::delve::{DEFAULT_PORT as DELVE_DEFAULT_PORT, DebugOptions};

/// What the end-to-end tests use below the CLI: the session stream, the controller upload, the
/// API client kdev builds, and the patch tar.
pub mod testing {
    pub use crate::cluster::client::build as client;
    pub use crate::pod::bootstrap::upload;

    /// The controller kdev would upload into a pod on a linux/amd64 node (this machine's).
    pub fn host_controller() -> anyhow::Result<Vec<u8>> {
        let found = crate::pod::controllers::Controllers::find()?;
        Ok(found.for_node("amd64", "test", "test")?.binary.to_vec())
    }
    pub use crate::pod::session::ControllerSession;

    /// `kdev debug`'s debug endpoint on `127.0.0.1:<port>` (0: any), reaching Delve at
    /// `delve`, started with `--continue`; its lines go to stdout.
    pub async fn debug_endpoint(
        port: u16,
        delve: std::net::SocketAddr,
    ) -> std::io::Result<std::net::SocketAddr> {
        crate::debugger::start(port, delve, crate::ui::Ui::plain(), None, true).await
    }
    pub use crate::sync::transfer::tar::build_tar;
}

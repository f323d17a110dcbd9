//! Setting up a `kdev watch` session, in an order that applies nothing when something is wrong.
//!
//! 1. [`plan`]: the project and its selected services, the connection, the manifests rewritten
//!    for development, who is developing, the permission check, and each service's ports and
//!    Delve port ([`Plan`]). Reads the cluster, creates nothing.
//! 2. [`prepare_service`], per service: its connection, sync engine and session Lease (another
//!    kdev of the same workload) ([`ServiceSession`]); then [`ServiceSession::listen`] on its
//!    local ports (one in use).
//! 3. [`apply`]: the build cache and the manifests.
//! 4. [`watch`]: one file watcher per sync root, started before the first reconcile so nothing
//!    saved in between is missed; and, with `--hold`, Enter presses from stdin.
//!
//! Each [`ServiceSession`] then runs in its [`crate::reload::ReloadLoop`] (`cmd::watch` drives
//! the steps and releases the Leases on Ctrl-C).

mod apply;
mod forwards;
mod options;
mod plan;
mod prepare;
mod service;
mod service_plan;
mod watchers;

pub use apply::apply;
pub use options::WatchOptions;
pub use plan::{Plan, plan};
pub use prepare::prepare_service;
pub use service::ServiceSession;
pub use watchers::watch;

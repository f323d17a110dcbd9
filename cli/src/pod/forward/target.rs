//! Where forwarded connections go: the current pod, the API connection to reach it over, and
//! whether it is reached through the relay. The session publishes it on a `watch` channel;
//! the listener and the spare pool follow it.

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

/// The pod to forward to, with the API handle of the session's current connection.
#[derive(Clone)]
pub struct ForwardTarget {
    pub pod: String,
    pub pods: Api<Pod>,
    /// The port of the pod's forward relay, once known; `None`: straight to the app.
    pub relay: Option<u16>,
    /// Delve's port (`kdev debug`): its connections end with the Delve they reached.
    pub delve: Option<u16>,
    /// Which session (and API connection) `pods` belongs to, from [`next_connection`]: warm
    /// spares opened over another one are dropped, since that connection may be the dead one
    /// the session was replaced for.
    pub connection: u64,
}

/// A number for a new session's connection (see [`ForwardTarget::connection`]).
pub fn next_connection() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

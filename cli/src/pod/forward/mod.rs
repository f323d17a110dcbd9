//! Port-forwards from localhost to the dev pod that survive app restarts and pod replacement.
//!
//! The local listener lives for the whole session; each accepted connection gets its own
//! upstream port-forward stream to whichever pod is current at that moment. A restarted app or a
//! replaced pod therefore never affects the listener (unlike `kubectl port-forward`, which dies
//! with its pod).
//!
//! **Through the relay.** A pod whose supervisor runs the forward relay (it says so with
//! `relay_port`: [`kdev_protocol::relay`], and `supervise/relay/` in the controller for what
//! the relay does) is reached through it: the stream goes to the relay's port, and the relay
//! connects to the app's. Two things follow:
//! - **Warm spares.** A stream to the relay does not depend on the app, so two streams per
//!   forwarded port (`relay_spares`) are opened ahead of need (once the relay has said hello
//!   on each), and a new local connection is attached to one at once, instead of waiting for a
//!   new TLS connection to the API server and the port-forward upgrade (several round trips:
//!   190 ms of the "ready" phase at 50 ms RTT). A used spare is replaced in the background;
//!   spares of a previous pod or relay are dropped when the target changes, and a spare whose
//!   stream ended is never handed out. (kube pools HTTP/1.1 connections to the API server, but
//!   each upgrade takes one for good, so without spares every local connection pays a
//!   handshake.)
//! - **Reloads without errors.** The relay sees the app's restarts as they happen: a connection
//!   that arrives while the app restarts waits for the new one (up to 10 s, then it is closed
//!   and kdev says why), and a kept-alive connection whose app restarted stays open and reaches
//!   the next app (for the app's ports; Delve's connections end with their Delve). Its limits
//!   (what it sends again, and to which protocols that is sound) are in the relay's docs.
//!
//! **Straight to the app**, for a controller without the relay (and until the relay's port is
//! known): when the app process exits (a restart after a save), connections to it are closed
//! here at once. Otherwise a client's kept-alive connection, as every browser keeps, would hang
//! for a second on its next request: containerd's port-forward waits up to 1 s for the client's
//! side to finish after the app closed its own (measured: 1.0 s through both
//! `kubectl port-forward` and kdev, 0 ms straight to the pod). The relay avoids that wait too:
//! it says in-band when the app closed a connection.
//!
//! **How the pieces fit**, over three crates. Here, in `kdev`: [`listener`] accepts on
//! `127.0.0.1:<local>` and, per connection, follows the session's [`target`] and picks a mode:
//! [`straight`] opens a Kubernetes port-forward stream ([`dial`]) to the app's port;
//! [`via_relay`] takes a warm stream from the [`spare_pool`] (kdev's spares: [`relay_spares`])
//! or dials the relay's port, and speaks the frames of [`kdev_protocol::relay`] (the shared
//! crate: OPEN, DATA, EOF one way; HELLO, APP_DATA, APP_EOF, ERROR the other). In the pod, the
//! relay (`kdev-controller supervise`, the app's parent: `controller/src/supervise/relay/`)
//! accepts the stream, connects to `127.0.0.1:<app port>` and passes bytes both ways, waiting
//! for the app and reaching the next one across restarts. Failures come back as
//! [`ForwardEvent`]s, which the reload loop shows through an [`ErrorSummary`].

mod dial;
mod error_summary;
mod listener;
mod relay_spares;
mod spare_pool;
mod straight;
mod target;
mod via_relay;

pub use error_summary::ErrorSummary;
pub use listener::{ForwardEvent, start};
pub use target::{ForwardTarget, next_connection};

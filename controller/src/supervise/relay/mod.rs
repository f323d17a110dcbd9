//! The forward relay: `kdev`'s port-forwards end here, and the relay connects to the app.
//!
//! A Kubernetes port-forward stream connects to its port in the pod when it is opened, so a
//! stream straight to the app can neither be opened ahead of need (it would be a connection to
//! whichever app runs then, holding up that app's graceful shutdown) nor outlive the app it
//! reached. The relay listens on 127.0.0.1 (an ephemeral port, published in the status as
//! `relay_port`) for as long as the supervisor lives, so `kdev` keeps a warm spare stream to it,
//! and it sees the app's restarts as they happen (the supervisor publishes its state to it). It
//! speaks [`kdev_protocol::relay`] frames with `kdev`; per stream:
//!
//! - **Open**: on `OPEN(port)`, connect to `127.0.0.1:port`, retrying while it refuses and
//!   waiting while the app is stopped, in crash backoff or not yet started, for up to
//!   [`WAIT_FOR_APP`](conn::WAIT_FOR_APP); then `ERROR` (kdev closes the client's connection
//!   and says why). Client bytes that arrive meanwhile are kept and sent once connected.
//! - **Restart** (only for connections opened with `OPEN_RESUME`: kdev's app ports, not
//!   Delve's): when the app closes the connection (or resets it) while the supervisor is
//!   stopping it, or after a new app started, the client's connection is kept. The bytes the
//!   client sent since the app last sent anything (at most `REPLAY_LIMIT`, 1 MiB) got no answer
//!   from the old app: when there are some (a request that reached it as it shut down, or was sent
//!   on a kept-alive connection as the app closed it), the relay connects to the next app and
//!   sends them again. When there are none (an idle kept-alive connection: graceful shutdowns
//!   close those), the connection is detached: the next bytes the client sends connect to the
//!   app then running; a connection left detached for `DETACHED_FOR` (10 s) is closed.
//! - **Crash**: the app's close while it was running, when its process is gone (a zombie not
//!   yet reaped, or the supervisor reports the exit): an idle connection is detached as above;
//!   one that was waiting for an answer gets `ERROR` (its request may be what crashed the app:
//!   it is not sent again).
//! - Any other close by the app is passed on (`APP_EOF`), as is every close for connections
//!   without `OPEN_RESUME`.
//!
//! This is connection-level and protocol-agnostic, so its limits are those of the protocol
//! spoken. Sound for request/response protocols where the client speaks first and a request
//! that got no byte of answer can be sent again (HTTP/1, gRPC on a new connection, most RPC):
//! the old app either drained the request (a graceful shutdown answers what it read) or never
//! read it. A request the old app read and then dropped without answering (an app without a
//! graceful shutdown, killed mid-request) is sent to the new app again, so it may run twice.
//! Pipelined requests after an answered one are not kept (the first answer byte counts for
//! all). A server-push stream (SSE, a WebSocket the app closes) whose app restarts is detached
//! and closed only after `DETACHED_FOR` (10 s), unless the client sends something; a protocol
//! where the server speaks first sees nothing from the new app until the client sends.
//!
//! The pieces: [`listener`] (the port and its thread), [`conn`] (one stream's state: the rules
//! above), [`loss`] (restart, crash or close), [`gate`] (the app's state, from the supervisor).
//! kdev's side is `cli/src/pod/forward/` (its module docs say how the three crates fit).

mod conn;
mod gate;
mod listener;
mod loss;
#[cfg(test)]
mod tests;

pub use gate::AppGate;
pub use listener::{Relay, start};

//! What a protocol's session keeper does, so that one driver ([`super::drive`]) runs both:
//! follow the client's messages and Delve's, answer for a Delve that went away, and set a new
//! Delve up as the client had set up the old one.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWrite;

use super::link::Link;

/// How long kdev waits for Delve to answer one of its own requests during a replay.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long news that the process exited is held back: a reload kills the process just before
/// its Delve goes, and the client should hear "the app restarted", not "it exited". If Delve
/// stays, the exit was the app's own and the client hears of it then.
pub const EXIT_HOLD: Duration = Duration::from_secs(2);

/// What to do with a client's message.
#[derive(Debug)]
pub enum ClientStep {
    /// Send it to Delve (held while there is none).
    Forward(Value),
    /// Answer the client at once, Delve is not asked.
    Answer(Value),
    /// Nothing now (kdev answers it later).
    Hold,
}

/// What a replay did, for kdev's line.
#[derive(Debug, Default)]
pub struct Replayed {
    pub breakpoints: usize,
    /// Breakpoints the new Delve could not set: where, and why.
    pub unverified: Vec<String>,
}

/// One protocol's client session, kept across Delves.
pub trait Keeper: Send {
    /// The protocol's name, for kdev's lines.
    const PROTOCOL: &'static str;

    /// A message from the client.
    fn on_client(&mut self, msg: Value) -> ClientStep;

    /// A message from Delve: what the client gets of it.
    fn on_upstream(&mut self, msg: Value) -> Vec<Value>;

    /// The connection to Delve ended: what the client is told now.
    fn lost(&mut self) -> Vec<Value>;

    /// Requests of kdev's own for Delve, made while following the session (their answers
    /// come back through [`Keeper::on_upstream`], which keeps them from the client).
    fn own_requests(&mut self) -> Vec<Value> {
        Vec::new()
    }

    /// What kdev should say now (a crash under the debugger, with its stack).
    fn notes(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// The client asked to end its session (the end of Delve's connection is then its end).
    fn ending(&self) -> bool;

    /// The client saw the process stop and has not continued it.
    fn stopped(&self) -> bool;

    /// Until when news of the process's exit is held back ([`EXIT_HOLD`]), if any is.
    fn held_until(&self) -> Option<Instant>;

    /// The hold is over with Delve still there: what the client gets now.
    fn release(&mut self) -> Vec<Value>;

    /// Set up a new Delve as the client had set up the old one: what the client is told, and
    /// what was set.
    fn replay<W: AsyncWrite + Unpin + Send>(
        &mut self,
        up: &mut Link<W>,
    ) -> impl Future<Output = Result<(Vec<Value>, Replayed), String>> + Send;
}

/// `call` with the replay's time limit.
pub async fn call_timeout<F>(call: F) -> Result<Value, String>
where
    F: Future<Output = Result<Value, String>>,
{
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("Delve did not answer in {CALL_TIMEOUT:?}")))
}

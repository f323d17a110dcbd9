//! Asking the developer's machine for one file: a `module_request` through the session's
//! stdout, then waiting for every part of the answer ([`super::pending`]), for the session's
//! end, or until the CLI has been quiet for too long.

use std::time::Duration;

use kdev_protocol::module_proxy::ProxyPath;
use kdev_protocol::{ModuleRequest, ServerMessage};
use tokio::sync::Semaphore;

use super::pending::{Answer, Pending};
use crate::serve::io::WeakOut;

/// How long a request waits without hearing anything from the CLI (a first part, or the next
/// one) before go gets a 504: generous, as the developer's machine may be cloning a
/// repository for it. A large zip still streaming in parts never times out.
pub(crate) const QUIET_LIMIT: Duration = Duration::from_secs(600);

/// Requests asked at once; more wait for a turn. go fetches in parallel, and each answer is
/// held in memory until complete.
pub(crate) const IN_FLIGHT: usize = 8;

/// How asking ended.
#[derive(Debug)]
pub(crate) enum Asked {
    Answer(Answer),
    /// No word from the CLI for [`QUIET_LIMIT`].
    TimedOut,
}

/// What asking needs: where answers arrive, the session's stdout (weakly: the proxy must not
/// keep a finished session's writer running), and the turns.
pub(crate) struct Asker {
    pub pending: std::sync::Arc<Pending>,
    pub out: WeakOut,
    pub turns: Semaphore,
}

impl Asker {
    pub(crate) async fn ask(&self, path: &ProxyPath) -> Asked {
        tokio::select! {
            biased;
            () = self.pending.wait_ended() => Asked::Answer(Answer::Ended),
            r = self.ask_in_turn(path) => r,
        }
    }

    async fn ask_in_turn(&self, path: &ProxyPath) -> Asked {
        // The semaphore is never closed.
        let Ok(Ok(_turn)) = tokio::time::timeout(QUIET_LIMIT, self.turns.acquire()).await else {
            return Asked::TimedOut;
        };
        // Only while it waits: once the session drops its own, the writer may stop.
        let Some(out) = self.out.upgrade() else {
            return Asked::Answer(Answer::Ended);
        };
        let Some((id, answer)) = self.pending.register() else {
            return Asked::Answer(Answer::Ended);
        };
        // However this ends (answered, timed out, go hung up), later parts are dropped.
        let _forget = Forget(&self.pending, id);
        let request = ServerMessage::ModuleRequest(ModuleRequest {
            id,
            path: path.to_string(),
        });
        tokio::select! {
            biased;
            // The writer failed: no request reaches the CLI any more.
            () = out.closed() => {
                self.pending.end();
                Asked::Answer(Answer::Ended)
            }
            a = async {
                out.send(request).await;
                answer.await.unwrap_or(Answer::Ended)
            } => Asked::Answer(a),
            () = quiet(&self.pending, id) => Asked::TimedOut,
        }
    }
}

/// Returns once `id` has not been heard of for [`QUIET_LIMIT`]; never once it is answered.
async fn quiet(pending: &Pending, id: u64) {
    while let Some(last) = pending.last_heard(id) {
        let due = last + QUIET_LIMIT;
        if std::time::Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due.into()).await;
    }
    std::future::pending().await
}

struct Forget<'a>(&'a Pending, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

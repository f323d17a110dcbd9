//! The warm-spare pool of one forwarded port: connections opened ahead of need, so a new local
//! connection is attached to one at once (see the `forward` module docs for what that saves).
//!
//! A task of its own keeps `wanted` live spares to the current target, opening the missing ones
//! at the same time: a spare handed out is replaced, spares of a previous target are dropped
//! when it changes (and those opened for it meanwhile are not kept), a spare whose connection
//! ended is dropped when seen (at the latest every [`CHECK_EVERY`]) and never handed out, and
//! failures to open are retried after an exponential [`Backoff`], reset by the next success.
//!
//! It is generic over what a spare is ([`Spare`]) and how one is opened ([`OpenSpare`]), so
//! that this keeping is tested with fake connections; kdev's spares are in `relay_spares`.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::backoff::Backoff;

/// The first wait before trying again to open a spare after a failure.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait before trying again to open a spare after a failure.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How often idle spares are checked for having ended.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// A warm connection, ready for targets of type `T`.
pub(super) trait Spare<T>: Send + 'static {
    /// Whether it leads where `target` forwards.
    fn serves(&self, target: &T) -> bool;
    /// Whether it still stands.
    fn alive(&mut self) -> bool;
}

/// How the pool opens spares for targets of type `T`.
pub(super) trait OpenSpare<T>: Send + 'static {
    type Spare: Spare<T>;
    /// Whether spares can be opened for `target` at all.
    fn takes_spares(&self, target: &T) -> bool;
    /// Open one spare for `target`.
    fn open(&self, target: T)
    -> impl Future<Output = Result<Self::Spare, String>> + Send + 'static;
}

/// The ready spares of one forwarded port; the keeper task holds a clone.
pub(super) struct SparePool<S> {
    ready: Arc<Mutex<Vec<S>>>,
    /// Wakes the keeper when a spare was taken (to replace it).
    taken: Arc<Notify>,
}

impl<S> Clone for SparePool<S> {
    fn clone(&self) -> Self {
        SparePool {
            ready: self.ready.clone(),
            taken: self.taken.clone(),
        }
    }
}

impl<S> SparePool<S> {
    /// Start keeping `wanted` spares to whatever `target` holds (`local`: the forwarded port,
    /// for the logs). The keeper ends when `target`'s sender is dropped.
    pub(super) fn start<T, O>(
        opener: O,
        target: watch::Receiver<Option<T>>,
        wanted: usize,
        local: u16,
    ) -> SparePool<S>
    where
        T: Clone + Send + Sync + 'static,
        O: OpenSpare<T, Spare = S>,
        S: Spare<T>,
    {
        let pool = SparePool {
            ready: Arc::default(),
            taken: Arc::new(Notify::new()),
        };
        let keeper = pool.clone();
        tokio::spawn(async move {
            let span = tracing::debug_span!("spares", local);
            tracing::Instrument::instrument(keeper.keep(opener, target, wanted), span).await
        });
        pool
    }

    fn lock(&self) -> MutexGuard<'_, Vec<S>> {
        // A panic while holding the lock leaves a plain Vec behind: still usable.
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many spares are ready (tests watch the keeper through it).
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.lock().len()
    }

    /// A live spare to `target`, if one is ready.
    pub(super) fn take<T>(&self, target: &T) -> Option<S>
    where
        S: Spare<T>,
    {
        let mut ready = self.lock();
        let mut found = None;
        while let Some(mut s) = ready.pop() {
            if s.serves(target) && s.alive() {
                found = Some(s);
                break;
            }
        }
        drop(ready);
        self.taken.notify_one();
        found
    }

    /// Keep `wanted` live spares to the current target, opening the missing ones at the same
    /// time.
    async fn keep<T, O>(self, opener: O, mut target: watch::Receiver<Option<T>>, wanted: usize)
    where
        T: Clone + Send + Sync + 'static,
        O: OpenSpare<T, Spare = S>,
        S: Spare<T>,
    {
        let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
        let mut retry_at: Option<Instant> = None;
        let mut opening = tokio::task::JoinSet::new();
        loop {
            let current = target.borrow_and_update().clone();
            // Drop spares of another target, and those whose connection ended.
            let have = {
                let mut ready = self.lock();
                ready.retain_mut(|s| current.as_ref().is_some_and(|t| s.serves(t)) && s.alive());
                ready.len()
            };
            if let Some(t) = &current
                && opener.takes_spares(t)
                && retry_at.is_none_or(|at| at <= Instant::now())
            {
                retry_at = None;
                for _ in have + opening.len()..wanted {
                    opening.spawn(opener.open(t.clone()));
                }
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = target.changed() => if r.is_err() { return },
                _ = self.taken.notified() => {}
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = retry => {}
                Some(opened) = opening.join_next() => match opened {
                    Ok(Ok(s)) => {
                        backoff.reset();
                        // The target may have moved on while it was opening.
                        if target.borrow().as_ref().is_some_and(|t| s.serves(t)) {
                            self.lock().push(s);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!("opening a spare stream: {e}");
                        retry_at = Some(Instant::now() + backoff.next());
                    }
                    Err(_) => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;

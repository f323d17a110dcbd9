//! The session after the handshake: one client message at a time, in the order sent (pings
//! excepted, see [`super::io`]), interleaved with builds that finish and ended by the client
//! (end of stream, `bye`), bad input or SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kdev_protocol::{
    BuildMode, ClientMessage, ErrorCode, ListingDigest, Patch, PatchLimits, PatchResult, Reconcile,
    ReconcileContinue, ReconcileResult, ServerCodec, ServerMessage, listing_digest,
};
use tokio::sync::{mpsc, watch};

use super::build::Builds;
use super::exit::{EXIT_BAD_INPUT, EXIT_OK};
use super::io::{Inbound, Out, error, fatal};
use super::warm::{Settling, warm};
use super::{patch, reconcile};
use crate::log::serve as log;
use crate::util::ms;

/// Sleep until `at`; forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Paths echoed per list in a `PatchResult` (the counts say how many there were).
const MAX_LISTED: usize = 1000;

/// Budget of one `ReconcileResult` part, in worst-case JSON bytes (see [`reconcile::split`]).
const LISTING_PART_BYTES: usize = 16 << 20;

pub(super) struct Session {
    pub root: PathBuf,
    /// `hello.config.build_inputs`.
    pub build_inputs: Option<Vec<String>>,
    pub out: Out,
    pub limits: PatchLimits,
    pub builds: Builds,
    pub cache: Arc<Mutex<kdev_protocol::hash_cache::HashCache>>,
    /// Set on SIGTERM/SIGINT: a patch or listing in progress stops between entries.
    pub stop: Arc<AtomicBool>,
    /// The listing whose digest was sent, until the client says whether it wants it (one at a
    /// time: a newer `reconcile` replaces it).
    pub kept_listing: Option<KeptListing>,
    /// Files patches wrote, hashed into the cache once settled (see [`super::warm`]).
    pub settling: Settling,
    /// The warm-up running in the background, if any.
    pub warming: Option<tokio::task::JoinHandle<()>>,
}

pub(super) struct KeptListing {
    id: u64,
    /// `None` once a patch changed the tree: the listing no longer describes it.
    listing: Option<reconcile::Listing>,
    started: Instant,
}

impl Session {
    /// Run until the session ends. Returns the exit code.
    pub(super) async fn main_loop(
        &mut self,
        in_rx: &mut mpsc::Receiver<Inbound>,
        term: &mut watch::Receiver<bool>,
    ) -> i32 {
        loop {
            let shadow_due = self.builds.shadow_due();
            tokio::select! {
                // A SIGTERM that arrived while a message was handled wins over the next one.
                biased;
                _ = term.changed() => {
                    log("terminated (a newer session took over, or the pod is stopping); ending the session");
                    self.out.send(fatal(
                        ErrorCode::Terminated,
                        "kdev-controller serve was terminated (a newer session took over, or the pod is stopping)".into(),
                    )).await;
                    return EXIT_OK;
                }
                msg = in_rx.recv() => {
                    // Its budget share is released here: it is no longer queued.
                    let frame = match msg.map(|m| m.frame) {
                        None | Some(Ok(None)) => {
                            log("the client closed the stream; ending the session");
                            return EXIT_OK;
                        }
                        Some(Err(e)) => {
                            log(format!("bad frame: {e}"));
                            self.out.send(fatal(ErrorCode::BadFrame, format!("{e}; ending the session"))).await;
                            return EXIT_BAD_INPUT;
                        }
                        Some(Ok(Some(f))) => f,
                    };
                    let msg = match ServerCodec::decode(frame) {
                        Ok(m) => m,
                        Err(e) => {
                            log(format!("bad message: {e}"));
                            self.out.send(fatal(ErrorCode::BadMessage, format!("{e}; ending the session"))).await;
                            return EXIT_BAD_INPUT;
                        }
                    };
                    if !self.handle(msg).await {
                        return EXIT_OK;
                    }
                }
                Some((id, res)) = self.builds.finished() => self.builds.on_finished(id, res).await,
                // Idle long enough after a quick rebuild: prove it (see `build`).
                _ = sleep_until_some(shadow_due) => self.builds.start_shadow(),
                _ = sleep_until_some(self.settling.due()) => self.warm_cache(),
            }
        }
    }

    /// Handle one client message. Returns false to end the session.
    async fn handle(&mut self, msg: ClientMessage) -> bool {
        match msg {
            ClientMessage::Hello(_) => {
                self.out
                    .send(error(
                        ErrorCode::UnexpectedMessage,
                        "hello was already received".into(),
                        None,
                    ))
                    .await;
            }
            ClientMessage::Reconcile(r) => self.reconcile(r).await,
            ClientMessage::ReconcileContinue(c) => self.reconcile_continue(c).await,
            ClientMessage::Patch(p) => self.patch(p).await,
            ClientMessage::Build(b) => {
                if self.builds.cancel().await.is_some() {
                    log("build request: cancelled the running build");
                }
                self.builds.start(Some(b.id));
            }
            ClientMessage::Restart(r) => {
                log("restart request: restarting the app without a build");
                self.builds.restart(r.id);
            }
            ClientMessage::Ping(p) => self.out.send(ServerMessage::Pong(p)).await,
            // The reader hands these to the module proxy; one here answers a request nobody
            // waits for any more.
            ClientMessage::ModuleResponse(_) => {}
            ClientMessage::Bye => return false,
        }
        true
    }

    async fn reconcile(&mut self, r: Reconcile) {
        let Reconcile { id, digest_first } = r;
        self.kept_listing = None;
        let t0 = Instant::now();
        let root = self.root.clone();
        let cache = self.cache.clone();
        let stop = self.stop.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            let listing = reconcile::list(&root, &mut cache, &stop);
            if let Err(e) = cache.save() {
                log(format!("cannot keep the listing's hash cache: {e}"));
            }
            listing
        })
        .await;
        let msg = match res {
            // SIGTERM: the main loop ends the session right after.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Ok(Ok(l)) if digest_first => {
                let digest = ListingDigest {
                    id,
                    digest: listing_digest(&l.entries, &l.skipped),
                    entries: u32::try_from(l.entries.len()).unwrap_or(u32::MAX),
                    elapsed_ms: ms(t0.elapsed()),
                    cached: l.cached,
                };
                self.kept_listing = Some(KeptListing {
                    id,
                    listing: Some(l),
                    started: t0,
                });
                ServerMessage::ListingDigest(digest)
            }
            Ok(Ok(l)) => return self.send_listing(id, l, t0).await,
            Ok(Err(e)) => error(
                ErrorCode::ReconcileFailed,
                format!("cannot list {}: {e}", self.root.display()),
                Some(id),
            ),
            Err(e) => error(
                ErrorCode::ReconcileFailed,
                format!("listing failed: {e}"),
                Some(id),
            ),
        };
        self.out.send(msg).await;
    }

    /// Send the kept listing, or drop it.
    async fn reconcile_continue(&mut self, c: ReconcileContinue) {
        match self.kept_listing.take() {
            Some(kept) if kept.id == c.id => match kept.listing {
                Some(listing) if c.send => self.send_listing(c.id, listing, kept.started).await,
                None if c.send => {
                    let msg = format!(
                        "listing {} is out of date: a patch changed the tree after it was \
                         taken; reconcile again",
                        c.id
                    );
                    let e = error(ErrorCode::ReconcileFailed, msg, Some(c.id));
                    self.out.send(e).await;
                }
                _ => {}
            },
            other => {
                self.kept_listing = other;
                self.out
                    .send(error(
                        ErrorCode::UnexpectedMessage,
                        format!("no listing {} is waiting to be sent", c.id),
                        Some(c.id),
                    ))
                    .await;
            }
        }
    }

    /// The listing in parts that each fit a frame, whatever the tree's size.
    async fn send_listing(&mut self, id: u64, l: reconcile::Listing, t0: Instant) {
        let parts = reconcile::split(l.entries, l.skipped, LISTING_PART_BYTES);
        let n = parts.len();
        for (i, (entries, skipped)) in parts.into_iter().enumerate() {
            let part = ReconcileResult {
                id,
                root: self.root.to_string_lossy().into_owned(),
                entries,
                skipped,
                elapsed_ms: ms(t0.elapsed()),
                cached: l.cached,
                more: i + 1 < n,
            };
            self.out.send(ServerMessage::ReconcileResult(part)).await;
        }
    }

    /// Hash the files patches wrote, now settled, into the listing's cache: in the background
    /// (a patch never waits for it; a listing waits for the cache it holds, and then reads
    /// nothing it hashed).
    fn warm_cache(&mut self) {
        if self.warming.as_ref().is_some_and(|w| !w.is_finished()) {
            self.settling.postpone();
            return;
        }
        let paths = self.settling.take();
        let (root, cache, stop) = (self.root.clone(), self.cache.clone(), self.stop.clone());
        self.warming = Some(tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            let done = warm(&root, &paths, &mut cache, &stop);
            if done.worth_saving() {
                log(format!(
                    "hashed {} files ({} bytes) written by patches in {} ms, for the next listing",
                    done.files,
                    done.bytes,
                    ms(t0.elapsed())
                ));
                if let Err(e) = cache.save() {
                    log(format!("cannot keep the listing's hash cache: {e}"));
                }
            }
        }));
    }

    /// A patch with more deletions than the limit: refused as a whole.
    async fn refuse_deletes(&mut self, id: u64) {
        let msg = format!(
            "patch {id} has more than {} deletions (limits.max_deletes); nothing was applied: \
             split it into several patches",
            self.limits.max_deletes
        );
        log(&msg);
        self.out
            .send(error(ErrorCode::TooManyDeletes, msg, Some(id)))
            .await;
    }

    async fn patch(&mut self, p: Patch) {
        let t0 = Instant::now();
        let Patch {
            id,
            deletes,
            build,
            tar,
        } = p;
        // Refused before anything changes (the running build goes on).
        if deletes.len() > self.limits.max_deletes as usize {
            return self.refuse_deletes(id).await;
        }
        let cancelled_build = self.builds.cancel().await;
        // Recorded before the tree changes, so a session killed in the middle of the patch
        // leaves it marked as needing a build; undone below if no build input changed.
        let was_dirty = self.builds.dirty();
        let changes = !deletes.is_empty() || !tar.is_empty();
        if changes {
            self.builds.set_dirty(true);
            if let Some(kept) = &mut self.kept_listing {
                kept.listing = None;
            }
        }
        let root = self.root.clone();
        let limits = self.limits.clone();
        let stop = self.stop.clone();
        let outcome = match tokio::task::spawn_blocking(move || {
            patch::apply_patch(&root, &deletes, &tar, &limits, &stop)
        })
        .await
        {
            Ok(o) => o,
            Err(e) => {
                self.builds.patch_failed();
                self.out
                    .send(error(
                        ErrorCode::PatchFailed,
                        format!("applying the patch failed: {e}"),
                        Some(id),
                    ))
                    .await;
                return;
            }
        };
        if outcome.interrupted {
            // SIGTERM: the tree stays marked dirty; the main loop ends the session right after.
            log(format!("patch {id}: interrupted, the session is ending"));
            return;
        }
        self.settling.wrote(&outcome.applied);
        let inputs = self.build_inputs.as_deref();
        if outcome.touched().any(|p| patch::is_build_input(p, inputs)) || cancelled_build.is_some()
        {
            self.builds.set_dirty(true);
        } else if changes && !was_dirty {
            self.builds.restore_clean();
        }
        // Every path, not only build inputs: a quick rebuild must know of a changed go.mod
        // even if the client's patterns say it builds nothing by itself.
        self.builds.add_patch(
            id,
            outcome.applied.iter().map(String::as_str),
            outcome.deleted.iter().map(String::as_str),
        );
        let do_build = match build {
            BuildMode::Never => false,
            BuildMode::Always => true,
            BuildMode::Auto => self.builds.needed(),
        };
        let build_id = do_build.then_some(self.builds.next_id());
        let result = patch_result(id, outcome, t0, cancelled_build, build_id);
        if !result.complete {
            log(format!(
                "patch {id}: {} entries refused",
                result.refused_count
            ));
        }
        self.out.send(ServerMessage::PatchResult(result)).await;
        if do_build {
            self.builds.start(None);
        }
    }
}

/// The reply to patch `id`, with bounded lists: a patch of 100 000 paths must not make a reply
/// of 100 000 paths.
fn patch_result(
    id: u64,
    outcome: patch::PatchOutcome,
    t0: Instant,
    cancelled_build: Option<u64>,
    build_id: Option<u64>,
) -> PatchResult {
    fn capped<T>(mut v: Vec<T>) -> (Vec<T>, u64) {
        let n = v.len() as u64;
        v.truncate(MAX_LISTED);
        v.shrink_to_fit();
        (v, n)
    }
    let complete = outcome.complete();
    let (applied, applied_count) = capped(outcome.applied);
    let (deleted, deleted_count) = capped(outcome.deleted);
    let (refused, refused_count) = capped(outcome.refused);
    PatchResult {
        id,
        complete,
        files: outcome.files,
        bytes: outcome.bytes,
        elapsed_ms: ms(t0.elapsed()),
        cancelled_build,
        build_id,
        applied,
        deleted,
        refused,
        applied_count,
        deleted_count,
        refused_count,
    }
}

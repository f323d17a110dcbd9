//! Build coordination: at most one build at a time ([`command`] runs it), the tree's "needs a
//! build" state in `run/build-state.json`, installing a successful build as `bin/app`, and the
//! restart after it ([`super::restart`]).
//!
//! Builds coalesce: a patch (or build request) that arrives while a build runs cancels that
//! build (its process group is killed) and waits until it is gone before anything changes; the
//! next build includes the cancelled build's patches, so the newest tree always wins and a
//! half-patched tree is never installed. A build that finishes just as it is cancelled is
//! reported cancelled and not installed.
//!
//! A successful build whose binary is byte-identical to the one the app runs is neither
//! installed nor followed by a restart ([`unchanged`]): `BuildFinished` says `unchanged`.

pub(super) mod cache;
pub(super) mod command;
mod quick;
mod unchanged;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kdev_protocol::{BuildConfig, BuildOutcome, Event, Layout};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::io::Out;
use super::log;
use super::restart::{RestartCtx, restart_and_wait};
use crate::util::{self, ms, unix_ms};
pub use command::BuildDefaults;
use command::{BuildResult, BuildSpec};

/// `run/build-state.json`: the tree changed since the last successful build (`dirty`), so a
/// new session knows it must build even if reconcile finds no difference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct BuildState {
    dirty: bool,
    last_success_at_ms: Option<u64>,
}

struct RunningBuild {
    id: u64,
    cancel: Option<oneshot::Sender<()>>,
    /// Patches whose changes it was building (re-queued if it is cancelled).
    patch_ids: Vec<u64>,
}

/// The session's builds, the tree's build state and the restart after an install.
pub(super) struct Builds {
    layout: Layout,
    defaults: BuildDefaults,
    config: BuildConfig,
    root: PathBuf,
    out: Out,
    state: BuildState,
    running: Option<RunningBuild>,
    done_tx: mpsc::Sender<(u64, BuildResult)>,
    done_rx: mpsc::Receiver<(u64, BuildResult)>,
    next_id: u64,
    /// Patches applied since the last build started.
    pending_patches: Vec<u64>,
    restart_task: Option<JoinHandle<()>>,
    restart_ctx: RestartCtx,
    /// GOCACHE may be used (see [`cache`]: a fresh volume is seeded first).
    cache_ready: watch::Receiver<bool>,
    quick: quick::QuickBuilds,
}

impl Builds {
    /// Reads the build state a previous session left.
    pub(super) fn new(
        layout: Layout,
        defaults: BuildDefaults,
        config: BuildConfig,
        root: PathBuf,
        restart_ctx: RestartCtx,
        cache_ready: watch::Receiver<bool>,
    ) -> Builds {
        let state = std::fs::read(layout.build_state_file())
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        let (done_tx, done_rx) = mpsc::channel(4);
        let quick = quick::QuickBuilds::new(
            layout.quick_build_dir(),
            root.clone(),
            &config,
            &defaults.go,
        );
        Builds {
            quick,
            out: restart_ctx.out.clone(),
            layout,
            defaults,
            config,
            root,
            state,
            running: None,
            done_tx,
            done_rx,
            next_id: 1,
            pending_patches: Vec::new(),
            restart_task: None,
            restart_ctx,
            cache_ready,
        }
    }

    /// The tree changed since its last successful build.
    pub(super) fn dirty(&self) -> bool {
        self.state.dirty
    }

    /// The tree needs a build: it is dirty, or no app binary exists.
    pub(super) fn needed(&self) -> bool {
        self.state.dirty || !self.layout.app_binary().is_file()
    }

    /// The id the next build gets.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// A patch failed part-way: what it changed is not known path by path.
    pub(super) fn patch_failed(&mut self) {
        self.quick.forget();
    }

    /// A patch was applied: the next build includes it and the paths it `changed`.
    pub(super) fn add_patch<'a>(&mut self, id: u64, changed: impl Iterator<Item = &'a str>) {
        self.pending_patches.push(id);
        for path in changed {
            self.quick.changed(path);
        }
    }

    /// Mark the tree dirty, or built (recording the time of that success).
    pub(super) fn set_dirty(&mut self, dirty: bool) {
        if self.state.dirty == dirty && dirty {
            return;
        }
        self.state.dirty = dirty;
        if !dirty {
            self.state.last_success_at_ms = Some(unix_ms());
        }
        self.save_state();
    }

    /// Undo a [`Builds::set_dirty`] made before a patch that touched no build input: the tree
    /// is as built as it was.
    pub(super) fn restore_clean(&mut self) {
        self.state.dirty = false;
        self.save_state();
    }

    /// Write `run/build-state.json`.
    fn save_state(&self) {
        if let Ok(data) = serde_json::to_vec(&self.state)
            && let Err(e) = util::write_atomic(&self.layout.build_state_file(), &data)
        {
            log(format!("cannot record the build state: {e}"));
        }
    }

    /// Start a build of the tree as it is (the caller cancelled any running one): a quick
    /// rebuild when [`quick`] allows one, falling back to `go build` if it fails.
    pub(super) fn start(&mut self, request_id: Option<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let output = self.layout.app_next();
        let mut spec = BuildSpec::resolve(&self.config, &self.defaults, &self.root, &output);
        spec.group_file = Some(self.layout.build_group_file());
        let command = spec.argv.clone();
        let quick = match self.quick.plan(&output) {
            Some(Ok(steps)) => Some(steps),
            Some(Err(why)) => {
                log(format!("build {id}: go build ({why})"));
                None
            }
            None => None,
        };
        if quick.is_none() {
            self.quick.forget();
        }
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let patch_ids = std::mem::take(&mut self.pending_patches);
        self.running = Some(RunningBuild {
            id,
            cancel: Some(cancel_tx),
            patch_ids: patch_ids.clone(),
        });
        let ev = Event::BuildStarted {
            build_id: id,
            patch_ids,
            request_id,
            command,
        };
        // Queue the event before the task can finish, so BuildStarted precedes BuildFinished.
        let out = self.out.clone();
        let done = self.done_tx.clone();
        let mut cache_ready = self.cache_ready.clone();
        let group_file = spec.group_file.clone();
        let full = self.quick.with_recorder(spec);
        let records = self.layout.quick_build_dir();
        tokio::spawn(async move {
            out.event(ev).await;
            let mut cancel_rx = cancel_rx;
            // The build's time includes waiting for a fresh cache volume to be seeded.
            let waited = tokio::select! {
                w = cache::wait_ready(&mut cache_ready) => w,
                _ = &mut cancel_rx => {
                    let res = BuildResult::cancelled();
                    let _ = done.send((id, res)).await;
                    return;
                }
            };
            let mut res = match quick {
                Some(steps) => {
                    let r = run_quick(steps, group_file, &mut cancel_rx).await;
                    match r {
                        Ok(r) => r,
                        Err((spent, first)) => {
                            log(format!(
                                "build {id}: the quick rebuild failed ({first}); running go build"
                            ));
                            let mut r = run_full(full, &records, &mut cancel_rx).await;
                            r.elapsed += spent;
                            r
                        }
                    }
                }
                None => run_full(full, &records, &mut cancel_rx).await,
            };
            if res.quick && res.outcome == BuildOutcome::Succeeded {
                log(format!(
                    "build {id}: quick rebuild (the go command skipped) in {} ms",
                    res.elapsed.as_millis()
                ));
            }
            res.elapsed += waited;
            let _ = done.send((id, res)).await;
        });
    }

    /// Cancel the running build, if any, and wait until it is gone (its `BuildFinished` is
    /// sent). Returns its id.
    pub(super) async fn cancel(&mut self) -> Option<u64> {
        let mut b = self.running.take()?;
        // Its changes are still unbuilt: the next build includes them.
        let mut ids = std::mem::take(&mut b.patch_ids);
        ids.append(&mut self.pending_patches);
        self.pending_patches = ids;
        if let Some(c) = b.cancel.take() {
            let _ = c.send(());
        }
        while let Some((id, res)) = self.done_rx.recv().await {
            let mine = id == b.id;
            self.report(id, res, false).await;
            if mine {
                break;
            }
        }
        Some(b.id)
    }

    /// The next build that finished by itself (cancel-safe; for the session's `select!`).
    pub(super) async fn finished(&mut self) -> Option<(u64, BuildResult)> {
        self.done_rx.recv().await
    }

    /// Handle a build that [`Builds::finished`] returned: install, report, restart.
    pub(super) async fn on_finished(&mut self, id: u64, res: BuildResult) {
        if self.running.as_ref().map(|b| b.id) == Some(id) {
            self.running = None;
        }
        self.report(id, res, true).await;
    }

    /// Install a successful build (unless it was cancelled, or the app already runs the same
    /// bytes), report it, and restart the app.
    async fn report(&mut self, id: u64, mut res: BuildResult, may_install: bool) {
        let mut installed = false;
        let mut unchanged = false;
        if res.outcome == BuildOutcome::Succeeded {
            if may_install {
                let (next, app) = (self.layout.app_next(), self.layout.app_binary());
                let t0 = Instant::now();
                let layout = self.layout.clone();
                let check = tokio::task::spawn_blocking(move || unchanged::check(&layout)).await;
                let compare_ms = t0.elapsed().as_millis();
                match check {
                    Ok(Ok(())) => {
                        log(format!(
                            "build {id}: identical to the running binary (checked in {compare_ms} ms): \
                             not installed, the app is not restarted"
                        ));
                        unchanged = true;
                        if let Err(e) = std::fs::remove_file(&next) {
                            log(format!("cannot remove {}: {e}", next.display()));
                        }
                    }
                    Ok(Err(why)) => log(format!(
                        "build {id}: installing ({why}; checked in {compare_ms} ms)"
                    )),
                    Err(e) => log(format!("build {id}: installing (the check failed: {e})")),
                }
                if !unchanged {
                    match std::fs::rename(&next, &app) {
                        Ok(()) => installed = true,
                        Err(e) => {
                            res.outcome = BuildOutcome::Error;
                            res.output.push_str(&format!(
                                "\ncannot move {} to {}: {e}",
                                next.display(),
                                app.display()
                            ));
                        }
                    }
                }
            } else {
                // It finished just as it was cancelled: the tree changed since, do not install.
                res.outcome = BuildOutcome::Cancelled;
            }
        }
        log(format!(
            "build {id}: {:?} in {} ms",
            res.outcome,
            res.elapsed.as_millis()
        ));
        // Recorded before it is reported: a client that reconnects as soon as it hears of the
        // build must find the tree built.
        if installed || unchanged {
            self.set_dirty(false);
        }
        if !res.quick {
            self.quick
                .full_build_finished(res.recorded, installed || unchanged)
                .await;
        }
        self.out
            .event(Event::BuildFinished {
                build_id: id,
                outcome: res.outcome,
                exit_code: res.exit_code,
                elapsed_ms: ms(res.elapsed),
                output: res.output,
                output_truncated: res.truncated,
                installed,
                unchanged,
            })
            .await;
        if installed {
            self.restart(Some(id));
        }
    }

    /// Restart the app (replacing a restart still waiting for readiness).
    pub(super) fn restart(&mut self, build_id: Option<u64>) {
        if let Some(t) = self.restart_task.take() {
            t.abort();
        }
        let ctx = self.restart_ctx.clone();
        self.restart_task = Some(tokio::spawn(restart_and_wait(ctx, build_id)));
    }

    /// The session ends: no build keeps running without it (the tree stays dirty), and no
    /// restart is still being watched.
    pub(super) async fn shutdown(mut self) {
        self.cancel().await;
        if let Some(t) = self.restart_task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// `go build`, with the quick-rebuild recorder when `full.1`; the old records go first, so a
/// record is always this build's.
async fn run_full(
    full: (BuildSpec, bool),
    records: &std::path::Path,
    cancel: &mut oneshot::Receiver<()>,
) -> BuildResult {
    let (spec, recorded) = full;
    if recorded {
        quick::clear_records(records);
    }
    let mut r = command::run(spec, cancel).await;
    r.recorded = recorded;
    r
}

/// The compiles, then the link. `Err((time spent, the first line of its output))` when a step failed
/// (not cancelled): the caller falls back to `go build`.
async fn run_quick(
    steps: Vec<BuildSpec>,
    group_file: Option<PathBuf>,
    cancel: &mut oneshot::Receiver<()>,
) -> Result<BuildResult, (Duration, String)> {
    let mut spent = Duration::ZERO;
    for mut step in steps {
        step.group_file.clone_from(&group_file);
        let r = command::run(step, cancel).await;
        spent += r.elapsed;
        match r.outcome {
            BuildOutcome::Succeeded => {}
            BuildOutcome::Cancelled => {
                return Ok(BuildResult {
                    elapsed: spent,
                    quick: true,
                    ..r
                });
            }
            _ => {
                let first = r.output.lines().find(|l| !l.trim().is_empty());
                return Err((spent, first.unwrap_or("no output").to_string()));
            }
        }
    }
    Ok(BuildResult {
        outcome: BuildOutcome::Succeeded,
        exit_code: Some(0),
        output: String::new(),
        truncated: false,
        elapsed: spent,
        recorded: false,
        quick: true,
    })
}

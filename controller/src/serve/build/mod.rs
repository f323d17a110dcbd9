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
//! A build is a quick rebuild when [`crate::quick_build`] allows one, else the build command.
//! After a quick rebuild, once the session has been idle for [`SHADOW_DELAY`], the **shadow
//! build** runs: `go build` of the same tree at the lowest CPU priority, invisible to the
//! client unless its binary differs from the quick one (then go build's is installed, the app
//! restarted, a warning says which packages, and quick rebuilds stay off for the session).
//! After a full build that took packages from the go cache with no record, an idle shadow
//! build records them instead (its binary is never installed), so the next edit stays quick.
//! Anything that changes the tree cancels a shadow build first, like any build.
//!
//! A successful build whose binary is byte-identical to the one the app runs is neither
//! installed nor followed by a restart ([`unchanged`]): `BuildFinished` says `unchanged`.

pub(super) mod cache;
pub(crate) mod command;
mod unchanged;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kdev_protocol::{BuildConfig, BuildOutcome, Event, Layout};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::io::Out;
use super::restart::{RestartCtx, restart_and_wait};
use crate::build_spec::{BuildDefaults, BuildSpec};
use crate::log::serve as log;
use crate::quick_build::{QuickBuilds, Shadow, Unproven};
use crate::util::{self, ms, unix_ms};
use command::{BuildKind, BuildResult};

/// How long the session must be idle after a quick rebuild before its shadow build starts:
/// a save that follows at once should not find the CPU busy with it.
const SHADOW_DELAY: Duration = Duration::from_millis(300);

/// The bit that marks a shadow build's id: apart from the client's build numbers.
const SHADOW_IDS: u64 = 1 << 63;

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
    /// It is a shadow build, and what for.
    shadow: Option<Shadow>,
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
    /// Shadow builds started (their ids are [`SHADOW_IDS`] | this).
    shadows: u64,
    /// Patches applied since the last build started.
    pending_patches: Vec<u64>,
    restart_task: Option<JoinHandle<()>>,
    restart_ctx: RestartCtx,
    /// GOCACHE may be used (see [`cache`]: a fresh volume is seeded first).
    cache_ready: watch::Receiver<bool>,
    quick: QuickBuilds,
    /// When the shadow build is due, if it is.
    shadow_at: Option<tokio::time::Instant>,
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
        // The environment `go build` runs with: the controller's, the build's on top.
        let spec = BuildSpec::resolve(&config, &defaults, &root, &layout.app_next());
        let mut build_env: BTreeMap<String, String> = std::env::vars().collect();
        build_env.extend(spec.env);
        let quick = QuickBuilds::new(
            layout.quick_build_dir(),
            root.clone(),
            &config,
            &defaults.go,
            build_env,
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
            shadows: 0,
            pending_patches: Vec::new(),
            restart_task: None,
            restart_ctx,
            cache_ready,
            shadow_at: None,
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
        self.shadow_at = None;
        self.quick.patch_failed();
    }

    /// A patch was applied: the next build includes it and the paths it wrote and deleted.
    pub(super) fn add_patch<'a>(
        &mut self,
        id: u64,
        applied: impl Iterator<Item = &'a str>,
        deleted: impl Iterator<Item = &'a str>,
    ) {
        // The tree is not what the installed binary was built from any more: no shadow build
        // of it until the next build.
        self.shadow_at = None;
        self.pending_patches.push(id);
        self.quick.changed(applied, deleted);
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

    /// The go cache the build uses (the build's environment may name another).
    fn gocache(&self) -> PathBuf {
        self.config
            .env
            .get("GOCACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.defaults.gocache.clone())
    }

    /// Start a build of the tree as it is (the caller cancelled any running one): a quick
    /// rebuild when [`crate::quick_build`] allows one, falling back to `go build` if it fails.
    pub(super) fn start(&mut self, request_id: Option<u64>) {
        self.shadow_at = None;
        let id = self.next_id;
        self.next_id += 1;
        let output = self.layout.app_next();
        let mut spec = BuildSpec::resolve(&self.config, &self.defaults, &self.root, &output);
        spec.group_file = Some(self.layout.build_group_file());
        let command = spec.argv.clone();
        let quick = match self.quick.plan(&output) {
            Some(Ok(plan)) => Some(plan),
            Some(Err(why)) => {
                log(format!("build {id}: go build ({why})"));
                None
            }
            None => None,
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let patch_ids = std::mem::take(&mut self.pending_patches);
        self.running = Some(RunningBuild {
            id,
            cancel: Some(cancel_tx),
            patch_ids: patch_ids.clone(),
            shadow: None,
        });
        let ev = Event::BuildStarted {
            build_id: id,
            patch_ids,
            request_id,
            command,
        };
        let group_file = spec.group_file.clone();
        let (full, recorded_in) = self.quick.recording(spec);
        let job = BuildJob {
            id,
            out: self.out.clone(),
            done: self.done_tx.clone(),
            cache_ready: self.cache_ready.clone(),
        };
        tokio::spawn(async move {
            // Queued before the task can finish, so BuildStarted precedes BuildFinished.
            job.out.event(ev).await;
            job.run(cancel_rx, |mut cancel| async move {
                let cancel = &mut cancel;
                if let Some(plan) = quick {
                    match run_quick(plan.steps, group_file, cancel).await {
                        Ok(mut r) => {
                            if r.outcome == BuildOutcome::Succeeded {
                                log(format!(
                                    "build {id}: quick rebuild (the go command skipped) in {} ms",
                                    r.elapsed.as_millis()
                                ));
                            }
                            r.kind = BuildKind::Quick {
                                packages: plan.packages,
                            };
                            if let Some(dir) = recorded_in {
                                let _ = std::fs::remove_dir_all(dir);
                            }
                            return r;
                        }
                        Err((spent, first)) => {
                            log(format!(
                                "build {id}: the quick rebuild failed ({first}); running go build"
                            ));
                            let mut r = run_command(full, recorded_in, cancel).await;
                            r.elapsed += spent;
                            return r;
                        }
                    }
                }
                run_command(full, recorded_in, cancel).await
            })
            .await;
        });
    }

    /// When the shadow build should start, if one is due and nothing runs.
    pub(super) fn shadow_due(&self) -> Option<tokio::time::Instant> {
        self.shadow_at.filter(|_| self.running.is_none())
    }

    /// Start the shadow build: `go build` of the tree as it is, at the lowest priority, to
    /// `bin/app.verify`; no event tells the client of it.
    pub(super) fn start_shadow(&mut self) {
        self.shadow_at = None;
        let Some(why) = self.quick.shadow_wanted() else {
            return;
        };
        // Shadow builds are invisible to the client: they take no build number from it.
        self.shadows += 1;
        let id = SHADOW_IDS | self.shadows;
        let mut spec = BuildSpec::resolve(
            &self.config,
            &self.defaults,
            &self.root,
            &self.layout.app_verify(),
        );
        spec.group_file = Some(self.layout.build_group_file());
        spec.nice = true;
        let (spec, recorded_in) = self.quick.recording(spec);
        log(format!(
            "shadow build {}: {}",
            self.shadows,
            describe_verification(&why)
        ));
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.running = Some(RunningBuild {
            id,
            cancel: Some(cancel_tx),
            patch_ids: Vec::new(),
            shadow: Some(why),
        });
        let job = BuildJob {
            id,
            out: self.out.clone(),
            done: self.done_tx.clone(),
            cache_ready: self.cache_ready.clone(),
        };
        tokio::spawn(async move {
            job.run(cancel_rx, |mut cancel| async move {
                run_command(spec, recorded_in, &mut cancel).await
            })
            .await;
        });
    }

    /// Cancel the running build, if any, and wait until it is gone (its `BuildFinished` is
    /// sent). Returns its id, unless it was a shadow build.
    pub(super) async fn cancel(&mut self) -> Option<u64> {
        self.shadow_at = None;
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
            if mine && b.shadow.is_some() {
                log(format!(
                    "shadow build {}: cancelled (the tree changed)",
                    id & !SHADOW_IDS
                ));
                self.shadow_cancelled(res).await;
                return None;
            }
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
        let mut shadow = None;
        if self.running.as_ref().map(|b| b.id) == Some(id) {
            shadow = self.running.take().and_then(|b| b.shadow);
        }
        match shadow {
            Some(why) => self.shadow_finished(id, why, res).await,
            None => self.report(id, res, true).await,
        }
    }

    /// Install a successful build (unless it was cancelled, or the app already runs the same
    /// bytes), report it, and restart the app.
    async fn report(&mut self, id: u64, mut res: BuildResult, may_install: bool) {
        let mut installed = false;
        let mut unchanged = false;
        if res.outcome == BuildOutcome::Succeeded {
            if may_install {
                (installed, unchanged) = self.install(id, &mut res).await;
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
        let built = installed || unchanged;
        if built {
            self.set_dirty(false);
        }
        // Reported and restarted first: the developer waits for the app, not for the
        // quick-rebuild records below (a first build of a large vendor/ tree takes seconds to
        // read back). The next build waits for them: the session handles one thing at a time.
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
            self.restart(id);
        }
        match res.kind {
            BuildKind::Quick { packages } => {
                if built {
                    self.quick.quick_installed(id, packages);
                }
            }
            BuildKind::Command { recorded_in } => {
                if built {
                    self.quick.full_installed();
                }
                self.quick
                    .full_build_finished(recorded_in, built, Some(self.gocache()))
                    .await;
            }
        }
        if built && self.quick.shadow_wanted().is_some() {
            self.shadow_at = Some(tokio::time::Instant::now() + SHADOW_DELAY);
        }
    }

    /// Move `bin/app.next` into place unless it is identical to the running binary: `(installed,
    /// unchanged)`. A failed move turns `res` into an error.
    async fn install(&mut self, id: u64, res: &mut BuildResult) -> (bool, bool) {
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
                if let Err(e) = std::fs::remove_file(&next) {
                    log(format!("cannot remove {}: {e}", next.display()));
                }
                return (false, true);
            }
            Ok(Err(why)) => log(format!(
                "build {id}: installing ({why}; checked in {compare_ms} ms)"
            )),
            Err(e) => log(format!("build {id}: installing (the check failed: {e})")),
        }
        match std::fs::rename(&next, &app) {
            Ok(()) => (true, false),
            Err(e) => {
                res.outcome = BuildOutcome::Error;
                res.output.push_str(&format!(
                    "\ncannot move {} to {}: {e}",
                    next.display(),
                    app.display()
                ));
                (false, false)
            }
        }
    }

    /// A shadow build was cancelled: its records are dropped, the quick binary stays unproven
    /// (the next build replaces it, and its own shadow build follows).
    async fn shadow_cancelled(&mut self, res: BuildResult) {
        let _ = std::fs::remove_file(self.layout.app_verify());
        if let BuildKind::Command { recorded_in } = res.kind {
            self.quick
                .full_build_finished(recorded_in, false, None)
                .await;
        }
    }

    /// The shadow build ran to its end with the tree unchanged: compare, and act on a
    /// difference.
    async fn shadow_finished(&mut self, id: u64, why: Shadow, res: BuildResult) {
        let verify = self.layout.app_verify();
        let succeeded = res.outcome == BuildOutcome::Succeeded;
        if let BuildKind::Command { recorded_in } = res.kind {
            self.quick
                .full_build_finished(recorded_in, succeeded, Some(self.gocache()))
                .await;
        }
        let equal = succeeded && {
            let (a, b) = (verify.clone(), self.layout.app_binary());
            tokio::task::spawn_blocking(move || unchanged::same_binary(&a, &b))
                .await
                .unwrap_or(false)
        };
        self.quick.shadow_done(&why, equal);
        log(format!(
            "shadow build {}: {:?} in {} ms: {}",
            id & !SHADOW_IDS,
            res.outcome,
            res.elapsed.as_millis(),
            if equal { "the same binary" } else { "differs" }
        ));
        let Shadow::Prove(Unproven { build_id, packages }) = &why else {
            // A record build: the app was built from this very tree by go build already. A
            // different binary would mean go build itself is not reproducible here; the app
            // is left as it is, and quick binaries are still proven one by one.
            if succeeded && !equal {
                log(format!(
                    "shadow build {}: go build of the unchanged tree gave another binary than \
                     the running one (left running)",
                    id & !SHADOW_IDS
                ));
            }
            let _ = std::fs::remove_file(&verify);
            return;
        };
        match (succeeded, equal) {
            (true, true) => {
                let verified = self.quick.counts.verified;
                self.out
                    .event(Event::BuildVerified {
                        build_id: *build_id,
                        elapsed_ms: ms(res.elapsed),
                        verified,
                    })
                    .await;
            }
            (true, false) => {
                let message = format!(
                    "the quick rebuild of build {build_id} differs from go build's (packages {}): \
                     go build's binary is installed and the app restarted; quick rebuilds are off \
                     for this session (please report this to kdev)",
                    packages.join(", ")
                );
                self.quick.turn_off(message.clone());
                self.install_shadow(*build_id, &verify, message).await;
            }
            (false, _) => {
                let first: Vec<&str> = res.output.lines().take(20).collect();
                let message = format!(
                    "go build fails where the quick rebuild of build {build_id} succeeded \
                     (packages {}); quick rebuilds are off for this session and the next save \
                     runs go build. go build said:\n{}",
                    packages.join(", "),
                    first.join("\n")
                );
                self.quick.turn_off(message.clone());
                // The tree is not built as go build sees it.
                self.set_dirty(true);
                self.warn(message).await;
            }
        }
        let _ = std::fs::remove_file(&verify);
    }

    async fn warn(&self, message: String) {
        log(&message);
        self.out
            .event(Event::Warning {
                code: "quick_build_differs".into(),
                message,
            })
            .await;
    }

    /// Install the shadow build's binary and restart the app, saying why (the restart is
    /// reported as `build_id`'s, the build it corrects).
    async fn install_shadow(&mut self, build_id: u64, verify: &Path, message: String) {
        self.warn(message).await;
        match std::fs::rename(verify, self.layout.app_binary()) {
            Ok(()) => self.restart(build_id),
            Err(e) => {
                log(format!("cannot install the shadow build's binary: {e}"));
                self.set_dirty(true);
            }
        }
    }

    /// Restart the app after build `build_id` (replacing a restart still waiting for
    /// readiness).
    pub(super) fn restart(&mut self, build_id: u64) {
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

/// What a shadow build is for, for the log.
fn describe_verification(v: &Shadow) -> String {
    match v {
        Shadow::Prove(u) => format!(
            "proving quick rebuild {} of {}",
            u.build_id,
            u.packages.join(", ")
        ),
        Shadow::Record => {
            "recording packages the last build took from the go cache with no record".into()
        }
    }
}

/// What every build task needs: its id, the client, where it reports, the cache's readiness.
struct BuildJob {
    id: u64,
    out: Out,
    done: mpsc::Sender<(u64, BuildResult)>,
    cache_ready: watch::Receiver<bool>,
}

impl BuildJob {
    /// Wait for the cache (the build's time includes that), run `build`, report its result.
    async fn run<F, Fut>(mut self, mut cancel: oneshot::Receiver<()>, build: F)
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = BuildResult>,
    {
        let waited = tokio::select! {
            w = cache::wait_ready(&mut self.cache_ready) => w,
            _ = &mut cancel => {
                let _ = self.done.send((self.id, BuildResult::cancelled())).await;
                return;
            }
        };
        let mut res = build(cancel).await;
        res.elapsed += waited;
        let _ = self.done.send((self.id, res)).await;
    }
}

/// The build command (`go build`, recording into `recorded_in` when quick rebuilds are on).
async fn run_command(
    spec: BuildSpec,
    recorded_in: Option<PathBuf>,
    cancel: &mut oneshot::Receiver<()>,
) -> BuildResult {
    let mut r = command::run(spec, cancel).await;
    r.kind = BuildKind::Command { recorded_in };
    r
}

/// The compiles, then the link. `Err((time spent, the first line of its output))` when a step
/// failed (not cancelled): the caller falls back to `go build`.
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
        kind: BuildKind::Quick {
            packages: Vec::new(),
        },
    })
}

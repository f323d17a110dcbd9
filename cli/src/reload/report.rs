//! What the user sees of a reload: the one line per reload (what changed, how long syncing,
//! building, restarting and becoming ready took), build errors with local paths, the app's own
//! output, and the `--timings` record.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kdev_protocol::{BuildOutcome, Event, ServerMessage, Stream};

use crate::reload::timings::{self, PodDurations, Timeline, TimingsLog};
use crate::status::model::{BuildError, Outcome, Phases, ReloadEntry, ServiceStatus};
use crate::status::{ServiceHandle, State, locations};
use crate::ui::{Ui, fmt_duration, summarize_paths};

/// The reload in progress, and how reloads are reported.
pub struct Report {
    /// The newest reload, until its app is ready (or its build failed).
    pub reload: Option<Reload>,
    /// The reload before it, when a save came before that one's events did (the app may serve
    /// the new code before kdev hears of the restart): its events still end it, with its own
    /// line, instead of being counted as the newer reload's.
    superseded: Option<Reload>,
    /// The port whose readiness ends a reload; without one, the restart ends it.
    pub app_port: Option<u16>,
    /// `--timings`, shared by the session's services.
    pub timings: Option<Arc<Mutex<TimingsLog>>>,
    /// The service's name in `--timings` records, with several services.
    pub service: Option<String>,
    /// The local sync root, to show build errors with local paths.
    pub root: PathBuf,
    /// The service's part of the session's status (the block, the page).
    pub status: Option<ServiceHandle>,
    /// The number of the next reload in the status's history.
    next_entry: u64,
}

/// Timings of one reload, for its summary line and `--timings`.
pub struct Reload {
    /// The build its patch started (`None`: not known, so any build's events are its own).
    build: Option<u64>,
    /// The `build` request that started it (its build's id comes with `BuildStarted`).
    request: Option<u64>,
    /// The reconcile of a new session (its time is a first sync and build, not a reload's).
    initial: bool,
    changed: Vec<String>,
    started: Instant,
    patch_ms: u64,
    pod: PodDurations,
    timeline: Timeline,
}

impl Reload {
    pub fn new(changed: Vec<String>, started: Instant, event_at: Option<SystemTime>) -> Reload {
        let now = SystemTime::now();
        Reload {
            build: None,
            request: None,
            initial: false,
            changed,
            started,
            patch_ms: started.elapsed().as_millis() as u64,
            pod: PodDurations::default(),
            timeline: Timeline {
                event_at_ms: event_at.map(timings::unix_ms),
                sync_at_ms: timings::unix_ms(now - started.elapsed()),
                applied_at_ms: Some(timings::unix_ms(now)),
                ..Timeline::default()
            },
        }
    }
}

impl Reload {
    /// The reload of the build its patch started.
    pub fn of_build(mut self, build: Option<u64>) -> Reload {
        self.build = build;
        self
    }

    /// A new session's reconcile.
    pub fn initial(mut self) -> Reload {
        self.initial = true;
        self
    }

    /// The reload of the build that request `id` starts.
    pub fn of_request(mut self, id: u64) -> Reload {
        self.request = Some(id);
        self
    }

    /// Whether the events of `build` are this reload's.
    fn owns(&self, build: Option<u64>) -> bool {
        match (self.build, build) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        }
    }
}

impl Report {
    pub fn new(
        app_port: Option<u16>,
        timings: Option<Arc<Mutex<TimingsLog>>>,
        service: Option<String>,
        root: PathBuf,
    ) -> Report {
        Report {
            reload: None,
            superseded: None,
            app_port,
            timings,
            service,
            root,
            status: None,
            next_entry: 1,
        }
    }

    /// Report to the session's status too.
    pub fn with_status(mut self, status: Option<ServiceHandle>) -> Report {
        self.status = status;
        self
    }

    /// Change the service's status (when there is one).
    pub fn update_status(&self, change: impl FnOnce(&mut ServiceStatus, u64)) {
        if let Some(s) = &self.status {
            s.update(change);
        }
    }

    /// Enter `state`, with a short line about it (when there is a status).
    pub fn set_state(&self, state: State, detail: Option<String>) {
        self.update_status(|s, now| s.set_state(state, detail, now));
    }

    /// A reload ended as `outcome`: into the status's history.
    fn record(&mut self, r: &Reload, outcome: Outcome) {
        let Some(status) = &self.status else {
            return;
        };
        let entry = ReloadEntry {
            id: self.next_entry,
            at_ms: r.timeline.event_at_ms.unwrap_or(r.timeline.sync_at_ms),
            paths: r.changed.iter().take(20).cloned().collect(),
            outcome,
            total_ms: r.started.elapsed().as_millis() as u64,
            phases: Phases {
                sync_ms: Some(r.patch_ms),
                build_ms: r.pod.build_ms,
                restart_ms: r.pod.restart_ms,
                ready_ms: r.pod.ready_ms,
            },
        };
        self.next_entry += 1;
        status.update(|s, _| s.record(entry));
    }

    /// A new reload began (a batch was synced). One still waiting for its build's events is
    /// kept beside it, so that those events end it rather than the new one.
    pub fn start(&mut self, reload: Reload) {
        if let Some(pending) = self.reload.take()
            && pending.build.is_some()
            && pending.build != reload.build
        {
            self.superseded = Some(pending);
        }
        self.reload = Some(reload);
    }

    /// A new session: whatever was pending will never hear from its build.
    pub fn replace_all(&mut self, reload: Option<Reload>) {
        self.superseded = None;
        self.reload = reload;
    }

    /// Where the reload that `build`'s events belong to waits: the overtaken one when they name
    /// its build, else the newest when it owns them.
    fn slot_of(&mut self, build: Option<u64>) -> Option<&mut Option<Reload>> {
        if build.is_some() && self.superseded.as_ref().is_some_and(|s| s.build == build) {
            return Some(&mut self.superseded);
        }
        if self.reload.as_ref().is_some_and(|r| r.owns(build)) {
            return Some(&mut self.reload);
        }
        None
    }

    /// The reload that `build`'s events belong to, if one is waiting.
    fn reload_of(&mut self, build: Option<u64>) -> Option<&mut Reload> {
        self.slot_of(build).and_then(Option::as_mut)
    }

    /// Take the reload that `build`'s events belong to (its last event came).
    fn take_reload_of(&mut self, build: Option<u64>) -> Option<Reload> {
        self.slot_of(build).and_then(Option::take)
    }
}

/// The reload's summary line, and its `--timings` record.
fn finish_reload(r: Reload, state: &mut Report, ui: &Ui) {
    let outcome = if r.initial {
        Outcome::InitialSync
    } else {
        Outcome::Served
    };
    state.record(&r, outcome);
    state.update_status(|s, now| {
        s.last_error = None;
        s.set_state(State::Ready, None, now);
    });
    let ms = |v: Option<u64>| {
        v.map(|v| fmt_duration(Duration::from_millis(v)))
            .unwrap_or_else(|| "-".into())
    };
    ui.ok(&format!(
        "{} → synced {}, built {}, restarted {}, ready {} (total {})",
        summarize_paths(&r.changed),
        ms(Some(r.patch_ms)),
        ms(r.pod.build_ms),
        ms(r.pod.restart_ms),
        ms(r.pod.ready_ms),
        fmt_duration(r.started.elapsed()),
    ));
    let recorded = state.timings.as_ref().map(|log| {
        log.lock().unwrap_or_else(|e| e.into_inner()).record(
            state.service.as_deref(),
            &r.changed,
            &r.timeline,
            r.pod,
        )
    });
    if let Some(Err(e)) = recorded {
        ui.warn(&format!("{e:#}; no more timings are written"));
        state.timings = None;
    }
}

/// Show an event from the controller.
pub fn show_message(msg: ServerMessage, state: &mut Report, ui: &Ui) {
    let event = match msg {
        ServerMessage::Event { event, .. } => event,
        ServerMessage::Error(e) => {
            ui.warn(&format!("controller: {}: {}", e.code, e.message));
            return;
        }
        _ => return,
    };
    match event {
        Event::BuildStarted {
            build_id,
            request_id,
            ..
        } => {
            if let Some(r) = state.reload.as_mut()
                && r.request.is_some()
                && r.request == request_id
            {
                r.build = Some(build_id);
            }
            state.set_state(State::Building, None)
        }
        Event::BuildFinished {
            build_id,
            outcome,
            elapsed_ms,
            output,
            unchanged,
            ..
        } => build_finished(
            Some(build_id),
            outcome,
            elapsed_ms,
            &output,
            unchanged,
            state,
            ui,
        ),
        Event::Restarted {
            build_id,
            elapsed_ms,
            ..
        } => restarted(build_id, elapsed_ms, state, ui),
        Event::Ready {
            build_id,
            elapsed_ms,
            ..
        } => ready(build_id, elapsed_ms, state, ui),
        Event::NotReady {
            build_id,
            port,
            waited_ms,
            reason,
            ..
        } => {
            if let Some(r) = state.take_reload_of(build_id) {
                state.record(&r, Outcome::NotReady);
            }
            let line = format!(
                "app not accepting on port {port} after {}: {reason}",
                fmt_duration(Duration::from_millis(waited_ms))
            );
            state.set_state(State::Failed, Some(line.clone()));
            ui.warn(&line);
        }
        Event::RestartFailed { build_id, reason } => {
            if let Some(r) = state.take_reload_of(build_id) {
                state.record(&r, Outcome::RestartFailed);
            }
            let line = format!("restart failed: {reason}");
            state.set_state(State::Failed, Some(line.clone()));
            ui.fail(&line)
        }
        Event::AppStarted { .. } => {
            // Started again after a crash: it runs (a reload's start is `Restarted`).
            state.update_status(|s, now| {
                if s.detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with("app exited"))
                {
                    s.set_state(
                        State::Ready,
                        Some("started again after it exited".into()),
                        now,
                    );
                }
            });
        }
        Event::AppExited {
            code,
            signal,
            expected,
            next_start_in_ms,
            last_output,
            ..
        } => {
            if !expected {
                let tail: Vec<_> = last_output.iter().map(|l| l.line.clone()).collect();
                let line = app_exited(code, signal, next_start_in_ms, &tail, ui);
                state.update_status(|s, now| {
                    if next_start_in_ms.is_some() {
                        s.restarts += 1;
                    }
                    s.set_state(State::Failed, Some(line), now);
                });
            }
        }
        Event::AppOutput { stream, line, .. } => ui.app(stream == Stream::Stderr, &line),
        Event::AppOutputDropped { lines } => {
            ui.warn(&format!("{lines} lines of app output dropped"))
        }
        Event::Warning { message, .. } => ui.warn(&message),
        // Shown with -v: a proof is nothing to act on.
        Event::BuildVerified {
            build_id,
            elapsed_ms,
            verified,
        } => tracing::info!(
            "build {build_id}: go build gives the same binary (shadow build in {}; {verified} quick rebuilds proven)",
            fmt_duration(Duration::from_millis(elapsed_ms))
        ),
    }
}

/// A build ended: a success without a new binary ends the reload; a failure ends it too, with
/// the compiler's output.
fn build_finished(
    build: Option<u64>,
    outcome: BuildOutcome,
    elapsed_ms: u64,
    output: &str,
    unchanged: bool,
    state: &mut Report,
    ui: &Ui,
) {
    // The pod's phases, as `-v` shows the CLI's own spans.
    tracing::info!(target: "kdev::phase", phase = "build", ?outcome, elapsed_ms);
    match outcome {
        BuildOutcome::Succeeded => {
            if let Some(r) = state.reload_of(build) {
                r.pod.build_ms = Some(elapsed_ms);
                r.timeline.built_at_ms = Some(timings::now_ms());
            }
            state.update_status(|s, now| {
                s.last_error = None;
                let next = if unchanged {
                    State::Ready
                } else {
                    State::Restarting
                };
                s.set_state(next, None, now);
            });
            // The same binary as the running one: no restart follows, the reload ends.
            if unchanged && let Some(r) = state.take_reload_of(build) {
                state.record(&r, Outcome::Unchanged);
                ui.ok(&format!(
                    "{} → synced {}, built {}: the binary is unchanged, not restarted \
                     (total {})",
                    summarize_paths(&r.changed),
                    fmt_duration(Duration::from_millis(r.patch_ms)),
                    fmt_duration(Duration::from_millis(elapsed_ms)),
                    fmt_duration(r.started.elapsed()),
                ));
            }
        }
        // A newer save's build follows; a reload kept only for this one's events is over.
        BuildOutcome::Cancelled => {
            if state.superseded.as_ref().is_some_and(|s| s.build == build) {
                state.superseded = None;
            }
        }
        BuildOutcome::Failed | BuildOutcome::Error => {
            // This reload ends here (and the rescan may run again).
            let taken = state.take_reload_of(build);
            let what = taken
                .as_ref()
                .map(|r| summarize_paths(&r.changed))
                .unwrap_or_default();
            if let Some(mut r) = taken {
                r.pod.build_ms = Some(elapsed_ms);
                state.record(&r, Outcome::BuildFailed);
            }
            ui.fail(&format!(
                "{what} → build failed in {} (the previous version keeps running)",
                fmt_duration(Duration::from_millis(elapsed_ms))
            ));
            let local_output = map_build_output(output, &state.root);
            ui.build_output(&local_output);
            if let Some(s) = &state.status {
                let cwd = std::env::current_dir().unwrap_or_default();
                let locations = locations::parse(&local_output, &cwd);
                let summary = match locations.first() {
                    Some(l) => format!(
                        "build failed: {}:{}{}: {}",
                        display_path(&l.file, &cwd),
                        l.line,
                        l.column.map(|c| format!(":{c}")).unwrap_or_default(),
                        l.message
                    ),
                    None => "build failed".to_string(),
                };
                s.update(|s, now| {
                    s.set_state(State::Failed, Some(summary.clone()), now);
                    s.last_error = Some(BuildError {
                        at_ms: timings::now_ms(),
                        summary,
                        output: local_output,
                        locations,
                    });
                });
            }
        }
    }
}

/// The new process runs: without a port to wait for, that ends the reload.
fn restarted(build: Option<u64>, elapsed_ms: u64, state: &mut Report, ui: &Ui) {
    tracing::info!(target: "kdev::phase", phase = "restart", elapsed_ms);
    state.update_status(|s, now| {
        s.restarts += 1;
        if state.app_port.is_none() {
            s.set_state(State::Ready, None, now);
        }
    });
    if let Some(r) = state.reload_of(build) {
        r.pod.restart_ms = Some(elapsed_ms);
        r.timeline.restarted_at_ms = Some(timings::now_ms());
    }
    if state.app_port.is_none()
        && let Some(r) = state.take_reload_of(build)
    {
        finish_reload(r, state, ui);
    }
}

/// The app accepts on its port: the reload ends (or, with none going on, the app is up).
fn ready(build: Option<u64>, elapsed_ms: u64, state: &mut Report, ui: &Ui) {
    match state.take_reload_of(build) {
        Some(mut r) => {
            r.pod.ready_ms = Some(elapsed_ms);
            r.timeline.ready_at_ms = Some(timings::now_ms());
            finish_reload(r, state, ui);
        }
        None => {
            state.set_state(State::Ready, None);
            ui.ok(&format!(
                "app ready in {}",
                fmt_duration(Duration::from_millis(elapsed_ms))
            ))
        }
    }
}

/// `file` relative to `cwd` when it is under it (as the reload lines show paths).
fn display_path(file: &str, cwd: &Path) -> String {
    Path::new(file)
        .strip_prefix(cwd)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| file.to_string())
}

/// The app exited when it was not asked to: how, when it starts again, its last lines, and
/// the ptrace hint when Delve could not attach.
fn app_exited(
    code: Option<i32>,
    signal: Option<i32>,
    next_start_in_ms: Option<u64>,
    tail: &[String],
    ui: &Ui,
) -> String {
    let how = match (code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    };
    let again = next_start_in_ms
        .map(|ms| {
            format!(
                "; restarting in {}",
                fmt_duration(Duration::from_millis(ms))
            )
        })
        .unwrap_or_default();
    let line = format!("app exited ({how}){again}");
    ui.fail(&line);
    if !tail.is_empty() {
        ui.detail(&tail.join("\n"));
    }
    if let Some(hint) = crate::pod::delve::ptrace_hint(&tail.join("\n")) {
        ui.warn(hint);
    }
    line
}

/// Compiler output names files relative to the sync root (`./handlers/ping.go:12:5: ...`):
/// rewrite them to paths relative to where the user runs kdev, so editors can jump to them.
fn map_build_output(output: &str, local_root: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    let base = local_root
        .strip_prefix(&cwd)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| local_root.to_path_buf());
    output
        .lines()
        .map(|line| {
            let trimmed = line.strip_prefix("./").unwrap_or(line);
            let is_location = trimmed
                .split(':')
                .next()
                .is_some_and(|f| f.ends_with(".go"))
                && trimmed.contains(':');
            if is_location && !trimmed.starts_with('/') {
                if base.as_os_str().is_empty() {
                    trimmed.to_string()
                } else {
                    format!("{}/{trimmed}", base.display())
                }
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: Event) -> ServerMessage {
        ServerMessage::Event { at_ms: 0, event }
    }

    fn built(build_id: u64) -> ServerMessage {
        event(Event::BuildFinished {
            build_id,
            outcome: BuildOutcome::Succeeded,
            exit_code: Some(0),
            elapsed_ms: 100 + build_id,
            output: String::new(),
            output_truncated: false,
            installed: true,
            unchanged: false,
        })
    }

    fn restarted(build_id: u64) -> ServerMessage {
        event(Event::Restarted {
            build_id: Some(build_id),
            pid: 1,
            elapsed_ms: 10 + build_id,
            stop_ms: None,
            relay_port: None,
        })
    }

    fn ready(build_id: u64) -> ServerMessage {
        event(Event::Ready {
            build_id: Some(build_id),
            pid: 1,
            port: 8080,
            elapsed_ms: 20 + build_id,
            since_signal_ms: 30,
        })
    }

    /// A save synced before the previous reload's restart was heard of (the app served the new
    /// code first): each reload gets its own build's phases and its own line.
    #[test]
    fn a_reload_overtaken_by_a_save_keeps_its_own_builds_events() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("timings.jsonl");
        let timings = Arc::new(Mutex::new(TimingsLog::open(&log).unwrap()));
        let mut report = Report::new(Some(8080), Some(timings), None, dir.path().into());
        let ui = Ui::plain();
        let reload = |path: &str, build| {
            Reload::new(vec![path.into()], Instant::now(), None).of_build(Some(build))
        };
        report.start(reload("first.go", 1));
        show_message(built(1), &mut report, &ui);
        report.start(reload("second.go", 2));
        for m in [restarted(1), ready(1), built(2), restarted(2), ready(2)] {
            show_message(m, &mut report, &ui);
        }
        assert!(report.reload.is_none() && report.superseded.is_none());
        let text = std::fs::read_to_string(&log).unwrap();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 2, "{text}");
        for (record, path, build) in [(&records[0], "first.go", 1), (&records[1], "second.go", 2)] {
            assert_eq!(record["paths"], serde_json::json!([path]), "{text}");
            assert_eq!(record["build_ms"], 100 + build, "{text}");
            assert_eq!(record["restart_ms"], 10 + build, "{text}");
            assert_eq!(record["ready_ms"], 20 + build, "{text}");
        }
    }

    /// A cancelled build's reload is over: its events never come, and the newer reload's are
    /// not mistaken for them.
    #[test]
    fn a_cancelled_builds_reload_is_dropped() {
        let mut report = Report::new(Some(8080), None, None, PathBuf::from("/"));
        let ui = Ui::plain();
        report.start(Reload::new(vec!["a.go".into()], Instant::now(), None).of_build(Some(1)));
        report.start(Reload::new(vec!["b.go".into()], Instant::now(), None).of_build(Some(2)));
        assert!(report.superseded.is_some());
        show_message(
            event(Event::BuildFinished {
                build_id: 1,
                outcome: BuildOutcome::Cancelled,
                exit_code: None,
                elapsed_ms: 5,
                output: String::new(),
                output_truncated: false,
                installed: false,
                unchanged: false,
            }),
            &mut report,
            &ui,
        );
        assert!(report.superseded.is_none());
        show_message(built(2), &mut report, &ui);
        let r = report
            .reload
            .as_ref()
            .expect("b.go's reload waits for its restart");
        assert_eq!(r.pod.build_ms, Some(102));
    }

    /// A rebuild asked for on the status page: the build its request started ends its reload
    /// (an unchanged binary), and the status's history has it.
    #[tokio::test]
    async fn a_requested_builds_events_end_its_reload() {
        let hub = crate::status::Hub::new("watch", false, false);
        let (handle, _) = hub.add_service("api");
        let mut report =
            Report::new(Some(8080), None, None, PathBuf::from("/")).with_status(Some(handle));
        let ui = Ui::plain();
        report.start(Reload::new(vec!["rebuild".into()], Instant::now(), None).of_request(7));
        show_message(
            event(Event::BuildStarted {
                build_id: 3,
                patch_ids: vec![],
                request_id: Some(7),
                command: vec![],
            }),
            &mut report,
            &ui,
        );
        show_message(
            event(Event::BuildFinished {
                build_id: 3,
                outcome: BuildOutcome::Succeeded,
                exit_code: Some(0),
                elapsed_ms: 40,
                output: String::new(),
                output_truncated: false,
                installed: false,
                unchanged: true,
            }),
            &mut report,
            &ui,
        );
        assert!(report.reload.is_none(), "the rebuild's reload ended");
        let status = hub.snapshot();
        let last = status.services[0]
            .last_reload
            .as_ref()
            .expect("in the history");
        assert_eq!(last.outcome, Outcome::Unchanged);
        assert_eq!(last.phases.build_ms, Some(40));
        assert_eq!(status.services[0].state, State::Ready);
    }

    #[test]
    fn build_output_paths_become_local() {
        let cwd = std::env::current_dir().unwrap();
        let out = "# example.com/gin-hello\n./main.go:12:5: undefined: foo\nhandlers/ping.go:3:1: syntax error";
        assert_eq!(
            map_build_output(out, &cwd.join("examples/gin-hello")),
            "# example.com/gin-hello\nexamples/gin-hello/main.go:12:5: undefined: foo\nexamples/gin-hello/handlers/ping.go:3:1: syntax error"
        );
        assert_eq!(map_build_output("./main.go:1:1: x", &cwd), "main.go:1:1: x");
    }
}

//! The session's state as the status block, the page and `kdev status` show it: plain data,
//! serialised as the JSON API (`cli/src/status/API.md`) documents it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Reloads kept per service for the history chart.
pub const HISTORY: usize = 200;

/// One `kdev watch` or `kdev debug`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionStatus {
    pub kdev_version: String,
    pub pid: u32,
    /// `watch` or `debug`.
    pub command: String,
    pub project: String,
    pub root: String,
    pub namespace: String,
    pub owner: String,
    pub started_at_ms: u64,
    /// The page's address, token included.
    pub ui_url: Option<String>,
    /// Whether the terminal block shows it (`--ui`; the token is not put on screen otherwise).
    #[serde(skip)]
    pub ui_url_shown: bool,
    pub services: Vec<ServiceStatus>,
}

/// What a service is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Connecting,
    Syncing,
    Building,
    Restarting,
    Ready,
    Failed,
    Paused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Syncing => "syncing",
            State::Building => "building",
            State::Restarting => "restarting",
            State::Ready => "ready",
            State::Failed => "failed",
            State::Paused => "paused",
        }
    }
}

/// One service of the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    pub state_since_ms: u64,
    /// A short line about the state (why it failed, what is being synced).
    pub detail: Option<String>,
    pub pod: Option<String>,
    /// The app's port on localhost.
    pub url: Option<String>,
    /// `kdev debug`'s endpoint.
    pub debugger: Option<String>,
    /// Editors attached to the debug endpoint now.
    pub debugger_clients: u32,
    /// App processes started anew this session (reloads, restarts, crashes).
    pub restarts: u32,
    /// Reloads that served new code this session.
    pub reloads: u32,
    pub paused: bool,
    /// Paths changed while paused, synced on resume.
    pub pending: usize,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub last_reload: Option<ReloadEntry>,
    /// Oldest first, at most [`HISTORY`].
    pub history: VecDeque<ReloadEntry>,
    /// The newest build error, until a build succeeds.
    pub last_error: Option<BuildError>,
    /// Totals of every served reload this session, for the percentiles (not sent).
    #[serde(skip)]
    served_totals: Vec<u64>,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new code serves.
    Served,
    /// A session's first sync and build served (not in the percentiles).
    InitialSync,
    BuildFailed,
    /// Built the same binary: nothing restarted.
    Unchanged,
    RestartFailed,
    NotReady,
}

/// One reload in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadEntry {
    pub id: u64,
    /// When the change was seen (or syncing began).
    pub at_ms: u64,
    pub paths: Vec<String>,
    pub outcome: Outcome,
    pub total_ms: u64,
    pub phases: Phases,
}

/// Where a reload's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    pub sync_ms: Option<u64>,
    pub build_ms: Option<u64>,
    pub restart_ms: Option<u64>,
    pub ready_ms: Option<u64>,
}

/// A failed build, with the places it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildError {
    pub at_ms: u64,
    pub summary: String,
    /// The compiler's output, with local paths.
    pub output: String,
    pub locations: Vec<super::locations::Location>,
}

impl ServiceStatus {
    pub fn new(name: &str, now_ms: u64) -> ServiceStatus {
        ServiceStatus {
            name: name.to_string(),
            state: State::Connecting,
            state_since_ms: now_ms,
            detail: None,
            pod: None,
            url: None,
            debugger: None,
            debugger_clients: 0,
            restarts: 0,
            reloads: 0,
            paused: false,
            pending: 0,
            p50_ms: None,
            p95_ms: None,
            last_reload: None,
            history: VecDeque::new(),
            last_error: None,
            served_totals: Vec::new(),
        }
    }

    /// Enter `state` (the time it began only moves when it changes).
    pub fn set_state(&mut self, state: State, detail: Option<String>, now_ms: u64) {
        if self.state != state {
            self.state_since_ms = now_ms;
        }
        self.state = state;
        self.detail = detail;
    }

    /// The state shown: a paused service that is not busy shows as paused.
    pub fn shown_state(&self) -> State {
        match self.state {
            State::Ready | State::Failed if self.paused => State::Paused,
            s => s,
        }
    }

    /// A reload ended: into the history, and into the percentiles if it served new code.
    pub fn record(&mut self, entry: ReloadEntry) {
        if entry.outcome == Outcome::Served {
            self.reloads += 1;
            self.served_totals.push(entry.total_ms);
            self.p50_ms = percentile(&self.served_totals, 50);
            self.p95_ms = percentile(&self.served_totals, 95);
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.last_reload = Some(entry.clone());
        self.history.push_back(entry);
    }
}

/// The nearest-rank percentile `p` of `values` (`None` when empty).
pub fn percentile(values: &[u64], p: u32) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    // Nearest rank: the smallest value with at least p % of the values at or below it.
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, outcome: Outcome, total_ms: u64) -> ReloadEntry {
        ReloadEntry {
            id,
            at_ms: id,
            paths: vec!["main.go".into()],
            outcome,
            total_ms,
            phases: Phases::default(),
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 95), Some(7));
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50), Some(10));
        assert_eq!(percentile(&v, 95), Some(19));
        assert_eq!(percentile(&[300, 100, 200], 50), Some(200));
    }

    #[test]
    fn only_served_reloads_count_and_the_history_is_bounded() {
        let mut s = ServiceStatus::new("api", 0);
        s.record(entry(1, Outcome::BuildFailed, 5_000));
        assert_eq!((s.reloads, s.p50_ms), (0, None));
        for i in 0..(HISTORY as u64 + 10) {
            s.record(entry(i + 2, Outcome::Served, 100 + i));
        }
        assert_eq!(s.history.len(), HISTORY);
        assert_eq!(s.history.back().unwrap().id, HISTORY as u64 + 11);
        assert_eq!(s.reloads, HISTORY as u32 + 10);
        // Over the whole session, not only the kept history.
        assert_eq!(s.p50_ms, Some(100 + (HISTORY as u64 + 10) / 2 - 1));
        assert_eq!(s.last_reload.as_ref().unwrap().id, HISTORY as u64 + 11);
    }

    #[test]
    fn a_paused_service_shows_paused_unless_busy() {
        let mut s = ServiceStatus::new("api", 0);
        s.set_state(State::Ready, None, 5);
        s.paused = true;
        assert_eq!(s.shown_state(), State::Paused);
        s.set_state(State::Building, None, 6);
        assert_eq!(s.shown_state(), State::Building);
        assert_eq!(s.state_since_ms, 6);
        s.set_state(State::Building, Some("again".into()), 9);
        assert_eq!(s.state_since_ms, 6, "the same state keeps its start");
    }

    #[test]
    fn serialises_as_the_api_documents() {
        let mut s = ServiceStatus::new("api", 0);
        s.record(entry(3, Outcome::BuildFailed, 10));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["state"], "connecting");
        assert_eq!(v["history"][0]["outcome"], "build_failed");
        assert!(v["history"][0]["phases"]["build_ms"].is_null());
        assert!(v.get("served_totals").is_none());
    }
}

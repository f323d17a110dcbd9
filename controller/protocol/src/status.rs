//! The supervisor's status: what `kdev-controller supervise` writes (atomically, as JSON) to
//! `<kdev-dir>/run/app-status.json` ([`crate::layout::Layout::status_file`]) on every change.
//! `serve` watches it and sends the last one in [`crate::Welcome::app_status`].

use serde::{Deserialize, Serialize};

/// What `kdev-controller supervise` writes (atomically, as JSON) to
/// `<kdev-dir>/run/app-status.json` on every change; `serve` watches it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppStatus {
    pub supervisor_pid: u32,
    pub state: AppState,
    /// The running child's PID (also its process group id).
    pub pid: Option<u32>,
    /// How many times a child was started (1 after the first start).
    pub starts: u64,
    /// Unix ms when the current child started.
    pub started_at_ms: Option<u64>,
    pub command: Vec<String>,
    pub last_exit: Option<ExitInfo>,
    /// Crash backoff: Unix ms of the next start attempt.
    pub next_start_at_ms: Option<u64>,
    /// The last completed SIGHUP restart.
    pub last_restart: Option<RestartInfo>,
    /// e.g. "exec /kdev/bin/app: No such file or directory".
    pub last_error: Option<String>,
    /// What `<kdev-dir>/bin/app` (the binary `serve` installs) was just before the running
    /// child was started: `None` while no child runs or when it did not exist. `serve` skips
    /// the restart after a build whose binary is identical to the installed one only when this
    /// matches the installed file, i.e. the running child was started from it (an older
    /// supervisor that does not write it never lets a restart be skipped).
    /// (Boxed: it would make the `Welcome`, which carries a status, too large a variant.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_binary: Option<Box<FileId>>,
    /// The port (on 127.0.0.1 in the pod) of the supervisor's forward relay ([`crate::relay`]),
    /// which `kdev` forwards through; `None` from a supervisor without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_port: Option<u16>,
    pub updated_at_ms: u64,
}

/// Which file a path named at some moment: `bin/app` is only ever replaced by a rename, so a
/// new install is a new inode (and a new change time), while the running app keeps its inode
/// from being reused. Times are nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Waiting for `--wait-for` to exist.
    #[default]
    Waiting,
    Running,
    /// Exited on its own; waiting out the backoff delay.
    Backoff,
    /// Being stopped (restart or shutdown).
    Stopping,
    /// The supervisor is exiting.
    Stopped,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitInfo {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at_ms: u64,
    pub runtime_ms: u64,
    /// Stopped by the supervisor (restart/shutdown) rather than exiting on its own.
    pub expected: bool,
    /// The `starts` value of the process that exited.
    pub start_seq: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartInfo {
    pub requested_at_ms: u64,
    /// How long stopping the old process group took (0 if none was running).
    pub stop_ms: u64,
    /// Whether SIGKILL was needed after the grace period.
    pub killed: bool,
    pub started_at_ms: u64,
    /// The `starts` value of the process it started.
    pub start_seq: u64,
}

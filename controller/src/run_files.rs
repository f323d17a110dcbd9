//! The files under `<kdev-dir>/run` through which the two roles talk (where they are:
//! [`kdev_protocol::Layout`]): the supervisor's PID file, its status (written by
//! [`crate::supervise`], read by [`crate::serve`]) and the app's output log.

use std::fs;
use std::io;
use std::path::Path;

use std::os::unix::fs::MetadataExt;

use kdev_protocol::{AppStatus, FileId, Stream};
use serde::{Deserialize, Serialize};

/// One line of `run/app.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogRecord {
    pub at_ms: u64,
    pub pid: u32,
    pub stream: Stream,
    pub line: String,
}

/// Read a PID file (`run/supervisor.pid`, `run/serve.pid`): one decimal line.
pub(crate) fn read_pid_file(path: &Path) -> io::Result<u32> {
    let s = fs::read_to_string(path)?;
    s.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} does not hold a PID", path.display()),
        )
    })
}

/// Write this process's PID to a PID file, atomically.
pub(crate) fn write_pid_file(path: &Path) -> io::Result<()> {
    crate::util::write_atomic(path, format!("{}\n", std::process::id()).as_bytes())
}

/// The start time of a process (clock ticks since boot, `/proc/<pid>/stat` field 22): with the
/// PID it names one process, even after the PID is reused.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// What `path` names now (following symlinks, as `exec` would): see [`FileId`].
pub(crate) fn file_id(path: &Path) -> io::Result<FileId> {
    let m = fs::metadata(path)?;
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

/// Read the supervisor's status file, if it exists and parses.
pub(crate) fn read_status(path: &Path) -> Option<AppStatus> {
    let data = fs::read(path).ok()?;
    serde_json::from_slice(&data).ok()
}

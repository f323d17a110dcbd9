//! Small helpers shared by both roles: the `/kdev` layout, atomic writes, durations, signals.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// The layout under the kdev directory (default `/kdev`). Every path can be overridden.
#[derive(Debug, Clone)]
pub struct KdevPaths {
    /// The sync root (`<kdev>/src`).
    pub src: PathBuf,
    /// Built binaries (`<kdev>/bin`): `app`, `app.next`.
    pub bin: PathBuf,
    /// Runtime files (`<kdev>/run`): PID file, app status, app log, build state.
    pub run: PathBuf,
    /// Build caches (`<kdev>/cache`): GOCACHE and GOMODCACHE default below it.
    pub cache: PathBuf,
}

impl KdevPaths {
    pub fn new(kdev_dir: &Path) -> Self {
        KdevPaths {
            src: kdev_dir.join("src"),
            bin: kdev_dir.join("bin"),
            run: kdev_dir.join("run"),
            cache: kdev_dir.join("cache"),
        }
    }
    /// `run/supervisor.pid`: the supervisor's PID, one decimal line.
    pub fn pid_file(&self) -> PathBuf {
        self.run.join("supervisor.pid")
    }
    /// `run/app-status.json`: [`kdev_protocol::AppStatus`] as JSON.
    pub fn status_file(&self) -> PathBuf {
        self.run.join("app-status.json")
    }
    /// `run/app.log`: the app's output as JSON lines ([`LogRecord`]).
    pub fn log_file(&self) -> PathBuf {
        self.run.join("app.log")
    }
    /// `run/build-state.json`: whether the tree needs a build ([`BuildState`]).
    pub fn build_state_file(&self) -> PathBuf {
        self.run.join("build-state.json")
    }
    /// `run/build.pgid`: the running build's process group and its leader's start time, so a
    /// session that starts after a killed one can stop a build it left running.
    pub fn build_group_file(&self) -> PathBuf {
        self.run.join("build.pgid")
    }
    pub fn app_binary(&self) -> PathBuf {
        self.bin.join("app")
    }
    pub fn app_next(&self) -> PathBuf {
        self.bin.join("app.next")
    }
}

/// One line of `run/app.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub at_ms: u64,
    pub pid: u32,
    pub stream: kdev_protocol::Stream,
    pub line: String,
}

/// `run/build-state.json`, written by `serve`: the tree changed since the last successful
/// build (`dirty`), so a new session knows it must build even if reconcile finds no difference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildState {
    pub dirty: bool,
    pub last_success_at_ms: Option<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Write a file atomically: temp file in the same directory, then rename over the target.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Parse `250ms`, `5s`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 250ms, 5s, 1m"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "invalid duration {s:?}: must be a non-negative number"
        ));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Parse a signal name (`TERM`, `SIGTERM`, `sigint`) or number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal number {n}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal {s:?}: use a name like TERM, INT, QUIT or a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigint").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
    }
}

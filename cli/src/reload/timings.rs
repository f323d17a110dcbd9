//! `--timings FILE`: one JSON line per reload with the wall-clock time at which each phase ended,
//! as the CLI saw it. Benchmarks (`tests/bench/reload`) split a save→served time with it, and a
//! user reporting a slow reload can attach it.
//!
//! Timestamps, not durations: consecutive ones subtract to phases that add up exactly, and the
//! writer of the file (the benchmark) can put its own "saved at" and "served at" around them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

/// When each phase of one reload ended (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// The watcher received the first file event of the batch.
    pub event_at_ms: Option<u64>,
    /// The batch was complete (quiet gap) and syncing began.
    pub sync_at_ms: u64,
    /// The pod confirmed the patch was applied.
    pub applied_at_ms: Option<u64>,
    /// The build finished (successfully).
    pub built_at_ms: Option<u64>,
    /// The supervisor runs the new process.
    pub restarted_at_ms: Option<u64>,
    /// The new process accepts connections on the app port.
    pub ready_at_ms: Option<u64>,
}

/// One line of the file.
#[derive(Debug, Serialize)]
struct Record<'a> {
    /// The service, with several in one session.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    /// What changed (as shown in the reload line).
    paths: &'a [String],
    #[serde(flatten)]
    timeline: &'a Timeline,
    /// Durations measured in the pod by the controller, for comparison.
    build_ms: Option<u64>,
    restart_ms: Option<u64>,
    ready_ms: Option<u64>,
}

/// Durations the controller measured itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodDurations {
    pub build_ms: Option<u64>,
    pub restart_ms: Option<u64>,
    pub ready_ms: Option<u64>,
}

/// The open `--timings` file.
#[derive(Debug)]
pub struct TimingsLog {
    path: PathBuf,
    file: File,
}

impl TimingsLog {
    /// Open `path` for appending (created if missing), so several runs can share one file.
    pub fn open(path: &Path) -> Result<TimingsLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the --timings file {}", path.display()))?;
        Ok(TimingsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Append one reload.
    pub fn record(
        &mut self,
        service: Option<&str>,
        paths: &[String],
        timeline: &Timeline,
        pod: PodDurations,
    ) -> Result<()> {
        let record = Record {
            service,
            paths,
            timeline,
            build_ms: pod.build_ms,
            restart_ms: pod.restart_ms,
            ready_ms: pod.ready_ms,
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        // One write per line: readers tailing the file never see half a record.
        self.file
            .write_all(&line)
            .with_context(|| format!("cannot write to {}", self.path.display()))
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_json_line_per_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let timeline = Timeline {
            event_at_ms: Some(1000),
            sync_at_ms: 1016,
            applied_at_ms: Some(1050),
            built_at_ms: Some(1900),
            restarted_at_ms: Some(1910),
            ready_at_ms: Some(1930),
        };
        let pod = PodDurations {
            build_ms: Some(840),
            restart_ms: Some(9),
            ready_ms: Some(18),
        };
        for _ in 0..2 {
            let mut log = TimingsLog::open(&path).unwrap();
            log.record(None, &["main.go".into()], &timeline, pod)
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "appended, not truncated: {text}");
        assert_eq!(lines[0]["paths"][0], "main.go");
        assert_eq!(lines[0]["event_at_ms"], 1000);
        assert_eq!(lines[0]["ready_at_ms"], 1930);
        assert_eq!(lines[0]["build_ms"], 840);
    }

    #[test]
    fn unopenable_file_names_the_flag_and_path() {
        let err = TimingsLog::open(Path::new("/nonexistent-dir/t.jsonl")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("--timings") && msg.contains("/nonexistent-dir/t.jsonl"),
            "{msg}"
        );
    }
}

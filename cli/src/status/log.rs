//! The session's log as the page filters it: every line kdev prints, with its service, source
//! and level, numbered so a client can ask for what it has not seen.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Lines kept for pages that open later.
pub const KEPT_LINES: usize = 5000;

/// Who wrote a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// kdev's own lines.
    Kdev,
    /// Compiler output.
    Build,
    /// The app's stdout and stderr.
    App,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// One line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub at_ms: u64,
    /// `None`: a line of the whole session.
    pub service: Option<String>,
    pub source: Source,
    pub level: Level,
    pub text: String,
}

/// The newest [`KEPT_LINES`] lines.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: VecDeque<LogLine>,
    next_seq: u64,
}

impl LogRing {
    /// Number and keep a line; returns it as kept.
    pub fn push(
        &mut self,
        at_ms: u64,
        service: Option<&str>,
        source: Source,
        level: Level,
        text: &str,
    ) -> LogLine {
        self.next_seq += 1;
        let line = LogLine {
            seq: self.next_seq,
            at_ms,
            service: service.map(str::to_string),
            source,
            level,
            text: text.to_string(),
        };
        if self.lines.len() == KEPT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.clone());
        line
    }

    /// At most `limit` of the newest lines after `seq`, and the number of the last line kept.
    pub fn after(&self, seq: u64, limit: usize) -> (Vec<LogLine>, u64) {
        let newer = self.lines.iter().filter(|l| l.seq > seq);
        let count = newer.clone().count();
        let lines = newer.skip(count.saturating_sub(limit)).cloned().collect();
        (lines, self.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_bounded_and_read_from_a_point() {
        let mut ring = LogRing::default();
        for i in 0..(KEPT_LINES + 5) {
            ring.push(
                0,
                Some("api"),
                Source::App,
                Level::Info,
                &format!("line {i}"),
            );
        }
        let (all, next) = ring.after(0, usize::MAX);
        assert_eq!(all.len(), KEPT_LINES);
        assert_eq!(next, KEPT_LINES as u64 + 5);
        assert_eq!(all[0].seq, 6, "the oldest went first");
        let (tail, _) = ring.after(next - 3, 10);
        assert_eq!(
            tail.iter().map(|l| l.seq).collect::<Vec<_>>(),
            vec![next - 2, next - 1, next]
        );
        let (last_two, _) = ring.after(0, 2);
        assert_eq!(last_two[1].seq, next, "a limit keeps the newest");
    }
}

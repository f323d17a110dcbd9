//! When the safety-net rescan runs (watch stage), as a small pure schedule (the reload loop owns
//! the clock).
//!
//! The rescan ([`crate::sync::watch::rescan`]) stats the whole synced tree, so it runs
//! only while kdev is idle (no reload in flight, no watcher batch for [`QUIET`]), at most every
//! [`MIN_EVERY`], and never more often than 20 times its own duration (≤ 5 % of one core on a
//! huge tree); once the interval has grown to [`MAX_EVERY`], 100 times (≤ 1 %: an idle kdev on
//! a 100,000-file tree spent 2.8 % of a core on rescans every 16 s). While nothing happens the
//! interval doubles with every rescan that finds nothing, up to [`MAX_EVERY`] (an idle kdev on
//! 10,000 files spent 1.5 % of a core rescanning every 2 s); any activity brings it back to
//! [`MIN_EVERY`]. What it reports is not synced at once: a save the rescan saw a few
//! milliseconds before the watcher's batch would be counted as "missed". Its paths wait [`SETTLE`] first;
//! whatever the watcher delivered meanwhile is synced by then and compares equal, so only what
//! the watcher truly missed is left to sync and report.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::backoff::Backoff;

/// The shortest time between two rescans (right after activity).
const MIN_EVERY: Duration = Duration::from_secs(2);
/// The longest, after a while of nothing found.
const MAX_EVERY: Duration = Duration::from_secs(16);
/// How long after the last watcher batch or reload the tree counts as idle.
const QUIET: Duration = Duration::from_secs(1);
/// How long a rescan's findings wait for the watcher before they count as missed.
const SETTLE: Duration = Duration::from_millis(500);
/// A rescan may use at most 1/this of the time between rescans.
const DUTY: u32 = 20;
/// And at most 1/this once nothing has happened for a while (the interval is at its longest).
const IDLE_DUTY: u32 = 100;

#[derive(Debug)]
pub struct RescanSchedule {
    next_at: Instant,
    last_activity: Instant,
    /// Paths found changed, when they are due, and when they were found (the reload's "event").
    pending: Option<(Instant, BTreeSet<PathBuf>, SystemTime)>,
    /// The interval: [`MIN_EVERY`], doubling while rescans find nothing (up to [`MAX_EVERY`]).
    every: Backoff,
}

impl RescanSchedule {
    pub fn new(now: Instant) -> RescanSchedule {
        RescanSchedule {
            next_at: now + MIN_EVERY,
            last_activity: now,
            pending: None,
            every: Backoff::new(MIN_EVERY, MAX_EVERY),
        }
    }

    /// The watcher delivered a batch, or a reload ran: not idle.
    pub fn activity(&mut self, now: Instant) {
        self.last_activity = now;
        if self.every.current() > MIN_EVERY {
            self.every.reset();
            self.next_at = self.next_at.min(now + MIN_EVERY);
        }
    }

    /// Whether to rescan now. `idle`: no reload is in flight.
    pub fn due(&self, now: Instant, idle: bool) -> bool {
        idle && self.pending.is_none()
            && now >= self.next_at
            && now.saturating_duration_since(self.last_activity) >= QUIET
    }

    /// A rescan that took `took` found `paths` changed since the previous one.
    pub fn ran(&mut self, now: Instant, took: Duration, paths: BTreeSet<PathBuf>) {
        let duty = if self.every.current() >= MAX_EVERY {
            IDLE_DUTY
        } else {
            DUTY
        };
        self.next_at = now + self.every.current().max(took * duty);
        if paths.is_empty() {
            self.every.next();
        } else {
            self.every.reset();
            self.pending = Some((now + SETTLE, paths, SystemTime::now()));
        }
    }

    /// The rescan's findings, once they have waited [`SETTLE`] for the watcher, and when they
    /// were found.
    pub fn take_settled(&mut self, now: Instant) -> Option<(BTreeSet<PathBuf>, SystemTime)> {
        match &self.pending {
            Some((due, _, _)) if now >= *due => self.pending.take().map(|(_, p, at)| (p, at)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescans_only_when_idle_and_lets_findings_settle() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = RescanSchedule::new(t0);
        assert!(!s.due(at(1000), true), "not before MIN_EVERY");
        assert!(s.due(at(2000), true));
        assert!(!s.due(at(2000), false), "not while a reload runs");
        s.activity(at(1500));
        assert!(!s.due(at(2000), true), "not right after a watcher batch");
        assert!(s.due(at(2500), true));

        let found: BTreeSet<PathBuf> = [PathBuf::from("/p/main.go")].into();
        s.ran(at(2500), Duration::from_millis(40), found.clone());
        assert!(!s.due(at(5000), true), "not while findings wait");
        assert_eq!(
            s.take_settled(at(2700)),
            None,
            "the watcher gets its chance"
        );
        assert_eq!(s.take_settled(at(3000)).map(|(p, _)| p), Some(found));
        assert_eq!(s.take_settled(at(3100)), None);
        assert!(s.due(at(4500), true));

        // A slow rescan (a huge tree) is spaced out to keep its share of the CPU small.
        s.ran(at(4500), Duration::from_millis(500), BTreeSet::new());
        assert!(!s.due(at(10_000), true));
        assert!(s.due(at(14_500), true));
        // Idle for long (the interval at its longest): 1 % instead of 5 %.
        let mut t = 14_500;
        while s.every.current() < MAX_EVERY {
            s.ran(at(t), Duration::from_millis(500), BTreeSet::new());
            t = (t..).step_by(250).find(|&x| s.due(at(x), true)).unwrap();
        }
        s.ran(at(t), Duration::from_millis(500), BTreeSet::new());
        assert!(!s.due(at(t + 49_000), true));
        assert!(s.due(at(t + 50_000), true));
    }

    #[test]
    fn an_idle_tree_is_rescanned_less_and_less_often_until_something_happens() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = RescanSchedule::new(t0);
        let quick = Duration::from_millis(10);
        let mut t = 2000;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            assert!(s.due(at(t), true));
            s.ran(at(t), quick, BTreeSet::new());
            let next = (t..).step_by(250).find(|&x| s.due(at(x), true)).unwrap();
            gaps.push((next - t) / 1000);
            t = next;
        }
        assert_eq!(gaps, [2, 4, 8, 16, 16, 16]);
        // A watcher batch: back to every 2 s (after the quiet second).
        s.activity(at(t + 100));
        assert!(s.due(at(t + 2100), true));
        s.ran(at(t + 2100), quick, BTreeSet::new());
        assert!(!s.due(at(t + 2100 + 1900), true));
        assert!(s.due(at(t + 2100 + 2000), true));
    }
}

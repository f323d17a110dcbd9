//! Repeated forward errors, summarised for the terminal: what the reload loop shows of the
//! failures the listener reports ([`super::ForwardEvent`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Repeated forward errors, summarised: the first of a kind is shown at once; identical ones
/// within the window are counted and shown as one line when the window ends (a browser
/// retrying against a pod being replaced would otherwise print dozens of identical lines).
#[derive(Debug)]
pub struct ErrorSummary {
    window: Duration,
    /// (local port, error) → (window end, repeats since the first).
    open: BTreeMap<(u16, String), (Instant, u32)>,
}

impl ErrorSummary {
    pub fn new(window: Duration) -> ErrorSummary {
        ErrorSummary {
            window,
            open: BTreeMap::new(),
        }
    }

    /// Record an error; returns the line to show now, if any.
    pub fn record(&mut self, local: u16, error: &str, now: Instant) -> Option<String> {
        let key = (local, error.to_string());
        match self.open.get_mut(&key) {
            Some((end, repeats)) if now < *end => {
                *repeats += 1;
                None
            }
            _ => {
                self.open.insert(key, (now + self.window, 0));
                Some(format!("localhost:{local}: {error}"))
            }
        }
    }

    /// Close the windows that ended; returns a line for each that saw repeats.
    pub fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        self.open.retain(|(local, error), (end, repeats)| {
            if now < *end {
                return true;
            }
            if *repeats > 0 {
                lines.push(format!(
                    "localhost:{local}: {error} ({repeats} more times in {}s)",
                    self.window.as_secs()
                ));
            }
            false
        });
        lines
    }

    /// Resolves when the earliest open window ends (never, when none is open).
    pub async fn flush_due(&self) {
        match self.open.values().map(|(end, _)| *end).min() {
            Some(end) => tokio::time::sleep_until(end.into()).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_are_counted_then_summarised_once() {
        let t0 = Instant::now();
        let mut s = ErrorSummary::new(Duration::from_secs(10));
        assert_eq!(
            s.record(8080, "refused", t0).as_deref(),
            Some("localhost:8080: refused")
        );
        for i in 1..=39 {
            assert!(
                s.record(8080, "refused", t0 + Duration::from_millis(i * 100))
                    .is_none()
            );
        }
        // Another error or port is its own line.
        assert!(s.record(8080, "reset", t0).is_some());
        assert!(s.record(9090, "refused", t0).is_some());
        assert!(s.flush(t0 + Duration::from_secs(5)).is_empty());
        let lines = s.flush(t0 + Duration::from_secs(10));
        assert_eq!(
            lines,
            ["localhost:8080: refused (39 more times in 10s)"],
            "windows without repeats end silently"
        );
        // After the window, the same error is shown again at once.
        assert!(
            s.record(8080, "refused", t0 + Duration::from_secs(11))
                .is_some()
        );
    }
}

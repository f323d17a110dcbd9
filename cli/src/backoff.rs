//! Exponential backoff: how long to wait before trying again after a failure.
//!
//! The one kdev uses wherever something is retried (opening warm port-forward spares,
//! reconnecting the session, spacing safety-net rescans): each wait is twice the one before, up
//! to a ceiling, and a success starts again from the first.

use std::time::Duration;

/// Waits that double from `initial` up to `max`; [`reset`](Backoff::reset) after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The wait [`next`](Backoff::next) will return, without moving on (to say it before
    /// waiting).
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// The wait before the next try; the one after it is twice as long (at most the ceiling).
    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        wait
    }

    /// Back to the first wait (the thing tried worked).
    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_ceiling() {
        let mut b = Backoff::new(ms(250), ms(1500));
        let waits: Vec<_> = (0..5).map(|_| b.next()).collect();
        assert_eq!(waits, [ms(250), ms(500), ms(1000), ms(1500), ms(1500)]);
    }

    #[test]
    fn current_is_what_next_returns_and_does_not_move_on() {
        let mut b = Backoff::new(ms(100), ms(10_000));
        b.next();
        assert_eq!(b.current(), ms(200));
        assert_eq!(b.current(), ms(200));
        assert_eq!(b.next(), ms(200));
        assert_eq!(b.current(), ms(400));
    }

    #[test]
    fn reset_starts_again_from_the_first_wait() {
        let mut b = Backoff::new(ms(250), ms(5000));
        for _ in 0..10 {
            b.next();
        }
        assert_eq!(b.current(), ms(5000));
        b.reset();
        assert_eq!(b.next(), ms(250));
        assert_eq!(b.next(), ms(500));
    }

    #[test]
    fn an_initial_wait_over_the_ceiling_is_used_once() {
        // Not a configuration kdev uses, but the arithmetic must not surprise.
        let mut b = Backoff::new(ms(800), ms(500));
        assert_eq!(b.next(), ms(800));
        assert_eq!(b.next(), ms(500));
    }
}

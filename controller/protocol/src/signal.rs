//! Signal names as users write them (`run.stopSignal` in kdev.yaml, `--stop-signal` of
//! `kdev-controller supervise`): `TERM`, `SIGTERM`, `sigterm` or a number.
//!
//! The signal is delivered in the pod, so the numbers are Linux's (the same on amd64 and
//! arm64), whatever system the CLI runs on. This module has no process handling; the
//! controller turns a [`Signal`] into its own type with [`Signal::number`].

use std::fmt;
use std::str::FromStr;

/// A Linux signal, 1 to 64 (the real-time signals have numbers but no names here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

/// Every named Linux signal, by number (`NAMES[n - 1]` is signal `n`).
const NAMES: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// The highest signal number Linux has (`SIGRTMAX`).
const MAX_SIGNAL: i32 = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a signal: use a name like TERM, SIGINT or QUIT, or a number from 1 to 64")]
pub struct SignalError(String);

impl Signal {
    pub const INT: Signal = Signal(2);
    pub const QUIT: Signal = Signal(3);
    pub const KILL: Signal = Signal(9);
    pub const USR1: Signal = Signal(10);
    pub const TERM: Signal = Signal(15);

    /// Parse `TERM`, `SIGTERM`, `sigterm`, ` term ` or `15`.
    pub fn parse(s: &str) -> Result<Signal, SignalError> {
        let t = s.trim();
        if let Ok(n) = t.parse::<i32>() {
            return Signal::from_number(n).ok_or_else(|| SignalError(s.into()));
        }
        let upper = t.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        NAMES
            .iter()
            .position(|name| name[3..] == *bare)
            .map(|i| Signal(i as i32 + 1))
            .ok_or_else(|| SignalError(s.into()))
    }

    /// The signal with this Linux number, if there is one.
    fn from_number(n: i32) -> Option<Signal> {
        (1..=MAX_SIGNAL).contains(&n).then_some(Signal(n))
    }

    /// The Linux signal number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// `SIGTERM`, or `None` for a real-time signal.
    pub fn name(self) -> Option<&'static str> {
        NAMES.get(self.0 as usize - 1).copied()
    }
}

impl FromStr for Signal {
    type Err = SignalError;
    fn from_str(s: &str) -> Result<Signal, SignalError> {
        Signal::parse(s)
    }
}

/// `SIGTERM`, or the number of a real-time signal.
impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_spellings() {
        assert_eq!(Signal::parse("SIGTERM"), Ok(Signal::TERM));
        assert_eq!(Signal::parse("TERM"), Ok(Signal::TERM));
        assert_eq!(Signal::parse("sigint"), Ok(Signal::INT));
        assert_eq!(Signal::parse(" int "), Ok(Signal::INT));
        assert_eq!(Signal::parse("3"), Ok(Signal::QUIT));
        assert_eq!(Signal::parse("9"), Ok(Signal::KILL));
        assert_eq!("usr2".parse::<Signal>().map(Signal::number), Ok(12));
        assert_eq!(
            Signal::parse("1").map(|s| s.to_string()),
            Ok("SIGHUP".into())
        );
    }

    #[test]
    fn every_linux_name_not_only_the_common_ones() {
        // The CLI used to know 7 names; the controller any name: the wider set is kept.
        for (name, n) in [("WINCH", 28), ("SIGPWR", 30), ("sys", 31), ("STKFLT", 16)] {
            assert_eq!(Signal::parse(name).map(Signal::number), Ok(n), "{name}");
        }
        for (i, name) in NAMES.iter().enumerate() {
            let s = Signal::parse(name).unwrap();
            assert_eq!(s.number(), i as i32 + 1);
            assert_eq!(s.to_string(), *name);
        }
    }

    #[test]
    fn real_time_numbers_and_nonsense() {
        assert_eq!(
            Signal::parse("34").map(|s| (s.number(), s.name())),
            Ok((34, None))
        );
        assert_eq!(Signal::parse("64").unwrap().to_string(), "64");
        for bad in ["0", "65", "-15", "SIGNOPE", "", "SIG", "TERM9", "1.5"] {
            let err = Signal::parse(bad).unwrap_err();
            assert!(err.to_string().contains("not a signal"), "{bad}: {err}");
        }
    }
}

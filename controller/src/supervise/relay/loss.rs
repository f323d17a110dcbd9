//! Why the app's side of a connection ended: a restart the supervisor asked for, a crash, or a
//! close by an app that goes on running. What the relay does next depends on it (see the
//! `relay` module docs).

use std::time::Duration;

use tokio::sync::watch;

use super::gate::AppGate;

/// Why the app's side of a connection ended, as far as the relay can tell.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Loss {
    /// The supervisor stopped the app (or a new one already runs).
    Restart,
    /// The app died on its own.
    Crash,
    /// The app closed this connection and goes on running.
    Closed,
}

/// Why the app's side of a connection to the app of start `app_starts` ended, from what the
/// supervisor `published`; looks at the app's process when the supervisor has not said yet.
pub(super) async fn classify(published: &watch::Receiver<AppGate>, app_starts: u64) -> Loss {
    let gate = *published.borrow();
    if gate.stopping || (gate.running && gate.starts != app_starts) {
        return Loss::Restart;
    }
    if !gate.running {
        return Loss::Crash;
    }
    // The supervisor may not have reaped a crashed app yet: it is a zombie by then (its
    // sockets are closed before), or gone.
    if gate.pid.is_some_and(alive) {
        return Loss::Closed;
    }
    // Give the supervisor a moment to say whether it was stopping it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let gate = *published.borrow();
    if gate.stopping || gate.starts != app_starts {
        Loss::Restart
    } else {
        Loss::Crash
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMM) STATE ...": COMM may hold anything, so look after its last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_missing_one_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX / 2));
    }
}

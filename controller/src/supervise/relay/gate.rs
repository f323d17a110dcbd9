//! What the relay knows of the app: the supervisor publishes it on a `watch` channel as it
//! starts and stops the app, and each connection reads it to wait for an app or tell a restart
//! from a crash.

/// What the relay knows of the app, from the supervisor's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppGate {
    /// A child runs (and has not been asked to stop).
    pub running: bool,
    /// The supervisor is stopping the child (a restart or shutdown).
    pub stopping: bool,
    /// How many children were started so far.
    pub starts: u64,
    /// The running child's PID.
    pub pid: Option<u32>,
}

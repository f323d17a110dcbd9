//! What `kdev watch` and `kdev debug` are told on the command line (the rest is kdev.yaml's).

use std::path::PathBuf;
use std::time::Duration;

use crate::pod::delve::DebugOptions;

/// Options of `kdev watch` that do not come from kdev.yaml.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub config_path: PathBuf,
    pub namespace: Option<String>,
    pub context: Option<String>,
    /// The services to run in dev mode (kdev.yaml's `services:` names); all when empty.
    pub services: Vec<String>,
    pub poll: bool,
    pub pod_timeout: Duration,
    /// `kdev debug`: run the app under Delve (the first service on this port, the next ones
    /// on the following ports).
    pub debug: Option<DebugOptions>,
    /// `--owner`: who is developing.
    pub owner: Option<String>,
    /// `--take-over`: take the session lock even if another kdev holds it.
    pub take_over: bool,
    /// `--timings FILE`: append each reload's timeline to FILE.
    pub timings: Option<PathBuf>,
    /// `--ui`: say the status page's address.
    pub ui: bool,
    /// On a terminal, keep the status block below the lines (off with `--no-status-block` and
    /// `-v`, whose lines go to the same terminal).
    pub status_block: bool,
}

//! The one place a session's state lives: the reload loops write it, the terminal block, the
//! page and `kdev status` read it, and the page's buttons reach the loops through it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use super::log::{Level, LogLine, LogRing, Source};
use super::model::{ServiceStatus, SessionStatus, State};
use super::term_block::{self, TermBlock};
use crate::reload::timings::now_ms;

/// What the page asks a service's loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Rebuild,
    Restart,
    Pause,
    Resume,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "rebuild" => Command::Rebuild,
            "restart" => Command::Restart,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            _ => return None,
        })
    }
}

/// Why a command was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("no service {0}")]
    NoService(String),
    #[error("{0} is not connected to its pod yet")]
    NotConnected(String),
}

/// How long the terminal block waits after a change before it redraws, so that a burst of
/// changes is drawn once.
const REDRAW_DELAY: Duration = Duration::from_millis(80);

/// A session's state, shared.
pub struct Hub {
    inner: Mutex<Inner>,
    /// Bumped on every change of the status (not of the log).
    version: watch::Sender<u64>,
    logs: broadcast::Sender<LogLine>,
    /// On a terminal: the status block below the lines.
    terminal: Option<Mutex<Terminal>>,
    /// Required by every request to the API.
    token: String,
}

struct Inner {
    status: SessionStatus,
    log: LogRing,
    commands: BTreeMap<String, mpsc::UnboundedSender<Command>>,
}

struct Terminal {
    block: TermBlock,
    color: bool,
    /// The terminal's settings before kdev turned its echo off (restored at the end).
    echo: Option<libc::termios>,
}

/// The hub whose block is on the terminal: lines for stderr (kdev's warnings, `-v`'s trace)
/// go above it when stderr is that terminal too, instead of under it.
static ON_TERMINAL: Mutex<Option<Weak<Hub>>> = Mutex::new(None);

/// Write `text` (whole lines) for stderr: above the status block when it is on the same
/// terminal, else to stderr as it is.
pub fn write_stderr(text: &str) {
    let hub = ON_TERMINAL
        .lock()
        .ok()
        .and_then(|h| h.as_ref().and_then(Weak::upgrade));
    match hub {
        Some(h) => h.print_raw(text),
        None => {
            use std::io::Write;
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

/// Typed keys are not echoed while the block is drawn: an Enter would move the cursor under
/// the block and leave a copy of it behind. Returns the settings to restore.
fn echo_off() -> Option<libc::termios> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) == 0).then_some(saved)
    }
}

fn restore_echo(saved: &libc::termios) {
    // SAFETY: the settings tcgetattr gave for stdin.
    unsafe {
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
    }
}

/// One service's part of the hub (what its loop and report write through).
#[derive(Clone)]
pub struct ServiceHandle {
    hub: Arc<Hub>,
    index: usize,
}

impl Hub {
    /// A session of `command` (`watch` or `debug`); `terminal`: keep the status block on
    /// stdout (a TTY), `color`: with colours.
    pub fn new(command: &str, terminal: bool, color: bool) -> Arc<Hub> {
        let status = SessionStatus {
            kdev_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            command: command.to_string(),
            project: String::new(),
            root: String::new(),
            namespace: String::new(),
            owner: String::new(),
            started_at_ms: now_ms(),
            ui_url: None,
            ui_url_shown: false,
            services: Vec::new(),
        };
        let hub = Arc::new(Hub {
            inner: Mutex::new(Inner {
                status,
                log: LogRing::default(),
                commands: BTreeMap::new(),
            }),
            version: watch::Sender::new(0),
            logs: broadcast::Sender::new(1024),
            terminal: terminal.then(|| {
                Mutex::new(Terminal {
                    block: TermBlock::default(),
                    color,
                    echo: echo_off(),
                })
            }),
            token: random_token(),
        });
        if terminal {
            tokio::spawn(redraw_on_change(
                Arc::downgrade(&hub),
                hub.version.subscribe(),
            ));
            if std::io::stderr().is_terminal()
                && let Ok(mut on) = ON_TERMINAL.lock()
            {
                *on = Some(Arc::downgrade(&hub));
            }
        }
        hub
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the session's status and tell whoever watches.
    pub fn update(&self, change: impl FnOnce(&mut SessionStatus)) {
        change(&mut self.lock().status);
        self.version.send_modify(|v| *v += 1);
    }

    /// The status as the API shows it.
    pub fn snapshot(&self) -> SessionStatus {
        let mut s = self.lock().status.clone();
        for svc in &mut s.services {
            svc.state = svc.shown_state();
        }
        s
    }

    /// A new service; the receiver gets the page's commands for it.
    pub fn add_service(
        self: &Arc<Self>,
        name: &str,
    ) -> (ServiceHandle, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let index = {
            let mut inner = self.lock();
            inner.commands.insert(name.to_string(), tx);
            inner
                .status
                .services
                .push(ServiceStatus::new(name, now_ms()));
            inner.status.services.len() - 1
        };
        self.version.send_modify(|v| *v += 1);
        let handle = ServiceHandle {
            hub: self.clone(),
            index,
        };
        (handle, rx)
    }

    /// Pass a command to `service`'s loop.
    pub fn command(&self, service: &str, command: Command) -> Result<(), CommandError> {
        let inner = self.lock();
        let i = inner
            .status
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| CommandError::NoService(service.into()))?;
        let connecting = inner.status.services[i].state == State::Connecting;
        if connecting && matches!(command, Command::Rebuild | Command::Restart) {
            return Err(CommandError::NotConnected(service.into()));
        }
        let tx = inner
            .commands
            .get(service)
            .ok_or_else(|| CommandError::NoService(service.into()))?;
        tx.send(command)
            .map_err(|_| CommandError::NotConnected(service.into()))
    }

    /// Changes of the status, for the page's live updates.
    pub fn watch_version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// New log lines as they come, and the number of the newest line before them (taken
    /// together, under the lock lines are sent under: none is missed or seen twice).
    pub fn subscribe_logs(&self) -> (broadcast::Receiver<LogLine>, u64) {
        let inner = self.lock();
        let (_, newest) = inner.log.after(u64::MAX, 0);
        (self.logs.subscribe(), newest)
    }

    /// Lines after `seq` (at most `limit`), and the number of the newest.
    pub fn logs_after(&self, seq: u64, limit: usize) -> (Vec<LogLine>, u64) {
        self.lock().log.after(seq, limit)
    }

    /// A line kdev shows: kept for the page, and written to stdout (`rendered`, as the
    /// terminal shows it; above the block there).
    pub fn print(
        &self,
        service: Option<&str>,
        source: Source,
        level: Level,
        text: &str,
        rendered: &str,
    ) {
        {
            // Numbered and sent under one lock: subscribers get the lines in order.
            let mut inner = self.lock();
            let line = inner.log.push(now_ms(), service, source, level, text);
            let _ = self.logs.send(line);
        }
        let mut out = String::with_capacity(rendered.len() + 1);
        out.push_str(rendered);
        out.push('\n');
        if !self.above_block(&out) {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
        }
    }

    /// Write `text` (whole lines) above the block and draw the block again; `false` when there
    /// is no block (the caller writes it where it goes).
    fn above_block(&self, text: &str) -> bool {
        let Some(t) = &self.terminal else {
            return false;
        };
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        let rows = self.rows(t.color);
        t.block.print(text, &rows);
        true
    }

    /// Whether the terminal shows the block (then nothing else may draw on it: no progress
    /// bars).
    pub fn has_block(&self) -> bool {
        self.terminal.is_some()
    }

    /// Erase the block for good (the session ends), and give the terminal its echo back.
    pub fn close_block(&self) {
        if let Some(t) = &self.terminal {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            t.block.close();
            if let Some(saved) = t.echo.take() {
                restore_echo(&saved);
            }
        }
        if let Ok(mut on) = ON_TERMINAL.lock() {
            *on = None;
        }
    }

    /// Lines that are not kdev's log (stderr's), written above the block.
    fn print_raw(&self, text: &str) {
        let mut out = text.to_string();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        if !self.above_block(&out) {
            use std::io::Write;
            let _ = std::io::stderr().write_all(out.as_bytes());
        }
    }

    fn rows(&self, color: bool) -> Vec<String> {
        let (cols, lines) = term_block::terminal_size();
        term_block::render(&self.lock().status, cols, lines, color)
    }

    fn redraw(&self) {
        self.above_block("");
    }
}

/// Redraw the block after each change (once per burst); nothing runs while nothing changes.
async fn redraw_on_change(hub: std::sync::Weak<Hub>, mut version: watch::Receiver<u64>) {
    while version.changed().await.is_ok() {
        tokio::time::sleep(REDRAW_DELAY).await;
        version.borrow_and_update();
        match hub.upgrade() {
            Some(h) => h.redraw(),
            None => return,
        }
    }
}

impl ServiceHandle {
    /// Change this service's status.
    pub fn update(&self, change: impl FnOnce(&mut ServiceStatus, u64)) {
        let now = now_ms();
        self.hub
            .update(|s| change(&mut s.services[self.index], now));
    }

    /// Enter `state`, with a short line about it.
    pub fn set_state(&self, state: State, detail: Option<String>) {
        self.update(|s, now| s.set_state(state, detail, now));
    }

    /// The state the service is in, and its detail.
    pub fn state(&self) -> (State, Option<String>) {
        let inner = self.hub.lock();
        let s = &inner.status.services[self.index];
        (s.state, s.detail.clone())
    }
}

/// 128 random bits, hex: from the kernel's generator.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        // No /dev/urandom (not Linux): the hasher's per-process random keys.
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(now_ms());
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_reach_the_service_and_unknown_ones_are_named() {
        let hub = Hub::new("watch", false, false);
        let (svc, mut rx) = hub.add_service("api");
        assert_eq!(
            hub.command("api", Command::Rebuild),
            Err(CommandError::NotConnected("api".into()))
        );
        svc.set_state(State::Ready, None);
        hub.command("api", Command::Rebuild).unwrap();
        assert_eq!(rx.recv().await, Some(Command::Rebuild));
        assert_eq!(
            hub.command("web", Command::Pause),
            Err(CommandError::NoService("web".into()))
        );
        assert_eq!(hub.token().len(), 32);
    }

    #[tokio::test]
    async fn lines_are_kept_and_sent_to_subscribers() {
        let hub = Hub::new("watch", false, false);
        let (mut rx, newest) = hub.subscribe_logs();
        assert_eq!(newest, 0);
        hub.print(
            Some("api"),
            Source::App,
            Level::Warn,
            "oops",
            "api │ app!│ oops",
        );
        let line = rx.recv().await.unwrap();
        assert_eq!((line.seq, line.text.as_str()), (1, "oops"));
        assert_eq!(hub.logs_after(0, 10).0, vec![line]);
    }
}

//! Watching the source tree for changes.
//!
//! - Directories are watched, not files: editors save by writing a temp file and renaming it over
//!   the original, which a watch on the file itself would lose.
//! - Only directories that are synced are watched (ignored trees such as `node_modules/` or
//!   `.git/` cost no inotify watches), and each is watched non-recursively so that new
//!   directories are picked up as they appear and ignored ones never are.
//! - Events are hints, not facts: every event just says "this path may have changed", and the
//!   sync loop stats the path to find out what it is now. That makes renames, deletes, atomic
//!   saves and missed event kinds all the same case.
//! - A short debounce: a save's events arrive within a few milliseconds of each other; waiting for
//!   a quiet gap of [`DEFAULT_DEBOUNCE`] (not the 200-1000 ms the field uses) groups them.
//! - When inotify runs out of watches, say so (with the sysctl that raises the limit) and fall
//!   back to polling; `--poll` asks for polling from the start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::tree::IgnoreRules;

/// Quiet gap that ends a batch of events.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(15);
/// A batch is sent after this long even if events keep coming (e.g. `git checkout` of a big tree).
pub const MAX_BATCH_DELAY: Duration = Duration::from_millis(300);
/// Poll interval in polling mode.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// How the tree is being watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// inotify (or the platform's native API).
    Native,
    /// Polling, because it was asked for.
    Polling,
    /// Polling, because native watching failed; the message says why and what to do.
    PollingFallback(String),
}

/// Something the watcher wants the user to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The watch limit was reached: switched to polling.
    FellBackToPolling(String),
    /// An error from the watcher backend that did not stop it.
    Error(String),
}

/// A debounced batch: paths that may have changed, plus notices.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub paths: BTreeSet<PathBuf>,
    pub notices: Vec<Notice>,
    /// When the first event of the batch arrived (the start of a reload's timeline).
    pub first_event_at: Option<SystemTime>,
}

/// The live watcher; held only so that dropping it stops watching.
enum Backend {
    Native(RecommendedWatcher),
    Poll(#[allow(dead_code)] PollWatcher),
}

/// Watches the synced part of a tree; dropping it stops watching.
pub struct TreeWatcher {
    backend: Arc<Mutex<Option<Backend>>>,
    pub mode: Mode,
}

enum Raw {
    Event(Event),
    Error(notify::Error),
}

impl TreeWatcher {
    /// Start watching `root` (under `rules`) and return the watcher and its batches.
    pub fn start(
        root: &Path,
        rules: IgnoreRules,
        poll: bool,
        debounce: Duration,
    ) -> notify::Result<(TreeWatcher, mpsc::Receiver<Batch>)> {
        let (raw_tx, raw_rx) = mpsc::unbounded_channel::<Raw>();
        let (batch_tx, batch_rx) = mpsc::channel::<Batch>(64);
        let handler = {
            let raw_tx = raw_tx.clone();
            move |res: notify::Result<Event>| {
                let _ = raw_tx.send(match res {
                    Ok(e) => Raw::Event(e),
                    Err(e) => Raw::Error(e),
                });
            }
        };
        let rules = Arc::new(Mutex::new(rules));
        let backend = Arc::new(Mutex::new(None));
        let mode = if poll {
            *backend.lock().unwrap() = Some(Backend::Poll(start_polling(root, handler)?));
            Mode::Polling
        } else {
            match start_native(root, &rules.lock().unwrap(), handler.clone()) {
                Ok(w) => {
                    *backend.lock().unwrap() = Some(Backend::Native(w));
                    Mode::Native
                }
                Err(e) if is_watch_limit(&e) => {
                    let why = watch_limit_message();
                    *backend.lock().unwrap() = Some(Backend::Poll(start_polling(root, handler)?));
                    Mode::PollingFallback(why)
                }
                Err(e) => return Err(e),
            }
        };
        tokio::spawn(debounce_loop(
            root.to_path_buf(),
            rules,
            backend.clone(),
            raw_rx,
            raw_tx,
            batch_tx,
            debounce,
        ));
        Ok((TreeWatcher { backend, mode }, batch_rx))
    }
}

impl Drop for TreeWatcher {
    fn drop(&mut self) {
        self.backend.lock().unwrap().take();
    }
}

fn start_native<F: notify::EventHandler>(
    root: &Path,
    rules: &IgnoreRules,
    handler: F,
) -> notify::Result<RecommendedWatcher> {
    let mut w = notify::recommended_watcher(handler)?;
    watch_tree(&mut w, root, rules)?;
    Ok(w)
}

fn start_polling<F: notify::EventHandler>(root: &Path, handler: F) -> notify::Result<PollWatcher> {
    // notify's poller keeps mtimes in whole seconds: without comparing contents, two saves in
    // the same second (a typo fixed right away) would look like one, and the second be missed.
    let config = notify::Config::default()
        .with_poll_interval(POLL_INTERVAL)
        .with_compare_contents(true);
    let mut w = PollWatcher::new(handler, config)?;
    w.watch(root, RecursiveMode::Recursive)?;
    Ok(w)
}

/// Watch `dir` and every synced directory below it, each non-recursively.
fn watch_tree(w: &mut RecommendedWatcher, dir: &Path, rules: &IgnoreRules) -> notify::Result<()> {
    w.watch(dir, RecursiveMode::NonRecursive)?;
    let Ok(read) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in read.flatten() {
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let path = entry.path();
        if is_dir && !rules.is_ignored(&path, true) {
            watch_tree(w, &path, rules)?;
        }
    }
    Ok(())
}

fn is_watch_limit(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(28))
}

fn watch_limit_message() -> String {
    let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!(
        "inotify watch limit reached (fs.inotify.max_user_watches = {limit}); watching by polling \
         instead, which is slower. Raise the limit with \
         `sudo sysctl fs.inotify.max_user_watches=524288` (add it to /etc/sysctl.conf to keep it), \
         or exclude big directories in .kdevignore"
    )
}

async fn debounce_loop(
    root: PathBuf,
    rules: Arc<Mutex<IgnoreRules>>,
    backend: Arc<Mutex<Option<Backend>>>,
    mut raw_rx: mpsc::UnboundedReceiver<Raw>,
    raw_tx: mpsc::UnboundedSender<Raw>,
    batch_tx: mpsc::Sender<Batch>,
    debounce: Duration,
) {
    while let Some(first) = raw_rx.recv().await {
        let mut batch = Batch {
            first_event_at: Some(SystemTime::now()),
            ..Batch::default()
        };
        let started = tokio::time::Instant::now();
        let mut next = Some(first);
        loop {
            if let Some(raw) = next.take() {
                handle_raw(raw, &root, &rules, &backend, &raw_tx, &mut batch);
            }
            let remaining = MAX_BATCH_DELAY.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(debounce.min(remaining), raw_rx.recv()).await {
                Ok(Some(raw)) => next = Some(raw),
                Ok(None) => break,
                Err(_) => break, // quiet gap: the batch is complete
            }
        }
        if (batch.paths.is_empty() && batch.notices.is_empty())
            || batch_tx.send(batch).await.is_ok()
        {
            continue;
        }
        return; // the receiver is gone
    }
}

fn handle_raw(
    raw: Raw,
    root: &Path,
    rules: &Arc<Mutex<IgnoreRules>>,
    backend: &Arc<Mutex<Option<Backend>>>,
    raw_tx: &mpsc::UnboundedSender<Raw>,
    batch: &mut Batch,
) {
    match raw {
        Raw::Error(e) if is_watch_limit(&e) => {
            let mut guard = backend.lock().unwrap();
            if matches!(*guard, Some(Backend::Native(_))) {
                let tx = raw_tx.clone();
                let handler = move |res: notify::Result<Event>| {
                    let _ = tx.send(match res {
                        Ok(e) => Raw::Event(e),
                        Err(e) => Raw::Error(e),
                    });
                };
                match start_polling(root, handler) {
                    Ok(p) => {
                        *guard = Some(Backend::Poll(p));
                        batch
                            .notices
                            .push(Notice::FellBackToPolling(watch_limit_message()));
                        // Whatever changed while we were switching: rescan everything.
                        batch.paths.insert(root.to_path_buf());
                    }
                    Err(e) => batch
                        .notices
                        .push(Notice::Error(format!("cannot start polling: {e}"))),
                }
            }
        }
        Raw::Error(e) => batch.notices.push(Notice::Error(e.to_string())),
        Raw::Event(event) => {
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let mut rules_guard = rules.lock().unwrap();
            for path in event.paths {
                if path.file_name().is_some_and(|n| n == ".gitignore") {
                    rules_guard.reload_gitignore(&path);
                }
                let is_dir = path.is_dir();
                if rules_guard.is_ignored(&path, is_dir) {
                    continue;
                }
                // A new directory: watch it, and treat it as changed (files may have been
                // created in it before the watch existed; the sync loop rescans it).
                if is_dir && let Some(Backend::Native(w)) = backend.lock().unwrap().as_mut() {
                    let _ = watch_tree(w, &path, &rules_guard);
                }
                batch.paths.insert(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    async fn next_batch(rx: &mut mpsc::Receiver<Batch>) -> Batch {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no batch in 10s")
            .unwrap()
    }

    async fn collect_until(rx: &mut mpsc::Receiver<Batch>, want: &[PathBuf]) -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        while !want.iter().all(|p| seen.contains(p)) {
            seen.extend(next_batch(rx).await.paths);
        }
        seen
    }

    async fn exercise(poll: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        fs::write(root.join(".gitignore"), "ignored/\n").unwrap();
        fs::create_dir_all(root.join("ignored")).unwrap();
        fs::write(root.join("main.go"), "v1").unwrap();
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        let (w, mut rx) = TreeWatcher::start(&root, rules, poll, DEFAULT_DEBOUNCE).unwrap();
        assert_eq!(w.mode == Mode::Polling, poll);

        // An atomic save: write a temp file, rename it over the original.
        fs::write(root.join(".main.go.swp"), "v2").unwrap();
        fs::rename(root.join(".main.go.swp"), root.join("main.go")).unwrap();
        let seen = collect_until(&mut rx, &[root.join("main.go")]).await;
        assert!(seen.contains(&root.join("main.go")));

        // A new nested directory and a file in it are both noticed.
        fs::create_dir_all(root.join("pkg/sub")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        fs::write(root.join("pkg/sub/x.go"), "x").unwrap();
        let seen = collect_until(&mut rx, &[root.join("pkg/sub/x.go")]).await;
        assert!(seen.iter().all(|p| !p.starts_with(root.join("ignored"))));

        // Ignored paths produce nothing; a later real change still arrives alone.
        fs::write(root.join("ignored/junk"), "x").unwrap();
        fs::remove_file(root.join("main.go")).unwrap();
        let seen = collect_until(&mut rx, &[root.join("main.go")]).await;
        assert!(!seen.contains(&root.join("ignored/junk")), "{seen:?}");
        drop(w);
    }

    #[tokio::test]
    async fn native_watcher_sees_saves_new_dirs_and_deletes() {
        exercise(false).await;
    }

    #[tokio::test]
    async fn polling_watcher_sees_saves_new_dirs_and_deletes() {
        exercise(true).await;
    }
}

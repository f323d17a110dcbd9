//! Watching the source tree for changes (watch stage): [`TreeWatcher`] sends debounced
//! batches of paths that may have changed.
//!
//! - Directories are watched, not files: editors save by writing a temp file and renaming it over
//!   the original, which a watch on the file itself would lose.
//! - Only directories that are synced are watched (ignored trees such as `node_modules/` or
//!   `.git/` cost no inotify watches), each non-recursively, so that new directories are picked
//!   up as they appear and ignored ones never are.
//! - Symlinks are synced as links and never followed or watched through. On Linux the watches
//!   are kept by [`crate::sync::watch::inotify`], one per directory inode whatever names reach
//!   it (its docs say why notify's inotify backend cannot do that); elsewhere notify's native watcher
//!   watches the root recursively without following links.
//! - Events are hints, not facts: every event just says "this path may have changed", and the
//!   sync loop stats the path to find out what it is now. That makes renames, deletes, atomic
//!   saves and missed event kinds all the same case. When events were lost (inotify's queue
//!   overflowed, or the watcher changed), the root is reported: "rescan everything".
//! - A changed `.gitignore` reports its directory too: what is synced below it may have changed.
//! - A short debounce: a save's events arrive within a few milliseconds of each other; waiting for
//!   a quiet gap of [`DEFAULT_DEBOUNCE`] (not the 200-1000 ms the field uses) groups them.
//! - When inotify runs out of watches, say so (with the sysctl that raises the limit) and fall
//!   back to polling; `--poll` asks for polling from the start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{Event, EventKind, PollWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::sync::ignore::IgnoreRules;
#[cfg(target_os = "linux")]
use crate::task::AbortOnDrop;

/// Quiet gap that ends a batch of events.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(15);
/// A batch is sent after this long even if events keep coming (e.g. `git checkout` of a big tree).
const MAX_BATCH_DELAY: Duration = Duration::from_millis(300);
/// Poll interval in polling mode.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Notify(#[from] notify::Error),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Inotify(#[from] crate::sync::watch::inotify::WatchError),
    #[cfg(target_os = "linux")]
    #[error("cannot start inotify: {0}")]
    Init(std::io::Error),
}

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

/// A debounced batch: paths that may have changed, plus notices. The sync root itself among the
/// paths means "anything may have changed: rescan everything".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub paths: BTreeSet<PathBuf>,
    pub notices: Vec<Notice>,
    /// When the first event of the batch arrived (the start of a reload's timeline).
    pub first_event_at: Option<SystemTime>,
}

/// The live watcher; held only so that dropping it stops watching.
enum Backend {
    /// Our inotify layer, read by a task (aborted on drop, which closes the inotify fd).
    #[cfg(target_os = "linux")]
    Native(#[allow(dead_code)] AbortOnDrop),
    /// notify's native recursive watcher: the native backend where the OS watches whole trees
    /// (FSEvents, ReadDirectoryChangesW); on Linux only in tests, which keep that path honest.
    #[cfg(any(test, not(target_os = "linux")))]
    Recursive(#[allow(dead_code)] notify::RecommendedWatcher),
    Poll(#[allow(dead_code)] PollWatcher),
}

/// Which backend [`TreeWatcher::start_kind`] starts.
enum Kind {
    /// The platform's: our inotify layer on Linux, notify's recursive watcher elsewhere.
    Native,
    Poll,
    /// notify's recursive watcher (the non-Linux native one), for tests on Linux.
    #[cfg(test)]
    Recursive,
}

/// Watches the synced part of a tree; dropping it stops watching.
pub struct TreeWatcher {
    backend: Arc<Mutex<Option<Backend>>>,
    pub mode: Mode,
}

/// What the backends tell the debounce loop.
enum Raw {
    /// These paths may have changed (not yet filtered by the ignore rules).
    Paths(Vec<PathBuf>),
    /// Events were lost: anything may have changed.
    Rescan,
    /// The watch limit was reached.
    WatchLimit,
    Error(String),
}

type RawTx = mpsc::UnboundedSender<Raw>;

impl TreeWatcher {
    /// Start watching `root` (under `rules`) and return the watcher and its batches.
    pub fn start(
        root: &Path,
        rules: IgnoreRules,
        poll: bool,
        debounce: Duration,
    ) -> Result<(TreeWatcher, mpsc::Receiver<Batch>), WatchError> {
        let kind = if poll { Kind::Poll } else { Kind::Native };
        Self::start_kind(root, rules, kind, debounce)
    }

    fn start_kind(
        root: &Path,
        rules: IgnoreRules,
        kind: Kind,
        debounce: Duration,
    ) -> Result<(TreeWatcher, mpsc::Receiver<Batch>), WatchError> {
        let (raw_tx, raw_rx) = mpsc::unbounded_channel::<Raw>();
        let (batch_tx, batch_rx) = mpsc::channel::<Batch>(64);
        let rules = Arc::new(Mutex::new(rules));
        let backend = Arc::new(Mutex::new(None));
        let (started, mode) = match kind {
            Kind::Poll => (
                Backend::Poll(start_polling(root, raw_tx.clone())?),
                Mode::Polling,
            ),
            #[cfg(test)]
            Kind::Recursive => (start_recursive(root, raw_tx.clone())?, Mode::Native),
            Kind::Native => match start_native(root, &rules, raw_tx.clone()) {
                Ok(b) => (b, Mode::Native),
                Err(e) if is_watch_limit(&e) => (
                    Backend::Poll(start_polling(root, raw_tx.clone())?),
                    Mode::PollingFallback(watch_limit_message()),
                ),
                Err(e) => return Err(e),
            },
        };
        *backend.lock().unwrap() = Some(started);
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

#[cfg(target_os = "linux")]
fn start_native(
    root: &Path,
    rules: &Arc<Mutex<IgnoreRules>>,
    raw_tx: RawTx,
) -> Result<Backend, WatchError> {
    let mut watches =
        crate::sync::watch::inotify::DirWatches::new(root).map_err(WatchError::Init)?;
    watches.watch_tree(root, &rules.lock().unwrap())?;
    // SAFETY: `DirWatches` owns its inotify fd for its whole life and always returns that one.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(watches, tokio::io::Interest::READABLE)
    }
    .map_err(|e| WatchError::Init(e.into()))?;
    let task = tokio::spawn(read_inotify(fd, rules.clone(), raw_tx));
    Ok(Backend::Native(AbortOnDrop::new(task)))
}

/// Read the inotify queue whenever it is readable, and pass on what changed.
#[cfg(target_os = "linux")]
async fn read_inotify(
    mut fd: tokio::io::unix::AsyncFd<crate::sync::watch::inotify::DirWatches>,
    rules: Arc<Mutex<IgnoreRules>>,
    raw_tx: RawTx,
) {
    use crate::sync::watch::inotify::WatchError as E;
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            let _ = raw_tx.send(Raw::Error("inotify stopped".into()));
            return;
        };
        let changes = match guard.try_io(|w| w.get_mut().read_changes(&mut rules.lock().unwrap())) {
            Err(_would_block) => continue,
            Ok(Err(e)) => {
                let _ = raw_tx.send(Raw::Error(format!("reading inotify events: {e}")));
                return;
            }
            Ok(Ok(c)) => c,
        };
        if changes.overflowed {
            let _ = raw_tx.send(Raw::Rescan);
        }
        let _ = raw_tx.send(Raw::Paths(changes.paths));
        match changes.error {
            None => {}
            Some(E::Limit) => {
                let _ = raw_tx.send(Raw::WatchLimit);
            }
            Some(e) => {
                let _ = raw_tx.send(Raw::Error(e.to_string()));
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn start_native(
    root: &Path,
    _rules: &Arc<Mutex<IgnoreRules>>,
    raw_tx: RawTx,
) -> Result<Backend, WatchError> {
    start_recursive(root, raw_tx)
}

/// FSEvents and ReadDirectoryChangesW watch a whole tree natively: watch the root recursively
/// (without following links); the debounce loop filters by the ignore rules.
#[cfg(any(test, not(target_os = "linux")))]
fn start_recursive(root: &Path, raw_tx: RawTx) -> Result<Backend, WatchError> {
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut w = notify::RecommendedWatcher::new(notify_handler(raw_tx), config)?;
    w.watch(root, RecursiveMode::Recursive)?;
    Ok(Backend::Recursive(w))
}

/// Turn notify's events into ours.
fn notify_handler(raw_tx: RawTx) -> impl Fn(notify::Result<Event>) + Send + 'static {
    move |res| {
        let raw = match res {
            Ok(e) if e.need_rescan() => Raw::Rescan,
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => return,
            Ok(e) => Raw::Paths(e.paths),
            Err(e) if is_notify_watch_limit(&e) => Raw::WatchLimit,
            Err(e) => Raw::Error(e.to_string()),
        };
        let _ = raw_tx.send(raw);
    }
}

fn start_polling(root: &Path, raw_tx: RawTx) -> notify::Result<PollWatcher> {
    // notify's poller keeps mtimes in whole seconds: without comparing contents, two saves in
    // the same second (a typo fixed right away) would look like one, and the second be missed.
    let config = notify::Config::default()
        .with_poll_interval(POLL_INTERVAL)
        .with_compare_contents(true)
        // Symlinks are synced as links: never walk through one.
        .with_follow_symlinks(false);
    let mut w = PollWatcher::new(notify_handler(raw_tx), config)?;
    w.watch(root, RecursiveMode::Recursive)?;
    Ok(w)
}

fn is_watch_limit(e: &WatchError) -> bool {
    match e {
        WatchError::Notify(e) => is_notify_watch_limit(e),
        #[cfg(target_os = "linux")]
        WatchError::Inotify(crate::sync::watch::inotify::WatchError::Limit) => true,
        #[cfg(target_os = "linux")]
        WatchError::Inotify(_) | WatchError::Init(_) => false,
    }
}

fn is_notify_watch_limit(e: &notify::Error) -> bool {
    matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(28))
}

#[cfg(not(target_os = "linux"))]
fn watch_limit_message() -> String {
    "the file watcher ran out of watches; watching by polling instead, which is slower. \
     Exclude big directories in .kdevignore, or raise the open-files limit (`ulimit -n`)"
        .into()
}

#[cfg(target_os = "linux")]
fn watch_limit_message() -> String {
    // /proc may be unreadable (a sandbox): the advice stands without the current value.
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
    raw_tx: RawTx,
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
    raw_tx: &RawTx,
    batch: &mut Batch,
) {
    match raw {
        Raw::WatchLimit => {
            let mut guard = backend.lock().unwrap();
            if matches!(&*guard, Some(b) if !matches!(b, Backend::Poll(_))) {
                match start_polling(root, raw_tx.clone()) {
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
        Raw::Error(e) => batch.notices.push(Notice::Error(e)),
        Raw::Rescan => {
            batch.paths.insert(root.to_path_buf());
        }
        Raw::Paths(paths) => {
            let mut rules = rules.lock().unwrap();
            for path in paths {
                if path.file_name().is_some_and(|n| n == ".gitignore") {
                    rules.reload_gitignore(&path);
                    // What is synced below it may have changed: have that directory rescanned.
                    if let Some(dir) = path.parent()
                        && !rules.is_ignored(dir, true)
                    {
                        batch.paths.insert(dir.to_path_buf());
                    }
                }
                // lstat: a symlink to a directory is a symlink, never a directory.
                let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if !rules.is_ignored(&path, is_dir) {
                    batch.paths.insert(path);
                }
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

    async fn exercise(kind: Kind) {
        let poll = matches!(kind, Kind::Poll);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        fs::write(root.join(".gitignore"), "ignored/\n").unwrap();
        fs::create_dir_all(root.join("ignored")).unwrap();
        fs::write(root.join("main.go"), "v1").unwrap();
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        let (w, mut rx) = TreeWatcher::start_kind(&root, rules, kind, DEFAULT_DEBOUNCE).unwrap();
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
        exercise(Kind::Native).await;
    }

    #[tokio::test]
    async fn polling_watcher_sees_saves_new_dirs_and_deletes() {
        exercise(Kind::Poll).await;
    }

    /// The native backend of macOS and Windows (notify's recursive watcher), run here.
    #[tokio::test]
    async fn recursive_watcher_sees_saves_new_dirs_and_deletes() {
        exercise(Kind::Recursive).await;
    }

    /// A project with `handlers/hello.go` (and `handlers/sub/deep.go`) under a native watcher.
    async fn project() -> (
        tempfile::TempDir,
        PathBuf,
        TreeWatcher,
        mpsc::Receiver<Batch>,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("handlers/sub")).unwrap();
        fs::write(root.join("handlers/hello.go"), "package handlers").unwrap();
        fs::write(root.join("handlers/sub/deep.go"), "package sub").unwrap();
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        let (w, rx) = TreeWatcher::start(&root, rules, false, DEFAULT_DEBOUNCE).unwrap();
        assert_eq!(w.mode, Mode::Native);
        (tmp, root, w, rx)
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Issue 9: `ln -s handlers alias; rm alias` used to drop the watch on `handlers` (one
    /// inotify watch per inode, and the alias's removal removed it).
    #[tokio::test]
    async fn a_symlink_to_a_watched_dir_coming_and_going_keeps_the_dir_watched() {
        let (_tmp, root, _w, mut rx) = project().await;
        std::os::unix::fs::symlink("handlers", root.join("alias")).unwrap();
        collect_until(&mut rx, &[root.join("alias")]).await;
        fs::remove_file(root.join("alias")).unwrap();
        collect_until(&mut rx, &[root.join("alias")]).await;
        append(&root.join("handlers/hello.go"), "// x\n");
        collect_until(&mut rx, &[root.join("handlers/hello.go")]).await;
        append(&root.join("handlers/sub/deep.go"), "// y\n");
        collect_until(&mut rx, &[root.join("handlers/sub/deep.go")]).await;
        // And again, a later edit in the same directory.
        append(&root.join("handlers/hello.go"), "// z\n");
        let seen = collect_until(&mut rx, &[root.join("handlers/hello.go")]).await;
        assert!(
            seen.iter().all(|p| !p.starts_with(root.join("alias/"))),
            "{seen:?}"
        );
    }

    /// `mv handlers h2`, edit, `mv h2 handlers`, edit: every edit is seen under its current name.
    #[tokio::test]
    async fn directory_renames_keep_their_watches_under_the_new_name() {
        let (_tmp, root, _w, mut rx) = project().await;
        fs::rename(root.join("handlers"), root.join("h2")).unwrap();
        collect_until(&mut rx, &[root.join("handlers"), root.join("h2")]).await;
        append(&root.join("h2/hello.go"), "// 1\n");
        append(&root.join("h2/sub/deep.go"), "// 1\n");
        let seen = collect_until(
            &mut rx,
            &[root.join("h2/hello.go"), root.join("h2/sub/deep.go")],
        )
        .await;
        assert!(
            !seen.iter().any(|p| p.starts_with(root.join("handlers/"))),
            "{seen:?}"
        );
        fs::rename(root.join("h2"), root.join("handlers")).unwrap();
        collect_until(&mut rx, &[root.join("handlers"), root.join("h2")]).await;
        append(&root.join("handlers/hello.go"), "// 2\n");
        append(&root.join("handlers/sub/deep.go"), "// 2\n");
        let seen = collect_until(
            &mut rx,
            &[
                root.join("handlers/hello.go"),
                root.join("handlers/sub/deep.go"),
            ],
        )
        .await;
        assert!(
            !seen.iter().any(|p| p.starts_with(root.join("h2/"))),
            "{seen:?}"
        );
    }

    /// A symlink to a directory outside the root is synced as a link, never watched through.
    #[tokio::test]
    async fn a_symlink_to_an_outside_dir_is_not_watched_through() {
        outside_symlink(false).await;
    }

    #[tokio::test]
    async fn a_symlink_to_an_outside_dir_is_not_polled_through() {
        outside_symlink(true).await;
    }

    async fn outside_symlink(poll: bool) {
        let outside = tempfile::tempdir().unwrap();
        let outside = outside.path().canonicalize().unwrap();
        fs::write(outside.join("a.go"), "x").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&outside, root.join("ext")).unwrap();
        fs::create_dir(root.join("pkg")).unwrap();
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        let (_w, mut rx) = TreeWatcher::start(&root, rules, poll, DEFAULT_DEBOUNCE).unwrap();
        // Also a link created while watching.
        std::os::unix::fs::symlink(&outside, root.join("pkg/ext2")).unwrap();
        collect_until(&mut rx, &[root.join("pkg/ext2")]).await;
        fs::write(outside.join("a.go"), "y").unwrap();
        fs::create_dir(outside.join("newdir")).unwrap();
        fs::write(outside.join("b.go"), "y").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A sentinel change inside the root: everything before it has been delivered.
        fs::write(root.join("pkg/sentinel.go"), "x").unwrap();
        let seen = collect_until(&mut rx, &[root.join("pkg/sentinel.go")]).await;
        assert!(
            !seen
                .iter()
                .any(|p| p.starts_with(root.join("ext/")) || p.starts_with(root.join("pkg/ext2/"))),
            "{seen:?}"
        );
    }

    /// More events than inotify queues (the test's single-threaded runtime cannot read while
    /// it writes): the batch holds the root, which the loop takes as "rescan everything".
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_inotify_queue_overflow_asks_for_a_full_rescan() {
        let (_tmp, root, _w, mut rx) = project().await;
        let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(16384);
        for i in 0..max / 2 {
            fs::write(root.join(format!("handlers/f{i}")), "x").unwrap();
        }
        collect_until(&mut rx, std::slice::from_ref(&root)).await;
        // And watching goes on.
        fs::create_dir(root.join("after")).unwrap();
        collect_until(&mut rx, &[root.join("after")]).await;
        fs::write(root.join("after/x.go"), "x").unwrap();
        collect_until(&mut rx, &[root.join("after/x.go")]).await;
    }

    /// A changed `.gitignore` changes what is synced below its directory: that directory is
    /// reported too, so that the loop rescans it (and picks up files it no longer ignores).
    #[tokio::test]
    async fn a_changed_gitignore_reports_its_directory() {
        let (_tmp, root, _w, mut rx) = project().await;
        fs::write(root.join("handlers/.gitignore"), "*.tmp\n").unwrap();
        collect_until(
            &mut rx,
            &[root.join("handlers"), root.join("handlers/.gitignore")],
        )
        .await;
    }
}

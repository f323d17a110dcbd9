//! Whether a kdev is still connected to this pod, for a second kdev to ask.
//!
//! The CLI renews its session Lease only every 30 s once it is connected (an idle session
//! must cost the API server next to nothing), so the Lease alone cannot tell a crashed kdev
//! from a live one quickly. The exec stream can: a live kdev is heard at least every few
//! seconds (it pings after 4 s of silence, and a long upload is heard byte by byte). So `serve`
//! marks its lock file's modification time while it hears its client ([`mark_while_heard`]),
//! and `kdev-controller session-state` ([`state`]) reports whether the lock is held and how
//! long ago its holder last heard its kdev. A crashed kdev's stream ends at once (its
//! connections close), and its `serve` exits and releases the lock.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kdev_protocol::Layout;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use tokio::io::{AsyncRead, ReadBuf};

/// How often the lock file's time is brought up to date while the client is heard.
const MARK_EVERY: Duration = Duration::from_secs(2);

/// When the client was last heard, in milliseconds since the Unix epoch.
#[derive(Debug, Default)]
pub struct Heard(AtomicU64);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Heard {
    fn mark(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    fn last_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A reader that notes when it last read anything: every byte from the client is life.
pub struct HeardReader<R> {
    inner: R,
    heard: Arc<Heard>,
}

impl<R> HeardReader<R> {
    pub fn new(inner: R, heard: Arc<Heard>) -> HeardReader<R> {
        HeardReader { inner, heard }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HeardReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.mark();
        }
        polled
    }
}

/// Set `lock`'s modification time every `every` (normally [`MARK_EVERY`]) in which the client
/// was heard. Runs until aborted; a failing update is retried at the next tick (the file is
/// ours and local).
pub async fn mark_while_heard(lock: File, heard: Arc<Heard>, every: Duration) {
    let mut marked = 0;
    loop {
        tokio::time::sleep(every).await;
        let last = heard.last_ms();
        if last > marked && lock.set_modified(SystemTime::now()).is_ok() {
            marked = last;
        }
    }
}

/// The task of [`mark_while_heard`] for a session's lock, stopped when dropped.
pub struct Marker(tokio::task::JoinHandle<()>);

impl Marker {
    pub fn start(lock: &File, heard: Arc<Heard>) -> io::Result<Marker> {
        let file = lock.try_clone()?;
        Ok(Marker(tokio::spawn(mark_while_heard(
            file, heard, MARK_EVERY,
        ))))
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `kdev-controller session-state` prints, as one JSON line.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SessionState {
    /// A `serve` holds the session lock.
    pub held: bool,
    /// Its PID, when it recorded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Milliseconds since it last heard its kdev (or took the lock), when held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heard_ms_ago: Option<u64>,
}

/// Whether a `serve` holds the session lock in `layout`, and when it last heard its client.
/// Never creates the lock file.
pub fn state(layout: &Layout) -> io::Result<SessionState> {
    let path = layout.serve_lock_file();
    let none = SessionState {
        held: false,
        pid: None,
        heard_ms_ago: None,
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(none),
        Err(e) => return Err(e),
    };
    let modified = file.metadata()?.modified()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // Nobody holds it; the shared lock is dropped (released) at once.
        Ok(_) => Ok(none),
        Err((_, Errno::EWOULDBLOCK)) => {
            let pid = super::lock::read_record(&path).map(|(pid, _)| pid);
            let ago = SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default()
                .as_millis() as u64;
            Ok(SessionState {
                held: true,
                pid,
                heard_ms_ago: Some(ago),
            })
        }
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn no_lock_file_or_a_free_lock_is_no_session() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(&layout.run).unwrap();
        assert!(!state(&layout).unwrap().held);
        assert!(
            !layout.serve_lock_file().exists(),
            "asking must not create the lock file"
        );
        std::fs::write(layout.serve_lock_file(), "12 34\n").unwrap();
        assert!(!state(&layout).unwrap().held);
    }

    #[test]
    fn a_held_lock_reports_its_holder_and_when_it_was_heard() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(&layout.run).unwrap();
        std::fs::write(layout.serve_lock_file(), "4242 99\n").unwrap();
        let file = File::options()
            .write(true)
            .open(layout.serve_lock_file())
            .unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        file.set_modified(old).unwrap();
        let _held = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        let s = state(&layout).unwrap();
        assert!(s.held);
        assert_eq!(s.pid, Some(4242));
        let ago = s.heard_ms_ago.unwrap();
        assert!((59_000..120_000).contains(&ago), "{ago}");
    }

    #[tokio::test]
    async fn bytes_read_mark_the_lock_file() {
        let every = Duration::from_millis(50);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.lock");
        std::fs::write(&path, "").unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        file.set_modified(old).unwrap();
        let heard = Arc::new(Heard::default());
        let marker = tokio::spawn(mark_while_heard(
            file.try_clone().unwrap(),
            heard.clone(),
            every,
        ));
        // Nothing heard: the time stays.
        tokio::time::sleep(every * 3).await;
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), old);
        let mut r = HeardReader::new(&b"ping"[..], heard.clone());
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await.unwrap();
        tokio::time::sleep(every * 3).await;
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(modified > old + Duration::from_secs(50), "{modified:?}");
        marker.abort();
    }
}

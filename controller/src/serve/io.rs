//! `serve`'s two I/O tasks and the handle the rest of the session sends through.
//!
//! * The writer task is the only thing that touches stdout: everything sent goes through
//!   [`Out`] (a bounded queue), so frames never interleave.
//! * The reader task reads frames from stdin and queues them for the session in order, bounded
//!   by bytes, not by count; once the Welcome is sent it answers pings itself, so a ping never
//!   waits behind a long patch, listing or build cancellation. (Pings that come before it are
//!   queued like any message: a pong must never overtake the Welcome.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kdev_protocol::{
    ClientMessage, ErrorCode, ErrorMessage, Event, Frame, FrameError, MAX_FRAME_SIZE, Ping,
    ServerCodec, ServerMessage, Welcome,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::log::serve as log;
use crate::util::ms;

/// The sending side of stdout. Cheap to clone; the writer stops once every `Out` is dropped.
#[derive(Clone)]
pub(super) struct Out {
    tx: mpsc::Sender<ServerMessage>,
    /// The session's start: events carry the time since.
    t0: Instant,
    /// The Welcome is queued: from then on the reader may answer pings itself.
    welcomed: Arc<AtomicBool>,
    /// Set on SIGTERM/SIGINT (see [`Out::send`]).
    ending: watch::Receiver<bool>,
}

impl Out {
    /// Queue a message, waiting for room; once the session is ending (SIGTERM), a message
    /// that finds the queue full is dropped instead: the client stopped reading, and waiting
    /// for it would keep the session from ending.
    pub(super) async fn send(&self, m: ServerMessage) {
        tokio::select! {
            biased;
            _ = self.tx.send(m) => {}
            () = ended(self.ending.clone()) => {}
        }
    }
    /// Queue the Welcome, then let the reader answer pings: whatever it queues next is behind.
    pub(super) async fn send_welcome(&self, w: Welcome) {
        self.send(ServerMessage::Welcome(w)).await;
        self.welcomed.store(true, Ordering::Release);
    }
    fn wrap(&self, event: Event) -> ServerMessage {
        ServerMessage::Event {
            at_ms: ms(self.t0.elapsed()),
            event,
        }
    }
    pub(super) async fn event(&self, e: Event) {
        let m = self.wrap(e);
        self.send(m).await;
    }
    /// Send unless the queue is full (for output lines). Returns whether it was queued.
    pub(super) fn try_event(&self, e: Event) -> bool {
        self.tx.try_send(self.wrap(e)).is_ok()
    }
    /// A handle that does not keep the writer running: the session ends (and the writer
    /// drains and stops) when the last `Out` is dropped, whatever still holds a `WeakOut`.
    fn downgrade(&self) -> WeakOut {
        WeakOut(self.tx.downgrade(), self.welcomed.clone())
    }
}

/// Returns once `ending` is set; never if it cannot be (no signal handler).
async fn ended(mut ending: watch::Receiver<bool>) {
    if ending.wait_for(|e| *e).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// See [`Out::downgrade`].
struct WeakOut(mpsc::WeakSender<ServerMessage>, Arc<AtomicBool>);

impl WeakOut {
    /// See [`Out::send_welcome`].
    fn welcomed(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }
    async fn send(&self, m: ServerMessage) {
        if let Some(tx) = self.0.upgrade() {
            let _ = tx.send(m).await;
        }
    }
}

/// A fatal error: the session ends after it.
pub(super) fn fatal(code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error(ErrorMessage {
        code,
        message,
        fatal: true,
        id: None,
    })
}

/// A failed request (`id`); the session goes on.
pub(super) fn error(code: ErrorCode, message: String, id: Option<u64>) -> ServerMessage {
    ServerMessage::Error(ErrorMessage {
        code,
        message,
        fatal: false,
        id,
    })
}

/// Start the writer task; returns the handle to send with and the task (which ends once the
/// last [`Out`] is dropped and the queue is written). `ending` is set on SIGTERM/SIGINT.
pub(super) fn spawn_writer(ending: watch::Receiver<bool>) -> (Out, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<ServerMessage>(1024);
    let task = tokio::spawn(writer_task(rx));
    (
        Out {
            tx,
            t0: Instant::now(),
            welcomed: Arc::default(),
            ending,
        },
        task,
    )
}

async fn writer_task(mut rx: mpsc::Receiver<ServerMessage>) {
    let mut stdout = tokio::io::stdout();
    let codec = ServerCodec::new();
    while let Some(m) = rx.recv().await {
        match codec.write(&mut stdout, &m).await {
            Ok(()) => {}
            // Too large for one frame (e.g. a listing of a gigantic tree): say so instead.
            Err(FrameError::Codec(e)) => {
                log(format!("cannot send a message: {e}"));
                let id = match &m {
                    ServerMessage::ReconcileResult(r) => Some(r.id),
                    ServerMessage::ListingDigest(r) => Some(r.id),
                    ServerMessage::PatchResult(r) => Some(r.id),
                    _ => None,
                };
                let err = error(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "a reply could not be sent: {e}; reduce the synced tree (ignore generated files)"
                    ),
                    id,
                );
                if codec.write(&mut stdout, &err).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log(format!("cannot write to the client ({e}); it went away"));
                return;
            }
        }
    }
}

/// A frame from stdin (or how reading ended), holding its share of the queue's byte budget
/// until the session takes it.
pub(super) struct Inbound {
    pub frame: Result<Option<Frame>, FrameError>,
    _queued: Option<OwnedSemaphorePermit>,
}

/// How many bytes of frames may wait for the session (besides the one it handles).
const QUEUED_BYTES: usize = MAX_FRAME_SIZE as usize;

/// The largest frame that can be a ping (a header of at most 256 bytes, no body).
const MAX_PING_FRAME: usize = 4 + 256;

/// A small frame that is a ping.
fn as_ping(frame: &Frame) -> Option<Ping> {
    if frame.len() > MAX_PING_FRAME {
        return None;
    }
    match ServerCodec::decode(frame.clone()) {
        Ok(ClientMessage::Ping(p)) => Some(p),
        _ => None,
    }
}

/// Start the reader task; returns the queue of frames, the first being the hello. `out` is
/// only used for pongs, and weakly: the reader may sit in read(2) until the client goes away,
/// long after the session ended (SIGTERM), and must not keep the writer, and so the process,
/// waiting.
pub(super) fn spawn_reader(out: &Out) -> mpsc::Receiver<Inbound> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(reader_task(tx, out.downgrade()));
    rx
}

async fn reader_task(tx: mpsc::Sender<Inbound>, out: WeakOut) {
    let mut stdin = tokio::io::stdin();
    let mut codec = ServerCodec::new();
    let budget = Arc::new(Semaphore::new(QUEUED_BYTES));
    loop {
        let frame = codec.read_frame(&mut stdin).await;
        let mut queued = None;
        if let Ok(Some(f)) = &frame {
            // Before the Welcome (the hello, or pings sent right behind it), every frame goes
            // to the session, which answers in order.
            if out.welcomed()
                && let Some(ping) = as_ping(f)
            {
                out.send(ServerMessage::Pong(ping)).await;
                continue;
            }
            // Memory stays bounded however fast the client sends: wait for room.
            let n = f.len().clamp(1, QUEUED_BYTES) as u32;
            queued = budget.clone().acquire_many_owned(n).await.ok();
        }
        let stop = !matches!(frame, Ok(Some(_)));
        let msg = Inbound {
            frame,
            _queued: queued,
        };
        if tx.send(msg).await.is_err() || stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdev_protocol::ClientCodec;

    fn frame(m: &ClientMessage) -> Frame {
        let bytes = ClientCodec::encode(m).unwrap();
        let mut codec = ServerCodec::new();
        codec.read_frame_blocking(&mut &bytes[..]).unwrap().unwrap()
    }

    #[test]
    fn pings_are_recognised_without_the_session() {
        assert_eq!(
            as_ping(&frame(&ClientMessage::Ping(Ping { id: 4 }))),
            Some(Ping { id: 4 })
        );
        assert_eq!(as_ping(&frame(&ClientMessage::Bye)), None);
        let padded = ClientMessage::Patch(kdev_protocol::Patch {
            id: 1,
            deletes: vec![],
            build: Default::default(),
            tar: vec![0; 10],
        });
        assert_eq!(as_ping(&frame(&padded)), None);
    }
}

//! `serve`'s two I/O tasks and the handle the rest of the session sends through.
//!
//! * The writer task is the only thing that touches stdout: everything sent goes through
//!   [`Out`] (a bounded queue), so frames never interleave.
//! * The reader task reads frames from stdin and queues them for the session in order, bounded
//!   by bytes, not by count; once the Welcome is sent it answers pings itself, so a ping never
//!   waits behind a long patch, listing or build cancellation. (Pings that come before it are
//!   queued like any message: a pong must never overtake the Welcome.) It also hands the
//!   parts of module responses straight to the module proxy ([`super::module_proxy`]): a build
//!   waiting for a module must not wait behind the session, which may be busy with a patch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kdev_protocol::{
    ClientMessage, ErrorCode, ErrorMessage, Event, Frame, FrameError, MAX_FRAME_SIZE,
    MODULE_RESPONSE_PART, ModuleResponse, Ping, ServerCodec, ServerMessage, Welcome,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::liveness::{Heard, HeardReader};
use super::module_proxy::Pending;
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
    /// Returns once the writer has stopped: the client went away (or the session ended).
    pub(super) async fn closed(&self) {
        self.tx.closed().await
    }
    /// A handle that does not keep the writer running: the session ends (and the writer
    /// drains and stops) when the last `Out` is dropped, whatever still holds a `WeakOut`.
    pub(super) fn downgrade(&self) -> WeakOut {
        WeakOut {
            tx: self.tx.downgrade(),
            t0: self.t0,
            welcomed: self.welcomed.clone(),
            ending: self.ending.clone(),
        }
    }
}

/// Returns once `ending` is set; never if it cannot be (no signal handler).
async fn ended(mut ending: watch::Receiver<bool>) {
    if ending.wait_for(|e| *e).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// See [`Out::downgrade`].
pub(super) struct WeakOut {
    tx: mpsc::WeakSender<ServerMessage>,
    t0: Instant,
    welcomed: Arc<AtomicBool>,
    ending: watch::Receiver<bool>,
}

impl WeakOut {
    /// See [`Out::send_welcome`].
    fn welcomed(&self) -> bool {
        self.welcomed.load(Ordering::Acquire)
    }
    async fn send(&self, m: ServerMessage) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.send(m).await;
        }
    }
    /// An `Out` again, while the session's own still exists.
    pub(super) fn upgrade(&self) -> Option<Out> {
        Some(Out {
            tx: self.tx.upgrade()?,
            t0: self.t0,
            welcomed: self.welcomed.clone(),
            ending: self.ending.clone(),
        })
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

/// The largest frame that can be a module response part (its body, and a header with room
/// for a long reason).
const MAX_MODULE_FRAME: usize = MODULE_RESPONSE_PART + 64 * 1024;

/// A frame the reader handles itself instead of queueing it for the session.
#[derive(Debug, PartialEq)]
enum Direct {
    Ping(Ping),
    ModuleResponse(ModuleResponse),
}

/// A small frame that is a ping or a module response part. Larger frames (patches) are not
/// decoded here: the session does that once.
fn as_direct(frame: &Frame) -> Option<Direct> {
    if frame.len() > MAX_MODULE_FRAME {
        return None;
    }
    match ServerCodec::decode(frame.clone()) {
        Ok(ClientMessage::Ping(p)) if frame.len() <= MAX_PING_FRAME => Some(Direct::Ping(p)),
        Ok(ClientMessage::ModuleResponse(r)) => Some(Direct::ModuleResponse(r)),
        _ => None,
    }
}

/// Start the reader task; returns the queue of frames, the first being the hello. `out` is
/// only used for pongs, and weakly: the reader may sit in read(2) until the client goes away,
/// long after the session ended (SIGTERM), and must not keep the writer, and so the process,
/// waiting. Module response parts go to `modules`, which hears from it when stdin ends.
pub(super) fn spawn_reader(
    out: &Out,
    modules: Arc<Pending>,
    heard: Arc<Heard>,
) -> mpsc::Receiver<Inbound> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(reader_task(tx, out.downgrade(), modules, heard));
    rx
}

async fn reader_task(
    tx: mpsc::Sender<Inbound>,
    out: WeakOut,
    modules: Arc<Pending>,
    heard: Arc<Heard>,
) {
    let mut stdin = HeardReader::new(tokio::io::stdin(), heard);
    let mut codec = ServerCodec::new();
    let budget = Arc::new(Semaphore::new(QUEUED_BYTES));
    loop {
        let frame = codec.read_frame(&mut stdin).await;
        let mut queued = None;
        if let Ok(Some(f)) = &frame {
            // Before the Welcome (the hello, or pings sent right behind it), every frame goes
            // to the session, which answers in order.
            if out.welcomed() {
                match as_direct(f) {
                    Some(Direct::Ping(ping)) => {
                        out.send(ServerMessage::Pong(ping)).await;
                        continue;
                    }
                    Some(Direct::ModuleResponse(part)) => {
                        modules.part(part);
                        continue;
                    }
                    None => {}
                }
            }
            // Memory stays bounded however fast the client sends: wait for room.
            let n = f.len().clamp(1, QUEUED_BYTES) as u32;
            queued = budget.clone().acquire_many_owned(n).await.ok();
        }
        let stop = !matches!(frame, Ok(Some(_)));
        if stop {
            // No answer can come any more: waiting go commands hear so at once.
            modules.end();
        }
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
    fn pings_and_module_responses_are_recognised_without_the_session() {
        assert_eq!(
            as_direct(&frame(&ClientMessage::Ping(Ping { id: 4 }))),
            Some(Direct::Ping(Ping { id: 4 }))
        );
        assert_eq!(as_direct(&frame(&ClientMessage::Bye)), None);
        let padded = ClientMessage::Patch(kdev_protocol::Patch {
            id: 1,
            deletes: vec![],
            build: Default::default(),
            tar: vec![0; 10],
        });
        assert_eq!(as_direct(&frame(&padded)), None);
        let part = ModuleResponse {
            id: 7,
            status: kdev_protocol::ModuleStatus::Ok,
            reason: String::new(),
            size: MODULE_RESPONSE_PART as u64,
            more: false,
            body: vec![1; MODULE_RESPONSE_PART],
        };
        assert_eq!(
            as_direct(&frame(&ClientMessage::ModuleResponse(part.clone()))),
            Some(Direct::ModuleResponse(part))
        );
    }
}

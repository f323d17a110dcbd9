//! The requests sent to the CLI and not answered yet, each gathering its response's parts.
//!
//! The reader task hands every `module_response` part here ([`Pending::part`]) as soon as it
//! is read; the HTTP side waits for the whole answer ([`Pending::register`]). Memory stays
//! bounded: a part for an id nobody waits for (answered, timed out, or never asked) is
//! dropped, and a response is refused past [`MAX_RESPONSE`].

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use kdev_protocol::{ModuleResponse, ModuleStatus};
use tokio::sync::{oneshot, watch};

/// The largest response kept (go's own limit on a module zip is 500 MB).
pub(crate) const MAX_RESPONSE: u64 = 512 << 20;

/// Memory reserved up front for a response: the rest grows as parts arrive, so a response
/// that announces a large size and sends little costs little.
const RESERVE: u64 = 8 << 20;

/// How a request ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The whole file.
    Ok(Vec<u8>),
    NotFound(String),
    Failed(String),
    /// The session ended before the answer came.
    Ended,
}

/// One request waiting for its answer.
struct Slot {
    tx: oneshot::Sender<Answer>,
    body: Vec<u8>,
    /// The total size, from the first part (`None` before it).
    size: Option<u64>,
    /// When it was asked, or its last part arrived.
    last_heard: Instant,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    slots: HashMap<u64, Slot>,
    ended: bool,
}

/// The pending requests of a session (one per session; it exists even without a proxy, and
/// then never has any).
pub(crate) struct Pending {
    table: Mutex<Table>,
    ended: watch::Sender<bool>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            table: Mutex::default(),
            ended: watch::Sender::new(false),
        }
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a consistent table (every change is one
        // insert or remove): go on with it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh id and where its answer will arrive; `None` once the session ended. The slot is
    /// removed again by [`Pending::forget`] (or when the answer is complete).
    pub(crate) fn register(&self) -> Option<(u64, oneshot::Receiver<Answer>)> {
        let mut t = self.lock();
        if t.ended {
            return None;
        }
        t.next_id += 1;
        let id = t.next_id;
        let (tx, rx) = oneshot::channel();
        t.slots.insert(
            id,
            Slot {
                tx,
                body: Vec::new(),
                size: None,
                last_heard: Instant::now(),
            },
        );
        Some((id, rx))
    }

    /// Nobody waits for `id` any more (timed out, or the HTTP client went away): later parts
    /// are dropped.
    pub(crate) fn forget(&self, id: u64) {
        self.lock().slots.remove(&id);
    }

    /// When `id` was asked or last heard of; `None` once it is answered or forgotten.
    pub(crate) fn last_heard(&self, id: u64) -> Option<Instant> {
        self.lock().slots.get(&id).map(|s| s.last_heard)
    }

    /// The session ended: every waiting request, and every later one, is answered
    /// [`Answer::Ended`].
    pub(crate) fn end(&self) {
        let slots = {
            let mut t = self.lock();
            t.ended = true;
            std::mem::take(&mut t.slots)
        };
        for (_, s) in slots {
            let _ = s.tx.send(Answer::Ended);
        }
        self.ended.send_replace(true);
    }

    /// Returns once [`Pending::end`] was called.
    pub(crate) async fn wait_ended(&self) {
        let mut rx = self.ended.subscribe();
        // The sender lives in `self`: the wait cannot fail while we are borrowed.
        let _ = rx.wait_for(|e| *e).await;
    }

    /// A part of the answer to `part.id`, from the reader task.
    pub(crate) fn part(&self, part: ModuleResponse) {
        let id = part.id;
        let mut t = self.lock();
        let Some(slot) = t.slots.get_mut(&id) else {
            return;
        };
        slot.last_heard = Instant::now();
        let done = match part.status {
            ModuleStatus::NotFound => Some(Answer::NotFound(reason_or(part.reason, "not found"))),
            ModuleStatus::Failed => Some(Answer::Failed(reason_or(
                part.reason,
                "the developer's machine could not fetch it",
            ))),
            ModuleStatus::Ok => slot.add(part),
        };
        if let Some(answer) = done {
            // The slot was just found under the same lock.
            if let Some(slot) = t.slots.remove(&id) {
                let _ = slot.tx.send(answer);
            }
        }
    }
}

impl Slot {
    /// Add an `Ok` part; the answer once the response is complete (or cannot be).
    fn add(&mut self, part: ModuleResponse) -> Option<Answer> {
        let size = *self.size.get_or_insert(part.size);
        if size > MAX_RESPONSE {
            return Some(Answer::Failed(format!(
                "the module proxy refuses responses over {} MiB (this one has {size} bytes)",
                MAX_RESPONSE >> 20
            )));
        }
        if self.body.capacity() == 0 {
            self.body.reserve_exact(size.min(RESERVE) as usize);
        }
        let have = self.body.len() as u64 + part.body.len() as u64;
        if have > size {
            return Some(Answer::Failed(format!(
                "the response has more than the {size} bytes it announced"
            )));
        }
        self.body.extend_from_slice(&part.body);
        if part.more {
            return None;
        }
        Some(if have == size {
            Answer::Ok(std::mem::take(&mut self.body))
        } else {
            Answer::Failed(format!(
                "the response ended after {have} of the {size} bytes it announced"
            ))
        })
    }
}

fn reason_or(reason: String, default: &str) -> String {
    if reason.trim().is_empty() {
        default.to_string()
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(id: u64, size: u64, more: bool, body: &[u8]) -> ModuleResponse {
        ModuleResponse {
            id,
            status: ModuleStatus::Ok,
            reason: String::new(),
            size,
            more,
            body: body.to_vec(),
        }
    }

    #[test]
    fn parts_are_gathered_per_request_and_unknown_ids_dropped() {
        let p = Pending::default();
        let (a, mut ra) = p.register().unwrap();
        let (b, mut rb) = p.register().unwrap();
        assert_ne!(a, b);
        p.part(ok(a, 6, true, b"abc"));
        p.part(ok(b, 2, false, b"xy"));
        // Never asked, or already answered: dropped.
        p.part(ok(99, 1, false, b"z"));
        p.part(ok(b, 2, false, b"xy"));
        assert!(ra.try_recv().is_err(), "not complete yet");
        p.part(ok(a, 6, false, b"def"));
        assert_eq!(ra.try_recv().unwrap(), Answer::Ok(b"abcdef".to_vec()));
        assert_eq!(rb.try_recv().unwrap(), Answer::Ok(b"xy".to_vec()));
        assert!(p.lock().slots.is_empty());
    }

    #[test]
    fn statuses_sizes_and_the_cap_decide_the_answer() {
        let p = Pending::default();
        let answer = |parts: Vec<ModuleResponse>| {
            let (id, mut rx) = p.register().unwrap();
            for mut part in parts {
                part.id = id;
                p.part(part);
            }
            rx.try_recv().ok()
        };
        let not_found = ModuleResponse {
            status: ModuleStatus::NotFound,
            reason: "no such version".into(),
            ..ok(0, 0, false, b"")
        };
        assert_eq!(
            answer(vec![not_found]),
            Some(Answer::NotFound("no such version".into()))
        );
        // A failure after some parts (the file could not be read to its end).
        let failed = ModuleResponse {
            status: ModuleStatus::Failed,
            ..ok(0, 0, false, b"")
        };
        assert!(matches!(
            answer(vec![ok(0, 4, true, b"ab"), failed]),
            Some(Answer::Failed(r)) if !r.is_empty()
        ));
        assert!(matches!(
            answer(vec![ok(0, 2, true, b"ab"), ok(0, 2, false, b"c")]),
            Some(Answer::Failed(r)) if r.contains("more than")
        ));
        assert!(matches!(
            answer(vec![ok(0, 3, false, b"ab")]),
            Some(Answer::Failed(r)) if r.contains("after 2 of the 3")
        ));
        assert!(matches!(
            answer(vec![ok(0, MAX_RESPONSE + 1, true, b"ab")]),
            Some(Answer::Failed(r)) if r.contains("512 MiB")
        ));
        assert_eq!(answer(vec![ok(0, 0, false, b"")]), Some(Answer::Ok(vec![])));
        // Every refused response is gone from the table: its later parts are dropped.
        assert!(p.lock().slots.is_empty());
    }

    #[test]
    fn the_end_answers_every_waiting_and_later_request() {
        let p = Pending::default();
        let (a, mut ra) = p.register().unwrap();
        let (b, rb) = p.register().unwrap();
        p.forget(b);
        drop(rb);
        p.part(ok(a, 4, true, b"ab"));
        assert!(p.last_heard(a).is_some());
        p.end();
        assert_eq!(ra.try_recv().unwrap(), Answer::Ended);
        assert!(p.register().is_none());
        assert_eq!(p.last_heard(a), None);
        // Already ended: returns at once.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(p.wait_ended());
    }
}

//! An answer to one module request, and its parts on the wire.
//!
//! A module zip can be hundreds of MB: it goes out in parts of at most
//! [`MODULE_RESPONSE_PART`] bytes, each read from the file when it is its turn, so neither the
//! whole file is held in memory nor other messages wait behind it.

use kdev_protocol::{MODULE_RESPONSE_PART, ModuleResponse, ModuleStatus};
use tokio::io::AsyncReadExt;

/// How a request was answered, before it is split into parts.
#[derive(Debug)]
pub struct Answer {
    pub status: ModuleStatus,
    /// Why it failed (empty when it did not).
    pub reason: String,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Bytes(Vec<u8>),
    File { file: tokio::fs::File, size: u64 },
}

impl Answer {
    pub fn bytes(body: Vec<u8>) -> Answer {
        Answer {
            status: ModuleStatus::Ok,
            reason: String::new(),
            body: Body::Bytes(body),
        }
    }

    /// `size` bytes from the start of `file`.
    pub fn file(file: tokio::fs::File, size: u64) -> Answer {
        Answer {
            status: ModuleStatus::Ok,
            reason: String::new(),
            body: Body::File { file, size },
        }
    }

    pub fn not_found(reason: impl Into<String>) -> Answer {
        Answer::error(ModuleStatus::NotFound, reason.into())
    }

    pub fn failed(reason: impl Into<String>) -> Answer {
        Answer::error(ModuleStatus::Failed, reason.into())
    }

    pub fn error(status: ModuleStatus, reason: String) -> Answer {
        Answer {
            status,
            reason,
            body: Body::Bytes(Vec::new()),
        }
    }

    /// The body's size.
    pub fn size(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::File { size, .. } => *size,
        }
    }

    /// The parts that answer request `id`.
    pub fn into_parts(self, id: u64) -> Parts {
        Parts {
            id,
            size: self.size(),
            status: self.status,
            reason: self.reason,
            body: self.body,
            sent: 0,
            done: false,
        }
    }
}

/// The parts of one answer, produced one at a time ([`Parts::next`]).
#[derive(Debug)]
pub struct Parts {
    id: u64,
    status: ModuleStatus,
    reason: String,
    size: u64,
    body: Body,
    sent: u64,
    done: bool,
}

impl Parts {
    /// The next part; `None` after the last (the one with `more: false`). At least one part
    /// comes, also for an empty body. A file that cannot be read to its size ends the answer
    /// with a `Failed` part.
    pub async fn next(&mut self) -> Option<ModuleResponse> {
        if self.done {
            return None;
        }
        let len = part_len(self.size, self.sent);
        let body = match &mut self.body {
            // Small bodies (most): moved out, not copied.
            Body::Bytes(b) if self.sent == 0 && b.len() == len => std::mem::take(b),
            Body::Bytes(b) => {
                let start = self.sent as usize;
                b[start..start + len].to_vec()
            }
            Body::File { file, .. } => {
                let mut buf = vec![0; len];
                if let Err(e) = file.read_exact(&mut buf).await {
                    self.done = true;
                    return Some(ModuleResponse {
                        id: self.id,
                        status: ModuleStatus::Failed,
                        reason: format!("reading the module cache file: {e}"),
                        size: self.size,
                        more: false,
                        body: Vec::new(),
                    });
                }
                buf
            }
        };
        self.sent += len as u64;
        let more = self.sent < self.size;
        self.done = !more;
        Some(ModuleResponse {
            id: self.id,
            status: self.status,
            reason: std::mem::take(&mut self.reason),
            size: self.size,
            more,
            body,
        })
    }
}

/// How many bytes the next part carries, `sent` of `size` being out already.
fn part_len(size: u64, sent: u64) -> usize {
    // At most MODULE_RESPONSE_PART, which is a usize.
    size.saturating_sub(sent).min(MODULE_RESPONSE_PART as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: usize = MODULE_RESPONSE_PART;

    async fn all(a: Answer) -> Vec<ModuleResponse> {
        let mut parts = a.into_parts(7);
        let mut out = Vec::new();
        while let Some(p) = parts.next().await {
            out.push(p);
        }
        out
    }

    fn bodies(parts: &[ModuleResponse]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.body.iter().copied()).collect()
    }

    /// Each part's length and `more`, checking what every part shares.
    fn shape(parts: &[ModuleResponse], size: u64) -> Vec<(usize, bool)> {
        for p in parts {
            assert_eq!((p.id, p.size), (7, size));
        }
        parts.iter().map(|p| (p.body.len(), p.more)).collect()
    }

    #[tokio::test]
    async fn bodies_are_split_into_parts_of_at_most_the_limit() {
        for (len, want) in [
            (0, vec![(0, false)]),
            (5, vec![(5, false)]),
            (PART, vec![(PART, false)]),
            (PART + 1, vec![(PART, true), (1, false)]),
            (2 * PART + 3, vec![(PART, true), (PART, true), (3, false)]),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let parts = all(Answer::bytes(data.clone())).await;
            assert_eq!(shape(&parts, len as u64), want, "{len} bytes");
            assert_eq!(bodies(&parts), data);
            assert!(parts.iter().all(|p| p.status == ModuleStatus::Ok));
        }
    }

    #[tokio::test]
    async fn a_file_is_read_part_by_part_and_a_short_one_fails_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.0.0.zip");
        let data: Vec<u8> = (0..PART + 10).map(|i| (i % 13) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let open = || async { tokio::fs::File::open(&path).await.unwrap() };
        let size = data.len() as u64;
        let parts = all(Answer::file(open().await, size)).await;
        assert_eq!(shape(&parts, size), [(PART, true), (10, false)]);
        assert_eq!(bodies(&parts), data);
        // Shorter than promised (it cannot happen in Go's cache, but a read can fail).
        let parts = all(Answer::file(open().await, size + 5)).await;
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].status, ModuleStatus::Failed);
        assert!(!parts[1].more);
        assert!(parts[1].reason.contains("reading"), "{}", parts[1].reason);
    }

    #[tokio::test]
    async fn an_error_is_one_part_with_its_reason() {
        let parts = all(Answer::not_found("no such version")).await;
        assert_eq!(shape(&parts, 0), [(0, false)]);
        assert_eq!(parts[0].status, ModuleStatus::NotFound);
        assert_eq!(parts[0].reason, "no such version");
    }
}

//! Small helpers used across the crate: clocks, atomic file replacement, error texts, lexical
//! paths.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Write a file atomically: temp file in the same directory, then rename over the target (the
/// protocol's, which the hash caches use too).
pub(crate) use kdev_protocol::hash_cache::write_atomically as write_atomic;

/// An error and its causes, `: `-separated: the text sent to the client (which has no other
/// way to see the causes).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `p` with `.` and `..` resolved lexically (no filesystem access).
pub(crate) fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write {0:?}")]
    struct Outer(&'static str, #[source] io::Error);

    #[test]
    fn chains_read_like_one_message() {
        let e = Outer("a/b", io::Error::other("disk full"));
        assert_eq!(error_chain(&e), "cannot write \"a/b\": disk full");
    }
}

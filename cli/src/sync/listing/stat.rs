//! lstat's view of a synced path (listing stage; what the hash cache and the safety net's
//! rescan compare), and opening a file without following a symlink or blocking on a FIFO.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use kdev_protocol::hash_cache::StatKey;
use kdev_protocol::{ContentHash, Entry, EntryKind};

use crate::sync::unsyncable::Reason;

/// lstat's view of one synced path: what the hash cache and the periodic rescan compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
    /// A symlink's target.
    pub target: Option<String>,
}

impl Stat {
    pub fn from_metadata(m: &Metadata, target: Option<String>) -> Stat {
        let ft = m.file_type();
        Stat {
            kind: if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::File
            },
            size: m.size(),
            mode: m.mode() & 0o7777,
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
            target,
        }
    }

    /// Whether, seen at `now`, any later write would show in mtime or ctime (see [`kdev_protocol::hash_cache::SETTLE`]).
    pub fn settled(&self, now: SystemTime) -> bool {
        kdev_protocol::hash_cache::settled(self.mtime, self.ctime, now)
    }

    /// What must be unchanged for a cached hash of the file to hold.
    pub fn key(&self) -> StatKey {
        StatKey {
            size: self.size,
            mtime: self.mtime,
            ctime: self.ctime,
            ino: self.ino,
            dev: self.dev,
        }
    }

    /// The listing entry for this stat (`hash` for files).
    pub fn entry(&self, wire: String, hash: Option<ContentHash>) -> Entry {
        Entry {
            path: wire,
            kind: self.kind,
            size: match self.kind {
                EntryKind::Dir => 0,
                EntryKind::Symlink => self.target.as_ref().map_or(0, |t| t.len() as u64),
                EntryKind::File => self.size,
            },
            mode: self.mode,
            hash,
            target: self.target.clone(),
        }
    }
}

/// Why [`open_regular`] did not open a file.
#[derive(Debug)]
pub enum OpenError {
    /// Gone, or a symlink now (`O_NOFOLLOW`): the next event or rescan sees what it became.
    Gone,
    /// Not a regular file any more (a FIFO, a socket, ...): why it cannot be synced.
    NotRegular(Reason),
    /// It cannot be read.
    Unreadable(std::io::Error),
}

/// Open a regular file for reading, never following a symlink and never blocking (a path that
/// became a FIFO since it was listed would block a plain open until a writer came), and check
/// that what was opened is still a regular file. Returns the file and its fstat.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, Metadata), OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Err(OpenError::Gone);
        }
        Err(e) => return Err(OpenError::Unreadable(e)),
    };
    let meta = file.metadata().map_err(OpenError::Unreadable)?;
    if meta.is_dir() {
        return Err(OpenError::Gone); // a directory now: its events say so
    }
    if !meta.is_file() {
        return Err(OpenError::NotRegular(Reason::of_special(meta.file_type())));
    }
    Ok((file, meta))
}

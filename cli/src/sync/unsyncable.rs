//! Local paths that cannot be synced, and why.
//!
//! The pod's tree holds regular files, directories and symlinks that stay inside the sync root,
//! under UTF-8 names. Anything else found locally is not an error that stops the sync (the rest
//! keeps syncing) and not silently dropped: the listing names it with a short reason, and the
//! caller warns once per path with the line that excludes it. An unsyncable path is left out of
//! the listing, as if excluded: the pod does not get it (and loses what it had there).

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// A path under the sync root that is not synced, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Unsyncable {
    /// Relative to the sync root.
    pub path: PathBuf,
    pub reason: Reason,
}

/// Why a path cannot be synced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A symlink to an absolute path (the pod's `/etc` is not yours).
    SymlinkAbsolute {
        target: String,
    },
    /// A symlink that resolves above the sync root, directly or through other links.
    SymlinkOutside {
        target: String,
    },
    /// A symlink whose target has `..` after a name (`a/top/..`): where it leads depends on
    /// whether that name is, or later becomes, a symlink, so the pod refuses it.
    SymlinkDotDot {
        target: String,
        suggestion: String,
    },
    /// A symlink that goes through too many links.
    SymlinkLoop {
        target: String,
    },
    /// A symlink whose target the protocol cannot carry.
    SymlinkTargetNotUtf8,
    Socket,
    Fifo,
    BlockDevice,
    CharDevice,
    /// A file that cannot be read (the text is the error, e.g. "permission denied").
    UnreadableFile(String),
    /// A directory that cannot be listed; nothing below it is synced.
    UnreadableDir(String),
    /// A name the protocol cannot carry.
    NameNotUtf8,
}

impl Reason {
    /// Why a path that is not a file, directory or symlink cannot be synced.
    pub fn of_special(ft: std::fs::FileType) -> Reason {
        if ft.is_fifo() {
            Reason::Fifo
        } else if ft.is_socket() {
            Reason::Socket
        } else if ft.is_block_device() {
            Reason::BlockDevice
        } else {
            Reason::CharDevice
        }
    }

    /// The short form of an I/O error for a reason's text: "permission denied", not
    /// "Permission denied (os error 13)".
    pub fn io_text(e: &io::Error) -> String {
        let text = e.to_string();
        let text = match text.rfind(" (os error ") {
            Some(i) => &text[..i],
            None => &text,
        };
        let mut chars = text.chars();
        match chars.next() {
            Some(c) => c.to_lowercase().chain(chars).collect(),
            None => String::new(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::SymlinkAbsolute { target } | Reason::SymlinkOutside { target } => {
                write!(f, "symlink to {target}, outside the sync root")
            }
            Reason::SymlinkDotDot { target, suggestion } => write!(
                f,
                "symlink to {target}, with `..` after a name (write it as {suggestion})"
            ),
            Reason::SymlinkLoop { target } => write!(f, "symlink to {target}, a loop of symlinks"),
            Reason::SymlinkTargetNotUtf8 => f.write_str("symlink whose target is not valid UTF-8"),
            Reason::Socket => f.write_str("a socket"),
            Reason::Fifo => f.write_str("a FIFO (named pipe)"),
            Reason::BlockDevice => f.write_str("a block device"),
            Reason::CharDevice => f.write_str("a character device"),
            Reason::UnreadableFile(e) => write!(f, "cannot read the file: {e}"),
            Reason::UnreadableDir(e) => write!(f, "cannot list the directory: {e}"),
            Reason::NameNotUtf8 => f.write_str("name is not valid UTF-8"),
        }
    }
}

impl fmt::Display for Unsyncable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl Unsyncable {
    pub fn new(path: impl Into<PathBuf>, reason: Reason) -> Unsyncable {
        Unsyncable {
            path: path.into(),
            reason,
        }
    }

    /// A `.gitignore`-syntax pattern that excludes exactly this path (anchored at the sync
    /// root, special characters escaped; bytes that are not UTF-8 become `*`, which never
    /// crosses a `/`).
    pub fn exclude_pattern(&self) -> String {
        exclude_pattern(&self.path)
    }

    /// The warning to show once: what, why, and how to make it go away.
    pub fn warning(&self) -> String {
        let p = self.exclude_pattern();
        format!(
            "{} cannot be synced: {}; skipped, everything else keeps syncing (to silence this, \
             exclude it: a `{p}` line in .kdevignore, or `sync.exclude: ['{p}']` in kdev.yaml)",
            self.path.display(),
            self.reason
        )
    }
}

fn exclude_pattern(path: &Path) -> String {
    let mut out = String::from("/");
    let bytes = path.as_os_str().as_bytes();
    // Whether the last thing written is a `*` for invalid bytes (invalid sequences come one
    // chunk each, and `**` means something else).
    let mut star = false;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if matches!(c, '\\' | '*' | '?' | '[' | ']' | '!' | '#' | ' ') {
                out.push('\\');
            }
            out.push(c);
            star = false;
        }
        if !chunk.invalid().is_empty() && !star {
            out.push('*');
            star = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn reasons_read_well() {
        let u = Unsyncable::new(
            "conf/etc",
            Reason::SymlinkAbsolute {
                target: "/etc".into(),
            },
        );
        assert_eq!(
            u.to_string(),
            "conf/etc: symlink to /etc, outside the sync root"
        );
        assert_eq!(
            Reason::UnreadableFile(Reason::io_text(&io::Error::from_raw_os_error(libc::EACCES)))
                .to_string(),
            "cannot read the file: permission denied"
        );
        assert!(u.warning().contains("`/conf/etc` line in .kdevignore"));
    }

    #[test]
    fn patterns_escape_and_anchor() {
        assert_eq!(exclude_pattern(Path::new("a/b.sock")), "/a/b.sock");
        assert_eq!(exclude_pattern(Path::new("a/[x]*?.go")), r"/a/\[x\]\*\?.go");
        assert_eq!(exclude_pattern(Path::new("#x !y ")), r"/\#x\ \!y\ ");
        let bad = Path::new(OsStr::from_bytes(b"d/bad\xff\xfe.go"));
        assert_eq!(exclude_pattern(bad), "/d/bad*.go");
    }
}

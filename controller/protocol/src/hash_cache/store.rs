//! The one file both hash caches are kept in across restarts (the CLI's under the user's cache
//! directory, one per sync root; the controller's in `/kdev/run`): [`Store`] loads and saves it.
//!
//! The file: `KDEVHC1\n`, the tag's length (u32 LE) and bytes (the sync root: a file of another
//! root is ignored), the entry count (u32 LE), then per entry the path's length (u32 LE) and
//! bytes, size, mtime seconds and nanoseconds, ctime seconds and nanoseconds, inode, device (each
//! 8 bytes LE), and the 32-byte BLAKE3 digest. Anything unreadable means "no cache".

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::StatKey;
use crate::hash::ContentHash;

const MAGIC: &[u8; 8] = b"KDEVHC1\n";

/// Encode a cache: `tag` (the sync root) and its (path, key, hash) entries.
fn encode<'a>(
    tag: &str,
    entries: impl ExactSizeIterator<Item = (&'a str, &'a StatKey, &'a ContentHash)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + tag.len() + entries.len() * 140);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(tag.len() as u32).to_le_bytes());
    out.extend_from_slice(tag.as_bytes());
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut n: u32 = 0;
    for (path, k, hash) in entries {
        let Some(digest) = unhex(hash) else { continue };
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        for v in [k.size, k.mtime.0 as u64, k.mtime.1 as u64, k.ctime.0 as u64]
            .into_iter()
            .chain([k.ctime.1 as u64, k.ino, k.dev])
        {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&digest);
        n += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
    out
}

/// Decode a cache written for `tag`; `None` when it is not one (another root, another format,
/// truncated).
fn decode(tag: &str, bytes: &[u8]) -> Option<Vec<(String, StatKey, ContentHash)>> {
    let mut r = bytes.strip_prefix(MAGIC.as_slice())?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = r.split_at_checked(n)?;
        r = b;
        Some(a)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let tag_len = u32_at(take(4)?);
    if take(tag_len)? != tag.as_bytes() {
        return None;
    }
    let count = u32_at(take(4)?);
    let mut out = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let len = u32_at(take(4)?);
        let path = std::str::from_utf8(take(len)?).ok()?.to_string();
        let nums = take(7 * 8)?;
        let v = |i: usize| u64::from_le_bytes(nums[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let key = StatKey {
            size: v(0),
            mtime: (v(1) as i64, v(2) as i64),
            ctime: (v(3) as i64, v(4) as i64),
            ino: v(5),
            dev: v(6),
        };
        let digest = take(32)?;
        out.push((path, key, hex(digest)));
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// Where a cache is kept across restarts: its file, and the tag (the sync root) it is kept
/// under. The CLI and the controller keep theirs the same way.
#[derive(Debug, Clone)]
pub struct Store {
    file: PathBuf,
    tag: String,
}

impl Store {
    /// The cache of sync root `root` kept in `file`, and the entries it holds now (`None` when
    /// the file is missing, unreadable or another root's).
    #[allow(clippy::type_complexity)]
    pub fn open(
        file: PathBuf,
        root: &Path,
    ) -> (Store, Option<Vec<(String, StatKey, ContentHash)>>) {
        let tag = root.to_string_lossy().into_owned();
        let entries = std::fs::read(&file).ok().and_then(|b| decode(&tag, &b));
        (Store { file, tag }, entries)
    }

    /// Replace the file's content with `entries`, atomically.
    pub fn save<'a>(
        &self,
        entries: impl ExactSizeIterator<Item = (&'a str, &'a StatKey, &'a ContentHash)>,
    ) -> io::Result<()> {
        write_atomically(&self.file, &encode(&self.tag, entries))
    }
}

/// Write `bytes` to `path` atomically (a temporary file renamed over it), creating its directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let k = StatKey {
            size: 12,
            mtime: (1_700_000_000, 5),
            ctime: (1_700_000_001, 999_999_999),
            ino: 42,
            dev: 7,
        };
        let h = crate::hash_bytes(b"x");
        let bytes = encode(
            "/src",
            [("a/b.go", &k, &h), ("c", &k, &"bad".to_string())].into_iter(),
        );
        let back = decode("/src", &bytes).unwrap();
        assert_eq!(
            back,
            vec![("a/b.go".to_string(), k, h)],
            "a malformed hash is left out"
        );
        assert_eq!(decode("/other", &bytes), None, "another root's cache");
        assert_eq!(decode("/src", &bytes[..bytes.len() - 1]), None, "truncated");
        assert_eq!(decode("/src", b"junk"), None);
    }
}

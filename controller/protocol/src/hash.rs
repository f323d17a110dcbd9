//! The content hash both sides use to decide what differs: BLAKE3 of the file's bytes,
//! lowercase hex (64 characters). Nothing else (name, mode, mtime) goes into it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// A lowercase-hex BLAKE3 digest, as it appears in [`crate::Entry::hash`].
pub type ContentHash = String;

/// Hash a byte slice.
pub fn hash_bytes(data: &[u8]) -> ContentHash {
    blake3::hash(data).to_hex().to_string()
}

/// Hash everything a reader yields.
pub fn hash_reader<R: Read>(mut r: R) -> io::Result<ContentHash> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The digest of a listing: equal digests mean equal entries (path, kind, size, mode, hash,
/// target, in order) and equal skipped paths. Each field is length-prefixed, so no two
/// listings encode alike.
pub fn listing_digest(entries: &[crate::Entry], skipped: &[crate::Refused]) -> String {
    fn field(h: &mut blake3::Hasher, bytes: Option<&[u8]>) {
        match bytes {
            None => h.update(&[0]),
            Some(b) => h
                .update(&[1])
                .update(&(b.len() as u64).to_le_bytes())
                .update(b),
        };
    }
    let mut h = blake3::Hasher::new();
    h.update(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        field(&mut h, Some(e.path.as_bytes()));
        h.update(&[e.kind as u8]);
        h.update(&e.size.to_le_bytes());
        h.update(&e.mode.to_le_bytes());
        field(&mut h, e.hash.as_deref().map(str::as_bytes));
        field(&mut h, e.target.as_deref().map(str::as_bytes));
    }
    h.update(&(skipped.len() as u64).to_le_bytes());
    for s in skipped {
        field(&mut h, Some(s.path.as_bytes()));
    }
    h.finalize().to_hex().to_string()
}

/// Hash a file's content.
pub fn hash_file(path: &Path) -> io::Result<ContentHash> {
    hash_reader(File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, EntryKind, Refused};

    fn file(path: &str, hash: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            size: 1,
            mode: 0o644,
            hash: Some(hash.into()),
            target: None,
        }
    }

    #[test]
    fn listing_digests_tell_every_field_apart() {
        let base = vec![file("a", "h1"), file("b", "h2")];
        let d = listing_digest(&base, &[]);
        assert_eq!(d, listing_digest(&base.clone(), &[]));
        let mut variants: Vec<Vec<Entry>> = Vec::new();
        let mut v = base.clone();
        v[1].hash = Some("h3".into());
        variants.push(v);
        let mut v = base.clone();
        v[0].mode = 0o755;
        variants.push(v);
        let mut v = base.clone();
        v[0].size = 2;
        variants.push(v);
        let mut v = base.clone();
        v[0].path = "a2".into();
        variants.push(v);
        let mut v = base.clone();
        v[0].kind = EntryKind::Symlink;
        variants.push(v);
        let mut v = base.clone();
        v[0].target = Some(String::new());
        variants.push(v);
        variants.push(base[..1].to_vec());
        // Length prefixes: moving a byte between two fields changes the digest.
        variants.push(vec![file("ab", "h1"), file("", "h2")]);
        for v in &variants {
            assert_ne!(listing_digest(v, &[]), d, "{v:?}");
        }
        let skipped = [Refused {
            path: "x".into(),
            reason: "why".into(),
        }];
        assert_ne!(listing_digest(&base, &skipped), d);
    }

    #[test]
    fn known_vector() {
        // BLAKE3 of the empty input.
        assert_eq!(
            hash_bytes(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(hash_reader(&b"abc"[..]).unwrap(), hash_bytes(b"abc"));
    }
}

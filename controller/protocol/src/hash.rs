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

/// Hash a file's content.
pub fn hash_file(path: &Path) -> io::Result<ContentHash> {
    hash_reader(File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

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

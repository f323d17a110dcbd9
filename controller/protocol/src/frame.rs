//! Length-delimited frames over blocking `std::io` streams.
//!
//! A frame is a `u32` big-endian payload length followed by the payload. The length is checked
//! against a maximum before any buffer is allocated, so a hostile or confused peer cannot make
//! the reader allocate gigabytes. A clean end of stream *between* frames is `Ok(None)`; an end
//! of stream inside a frame is [`FrameError::Truncated`].

use std::io::{self, Read, Write};

use crate::codec::{self, CodecError, WireMessage};

/// The largest frame either side accepts (64 MiB). A patch whose tar would exceed this must be
/// split into several patches by the client.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024 * 1024;

/// Errors reading or writing frames and the messages inside them.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than the limit.
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; the peer is not speaking the kdev \
         protocol, or a patch was not split (split large patches into several)"
    )]
    TooLarge { len: u64, max: u32 },
    /// The stream ended inside a frame.
    #[error(
        "stream ended inside a frame (got {got} of {expected} bytes); the peer went away mid-message"
    )]
    Truncated { got: usize, expected: usize },
    /// The payload was not a valid message.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Underlying I/O failure.
    #[error("I/O error on the kdev stream: {0}")]
    Io(#[from] io::Error),
}

/// Read exactly `buf.len()` bytes, returning how many were read before EOF.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Check a frame length against `max`.
pub fn check_len(len: u64, max: u32) -> Result<usize, FrameError> {
    if len > u64::from(max) {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len as usize)
}

/// Read one frame. `Ok(None)` on a clean end of stream before the first byte of a frame.
pub fn read_frame<R: Read + ?Sized>(r: &mut R, max: u32) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len_buf = [0u8; 4];
    let got = read_full(r, &mut len_buf)?;
    if got == 0 {
        return Ok(None);
    }
    if got < 4 {
        return Err(FrameError::Truncated { got, expected: 4 });
    }
    let len = check_len(u64::from(u32::from_be_bytes(len_buf)), max)?;
    // Grow the buffer as data arrives rather than trusting the length for the allocation: a
    // peer announcing 64 MiB and sending 10 bytes costs 10 bytes, not 64 MiB.
    let mut payload = Vec::with_capacity(len.min(1 << 20));
    let read = r.take(len as u64).read_to_end(&mut payload)?;
    if read < len {
        return Err(FrameError::Truncated {
            got: read,
            expected: len,
        });
    }
    Ok(Some(payload))
}

/// Write one frame (length prefix + payload) and flush.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let len = check_len(payload.len() as u64, MAX_FRAME_SIZE)?;
    w.write_all(&(len as u32).to_be_bytes())?;
    w.write_all(payload)?;
    w.flush()?;
    Ok(())
}

/// Read and decode one message. `Ok(None)` on a clean end of stream.
pub fn read_message<M: WireMessage, R: Read + ?Sized>(r: &mut R) -> Result<Option<M>, FrameError> {
    match read_frame(r, MAX_FRAME_SIZE)? {
        None => Ok(None),
        Some(payload) => Ok(Some(codec::decode_message(payload)?)),
    }
}

/// Encode and write one message as one frame, without copying its body, and flush.
pub fn write_message<M: WireMessage, W: Write + ?Sized>(
    w: &mut W,
    msg: &M,
) -> Result<(), FrameError> {
    let header = codec::encode_header(msg)?;
    let body = msg.body();
    let total = codec::payload_len(&header, body)?;
    w.write_all(&total.to_be_bytes())?;
    w.write_all(&(header.len() as u32).to_be_bytes())?;
    w.write_all(&header)?;
    w.write_all(body)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ClientMessage, ServerMessage};
    use std::io::Cursor;

    #[test]
    fn roundtrip_frames() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = Cursor::new(buf);
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let mut data = u32::MAX.to_be_bytes().to_vec();
        data.extend_from_slice(b"abc");
        let err = read_frame(&mut Cursor::new(data), MAX_FRAME_SIZE).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, .. } if len == u64::from(u32::MAX)),
            "{err}"
        );
        assert!(err.to_string().contains("exceeds the limit"));
    }

    #[test]
    fn truncated_frames() {
        let err = read_frame(&mut Cursor::new(vec![0u8, 0]), 100).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                got: 2,
                expected: 4
            }
        ));
        let mut data = 10u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"abc");
        let err = read_frame(&mut Cursor::new(data), 100).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                got: 3,
                expected: 10
            }
        ));
    }

    #[test]
    fn message_roundtrip_with_body() {
        let msg = ClientMessage::Patch(crate::messages::Patch {
            id: 7,
            deletes: vec!["a/b.go".into()],
            build: crate::messages::BuildMode::Auto,
            tar: vec![1, 2, 3, 0, 255],
        });
        let mut buf = Vec::new();
        write_message(&mut buf, &msg).unwrap();
        let back: ClientMessage = read_message(&mut Cursor::new(buf)).unwrap().unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn random_garbage_never_panics() {
        // A small deterministic xorshift generator: no dev-dependency needed.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = (s % 64) as usize;
            let mut data = Vec::with_capacity(len);
            for i in 0..len {
                data.push((s >> (i % 8 * 8)) as u8 ^ i as u8);
            }
            let mut r = Cursor::new(data);
            let _ = read_message::<ClientMessage, _>(&mut r);
            let mut r = Cursor::new(r.into_inner());
            let _ = read_message::<ServerMessage, _>(&mut r);
        }
    }
}

//! The bytes on the stream, independent of any message type: the one frame encoder and the one
//! frame decoder of the crate.
//!
//! A **frame** is a `u32` big-endian payload length followed by the payload. A **payload** is a
//! `u32` big-endian header length, the header (JSON), then a raw body (empty except for a
//! patch's tar and a module response's part):
//!
//! ```text
//! | frame len (4) | header len (4) | JSON header | body |
//!                 |<------------ payload ------------->|
//! ```
//!
//! [`encode_head`] produces everything up to the body, so a body is written without being
//! copied; [`FrameDecoder`] cuts frames out of whatever the stream delivers, keeping a partial
//! frame in its own buffer (which is what makes the readers in [`crate::codec`] cancel-safe).
//! The announced length is checked against the limit before anything is allocated for it, and
//! the buffer grows as data arrives, so a peer announcing 64 MiB and sending 10 bytes costs
//! 10 bytes.
//!
//! What a message is made of (its header and body) is the [`WireMessage`] trait, implemented
//! in [`crate::messages`]; typed reading and writing is [`crate::codec`].

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame either side accepts (64 MiB). A patch whose tar would exceed this must be
/// split into several patches by the client.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024 * 1024;

/// Errors encoding or decoding a message payload.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message payload of {0} bytes is too short to hold a header length")]
    Short(usize),
    #[error("message header claims {header} bytes but the payload holds only {available}")]
    HeaderOverrun { header: usize, available: usize },
    #[error("message header is not valid kdev protocol JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message of {0} bytes does not fit in one frame (limit {MAX_FRAME_SIZE}); split it")]
    TooLarge(u64),
    #[error("a {0} message must not carry a binary body")]
    UnexpectedBody(&'static str),
}

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

/// A message that travels in a frame: a JSON header plus an optional raw body.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The raw body that follows the JSON header (empty for most messages).
    fn body(&self) -> &[u8] {
        &[]
    }
    /// Hand a decoded body to the message. Messages without a body refuse a non-empty one.
    fn set_body(&mut self, body: Vec<u8>) -> Result<(), CodecError> {
        if body.is_empty() {
            Ok(())
        } else {
            Err(CodecError::UnexpectedBody(self.kind()))
        }
    }
    /// A short name for error messages.
    fn kind(&self) -> &'static str;
    /// Decode the JSON header. An internally tagged enum first buffers the whole header in
    /// serde's generic form (tens of bytes per string: GBs for a 64 MiB list), so a message
    /// that can be large decodes its own struct directly instead.
    fn from_header(header: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(header)
    }
}

/// The frame of `msg` up to its body: frame length, header length, JSON header. The body
/// ([`WireMessage::body`]) follows it on the stream.
pub(crate) fn encode_head<M: WireMessage>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let header = serde_json::to_vec(msg)?;
    let payload = 4u64 + header.len() as u64 + msg.body().len() as u64;
    if payload > u64::from(MAX_FRAME_SIZE) {
        return Err(CodecError::TooLarge(payload));
    }
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(&(payload as u32).to_be_bytes());
    head.extend_from_slice(&(header.len() as u32).to_be_bytes());
    head.extend_from_slice(&header);
    Ok(head)
}

/// One received frame, not yet decoded into a message.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The whole frame, its 4-byte length prefix included (so a large frame is handed over
    /// without moving its bytes).
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.len())
    }
}

impl Frame {
    /// A frame holding `payload` (tests build frames by hand).
    #[cfg(test)]
    pub(crate) fn from_payload(payload: &[u8]) -> Frame {
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        Frame { bytes }
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len() - 4
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The JSON header and the body.
    pub(crate) fn parts(&self) -> Result<(&[u8], &[u8]), CodecError> {
        let payload = &self.bytes[4..];
        let Some((hlen, rest)) = payload.split_first_chunk::<4>() else {
            return Err(CodecError::Short(payload.len()));
        };
        let hlen = u32::from_be_bytes(*hlen) as usize;
        if hlen > rest.len() {
            return Err(CodecError::HeaderOverrun {
                header: hlen,
                available: rest.len(),
            });
        }
        Ok(rest.split_at(hlen))
    }

    /// Decode the message, handing it the body without copying it.
    pub(crate) fn decode<M: WireMessage>(self) -> Result<M, CodecError> {
        let (header, _) = self.parts()?;
        let hlen = header.len();
        let mut msg = M::from_header(header)?;
        let mut body = self.bytes;
        body.drain(..8 + hlen);
        msg.set_body(body)?;
        Ok(msg)
    }
}

/// Reads never ask for less than this (so small frames arrive many to a read).
#[cfg_attr(not(any(feature = "tokio", feature = "blocking")), allow(dead_code))]
const READ_CHUNK: usize = 64 * 1024;

/// Cuts frames out of a byte stream. Bytes go into [`FrameDecoder::spare`] and are accounted
/// with [`FrameDecoder::filled`]; [`FrameDecoder::next_frame`] takes complete frames out. Every
/// byte received stays in the decoder until it is part of a frame that was taken, so a reader
/// may stop between two reads at any time without losing anything.
#[derive(Debug)]
#[cfg_attr(not(any(feature = "tokio", feature = "blocking")), allow(dead_code))]
pub(crate) struct FrameDecoder {
    /// `buf[..filled]` is data received and not yet taken; `buf[filled..]` is zeroed room to
    /// read into (kept initialised, so it is zeroed once, not once per read).
    buf: Vec<u8>,
    filled: usize,
    max: u32,
}

// Only the readers of the I/O features use it.
#[cfg_attr(not(any(feature = "tokio", feature = "blocking")), allow(dead_code))]
impl FrameDecoder {
    pub(crate) fn new(max: u32) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            filled: 0,
            max,
        }
    }

    /// The length of the frame at the front (prefix included), once its prefix is in.
    fn frame_end(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buf[..self.filled].first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if len > self.max {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max,
            });
        }
        Ok(Some(4 + len as usize))
    }

    /// Take the frame at the front, if it is complete. Fails as soon as a frame announces
    /// more than the limit (before anything is allocated for it).
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(end) = self.frame_end()? else {
            return Ok(None);
        };
        if self.filled < end {
            return Ok(None);
        }
        // Move the smaller part: a large frame keeps the buffer (and the next reads start a
        // new one); a small one is copied out.
        let bytes = if self.filled - end <= end {
            let rest = self.buf[end..self.filled].to_vec();
            let mut bytes = std::mem::replace(&mut self.buf, rest);
            bytes.truncate(end);
            self.filled = self.buf.len();
            bytes
        } else {
            let bytes = self.buf[..end].to_vec();
            self.buf.copy_within(end..self.filled, 0);
            self.filled -= end;
            bytes
        };
        Ok(Some(Frame { bytes }))
    }

    /// Room to read into: at least one byte, more as the frame at the front needs it, growing
    /// with what has arrived rather than with what a length prefix announces.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        let end = self.frame_end().ok().flatten().unwrap_or(4);
        let target = end
            .min(self.filled.saturating_mul(2))
            .max(self.filled + READ_CHUNK);
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Account for `n` bytes read into [`FrameDecoder::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        debug_assert!(self.filled + n <= self.buf.len());
        self.filled += n;
    }

    /// The stream ended: fine between frames, [`FrameError::Truncated`] inside one.
    pub(crate) fn eof(&self) -> Result<(), FrameError> {
        match self.frame_end()? {
            _ if self.filled == 0 => Ok(()),
            None => Err(FrameError::Truncated {
                got: self.filled,
                expected: 4,
            }),
            Some(end) => Err(FrameError::Truncated {
                got: self.filled - 4,
                expected: end - 4,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `data` in pieces of `step` bytes, collecting frames.
    fn feed(d: &mut FrameDecoder, data: &[u8], step: usize) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        for piece in data.chunks(step) {
            let mut piece = piece;
            while !piece.is_empty() {
                let room = d.spare();
                let n = room.len().min(piece.len());
                room[..n].copy_from_slice(&piece[..n]);
                d.filled(n);
                piece = &piece[n..];
                while let Some(f) = d.next_frame()? {
                    frames.push(f);
                }
            }
        }
        Ok(frames)
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn frames_come_out_whole_whatever_the_pieces() {
        let big = vec![7u8; 300_000];
        let mut data = frame(b"hello");
        data.extend(frame(b""));
        data.extend(frame(&big));
        data.extend(frame(b"after"));
        for step in [1, 3, 4, 5, 4096, 70_000, data.len()] {
            let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
            let frames = feed(&mut d, &data, step).unwrap();
            let payloads: Vec<&[u8]> = frames.iter().map(|f| &f.bytes[4..]).collect();
            assert_eq!(
                payloads,
                [&b"hello"[..], b"", &big, b"after"],
                "step {step}"
            );
            d.eof().unwrap();
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_before_allocation() {
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        let err = feed(&mut d, &u32::MAX.to_be_bytes(), 4).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, .. } if len == u64::from(u32::MAX)),
            "{err}"
        );
        assert!(err.to_string().contains("exceeds the limit"));
        assert!(d.buf.len() <= 4 + READ_CHUNK);
    }

    #[test]
    fn the_buffer_grows_with_the_data_not_with_the_announced_length() {
        let mut d = FrameDecoder::new(MAX_FRAME_SIZE);
        let mut data = MAX_FRAME_SIZE.to_be_bytes().to_vec();
        data.extend_from_slice(&[1; 10]);
        assert!(feed(&mut d, &data, 14).unwrap().is_empty());
        assert!(d.spare().len() <= READ_CHUNK, "{}", d.buf.len());
    }

    #[test]
    fn truncation_is_reported_with_what_arrived() {
        let mut d = FrameDecoder::new(100);
        feed(&mut d, &[0, 0], 2).unwrap();
        assert!(matches!(
            d.eof(),
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
        let mut d = FrameDecoder::new(100);
        let mut data = 10u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"abc");
        feed(&mut d, &data, 7).unwrap();
        assert!(matches!(
            d.eof(),
            Err(FrameError::Truncated {
                got: 3,
                expected: 10
            })
        ));
    }

    #[test]
    fn header_overrun_and_short_payloads() {
        let mut p = 100u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"{}");
        assert!(matches!(
            Frame::from_payload(&p).parts(),
            Err(CodecError::HeaderOverrun { .. })
        ));
        assert!(matches!(
            Frame::from_payload(b"ab").parts(),
            Err(CodecError::Short(2))
        ));
    }
}

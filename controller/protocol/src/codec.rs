//! The payload of a frame: `u32` big-endian header length, JSON header, raw body.
//!
//! The body is whatever [`WireMessage::body`] returns (only a patch's tar today); it is written
//! after the JSON without copying and handed back to the message with
//! [`WireMessage::set_body`] on decode.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::MAX_FRAME_SIZE;

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

pub(crate) fn encode_header<M: WireMessage>(msg: &M) -> Result<Vec<u8>, CodecError> {
    Ok(serde_json::to_vec(msg)?)
}

/// Total payload length (4 + header + body), checked against the frame limit.
pub(crate) fn payload_len(header: &[u8], body: &[u8]) -> Result<u32, CodecError> {
    let total = 4u64 + header.len() as u64 + body.len() as u64;
    if total > u64::from(MAX_FRAME_SIZE) {
        return Err(CodecError::TooLarge(total));
    }
    Ok(total as u32)
}

/// Encode a message into a frame payload (without the frame's own length prefix).
pub fn encode_message<M: WireMessage>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let header = encode_header(msg)?;
    let body = msg.body();
    let total = payload_len(&header, body)?;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    Ok(out)
}

/// Split a payload into its JSON header and body.
pub fn split_payload(payload: &[u8]) -> Result<(&[u8], &[u8]), CodecError> {
    if payload.len() < 4 {
        return Err(CodecError::Short(payload.len()));
    }
    let hlen = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    let rest = &payload[4..];
    if hlen > rest.len() {
        return Err(CodecError::HeaderOverrun {
            header: hlen,
            available: rest.len(),
        });
    }
    Ok(rest.split_at(hlen))
}

/// Decode a frame payload into a message.
pub fn decode_message<M: WireMessage>(mut payload: Vec<u8>) -> Result<M, CodecError> {
    let (header, _) = split_payload(&payload)?;
    let hlen = header.len();
    let mut msg = M::from_header(header)?;
    // Reuse the allocation for the body: drop the length prefix and header in place.
    payload.drain(..4 + hlen);
    msg.set_body(payload)?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ClientMessage, Ping};

    #[test]
    fn header_overrun_is_an_error() {
        let mut p = 100u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"{}");
        assert!(matches!(
            decode_message::<ClientMessage>(p),
            Err(CodecError::HeaderOverrun { .. })
        ));
    }

    #[test]
    fn unexpected_body_is_refused() {
        let mut p = encode_message(&ClientMessage::Ping(Ping { id: 1 })).unwrap();
        p.push(0);
        assert!(matches!(
            decode_message::<ClientMessage>(p),
            Err(CodecError::UnexpectedBody("ping"))
        ));
    }

    #[test]
    fn unknown_type_is_a_json_error() {
        let h = br#"{"type":"launch_missiles"}"#;
        let mut p = (h.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(h);
        let err = decode_message::<ClientMessage>(p).unwrap_err();
        assert!(
            err.to_string().contains("not valid kdev protocol JSON"),
            "{err}"
        );
    }
}

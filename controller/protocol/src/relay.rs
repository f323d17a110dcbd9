//! The forward relay's frames: what `kdev` and the relay in `kdev-controller supervise` say to
//! each other over one port-forward stream.
//!
//! `kdev` forwards a local port by opening a Kubernetes port-forward stream to the relay's port
//! (`AppStatus::relay_port`, on 127.0.0.1 in the pod), not to the app's; the relay connects to
//! the app for it. The relay outlives the app's restarts, so a stream can be opened before it is
//! needed (a warm spare), and the relay, which sees the app's exits as they happen, can make a
//! connection wait for the next app instead of failing (see the relay's module docs for what it
//! does and does not replay).
//!
//! Both directions are frames: a kind byte, a big-endian `u32` payload length, the payload
//! (at most [`MAX_PAYLOAD`]). The relay speaks first ([`HELLO`] with [`HELLO_PAYLOAD`]), so a
//! spare stream is known to reach a live relay before it is used; the client may send its
//! [`OPEN`] and data before reading it.

/// Client → relay: the first frame; payload: the app's port (`u16`, big-endian) and a flags
/// byte ([`OPEN_RESUME`]).
pub const OPEN: u8 = 0x01;
/// Client → relay: bytes from the local connection.
pub const DATA: u8 = 0x02;
/// Client → relay: the local connection will send no more (its write side is shut).
pub const EOF: u8 = 0x03;

/// Relay → client: the relay is there; payload [`HELLO_PAYLOAD`].
pub const HELLO: u8 = 0x80;
/// Relay → client: bytes from the app.
pub const APP_DATA: u8 = 0x82;
/// Relay → client: the app will send no more on this connection.
pub const APP_EOF: u8 = 0x83;
/// Relay → client: the relay gives up on this connection (no app accepted in time, a bad
/// frame); payload: a UTF-8 message. The stream ends after it.
pub const ERROR: u8 = 0x84;

pub const HELLO_PAYLOAD: &[u8] = b"kdev-relay/1";

/// [`OPEN`] flag: the connection may outlive the app process it reached: when the app closes it
/// because it is restarting, the relay connects to the next app instead of closing the client's
/// (for request/response protocols such as HTTP/1; not for a debugger's session).
pub const OPEN_RESUME: u8 = 0x01;

pub const HEADER_LEN: usize = 5;
/// The largest payload either side sends.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Append one frame to `out`.
pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Append `data` as as many [`DATA`] (or [`APP_DATA`]) frames as its size needs.
pub fn encode_data(kind: u8, data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_PAYLOAD) {
        encode(kind, chunk, out);
    }
}

/// The [`OPEN`] frame for `port`.
pub fn open(port: u16, flags: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 3);
    let p = port.to_be_bytes();
    encode(OPEN, &[p[0], p[1], flags], &mut out);
    out
}

/// An [`OPEN`] frame's port and flags.
pub fn parse_open(payload: &[u8]) -> Option<(u16, u8)> {
    match payload {
        [a, b, flags, ..] => Some((u16::from_be_bytes([*a, *b]), *flags)),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadFrame(pub String);

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadFrame {}

/// Take the first whole frame off the front of `buf`: `Ok(None)` until one is complete.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, BadFrame> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(BadFrame(format!(
            "relay frame of {len} bytes (kind {:#x}); at most {MAX_PAYLOAD}",
            buf[0]
        )));
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let kind = buf[0];
    let payload = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    buf.drain(..HEADER_LEN + len);
    Ok(Some((kind, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut wire = open(8080, OPEN_RESUME);
        encode_data(DATA, &vec![7u8; MAX_PAYLOAD + 10], &mut wire);
        encode(EOF, &[], &mut wire);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.push(byte);
            while let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0, OPEN);
        assert_eq!(parse_open(&got[0].1), Some((8080, OPEN_RESUME)));
        assert_eq!((got[1].0, got[1].1.len()), (DATA, MAX_PAYLOAD));
        assert_eq!((got[2].0, got[2].1.len()), (DATA, 10));
        assert_eq!(got[3], (EOF, vec![]));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = vec![DATA, 0, 1, 0, 1];
        assert!(decode(&mut buf).is_err());
    }
}

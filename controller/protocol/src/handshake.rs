//! The versioned handshake.
//!
//! The client sends [`Hello`] as its first frame; the server answers [`Welcome`], or an
//! [`ErrorMessage`] with `code = "protocol_version_mismatch"` naming both versions and what to
//! do, and exits non-zero. The server reads `protocol_version` from the JSON *before* decoding
//! the rest of the Hello, so a peer of another version always gets the clear error.

use std::io::{Read, Write};

use crate::codec::{self, CodecError};
use crate::frame::{self, FrameError, MAX_FRAME_SIZE};
use crate::messages::{ClientMessage, ErrorMessage, Hello, ServerMessage, Welcome};
use crate::{CRATE_VERSION, PROTOCOL_VERSION};

/// Error code of a version mismatch.
pub const VERSION_MISMATCH: &str = "protocol_version_mismatch";

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "kdev protocol mismatch: the client ({client_version}) speaks protocol {client}, \
         kdev-controller {controller_version} speaks protocol {server}; {advice}"
    )]
    VersionMismatch {
        client: u32,
        client_version: String,
        server: u32,
        controller_version: String,
        advice: &'static str,
    },
    #[error("the first message must be a kdev hello, got {0}; is the client a kdev CLI?")]
    NotHello(String),
    #[error("the controller refused the session ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("the controller closed the stream before answering the hello; see its stderr")]
    Closed,
    #[error("unexpected {0} message during the handshake")]
    Unexpected(&'static str),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl HandshakeError {
    /// The error frame the server sends for this failure.
    pub fn to_error_message(&self) -> ErrorMessage {
        let code = match self {
            HandshakeError::VersionMismatch { .. } => VERSION_MISMATCH,
            _ => "bad_hello",
        };
        ErrorMessage {
            code: code.into(),
            message: self.to_string(),
            fatal: true,
            id: None,
        }
    }
}

fn advice(client: u32, server: u32) -> &'static str {
    if client > server {
        "the controller in the pod is older than kdev: re-upload the controller (restart `kdev`, \
         which uploads its own controller) or upgrade kdev and the controller together"
    } else {
        "kdev is older than the controller in the pod: upgrade kdev, or re-upload the controller \
         that matches this kdev (restart `kdev`)"
    }
}

/// A JSON value of the handshake's first frame, kept only if it is a string or an unsigned
/// number; anything else (arrays, objects) is skipped without being stored. (An untagged enum
/// or a `serde_json::Value` would buffer all of it: GBs for a hostile 64 MiB frame.)
#[derive(Debug, Default)]
enum Scalar {
    Str(String),
    U64(u64),
    #[default]
    Other,
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::U64(v))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Server side: validate the first frame's payload and decode the Hello.
pub fn check_hello(payload: Vec<u8>) -> Result<Hello, HandshakeError> {
    let (header, _) = codec::split_payload(&payload)?;
    // Only these fields, each kept only if it has the expected type; everything else is
    // skipped without being stored (a `serde_json::Value` of a hostile 64 MiB frame takes GBs).
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "type", default)]
        ty: Scalar,
        #[serde(default)]
        protocol_version: Scalar,
        #[serde(default)]
        client_version: Scalar,
    }
    let head: Head = serde_json::from_slice(header)
        .map_err(|e| HandshakeError::NotHello(format!("invalid JSON ({e})")))?;
    let ty = match &head.ty {
        Scalar::Str(t) => t.as_str(),
        _ => "<no type>",
    };
    if ty != "hello" {
        return Err(HandshakeError::NotHello(format!("a {ty:?} message")));
    }
    let Scalar::U64(client) = head.protocol_version else {
        return Err(HandshakeError::NotHello(
            "a hello without protocol_version".into(),
        ));
    };
    let client_version = match head.client_version {
        Scalar::Str(v) => v,
        _ => "unknown version".to_string(),
    };
    if client != u64::from(PROTOCOL_VERSION) {
        let client = u32::try_from(client).unwrap_or(u32::MAX);
        return Err(HandshakeError::VersionMismatch {
            client,
            client_version,
            server: PROTOCOL_VERSION,
            controller_version: CRATE_VERSION.into(),
            advice: advice(client, PROTOCOL_VERSION),
        });
    }
    match codec::decode_message::<ClientMessage>(payload)? {
        ClientMessage::Hello(h) => Ok(h),
        other => Err(HandshakeError::NotHello(format!(
            "a {} message",
            codec::WireMessage::kind(&other)
        ))),
    }
}

/// Client side: interpret the server's first message.
pub fn check_welcome(msg: Option<ServerMessage>, hello: &Hello) -> Result<Welcome, HandshakeError> {
    match msg {
        None => Err(HandshakeError::Closed),
        Some(ServerMessage::Welcome(w)) if w.protocol_version == PROTOCOL_VERSION => Ok(w),
        Some(ServerMessage::Welcome(w)) => Err(HandshakeError::VersionMismatch {
            client: PROTOCOL_VERSION,
            client_version: hello.client_version.clone(),
            server: w.protocol_version,
            controller_version: w.controller_version,
            advice: advice(PROTOCOL_VERSION, w.protocol_version),
        }),
        Some(ServerMessage::Error(e)) => Err(HandshakeError::Refused {
            code: e.code,
            message: e.message,
        }),
        Some(other) => Err(HandshakeError::Unexpected(codec::WireMessage::kind(&other))),
    }
}

/// A Hello for this crate's protocol version.
pub fn hello(client_version: impl Into<String>, config: crate::messages::SessionConfig) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        client_version: client_version.into(),
        config,
    }
}

/// Client side, blocking: send `hello`, wait for the answer.
pub fn client_handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    hello: Hello,
) -> Result<Welcome, HandshakeError> {
    frame::write_message(w, &ClientMessage::Hello(hello.clone()))?;
    let msg = match frame::read_frame(r, MAX_FRAME_SIZE)? {
        None => None,
        Some(p) => Some(codec::decode_message::<ServerMessage>(p)?),
    };
    check_welcome(msg, &hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::SessionConfig;

    fn payload(json: &str) -> Vec<u8> {
        let mut p = (json.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(json.as_bytes());
        p
    }

    #[test]
    fn accepts_matching_hello() {
        let p = codec::encode_message(&ClientMessage::Hello(hello(
            "kdev test",
            SessionConfig::default(),
        )))
        .unwrap();
        assert_eq!(check_hello(p).unwrap().client_version, "kdev test");
    }

    #[test]
    fn mismatch_names_both_versions_even_with_unknown_fields() {
        let p = payload(
            r#"{"type":"hello","protocol_version":99,"client_version":"kdev 9.9","config":{"new":[1]},"x":1}"#,
        );
        let err = check_hello(p).unwrap_err();
        let msg = err.to_error_message();
        assert_eq!(msg.code, VERSION_MISMATCH);
        assert!(
            msg.message.contains("protocol 99")
                && msg
                    .message
                    .contains(&format!("protocol {PROTOCOL_VERSION}")),
            "{}",
            msg.message
        );
        assert!(
            msg.message.contains("kdev 9.9") && msg.message.contains("re-upload the controller")
        );
    }

    #[test]
    fn not_a_hello() {
        assert!(matches!(
            check_hello(payload(r#"{"type":"ping","id":1}"#)),
            Err(HandshakeError::NotHello(_))
        ));
        assert!(matches!(
            check_hello(payload("garbage")),
            Err(HandshakeError::NotHello(_))
        ));
    }
}

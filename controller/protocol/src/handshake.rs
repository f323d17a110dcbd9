//! The versioned handshake.
//!
//! The client sends [`Hello`] as its first frame; the server answers [`Welcome`], or an
//! [`ErrorMessage`] with code [`ErrorCode::ProtocolVersionMismatch`] naming both versions and
//! what to do, and exits non-zero. The server reads `protocol_version` from the JSON *before*
//! decoding the rest of the Hello ([`check_hello`]), so a peer of another version always gets
//! the clear error. The client side is [`client_handshake`] (feature `tokio`).

use crate::error_code::ErrorCode;
use crate::messages::{ClientMessage, ErrorMessage, Hello, SessionConfig};
use crate::wire::{CodecError, Frame, FrameError, WireMessage};
use crate::{CRATE_VERSION, PROTOCOL_VERSION};

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
    Refused { code: ErrorCode, message: String },
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
            HandshakeError::VersionMismatch { .. } => ErrorCode::ProtocolVersionMismatch,
            _ => ErrorCode::BadHello,
        };
        ErrorMessage {
            code,
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

/// Server side: validate the first frame and decode the Hello.
pub fn check_hello(frame: Frame) -> Result<Hello, HandshakeError> {
    let (header, _) = frame.parts()?;
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
    match frame.decode::<ClientMessage>()? {
        ClientMessage::Hello(h) => Ok(h),
        other => Err(HandshakeError::NotHello(format!(
            "a {} message",
            other.kind()
        ))),
    }
}

/// A Hello for this crate's protocol version.
pub fn hello(client_version: impl Into<String>, config: SessionConfig) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        client_version: client_version.into(),
        config,
    }
}

#[cfg(feature = "tokio")]
pub use client::client_handshake;

/// The client side (feature `tokio`).
#[cfg(feature = "tokio")]
mod client {
    use super::*;
    use crate::codec::ClientCodec;
    use crate::messages::{ServerMessage, Welcome};

    /// Client side: interpret the server's first message.
    fn check_welcome(msg: Option<ServerMessage>, hello: &Hello) -> Result<Welcome, HandshakeError> {
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
            Some(other) => Err(HandshakeError::Unexpected(other.kind())),
        }
    }

    /// Client side: send `hello`, wait for the Welcome (or the server's refusal). Use the same
    /// codec for the rest of the session: what follows the Welcome may already be in its buffer.
    pub async fn client_handshake<R, W>(
        codec: &mut ClientCodec,
        r: &mut R,
        w: &mut W,
        hello: Hello,
    ) -> Result<Welcome, HandshakeError>
    where
        R: tokio::io::AsyncRead + Unpin + ?Sized,
        W: tokio::io::AsyncWrite + Unpin + ?Sized,
    {
        codec.write(w, &ClientMessage::Hello(hello.clone())).await?;
        let msg = codec.read(r).await?;
        check_welcome(msg, &hello)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ClientCodec;

    fn payload(json: &str) -> Frame {
        let mut p = (json.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(json.as_bytes());
        Frame::from_payload(&p)
    }

    #[test]
    fn accepts_matching_hello() {
        let f = ClientCodec::encode(&ClientMessage::Hello(hello(
            "kdev test",
            SessionConfig::default(),
        )))
        .unwrap();
        let frame = Frame::from_payload(&f[4..]);
        assert_eq!(check_hello(frame).unwrap().client_version, "kdev test");
    }

    #[test]
    fn mismatch_names_both_versions_even_with_unknown_fields() {
        let p = payload(
            r#"{"type":"hello","protocol_version":99,"client_version":"kdev 9.9","config":{"new":[1]},"x":1}"#,
        );
        let err = check_hello(p).unwrap_err();
        let msg = err.to_error_message();
        assert_eq!(msg.code, ErrorCode::ProtocolVersionMismatch);
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

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn the_client_keeps_what_follows_the_welcome() {
        use crate::codec::ServerCodec;
        use crate::messages::{Event, PatchLimits, ServerMessage, Welcome};
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            controller_version: "test".into(),
            sync_root: "/kdev/src".into(),
            app_binary: "/kdev/bin/app".into(),
            app_binary_present: false,
            needs_build: true,
            supervisor_pid: None,
            app_status: None,
            max_frame_size: crate::MAX_FRAME_SIZE,
            module_env: Default::default(),
            limits: PatchLimits {
                max_entries: 1,
                max_file_size: 1,
                max_total_size: 1,
                max_extension_header: 1,
                max_deletes: 1,
            },
        };
        let warning = ServerMessage::Event {
            at_ms: 1,
            event: Event::AppOutputDropped { lines: 1 },
        };
        // The server's answer and the event that follows it arrive in one read.
        let mut from_server =
            ServerCodec::encode(&ServerMessage::Welcome(welcome.clone())).unwrap();
        from_server.extend(ServerCodec::encode(&warning).unwrap());
        let mut to_server = Vec::new();
        let mut codec = ClientCodec::new();
        let mut r = &from_server[..];
        let got = client_handshake(
            &mut codec,
            &mut r,
            &mut to_server,
            hello("kdev test", SessionConfig::default()),
        )
        .await
        .unwrap();
        assert_eq!(got, welcome);
        assert_eq!(codec.read(&mut r).await.unwrap(), Some(warning));
        let mut server = ServerCodec::new();
        let first = server
            .read_frame(&mut &to_server[..])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(check_hello(first).unwrap().client_version, "kdev test");
    }
}

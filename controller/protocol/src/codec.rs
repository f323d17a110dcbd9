//! Typed reading and writing of messages, one codec per direction: [`ClientCodec`] sends
//! [`ClientMessage`]s and receives [`ServerMessage`]s, [`ServerCodec`] the reverse, so neither
//! side can send (or expect) the other side's messages.
//!
//! Both are [`Codec<Tx, Rx>`]: [`Codec::encode`] and the `write` methods produce frames of
//! `Tx` through the one encoder in [`crate::wire`]; [`Codec::read`] (async, feature `tokio`)
//! and [`Codec::read_blocking`] (`std::io`, feature `blocking`) cut frames out of the stream
//! with the one decoder there and decode `Rx`.
//!
//! # Cancellation
//!
//! A codec owns a read buffer: every byte it has read stays there until it is part of a
//! complete frame that was handed out. [`Codec::read`] and [`Codec::read_frame`] are therefore
//! **cancel-safe**: when such a future is dropped before it completes (another branch of a
//! `tokio::select!` won), nothing is lost, and the next call on the same codec continues the
//! frame where the dropped one stopped. Keep using the same codec for the same stream (the
//! handshake's codec too: bytes that follow the Welcome may already be in its buffer).
//!
//! Writing is **not** cancel-safe: a dropped `write` may leave half a frame on the stream. Let
//! one task own the write half, or encode with [`Codec::encode`] and hand complete frames to a
//! writer.

use std::marker::PhantomData;

use crate::messages::{ClientMessage, ServerMessage};
use crate::wire::{self, CodecError, Frame, FrameDecoder, MAX_FRAME_SIZE, WireMessage};

/// Sends `Tx`, receives `Rx`. See the [module documentation](self).
pub struct Codec<Tx, Rx> {
    decoder: FrameDecoder,
    _direction: PhantomData<fn(Tx) -> Rx>,
}

/// The CLI's codec: sends [`ClientMessage`], receives [`ServerMessage`].
pub type ClientCodec = Codec<ClientMessage, ServerMessage>;

/// `kdev-controller serve`'s codec: sends [`ServerMessage`], receives [`ClientMessage`].
pub type ServerCodec = Codec<ServerMessage, ClientMessage>;

impl<Tx: WireMessage, Rx: WireMessage> Default for Codec<Tx, Rx> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Tx, Rx> std::fmt::Debug for Codec<Tx, Rx> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl<Tx: WireMessage, Rx: WireMessage> Codec<Tx, Rx> {
    /// A codec that accepts frames up to [`MAX_FRAME_SIZE`].
    pub fn new() -> Self {
        Self::with_max_frame_size(MAX_FRAME_SIZE)
    }

    /// A codec that refuses received frames over `max` bytes.
    fn with_max_frame_size(max: u32) -> Self {
        Codec {
            decoder: FrameDecoder::new(max),
            _direction: PhantomData,
        }
    }

    /// The whole frame of `msg` (its body copied in), e.g. to queue it for a writer task.
    pub fn encode(msg: &Tx) -> Result<Vec<u8>, CodecError> {
        let mut frame = wire::encode_head(msg)?;
        frame.extend_from_slice(msg.body());
        Ok(frame)
    }

    /// Decode a frame that [`Codec::read_frame`] returned.
    pub fn decode(frame: Frame) -> Result<Rx, CodecError> {
        frame.decode()
    }
}

#[cfg(feature = "tokio")]
mod asynchronous {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::*;
    use crate::wire::FrameError;

    impl<Tx: WireMessage, Rx: WireMessage> Codec<Tx, Rx> {
        /// Read one frame without decoding it. `Ok(None)` on a clean end of stream between
        /// frames. Cancel-safe (see the [module documentation](self)).
        pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
            &mut self,
            r: &mut R,
        ) -> Result<Option<Frame>, FrameError> {
            loop {
                if let Some(frame) = self.decoder.next_frame()? {
                    return Ok(Some(frame));
                }
                // The only await: a read that completes is accounted for before the next
                // await, so dropping this future loses no byte.
                match r.read(self.decoder.spare()).await {
                    Ok(0) => return self.decoder.eof().map(|()| None),
                    Ok(n) => self.decoder.filled(n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }

        /// Read and decode one message. `Ok(None)` on a clean end of stream between frames.
        /// Cancel-safe (see the [module documentation](self)).
        pub async fn read<R: AsyncRead + Unpin + ?Sized>(
            &mut self,
            r: &mut R,
        ) -> Result<Option<Rx>, FrameError> {
            match self.read_frame(r).await? {
                None => Ok(None),
                Some(frame) => Ok(Some(frame.decode()?)),
            }
        }

        /// Write `msg` as one frame (its body is not copied) and flush. Not cancel-safe.
        pub async fn write<W: AsyncWrite + Unpin + ?Sized>(
            &self,
            w: &mut W,
            msg: &Tx,
        ) -> Result<(), FrameError> {
            let head = wire::encode_head(msg)?;
            w.write_all(&head).await?;
            w.write_all(msg.body()).await?;
            w.flush().await?;
            Ok(())
        }
    }
}

#[cfg(feature = "blocking")]
mod blocking {
    use std::io::{Read, Write};

    use super::*;
    use crate::wire::FrameError;

    impl<Tx: WireMessage, Rx: WireMessage> Codec<Tx, Rx> {
        /// Blocking [`Codec::read_frame`]. A read error (`WouldBlock`, a timeout) loses
        /// nothing: the next call continues the frame.
        pub fn read_frame_blocking<R: Read + ?Sized>(
            &mut self,
            r: &mut R,
        ) -> Result<Option<Frame>, FrameError> {
            loop {
                if let Some(frame) = self.decoder.next_frame()? {
                    return Ok(Some(frame));
                }
                match r.read(self.decoder.spare()) {
                    Ok(0) => return self.decoder.eof().map(|()| None),
                    Ok(n) => self.decoder.filled(n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }

        /// Blocking [`Codec::read`].
        pub fn read_blocking<R: Read + ?Sized>(
            &mut self,
            r: &mut R,
        ) -> Result<Option<Rx>, FrameError> {
            match self.read_frame_blocking(r)? {
                None => Ok(None),
                Some(frame) => Ok(Some(frame.decode()?)),
            }
        }

        /// Blocking [`Codec::write`].
        pub fn write_blocking<W: Write + ?Sized>(
            &self,
            w: &mut W,
            msg: &Tx,
        ) -> Result<(), FrameError> {
            let head = wire::encode_head(msg)?;
            w.write_all(&head)?;
            w.write_all(msg.body())?;
            w.flush()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{BuildMode, Patch, Ping};
    use crate::wire::FrameError;

    fn patch() -> ClientMessage {
        ClientMessage::Patch(Patch {
            id: 7,
            deletes: vec!["a/b.go".into()],
            build: BuildMode::Auto,
            tar: vec![1, 2, 3, 0, 255],
        })
    }

    /// The bytes of a frame holding `json` as its header and no body.
    fn raw(json: &[u8]) -> Vec<u8> {
        let mut p = (json.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(json);
        let mut f = (p.len() as u32).to_be_bytes().to_vec();
        f.extend(p);
        f
    }

    #[test]
    fn the_wire_format_is_unchanged() {
        // Protocol 2's bytes for a patch: frame length, header length, JSON header, tar.
        let header = br#"{"type":"patch","id":7,"deletes":["a/b.go"],"build":"auto"}"#;
        let mut expected = ((4 + header.len() + 5) as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(&(header.len() as u32).to_be_bytes());
        expected.extend_from_slice(header);
        expected.extend_from_slice(&[1, 2, 3, 0, 255]);
        assert_eq!(ClientCodec::encode(&patch()).unwrap(), expected);
        let pong = ServerCodec::encode(&ServerMessage::Pong(Ping { id: 3 })).unwrap();
        assert_eq!(pong, raw(br#"{"type":"pong","id":3}"#));
    }

    #[test]
    fn unexpected_body_is_refused() {
        let mut f = ClientCodec::encode(&ClientMessage::Ping(Ping { id: 1 })).unwrap();
        f.push(0);
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_be_bytes());
        let frame = Frame::from_payload(&f[4..]);
        assert!(matches!(
            ServerCodec::decode(frame),
            Err(CodecError::UnexpectedBody("ping"))
        ));
    }

    #[test]
    fn unknown_type_is_a_json_error() {
        let frame = Frame::from_payload(&raw(br#"{"type":"launch_missiles"}"#)[4..]);
        let err = ServerCodec::decode(frame).unwrap_err();
        assert!(
            err.to_string().contains("not valid kdev protocol JSON"),
            "{err}"
        );
    }

    #[test]
    fn a_message_too_large_for_a_frame_is_not_encoded() {
        let big = ClientMessage::Patch(Patch {
            id: 1,
            deletes: vec![],
            build: BuildMode::Auto,
            tar: vec![0; MAX_FRAME_SIZE as usize],
        });
        assert!(matches!(
            ClientCodec::encode(&big),
            Err(CodecError::TooLarge(_))
        ));
    }

    #[cfg(feature = "blocking")]
    mod blocking {
        use std::io::Cursor;

        use super::*;

        #[test]
        fn roundtrip_with_body() {
            let mut buf = Vec::new();
            let client = ClientCodec::new();
            client.write_blocking(&mut buf, &patch()).unwrap();
            client
                .write_blocking(&mut buf, &ClientMessage::Bye)
                .unwrap();
            let mut server = ServerCodec::new();
            let mut r = Cursor::new(buf);
            assert_eq!(server.read_blocking(&mut r).unwrap(), Some(patch()));
            assert_eq!(
                server.read_blocking(&mut r).unwrap(),
                Some(ClientMessage::Bye)
            );
            assert_eq!(server.read_blocking(&mut r).unwrap(), None);
        }

        #[test]
        fn limits_and_truncation() {
            let mut data = u32::MAX.to_be_bytes().to_vec();
            data.extend_from_slice(b"abc");
            let err = ServerCodec::new()
                .read_frame_blocking(&mut Cursor::new(data))
                .unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
            let mut small = ServerCodec::with_max_frame_size(100);
            let err = small
                .read_frame_blocking(&mut Cursor::new(101u32.to_be_bytes()))
                .unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { len: 101, max: 100 }));
            let mut data = 10u32.to_be_bytes().to_vec();
            data.extend_from_slice(b"abc");
            let err = ServerCodec::new()
                .read_frame_blocking(&mut Cursor::new(data))
                .unwrap_err();
            assert!(matches!(
                err,
                FrameError::Truncated {
                    got: 3,
                    expected: 10
                }
            ));
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
                let _ = ServerCodec::new().read_blocking(&mut Cursor::new(&data));
                let _ = ClientCodec::new().read_blocking(&mut Cursor::new(&data));
            }
        }
    }

    #[cfg(feature = "tokio")]
    mod asynchronous {
        use std::future::Future;
        use std::pin::{Pin, pin};
        use std::task::{Context, Poll};

        use tokio::io::{AsyncRead, ReadBuf};

        use super::*;

        #[tokio::test]
        async fn async_and_blocking_writers_agree_and_frames_roundtrip() {
            let client = ClientCodec::new();
            let mut buf = Vec::new();
            client.write(&mut buf, &patch()).await.unwrap();
            client
                .write(&mut buf, &ClientMessage::Ping(Ping { id: 2 }))
                .await
                .unwrap();
            let mut expected = ClientCodec::encode(&patch()).unwrap();
            expected.extend(ClientCodec::encode(&ClientMessage::Ping(Ping { id: 2 })).unwrap());
            assert_eq!(buf, expected);
            let mut server = ServerCodec::new();
            let mut r = &buf[..];
            assert_eq!(server.read(&mut r).await.unwrap(), Some(patch()));
            assert!(matches!(
                server.read(&mut r).await.unwrap(),
                Some(ClientMessage::Ping(Ping { id: 2 }))
            ));
            assert!(server.read(&mut r).await.unwrap().is_none());
        }

        #[tokio::test]
        async fn async_oversized_and_truncated() {
            let mut r = &[0xffu8, 0xff, 0xff, 0xff, 1][..];
            assert!(matches!(
                ServerCodec::new().read_frame(&mut r).await,
                Err(FrameError::TooLarge { .. })
            ));
            let mut r = &[0u8, 0, 0, 5, 1][..];
            assert!(matches!(
                ServerCodec::new().read_frame(&mut r).await,
                Err(FrameError::Truncated {
                    got: 1,
                    expected: 5
                })
            ));
        }

        /// Hands out at most 3 bytes per read and says "not yet" every other time, like a slow
        /// network stream.
        struct Trickle {
            data: Vec<u8>,
            pos: usize,
            ready: bool,
        }

        impl AsyncRead for Trickle {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                self.ready = !self.ready;
                if !self.ready {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let n = (self.data.len() - self.pos).min(3).min(buf.remaining());
                let pos = self.pos;
                buf.put_slice(&self.data[pos..pos + n]);
                self.pos += n;
                Poll::Ready(Ok(()))
            }
        }

        /// Poll `fut` once and drop it, as a `select!` does when another branch wins.
        async fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
            let mut fut = pin!(fut);
            std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
                Poll::Ready(v) => Poll::Ready(Some(v)),
                Poll::Pending => Poll::Ready(None),
            })
            .await
        }

        #[tokio::test]
        async fn a_read_dropped_mid_frame_loses_nothing() {
            let msgs: Vec<ServerMessage> =
                (0..20).map(|id| ServerMessage::Pong(Ping { id })).collect();
            let mut data = Vec::new();
            for m in &msgs {
                data.extend(ServerCodec::encode(m).unwrap());
            }
            let len = data.len();
            let mut r = Trickle {
                data,
                pos: 0,
                ready: false,
            };
            let mut codec = ClientCodec::new();
            let mut got = Vec::new();
            let mut dropped = 0;
            // Every read future is polled once and dropped, most of them mid-frame.
            while got.len() < msgs.len() {
                match poll_once(codec.read(&mut r)).await {
                    Some(m) => got.push(m.unwrap().unwrap()),
                    None => dropped += 1,
                }
                assert!(dropped < 10 * len, "no progress");
            }
            assert!(dropped > msgs.len(), "{dropped} reads dropped");
            assert_eq!(got, msgs);
            assert!(codec.read(&mut r).await.unwrap().is_none());
        }

        #[tokio::test]
        async fn reads_in_a_select_loop_lose_nothing() {
            let (mut tx, mut rx) = tokio::io::duplex(7);
            let msgs: Vec<ClientMessage> = (0..50)
                .map(|id| ClientMessage::Ping(Ping { id }))
                .chain([patch(), ClientMessage::Bye])
                .collect();
            let sent = msgs.clone();
            let writer = tokio::spawn(async move {
                let codec = ClientCodec::new();
                for m in &sent {
                    codec.write(&mut tx, m).await.unwrap();
                }
            });
            let mut codec = ServerCodec::new();
            let mut got = Vec::new();
            let mut other = 0u64;
            loop {
                tokio::select! {
                    m = codec.read(&mut rx) => match m.unwrap() {
                        Some(m) => got.push(m),
                        None => break,
                    },
                    // Wins whenever the read has to wait, dropping the read future.
                    () = tokio::task::yield_now() => other += 1,
                }
            }
            writer.await.unwrap();
            assert_eq!(got, msgs);
            assert!(other > 0);
        }
    }
}

//! Async twins of [`crate::frame`] and [`crate::handshake::client_handshake`] over tokio's
//! `AsyncRead`/`AsyncWrite` (feature `tokio`). Same wire format, same limits.
//!
//! Cancellation: `read_frame_async` is not cancel-safe (a partially read frame is lost); keep
//! one reader task that owns the read half and forwards decoded messages over a channel.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, WireMessage};
use crate::frame::{FrameError, MAX_FRAME_SIZE, check_len};
use crate::handshake::{self, HandshakeError};
use crate::messages::{ClientMessage, Hello, ServerMessage, Welcome};

/// Read one frame. `Ok(None)` on a clean end of stream before the first byte of a frame.
pub async fn read_frame_async<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    max: u32,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len_buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated { got, expected: 4 });
        }
        got += n;
    }
    let len = check_len(u64::from(u32::from_be_bytes(len_buf)), max)?;
    let mut payload = Vec::with_capacity(len.min(1 << 20));
    let read = (&mut *r).take(len as u64).read_to_end(&mut payload).await?;
    if read < len {
        return Err(FrameError::Truncated {
            got: read,
            expected: len,
        });
    }
    Ok(Some(payload))
}

/// Write one frame and flush.
pub async fn write_frame_async<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = check_len(payload.len() as u64, MAX_FRAME_SIZE)?;
    w.write_all(&(len as u32).to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Read and decode one message. `Ok(None)` on a clean end of stream.
pub async fn read_message_async<M: WireMessage, R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<Option<M>, FrameError> {
    match read_frame_async(r, MAX_FRAME_SIZE).await? {
        None => Ok(None),
        Some(p) => Ok(Some(codec::decode_message(p)?)),
    }
}

/// Encode and write one message as one frame (body not copied) and flush.
pub async fn write_message_async<M: WireMessage, W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    msg: &M,
) -> Result<(), FrameError> {
    let header = codec::encode_header(msg)?;
    let body = msg.body();
    let total = codec::payload_len(&header, body)?;
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(&total.to_be_bytes());
    head.extend_from_slice(&(header.len() as u32).to_be_bytes());
    head.extend_from_slice(&header);
    w.write_all(&head).await?;
    w.write_all(body).await?;
    w.flush().await?;
    Ok(())
}

/// Client side: send `hello`, wait for the Welcome (or the server's refusal).
pub async fn client_handshake_async<R, W>(
    r: &mut R,
    w: &mut W,
    hello: Hello,
) -> Result<Welcome, HandshakeError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    write_message_async(w, &ClientMessage::Hello(hello.clone())).await?;
    let msg = read_message_async::<ServerMessage, _>(r).await?;
    handshake::check_welcome(msg, &hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Patch, Ping};

    #[tokio::test]
    async fn async_and_blocking_agree() {
        let msg = ClientMessage::Patch(Patch {
            id: 1,
            deletes: vec!["x".into()],
            build: Default::default(),
            tar: vec![9; 1000],
        });
        let mut buf = Vec::new();
        write_message_async(&mut buf, &msg).await.unwrap();
        write_message_async(&mut buf, &ClientMessage::Ping(Ping { id: 2 }))
            .await
            .unwrap();
        let mut blocking = Vec::new();
        crate::frame::write_message(&mut blocking, &msg).unwrap();
        crate::frame::write_message(&mut blocking, &ClientMessage::Ping(Ping { id: 2 })).unwrap();
        assert_eq!(buf, blocking);
        let mut r = &buf[..];
        assert_eq!(
            read_message_async::<ClientMessage, _>(&mut r)
                .await
                .unwrap()
                .unwrap(),
            msg
        );
        assert!(matches!(
            read_message_async::<ClientMessage, _>(&mut r)
                .await
                .unwrap(),
            Some(ClientMessage::Ping(_))
        ));
        assert!(
            read_message_async::<ClientMessage, _>(&mut r)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn async_oversized_and_truncated() {
        let mut r = &[0xffu8, 0xff, 0xff, 0xff, 1][..];
        assert!(matches!(
            read_frame_async(&mut r, MAX_FRAME_SIZE).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut r = &[0u8, 0, 0, 5, 1][..];
        assert!(matches!(
            read_frame_async(&mut r, MAX_FRAME_SIZE).await,
            Err(FrameError::Truncated {
                got: 1,
                expected: 5
            })
        ));
    }
}

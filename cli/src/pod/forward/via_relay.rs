//! Forwarding through the pod's relay: a warm spare stream if there is one, else a new one;
//! the client's bytes go as [`kdev_protocol::relay`] frames and the app's come back as frames
//! (the relay in `kdev-controller supervise` connects to the app and outlives its restarts).

use kdev_protocol::relay as frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::dial::dial;
use super::relay_spares::RelaySpare;
use super::spare_pool::SparePool;
use super::target::ForwardTarget;

/// Forward `conn` to port `remote` of the app, through the relay listening on `relay`.
pub(super) async fn via_relay(
    target: &ForwardTarget,
    relay: u16,
    conn: TcpStream,
    remote: u16,
    spares: &SparePool<RelaySpare>,
) -> Result<(), String> {
    let pod = &target.pod;
    let (pf, stream) = match spares.take(target) {
        Some(s) => {
            tracing::debug!("on a warm spare stream");
            (s.pf, s.stream)
        }
        None => dial(target, relay).await?,
    };
    // Delve's connections end with their Delve; the app's may reach the next app.
    let flags = if target.delve == Some(remote) {
        0
    } else {
        frame::OPEN_RESUME
    };
    let (mut from_relay, mut to_relay) = tokio::io::split(stream);
    let (mut from_client, mut to_client) = conn.into_split();
    let up = client_to_relay(&mut from_client, &mut to_relay, remote, flags);
    let down = relay_to_client(&mut from_relay, &mut to_client);
    tokio::pin!(up, down);
    let mut up_done = false;
    let outcome = loop {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                // The client reset its connection, or the stream broke (`down` says which).
                Err(_) => break Ok(()),
            },
            r = &mut down => match r {
                // The app closed its side: done once the client closes its own.
                Ok(true) if !up_done => {
                    let _ = (&mut up).await;
                    break Ok(());
                }
                Ok(_) => break Ok(()),
                Err(e) => break Err(format!("{pod}:{remote}: {e}")),
            },
        }
    };
    // The port-forward winds down in the background.
    pf.abort();
    outcome
}

/// Client → relay: the OPEN frame, then the client's bytes as DATA frames until the client
/// shuts its side (then EOF).
async fn client_to_relay(
    from_client: &mut OwnedReadHalf,
    to_relay: &mut WriteHalf<DuplexStream>,
    remote: u16,
    flags: u8,
) -> std::io::Result<()> {
    to_relay.write_all(&frame::open(remote, flags)).await?;
    let mut buf = vec![0u8; frame::MAX_PAYLOAD];
    let mut out = Vec::with_capacity(frame::MAX_PAYLOAD + frame::HEADER_LEN);
    loop {
        let n = from_client.read(&mut buf).await?;
        out.clear();
        if n == 0 {
            frame::encode(frame::EOF, &[], &mut out);
            to_relay.write_all(&out).await?;
            return Ok(());
        }
        frame::encode(frame::DATA, &buf[..n], &mut out);
        to_relay.write_all(&out).await?;
    }
}

/// Relay → client, until the app's side ends: `true` when the app closed it (APP_EOF), `false`
/// when the client is gone.
async fn relay_to_client(
    from_relay: &mut ReadHalf<DuplexStream>,
    to_client: &mut OwnedWriteHalf,
) -> Result<bool, String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((kind, payload)) = frame::decode(&mut buf).map_err(|e| e.to_string())? {
            match kind {
                frame::HELLO => {}
                frame::APP_DATA => {
                    if to_client.write_all(&payload).await.is_err() {
                        // The client is gone; `client_to_relay` sees it too.
                        return Ok(false);
                    }
                }
                frame::APP_EOF => {
                    let _ = to_client.shutdown().await;
                    return Ok(true);
                }
                frame::ERROR => return Err(String::from_utf8_lossy(&payload).into_owned()),
                other => return Err(format!("unexpected relay frame {other:#x}")),
            }
        }
        let n = from_relay
            .read(&mut chunk)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the port-forward stream ended".to_string());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

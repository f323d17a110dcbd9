//! An exec stream (the Kubernetes v4/v5 channel protocol over a WebSocket) with large stdin
//! messages, for the session's one long-lived stream.
//!
//! kube's own `Api::exec` reads stdin through a pipe of `AttachParams::max_stdin_buf_size`
//! (default 1 KiB) and a `ReaderStream` of 4 KiB, and sends every read as one WebSocket message,
//! each flushed on its own: a 50 MB initial sync became 50,000 messages (a TLS record and a
//! write each), most of its time. Here every read of stdin takes up to [`STDIN_MESSAGE`] bytes,
//! so a patch goes out in a few hundred messages. The rest is kube's: the request
//! ([`kube::core::Request::exec`]), the upgrade and the negotiated protocol
//! ([`kube::Client::connect`]).

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, SimplexStream, WriteHalf};
use tokio_tungstenite::tungstenite::Message;

use crate::task::AbortOnDrop;

/// The largest stdin payload of one WebSocket message.
const STDIN_MESSAGE: usize = 256 * 1024;
/// The pipes between the session and the WebSocket loop.
const PIPE: usize = 1024 * 1024;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
/// v5: "this channel reached EOF".
const CLOSE: u8 = 255;

/// A running exec: its stdio, and the task that moves bytes between them and the WebSocket
/// (stopped when this is dropped).
pub struct ExecStream {
    pub stdin: WriteHalf<SimplexStream>,
    pub stdout: ReadHalf<SimplexStream>,
    pub stderr: ReadHalf<SimplexStream>,
    pub task: AbortOnDrop,
}

/// Run `command` in `container` of pod `pod`, with stdin, stdout and stderr.
pub async fn exec(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: Vec<String>,
) -> Result<ExecStream, kube::Error> {
    let params = AttachParams::default()
        .container(container)
        .stdin(true)
        .stdout(true)
        .stderr(true);
    let request = kube::core::Request::new(pods.resource_url())
        .exec(pod, command, &params)
        .map_err(kube::Error::BuildRequest)?;
    let connection = pods.clone().into_client().connect(request).await?;
    let stream_close = connection.supports_stream_close();
    let ws = connection.into_stream();
    let (stdin_r, stdin) = tokio::io::simplex(PIPE);
    let (stdout, stdout_w) = tokio::io::simplex(PIPE);
    let (stderr, stderr_w) = tokio::io::simplex(PIPE);
    let task = tokio::spawn(async move {
        let (mut stdout_w, mut stderr_w) = (stdout_w, stderr_w);
        if let Err(e) = pump(ws, stream_close, stdin_r, &mut stdout_w, &mut stderr_w).await {
            tracing::debug!("exec stream ended: {e}");
        }
        // The readers' EOF. Dropping a simplex stream's write half does not give one (the read
        // half shares the stream): a controller that exited at once went unnoticed until the
        // handshake's 30 s deadline.
        let _ = stdout_w.shutdown().await;
        let _ = stderr_w.shutdown().await;
    });
    Ok(ExecStream {
        stdin,
        stdout,
        stderr,
        task: AbortOnDrop::new(task),
    })
}

/// Move bytes until the stream ends (the caller then shuts the stdout/stderr writers down).
async fn pump<S>(
    ws: S,
    stream_close: bool,
    mut stdin: ReadHalf<SimplexStream>,
    stdout: &mut WriteHalf<SimplexStream>,
    stderr: &mut WriteHalf<SimplexStream>,
) -> Result<(), String>
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let mut buf = vec![0u8; 1 + STDIN_MESSAGE];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            // Cancel-safe: a read that completes is handled before the next await.
            n = stdin.read(&mut buf[1..]), if stdin_open => match n {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    if stream_close {
                        tx.send(Message::binary(vec![CLOSE, STDIN])).await.map_err(|e| e.to_string())?;
                    } else {
                        tx.close().await.map_err(|e| e.to_string())?;
                    }
                }
                Ok(n) => {
                    buf[0] = STDIN;
                    tx.send(Message::binary(buf[..=n].to_vec())).await.map_err(|e| e.to_string())?;
                }
            },
            msg = rx.next() => match msg {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(Message::Binary(b))) if b.len() > 1 => match b[0] {
                    STDOUT => stdout.write_all(&b[1..]).await.map_err(|e| e.to_string())?,
                    STDERR => {
                        // Nobody may read stderr any more; that must not stop stdout.
                        let _ = stderr.write_all(&b[1..]).await;
                    }
                    STATUS => {
                        tracing::debug!("exec status: {}", String::from_utf8_lossy(&b[1..]));
                        return Ok(());
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}

//! One side of a debugger connection, as whole messages: a reader task that parses the
//! protocol's framing into JSON values, and the write half that frames them again.
//!
//! Delve speaks two protocols on one port and tells them apart by the first byte
//! (`service/rpccommon/server.go`): DAP (`Content-Length: N\r\n\r\n` + N bytes of JSON) or
//! JSON-RPC 1.0 as Go's `net/rpc/jsonrpc` writes it (JSON objects one after another).

use std::io;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// A DAP message larger than this is refused (Delve's own are a few KiB; variables with big
/// strings are cut by Delve long before this).
const MAX_MESSAGE: usize = 64 << 20;

/// How messages are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Debug Adapter Protocol: a `Content-Length` header, then the JSON body.
    Dap,
    /// Delve's JSON-RPC: a stream of JSON objects.
    JsonRpc,
}

impl Framing {
    /// The framing a client speaks, from its first byte (as Delve decides it).
    pub fn of_first_byte(b: u8) -> Framing {
        if b == b'C' {
            Framing::Dap
        } else {
            Framing::JsonRpc
        }
    }

    /// `msg` as bytes on the wire.
    pub fn encode(self, msg: &Value) -> Vec<u8> {
        let body = msg.to_string();
        match self {
            Framing::Dap => {
                let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
                out.extend_from_slice(body.as_bytes());
                out
            }
            Framing::JsonRpc => {
                let mut out = body.into_bytes();
                out.push(b'\n');
                out
            }
        }
    }
}

/// A connection as whole messages. `recv` gives `None` once the peer closed it (or sent
/// something that is not the protocol: the connection cannot be followed after that).
pub struct Link<W> {
    framing: Framing,
    incoming: mpsc::Receiver<Value>,
    write: W,
}

impl<W: AsyncWrite + Unpin> Link<W> {
    /// Start reading `read` in a task of its own.
    pub fn new<R>(framing: Framing, read: R, write: W) -> Link<W>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (tx, incoming) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut read = BufReader::new(read);
            let mut text = Vec::new();
            loop {
                let msg = match framing {
                    Framing::Dap => read_dap(&mut read).await,
                    Framing::JsonRpc => read_json(&mut read, &mut text).await,
                };
                match msg {
                    Ok(Some(v)) => {
                        if tx.send(v).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(target: "kdev::debugger", "{framing:?} stream: {e}");
                        return;
                    }
                }
            }
        });
        Link {
            framing,
            incoming,
            write,
        }
    }

    /// The next message, `None` once the stream ended.
    pub async fn recv(&mut self) -> Option<Value> {
        self.incoming.recv().await
    }

    pub async fn send(&mut self, msg: &Value) -> io::Result<()> {
        self.write.write_all(&self.framing.encode(msg)).await?;
        self.write.flush().await
    }
}

/// One DAP message; `None` at a clean end of the stream.
async fn read_dap<R: AsyncRead + Unpin>(read: &mut BufReader<R>) -> io::Result<Option<Value>> {
    let mut length = None;
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return if length.is_none() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let header = line.trim_end();
        if header.is_empty() {
            if length.is_some() {
                break;
            }
            continue;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a DAP message of {length} bytes"),
        ));
    }
    let mut body = vec![0; length];
    read.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One JSON value of a JSON-RPC stream; `None` at a clean end of the stream. `text` holds
/// what was read past the previous value (a peer may send two at once).
async fn read_json<R: AsyncRead + Unpin>(
    read: &mut BufReader<R>,
    text: &mut Vec<u8>,
) -> io::Result<Option<Value>> {
    loop {
        if !text.is_empty() {
            let mut values = serde_json::Deserializer::from_slice(text).into_iter::<Value>();
            match values.next() {
                Some(Ok(v)) => {
                    let used = values.byte_offset();
                    text.drain(..used);
                    return Ok(Some(v));
                }
                Some(Err(e)) if e.is_eof() => {}
                None => text.clear(),
                Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if text.len() > MAX_MESSAGE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a JSON-RPC message larger than 64 MiB",
                ));
            }
        }
        let chunk = read.fill_buf().await?;
        if chunk.is_empty() {
            return if text.iter().all(u8::is_ascii_whitespace) {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let n = chunk.len();
        text.extend_from_slice(chunk);
        read.consume(n);
    }
}

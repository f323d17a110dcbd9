//! Asking a running session for its status (`kdev status`): one GET to its API.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::model::SessionStatus;
use super::registry::Entry;

/// A session that does not answer within this is reported as not answering.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The status of the session `entry` describes.
pub async fn fetch(entry: &Entry) -> Result<SessionStatus> {
    tokio::time::timeout(TIMEOUT, get(entry, "/api/status"))
        .await
        .map_err(|_| anyhow!("it did not answer within {}s", TIMEOUT.as_secs()))?
}

async fn get(entry: &Entry, path: &str) -> Result<SessionStatus> {
    let authority = entry
        .api
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// address: {}", entry.api))?;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {}", entry.api))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", entry.token),
        )
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(anyhow!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).context("its answer is not a status")
}

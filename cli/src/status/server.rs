//! The session's status API and page on 127.0.0.1 (see `API.md` beside this file).
//!
//! Nothing is served without the session's token (in the `Authorization` header, or the
//! `token` query parameter for the page and its event stream), nor to a request whose `Host`
//! is not this machine's loopback (a web page elsewhere cannot reach it by DNS rebinding).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::hub::{Command, CommandError, Hub};

/// The page: one file, every asset inside it (works offline).
const PAGE: &str = include_str!("web/index.html");

/// Coalesce status changes into at most a few events per second.
const STATUS_EVENT_DELAY: Duration = Duration::from_millis(150);
/// A comment on an idle event stream, so proxies and browsers keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

/// Listen on 127.0.0.1 (a port of the system's choice) and serve `hub` until the process
/// ends. Returns the address.
pub async fn start(hub: Arc<Hub>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, most likely: try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let hub = hub.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let hub = hub.clone();
                async move { Ok::<_, Infallible>(handle(&hub, addr.port(), req).await) }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn handle(hub: &Arc<Hub>, port: u16, req: Request<Incoming>) -> Response<Body> {
    if !local_host(&req, port) {
        return json_error(
            StatusCode::FORBIDDEN,
            "only 127.0.0.1 and localhost are served",
        );
    }
    let query = Query::parse(req.uri().query().unwrap_or(""));
    if !authorized(&req, &query, hub.token()) {
        let message = "this request's token is not valid: open the URL kdev printed";
        return if req.uri().path() == "/" {
            text(
                StatusCode::UNAUTHORIZED,
                "text/plain; charset=utf-8",
                message,
            )
        } else {
            json_error(StatusCode::UNAUTHORIZED, message)
        };
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => text(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        (&Method::GET, ["api", "status"]) => json(StatusCode::OK, &hub.snapshot()),
        (&Method::GET, ["api", "logs"]) => {
            let after = query.number("after").unwrap_or(0);
            let limit = query.number("limit").unwrap_or(1000) as usize;
            let (lines, next) = hub.logs_after(after, limit);
            json(
                StatusCode::OK,
                &serde_json::json!({"lines": lines, "next": next}),
            )
        }
        (&Method::GET, ["api", "events"]) => events(hub.clone(), query.number("after")),
        (&Method::POST, ["api", "services", name, action]) => {
            let Some(command) = Command::parse(action) else {
                return json_error(
                    StatusCode::NOT_FOUND,
                    &format!("no action {action}: rebuild, restart, pause or resume"),
                );
            };
            // The body is not used; read it so the connection can be kept alive.
            let _ = req.into_body().collect().await;
            match hub.command(name, command) {
                Ok(()) => json(StatusCode::ACCEPTED, &serde_json::json!({"ok": true})),
                Err(e @ CommandError::NoService(_)) => {
                    json_error(StatusCode::NOT_FOUND, &e.to_string())
                }
                Err(e) => json_error(StatusCode::CONFLICT, &e.to_string()),
            }
        }
        (_, ["api", ..]) | (_, [""]) => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "not with this method")
        }
        _ => json_error(StatusCode::NOT_FOUND, "no such page"),
    }
}

/// Server-sent events: the status whenever it changed (one at once), each new log line (and
/// those after `after`, when given), a keep-alive comment while idle.
fn events(hub: Arc<Hub>, after: Option<u64>) -> Response<Body> {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    tokio::spawn(async move {
        let mut version = hub.watch_version();
        let (mut logs, newest) = hub.subscribe_logs();
        let mut last_seq = newest;
        if let Some(after) = after {
            let (lines, _) = hub.logs_after(after, usize::MAX);
            for l in lines.into_iter().filter(|l| l.seq <= newest) {
                last_seq = l.seq;
                if tx.send(Ok(event("log", &l))).await.is_err() {
                    return;
                }
            }
        }
        if tx.send(Ok(event("status", &hub.snapshot()))).await.is_err() {
            return;
        }
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.reset();
        loop {
            let frame = tokio::select! {
                changed = version.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(STATUS_EVENT_DELAY).await;
                    version.borrow_and_update();
                    event("status", &hub.snapshot())
                }
                line = logs.recv() => match line {
                    Ok(l) if l.seq <= last_seq => continue,
                    Ok(l) => {
                        last_seq = l.seq;
                        event("log", &l)
                    }
                    // Too slow a reader: the lines it missed come from the kept log.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let (lines, _) = hub.logs_after(last_seq, usize::MAX);
                        let mut text = String::new();
                        for l in lines {
                            last_seq = l.seq;
                            text.push_str(&event_text("log", &l));
                        }
                        Frame::data(Bytes::from(text))
                    }
                    Err(_) => return,
                },
                _ = keep_alive.tick() => Frame::data(Bytes::from_static(b": keep-alive\n\n")),
            };
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(BoxBody::new(StreamBody::new(rx.map(|f| f))));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn event(name: &str, data: &impl serde::Serialize) -> Frame<Bytes> {
    Frame::data(Bytes::from(event_text(name, data)))
}

fn event_text(name: &str, data: &impl serde::Serialize) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    format!("event: {name}\ndata: {json}\n\n")
}

/// A request for this machine's loopback on our port.
fn local_host(req: &Request<Incoming>, port: u16) -> bool {
    let Some(host) = req.headers().get(hyper::header::HOST) else {
        return false;
    };
    let host = host.to_str().unwrap_or("");
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|h| host == format!("{h}:{port}"))
}

fn authorized(req: &Request<Incoming>, query: &Query, token: &str) -> bool {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = header.or(query.get("token")).unwrap_or("");
    same(given.as_bytes(), token.as_bytes())
}

/// Equal, in a time that does not tell how much of the token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A request's query parameters (no percent-decoding: kdev's own values need none).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }
}

fn text(status: StatusCode, content_type: &'static str, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    text(status, "application/json", &body)
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::State;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One raw HTTP/1.1 request; the response's status line, and its body so far (an event
    /// stream is read until `until` shows up in it).
    async fn request(addr: SocketAddr, head: &str, until: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            let n = read.expect("an answer within 5 s").unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if n == 0 || (text.contains("\r\n\r\n") && text.contains(until)) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    fn get(addr: SocketAddr, path: &str, auth: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn the_api_needs_the_token_and_a_local_host() {
        let hub = Hub::new("watch", false, false);
        let (api, mut commands) = hub.add_service("api");
        let addr = start(hub.clone()).await.unwrap();
        let bearer = format!("Authorization: Bearer {}\r\n", hub.token());

        let (status, _) = request(addr, &get(addr, "/api/status", ""), "").await;
        assert!(status.contains("401"), "{status}");
        let (status, _) = request(addr, &get(addr, "/api/status?token=wrong", ""), "").await;
        assert!(status.contains("401"), "{status}");
        let rebinding = format!(
            "GET /api/status HTTP/1.1\r\nHost: evil.example:{}\r\n{bearer}Connection: close\r\n\r\n",
            addr.port()
        );
        let (status, _) = request(addr, &rebinding, "").await;
        assert!(status.contains("403"), "{status}");

        let (status, body) = request(addr, &get(addr, "/api/status", &bearer), "}").await;
        assert!(status.contains("200"), "{status}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["services"][0]["name"], "api");
        assert_eq!(v["services"][0]["state"], "connecting");
        let page = format!("/?token={}", hub.token());
        let (status, body) = request(addr, &get(addr, &page, ""), "</html>").await;
        assert!(status.contains("200") && body.contains("<html"), "{status}");

        // Buttons: refused while connecting, passed on once connected; unknown ones named.
        let post = |path: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{bearer}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        let (status, body) = request(addr, &post("/api/services/api/rebuild"), "}").await;
        assert!(
            status.contains("409") && body.contains("not connected"),
            "{status} {body}"
        );
        api.set_state(State::Ready, None);
        let (status, _) = request(addr, &post("/api/services/api/rebuild"), "}").await;
        assert!(status.contains("202"), "{status}");
        assert_eq!(commands.recv().await, Some(Command::Rebuild));
        let (status, body) = request(addr, &post("/api/services/web/pause"), "}").await;
        assert!(
            status.contains("404") && body.contains("no service web"),
            "{status}"
        );
        let (status, _) = request(addr, &post("/api/services/api/explode"), "}").await;
        assert!(status.contains("404"), "{status}");
    }

    #[tokio::test]
    async fn the_event_stream_sends_the_status_and_the_lines_after_a_point() {
        let hub = Hub::new("watch", false, false);
        let _ = hub.add_service("api");
        hub.print(
            Some("api"),
            crate::status::log::Source::App,
            crate::status::log::Level::Info,
            "first",
            "first",
        );
        hub.print(
            Some("api"),
            crate::status::log::Source::App,
            crate::status::log::Level::Info,
            "second",
            "second",
        );
        let addr = start(hub.clone()).await.unwrap();
        let path = format!("/api/events?token={}&after=1", hub.token());
        let (status, body) = request(addr, &get(addr, &path, ""), "event: status").await;
        assert!(status.contains("200"), "{status}");
        assert!(!body.contains("\"first\""), "only lines after 1: {body}");
        let second = body.find("\"second\"").expect("line 2 sent");
        assert!(second < body.find("event: status").unwrap(), "{body}");
        let logs = "/api/logs?after=0&limit=1";
        let bearer = format!("Authorization: Bearer {}\r\n", hub.token());
        let (_, body) = request(addr, &get(addr, logs, &bearer), "}").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["next"], 2);
        assert_eq!(v["lines"][0]["text"], "second");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abd", b"abc"));
        assert!(!same(b"ab", b"abc"));
    }

    #[test]
    fn queries() {
        let q = Query::parse("token=t&after=41&x");
        assert_eq!(q.get("token"), Some("t"));
        assert_eq!(q.number("after"), Some(41));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(q.number("limit"), None);
    }
}

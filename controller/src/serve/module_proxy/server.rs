//! The HTTP/1.1 side: connections from the pod's go commands, and each request's answer.
//!
//! A response is only sent once its whole body is here (from the store, or every part from
//! the CLI): go never sees half a file. Failures are logged, one line each; successes are
//! not (the CLI reports the fetches).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kdev_protocol::module_proxy::{FileKind, ProxyPath};
use tokio::net::TcpListener;

use super::ask::{Asked, Asker};
use super::body::{Answering, Body};
use super::pending::Answer;
use super::route::{Route, route};
use super::store::Store;
use crate::log::serve as log;

/// What go is told once the session is gone.
pub(crate) const SESSION_ENDED: &str = "the kdev session ended; the next session fetches it again";

/// A connection that sends no complete request header for this long is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The proxy of one session.
pub(crate) struct Proxy {
    /// The first path segment every request must have.
    pub token: String,
    pub asker: Asker,
    pub store: Option<Store>,
    pub answering: Answering,
}

/// Accept connections until the process ends.
pub(crate) async fn run(listener: TcpListener, proxy: Arc<Proxy>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: try again shortly.
                log(format!("module proxy: cannot accept a connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let p = proxy.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let p = p.clone();
            async move { Ok::<_, Infallible>(p.handle(&req).await) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        // A connection that breaks is go's to retry; nothing to report.
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// An answer before it becomes a response.
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    fn text(status: StatusCode, message: &str) -> Reply {
        Reply {
            status,
            content_type: TEXT,
            body: Bytes::from(format!("{message}\n")),
        }
    }

    fn file(path: &ProxyPath, body: Bytes) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: content_type(path),
            body,
        }
    }
}

fn content_type(path: &ProxyPath) -> &'static str {
    match path {
        ProxyPath::Latest { .. }
        | ProxyPath::File {
            kind: FileKind::Info,
            ..
        } => "application/json",
        ProxyPath::File {
            kind: FileKind::Zip,
            ..
        } => "application/zip",
        ProxyPath::Sumdb { rest, .. } if rest.starts_with("tile/") => "application/octet-stream",
        _ => TEXT,
    }
}

impl Proxy {
    async fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        let answering = self.answering.start();
        let reply = self.answer(req.method(), req.uri().path()).await;
        let mut resp = Response::new(Body::new(reply.body, answering));
        *resp.status_mut() = reply.status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
        match reply.status {
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(ALLOW, HeaderValue::from_static("GET"));
            }
            // The process exits shortly: no connection to keep.
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }

    async fn answer(&self, method: &Method, uri_path: &str) -> Reply {
        let path = match route(&self.token, uri_path) {
            // Not one of the session's go commands: no path in the log (it could hold
            // anything), and nothing about the proxy in the answer.
            Route::NoToken => {
                log("module proxy: refused a request without the session's token");
                return Reply::text(StatusCode::NOT_FOUND, "not found");
            }
            Route::Refused(why) => {
                log(format!("module proxy: refused: {why}"));
                return Reply::text(StatusCode::NOT_FOUND, "not a module proxy request");
            }
            Route::Module(p) => p,
        };
        if method != Method::GET {
            log(format!("module proxy: {method} {path}: only GET is served"));
            return Reply::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the module proxy serves GET only",
            );
        }
        if let Some(body) = self.stored(&path).await {
            return Reply::file(&path, Bytes::from(body));
        }
        let (status, message) = match self.asker.ask(&path).await {
            Asked::Answer(Answer::Ok(body)) => {
                let body = Bytes::from(body);
                self.keep(&path, body.clone());
                return Reply::file(&path, body);
            }
            Asked::Answer(Answer::NotFound(why)) => (StatusCode::NOT_FOUND, why),
            Asked::Answer(Answer::Failed(why)) => (StatusCode::BAD_GATEWAY, why),
            Asked::Answer(Answer::Ended) => (StatusCode::SERVICE_UNAVAILABLE, SESSION_ENDED.into()),
            Asked::TimedOut => (
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no answer from the developer's machine for {} minutes",
                    super::ask::QUIET_LIMIT.as_secs() / 60
                ),
            ),
        };
        log(format!(
            "module proxy: GET {path}: {}: {}",
            status.as_u16(),
            message.lines().next().unwrap_or_default()
        ));
        Reply::text(status, &message)
    }

    /// The stored file for `path`, if the store has it.
    async fn stored(&self, path: &ProxyPath) -> Option<Vec<u8>> {
        let store = self.store.clone()?;
        let path = path.clone();
        tokio::task::spawn_blocking(move || store.read(&path))
            .await
            .ok()
            .flatten()
    }

    /// Keep a file the CLI sent, while go gets it (writing 40 MB with an fsync first made go
    /// wait for the volume): a replaced pod's session finds it. The store writes a temporary
    /// file and renames it, so a serve that ends meanwhile leaves nothing that is served. A
    /// failure only costs asking again.
    fn keep(&self, path: &ProxyPath, body: Bytes) {
        let Some(store) = self.store.clone() else {
            return;
        };
        if store.file(path).is_none() {
            return;
        }
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.write(&p, &body) {
                log(format!("module proxy: cannot store {p}: {e}"));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_kind_of_file() {
        let ct = |p: &str| content_type(&ProxyPath::parse(p).unwrap());
        assert_eq!(ct("m.io/a/@v/v1.0.0.info"), "application/json");
        assert_eq!(ct("m.io/a/@latest"), "application/json");
        assert_eq!(ct("m.io/a/@v/v1.0.0.zip"), "application/zip");
        assert_eq!(ct("m.io/a/@v/v1.0.0.mod"), TEXT);
        assert_eq!(ct("m.io/a/@v/list"), TEXT);
        assert_eq!(ct("sumdb/sum.golang.org/lookup/m.io/a@v1.0.0"), TEXT);
        assert_eq!(
            ct("sumdb/sum.golang.org/tile/8/0/001"),
            "application/octet-stream"
        );
    }
}

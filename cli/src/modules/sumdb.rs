//! The checksum database, reached the way the developer's go reaches it.
//!
//! The pod's go verifies modules that are not in go.sum against the checksum database, through
//! the module proxy when the proxy says it `supported`s it. kdev forwards those requests the
//! way go on this machine would: through the first GOPROXY entry that proxies the database
//! (asked once), else directly. Only the database this machine's go uses (GOSUMDB) is
//! forwarded: the pod cannot make kdev fetch from any other host. A `user:password@` in a URL
//! is sent as Basic authentication, as go does, and never shown or passed to the pod.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::answer::Answer;
use super::go_env::GoSettings;

/// One request to a proxy or the database, connecting included.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a tile is 8 KiB, a lookup less).
const MAX_BODY: usize = 4 << 20;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Forwards checksum database requests; remembers which proxies support the database.
#[derive(Default)]
pub struct Sumdb {
    client: OnceLock<Result<HttpClient, String>>,
    /// Proxy URL → whether it proxies the database (only definite answers: a 200, 404 or 410).
    supported: Mutex<HashMap<String, bool>>,
}

/// A URL as requests use it: without its `user:password@`, which becomes the Authorization
/// header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Without credentials: safe to show and to pass to the pod.
    pub url: String,
    auth: Option<String>,
}

impl Endpoint {
    pub fn parse(url: &str) -> Endpoint {
        let url = url.trim().trim_end_matches('/');
        let plain = Endpoint {
            url: url.to_string(),
            auth: None,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return plain;
        };
        let host_end = rest.find('/').unwrap_or(rest.len());
        let Some((userinfo, host)) = rest[..host_end].rsplit_once('@') else {
            return plain;
        };
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let credentials = [
            percent_decode(user),
            b":".to_vec(),
            percent_decode(password),
        ]
        .concat();
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        Endpoint {
            url: format!("{scheme}://{host}{}", &rest[host_end..]),
            auth: Some(format!("Basic {encoded}")),
        }
    }

    /// `path` below this URL, with the same credentials.
    fn join(&self, path: &str) -> Endpoint {
        Endpoint {
            url: format!("{}/{path}", self.url),
            auth: self.auth.clone(),
        }
    }
}

/// `%XX` escapes decoded (go's userinfo is URL-escaped); anything else kept.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) if b[i] == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The database this machine's go uses: its name and where it is reached directly. `None`
/// when checksum verification is off.
pub fn database(gosumdb: &str) -> Option<(String, Endpoint)> {
    let mut words = gosumdb.split_whitespace();
    let first = words.next()?;
    if first == "off" {
        return None;
    }
    // `name`, `name+key` or `name+key url`.
    let name = first.split('+').next().unwrap_or(first).to_string();
    let url = match words.next() {
        Some(u) => Endpoint::parse(u),
        None => Endpoint::parse(&format!("https://{name}")),
    };
    Some((name, url))
}

/// Where go looks for the database, in order: each GOPROXY entry that is an HTTP(S) URL, until
/// `direct` or `off` (go's rule), then the database itself.
pub fn proxies(goproxy: &str) -> Vec<Endpoint> {
    goproxy
        .split([',', '|'])
        .map(str::trim)
        .take_while(|e| *e != "direct" && *e != "off")
        .filter(|e| e.starts_with("https://") || e.starts_with("http://"))
        .map(Endpoint::parse)
        .collect()
}

impl Sumdb {
    /// Whether the pod's go may ask about `name` through kdev: the database this machine uses,
    /// unless verification or the proxy is off here.
    pub fn supported(&self, name: &str, settings: &GoSettings) -> Answer {
        match forwarded(name, settings) {
            Ok(_) => Answer::bytes(Vec::new()),
            Err(why) => Answer::not_found(why),
        }
    }

    /// Forward `rest` (`lookup/…`, `tile/…`, `latest`) to database `name`. Also returns where
    /// it went, without credentials (for the report).
    pub async fn get(&self, name: &str, rest: &str, settings: &GoSettings) -> (Answer, String) {
        let direct = match forwarded(name, settings) {
            Ok(url) => url,
            Err(why) => return (Answer::not_found(why), String::new()),
        };
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return (Answer::failed(e), String::new()),
        };
        let mut base = direct;
        for proxy in proxies(&settings.proxy) {
            if self.proxies_database(client, &proxy, name).await {
                base = proxy.join(&format!("sumdb/{name}"));
                break;
            }
        }
        let target = base.join(rest);
        let url = &target.url;
        let answer = match get(client, &target).await {
            Ok((200, body)) => Answer::bytes(body),
            Ok((status @ (404 | 410), body)) => Answer::not_found(http_reason(url, status, &body)),
            Ok((status, body)) => Answer::failed(http_reason(url, status, &body)),
            Err(e) => Answer::failed(format!("{url}: {e}")),
        };
        (answer, base.url)
    }

    fn client(&self) -> Result<&HttpClient, String> {
        self.client
            .get_or_init(|| {
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_native_roots()
                    .map_err(|e| format!("no root certificates on this machine: {e}"))?
                    .https_or_http()
                    .enable_http1()
                    .build();
                Ok(Client::builder(TokioExecutor::new()).build(https))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Whether `proxy` proxies database `name`: asked once (`<proxy>/sumdb/<name>/supported`);
    /// a proxy that cannot be reached is asked again next time.
    async fn proxies_database(&self, client: &HttpClient, proxy: &Endpoint, name: &str) -> bool {
        if let Some(known) = lock(&self.supported).get(&proxy.url) {
            return *known;
        }
        let probe = proxy.join(&format!("sumdb/{name}/supported"));
        let url = &probe.url;
        let answer = match get(client, &probe).await {
            Ok((200, _)) => true,
            Ok((404 | 410, _)) => false,
            Ok((status, _)) => {
                tracing::debug!("{url}: {status}");
                return false;
            }
            Err(e) => {
                tracing::debug!("{url}: {e}");
                return false;
            }
        };
        lock(&self.supported).insert(proxy.url.clone(), answer);
        answer
    }
}

/// The direct URL of database `name` when requests about it are forwarded, else why not.
fn forwarded(name: &str, settings: &GoSettings) -> Result<Endpoint, String> {
    let Some((ours, url)) = database(&settings.sumdb) else {
        return Err("checksum verification is off on this machine (GOSUMDB=off)".into());
    };
    if settings.proxy.trim() == "off" {
        return Err("GOPROXY=off on this machine".into());
    }
    if name != ours {
        return Err(format!(
            "this machine's go uses the checksum database {ours}, not {name}"
        ));
    }
    Ok(url)
}

/// GET `target`: its status and body.
async fn get(client: &HttpClient, target: &Endpoint) -> Result<(u16, Vec<u8>), String> {
    let mut request = hyper::Request::get(&target.url);
    if let Some(auth) = &target.auth {
        request = request.header(hyper::header::AUTHORIZATION, auth);
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| format!("bad URL: {e}"))?;
    let fetch = async {
        // With its causes (`{:#}`): hyper's own message is only "client error (Connect)".
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body.to_vec()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer within {}s", HTTP_TIMEOUT.as_secs()))?
}

/// An HTTP error for the pod and the developer: the URL, the status and the body's first line.
fn http_reason(url: &str, status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let first = text.lines().next().unwrap_or("").trim();
    let first: String = first.chars().take(200).collect();
    if first.is_empty() {
        format!("{url}: HTTP {status}")
    } else {
        format!("{url}: HTTP {status}: {first}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking holder cannot leave a map of booleans half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn settings(proxy: &str, sumdb: &str) -> GoSettings {
        GoSettings {
            modcache: PathBuf::from("/m"),
            proxy: proxy.into(),
            sumdb: sumdb.into(),
            nosumdb: String::new(),
            flags: String::new(),
            go_installed: true,
        }
    }

    #[test]
    fn the_database_and_the_proxies_go_would_ask() {
        let url = |d: Option<(String, Endpoint)>| d.map(|(name, e)| (name, e.url));
        assert_eq!(
            url(database("sum.golang.org")),
            Some(("sum.golang.org".into(), "https://sum.golang.org".into()))
        );
        assert_eq!(
            url(database(
                "sum.golang.google.cn+033de0ae+Ac4zctda https://sum.golang.google.cn/"
            )),
            Some((
                "sum.golang.google.cn".into(),
                "https://sum.golang.google.cn".into()
            ))
        );
        assert_eq!(database("off"), None);
        let urls =
            |goproxy| -> Vec<String> { proxies(goproxy).into_iter().map(|e| e.url).collect() };
        assert_eq!(
            urls(
                "https://goproxy.corp/,file:///tmp/p|https://proxy.golang.org,direct,https://after"
            ),
            ["https://goproxy.corp", "https://proxy.golang.org"]
        );
        assert!(proxies("direct").is_empty());
        assert!(proxies("off").is_empty());
    }

    #[test]
    fn credentials_in_a_url_become_basic_authentication_and_leave_the_url() {
        let e = Endpoint::parse("https://u%40corp:p%3Ass@goproxy.corp/go/");
        assert_eq!(e.url, "https://goproxy.corp/go");
        // base64("u@corp:p:ss")
        assert_eq!(e.auth.as_deref(), Some("Basic dUBjb3JwOnA6c3M="));
        assert_eq!(e.join("sumdb/x").url, "https://goproxy.corp/go/sumdb/x");
        // An @ in the path is not userinfo.
        let e = Endpoint::parse("https://proxy.golang.org/sumdb/x/lookup/a@v1");
        assert_eq!(
            (e.url.as_str(), e.auth),
            ("https://proxy.golang.org/sumdb/x/lookup/a@v1", None)
        );
        assert_eq!(percent_decode("a%2"), b"a%2");
    }

    /// An HTTP server on localhost answering `reply(path)`, recording each path asked (and the
    /// Authorization header's value).
    async fn server(reply: fn(&str) -> (u16, &'static str)) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let (status, body) = reply(&path);
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .map(|a| format!(" ({a})"))
                    .unwrap_or_default();
                lock(&log).push(format!("{path}{auth}"));
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        (url, asked)
    }

    #[tokio::test]
    async fn requests_go_through_the_first_proxy_that_supports_the_database() {
        let (without, asked_without) = server(|_| (404, "not here")).await;
        let (with, asked_with) = server(|path| match path {
            "/sumdb/sum.golang.org/supported" => (200, ""),
            "/sumdb/sum.golang.org/latest" => (200, "go.sum database tree\n42\n"),
            _ => (404, "no such module"),
        })
        .await;
        // The second one with credentials, as GOPROXY may have them.
        let with_credentials = with.replace("http://", "http://user:p%40ss@");
        let s = settings(
            &format!("{without},{with_credentials}/,direct"),
            "sum.golang.org",
        );
        let db = Sumdb::default();
        let (answer, via) = db.get("sum.golang.org", "latest", &s).await;
        assert_eq!(
            answer.status,
            kdev_protocol::ModuleStatus::Ok,
            "{}",
            answer.reason
        );
        assert_eq!(answer.size(), 24);
        assert_eq!(via, format!("{with}/sumdb/sum.golang.org"));
        let (answer, _) = db
            .get("sum.golang.org", "lookup/example.com/x@v1.0.0", &s)
            .await;
        assert_eq!(answer.status, kdev_protocol::ModuleStatus::NotFound);
        assert!(
            answer.reason.ends_with("HTTP 404: no such module"),
            "{}",
            answer.reason
        );
        assert!(!answer.reason.contains("p%40ss"), "{}", answer.reason);
        // Each proxy was asked once whether it supports the database.
        assert_eq!(*lock(&asked_without), ["/sumdb/sum.golang.org/supported"]);
        assert_eq!(
            *lock(&asked_with),
            [
                "/sumdb/sum.golang.org/supported (Basic dXNlcjpwQHNz)",
                "/sumdb/sum.golang.org/latest (Basic dXNlcjpwQHNz)",
                "/sumdb/sum.golang.org/lookup/example.com/x@v1.0.0 (Basic dXNlcjpwQHNz)"
            ]
        );
        // Another database is not forwarded anywhere.
        let (answer, _) = db.get("sum.evil.example", "latest", &s).await;
        assert_eq!(answer.status, kdev_protocol::ModuleStatus::NotFound);
        assert_eq!(lock(&asked_with).len(), 3);
    }

    #[test]
    fn only_this_machine_s_database_is_supported() {
        let db = Sumdb::default();
        let ok = settings("https://proxy.golang.org,direct", "sum.golang.org");
        use kdev_protocol::ModuleStatus::{NotFound, Ok};
        assert_eq!(db.supported("sum.golang.org", &ok).status, Ok);
        assert_eq!(db.supported("evil.example", &ok).status, NotFound);
        let off = settings("https://proxy.golang.org", "off");
        assert_eq!(db.supported("sum.golang.org", &off).status, NotFound);
        let no_proxy = settings("off", "sum.golang.org");
        assert_eq!(db.supported("sum.golang.org", &no_proxy).status, NotFound);
    }
}

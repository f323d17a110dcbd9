//! The module proxy: Go modules reach the pod through the session, so no credential ever
//! enters the cluster.
//!
//! With `hello.config.module_proxy`, `serve` listens on a random port of 127.0.0.1 (the app
//! shares the network namespace, hence a random port and a random token as the first path
//! segment) and its go commands get `GOPROXY=http://127.0.0.1:PORT/<token>/` ([`env`]). Each
//! request below the token that Go's module proxy protocol has ([`route`]) becomes a
//! `module_request` to the CLI, which answers from the developer's module cache or their own
//! `go mod download`; the parts of its `module_response` come back through the reader task
//! straight to the waiting request ([`pending`]), never behind the session's queue, and go
//! gets the file once all of it is here ([`server`], [`ask`]). A session's end (stdin closed,
//! SIGTERM, the client gone) answers every waiting and later request 503. Files of canonical
//! versions are kept on the build-cache volume when Go's module cache is not there
//! ([`store`]).

mod ask;
mod body;
mod env;
mod pending;
mod route;
mod server;
mod store;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kdev_protocol::ModuleProxyConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub(crate) use env::{merge as with_module_env, wanted};
pub(crate) use pending::Pending;

use super::io::Out;
use ask::{Asker, IN_FLIGHT};
use body::Answering;
use server::Proxy;
use store::Store;

/// How long the session's end waits for the 503s of requests that were waiting to be
/// written.
const END_WAIT: Duration = Duration::from_secs(1);

/// Why the proxy could not start (the session goes on without it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot make its token from /dev/urandom")]
    Token(#[source] std::io::Error),
    #[error("cannot listen on 127.0.0.1")]
    Listen(#[source] std::io::Error),
}

/// A session's module proxy: its pending requests exist from the start (the reader task
/// feeds them), the server only once the hello asked for it.
#[derive(Default)]
pub(crate) struct ModuleProxy {
    pending: Arc<Pending>,
    answering: Answering,
}

impl ModuleProxy {
    /// Where the reader task hands the parts of module responses.
    pub(crate) fn pending(&self) -> Arc<Pending> {
        self.pending.clone()
    }

    /// Start the server: requests leave through `out`, and files are kept below `volume`
    /// when it is given. Returns the environment of the session's go commands.
    pub(crate) async fn start(
        &self,
        config: &ModuleProxyConfig,
        out: &Out,
        volume: Option<&Path>,
    ) -> Result<BTreeMap<String, String>, StartError> {
        let token = token().map_err(StartError::Token)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(StartError::Listen)?;
        let port = listener.local_addr().map_err(StartError::Listen)?.port();
        let url = format!("http://127.0.0.1:{port}/{token}/");
        let proxy = Proxy {
            token,
            asker: Asker {
                pending: self.pending.clone(),
                out: out.downgrade(),
                turns: Semaphore::new(IN_FLIGHT),
            },
            store: volume.map(Store::on_volume),
            answering: self.answering.clone(),
        };
        // Serves until the process ends: after the session, every request gets its 503.
        tokio::spawn(server::run(listener, Arc::new(proxy)));
        Ok(env::module_env(&url, &config.nosumdb))
    }

    /// The session ended: every waiting request is answered 503 (and every later one), and
    /// those answers are given a moment to be written before the process exits.
    pub(crate) async fn end(&self) {
        self.pending.end();
        self.answering.drained(END_WAIT).await;
    }
}

/// 128 random bits, in hex.
fn token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    }))
}

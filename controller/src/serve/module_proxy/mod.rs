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

use kdev_protocol::ModuleProxyConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub(crate) use env::{merge as with_module_env, wanted};
pub(crate) use pending::Pending;

use super::io::Out;
use ask::{Asker, IN_FLIGHT};
use server::Proxy;
use store::Store;

/// Why the proxy could not start (the session goes on without it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot make its token from /dev/urandom")]
    Token(#[source] std::io::Error),
    #[error("cannot listen on 127.0.0.1")]
    Listen(#[source] std::io::Error),
}

/// Start the proxy for this session: answers arrive through `pending` (fed by the reader
/// task), requests leave through `out`, and files are kept below `volume` when it is given.
/// Returns the environment of the session's go commands.
pub(crate) async fn start(
    config: &ModuleProxyConfig,
    out: &Out,
    pending: Arc<Pending>,
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
            pending,
            out: out.downgrade(),
            turns: Semaphore::new(IN_FLIGHT),
        },
        store: volume.map(Store::on_volume),
    };
    // Serves until the process ends: after the session, every request gets its 503.
    tokio::spawn(server::run(listener, Arc::new(proxy)));
    Ok(env::module_env(&url, &config.nosumdb))
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

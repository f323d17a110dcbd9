//! The local side of a forwarded port: the listener on `127.0.0.1:<local>`, which lives for the
//! whole session, and for each accepted connection the choice of mode (through the relay, or
//! straight to the app) against whichever pod is current at that moment.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::relay_spares::{self, RelaySpare, RelaySpareOpener};
use super::spare_pool::SparePool;
use super::straight::straight;
use super::target::ForwardTarget;
use super::via_relay::via_relay;

/// How long a connection waits for a pod to forward to (while one is being replaced).
const WAIT_FOR_POD: Duration = Duration::from_secs(120);

/// What a forwarder reports.
#[derive(Debug, Clone)]
pub enum ForwardEvent {
    /// A connection could not be forwarded.
    Failed { local: u16, error: String },
}

/// Listen on `127.0.0.1:<local>` and forward each connection to `<remote>` of the current pod.
/// `app_exits` counts exits of the app process: without the relay, a connection accepted
/// before the count moved is closed when it moves. Returns the bound address (useful when
/// `local` is 0).
pub async fn start(
    target: watch::Receiver<Option<ForwardTarget>>,
    app_exits: watch::Receiver<u64>,
    local: u16,
    remote: u16,
    events: mpsc::UnboundedSender<ForwardEvent>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", local)).await?;
    let addr = listener.local_addr()?;
    let spares = SparePool::start(
        RelaySpareOpener,
        target.clone(),
        relay_spares::wanted(),
        addr.port(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let _ = conn.set_nodelay(true);
            let mut target = target.clone();
            let mut exits = app_exits.clone();
            let events = events.clone();
            let spares = spares.clone();
            tokio::spawn(async move {
                let span = tracing::info_span!("forward", local = addr.port(), remote);
                let forwarded = forward_one(&mut target, &mut exits, conn, remote, &spares);
                if let Err(error) = tracing::Instrument::instrument(forwarded, span).await {
                    let _ = events.send(ForwardEvent::Failed {
                        local: addr.port(),
                        error,
                    });
                }
            });
        }
    });
    Ok(addr)
}

/// Forward one accepted connection, in the mode the current target calls for, until it ends
/// or the session it was forwarded through is over.
async fn forward_one(
    current: &mut watch::Receiver<Option<ForwardTarget>>,
    app_exits: &mut watch::Receiver<u64>,
    conn: TcpStream,
    remote: u16,
    spares: &SparePool<RelaySpare>,
) -> Result<(), String> {
    let target = wait_for_target(current).await?;
    // A forwarded connection lives on its session's API connection. When kdev replaces the
    // session, that connection may be the dead one it was replaced for: close the client's
    // side so it reconnects at once instead of waiting on a stream that never answers.
    let over = session_over(current, target.connection);
    let forwarded = async {
        match target.relay {
            Some(relay) => via_relay(&target, relay, conn, remote, spares).await,
            None => straight(&target, app_exits, conn, remote).await,
        }
    };
    tokio::select! {
        r = forwarded => r,
        () = over => {
            tracing::debug!("the session it was forwarded through is over: closed");
            Ok(())
        }
    }
}

/// The current target. While the pod is being replaced there is none: wait for the next one
/// rather than failing.
async fn wait_for_target(
    current: &mut watch::Receiver<Option<ForwardTarget>>,
) -> Result<ForwardTarget, String> {
    tokio::time::timeout(WAIT_FOR_POD, async {
        loop {
            if let Some(t) = current.borrow_and_update().clone() {
                return Ok(t);
            }
            if current.changed().await.is_err() {
                return Err("kdev is shutting down".to_string());
            }
        }
    })
    .await
    .map_err(|_| "no dev pod to forward to".to_string())?
}

/// Resolves once the target is no longer reached through session `connection` (another
/// session, or none while the pod is being found).
async fn session_over(current: &mut watch::Receiver<Option<ForwardTarget>>, connection: u64) {
    loop {
        if current.borrow_and_update().as_ref().map(|t| t.connection) != Some(connection) {
            return;
        }
        if current.changed().await.is_err() {
            // kdev is shutting down; the runtime ends the forward.
            std::future::pending::<()>().await;
        }
    }
}

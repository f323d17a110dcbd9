//! Port-forwards from localhost to the dev pod that survive app restarts and pod replacement.
//!
//! The local listener lives for the whole session; each accepted connection opens its own
//! upstream port-forward to whichever pod is current at that moment. A restarted app or a
//! replaced pod therefore only affects connections that were open at the time, never the
//! listener (unlike `kubectl port-forward`, which dies with its pod).
//!
//! When the app process exits (a restart after a save), connections to it are closed here at
//! once. Otherwise a client's kept-alive connection, as every browser keeps, would hang for a
//! second on its next request: containerd's port-forward waits up to 1 s for the client's side
//! to finish after the app closed its own (measured: 1.0 s through both `kubectl port-forward`
//! and kdev, 0 ms straight to the pod).

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// What a forwarder reports.
#[derive(Debug, Clone)]
pub enum ForwardEvent {
    /// A connection could not be forwarded.
    Failed { local: u16, error: String },
}

/// Listen on `127.0.0.1:<local>` and forward each connection to `<remote>` of the current pod.
/// `app_exits` counts exits of the app process: a connection accepted before the count moved
/// is closed when it moves. Returns the bound address (useful when `local` is 0).
pub async fn start(
    pods: Api<Pod>,
    current_pod: watch::Receiver<Option<String>>,
    app_exits: watch::Receiver<u64>,
    local: u16,
    remote: u16,
    events: mpsc::UnboundedSender<ForwardEvent>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", local)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let pods = pods.clone();
            let mut current = current_pod.clone();
            let mut exits = app_exits.clone();
            let events = events.clone();
            tokio::spawn(async move {
                if let Err(error) = forward_one(&pods, &mut current, &mut exits, conn, remote).await
                {
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

async fn forward_one(
    pods: &Api<Pod>,
    current: &mut watch::Receiver<Option<String>>,
    app_exits: &mut watch::Receiver<u64>,
    mut conn: TcpStream,
    remote: u16,
) -> Result<(), String> {
    // While the pod is being replaced there is none: wait for the next one rather than failing.
    let pod = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        loop {
            if let Some(p) = current.borrow_and_update().clone() {
                return Ok(p);
            }
            if current.changed().await.is_err() {
                return Err("kdev is shutting down".to_string());
            }
        }
    })
    .await
    .map_err(|_| "no dev pod to forward to".to_string())??;
    let mut pf = pods
        .portforward(&pod, &[remote])
        .await
        .map_err(|e| format!("port-forward to {pod}:{remote}: {e}"))?;
    let mut upstream = pf
        .take_stream(remote)
        .ok_or("port-forward gave no stream")?;
    // Only exits from now on end this connection: it reaches whichever process runs now.
    app_exits.mark_unchanged();
    let copied = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => copied,
        // The process this connection reached is gone: close it now (see the module docs).
        // The port-forward itself winds down in the background.
        Ok(()) = app_exits.changed() => return Ok(()),
    };
    drop(upstream);
    let _ = pf.join().await;
    match copied {
        Ok(_) => Ok(()),
        // The client hanging up early is normal (browsers do it all the time).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("{pod}:{remote}: {e}")),
    }
}

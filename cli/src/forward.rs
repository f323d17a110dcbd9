//! Port-forwards from localhost to the dev pod that survive app restarts and pod replacement.
//!
//! The local listener lives for the whole session; each accepted connection opens its own
//! upstream port-forward to whichever pod is current at that moment. A restarted app or a
//! replaced pod therefore only affects connections that were open at the time, never the
//! listener (unlike `kubectl port-forward`, which dies with its pod).

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
/// Returns the bound address (useful when `local` is 0).
pub async fn start(
    pods: Api<Pod>,
    current_pod: watch::Receiver<Option<String>>,
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
            let events = events.clone();
            tokio::spawn(async move {
                if let Err(error) = forward_one(&pods, &mut current, conn, remote).await {
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
    let copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
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

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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How long opening the upstream stream may take: a pooled connection to the API server that a
/// NAT forgot would otherwise hold the client's connection for minutes.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The pod to forward to, with the API handle of the session's current connection.
#[derive(Clone)]
pub struct ForwardTarget {
    pub pod: String,
    pub pods: Api<Pod>,
}

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
    target: watch::Receiver<Option<ForwardTarget>>,
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
            let mut target = target.clone();
            let mut exits = app_exits.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let span = tracing::info_span!("forward", local = addr.port(), remote);
                let forwarded = forward_one(&mut target, &mut exits, conn, remote);
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

async fn forward_one(
    current: &mut watch::Receiver<Option<ForwardTarget>>,
    app_exits: &mut watch::Receiver<u64>,
    mut conn: TcpStream,
    remote: u16,
) -> Result<(), String> {
    // While the pod is being replaced there is none: wait for the next one rather than failing.
    let target = tokio::time::timeout(Duration::from_secs(120), async {
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
    .map_err(|_| "no dev pod to forward to".to_string())??;
    let pod = &target.pod;
    let mut pf = tokio::time::timeout(DIAL_TIMEOUT, target.pods.portforward(pod, &[remote]))
        .await
        .map_err(|_| {
            format!(
                "port-forward to {pod}:{remote}: no answer within {}s",
                DIAL_TIMEOUT.as_secs()
            )
        })?
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

/// Repeated forward errors, summarised: the first of a kind is shown at once; identical ones
/// within the window are counted and shown as one line when the window ends (a browser
/// retrying against a pod being replaced would otherwise print dozens of identical lines).
#[derive(Debug)]
pub struct ErrorSummary {
    window: Duration,
    /// (local port, error) → (window end, repeats since the first).
    open: BTreeMap<(u16, String), (Instant, u32)>,
}

impl ErrorSummary {
    pub fn new(window: Duration) -> ErrorSummary {
        ErrorSummary {
            window,
            open: BTreeMap::new(),
        }
    }

    /// Record an error; returns the line to show now, if any.
    pub fn record(&mut self, local: u16, error: &str, now: Instant) -> Option<String> {
        let key = (local, error.to_string());
        match self.open.get_mut(&key) {
            Some((end, repeats)) if now < *end => {
                *repeats += 1;
                None
            }
            _ => {
                self.open.insert(key, (now + self.window, 0));
                Some(format!("localhost:{local}: {error}"))
            }
        }
    }

    /// Close the windows that ended; returns a line for each that saw repeats.
    pub fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        self.open.retain(|(local, error), (end, repeats)| {
            if now < *end {
                return true;
            }
            if *repeats > 0 {
                lines.push(format!(
                    "localhost:{local}: {error} ({repeats} more times in {}s)",
                    self.window.as_secs()
                ));
            }
            false
        });
        lines
    }

    /// Resolves when the earliest open window ends (never, when none is open).
    pub async fn flush_due(&self) {
        match self.open.values().map(|(end, _)| *end).min() {
            Some(end) => tokio::time::sleep_until(end.into()).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_are_counted_then_summarised_once() {
        let t0 = Instant::now();
        let mut s = ErrorSummary::new(Duration::from_secs(10));
        assert_eq!(
            s.record(8080, "refused", t0).as_deref(),
            Some("localhost:8080: refused")
        );
        for i in 1..=39 {
            assert!(
                s.record(8080, "refused", t0 + Duration::from_millis(i * 100))
                    .is_none()
            );
        }
        // Another error or port is its own line.
        assert!(s.record(8080, "reset", t0).is_some());
        assert!(s.record(9090, "refused", t0).is_some());
        assert!(s.flush(t0 + Duration::from_secs(5)).is_empty());
        let lines = s.flush(t0 + Duration::from_secs(10));
        assert_eq!(
            lines,
            ["localhost:8080: refused (39 more times in 10s)"],
            "windows without repeats end silently"
        );
        // After the window, the same error is shown again at once.
        assert!(
            s.record(8080, "refused", t0 + Duration::from_secs(11))
                .is_some()
        );
    }
}

//! Opening one Kubernetes port-forward stream to a port of the target's pod: what both
//! forwarding modes and the warm spares start from.

use std::time::Duration;

use kube::api::Portforwarder;
use tokio::io::DuplexStream;

use super::target::ForwardTarget;

/// How long opening the upstream stream may take: a pooled connection to the API server that a
/// NAT forgot would otherwise hold the client's connection for minutes.
pub(super) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Open a port-forward stream to `port` of the target's pod.
pub(super) async fn dial(
    target: &ForwardTarget,
    port: u16,
) -> Result<(Portforwarder, DuplexStream), String> {
    let pod = &target.pod;
    let mut pf = tokio::time::timeout(DIAL_TIMEOUT, target.pods.portforward(pod, &[port]))
        .await
        .map_err(|_| {
            format!(
                "port-forward to {pod}:{port}: no answer within {}s",
                DIAL_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("port-forward to {pod}:{port}: {e}"))?;
    let stream = pf.take_stream(port).ok_or("port-forward gave no stream")?;
    Ok((pf, stream))
}

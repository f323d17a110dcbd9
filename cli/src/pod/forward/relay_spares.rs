//! What kdev keeps in the spare pool: port-forward streams to the pod's relay, each ready once
//! the relay said hello on it, and how many per forwarded port.

use std::future::Future;

use futures::FutureExt;
use kdev_protocol::relay as frame;
use kube::api::Portforwarder;
use tokio::io::{AsyncReadExt, DuplexStream};

use super::dial::{DIAL_TIMEOUT, dial};
use super::spare_pool::{OpenSpare, Spare};
use super::target::ForwardTarget;

/// Warm streams kept open to the relay, per forwarded port (a browser opens several
/// connections at once). `KDEV_FORWARD_SPARES` overrides it (0: none), to measure what they
/// buy.
const SPARES: usize = 2;

/// How many spares to keep per forwarded port: [`SPARES`], or `KDEV_FORWARD_SPARES`.
pub(super) fn wanted() -> usize {
    std::env::var("KDEV_FORWARD_SPARES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SPARES)
}

/// A warm stream to a pod's relay, with what keeps it open.
pub(super) struct RelaySpare {
    pod: String,
    relay: u16,
    connection: u64,
    pub(super) pf: Portforwarder,
    pub(super) stream: DuplexStream,
}

impl Spare<ForwardTarget> for RelaySpare {
    /// Whether it leads where `target` forwards: its pod's relay, over its session's connection.
    fn serves(&self, target: &ForwardTarget) -> bool {
        self.pod == target.pod
            && target.relay == Some(self.relay)
            && self.connection == target.connection
    }

    /// Whether its stream still stands (nothing may arrive on a spare before it is used).
    fn alive(&mut self) -> bool {
        let mut byte = [0u8; 1];
        self.stream.read(&mut byte).now_or_never().is_none()
    }
}

/// Opens [`RelaySpare`]s, once the target's relay port is known.
pub(super) struct RelaySpareOpener;

impl OpenSpare<ForwardTarget> for RelaySpareOpener {
    type Spare = RelaySpare;

    fn takes_spares(&self, target: &ForwardTarget) -> bool {
        target.relay.is_some()
    }

    fn open(
        &self,
        target: ForwardTarget,
    ) -> impl Future<Output = Result<RelaySpare, String>> + Send + 'static {
        open_spare(target)
    }
}

/// A stream to the relay, ready once the relay said hello on it.
async fn open_spare(target: ForwardTarget) -> Result<RelaySpare, String> {
    let relay = target.relay.ok_or("no relay to open a spare to")?;
    let (pf, mut stream) = dial(&target, relay).await?;
    let mut hello = vec![0u8; frame::HEADER_LEN + frame::HELLO_PAYLOAD.len()];
    tokio::time::timeout(DIAL_TIMEOUT, stream.read_exact(&mut hello))
        .await
        .map_err(|_| "the relay did not say hello".to_string())?
        .map_err(|e| format!("the relay's stream ended: {e}"))?;
    match frame::decode(&mut hello) {
        Ok(Some((frame::HELLO, p))) if p == frame::HELLO_PAYLOAD => Ok(RelaySpare {
            pod: target.pod.clone(),
            connection: target.connection,
            relay,
            pf,
            stream,
        }),
        _ => Err(format!(
            "port {relay} of {} is not kdev's relay",
            target.pod
        )),
    }
}

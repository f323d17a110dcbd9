//! A service's port-forwards as its session holds them: the local listeners
//! ([`crate::pod::forward`]), and the channels through which the reload loop points them at the
//! current pod, hears their errors and counts the app's exits.

use std::net::SocketAddr;

use tokio::sync::{mpsc, watch};

use crate::error::UsageError;
use crate::pod::forward::{self, ForwardEvent, ForwardTarget};

/// The forwards' side of the loop: which pod they dial, their errors, the app's exits.
pub struct Forwards {
    /// The pod (and API connection) new forwarded connections go to; `None` while there is none.
    pub target: watch::Sender<Option<ForwardTarget>>,
    pub events: mpsc::UnboundedReceiver<ForwardEvent>,
    /// Counts app exits: forwarded connections to an exited process are closed at once.
    pub app_exits: watch::Sender<u64>,
    /// The listeners' end of `events`, until they start (then theirs alone: without listeners
    /// the channel is closed).
    events_in: Option<mpsc::UnboundedSender<ForwardEvent>>,
}

/// No pod to forward to yet, and no listener.
impl Default for Forwards {
    fn default() -> Forwards {
        let (events_in, events) = mpsc::unbounded_channel();
        Forwards {
            target: watch::channel(None).0,
            events,
            app_exits: watch::channel(0).0,
            events_in: Some(events_in),
        }
    }
}

impl Forwards {
    /// Listen on each local port, forwarding to its remote port: the bound addresses with
    /// their remote ports. A port in use is a usage error suggesting another.
    pub async fn listen(
        &mut self,
        ports: &[(u16, u16)],
    ) -> Result<Vec<(SocketAddr, u16)>, UsageError> {
        let Some(events) = self.events_in.take() else {
            return Ok(Vec::new());
        };
        let mut addrs = Vec::new();
        for (local, remote) in ports {
            let addr = forward::start(
                self.target.subscribe(),
                self.app_exits.subscribe(),
                *local,
                *remote,
                events.clone(),
            )
            .await
            .map_err(|e| {
                UsageError(format!(
                    "cannot listen on localhost:{local} ({e}; is it in use? map another port in \
                     kdev.yaml `run.ports: [\"{}:{remote}\"]`)",
                    local.wrapping_add(1)
                ))
            })?;
            addrs.push((addr, *remote));
        }
        Ok(addrs)
    }

    /// The pod's forward relay is on `port` (from the Welcome, or a new supervisor's start).
    pub fn set_relay(&self, port: u16) {
        self.target.send_if_modified(|t| match t {
            Some(t) if t.relay != Some(port) => {
                t.relay = Some(port);
                true
            }
            _ => false,
        });
    }
}

/// The line saying what a workload's forwards reach (`delve`: Delve's port, under `kdev debug`).
pub fn describe(workload: &str, forwarded: &[(SocketAddr, u16)], delve: Option<u16>) -> String {
    let status: Vec<String> = forwarded
        .iter()
        .map(|(addr, remote)| {
            if delve == Some(*remote) {
                format!("{addr} → Delve (port {remote})")
            } else {
                format!("http://{addr} → pod port {remote}")
            }
        })
        .collect();
    if status.is_empty() {
        format!("{workload}: no ports to forward")
    } else {
        format!("{workload}: forwarding {}", status.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarding_line_names_delve_and_the_app_ports() {
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(
            describe("deployment/api", &[], None),
            "deployment/api: no ports to forward"
        );
        assert_eq!(
            describe(
                "deployment/api",
                &[(at(8080), 80), (at(2345), 2345)],
                Some(2345)
            ),
            "deployment/api: forwarding http://127.0.0.1:8080 → pod port 80, \
             127.0.0.1:2345 → Delve (port 2345)"
        );
    }
}

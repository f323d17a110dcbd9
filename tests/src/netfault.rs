//! Network faults on this machine, for the fault tests: a TCP proxy in front of the API server
//! (a "remote" cluster, optionally with a delay each way), a kubeconfig that goes through it,
//! and a black hole that silently drops every packet of the connections that exist at the
//! moment — both ways, no reset — as a NAT or a cloud load balancer does when it forgets an
//! idle flow (new connections are left alone), or of every connection to one port, new ones
//! included, as for a laptop gone offline.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A TCP proxy on 127.0.0.1 that forwards to `upstream`, delaying each direction by `delay`.
pub struct TcpProxy {
    pub port: u16,
    /// Client-side ports of the connections accepted so far that are still open.
    clients: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let clients = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let clients = clients.clone();
            tokio::spawn(async move {
                while let Ok((down, peer)) = listener.accept().await {
                    let clients = clients.clone();
                    tokio::spawn(async move {
                        let Ok(up) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = down.set_nodelay(true);
                        let _ = up.set_nodelay(true);
                        clients
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(peer.port());
                        let (dr, dw) = down.into_split();
                        let (ur, uw) = up.into_split();
                        let a = tokio::spawn(pipe(dr, uw, delay));
                        let b = tokio::spawn(pipe(ur, dw, delay));
                        let _ = tokio::join!(a, b);
                        clients
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|p| *p != peer.port());
                    });
                }
            })
        };
        Ok(TcpProxy {
            port,
            clients,
            task,
        })
    }

    /// Client-side ports of the proxy's open connections.
    pub fn client_ports(&self) -> Vec<u16> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copy one direction, each chunk delivered `delay` after it was read (order kept).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// The API server's address (host:port) from the current kubeconfig.
pub async fn api_server_addr() -> Result<SocketAddr> {
    let config = kube::Config::infer().await?;
    let uri = config.cluster_url;
    let host = uri.host().context("the kubeconfig's server has no host")?;
    let port = uri.port_u16().unwrap_or(443);
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .context("the API server's host does not resolve")
}

/// A [`TcpProxy`] in front of the API server, without delay, and a kubeconfig that goes
/// through it.
pub struct ProxiedApi {
    pub proxy: TcpProxy,
    kubeconfig: tempfile::NamedTempFile,
}

impl ProxiedApi {
    pub async fn start() -> Result<ProxiedApi> {
        let proxy = TcpProxy::start(api_server_addr().await?, Duration::ZERO).await?;
        let kubeconfig = tempfile::NamedTempFile::new()?;
        kubeconfig_via(proxy.port, kubeconfig.path())?;
        Ok(ProxiedApi { proxy, kubeconfig })
    }

    /// The kubeconfig's path, for `KUBECONFIG`.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig.path().to_string_lossy().into_owned()
    }
}

/// Write a copy of the current kubeconfig to `to`, with every cluster's server replaced by
/// `https://127.0.0.1:<port>` (the test cluster's certificate names 127.0.0.1).
pub fn kubeconfig_via(port: u16, to: &Path) -> Result<()> {
    let from = std::env::var("KUBECONFIG").context("KUBECONFIG is not set")?;
    let text = std::fs::read_to_string(&from).with_context(|| format!("reading {from}"))?;
    let mut doc: serde_json::Value = yaml_serde::from_str(&text)?;
    let clusters = doc["clusters"]
        .as_array_mut()
        .context("the kubeconfig has no clusters")?;
    for c in clusters {
        c["cluster"]["server"] = serde_json::Value::String(format!("https://127.0.0.1:{port}"));
    }
    std::fs::write(to, yaml_serde::to_string(&doc)?)?;
    Ok(())
}

/// Drops, in both directions and without a reset, every packet of the loopback connections
/// between the client ports given and `server_port`, through an iptables chain of its own
/// (removed, with its jump, on drop).
pub struct BlackHole {
    chain: String,
}

impl BlackHole {
    pub fn swallow(server_port: u16, client_ports: &[u16]) -> Result<BlackHole> {
        if client_ports.is_empty() {
            bail!("no connections to black-hole");
        }
        let chain = format!("KDEV-TEST-BH-{}", std::process::id() % 100_000);
        iptables(&["-N", &chain])?;
        let hole = BlackHole { chain };
        for c in client_ports {
            let (c, s) = (c.to_string(), server_port.to_string());
            for (sport, dport) in [(&c, &s), (&s, &c)] {
                iptables(&[
                    "-A",
                    &hole.chain,
                    "-p",
                    "tcp",
                    "--sport",
                    sport,
                    "--dport",
                    dport,
                    "-j",
                    "DROP",
                ])?;
            }
        }
        iptables(&["-I", "INPUT", "-i", "lo", "-j", &hole.chain])?;
        Ok(hole)
    }

    /// Every packet to or from `server_port` on loopback, new connections included: a laptop
    /// whose network went away.
    pub fn whole_port(server_port: u16) -> Result<BlackHole> {
        let chain = format!("KDEV-TEST-BHP-{}", std::process::id() % 100_000);
        iptables(&["-N", &chain])?;
        let hole = BlackHole { chain };
        let port = server_port.to_string();
        for side in ["--sport", "--dport"] {
            iptables(&["-A", &hole.chain, "-p", "tcp", side, &port, "-j", "DROP"])?;
        }
        iptables(&["-I", "INPUT", "-i", "lo", "-j", &hole.chain])?;
        Ok(hole)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "INPUT", "-i", "lo", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}

fn iptables(args: &[&str]) -> Result<()> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .context("running iptables (the fault tests need root and iptables)")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

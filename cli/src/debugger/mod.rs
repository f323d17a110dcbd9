//! `kdev debug`'s debug endpoint: the editor attaches once, to `127.0.0.1:<port>`, and stays
//! attached across every reload.
//!
//! Each reload runs the app under a new Delve (the supervisor restarts `dlv exec` with the new
//! binary), and a Delve connection ends with its Delve. So kdev, not Delve, holds the editor's
//! connection: for each one it dials Delve through the session's port-forward (`upstream`, a
//! local forward to the pod's Delve port that follows the current pod and waits for a
//! restarting Delve) and passes messages both ways, following what the client set up. When
//! the Delve connection ends for any reason (a reload, a dropped session, a replaced pod), kdev
//! tells the client what it must know now, dials again, and sets the new Delve up as the client
//! had set up the old one; messages the client sends meanwhile wait. The protocol is Delve's
//! choice of the client's first byte: DAP ([`dap`]) or JSON-RPC ([`jsonrpc`]); one driver
//! ([`drive`]) runs either [`keeper::Keeper`].

mod dap;
mod jsonrpc;
mod keeper;
mod link;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use crate::status::ServiceHandle;
use crate::ui::{Ui, fmt_duration};
use keeper::{ClientStep, Keeper};
use link::{Framing, Link};

/// Between attempts to reach a Delve that is not there (yet).
const REDIAL: Duration = Duration::from_millis(100);
/// How long kdev keeps trying before it says it is still waiting.
const SAY_WAITING: Duration = Duration::from_secs(10);

/// How long a new Delve started with `--continue` may take to run its process (see [`settle`]).
const CONTINUE_AT_START_WITHIN: Duration = Duration::from_secs(10);

/// Listen on `127.0.0.1:<port>`; each client's Delve is reached through `upstream`. Returns
/// the bound address. `status` counts the clients attached. `continue_at_start`: each Delve runs
/// its process by itself (`--continue`), which kdev waits for before it sets a new Delve up.
pub async fn start(
    port: u16,
    upstream: SocketAddr,
    ui: Ui,
    status: Option<ServiceHandle>,
    continue_at_start: bool,
) -> std::io::Result<SocketAddr> {
    let settle_within = if continue_at_start {
        CONTINUE_AT_START_WITHIN
    } else {
        Duration::ZERO
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let _ = conn.set_nodelay(true);
            let ui = ui.clone();
            let status = status.clone();
            tokio::spawn(async move {
                let _attached = status.map(Attached::new);
                let mut first = [0u8; 1];
                // The client speaks first in both protocols.
                if !matches!(conn.peek(&mut first).await, Ok(1)) {
                    return;
                }
                let (read, write) = conn.into_split();
                let framing = Framing::of_first_byte(first[0]);
                let client = Link::new(framing, read, write);
                let to = Upstream {
                    addr: upstream,
                    settle_within,
                };
                match framing {
                    Framing::Dap => drive(client, to, dap::DapKeeper::new(), &ui).await,
                    Framing::JsonRpc => drive(client, to, jsonrpc::RpcKeeper::new(), &ui).await,
                }
            });
        }
    });
    Ok(addr)
}

/// One client in the status's count, while it is attached.
struct Attached(ServiceHandle);

impl Attached {
    fn new(status: ServiceHandle) -> Attached {
        status.update(|s, _| s.debugger_clients += 1);
        Attached(status)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0
            .update(|s, _| s.debugger_clients = s.debugger_clients.saturating_sub(1));
    }
}

/// The client's messages that arrived while there was no Delve.
type Held = Vec<Value>;

/// Where the client's Delve is, and how long a new one may take to run its process.
#[derive(Clone, Copy)]
struct Upstream {
    addr: SocketAddr,
    settle_within: Duration,
}

/// Keep one client attached across Delves until it leaves (or ends its session).
async fn drive<K: Keeper>(
    mut client: Link<OwnedWriteHalf>,
    upstream: Upstream,
    mut keeper: K,
    ui: &Ui,
) {
    let mut held: Held = Vec::new();
    let mut delves = 0u32;
    // The PID of the process the last Delve debugged.
    let mut pid = None;
    let mut lost_at: Option<Instant> = None;
    loop {
        // Reach a Delve; hold what the client says meanwhile.
        let Some(mut up) = dial(upstream.addr, &mut client, &mut keeper, &mut held).await else {
            return;
        };
        delves += 1;
        if delves == 1 {
            // Only to know it again after a dropped connection.
            pid = settle(upstream.addr, Duration::ZERO, None).await;
        } else {
            pid = settle(upstream.addr, upstream.settle_within, pid).await;
            match keeper.replay(&mut up).await {
                Ok((to_client, done)) => {
                    for m in &to_client {
                        if client.send(m).await.is_err() {
                            return;
                        }
                    }
                    let took = lost_at.take().map(|t| t.elapsed()).unwrap_or_default();
                    ui.ok(&replayed_line(K::PROTOCOL, &done, took));
                }
                Err(why) => {
                    tracing::debug!(target: "kdev::debugger", "replay: {why}");
                    tokio::time::sleep(REDIAL).await;
                    continue;
                }
            }
        }
        for m in held.drain(..) {
            if up.send(&m).await.is_err() {
                break;
            }
        }
        // Pass messages both ways until one side ends.
        loop {
            let hold = keeper.held_until();
            tokio::select! {
                () = sleep_until(hold) => {
                    for out in keeper.release() {
                        if client.send(&out).await.is_err() {
                            return;
                        }
                    }
                }
                m = client.recv() => {
                    let Some(m) = m else {
                        // The client left: so does kdev's connection to Delve.
                        return;
                    };
                    tracing::trace!(target: "kdev::debugger", "client → {m}");
                    match keeper.on_client(m) {
                        ClientStep::Forward(m) => {
                            if up.send(&m).await.is_err() {
                                held.push(m);
                            }
                        }
                        ClientStep::Answer(m) => {
                            if client.send(&m).await.is_err() {
                                return;
                            }
                        }
                        ClientStep::Hold => {}
                    }
                }
                m = up.recv() => {
                    let Some(m) = m else { break };
                    tracing::trace!(target: "kdev::debugger", "Delve → {m}");
                    for out in keeper.on_upstream(m) {
                        if client.send(&out).await.is_err() {
                            return;
                        }
                    }
                    for req in keeper.own_requests() {
                        let _ = up.send(&req).await;
                    }
                    for note in keeper.notes() {
                        ui.warn(&note);
                    }
                }
            }
        }
        if keeper.ending() {
            return;
        }
        // Delve went away: a reload, a dropped session or a replaced pod.
        tracing::debug!(target: "kdev::debugger", "the connection to Delve ended");
        lost_at = Some(Instant::now());
        if keeper.stopped() {
            ui.step(&format!(
                "debugger ({}): the app was stopped in your debugger; it is replaced by the new \
                 one, and your debugger stays attached",
                K::PROTOCOL
            ));
        }
        for m in keeper.lost() {
            if client.send(&m).await.is_err() {
                return;
            }
        }
    }
}

/// Until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Connect to Delve through the forward, meanwhile following the client (`None`: it left).
async fn dial<K: Keeper>(
    upstream: SocketAddr,
    client: &mut Link<OwnedWriteHalf>,
    keeper: &mut K,
    held: &mut Held,
) -> Option<Link<OwnedWriteHalf>> {
    let t0 = Instant::now();
    let mut said = false;
    loop {
        if let Ok(conn) = TcpStream::connect(upstream).await {
            let _ = conn.set_nodelay(true);
            let (read, write) = conn.into_split();
            return Some(Link::new(client_framing::<K>(), read, write));
        }
        if !said && t0.elapsed() > SAY_WAITING {
            tracing::info!(target: "kdev::debugger", "waiting for Delve to listen again");
            said = true;
        }
        tokio::select! {
            m = client.recv() => match keeper.on_client(m?) {
                ClientStep::Forward(m) => held.push(m),
                ClientStep::Answer(m) => client.send(&m).await.ok()?,
                ClientStep::Hold => {}
            },
            () = tokio::time::sleep(REDIAL) => {}
        }
    }
}

/// Wait (`within` at most) until a new Delve runs its process, as its `--continue` makes it
/// do just after it starts listening. Until then a halt (which a DAP attach and kdev's
/// JSON-RPC replay begin with) may come first and be undone by that continue: Delve runs it
/// once the process stops, so the process runs on past the breakpoint the client was waiting
/// for, and the client's next call waits for a stop that never comes. On a loaded machine
/// Delve took more than a second to get there (CI: `one_attach_lasts_across_saves…`).
///
/// The wait ends as soon as the process runs, has stopped at a breakpoint (Delve's own for an
/// unrecovered panic included) or has exited (Delve then answers with an error). It is skipped
/// for the Delve kdev was connected to before (`previous`, its process's PID: a dropped
/// connection, not a reload), and under `--stop-at-start` (`within` is zero: the process never
/// runs by itself). Returns the PID of the process Delve debugs, if it said.
async fn settle(upstream: SocketAddr, within: Duration, previous: Option<u64>) -> Option<u64> {
    let conn = TcpStream::connect(upstream).await.ok()?;
    let (read, write) = conn.into_split();
    let mut side = Link::new(Framing::JsonRpc, read, write);
    let mut n = 0u64;
    let mut ask = async |method: &str, params: Value| -> Option<Value> {
        n += 1;
        let call = serde_json::json!({"method": method, "params": [params], "id": n});
        side.send(&call).await.ok()?;
        tokio::time::timeout(Duration::from_secs(1), side.recv())
            .await
            .ok()
            .flatten()
    };
    let pid = ask("RPCServer.ProcessPid", serde_json::json!({}))
        .await
        .and_then(|a| a["result"]["Pid"].as_u64());
    if within.is_zero() || (pid.is_some() && pid == previous) {
        return pid;
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Some(a) = ask("RPCServer.State", serde_json::json!({"NonBlocking": true})).await else {
            return pid;
        };
        let state = &a["result"]["State"];
        if !a["error"].is_null()
            || state["Running"] == true
            || state["exited"] == true
            || !state["currentThread"]["breakPoint"].is_null()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::debug!(target: "kdev::debugger", "the new Delve did not run its process within {within:?}");
    pid
}

/// Delve speaks to kdev in the client's protocol.
fn client_framing<K: Keeper>() -> Framing {
    if K::PROTOCOL == "DAP" {
        Framing::Dap
    } else {
        Framing::JsonRpc
    }
}

/// kdev's line once a new Delve is set up for a client.
fn replayed_line(protocol: &str, done: &keeper::Replayed, took: Duration) -> String {
    let mut line = format!(
        "debugger ({protocol}): attached again {} after the connection to Delve ended (a \
         reload, or a dropped connection); {} breakpoint{} set again",
        fmt_duration(took),
        done.breakpoints,
        if done.breakpoints == 1 { "" } else { "s" }
    );
    if !done.unverified.is_empty() {
        line.push_str(&format!(
            ", not verified (no such place in the new code): {}",
            done.unverified.join(", ")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_what_could_not_be_set() {
        let done = keeper::Replayed {
            breakpoints: 2,
            unverified: vec!["main.go:40 (could not find statement)".into()],
        };
        let line = replayed_line("DAP", &done, Duration::from_millis(120));
        assert!(line.contains("2 breakpoints set again"), "{line}");
        assert!(line.contains("main.go:40"), "{line}");
        assert_eq!(Framing::of_first_byte(b'C'), Framing::Dap);
        assert_eq!(Framing::of_first_byte(b'{'), Framing::JsonRpc);
    }
}

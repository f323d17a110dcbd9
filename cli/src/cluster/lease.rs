//! The session lock: a `coordination.k8s.io` Lease per owner and workload, held while
//! `kdev watch` runs, so a second kdev for the same developer's workload does not sync into the
//! same pod.
//!
//! An idle session must cost the API server next to nothing (1,000 developers renewing every
//! 5 s would be 200 writes a second to etcd), yet a second kdev must be refused at once and a
//! crashed one taken over quickly. So the Lease says how its kdev is connected
//! ([`CONNECTION_ANNOTATION`]):
//! - `connecting` (starting, waiting for its pod, reconnecting): renewed every 5 s; the Lease
//!   is the only sign of life, and a fresh one (renewed within 15 s) refuses a second kdev.
//! - `connected` (a session stream to the pod): renewed every 30 s (each of a session's k
//!   Leases, one per service, every 30·k s: one write per 30 s in all), and its liveness is carried
//!   by that stream: the pod's `kdev-controller session-state` says whether a `serve` holds the
//!   session and heard its kdev within 15 s (a live kdev is heard every few seconds). A crashed
//!   kdev's stream closes with its process, so the next kdev takes over at once, saying so.
//!   While no dev pod runs (it is being replaced), a Lease renewed within 15 s counts as alive.
//!
//! A Lease past its `leaseDurationSeconds` (90 s, 90·k s) is free whatever its pod says. The holder
//! watches its Lease, so `kdev down`, `kdev gc` or a takeover stop it at once; a renewal that
//! finds the Lease changed (409) or gone (404) does too, should the watch be down.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::SessionLost;
use crate::pod::session_state::{self, PodSession};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use kdev_protocol::labels::{
    CONNECTION_ANNOTATION, MANAGED_BY as LABEL_MANAGED_BY, MANAGED_BY_KDEV, OWNER as LABEL_OWNER,
    PROJECT as LABEL_PROJECT, SERVICE_ANNOTATION, WORKLOAD_ANNOTATION,
};

/// How long a Lease lives without renewal (times the session's number of Leases).
pub const LEASE_SECONDS: i32 = 90;
/// Renewals of a connected session: at most one write per 30 s while idle (a session of
/// several services renews each Lease that many times less often).
const RENEW_CONNECTED: Duration = Duration::from_secs(30);
/// Renewals while starting or reconnecting.
const RENEW_CONNECTING: Duration = Duration::from_secs(5);
/// A `connecting` Lease renewed within this many seconds has a live holder.
const FRESH_SECONDS: i64 = 15;
/// A pod's `serve` that heard its kdev within this has a live kdev (it pings after 4 s of
/// silence; the pod marks what it heard every 2 s).
const HEARD_WITHIN_MS: u64 = 15_000;
/// One renewal's requests must answer within this: a connection a NAT forgot would otherwise
/// hold the renewal (and let the Lease expire) for minutes. A timed-out request's connection is
/// dropped, so the next attempt dials or takes another.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// A renewal that has not answered within this is taken as failing (for the warnings).
const SLOW_ATTEMPT: Duration = Duration::from_secs(1);
/// After a conflicting write (someone else wrote the Lease): try again this soon.
const RETRY_AFTER_CONFLICT: Duration = Duration::from_millis(200);

const CONNECTED: &str = "connected";
const CONNECTING: &str = "connecting";

/// A held session Lease; renewed in the background until released or dropped.
pub struct SessionLease {
    api: Api<Lease>,
    name: String,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
    /// Whether the session has a stream to its pod; the renewer's cadence follows it.
    connected: tokio::sync::watch::Sender<bool>,
    /// Set by the renewer when the Lease is no longer ours: why.
    lost: tokio::sync::watch::Receiver<Option<String>>,
    /// When this session took over another kdev's (live but unheard) Lease: what to say.
    pub took_over: Option<String>,
}

/// This process's identity as a Lease holder: `owner@host/pid`.
pub fn holder_identity(owner: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{owner}@{host}/{}", std::process::id())
}

/// The Lease's name for a (personalized) workload name.
pub fn lease_name(workload: &str) -> String {
    let mut n = format!("kdev-{workload}");
    n.truncate(63);
    n.trim_end_matches('-').to_string()
}

/// Seconds since `l` was last renewed (or acquired); `i64::MAX` when it never was.
fn renewed_ago(l: &Lease, now: Timestamp) -> i64 {
    l.spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map_or(i64::MAX, |t| now.as_second() - t.0.as_second())
}

fn expired(l: &Lease, now: Timestamp) -> bool {
    let secs = l
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .unwrap_or(LEASE_SECONDS) as i64;
    renewed_ago(l, now) > secs
}

/// The connection state a Lease's holder wrote (`None` from kdev before 0.x: it renewed every
/// 5 s, as `connecting` does).
fn connection(l: &Lease) -> Option<&str> {
    l.metadata
        .annotations
        .as_ref()?
        .get(CONNECTION_ANNOTATION)
        .map(String::as_str)
}

/// Whether a live Lease's holder is still there.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    /// Alive: refuse, saying why.
    Alive(String),
    /// Gone: take over, saying why.
    Gone(String),
    /// Could not tell: refuse (the safe side), saying why.
    Unsure(String),
}

/// Judge a live Lease's holder from the connection it wrote, how long ago it renewed, and what
/// the workload's running dev pods said.
fn judge(
    connection: Option<&str>,
    renewed_ago: i64,
    pods: &[(String, Result<PodSession, String>)],
) -> Holder {
    if connection != Some(CONNECTED) && renewed_ago < FRESH_SECONDS {
        return Holder::Alive(format!(
            "it is starting or reconnecting (renewed {renewed_ago}s ago)"
        ));
    }
    for (pod, answer) in pods {
        if let Ok(PodSession {
            held: true,
            heard_ms_ago: Some(ms),
        }) = answer
            && *ms < HEARD_WITHIN_MS
        {
            return Holder::Alive(format!(
                "it is connected to pod {pod} (heard {:.0}s ago)",
                *ms as f64 / 1000.0
            ));
        }
    }
    if pods.is_empty() && renewed_ago < FRESH_SECONDS {
        // Its pod is being replaced (the old one is going, the new one not running yet): the
        // kdev that renewed a moment ago is about to reconnect.
        return Holder::Alive(format!(
            "no dev pod runs right now, and it renewed its Lease {renewed_ago}s ago"
        ));
    }
    if let Some((pod, Err(why))) = pods.iter().find(|(_, a)| a.is_err()) {
        return Holder::Unsure(format!(
            "pod {pod} could not say whether it is connected: {why}"
        ));
    }
    let pods = match pods.len() {
        0 => "no dev pod runs".to_string(),
        _ => format!(
            "no kdev is connected to {}",
            pods.iter()
                .map(|(p, _)| format!("pod {p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Holder::Gone(format!("{pods} (its Lease was renewed {renewed_ago}s ago)"))
}

/// The Lease as this session writes it.
fn lease_object(
    r: &LeaseRequest<'_>,
    name: &str,
    holder: &str,
    duration_s: i32,
    now: Timestamp,
) -> anyhow::Result<Lease> {
    let (owner, project) = (r.owner, r.project);
    let mut lease: Lease = serde_json::from_value(serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "labels": { LABEL_MANAGED_BY: MANAGED_BY_KDEV, LABEL_OWNER: owner, LABEL_PROJECT: project },
            "annotations": {
                WORKLOAD_ANNOTATION: r.workload,
                SERVICE_ANNOTATION: r.service,
                CONNECTION_ANNOTATION: CONNECTING,
            }
        },
        "spec": { "holderIdentity": holder, "leaseDurationSeconds": duration_s }
    }))?;
    if let Some(spec) = lease.spec.as_mut() {
        spec.acquire_time = Some(MicroTime(now));
        spec.renew_time = Some(MicroTime(now));
    }
    Ok(lease)
}

/// Who asks for the session Lease, for what.
pub struct LeaseRequest<'a> {
    pub namespace: &'a str,
    pub owner: &'a str,
    pub project: &'a str,
    pub service: &'a str,
    pub workload: &'a str,
    /// The labels of the workload's dev pods (asked whether another kdev is connected).
    pub pod_selector: &'a BTreeMap<String, String>,
    /// `--take-over`: take it even from a live kdev.
    pub take_over: bool,
    /// How many Leases the session holds (one per service): a connected session's renewals
    /// are spread so that together they make one write per 30 s.
    pub leases_in_session: usize,
}

/// Take the session Lease for `workload`, or fail naming who holds it, since when, and how
/// it is known to be alive.
pub async fn acquire(client: &Client, r: LeaseRequest<'_>) -> anyhow::Result<SessionLease> {
    let api: Api<Lease> = Api::namespaced(client.clone(), r.namespace);
    let name = lease_name(r.workload);
    let holder = holder_identity(r.owner);
    let now = Timestamp::now();
    let spread = r.leases_in_session.clamp(1, 100) as u32;
    let renew_connected = RENEW_CONNECTED * spread;
    let duration_s = LEASE_SECONDS * spread as i32;
    let mut lease = lease_object(&r, &name, &holder, duration_s, now)?;
    let mut took_over = None;
    let written = match api.get_opt(&name).await? {
        None => api.create(&PostParams::default(), &lease).await?,
        Some(current) => {
            let spec = current.spec.clone().unwrap_or_default();
            let other = spec.holder_identity.clone().unwrap_or_default();
            if !expired(&current, now) && !r.take_over && other != holder {
                let ago = renewed_ago(&current, now);
                let pods = if connection(&current) == Some(CONNECTED) || ago >= FRESH_SECONDS {
                    session_state::ask_pods(client, r.namespace, r.pod_selector).await?
                } else {
                    Vec::new()
                };
                match judge(connection(&current), ago, &pods) {
                    Holder::Gone(why) => {
                        took_over = Some(format!(
                            "took over {}'s session of {other}: {why}",
                            r.workload
                        ));
                    }
                    Holder::Alive(why) | Holder::Unsure(why) => {
                        let since = spec
                            .acquire_time
                            .map(|t| t.0.to_string())
                            .unwrap_or_else(|| "?".into());
                        return Err(SessionLost(refusal(r.workload, &other, &since, &why)).into());
                    }
                }
            }
            lease.metadata.resource_version = current.resource_version();
            api.replace(&name, &PostParams::default(), &lease).await?
        }
    };
    let (connected, connected_rx) = tokio::sync::watch::channel(false);
    let (lost_tx, lost) = tokio::sync::watch::channel(None);
    let renewer = tokio::spawn(
        Renewer {
            api: api.clone(),
            name: name.clone(),
            holder: holder.clone(),
            lease: written,
            renew_connected,
            connected: connected_rx,
            lost: lost_tx,
        }
        .run(),
    );
    Ok(SessionLease {
        api,
        name,
        holder,
        renewer,
        connected,
        lost,
        took_over,
    })
}

/// Why a second kdev does not start.
fn refusal(workload: &str, other: &str, since: &str, why: &str) -> String {
    format!(
        "{workload} is already being developed by {other} (session since {since}; {why}). Stop \
         that kdev first, or pass --take-over; a kdev that crashed or lost its network is taken \
         over by the next `kdev watch` once its pod stops hearing it (15s)"
    )
}

/// What a renewal found.
#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    /// Still ours: renew it.
    Ours,
    /// Gone or someone else's: the session must stop, for this reason.
    Lost(String),
}

/// Decide from the Lease as read (None: it no longer exists).
fn check_renewal(name: &str, current: Option<&Lease>, holder: &str) -> Renewal {
    let Some(lease) = current else {
        return Renewal::Lost(format!(
            "the session Lease {name} was deleted (by `kdev down`, or `kdev gc`); stopping so \
             this kdev does not sync into a pod it no longer holds. Run `kdev watch` again to \
             start a new session"
        ));
    };
    let other = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    if other == holder {
        Renewal::Ours
    } else {
        Renewal::Lost(format!(
            "the session Lease {name} was taken over by {other}; stopping (this kdev no longer \
             holds the session)"
        ))
    }
}

/// Whether the watch was refused for lack of permission (retrying cannot help).
fn forbidden(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 403
    )
}

/// Keeps the Lease: renews it, and watches it for a deletion or a takeover.
struct Renewer {
    api: Api<Lease>,
    name: String,
    holder: String,
    /// The Lease as last written (its resourceVersion makes a renewal one write, no read).
    lease: Lease,
    /// How often to renew while connected.
    renew_connected: Duration,
    connected: tokio::sync::watch::Receiver<bool>,
    lost: tokio::sync::watch::Sender<Option<String>>,
}

/// What a Lease left unrenewed means, in rising order of concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Unrenewed {
    /// The API server does not answer, but the pod hears this kdev: nobody can take over.
    Slow,
    /// Neither the API server nor the pod hears this kdev: another `kdev watch` of the
    /// workload would judge it gone ([`judge`]) and take the session over.
    TakeoverPossible,
}

/// What to say of a Lease last renewed `unrenewed` ago. Connected, the pod vouches for this
/// kdev: a warning once a renewal and a half is missed. Not connected, a second kdev takes over
/// once the Lease is no longer fresh, and this kdev learns it only when it reaches the API
/// server again: say so then, not later.
fn unrenewed_warning(
    connected: bool,
    unrenewed: Duration,
    renew_connected: Duration,
) -> Option<Unrenewed> {
    if !connected && unrenewed.as_secs() >= FRESH_SECONDS as u64 {
        Some(Unrenewed::TakeoverPossible)
    } else if unrenewed > renew_connected + RENEW_CONNECTED / 2 {
        Some(Unrenewed::Slow)
    } else {
        None
    }
}

/// What the holder said of its unrenewed Lease since the last renewal.
struct Unheard {
    lease: String,
    renew_connected: Duration,
    /// The highest concern said.
    warned: Option<Unrenewed>,
}

impl Unheard {
    /// Say what a Lease unrenewed for `unrenewed` means, once per level of concern.
    fn say(&mut self, connected: bool, unrenewed: Duration) {
        let warning = unrenewed_warning(connected, unrenewed, self.renew_connected);
        if let Some(w) = warning
            && warning > self.warned
        {
            crate::status::write_stderr(&unrenewed_message(w, &self.lease, unrenewed));
            self.warned = warning;
        }
    }
}

fn unrenewed_message(warning: Unrenewed, lease: &str, unrenewed: Duration) -> String {
    let secs = unrenewed.as_secs();
    match warning {
        Unrenewed::TakeoverPossible => format!(
            "kdev: warning: this kdev has not renewed its session Lease {lease} for {secs}s \
             and has no stream to its pod: another `kdev watch` of this workload can take the \
             session over now; this kdev stops, saying so, once it reaches the API server again\n"
        ),
        Unrenewed::Slow => format!(
            "kdev: warning: the session Lease {lease} could not be renewed for {secs}s (the API \
             server does not answer); still trying\n"
        ),
    }
}

impl Renewer {
    async fn run(mut self) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let watch = watcher(self.api.clone(), config).default_backoff();
        let mut watch = std::pin::pin!(watch);
        let mut watching = true;
        // A re-list that does not list the Lease means it was deleted meanwhile.
        let mut listed = false;
        let mut last_renewed = tokio::time::Instant::now();
        let mut next = last_renewed + RENEW_CONNECTING;
        // An attempt failed since the last renewal.
        let mut failing = false;
        let mut unheard = Unheard {
            lease: self.name.clone(),
            renew_connected: self.renew_connected,
            warned: None,
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                changed = self.connected.changed() => {
                    if changed.is_err() {
                        // The session is gone; the task is about to be aborted.
                        std::future::pending::<()>().await;
                    }
                    // Write the new state now: `connecting` must look fresh at once.
                }
                event = watch.next(), if watching => {
                    let seen = match event {
                        Some(Ok(watcher::Event::Init)) => { listed = false; None }
                        Some(Ok(watcher::Event::InitApply(l) | watcher::Event::Apply(l))) => {
                            listed = true;
                            Some(Some(l))
                        }
                        Some(Ok(watcher::Event::InitDone)) => (!listed).then_some(None),
                        Some(Ok(watcher::Event::Delete(_))) => Some(None),
                        Some(Err(e)) => {
                            tracing::debug!("watching the session lease: {e}");
                            // A Role without `watch` on leases: the renewals notice (in 30 s).
                            watching = !forbidden(&e);
                            None
                        }
                        None => { watching = false; None }
                    };
                    if let Some(current) = seen
                        && let Renewal::Lost(why) = check_renewal(&self.name, current.as_ref(), &self.holder)
                    {
                        let _ = self.lost.send(Some(why));
                        return;
                    }
                    continue;
                }
            }
            let connected = *self.connected.borrow_and_update();
            let every = if connected {
                self.renew_connected
            } else {
                RENEW_CONNECTING
            };
            next = tokio::time::Instant::now() + every;
            // Warnings only once renewing fails: an attempt that failed, or one that has not
            // answered for a second (it may hang for REQUEST_TIMEOUT). A healthy reconnect,
            // whose first renewal answers at once, says nothing.
            if failing {
                unheard.say(connected, last_renewed.elapsed());
            }
            let outcome = {
                let attempt = self.renew(connected);
                tokio::pin!(attempt);
                tokio::select! {
                    r = &mut attempt => r,
                    () = tokio::time::sleep(SLOW_ATTEMPT) => {
                        unheard.say(connected, last_renewed.elapsed());
                        attempt.await
                    }
                }
            };
            match outcome {
                Renewed::Done => {
                    last_renewed = tokio::time::Instant::now();
                    failing = false;
                    unheard.warned = None;
                    continue;
                }
                Renewed::Lost(why) => {
                    let _ = self.lost.send(Some(why));
                    return;
                }
                Renewed::Again => next = tokio::time::Instant::now() + RETRY_AFTER_CONFLICT,
                Renewed::Failed => {
                    failing = true;
                    unheard.say(connected, last_renewed.elapsed());
                }
            }
        }
    }

    /// One renewal: a single write, with the resourceVersion of the last one.
    async fn renew(&mut self, connected: bool) -> Renewed {
        let mut lease = self.lease.clone();
        lease.spec.get_or_insert_with(Default::default).renew_time =
            Some(MicroTime(Timestamp::now()));
        let state = if connected { CONNECTED } else { CONNECTING };
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(CONNECTION_ANNOTATION.into(), state.into());
        let written = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await;
        let e = match written {
            Ok(Ok(l)) => {
                self.lease = l;
                return Renewed::Done;
            }
            Ok(Err(e)) => e,
            Err(_) => {
                tracing::debug!("renewing the session lease: timed out");
                return Renewed::Failed;
            }
        };
        match e {
            kube::Error::Api(s) if s.code == 404 => self.read_back(None),
            // Written by someone else since: read it, and judge.
            kube::Error::Api(s) if s.code == 409 => {
                let read = tokio::time::timeout(REQUEST_TIMEOUT, self.api.get_opt(&self.name));
                match read.await {
                    Ok(Ok(current)) => self.read_back(current),
                    Ok(Err(e)) => {
                        tracing::debug!("renewing the session lease: {e}");
                        Renewed::Failed
                    }
                    Err(_) => Renewed::Failed,
                }
            }
            e => {
                tracing::debug!("renewing the session lease: {e}");
                Renewed::Failed
            }
        }
    }

    /// The Lease as read after a failed write (`None`: deleted): lost, or still ours (a label
    /// added by hand, say) and written over at once.
    fn read_back(&mut self, current: Option<Lease>) -> Renewed {
        match (
            check_renewal(&self.name, current.as_ref(), &self.holder),
            current,
        ) {
            (Renewal::Lost(why), _) => Renewed::Lost(why),
            (Renewal::Ours, current) => {
                self.lease = current.unwrap_or_default();
                Renewed::Again
            }
        }
    }
}

/// What one renewal did.
#[derive(Debug)]
enum Renewed {
    Done,
    /// The Lease was read again after a conflict: write again soon.
    Again,
    /// Not written this time (no answer, a server error).
    Failed,
    Lost(String),
}

impl SessionLease {
    /// Resolves (with the reason) once the Lease is no longer this session's: deleted by
    /// `kdev down`/`gc`, or taken over. Never resolves while it is held.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(|l| l.is_some()).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The renewer ended without saying why (aborted): keep waiting forever.
            Err(_) => std::future::pending().await,
        }
    }

    /// Say whether the session has a stream to its pod: connected, it renews seldom and the
    /// pod vouches for it; not connected, it renews often (and now).
    pub fn set_connected(&self, connected: bool) {
        self.connected
            .send_if_modified(|c| std::mem::replace(c, connected) != connected);
    }

    /// Stop renewing and delete the Lease if this session still holds it.
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(Some(l)) = self.api.get_opt(&self.name).await
            && l.spec.and_then(|s| s.holder_identity).as_deref() == Some(self.holder.as_str())
        {
            let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
        }
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_notices_a_deleted_or_taken_lease() {
        let l = Lease {
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some("alice@h/1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check_renewal("n", Some(&l), "alice@h/1"), Renewal::Ours);
        assert!(matches!(
            check_renewal("n", Some(&l), "alice@h/2"),
            Renewal::Lost(why) if why.contains("taken over by alice@h/1")
        ));
        assert!(matches!(
            check_renewal("n", None, "alice@h/1"),
            Renewal::Lost(why) if why.contains("deleted")
        ));
    }

    fn pod(name: &str, held: bool, heard_ms_ago: u64) -> (String, Result<PodSession, String>) {
        let heard_ms_ago = held.then_some(heard_ms_ago);
        (name.into(), Ok(PodSession { held, heard_ms_ago }))
    }

    #[test]
    fn a_fresh_connecting_holder_is_alive_without_asking_its_pods() {
        for connection in [Some(CONNECTING), None] {
            assert!(matches!(
                judge(connection, 3, &[]),
                Holder::Alive(why) if why.contains("starting or reconnecting")
            ));
        }
        // Not renewed for longer than a connecting kdev would: its pods decide.
        assert!(matches!(judge(Some(CONNECTING), 20, &[]), Holder::Gone(_)));
    }

    #[test]
    fn a_connected_holder_lives_while_a_pod_hears_it() {
        assert!(matches!(
            judge(Some(CONNECTED), 2, &[pod("p1", false, 0), pod("p2", true, 3_000)]),
            Holder::Alive(why) if why.contains("pod p2 (heard 3s ago)")
        ));
        // Held but not heard for longer than a live kdev is silent: gone (a NAT forgot it).
        assert!(matches!(
            judge(Some(CONNECTED), 2, &[pod("p1", true, 40_000)]),
            Holder::Gone(why) if why.contains("no kdev is connected to pod p1")
                && why.contains("renewed 2s ago")
        ));
        // Its stream closed with its process: the pod's serve is gone.
        assert!(matches!(
            judge(Some(CONNECTED), 25, &[pod("p1", false, 0)]),
            Holder::Gone(_)
        ));
        assert!(matches!(
            judge(Some(CONNECTED), 25, &[]),
            Holder::Gone(why) if why.contains("no dev pod runs")
        ));
        // No pod runs, but it renewed a moment ago: its pod is being replaced.
        assert!(matches!(
            judge(Some(CONNECTED), 2, &[]),
            Holder::Alive(why) if why.contains("no dev pod runs right now")
        ));
    }

    #[test]
    fn a_pod_that_cannot_answer_keeps_the_holder() {
        let pods = [
            pod("p1", false, 0),
            ("p2".into(), Err("exec failed".into())),
        ];
        assert!(matches!(
            judge(Some(CONNECTED), 25, &pods),
            Holder::Unsure(why) if why.contains("pod p2") && why.contains("exec failed")
        ));
        // A pod that hears it decides, whatever another could not say.
        let pods = [
            ("p2".into(), Err("exec failed".into())),
            pod("p1", true, 1_000),
        ];
        assert!(matches!(
            judge(Some(CONNECTED), 25, &pods),
            Holder::Alive(_)
        ));
    }

    #[test]
    fn an_unheard_kdev_is_told_at_once_that_it_can_be_taken_over() {
        let every = RENEW_CONNECTED;
        let s = Duration::from_secs;
        // Connected: the pod vouches for it; only a long silence of the API server is said.
        assert_eq!(unrenewed_warning(true, s(20), every), None);
        assert_eq!(unrenewed_warning(true, s(46), every), Some(Unrenewed::Slow));
        // Not connected: as soon as a second kdev would judge it gone.
        assert_eq!(unrenewed_warning(false, s(14), every), None);
        assert_eq!(
            unrenewed_warning(false, s(15), every),
            Some(Unrenewed::TakeoverPossible)
        );
        assert!(Some(Unrenewed::TakeoverPossible) > Some(Unrenewed::Slow));
        let m = unrenewed_message(Unrenewed::TakeoverPossible, "kdev-x", s(16));
        assert!(
            m.contains("for 16s") && m.contains("can take the session over now"),
            "{m}"
        );
        assert!(!m.contains("  "), "{m}");
    }

    #[test]
    fn the_refusal_reads_as_one_sentence() {
        let text = refusal(
            "api-alice",
            "alice@h/1",
            "2026-12-07T10:00:00Z",
            "it is connected to pod api-alice-1 (heard 2s ago)",
        );
        assert!(!text.contains("  "), "{text}");
        assert!(
            text.starts_with("api-alice is already being developed by alice@h/1 (session since"),
            "{text}"
        );
        assert!(text.contains("--take-over"), "{text}");
    }

    #[test]
    fn names_and_expiry() {
        assert_eq!(lease_name("gin-hello-alice"), "kdev-gin-hello-alice");
        assert!(holder_identity("alice").starts_with("alice@"));
        let now = Timestamp::now();
        let mut l = Lease::default();
        assert!(expired(&l, now));
        l.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(LEASE_SECONDS),
            ..Default::default()
        });
        assert!(!expired(&l, now));
        assert_eq!(renewed_ago(&l, now), 0);
        let later = Timestamp::from_second(now.as_second() + LEASE_SECONDS as i64 + 1).unwrap();
        assert!(expired(&l, later));
    }
}

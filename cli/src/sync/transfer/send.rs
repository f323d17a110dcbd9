//! Sending a diff to the pod (transfer stage): the paths to send as patch tars in frames that
//! respect the controller's limits, deletions first, pipelined so that the next tar is built
//! while the pod applies the earlier ones; only the last patch may start a build.

use std::collections::VecDeque;
use std::path::Path;

use anyhow::{Result, bail};
use kdev_protocol::BuildMode;

use crate::pod::session::ControllerSession;
use crate::sync::listing::diff::SyncPlan;
use crate::sync::transfer::tar::build_patch_tar;
use crate::sync::unsyncable::Unsyncable;

/// Patches are split into frames of about this size (well under the protocol's 64 MiB).
const CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// How many bytes of patches may be on the way unanswered (the controller queues up to 64 MiB
/// of frames; this also bounds what kdev holds in memory).
const IN_FLIGHT_BYTES: u64 = 16 * 1024 * 1024;

/// What sending a plan did.
#[derive(Debug, Default)]
pub struct Sent {
    /// The build the pod started after the last patch (its events name it).
    pub build_id: Option<u64>,
    /// Entries the pod refused (the rest was applied).
    pub refused: Vec<kdev_protocol::Refused>,
    /// Local paths left out because they could no longer be synced.
    pub skipped: Vec<Unsyncable>,
}

/// Send a plan in frames that respect the controller's limits. Only the last one asks for a
/// build, so a large initial sync builds once. Entries the pod refuses are returned, not
/// fatal: everything else was applied and keeps syncing.
pub async fn send(
    root: &Path,
    session: &mut ControllerSession,
    plan: &SyncPlan,
    build: BuildMode,
    always_send: bool,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Sent> {
    let mut sent = Sent::default();
    let mut chunks: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = 0;
    for p in &plan.send {
        let len = std::fs::symlink_metadata(root.join(p))
            .map(|m| m.len())
            .unwrap_or(0);
        if size + len > CHUNK_BYTES && chunks.last().is_some_and(|c| !c.is_empty()) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(p.clone());
        }
    }
    if plan.is_empty() && !always_send {
        return Ok(sent);
    }
    // Deletions go first, in patches of at most the pod's limit (the tar chunks follow).
    let max_deletes = (session.welcome.limits.max_deletes as usize).max(1);
    let mut delete_batches: Vec<Vec<String>> = plan
        .delete
        .chunks(max_deletes)
        .map(<[String]>::to_vec)
        .collect();
    let mut patches: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    let last_deletes = delete_batches.pop().unwrap_or_default();
    patches.extend(delete_batches.into_iter().map(|d| (d, Vec::new())));
    for (i, chunk) in chunks.into_iter().enumerate() {
        let deletes = if i == 0 {
            last_deletes.clone()
        } else {
            Vec::new()
        };
        patches.push((deletes, chunk));
    }
    // Pipelined: up to IN_FLIGHT_BYTES of patches are on the way while the next tar is built
    // and the pod applies the earlier ones. The pod applies them in the order sent, so the
    // deletions still come first and only the last patch may start the build.
    let n = patches.len();
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut in_flight_bytes = 0;
    for (i, (deletes, chunk)) in patches.into_iter().enumerate() {
        let patch = build_patch_tar(root, &chunk)?;
        // Changed since it was listed into something that cannot be synced: left out now; the
        // next rescan sees the change and removes the pod's copy.
        sent.skipped.extend(patch.skipped);
        let tar = patch.tar;
        let mode = if i + 1 == n { build } else { BuildMode::Never };
        let bytes = tar.len() as u64;
        while in_flight_bytes + bytes > IN_FLIGHT_BYTES
            && let Some((id, b)) = in_flight.pop_front()
        {
            in_flight_bytes -= b;
            collect(session, id, b, progress, &mut sent).await?;
        }
        let id = session.send_patch(deletes, tar, mode)?;
        in_flight.push_back((id, bytes));
        in_flight_bytes += bytes;
    }
    while let Some((id, b)) = in_flight.pop_front() {
        collect(session, id, b, progress, &mut sent).await?;
    }
    Ok(sent)
}

/// Wait for the result of patch `id` (`bytes` of tar) and account for it.
async fn collect(
    session: &mut ControllerSession,
    id: u64,
    bytes: u64,
    progress: Option<&indicatif::ProgressBar>,
    sent: &mut Sent,
) -> Result<()> {
    let result = session.patch_result(id).await?;
    if let Some(bar) = progress {
        bar.inc(bytes);
    }
    if let Some(whole) = result
        .refused
        .iter()
        .find(|r| r.path == kdev_protocol::ARCHIVE_PATH)
    {
        bail!("the pod refused a whole patch: {}", whole.reason);
    }
    sent.refused.extend(result.refused);
    // The patches are collected in order: this ends as the last one's.
    sent.build_id = result.build_id;
    Ok(())
}

//! The sync engine: keeps the pod's tree equal to the local one over a [`ControllerSession`].
//!
//! It lists the local tree (through the [`LocalTree`], which hashes only what changed), asks
//! the pod for its listing (the reconcile), diffs the two, and sends what differs
//! ([`crate::sync::transfer::send`]). It remembers what the pod holds, so a batch of changed
//! paths costs a stat and a hash of those paths only. What cannot be synced is named once and
//! left out; what the pod refuses is named once and not sent again until it changes. The engine
//! knows nothing of Kubernetes: its tests run it against a local `kdev-controller serve`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use kdev_protocol::{BuildMode, Entry};

use crate::pod::session::ControllerSession;
use crate::sync::ignore::IgnoreRules;
use crate::sync::listing::diff::{SyncPlan, diff};
use crate::sync::listing::hashing::cache_file;
use crate::sync::listing::local::Local;
use crate::sync::local_tree::LocalTree;
use crate::sync::subtree::{is_under, keys_under};
use crate::sync::transfer::send::send;
use crate::sync::unsyncable::Unsyncable;
use crate::ui::Ui;

/// An initial sync larger than this shows a progress bar.
const PROGRESS_THRESHOLD: u64 = 4 * 1024 * 1024;

/// The sync engine: what the CLI believes the pod holds, and how to make the pod's tree equal
/// to the local one over a [`ControllerSession`].
pub struct SyncEngine {
    pub rules: IgnoreRules,
    pub root: PathBuf,
    /// path → entry as last sent (or reported by the pod).
    known: BTreeMap<String, Entry>,
    /// Entries the pod refused, as they were when refused: not sent again (nor warned about
    /// again) until they change locally.
    refused: BTreeMap<String, Entry>,
    /// The local tree's listings (hashing only what changed) and the stat picture the periodic
    /// rescan finds what the watcher missed with.
    pub snapshot: LocalTree,
    /// Local paths that cannot be synced and were warned about (once each).
    warned: BTreeSet<PathBuf>,
    /// `Auto`, or `Never` while `kdev debug --hold` holds builds until asked.
    pub build_mode: BuildMode,
    /// When the hash cache was last written to its file.
    hashes_saved_at: Instant,
}

/// How often a changed hash cache is written to its file while kdev runs.
const SAVE_HASHES_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl SyncEngine {
    pub fn new(root: &Path, rules: IgnoreRules, build_mode: BuildMode) -> SyncEngine {
        SyncEngine {
            rules,
            root: root.to_path_buf(),
            known: BTreeMap::new(),
            refused: BTreeMap::new(),
            snapshot: LocalTree::new(root),
            warned: BTreeSet::new(),
            build_mode,
            hashes_saved_at: Instant::now(),
        }
    }

    /// Keep the local hash cache across restarts of kdev, in the user's cache directory (one
    /// file per sync root, see [`cache_file`]): a restarted kdev reads only the files that
    /// changed meanwhile.
    pub fn keep_hashes_across_restarts(&mut self) {
        if let Some(file) = cache_file(&self.root) {
            self.snapshot.persist_hashes_in(file);
        }
    }

    /// Write the hash cache to its file if it changed (a failure only costs hashing later).
    pub fn save_hashes(&mut self) {
        if let Err(e) = self.snapshot.save_hashes() {
            tracing::debug!("cannot save the hash cache: {e}");
        }
        self.hashes_saved_at = Instant::now();
    }

    /// [`Self::save_hashes`], at most every [`SAVE_HASHES_EVERY`].
    pub fn save_hashes_if_due(&mut self) {
        if self.hashes_saved_at.elapsed() >= SAVE_HASHES_EVERY {
            self.save_hashes();
        }
    }

    /// Drop from `plan` what the pod refused before and is unchanged since. `local` holds the
    /// current local entries of the paths the plan covers; with `complete`, it is the whole
    /// tree, and refusals of paths no longer there are forgotten too.
    fn skip_refused(
        &mut self,
        plan: &mut SyncPlan,
        local: &BTreeMap<String, Entry>,
        complete: bool,
    ) {
        self.refused.retain(|p, e| match local.get(p) {
            Some(now) => now == e,
            None => !complete,
        });
        plan.send.retain(|p| !self.refused.contains_key(p));
    }

    /// Warn once about each path that cannot be synced.
    pub fn warn_unsyncable(&mut self, found: &[Unsyncable], ui: &Ui) {
        for u in found {
            if self.warned.insert(u.path.clone()) {
                ui.warn(&u.warning());
            }
        }
    }

    /// Warn once about each newly refused entry (with how to stop syncing it) and remember it,
    /// so it is neither sent nor reported again while it stays as it is.
    fn note_refused(&mut self, refused: &[kdev_protocol::Refused], ui: &Ui) {
        for r in refused {
            let first_time = match self.known.remove(&r.path) {
                Some(entry) => self.refused.insert(r.path.clone(), entry).is_none(),
                None => true,
            };
            if first_time {
                ui.warn(&format!(
                    "{} cannot be synced: {}; skipped, everything else keeps syncing (to silence \
                     this, add `/{}` to .kdevignore or to sync.exclude in kdev.yaml)",
                    r.path, r.reason, r.path
                ));
            }
        }
    }
}

/// What the reconcile did.
#[derive(Debug)]
pub struct InitialSync {
    pub started: Instant,
    /// Files in the local tree.
    pub files: usize,
    /// Their bytes.
    pub compared_bytes: u64,
    /// Nothing was sent and no build started: the pod already held this tree, built.
    pub in_sync: bool,
    /// The build the pod started for it, if any.
    pub build_id: Option<u64>,
    /// Paths sent (files, directories, symlinks) and the bytes of the files among them.
    pub sent_files: usize,
    pub sent_bytes: u64,
    /// Paths deleted in the pod.
    pub deleted: usize,
    /// The pod sent its whole listing (its digest differed from the local listing's); the
    /// debug log says so, the tests check it.
    #[cfg(test)]
    pub listing_sent: bool,
}

/// Give the memory a large sync used (patches on the way, listings) back to the system: glibc's
/// allocator keeps freed memory of its per-thread arenas otherwise, and an idle `kdev watch`
/// held 53 MB after syncing 10,000 files.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The pod's listing, with what it could not list (a FIFO, an unreadable file) as entries of
/// unknown content: such a path is deleted when it is not local, and replaced when it is, so
/// the pod's tree ends up equal to the local one either way.
fn pod_listing(remote: kdev_protocol::ReconcileResult) -> Vec<Entry> {
    let mut entries = remote.entries;
    entries.extend(
        remote
            .skipped
            .iter()
            .filter_map(|s| kdev_protocol::normalize_wire_path(&s.path).ok())
            .map(|path| Entry {
                path,
                kind: kdev_protocol::EntryKind::File,
                size: 0,
                mode: 0,
                hash: None,
                target: None,
            }),
    );
    entries
}

/// What [`SyncEngine::sync_paths`] applied.
#[derive(Debug)]
pub struct Synced {
    /// Paths written (deletions as `-path`), as the reload line shows them.
    pub changed: Vec<String>,
    /// When syncing began.
    pub started: Instant,
    /// The build the pod started for it, if any: the events of this reload name it.
    pub build_id: Option<u64>,
}

impl SyncEngine {
    /// Reconcile: make the pod's tree equal to the local one, then build if needed.
    pub async fn initial_sync(
        &mut self,
        session: &mut ControllerSession,
        ui: &Ui,
    ) -> Result<InitialSync> {
        let started = Instant::now();
        // The pod lists its tree while the local one is listed, and sends the listing's digest
        // first: when it equals the local listing's (a restart on an unchanged tree), the pod's
        // thousands of entries never need to travel.
        let asked = session.request_listing(true)?;
        let listing = self.snapshot.scan(&self.rules)?;
        let scanned = started.elapsed();
        let digest = session.listing_digest(asked).await?;
        let same = digest.digest == kdev_protocol::listing_digest(&listing.entries, &[]);
        session.continue_listing(asked, !same)?;
        let remote = match same {
            true => None,
            false => Some(session.listing(asked).await?),
        };
        #[cfg(test)]
        let listing_sent = remote.is_some();
        tracing::debug!(
            "reconcile: local listing in {scanned:?}, the pod's ({} entries, {} hashes cached, \
             listed in {} ms) {} after {:?}",
            digest.entries,
            digest.cached,
            digest.elapsed_ms,
            if same {
                "has the same digest"
            } else {
                "received"
            },
            started.elapsed()
        );
        self.warn_unsyncable(&listing.unsyncable, ui);
        let local = listing.entries;
        let local_by_path: BTreeMap<String, Entry> =
            local.iter().map(|e| (e.path.clone(), e.clone())).collect();
        let mut plan = match remote {
            Some(remote) => diff(&local, &pod_listing(remote)),
            None => SyncPlan::default(),
        };
        self.skip_refused(&mut plan, &local_by_path, true);
        let bytes: u64 = plan
            .send
            .iter()
            .filter_map(|p| local_by_path.get(p))
            .map(|e| e.size)
            .sum();
        if !plan.is_empty() {
            ui.step(&format!(
                "sending {} paths ({:.1} KiB), deleting {} stale paths in the pod",
                plan.send.len(),
                bytes as f64 / 1024.0,
                plan.delete.len()
            ));
        }
        // A large initial sync gets a progress bar (only on a terminal: indicatif hides it otherwise).
        // Not under the status block, which shows the sync instead.
        let progress = (bytes > PROGRESS_THRESHOLD && ui.may_draw_progress()).then(|| {
            let bar = indicatif::ProgressBar::new(bytes);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        // Sent even when empty: in `Auto` mode an empty patch builds if the pod's tree is unbuilt.
        let sent = send(
            &self.root,
            session,
            &plan,
            BuildMode::Auto,
            true,
            progress.as_ref(),
        )
        .await?;
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        self.known = local_by_path;
        self.save_hashes();
        release_freed_memory();
        self.note_refused(&sent.refused, ui);
        self.warn_unsyncable(&sent.skipped, ui);
        let files = self
            .known
            .values()
            .filter(|e| e.kind == kdev_protocol::EntryKind::File)
            .count();
        Ok(InitialSync {
            started,
            files,
            compared_bytes: self.known.values().map(|e| e.size).sum(),
            in_sync: plan.is_empty() && sent.build_id.is_none(),
            build_id: sent.build_id,
            sent_files: plan.send.len(),
            sent_bytes: bytes,
            deleted: plan.delete.len(),
            #[cfg(test)]
            listing_sent,
        })
    }

    /// Sync paths that may have changed. `None` when the pod already held them all (or refused
    /// every one of them): nothing was applied, no reload follows.
    pub async fn sync_paths(
        &mut self,
        session: &mut ControllerSession,
        paths: &BTreeSet<PathBuf>,
        ui: &Ui,
    ) -> Result<Option<Synced>> {
        let started = Instant::now();
        let (fresh, prefixes) = self.entries_at(paths, ui)?;
        // What kdev believes the pod holds there: by range, not a pass over every known path.
        let old: Vec<Entry> = prefixes
            .iter()
            .flat_map(|pre| keys_under(&self.known, pre))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|k| self.known.get(k).cloned())
            .collect();
        let fresh_list: Vec<Entry> = fresh.values().cloned().collect();
        let mut plan = diff(&fresh_list, &old);
        self.skip_refused(&mut plan, &fresh, false);
        for d in &plan.delete {
            self.refused.retain(|p, _| !is_under(p, d));
        }
        if plan.is_empty() {
            return Ok(None);
        }
        let changed = changed_paths(&plan, &fresh);
        let sent = send(&self.root, session, &plan, self.build_mode, false, None).await?;
        for d in &plan.delete {
            let gone: Vec<String> = keys_under(&self.known, d).cloned().collect();
            for p in gone {
                self.known.remove(&p);
            }
        }
        for e in fresh_list {
            self.known.insert(e.path.clone(), e);
        }
        if plan.send.len() + plan.delete.len() > 1000 {
            release_freed_memory();
        }
        self.note_refused(&sent.refused, ui);
        self.warn_unsyncable(&sent.skipped, ui);
        if refused_all(&plan, &sent.refused) {
            return Ok(None);
        }
        Ok(Some(Synced {
            changed,
            started,
            build_id: sent.build_id,
        }))
    }

    /// The local entries at and below `paths` (a new directory brings its contents; the root
    /// rescans everything), and the relative paths they cover (`""`: everything).
    fn entries_at(
        &mut self,
        paths: &BTreeSet<PathBuf>,
        ui: &Ui,
    ) -> Result<(BTreeMap<String, Entry>, BTreeSet<String>)> {
        let mut fresh: BTreeMap<String, Entry> = BTreeMap::new();
        let mut prefixes: BTreeSet<String> = BTreeSet::new();
        for path in paths {
            if path.file_name().is_some_and(|n| n == ".gitignore") {
                self.rules.reload_gitignore(path);
            }
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel.is_empty() {
                // The root itself: rescan everything.
                let listing = self.snapshot.scan(&self.rules)?;
                self.warn_unsyncable(&listing.unsyncable, ui);
                for e in listing.entries {
                    fresh.insert(e.path.clone(), e);
                }
                prefixes.insert(String::new());
                continue;
            }
            prefixes.insert(rel.clone());
            match self.snapshot.entry(&self.rules, path) {
                Local::Entry(e) => {
                    let is_dir = e.kind == kdev_protocol::EntryKind::Dir;
                    fresh.insert(e.path.clone(), e);
                    if is_dir {
                        // A directory that appeared (or was renamed in) brings its contents along.
                        let below = self.snapshot.below(&self.rules, path);
                        self.warn_unsyncable(&below.unsyncable, ui);
                        for e in below.entries {
                            fresh.insert(e.path.clone(), e);
                        }
                    }
                }
                // Treated as absent: the pod loses what it had there.
                Local::Unsyncable(u) => self.warn_unsyncable(std::slice::from_ref(&u), ui),
                Local::Absent => {}
            }
        }
        Ok((fresh, prefixes))
    }
}

/// What a synced batch changed, for the reload line: the files sent and the paths deleted
/// (`-path`); the directories sent when that is all.
fn changed_paths(plan: &SyncPlan, fresh: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut changed: Vec<String> = plan
        .send
        .iter()
        .filter(|p| {
            fresh
                .get(*p)
                .is_some_and(|e| e.kind != kdev_protocol::EntryKind::Dir)
        })
        .cloned()
        .collect();
    changed.extend(plan.delete.iter().map(|p| format!("-{p}")));
    if changed.is_empty() {
        changed = plan.send.clone();
    }
    changed
}

/// The pod refused everything the plan sent, and it deleted nothing: no reload follows.
fn refused_all(plan: &SyncPlan, refused: &[kdev_protocol::Refused]) -> bool {
    !refused.is_empty()
        && plan.delete.is_empty()
        && plan
            .send
            .iter()
            .all(|p| refused.iter().any(|r| &r.path == p))
}

#[cfg(test)]
mod tests;

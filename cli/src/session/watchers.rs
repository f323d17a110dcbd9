//! Step 4 of the set-up: the sessions' inputs. One file watcher per sync root, started before
//! the first reconcile so nothing saved in between is missed, its batches handed to every
//! service that syncs that root; and with `--hold`, Enter presses on stdin, to every service.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::service::ServiceSession;
use crate::sync::ignore::IgnoreRules;
use crate::sync::watch::tree_watcher::{Batch, DEFAULT_DEBOUNCE, Mode, TreeWatcher};
use crate::ui::Ui;

/// Start the watchers (they stop when dropped) and, with `hold`, the reader of Enter presses.
pub fn watch(
    sessions: &mut [ServiceSession],
    poll: bool,
    hold: bool,
    ui: &Ui,
) -> Result<Vec<TreeWatcher>> {
    let roots: Vec<PathBuf> = sessions.iter().map(|s| s.engine.root.clone()).collect();
    let mut watchers = Vec::new();
    for (root, indexes) in by_root(&roots) {
        // A root synced by one service is watched under its rules (ignored trees cost no
        // watches); a shared one under the common rules, each service filtering with its own.
        let rules = match indexes.as_slice() {
            [i] => sessions[*i].engine.rules.clone(),
            _ => IgnoreRules::load(&root, &[])?,
        };
        let (watcher, rx) = TreeWatcher::start(&root, rules, poll, DEFAULT_DEBOUNCE)
            .with_context(|| format!("starting the file watcher on {}", root.display()))?;
        match &watcher.mode {
            Mode::Native => {}
            Mode::Polling => ui.step("watching by polling (--poll)"),
            Mode::PollingFallback(why) => ui.warn(why),
        }
        let subscribers = indexes
            .iter()
            .filter_map(|i| sessions[*i].batches_in.take())
            .collect();
        tokio::spawn(fan_out(rx, subscribers));
        watchers.push(watcher);
    }
    // Without `--hold` the senders go: Enter means nothing.
    let enters: Vec<_> = sessions
        .iter_mut()
        .filter_map(|s| s.enter_in.take())
        .collect();
    if hold {
        ui.step("--hold: saves are synced but not built; press Enter to build and restart");
        read_enter_presses(enters);
    }
    Ok(watchers)
}

/// The sessions' indexes by sync root, roots in order of first appearance.
fn by_root(roots: &[PathBuf]) -> Vec<(PathBuf, Vec<usize>)> {
    let mut grouped: Vec<(PathBuf, Vec<usize>)> = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        match grouped.iter_mut().find(|(r, _)| r == root) {
            Some((_, indexes)) => indexes.push(i),
            None => grouped.push((root.clone(), vec![i])),
        }
    }
    grouped
}

/// Hand each batch of one watcher to every service that syncs its root.
async fn fan_out(mut from: mpsc::Receiver<Batch>, to: Vec<mpsc::UnboundedSender<Batch>>) {
    while let Some(batch) = from.recv().await {
        for t in &to {
            let _ = t.send(batch.clone());
        }
    }
}

/// Lines on stdin (Enter presses), read on a thread of their own (stdin blocks), each handed
/// to every service.
fn read_enter_presses(senders: Vec<mpsc::UnboundedSender<()>>) {
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
            if senders.iter().map(|s| s.send(())).all(|r| r.is_err()) {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_root_is_watched_once_for_every_service_syncing_it() {
        let roots = ["/p", "/p/web", "/p"].map(PathBuf::from);
        assert_eq!(
            by_root(&roots),
            [
                (PathBuf::from("/p"), vec![0, 2]),
                (PathBuf::from("/p/web"), vec![1])
            ]
        );
    }
}

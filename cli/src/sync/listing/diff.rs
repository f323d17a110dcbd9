//! How the pod's tree differs from the local one (the end of the listing stage): the
//! [`SyncPlan`] of what to send and delete, which the transfer stage carries out.

use std::collections::{BTreeMap, BTreeSet};

use kdev_protocol::{Entry, EntryKind};

/// What to send so that the pod's tree equals the local one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// Files, symlinks and directories to send (in the tar), parents before children.
    pub send: Vec<String>,
    /// Paths to delete in the pod, children before parents.
    pub delete: Vec<String>,
}

impl SyncPlan {
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.delete.is_empty()
    }
}

/// Compare the local listing with the pod's. Files differ by content hash or executable bit;
/// a path whose kind changed is deleted and sent again; directories are sent only when missing.
pub fn diff(local: &[Entry], remote: &[Entry]) -> SyncPlan {
    let remote_by_path: BTreeMap<&str, &Entry> =
        remote.iter().map(|e| (e.path.as_str(), e)).collect();
    let local_paths: BTreeSet<&str> = local.iter().map(|e| e.path.as_str()).collect();
    let mut plan = SyncPlan::default();
    for l in local {
        match remote_by_path.get(l.path.as_str()) {
            None => plan.send.push(l.path.clone()),
            Some(r) if r.kind != l.kind => {
                plan.delete.push(l.path.clone());
                plan.send.push(l.path.clone());
            }
            Some(r) => {
                let differs = match l.kind {
                    EntryKind::File => {
                        r.hash != l.hash || (r.mode & 0o111 != 0) != (l.mode & 0o111 != 0)
                    }
                    EntryKind::Symlink => r.target != l.target,
                    EntryKind::Dir => false,
                };
                if differs {
                    plan.send.push(l.path.clone());
                }
            }
        }
    }
    for r in remote {
        if !local_paths.contains(r.path.as_str()) {
            plan.delete.push(r.path.clone());
        }
    }
    // Children before parents for deletion; a deleted directory takes its children with it, so
    // only its topmost path needs to be sent.
    plan.delete.sort_by(|a, b| b.cmp(a));
    let all = plan.delete.clone();
    plan.delete.retain(|p| {
        !all.iter()
            .any(|q| q != p && p.starts_with(&format!("{q}/")))
    });
    plan.delete
        .sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    plan.send.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, hash: &str, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            size: 1,
            mode,
            hash: Some(hash.into()),
            target: None,
        }
    }
    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            size: 0,
            mode: 0o755,
            hash: None,
            target: None,
        }
    }

    #[test]
    fn plan_sends_what_differs_and_deletes_what_is_gone() {
        let local = vec![
            file("main.go", "h1", 0o644),
            dir("handlers"),
            file("handlers/ping.go", "h2-new", 0o644),
            file("run.sh", "h3", 0o755),
            dir("newdir"),
            file("newdir/x.go", "h4", 0o644),
        ];
        let remote = vec![
            file("main.go", "h1", 0o600), // mode differs but not the exec bit: same
            dir("handlers"),
            file("handlers/ping.go", "h2-old", 0o644),
            file("run.sh", "h3", 0o644), // lost its exec bit
            dir("old"),
            file("old/a.go", "x", 0o644),
            file("old/deep/b.go", "x", 0o644),
            file("stale.go", "x", 0o644),
        ];
        let p = diff(&local, &remote);
        assert_eq!(
            p.send,
            vec!["handlers/ping.go", "newdir", "newdir/x.go", "run.sh"]
        );
        assert_eq!(p.delete, vec!["stale.go", "old"]);
    }

    #[test]
    fn kind_change_is_delete_then_send() {
        let local = vec![file("x", "h", 0o644)];
        let remote = vec![dir("x"), file("x/inner", "h", 0o644)];
        let p = diff(&local, &remote);
        assert_eq!(p.delete, vec!["x"]);
        assert_eq!(p.send, vec!["x"]);
    }

    #[test]
    fn identical_trees_need_nothing() {
        let t = vec![dir("a"), file("a/b.go", "h", 0o644)];
        assert!(diff(&t, &t).is_empty());
    }
}

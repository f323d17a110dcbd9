//! The local source tree: what is synced (ignore rules), what it holds (a listing in the same
//! shape as the controller's), and how it differs from the pod's (the reconcile plan).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use kdev_protocol::{Entry, EntryKind, hash_file, wire_path_from_relative};

/// Patterns never synced, whatever the ignore files say: VCS metadata and kdev's own state.
pub const ALWAYS_EXCLUDED: &[&str] = &[".git/", ".hg/", ".svn/", ".kdev/"];
/// The project-level ignore file, in `.gitignore` syntax, for what git tracks but the pod
/// does not need.
pub const KDEVIGNORE: &str = ".kdevignore";

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad exclude pattern `{pattern}`: {message}")]
    Pattern { pattern: String, message: String },
}

/// Decides whether a path under the sync root is synced: `.gitignore` files (at any depth, with
/// git's precedence: the deepest file wins), `.kdevignore`, the config's excludes, and
/// [`ALWAYS_EXCLUDED`].
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    root: PathBuf,
    /// Always-excluded, `.kdevignore` and config patterns, rooted at the sync root.
    base: Gitignore,
    /// `.gitignore` matchers by the directory that holds them.
    gitignores: BTreeMap<PathBuf, Gitignore>,
}

impl IgnoreRules {
    /// Load the rules for `root`: its `.kdevignore`, every `.gitignore` below it (skipping
    /// ignored directories), and `extra` patterns from the config.
    pub fn load(root: &Path, extra: &[String]) -> Result<IgnoreRules, TreeError> {
        let mut b = GitignoreBuilder::new(root);
        for p in ALWAYS_EXCLUDED
            .iter()
            .copied()
            .map(String::from)
            .chain(extra.iter().cloned())
        {
            b.add_line(None, &p).map_err(|e| TreeError::Pattern {
                pattern: p.clone(),
                message: e.to_string(),
            })?;
        }
        let kdevignore = root.join(KDEVIGNORE);
        if kdevignore.is_file()
            && let Some(e) = b.add(&kdevignore)
        {
            return Err(TreeError::Pattern {
                pattern: kdevignore.display().to_string(),
                message: e.to_string(),
            });
        }
        let base = b.build().map_err(|e| TreeError::Pattern {
            pattern: "<excludes>".into(),
            message: e.to_string(),
        })?;
        let mut rules = IgnoreRules {
            root: root.to_path_buf(),
            base,
            gitignores: BTreeMap::new(),
        };
        rules.load_gitignores(root)?;
        Ok(rules)
    }

    fn load_gitignores(&mut self, dir: &Path) -> Result<(), TreeError> {
        let file = dir.join(".gitignore");
        if file.is_file() {
            let (gi, _err) = Gitignore::new(&file);
            self.gitignores.insert(dir.to_path_buf(), gi);
        }
        let read = std::fs::read_dir(dir).map_err(|source| TreeError::Io {
            path: dir.into(),
            source,
        })?;
        for entry in read.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && !self.is_ignored(&path, true) {
                self.load_gitignores(&path)?;
            }
        }
        Ok(())
    }

    /// Pick up a `.gitignore` that was created, changed or deleted while watching.
    pub fn reload_gitignore(&mut self, file: &Path) {
        let Some(dir) = file.parent() else { return };
        if file.is_file() {
            let (gi, _err) = Gitignore::new(file);
            self.gitignores.insert(dir.to_path_buf(), gi);
        } else {
            self.gitignores.remove(dir);
        }
    }

    /// Whether `path` (absolute, under the root) is excluded, itself or through a parent.
    pub fn is_ignored(&self, path: &Path, is_dir: bool) -> bool {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return true;
        };
        if rel.as_os_str().is_empty() {
            return false;
        }
        // A path is excluded when it or any of its parent directories is.
        let mut current = PathBuf::new();
        let components: Vec<_> = rel.components().collect();
        for (i, c) in components.iter().enumerate() {
            current.push(c);
            let last = i + 1 == components.len();
            if self.matches(&self.root.join(&current), if last { is_dir } else { true }) {
                return true;
            }
        }
        false
    }

    fn matches(&self, path: &Path, is_dir: bool) -> bool {
        if self.base.matched(path, is_dir).is_ignore() {
            return true;
        }
        // The deepest .gitignore with an opinion decides (whitelists with `!` included).
        for (dir, gi) in self.gitignores.iter().rev() {
            if path.starts_with(dir) && path != dir {
                let m = gi.matched(path, is_dir);
                if m.is_ignore() {
                    return true;
                }
                if m.is_whitelist() {
                    return false;
                }
            }
        }
        false
    }
}

/// List the synced tree under `root` in the controller's [`Entry`] shape, sorted by path:
/// files with their BLAKE3 hash, symlinks with their target, and directories.
pub fn scan(root: &Path, rules: &IgnoreRules) -> Result<Vec<Entry>, TreeError> {
    let mut out = Vec::new();
    scan_dir(root, root, rules, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn scan_dir(
    root: &Path,
    dir: &Path,
    rules: &IgnoreRules,
    out: &mut Vec<Entry>,
) -> Result<(), TreeError> {
    let read = std::fs::read_dir(dir).map_err(|source| TreeError::Io {
        path: dir.into(),
        source,
    })?;
    for entry in read {
        let entry = entry.map_err(|source| TreeError::Io {
            path: dir.into(),
            source,
        })?;
        let path = entry.path();
        // A file can vanish between listing and stat (editors' temp files): skip it.
        let Some(e) = entry_for(root, &path, rules)? else {
            continue;
        };
        let is_dir = e.kind == EntryKind::Dir;
        out.push(e);
        if is_dir {
            scan_dir(root, &path, rules, out)?;
        }
    }
    Ok(())
}

/// The listing entry for one path, or `None` when it is ignored, gone, not representable on the
/// wire, or not a file, directory or symlink.
pub fn entry_for(
    root: &Path,
    path: &Path,
    rules: &IgnoreRules,
) -> Result<Option<Entry>, TreeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TreeError::Io {
                path: path.into(),
                source,
            });
        }
    };
    let ft = meta.file_type();
    if rules.is_ignored(path, ft.is_dir()) {
        return Ok(None);
    }
    let Ok(rel) = path.strip_prefix(root) else {
        return Ok(None);
    };
    let Ok(wire) = wire_path_from_relative(rel) else {
        return Ok(None);
    };
    let mode = meta.permissions().mode() & 0o7777;
    let entry = if ft.is_dir() {
        Entry {
            path: wire,
            kind: EntryKind::Dir,
            size: 0,
            mode,
            hash: None,
            target: None,
        }
    } else if ft.is_symlink() {
        let target = match std::fs::read_link(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TreeError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        let target = target.to_string_lossy().into_owned();
        Entry {
            path: wire,
            kind: EntryKind::Symlink,
            size: target.len() as u64,
            mode,
            hash: None,
            target: Some(target),
        }
    } else if ft.is_file() {
        let hash = match hash_file(path) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TreeError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        Entry {
            path: wire,
            kind: EntryKind::File,
            size: meta.len(),
            mode,
            hash: Some(hash.to_string()),
            target: None,
        }
    } else {
        return Ok(None);
    };
    Ok(Some(entry))
}

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
pub fn plan(local: &[Entry], remote: &[Entry]) -> SyncPlan {
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
    use std::fs;

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
        let p = plan(&local, &remote);
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
        let p = plan(&local, &remote);
        assert_eq!(p.delete, vec!["x"]);
        assert_eq!(p.send, vec!["x"]);
    }

    #[test]
    fn identical_trees_need_nothing() {
        let t = vec![dir("a"), file("a/b.go", "h", 0o644)];
        assert!(plan(&t, &t).is_empty());
    }

    #[test]
    fn scan_respects_gitignore_kdevignore_and_excludes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join(".git/objects")).unwrap();
        fs::write(root.join(".git/HEAD"), "ref").unwrap();
        fs::write(root.join(".gitignore"), "/bin/\n*.log\n").unwrap();
        fs::write(root.join(".kdevignore"), "docs/\n").unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/app"), "x").unwrap();
        fs::create_dir_all(root.join("docs")).unwrap();
        fs::write(root.join("docs/a.md"), "x").unwrap();
        fs::create_dir_all(root.join("pkg/sub")).unwrap();
        fs::write(root.join("pkg/.gitignore"), "generated.go\n!keep.log\n").unwrap();
        fs::write(root.join("pkg/generated.go"), "x").unwrap();
        fs::write(root.join("pkg/keep.log"), "x").unwrap();
        fs::write(root.join("pkg/drop.log"), "x").unwrap();
        fs::write(root.join("pkg/sub/ok.go"), "package sub").unwrap();
        fs::write(root.join("main.go"), "package main").unwrap();
        fs::write(root.join("notes.tmp"), "x").unwrap();
        std::os::unix::fs::symlink("main.go", root.join("link.go")).unwrap();

        let rules = IgnoreRules::load(root, &["*.tmp".to_string()]).unwrap();
        let listing = scan(root, &rules).unwrap();
        let paths: Vec<_> = listing.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                ".gitignore",
                ".kdevignore",
                "link.go",
                "main.go",
                "pkg",
                "pkg/.gitignore",
                "pkg/keep.log",
                "pkg/sub",
                "pkg/sub/ok.go"
            ]
        );
        let main = listing.iter().find(|e| e.path == "main.go").unwrap();
        assert_eq!(
            main.hash.as_deref(),
            Some(
                kdev_protocol::hash_bytes(b"package main")
                    .to_string()
                    .as_str()
            )
        );
        let link = listing.iter().find(|e| e.path == "link.go").unwrap();
        assert_eq!(link.target.as_deref(), Some("main.go"));
    }
}

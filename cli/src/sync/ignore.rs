//! What is synced: the ignore rules. `.gitignore` files at any depth (git's precedence: the
//! deepest file with an opinion wins, `!` whitelists included), `.kdevignore` (same syntax, for
//! what git tracks but the pod does not need), `sync.exclude` from kdev.yaml, and
//! [`ALWAYS_EXCLUDED`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Patterns never synced, whatever the ignore files say: VCS metadata and kdev's own state.
const ALWAYS_EXCLUDED: &[&str] = &[".git/", ".hg/", ".svn/", ".kdev/"];
/// The project-level ignore file, in `.gitignore` syntax, for what git tracks but the pod
/// does not need.
const KDEVIGNORE: &str = ".kdevignore";

#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
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
    pub fn load(root: &Path, extra: &[String]) -> Result<IgnoreRules, IgnoreError> {
        let mut b = GitignoreBuilder::new(root);
        for p in ALWAYS_EXCLUDED
            .iter()
            .copied()
            .map(String::from)
            .chain(extra.iter().cloned())
        {
            b.add_line(None, &p).map_err(|e| IgnoreError::Pattern {
                pattern: p.clone(),
                message: e.to_string(),
            })?;
        }
        let kdevignore = root.join(KDEVIGNORE);
        if is_regular_file(&kdevignore)
            && let Some(e) = b.add(&kdevignore)
        {
            return Err(IgnoreError::Pattern {
                pattern: kdevignore.display().to_string(),
                message: e.to_string(),
            });
        }
        let base = b.build().map_err(|e| IgnoreError::Pattern {
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

    /// Load the `.gitignore` of `root` and of every directory below it that is not ignored,
    /// with an explicit list of directories to visit rather than recursion (the tree may be as
    /// deep as paths can be).
    fn load_gitignores(&mut self, root: &Path) -> Result<(), IgnoreError> {
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let file = dir.join(".gitignore");
            if is_regular_file(&file) {
                let (gi, _err) = Gitignore::new(&file);
                self.gitignores.insert(dir.clone(), gi);
            }
            let read = match std::fs::read_dir(&dir) {
                Ok(r) => r,
                // Below the root, an unreadable directory is the listing's to report.
                Err(_) if dir != self.root => continue,
                Err(source) => {
                    return Err(IgnoreError::Io { path: dir, source });
                }
            };
            // Pushed in reverse, so directories are visited in the order they are read (a
            // parent's .gitignore is always loaded before its children are looked at).
            let mut below = Vec::new();
            for entry in read.flatten() {
                let path = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                // Its parents are not ignored (only those are visited): its own name decides.
                if is_dir && !self.excludes(&path, true) {
                    below.push(path);
                }
            }
            dirs.extend(below.into_iter().rev());
        }
        Ok(())
    }

    /// Pick up a `.gitignore` that was created, changed or deleted while watching.
    pub fn reload_gitignore(&mut self, file: &Path) {
        let Some(dir) = file.parent() else { return };
        if is_regular_file(file) {
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

    /// Whether `path` is excluded by its own name, its parents being synced (a walk's case: it
    /// only descends into synced directories).
    pub fn excludes(&self, path: &Path, is_dir: bool) -> bool {
        self.matches(path, is_dir)
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

/// A regular file, not through a symlink (git does not follow a symlinked `.gitignore` either).
fn is_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

//! Deciding whether the tree as it is now can be built quickly, and the steps if so.
//!
//! Every path patched since the last full build is classified by what it is and was, never
//! by its name alone:
//! - a Go file a recorded compile named, still a regular file, with its header (effective
//!   build constraint, directives, package name, imports, embed patterns) as recorded: an
//!   **edit** of its package;
//! - a file in the directory of a recorded package that go never reads (name, `_test.go`,
//!   suffix, or a constraint that leaves it out, as [`super::constraints`] reads it where that
//!   reading agrees with the recorded build), not embedded, not a module file: **irrelevant**;
//!   so is a file deleted from such a directory that was a regular file go did not read;
//! - an existing directory kdev knows (the root, a package's, their parents): **irrelevant**;
//! - anything else (a new, deleted or renamed Go file, a directory, a symlink, go.mod, an
//!   embedded file, …): only the go command can say, and it runs.
//!
//! The edited packages are compiled again, then every package that imports one of them,
//! directly or not (from the build's package graph, recorded or not: one without a usable
//! record means go build), then the link.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::constraints::{FileRole, SOURCE_EXTENSIONS, Tags};
use super::go_command::{flag_value, repoint, set_flag_value};
use super::record::Record;
use super::recorded::{Kind, Recorded, read_header};
use crate::build_spec::BuildSpec;

/// Names whose presence or content changes how the go command resolves packages.
const MODULE_FILES: [&str; 5] = ["go.mod", "go.sum", "go.work", "go.work.sum", "vendor"];

/// A quick rebuild's steps, and the packages it compiles.
pub(crate) struct QuickPlan {
    pub steps: Vec<BuildSpec>,
    pub packages: Vec<String>,
}

/// How a path changed since the last full build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// It was deleted at least once (it may have been written again since).
    pub deleted: bool,
}

/// What a changed path means for the build.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// An edit of this package's Go files.
    Edit(String),
    /// Nothing go build reads.
    Irrelevant,
}

impl Recorded {
    /// The steps of a quick rebuild after `changed` (paths patched since this build), linking
    /// to `output`; `Err(why not)` when only `go build` will do.
    pub(super) fn plan(
        &self,
        changed: &BTreeMap<String, Seen>,
        root: &Path,
        tags: Option<&Tags>,
        quick_dir: &Path,
        output: &Path,
    ) -> Result<QuickPlan, String> {
        if let Some(why) = &self.unusable {
            return Err(why.clone());
        }
        let mut edited = BTreeSet::new();
        for (path, seen) in changed {
            if seen.deleted {
                self.classify_deletion(path, root)?;
            }
            if let Change::Edit(p) = self.classify(path, seen.deleted, root, tags)? {
                edited.insert(p);
            }
        }
        for name in &edited {
            self.check_listing(name, changed, root)?;
        }
        let mut rebuild = edited.clone();
        rebuild.extend(self.graph.importers(&edited));
        rebuild.insert(self.graph.main.clone());
        for name in &rebuild {
            let Some(p) = self.packages.get(name) else {
                let why = match edited.iter().find(|e| {
                    self.graph
                        .importers(&BTreeSet::from([(*e).clone()]))
                        .contains(name)
                }) {
                    Some(e) => format!(
                        "{name} imports {e} and its compile is not on record (it came from the build cache)"
                    ),
                    None => format!(
                        "the compile of {name} is not on record (it came from the build cache)"
                    ),
                };
                return Err(why);
            };
            if let Some(why) = &p.unusable {
                return Err(why.clone());
            }
            if let Err(why) = &p.env {
                return Err(why.clone());
            }
        }
        let order = self
            .graph
            .in_import_order(&rebuild)
            .ok_or("the packages import each other in a cycle")?;
        let steps = self.steps(&order, quick_dir, output)?;
        Ok(QuickPlan {
            steps,
            packages: order.iter().map(|p| p.to_string()).collect(),
        })
    }

    /// A deletion of `path` is irrelevant only if it removed a regular file of a recorded
    /// package's directory that go did not read.
    fn classify_deletion(&self, path: &str, root: &Path) -> Result<(), String> {
        let abs = root.join(path);
        let deleted = || format!("{path} was deleted");
        if self.by_file.contains_key(path) || self.embedded.contains_key(path) {
            return Err(deleted());
        }
        let (Some(dir), Some(name)) = (abs.parent(), abs.file_name().and_then(OsStr::to_str))
        else {
            return Err(deleted());
        };
        let package = self.dirs.get(dir).and_then(|n| self.packages.get(n));
        match package {
            Some(p)
                if p.listing.get(OsStr::new(name)) == Some(&Kind::File)
                    && !is_other_source(name)
                    && !MODULE_FILES.contains(&name) =>
            {
                Ok(())
            }
            _ => Err(deleted()),
        }
    }

    /// What the change of `path` (sync-root relative) means; `Err(why)` when go must decide.
    fn classify(
        &self,
        path: &str,
        deleted: bool,
        root: &Path,
        tags: Option<&Tags>,
    ) -> Result<Change, String> {
        let abs = root.join(path);
        let now = std::fs::symlink_metadata(&abs)
            .ok()
            .map(|m| Kind::of(m.file_type()));
        if let Some(package) = self.by_file.get(path) {
            if now != Some(Kind::File) {
                return Err(format!("{path} is no longer a regular file"));
            }
            if read_header(root, path)? != self.packages[package].files[path] {
                return Err(format!(
                    "{path}'s build constraint, imports or directives changed"
                ));
            }
            return Ok(Change::Edit(package.clone()));
        }
        if let Some(package) = self.embedded.get(path) {
            return Err(format!("{path} is embedded by {package}"));
        }
        let not_built = || format!("{path} is not a Go file of a package the last build compiled");
        if now == Some(Kind::Dir) {
            let known = abs == root || self.dirs.keys().any(|d| d.starts_with(&abs));
            return if known {
                Ok(Change::Irrelevant)
            } else {
                Err(format!("{path} is a new directory"))
            };
        }
        let (Some(dir), Some(name)) = (abs.parent(), abs.file_name().and_then(OsStr::to_str))
        else {
            return Err(not_built());
        };
        let Some(package) = self.dirs.get(dir).and_then(|n| self.packages.get(n)) else {
            return Err(not_built());
        };
        if MODULE_FILES.contains(&name) {
            return Err(format!("{path} changes how go finds packages"));
        }
        match now {
            Some(Kind::File) => {
                let role = if ignored_by_name(name) {
                    FileRole::Ignored
                } else {
                    match tags.filter(|_| package.roles_agree) {
                        Some(t) => {
                            let content =
                                std::fs::read(&abs).map_err(|e| format!("{path}: {e}"))?;
                            t.file_role(name, &content)
                        }
                        None => FileRole::Unsure(not_built()),
                    }
                };
                match role {
                    FileRole::Ignored => Ok(Change::Irrelevant),
                    FileRole::Compiled => Err(format!("{path} is a new Go file of its package")),
                    FileRole::Unsure(why) => Err(why),
                }
            }
            // Absent: the deletion was judged by `classify_deletion`.
            None if deleted => Ok(Change::Irrelevant),
            None => Err(format!("{path} is gone")),
            Some(_) => Err(format!("{path} is a symlink or a special file")),
        }
    }

    /// Entries of the package's directory that appeared or went without kdev writing them
    /// (something in the pod changed the tree): go must decide.
    fn check_listing(
        &self,
        name: &str,
        changed: &BTreeMap<String, Seen>,
        root: &Path,
    ) -> Result<(), String> {
        let p = &self.packages[name];
        let now = super::recorded::listing(&p.dir)?;
        let rel = |n: &OsStr| {
            p.dir
                .join(n)
                .strip_prefix(root)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let differs = now
            .keys()
            .chain(p.listing.keys())
            .filter(|n| now.get(*n) != p.listing.get(*n))
            .find(|n| !changed.contains_key(&rel(n)));
        match differs {
            Some(n) => Err(format!("{} changed in the pod", rel(n))),
            None => Ok(()),
        }
    }

    fn steps(
        &self,
        order: &[&str],
        quick_dir: &Path,
        output: &Path,
    ) -> Result<Vec<BuildSpec>, String> {
        let main = &self.graph.main;
        let rebuilt: BTreeMap<&str, String> = order
            .iter()
            .filter(|n| **n != main.as_str())
            .map(|n| (*n, self.packages[*n].archive.to_string_lossy().into_owned()))
            .collect();
        let write = |file: PathBuf, text: String| {
            super::record::write_private(&file, text.as_bytes())
                .map(|()| file.to_string_lossy().into_owned())
                .map_err(|e| format!("{}: {e}", file.display()))
        };
        let mut steps = Vec::with_capacity(order.len() + 1);
        for name in order {
            let p = &self.packages[*name];
            let record = Record::Compile(name.to_string());
            let cfg = write(
                record.saved_file(quick_dir, "importcfg"),
                repoint(&p.importcfg, |n| rebuilt.get(n).cloned()),
            )?;
            let mut argv = p.argv.clone();
            if let Some((i, _)) = flag_value(&argv, "importcfg") {
                set_flag_value(&mut argv, i, "importcfg", &cfg);
            }
            if let (Some(text), Some((i, _))) = (&p.embedcfg, flag_value(&argv, "embedcfg")) {
                let file = write(record.saved_file(quick_dir, "embedcfg"), text.clone())?;
                set_flag_value(&mut argv, i, "embedcfg", &file);
            }
            steps.push(BuildSpec {
                argv,
                cwd: p.cwd.clone(),
                env: p.env.clone()?,
                env_clear: true,
                output: p.archive.clone(),
                group_file: None,
                nice: false,
            });
        }
        // The link reads the main package's archive from where the quick compile wrote it.
        let main_pkg = &self.packages[main];
        let main_archive = main_pkg.archive.to_string_lossy().into_owned();
        let cfg = write(
            Record::Link.saved_file(quick_dir, "importcfg"),
            repoint(&self.link_importcfg, |n| rebuilt.get(n).cloned())
                .replace(&main_pkg.linked_from, &main_archive),
        )?;
        let mut argv = self.link.argv.clone();
        for a in argv.iter_mut() {
            if *a == main_pkg.linked_from {
                a.clone_from(&main_archive);
            }
        }
        for (flag, value) in [
            ("importcfg", cfg),
            ("o", output.to_string_lossy().into_owned()),
        ] {
            if let Some((i, _)) = flag_value(&argv, flag) {
                set_flag_value(&mut argv, i, flag, &value);
            }
        }
        steps.push(BuildSpec {
            argv,
            cwd: self.link.cwd.clone(),
            env: self.link_env.clone()?,
            env_clear: true,
            output: output.to_path_buf(),
            group_file: None,
            nice: false,
        });
        Ok(steps)
    }
}

/// Names go never reads in a package's directory: `_x`, `.x`, tests, and files that are not a
/// source kind go knows.
fn ignored_by_name(name: &str) -> bool {
    name.starts_with('_')
        || name.starts_with('.')
        || name.ends_with("_test.go")
        || (!name.ends_with(".go") && !is_other_source(name))
}

/// A source file of another kind than Go (assembly, C, `.syso`, …), which go reads.
fn is_other_source(name: &str) -> bool {
    name.rfind('.')
        .is_some_and(|i| SOURCE_EXTENSIONS.contains(&&name[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_never_reads() {
        for n in [
            "_x.go",
            ".x.go",
            "a_test.go",
            "README.md",
            "data.json",
            "x.txt",
        ] {
            assert!(ignored_by_name(n), "{n}");
        }
        for n in ["a.go", "a.s", "a.syso", "a.c", "a_linux.go"] {
            assert!(!ignored_by_name(n), "{n}");
        }
    }
}

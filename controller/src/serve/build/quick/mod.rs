//! Quick rebuilds on the serve side ([`crate::quick_build`]): full builds run with the
//! recording wrapper; after one succeeds, its records are read back ([`recorded`]) with a
//! picture of the packages it compiled (their Go files' headers, their directories' names); a
//! later build whose changes are all edits of those files that leave every header as it was
//! recompiles the edited packages and those of the tree that import them, and links, without
//! the go command. Anything else — a new, deleted or renamed file, a package no recorded
//! compile built, go.mod, a changed import or build directive, a failed quick compile or link —
//! takes `go build`, which records again.

mod recorded;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kdev_protocol::BuildConfig;

use super::command::BuildSpec;
use crate::quick_build::{RECORD_TOOL, Record, archives_dir};
use recorded::Recorded;

/// `build.env` (or the controller's environment) setting this to `0` turns quick rebuilds off.
pub(crate) const OFF_ENV: &str = "KDEV_QUICK_BUILD";

/// The session's quick-rebuild state.
pub(super) struct QuickBuilds {
    dir: PathBuf,
    root: PathBuf,
    /// `-toolexec=…` for full builds; `Err(why)` when quick rebuilds are off for this session.
    toolexec: Result<String, String>,
    recorded: Option<Recorded>,
    /// Paths patched since the last full build succeeded.
    changed: BTreeSet<String>,
}

impl QuickBuilds {
    /// `go`: the go command of default builds, asked for the GOFLAGS it would use (the
    /// environment's, else its env file's).
    pub(super) fn new(dir: PathBuf, root: PathBuf, cfg: &BuildConfig, go: &str) -> QuickBuilds {
        let process_env = |k: &str| match k {
            "GOFLAGS" => go_env_goflags(go, cfg).or_else(|| std::env::var(k).ok()),
            _ => std::env::var(k).ok(),
        };
        let toolexec = toolexec_flag(cfg, &dir, &root, process_env).and_then(|flag| {
            std::fs::create_dir_all(&dir)
                .map(|()| flag)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))
        });
        if let Err(why) = &toolexec {
            super::log(format!("quick rebuilds are off: {why}"));
        }
        QuickBuilds {
            dir,
            root,
            toolexec,
            recorded: None,
            changed: BTreeSet::new(),
        }
    }

    /// A path changed in the tree.
    pub(super) fn changed(&mut self, path: &str) {
        self.changed.insert(path.to_string());
    }

    /// The compile and link steps of a quick rebuild of the tree as it is, linking to `output`;
    /// `Err(why not)` when only `go build` will do. `None` before any full build recorded.
    pub(super) fn plan(&self, output: &Path) -> Option<Result<Vec<BuildSpec>, String>> {
        let r = self.recorded.as_ref()?;
        Some(r.plan(&self.changed, &self.root, output))
    }

    /// `spec` (a `go build`) with the recording wrapper, and whether it has it.
    pub(super) fn with_recorder(&self, mut spec: BuildSpec) -> (BuildSpec, bool) {
        let Ok(flag) = &self.toolexec else {
            return (spec, false);
        };
        // After `go build`: the wrapper applies to every package the build compiles.
        spec.argv.insert(2, flag.clone());
        (spec, true)
    }

    /// A build that was not quick finished; `built`: the tree as it is now is what it built.
    /// After one with the recorder, its records are read back (if it succeeded) or dropped.
    pub(super) async fn full_build_finished(&mut self, recorded: bool, built: bool) {
        if built {
            self.changed.clear();
        }
        if !recorded {
            return;
        }
        self.recorded = None;
        if !built {
            return;
        }
        let (dir, root) = (self.dir.clone(), self.root.clone());
        // Reads and hashes files: not on the session's task.
        let loaded = tokio::task::spawn_blocking(move || Recorded::load(&dir, &root))
            .await
            .unwrap_or_else(|e| Err(format!("reading the records failed: {e}")));
        match loaded {
            Ok(r) => {
                super::log(format!(
                    "quick rebuilds ready: edits of {} skip the go command",
                    r.describe_files(6)
                ));
                self.recorded = Some(r);
            }
            Err(why) => super::log(format!(
                "quick rebuilds wait for the next full build: {why}"
            )),
        }
    }

    /// The records held no longer describe the tree (a full build starts, or a patch failed
    /// part-way): none is trusted until a full build succeeds.
    pub(super) fn forget(&mut self) {
        self.recorded = None;
    }
}

/// Remove what an earlier build recorded that the next one replaces (before a build that
/// records). Compile records stay: a package the build takes from its cache keeps its record,
/// which [`Recorded::load`] checks against the archive the new link reads.
pub(super) fn clear_records(dir: &Path) {
    let _ = std::fs::remove_file(Record::Link.file(dir));
    let _ = std::fs::remove_dir_all(archives_dir(dir));
}

/// What `go env GOFLAGS` says with the build's environment (a user's `go env -w` included).
fn go_env_goflags(go: &str, cfg: &BuildConfig) -> Option<String> {
    let out = std::process::Command::new(go)
        .args(["env", "GOFLAGS"])
        .envs(&cfg.env)
        // No go.mod here: nothing makes it switch toolchains to answer.
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `-toolexec=<this binary> record-tool <dir> <root>`, or why quick rebuilds cannot be used.
fn toolexec_flag(
    cfg: &BuildConfig,
    dir: &Path,
    root: &Path,
    process_env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if cfg.command.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("the build is a custom command".into());
    }
    if !cfg.before.is_empty() {
        return Err("build.before hooks run before every build".into());
    }
    let env_off = |v: Option<&str>| v.is_some_and(|v| v.trim() == "0");
    if env_off(cfg.env.get(OFF_ENV).map(String::as_str)) || env_off(process_env(OFF_ENV).as_deref())
    {
        return Err(format!("{OFF_ENV}=0"));
    }
    let goflags = cfg
        .env
        .get("GOFLAGS")
        .cloned()
        .or_else(|| process_env("GOFLAGS"))
        .unwrap_or_default();
    if cfg.flags.iter().any(|f| f.contains("toolexec")) || goflags.contains("toolexec") {
        return Err("the build sets its own -toolexec".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let (exe, dir, root) = (
        exe.to_string_lossy(),
        dir.to_string_lossy(),
        root.to_string_lossy(),
    );
    // The go command splits the flag's value at spaces.
    let plain = |s: &str| {
        !s.chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    };
    if let Some(p) = [&exe, &dir, &root].into_iter().find(|p| !plain(p)) {
        return Err(format!("{p} has spaces or quotes"));
    }
    Ok(format!("-toolexec={exe} {RECORD_TOOL} {dir} {root}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_rebuilds_are_off_for_builds_the_recorder_cannot_follow() {
        let (dir, root) = (Path::new("/kdev/run/quick-build"), Path::new("/kdev/src"));
        let none = |_: &str| None;
        let flag = toolexec_flag(&BuildConfig::default(), dir, root, none).unwrap();
        assert!(flag.starts_with("-toolexec=/"), "{flag}");
        assert!(
            flag.ends_with(" record-tool /kdev/run/quick-build /kdev/src"),
            "{flag}"
        );
        let off = |cfg: BuildConfig| toolexec_flag(&cfg, dir, root, none).unwrap_err();
        assert_eq!(
            off(BuildConfig {
                command: Some(vec!["make".into()]),
                ..Default::default()
            }),
            "the build is a custom command"
        );
        assert_eq!(
            off(BuildConfig {
                before: vec!["go generate ./...".into()],
                ..Default::default()
            }),
            "build.before hooks run before every build"
        );
        assert_eq!(
            off(BuildConfig {
                env: [(OFF_ENV.to_string(), "0".to_string())].into(),
                ..Default::default()
            }),
            "KDEV_QUICK_BUILD=0"
        );
        assert_eq!(
            off(BuildConfig {
                env: [("GOFLAGS".to_string(), "-toolexec=garble".to_string())].into(),
                ..Default::default()
            }),
            "the build sets its own -toolexec"
        );
        assert!(
            toolexec_flag(&BuildConfig::default(), dir, Path::new("/a b"), none)
                .unwrap_err()
                .contains("spaces")
        );
        // The controller's own environment counts too.
        let env = |k: &str| (k == "GOFLAGS").then(|| "-toolexec=/bin/x".to_string());
        assert_eq!(
            toolexec_flag(&BuildConfig::default(), dir, root, env).unwrap_err(),
            "the build sets its own -toolexec"
        );
    }
}

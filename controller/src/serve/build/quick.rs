//! Quick rebuilds on the serve side ([`crate::quick_build`]): full builds run with the
//! recording wrapper; after one succeeds, the recorded compile and link are kept with a picture
//! of the main package (its Go files' headers, its directory's names); a later build whose
//! changes are all edits of those files that leave every header as it was runs the compile and
//! the link directly. Anything else — a new, deleted or renamed file, a file outside the main
//! package, go.mod, a changed import or build directive, a failed quick compile — takes
//! `go build`, which records again.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use kdev_protocol::BuildConfig;

use super::command::BuildSpec;
use crate::quick_build::go_header::{self, GoHeader};
use crate::quick_build::{RECORD_TOOL, Tool, ToolRun, archives_dir, flag_value, set_flag_value};

/// `build.env` (or the controller's environment) setting this to `0` turns quick rebuilds off.
pub(crate) const OFF_ENV: &str = "KDEV_QUICK_BUILD";

/// The session's quick-rebuild state.
pub(super) struct QuickBuilds {
    dir: PathBuf,
    root: PathBuf,
    /// `-toolexec=…` for full builds; `Err(why)` when quick rebuilds are off for this session.
    toolexec: Result<String, String>,
    recorded: Option<Recorded>,
    /// Build inputs changed since the last full build succeeded.
    changed: BTreeSet<String>,
}

/// How the last successful full build ran the main package's compile and the link, rewritten
/// to build into `dir`, and the main package as it was then.
struct Recorded {
    compile: ToolRun,
    main_archive: PathBuf,
    link: ToolRun,
    /// The main package's Go files (sync-root relative) and their headers.
    files: BTreeMap<String, GoHeader>,
    package_dir: PathBuf,
    listing: Vec<OsString>,
}

impl QuickBuilds {
    pub(super) fn new(dir: PathBuf, root: PathBuf, cfg: &BuildConfig) -> QuickBuilds {
        let toolexec = toolexec_flag(cfg, &dir);
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

    /// A build input changed in the tree.
    pub(super) fn changed(&mut self, path: &str) {
        self.changed.insert(path.to_string());
    }

    /// The compile and link steps of a quick rebuild of the tree as it is, linking to `output`;
    /// `Err(why not)` when only `go build` will do. `None` before any full build recorded.
    pub(super) fn plan(&self, output: &Path) -> Option<Result<[BuildSpec; 2], String>> {
        let r = self.recorded.as_ref()?;
        Some(r.check(&self.changed, &self.root).map(|()| r.steps(output)))
    }

    /// `spec` (a `go build`) with the recording wrapper, and whether it has it.
    pub(super) fn with_recorder(&self, mut spec: BuildSpec) -> (BuildSpec, bool) {
        let Ok(flag) = &self.toolexec else {
            return (spec, false);
        };
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            super::log(format!(
                "quick rebuilds: cannot create {}: {e}",
                self.dir.display()
            ));
            return (spec, false);
        }
        // After `go build`: the wrapper applies to every package the build compiles.
        spec.argv.insert(2, flag.clone());
        (spec, true)
    }

    /// A full build starts: the record held so far no longer describes what will be built.
    pub(super) fn full_build_started(&mut self) {
        self.recorded = None;
    }

    /// A full build that recorded finished: keep its record if it succeeded (its tree is the
    /// tree as it is now), else none.
    pub(super) fn full_build_finished(&mut self, recorded: bool, built: bool) {
        if built {
            self.changed.clear();
        }
        if !(recorded && built) {
            self.recorded = None;
            return;
        }
        match Recorded::load(&self.dir, &self.root) {
            Ok(r) => {
                super::log(format!(
                    "quick rebuilds ready: edits of {} skip the go command",
                    r.files.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
                self.recorded = Some(r);
            }
            Err(why) => {
                super::log(format!(
                    "quick rebuilds wait for the next full build: {why}"
                ));
                self.recorded = None;
            }
        }
    }
}

/// Remove the records of an earlier build from `dir` (before a build that records).
pub(super) fn clear_records(dir: &Path) {
    for tool in [Tool::Compile, Tool::Link] {
        let _ = std::fs::remove_file(tool.record_file(dir));
    }
    let _ = std::fs::remove_dir_all(archives_dir(dir));
}

/// `-toolexec=<this binary> record-tool <dir>`, or why quick rebuilds cannot be used.
fn toolexec_flag(cfg: &BuildConfig, dir: &Path) -> Result<String, String> {
    if cfg.command.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("the build is a custom command".into());
    }
    if !cfg.before.is_empty() {
        return Err("build.before hooks run before every build".into());
    }
    let env_off = |v: Option<&str>| v.is_some_and(|v| v.trim() == "0");
    if env_off(cfg.env.get(OFF_ENV).map(String::as_str))
        || env_off(std::env::var(OFF_ENV).ok().as_deref())
    {
        return Err(format!("{OFF_ENV}=0"));
    }
    let goflags = cfg
        .env
        .get("GOFLAGS")
        .cloned()
        .or_else(|| std::env::var("GOFLAGS").ok())
        .unwrap_or_default();
    if cfg.flags.iter().any(|f| f.contains("toolexec")) || goflags.contains("toolexec") {
        return Err("the build sets its own -toolexec".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let (exe, dir) = (exe.to_string_lossy(), dir.to_string_lossy());
    // The go command splits the flag's value at spaces.
    let plain = |s: &str| {
        !s.chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    };
    if !plain(&exe) || !plain(&dir) {
        return Err(format!("{exe} or {dir} has spaces or quotes"));
    }
    Ok(format!("-toolexec={exe} {RECORD_TOOL} {dir}"))
}

fn read_run(dir: &Path, tool: Tool) -> Result<ToolRun, String> {
    let file = tool.record_file(dir);
    let data = std::fs::read(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if tool == Tool::Compile => {
            "the main package came from the build cache".to_string()
        }
        _ => format!("cannot read {}: {e}", file.display()),
    })?;
    serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", file.display()))
}

/// `path` without `.` components (the go command names files `./main.go`).
fn tidy(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

fn listing(dir: &Path) -> Result<Vec<OsString>, String> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e: std::io::Error| format!("cannot list {}: {e}", dir.display()))?;
    names.sort();
    Ok(names)
}

fn header(root: &Path, rel: &str) -> Result<GoHeader, String> {
    let text = std::fs::read_to_string(root.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
    go_header::parse(&text).ok_or_else(|| format!("{rel} does not start like a Go file"))
}

impl Recorded {
    fn load(dir: &Path, root: &Path) -> Result<Recorded, String> {
        let mut compile = read_run(dir, Tool::Compile)?;
        let mut link = read_run(dir, Tool::Link)?;
        if compile
            .argv
            .iter()
            .any(|a| a == "-symabis" || a == "-asmhdr")
        {
            return Err("the main package has assembly files".into());
        }
        let main_archive = dir.join("main.a");
        let archive = main_archive.to_string_lossy().into_owned();
        let (i, compiled_to) = flag_value(&compile.argv, "o")
            .map(|(i, v)| (i, v.to_string()))
            .ok_or("the recorded compile has no -o")?;
        set_flag_value(&mut compile.argv, i, "o", &archive);

        let mut files = BTreeMap::new();
        for arg in compile.argv.iter().rev() {
            if !arg.ends_with(".go") {
                break;
            }
            let path = tidy(&compile.cwd.join(arg));
            let rel = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| format!("{arg} is not in the synced tree (cgo?)"))?
                .to_string();
            files.insert(rel.clone(), header(root, &rel)?);
        }
        if files.is_empty() {
            return Err("the recorded compile names no Go files".into());
        }

        // The link reads the main package's archive from where the compile wrote it.
        for a in link.argv.iter_mut() {
            if *a == compiled_to {
                a.clone_from(&archive);
            }
        }
        let (i, cfg) = flag_value(&link.argv, "importcfg").ok_or("the link has no -importcfg")?;
        let text = std::fs::read_to_string(cfg).map_err(|e| format!("{cfg}: {e}"))?;
        if !text.contains(&compiled_to) {
            return Err("the link's import configuration does not name the main package".into());
        }
        let quick_cfg = Tool::Link.saved_file(dir, "quick-importcfg");
        std::fs::write(&quick_cfg, text.replace(&compiled_to, &archive))
            .map_err(|e| format!("{}: {e}", quick_cfg.display()))?;
        set_flag_value(&mut link.argv, i, "importcfg", &quick_cfg.to_string_lossy());
        if flag_value(&link.argv, "o").is_none() {
            return Err("the recorded link has no -o".into());
        }
        let package_dir = tidy(&compile.cwd);
        Ok(Recorded {
            listing: listing(&package_dir)?,
            package_dir,
            compile,
            main_archive,
            link,
            files,
        })
    }

    /// Whether the tree, after `changed`, may be built by this record's compile and link.
    fn check(&self, changed: &BTreeSet<String>, root: &Path) -> Result<(), String> {
        for path in changed {
            // `go build` never reads tests.
            if path.ends_with("_test.go") {
                continue;
            }
            let Some(was) = self.files.get(path) else {
                return Err(format!("{path} is not one of the main package's Go files"));
            };
            if header(root, path)? != *was {
                return Err(format!("{path}'s imports or build directives changed"));
            }
        }
        if listing(&self.package_dir)? != self.listing {
            return Err("files were added to or removed from the main package".into());
        }
        Ok(())
    }

    fn steps(&self, output: &Path) -> [BuildSpec; 2] {
        let spec = |run: &ToolRun, output: &Path| BuildSpec {
            argv: run.argv.clone(),
            cwd: run.cwd.clone(),
            env: run.env.clone(),
            output: output.to_path_buf(),
            group_file: None,
        };
        let mut link = spec(&self.link, output);
        if let Some((i, _)) = flag_value(&link.argv, "o") {
            set_flag_value(&mut link.argv, i, "o", &output.to_string_lossy());
        }
        [spec(&self.compile, &self.main_archive), link]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_rebuilds_are_off_for_builds_the_recorder_cannot_follow() {
        let dir = Path::new("/kdev/run/quick-build");
        let flag = toolexec_flag(&BuildConfig::default(), dir).unwrap();
        assert!(flag.starts_with("-toolexec=/"), "{flag}");
        assert!(
            flag.ends_with(" record-tool /kdev/run/quick-build"),
            "{flag}"
        );
        let off = |cfg: BuildConfig| toolexec_flag(&cfg, dir).unwrap_err();
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
            toolexec_flag(&BuildConfig::default(), Path::new("/a b"))
                .unwrap_err()
                .contains("spaces")
        );
    }
}

//! Quick rebuilds: an edit confined to Go files of packages the last `go build` compiled is
//! built by running the compiler on those packages (and on every package that imports them)
//! and the linker, exactly as that build ran them, without the go command. On a Gin service
//! the go command's own work (loading ~100 packages, hashing their sources to find them in its
//! cache) is about 120 of a rebuild's 500 ms.
//!
//! * [`record`]: full builds run with a `-toolexec` wrapper that records each compile of a
//!   package of the tree and the link (no environment values: [`env`]); the go command's
//!   package graph comes with them ([`graph`]).
//! * [`recorded`]: the records read back after a successful full build.
//! * [`plan`]: whether the tree as it is now can be built quickly (every changed path
//!   classified by what it is, with go's own rules for which files count: [`constraints`],
//!   [`build_constraint`], [`header`]), and the steps.
//! * [`go_command`]: everything this relies on about the go command, each with its test.
//!
//! Never trusted alone: after a quick rebuild, when the session is idle, `serve` runs the
//! shadow build (`go build` of the same tree, at low priority) and compares the binaries
//! ([`QuickBuilds::shadow_wanted`]); a difference installs go build's binary and turns quick
//! rebuilds off for the session. Records missing for packages a quick rebuild may need are
//! made by evicting their cache entries so that the next full build compiles them, or a
//! shadow build while the session is idle ([`Shadow::Record`]).

mod build_constraint;
pub mod constraints;
pub mod env;
pub mod go_command;
pub mod graph;
mod header;
mod plan;
pub mod record;
mod recorded;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kdev_protocol::BuildConfig;

use crate::build_spec::BuildSpec;
use crate::log;
use constraints::Tags;
use graph::Graph;
pub(crate) use plan::{QuickPlan, Seen};
pub use record::RECORD_TOOL;
use recorded::{EnvSources, History, LoadCtx, Recorded};

/// `build.env` (or the controller's environment) setting this to `0` turns quick rebuilds off.
const OFF_ENV: &str = "KDEV_QUICK_BUILD";
/// `build.env` (or the controller's environment) setting this to `0` turns the shadow build
/// off.
const VERIFY_ENV: &str = "KDEV_QUICK_VERIFY";
/// Changed paths remembered between full builds; past this, the next build is `go build`.
const MAX_CHANGED: usize = 10_000;

/// The action graph a recorded build writes into its record directory.
const ACTION_GRAPH: &str = "actiongraph.json";

/// Paths changed since the last successful full build.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Changes {
    Paths(BTreeMap<String, Seen>),
    /// More than [`MAX_CHANGED`], or not known path by path.
    Unknown(&'static str),
}

/// What a shadow build proves: the installed binary came from quick rebuild `build_id`, which
/// compiled `packages` (with those of earlier unproven quick rebuilds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unproven {
    pub build_id: u64,
    pub packages: Vec<String>,
}

/// What a shadow build (`go build` of the unchanged tree while the session is idle, at low
/// priority) is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shadow {
    /// Prove the installed quick binary: compare it with go build's.
    Prove(Unproven),
    /// Record the packages the last full build took from the go cache with no record (their
    /// cache entries were evicted, so this build compiles them): without it, the next edit
    /// reaching them would take go build. Its binary is compared too, but never installed.
    Record,
}

/// Counts for the log and `-v`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub quick: u64,
    pub full: u64,
    pub verified: u64,
}

/// The session's quick-rebuild state.
pub(crate) struct QuickBuilds {
    dir: PathBuf,
    root: PathBuf,
    cfg: BuildConfig,
    /// `-toolexec=<this binary> record-tool`; `Err(why)` when quick rebuilds are off; `None`
    /// until the first build (deciding runs `go env`, which writes to the go cache: a session
    /// that never builds must not).
    toolexec: Option<Result<String, String>>,
    verify: bool,
    recorded: Option<Recorded>,
    history: History,
    changes: Changes,
    /// The build's environment and `go env`'s: where recorded environments are rebuilt from.
    build_env: BTreeMap<String, String>,
    go_env: BTreeMap<String, String>,
    go: String,
    flags: Vec<String>,
    /// The build's tags (`go list`), asked once per session.
    tags: Option<Option<Tags>>,
    unverified: Option<Unproven>,
    /// The last full build evicted cache entries: a [`Shadow::Record`] build is due.
    records_wanted: bool,
    /// Action IDs of the compiles whose cache entries this session evicted and no build has
    /// compiled since: if a build after that still took one from the cache without a record,
    /// evicting it again would not help. Once a build compiles it, it may be evicted again
    /// (its record can age out of the history, and a revert bring it back from the cache).
    evicted: BTreeSet<String>,
    next_dir: u64,
    pub counts: Counts,
}

impl QuickBuilds {
    /// `build_env`: the environment `go build` gets (the controller's own with the build's on
    /// top); `go`: the go command of default builds.
    pub(crate) fn new(
        dir: PathBuf,
        root: PathBuf,
        cfg: &BuildConfig,
        go: &str,
        build_env: BTreeMap<String, String>,
    ) -> QuickBuilds {
        let setting = |k: &str| cfg.env.get(k).cloned().or_else(|| std::env::var(k).ok());
        let verify = setting(VERIFY_ENV).is_none_or(|v| v.trim() != "0");
        QuickBuilds {
            dir,
            root,
            cfg: cfg.clone(),
            toolexec: None,
            verify,
            recorded: None,
            history: History::default(),
            changes: Changes::Paths(BTreeMap::new()),
            build_env,
            go_env: BTreeMap::new(),
            go: go.to_string(),
            flags: cfg.flags.clone(),
            tags: None,
            unverified: None,
            records_wanted: false,
            evicted: BTreeSet::new(),
            next_dir: 1,
            counts: Counts::default(),
        }
    }

    /// Quick rebuilds are on, or not decided yet.
    fn on(&self) -> bool {
        !matches!(self.toolexec, Some(Err(_)))
    }

    /// Decide whether quick rebuilds are on (once, before the first build records).
    fn decide(&mut self) -> Result<String, String> {
        if let Some(t) = &self.toolexec {
            return t.clone();
        }
        self.go_env = go_env(&self.go, &self.build_env).unwrap_or_default();
        let cfg = &self.cfg;
        let setting = |k: &str| cfg.env.get(k).cloned().or_else(|| std::env::var(k).ok());
        let dir = &self.dir;
        let toolexec = toolexec_flag(cfg, &self.root, &self.go_env, setting).and_then(|flag| {
            // A session starts with no records: what an earlier one left is of no use.
            let _ = std::fs::remove_dir_all(dir);
            record::create_private_dir(dir)
                .map(|()| flag)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))
        });
        match &toolexec {
            Err(why) => log::serve(format!("quick rebuilds are off: {why}")),
            Ok(_) if !self.verify => {
                log::serve(format!("quick rebuilds are not verified ({VERIFY_ENV}=0)"))
            }
            Ok(_) => {}
        }
        self.toolexec = Some(toolexec.clone());
        toolexec
    }

    /// A patch wrote `applied` and deleted `deleted` (sync-root relative paths).
    pub(crate) fn changed<'a>(
        &mut self,
        applied: impl Iterator<Item = &'a str>,
        deleted: impl Iterator<Item = &'a str>,
    ) {
        if !self.on() {
            return;
        }
        let Changes::Paths(paths) = &mut self.changes else {
            return;
        };
        let all = applied
            .map(|p| (p, false))
            .chain(deleted.map(|p| (p, true)));
        for (path, deleted) in all {
            if paths.len() >= MAX_CHANGED && !paths.contains_key(path) {
                self.changes = Changes::Unknown("more files changed than a quick rebuild follows");
                return;
            }
            paths.entry(path.to_string()).or_default().deleted |= deleted;
        }
    }

    /// A patch failed part-way: what it changed is not known path by path.
    pub(crate) fn patch_failed(&mut self) {
        self.changes = Changes::Unknown("a patch failed part-way");
    }

    /// The steps of a quick rebuild of the tree as it is, linking to `output`; `Err(why not)`
    /// when only `go build` will do; `None` when quick rebuilds are off or nothing is recorded.
    pub(crate) fn plan(&self, output: &Path) -> Option<Result<QuickPlan, String>> {
        if !self.on() {
            return None;
        }
        let r = self.recorded.as_ref()?;
        Some(match &self.changes {
            Changes::Unknown(why) => Err((*why).to_string()),
            Changes::Paths(paths) => {
                let tags = self.tags.as_ref().and_then(Option::as_ref);
                r.plan(paths, &self.root, tags, &self.quick_dir(), output)
            }
        })
    }

    fn quick_dir(&self) -> PathBuf {
        self.dir.join("quick")
    }

    /// `spec` (a `go build`) recording into a new directory, and that directory; `spec` as it
    /// is when quick rebuilds are off.
    pub(crate) fn recording(&mut self, mut spec: BuildSpec) -> (BuildSpec, Option<PathBuf>) {
        let Ok(flag) = self.decide() else {
            return (spec, None);
        };
        let dir = self.dir.join(format!("build-{}", self.next_dir));
        self.next_dir += 1;
        let _ = std::fs::remove_dir_all(&dir);
        if record::create_private_dir(&dir).is_err() {
            return (spec, None);
        }
        let (dir_s, root_s) = (dir.to_string_lossy(), self.root.to_string_lossy());
        // After `go build`: the flags apply to every package the build compiles.
        spec.argv.insert(2, format!("{flag} {dir_s} {root_s}"));
        spec.argv
            .insert(3, format!("-debug-actiongraph={dir_s}/{ACTION_GRAPH}"));
        (spec, Some(dir))
    }

    /// A `go build` finished; `recorded_in`: its record directory, `built`: it succeeded and
    /// the tree as it is now is what it built. Its records are read back (the previous ones
    /// stay when it failed), and packages still without a record have their cache entries
    /// evicted (`gocache`), so a later go build records them.
    pub(crate) async fn full_build_finished(
        &mut self,
        recorded_in: Option<PathBuf>,
        built: bool,
        gocache: Option<PathBuf>,
    ) {
        if built {
            self.changes = Changes::Paths(BTreeMap::new());
            self.counts.full += 1;
        }
        let Some(build_dir) = recorded_in else {
            return;
        };
        if !built {
            // What it compiled before it failed (or was cancelled) is in the go cache now.
            self.history.absorb(&build_dir);
            let _ = std::fs::remove_dir_all(&build_dir);
            return;
        }
        let mut job = LoadJob {
            build_dir: build_dir.clone(),
            quick_dir: self.quick_dir(),
            root: self.root.clone(),
            build_env: std::mem::take(&mut self.build_env),
            go_env: std::mem::take(&mut self.go_env),
            go: self.go.clone(),
            flags: self.flags.clone(),
            tags: self.tags.take(),
            history: std::mem::take(&mut self.history),
            evicted: std::mem::take(&mut self.evicted),
            gocache,
        };
        // Reads and hashes files, may ask `go list`: not on the session's task.
        let (job, loaded, newly_evicted) = tokio::task::spawn_blocking(move || {
            let (loaded, evicted) = job.run();
            (job, loaded, evicted)
        })
        .await
        .expect("loading quick-rebuild records panicked");
        self.build_env = job.build_env;
        self.go_env = job.go_env;
        self.tags = job.tags;
        self.history = job.history;
        self.evicted = job.evicted;
        // This build compiled (and recorded) what earlier ones evicted; what it evicted now
        // waits for the next one.
        self.records_wanted = !newly_evicted.is_empty();
        if !newly_evicted.is_empty() {
            log::serve(format!(
                "quick rebuilds: {} came from the build cache with no record; their cache entries \
                 were removed so that the next go build (or a shadow build while idle) records \
                 them",
                describe(&newly_evicted, 4)
            ));
        }
        self.remove_build_dirs_but(&build_dir);
        match loaded {
            Ok(r) => {
                log::serve(format!(
                    "quick rebuilds ready: edits of {} skip the go command",
                    r.describe_files(6)
                ));
                self.recorded = Some(r);
            }
            Err(why) => {
                log::serve(format!(
                    "quick rebuilds wait for the next full build: {why}"
                ));
                self.recorded = None;
            }
        }
    }

    fn remove_build_dirs_but(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let is_build = e.file_name().to_string_lossy().starts_with("build-");
            if is_build && path != keep {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }

    /// A quick rebuild (`build_id`, compiling `packages`) was installed (or was identical to
    /// the running binary): it waits for the shadow build.
    pub(crate) fn quick_installed(&mut self, build_id: u64, packages: Vec<String>) {
        self.counts.quick += 1;
        if let Some(r) = &self.recorded {
            r.remember_quick(&packages, &mut self.history);
        }
        if !self.verify {
            return;
        }
        let packages = match self.unverified.take() {
            Some(Unproven {
                packages: mut before,
                ..
            }) => {
                before.extend(packages);
                before.sort();
                before.dedup();
                before
            }
            None => packages,
        };
        self.unverified = Some(Unproven { build_id, packages });
    }

    /// A full build was installed: whatever quick binary ran is replaced.
    pub(crate) fn full_installed(&mut self) {
        self.unverified = None;
    }

    /// The shadow build due once the session is idle, if one is: proving the installed quick
    /// binary first, else recording evicted packages. None with `KDEV_QUICK_VERIFY=0`.
    pub(crate) fn shadow_wanted(&self) -> Option<Shadow> {
        if !self.on() || !self.verify {
            return None;
        }
        match &self.unverified {
            Some(u) => Some(Shadow::Prove(u.clone())),
            None => self.records_wanted.then_some(Shadow::Record),
        }
    }

    /// The shadow build for `v` ran to its end (succeeded or failed); its records were read
    /// back ([`QuickBuilds::full_build_finished`]).
    pub(crate) fn shadow_done(&mut self, v: &Shadow, binaries_equal: bool) {
        match v {
            Shadow::Prove(u) => {
                if self.unverified.as_ref() == Some(u) {
                    self.unverified = None;
                }
                if binaries_equal {
                    self.counts.verified += 1;
                }
            }
            // Whatever it could not record, another shadow build would not either.
            Shadow::Record => self.records_wanted = false,
        }
    }

    /// A quick binary differed from go build's: no more quick rebuilds this session.
    pub(crate) fn turn_off(&mut self, why: String) {
        log::serve(format!("quick rebuilds are off: {why}"));
        self.toolexec = Some(Err(why));
        self.recorded = None;
        self.unverified = None;
        self.records_wanted = false;
        self.changes = Changes::Paths(BTreeMap::new());
    }
}

/// At most `max` names of `set`, and how many more.
fn describe(set: &BTreeSet<String>, max: usize) -> String {
    let mut named: Vec<&str> = set.iter().take(max).map(String::as_str).collect();
    let more = format!("{} more", set.len().saturating_sub(max));
    if set.len() > max {
        named.push(&more);
    }
    named.join(", ")
}

/// What reading a build's records needs, moved to a blocking thread and back.
struct LoadJob {
    build_dir: PathBuf,
    quick_dir: PathBuf,
    root: PathBuf,
    build_env: BTreeMap<String, String>,
    go_env: BTreeMap<String, String>,
    go: String,
    flags: Vec<String>,
    tags: Option<Option<Tags>>,
    history: History,
    evicted: BTreeSet<String>,
    gocache: Option<PathBuf>,
}

impl LoadJob {
    /// The records, and the packages whose cache entries were evicted now.
    fn run(&mut self) -> (Result<Recorded, String>, BTreeSet<String>) {
        if self.tags.is_none() {
            self.tags = Some(build_tags(
                &self.go,
                &self.flags,
                &self.root,
                &self.build_env,
            ));
        }
        if let Err(e) = record::create_private_dir(&self.quick_dir) {
            return (
                Err(format!("cannot create {}: {e}", self.quick_dir.display())),
                BTreeSet::new(),
            );
        }
        let graph = match std::fs::read(self.build_dir.join(ACTION_GRAPH))
            .map_err(|e| format!("the go command wrote no package graph: {e}"))
            .and_then(|json| Graph::parse(&json))
        {
            Ok(g) => g,
            Err(why) => return (Err(why), BTreeSet::new()),
        };
        let cx = LoadCtx {
            build_dir: &self.build_dir,
            quick_dir: &self.quick_dir,
            root: &self.root,
            env: EnvSources {
                build: &self.build_env,
                go_env: &self.go_env,
            },
            tags: self.tags.as_ref().and_then(Option::as_ref),
        };
        for p in graph.packages.values().filter(|p| p.compiled) {
            if let Some(id) = &p.action_id {
                self.evicted.remove(id);
            }
        }
        let loaded = Recorded::load(&cx, graph, &mut self.history);
        let mut newly = BTreeSet::new();
        if let (Ok(r), Some(gocache)) = (&loaded, &self.gocache) {
            let module = module_path(&self.root);
            let action_id = |p: &String| r.graph.packages.get(p).and_then(|g| g.action_id.clone());
            let mut wanted = r.unrecorded(module.as_deref());
            wanted.retain(|p| action_id(p).is_some_and(|id| !self.evicted.contains(&id)));
            newly = graph::evict(gocache, &r.graph, &wanted);
            self.evicted.extend(wanted.iter().filter_map(action_id));
        }
        (loaded, newly)
    }
}

/// The `module` line of the tree's go.mod.
fn module_path(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("go.mod")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("module")?;
        let path = rest.split("//").next()?.trim().trim_matches('"');
        (!path.is_empty() && rest.starts_with(char::is_whitespace)).then(|| path.to_string())
    })
}

/// `go env -json` with the build's environment: the values the go command gives its tools.
fn go_env(go: &str, build_env: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    let out = std::process::Command::new(go)
        .args(["env", "-json"])
        .env_clear()
        .envs(build_env)
        // No go.mod here: nothing makes it switch toolchains to answer.
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The build's tags as its go command reports them (`go list`'s `context`), `None` if it
/// cannot say.
fn build_tags(
    go: &str,
    flags: &[String],
    root: &Path,
    build_env: &BTreeMap<String, String>,
) -> Option<Tags> {
    let format = "{{context.GOOS}}|{{context.GOARCH}}|{{context.CgoEnabled}}|{{context.Compiler}}|\
                  {{join context.BuildTags \",\"}}|{{join context.ToolTags \",\"}}|\
                  {{join context.ReleaseTags \",\"}}";
    let out = std::process::Command::new(go)
        .arg("list")
        .args(["-e", "-f", format])
        .args(flags)
        .arg("runtime")
        .env_clear()
        .envs(build_env)
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let f: Vec<&str> = text.trim().split('|').collect();
    let [goos, goarch, cgo, compiler, build, tool, release] = f[..] else {
        return None;
    };
    let tags = [build, tool, release]
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    Some(Tags {
        goos: goos.into(),
        goarch: goarch.into(),
        cgo: cgo == "true",
        compiler: compiler.into(),
        tags,
    })
}

/// `-toolexec=<this binary> record-tool` (the record directory and the root follow), or why
/// quick rebuilds cannot be used. `setting`: a variable of `build.env`, else of the
/// controller's environment.
fn toolexec_flag(
    cfg: &BuildConfig,
    root: &Path,
    go_env: &BTreeMap<String, String>,
    setting: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if cfg.command.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("the build is a custom command".into());
    }
    if !cfg.before.is_empty() {
        return Err("build.before hooks run before every build".into());
    }
    if setting(OFF_ENV).is_some_and(|v| v.trim() == "0") {
        return Err(format!("{OFF_ENV}=0"));
    }
    // What go uses: the environment's GOFLAGS, else its env file's (`go env -w`).
    let goflags = go_env
        .get("GOFLAGS")
        .cloned()
        .or_else(|| setting("GOFLAGS"))
        .unwrap_or_default();
    if cfg.flags.iter().any(|f| f.contains("toolexec")) || goflags.contains("toolexec") {
        return Err("the build sets its own -toolexec".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let (exe, root) = (exe.to_string_lossy(), root.to_string_lossy());
    // The go command splits the flag's value at spaces.
    let plain = |s: &str| {
        !s.chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    };
    if let Some(p) = [&exe, &root].into_iter().find(|p| !plain(p)) {
        return Err(format!("{p} has spaces or quotes"));
    }
    if !plain(&std::env::temp_dir().to_string_lossy()) {
        return Err("the temporary directory's path has spaces or quotes".into());
    }
    Ok(format!("-toolexec={exe} {RECORD_TOOL}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_rebuilds_are_off_for_builds_the_recorder_cannot_follow() {
        let root = Path::new("/kdev/src");
        let none = |_: &str| None;
        let no_env = BTreeMap::new();
        let flag = toolexec_flag(&BuildConfig::default(), root, &no_env, none).unwrap();
        assert!(flag.starts_with("-toolexec=/"), "{flag}");
        assert!(flag.ends_with(" record-tool"), "{flag}");
        let off = |cfg: BuildConfig| toolexec_flag(&cfg, root, &no_env, none).unwrap_err();
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
        let setting = |k: &str| (k == OFF_ENV).then(|| "0".to_string());
        assert_eq!(
            toolexec_flag(&BuildConfig::default(), root, &no_env, setting).unwrap_err(),
            "KDEV_QUICK_BUILD=0"
        );
        let goflags = |k: &str| (k == "GOFLAGS").then(|| "-toolexec=garble".to_string());
        assert_eq!(
            toolexec_flag(&BuildConfig::default(), root, &no_env, goflags).unwrap_err(),
            "the build sets its own -toolexec"
        );
        // The go env file's GOFLAGS counts too.
        let go_env = BTreeMap::from([("GOFLAGS".to_string(), "-toolexec=/bin/x".to_string())]);
        assert_eq!(
            toolexec_flag(&BuildConfig::default(), root, &go_env, none).unwrap_err(),
            "the build sets its own -toolexec"
        );
        assert!(
            toolexec_flag(&BuildConfig::default(), Path::new("/a b"), &no_env, none)
                .unwrap_err()
                .contains("spaces")
        );
    }

    #[test]
    fn the_changed_set_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut q = QuickBuilds::new(
            tmp.path().join("records"),
            tmp.path().join("src"),
            &BuildConfig::default(),
            "/nonexistent/go",
            BTreeMap::new(),
        );
        assert!(q.on());
        let paths: Vec<String> = (0..MAX_CHANGED).map(|i| format!("d/{i}")).collect();
        q.changed(paths.iter().map(String::as_str), std::iter::empty());
        q.changed(["d/0"].into_iter(), ["d/1"].into_iter());
        assert!(
            matches!(&q.changes, Changes::Paths(p) if p.len() == MAX_CHANGED && p["d/1"].deleted)
        );
        q.changed(std::iter::empty(), ["one/more"].into_iter());
        assert!(matches!(q.changes, Changes::Unknown(_)));
        // Off, nothing is kept at all.
        q.turn_off("test".into());
        q.changed(paths.iter().map(String::as_str), std::iter::empty());
        assert_eq!(q.changes, Changes::Paths(BTreeMap::new()));
    }

    #[test]
    fn module_paths_are_read_from_go_mod() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("go.mod"),
            "// comment\nmodule \"example.com/m\" // why\n\ngo 1.22\n",
        )
        .unwrap();
        assert_eq!(module_path(tmp.path()).as_deref(), Some("example.com/m"));
        std::fs::write(tmp.path().join("go.mod"), "modulex y\n").unwrap();
        assert_eq!(module_path(tmp.path()), None);
    }
}

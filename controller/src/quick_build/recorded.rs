//! What the last successful full build recorded ([`super::record`]), read back with its
//! package graph ([`super::graph`]): the packages of the tree whose compile is on record
//! (their Go files and headers, their directories), and the link.
//!
//! A compile record describes the package the new link reads only if it wrote the archive
//! the link reads: each is kept with the BLAKE3 of what it wrote ([`History`]), and a package
//! the build took from its cache keeps a record only if the cached archive has those bytes
//! (after a revert, an older record of the same package often does).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::constraints::{FileRole, Tags};
use super::env;
use super::go_command::{flag_value, packagefile, repoint, set_flag_value};
use super::graph::Graph;
use super::header::{self, GoHeader};
use super::record::{MAIN_ARCHIVE, Record, ToolRun};
use crate::util::lexical;

/// The `-p` of the main package's compile.
const MAIN: &str = "main";

/// Compile records per package kept across builds, newest first. A revert takes the reverted
/// packages from the go cache, and only a record of that very compile keeps the next edit
/// quick: with 16, a package edited in one save out of three lost its older versions within
/// ~50 saves (the differential test's misses). A record is a few KB (argument vector, import
/// configuration), so an often-edited package keeps well under a MB.
const HISTORY_PER_PACKAGE: usize = 64;

/// Compile records kept in all (a record is a few KB): past this, the oldest of the package
/// with the most go first, so that `serve`'s memory stays bounded whatever the tree.
const HISTORY_TOTAL: usize = 2048;

/// The compile records of the session's builds, by package (import path) and the BLAKE3 of
/// the archive each wrote.
#[derive(Default)]
pub(super) struct History {
    runs: BTreeMap<String, Vec<(String, ToolRun)>>,
    total: usize,
}

impl History {
    /// Take in the compiles recorded in `build_dir` (of any build, finished or not): each
    /// with the digest of the archive it wrote, under its `-p` (`main` for the main package).
    pub(super) fn absorb(&mut self, build_dir: &Path) {
        let Ok(compiles) = Record::compiles_in(build_dir) else {
            return;
        };
        for file in compiles {
            let Ok(run) = read_run(&file) else { continue };
            let Some(output) = run.output.clone() else {
                continue;
            };
            let Some((_, p)) = flag_value(&run.argv, "p") else {
                continue;
            };
            let p = p.to_string();
            self.add(&p, output, run);
        }
    }

    fn add(&mut self, package: &str, output: String, run: ToolRun) {
        let runs = self.runs.entry(package.to_string()).or_default();
        let before = runs.len();
        runs.retain(|(o, _)| *o != output);
        runs.insert(0, (output, run));
        runs.truncate(HISTORY_PER_PACKAGE);
        self.total = self.total + runs.len() - before;
        while self.total > HISTORY_TOTAL {
            // The newest record of each package stays: it is what the next build may need.
            let Some(runs) = self.runs.values_mut().max_by_key(|r| r.len()) else {
                break;
            };
            if runs.len() <= 1 {
                break;
            }
            runs.pop();
            self.total -= 1;
        }
    }

    fn has(&self, package: &str) -> bool {
        self.runs.contains_key(package)
    }

    fn find(&self, package: &str, output: &str) -> Option<&ToolRun> {
        self.runs
            .get(package)?
            .iter()
            .find(|(o, _)| o == output)
            .map(|(_, r)| r)
    }
}

/// What a directory entry was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    pub(super) fn of(ft: std::fs::FileType) -> Kind {
        if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }
}

/// One package of the tree with a compile on record that wrote what the link reads.
pub(super) struct Package {
    /// The compile as recorded.
    pub run: ToolRun,
    /// The recorded compile, writing to [`Package::archive`], in the recorded environment.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Result<BTreeMap<String, String>, String>,
    /// Where the new link reads its archive (the main package's: the link's own argument).
    pub linked_from: String,
    /// Where a quick rebuild writes it.
    pub archive: PathBuf,
    /// Its import configuration, naming the archives the new link reads.
    pub importcfg: String,
    pub embedcfg: Option<String>,
    /// Its Go files (sync-root relative) and their headers.
    pub files: BTreeMap<String, GoHeader>,
    /// Its directory (absolute) and what was in it.
    pub dir: PathBuf,
    pub listing: BTreeMap<OsString, Kind>,
    /// Why it cannot be compiled without the go command.
    pub unusable: Option<String>,
    /// Whether kdev's reading of build constraints gives exactly the Go files go compiled.
    pub roles_agree: bool,
}

/// The last successful full build, as far as quick rebuilds are concerned.
pub(super) struct Recorded {
    pub graph: Graph,
    /// By import path (the graph's); the main package's under the graph's name for it.
    pub packages: BTreeMap<String, Package>,
    /// Go files (sync-root relative) → the package that compiles them.
    pub by_file: BTreeMap<String, String>,
    /// Package directories (absolute) → the package.
    pub dirs: BTreeMap<PathBuf, String>,
    /// Files (sync-root relative) that recorded packages embed.
    pub embedded: BTreeMap<String, String>,
    pub link: ToolRun,
    pub link_env: Result<BTreeMap<String, String>, String>,
    pub link_importcfg: String,
    /// Why quick rebuilds cannot be used at all with this build.
    pub unusable: Option<String>,
}

/// Where the environment of recorded runs is rebuilt from (see [`env::rebuild`]).
pub(super) struct EnvSources<'a> {
    pub build: &'a BTreeMap<String, String>,
    pub go_env: &'a BTreeMap<String, String>,
}

impl EnvSources<'_> {
    fn rebuild(&self, run: &ToolRun, what: &str) -> Result<BTreeMap<String, String>, String> {
        env::rebuild(&run.env, &[self.build, self.go_env]).map_err(|missing| {
            format!(
                "the environment of {what} cannot be repeated (it had other values of {})",
                missing.join(", ")
            )
        })
    }
}

fn read_run(file: &Path) -> Result<ToolRun, String> {
    let data = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", file.display()))
}

/// The entries of `dir`, with what each is.
pub(super) fn listing(dir: &Path) -> Result<BTreeMap<OsString, Kind>, String> {
    std::fs::read_dir(dir)
        .and_then(|rd| {
            rd.map(|e| {
                let e = e?;
                Ok((e.file_name(), Kind::of(e.file_type()?)))
            })
            .collect()
        })
        .map_err(|e: std::io::Error| format!("cannot list {}: {e}", dir.display()))
}

pub(super) fn read_header(root: &Path, rel: &str) -> Result<GoHeader, String> {
    let text = std::fs::read_to_string(root.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
    header::parse(&text).ok_or_else(|| format!("{rel} does not start like a Go file"))
}

/// A package archive's digest, as records keep it ([`super::record::archive_digest`]).
fn hash(path: &Path) -> Result<String, String> {
    super::record::archive_digest(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The files an embed configuration names (`{"Files": {"name": "/abs/path"}}`).
fn embedded_files(embedcfg: &str) -> Vec<PathBuf> {
    #[derive(serde::Deserialize)]
    struct EmbedCfg {
        #[serde(rename = "Files", default)]
        files: BTreeMap<String, PathBuf>,
    }
    serde_json::from_str::<EmbedCfg>(embedcfg)
        .map(|c| c.files.into_values().collect())
        .unwrap_or_default()
}

/// What loading needs besides the build's own files.
pub(super) struct LoadCtx<'a> {
    /// The build's record directory.
    pub build_dir: &'a Path,
    /// Where quick rebuilds write.
    pub quick_dir: &'a Path,
    pub root: &'a Path,
    pub env: EnvSources<'a>,
    pub tags: Option<&'a Tags>,
}

impl Recorded {
    /// The records of a successful full build: its link and graph, the compiles it ran, and
    /// from `history` those that wrote the archives it took from its cache. Compiles it ran
    /// go into `history`.
    pub(super) fn load(
        cx: &LoadCtx<'_>,
        graph: Graph,
        history: &mut History,
    ) -> Result<Recorded, String> {
        let link = read_run(&Record::Link.file(cx.build_dir))?;
        let link_importcfg = link
            .files
            .get("importcfg")
            .cloned()
            .ok_or("the link has no import configuration")?;
        let main_linked = link.argv.last().cloned().unwrap_or_default();
        let link_paths: BTreeMap<String, String> = link_importcfg
            .lines()
            .filter_map(packagefile)
            .map(|(p, f)| (p.to_string(), f.to_string()))
            .collect();
        if !link_paths.values().any(|f| *f == main_linked) {
            return Err("the link's import configuration does not name the main package".into());
        }
        flag_value(&link.argv, "o").ok_or("the recorded link has no -o")?;

        history.absorb(cx.build_dir);

        let mut packages = BTreeMap::new();
        for name in graph.packages.keys() {
            let is_main = *name == graph.main;
            let key = if is_main { MAIN } else { name.as_str() };
            if !history.has(key) {
                continue;
            }
            let linked = if is_main {
                Record::Link.saved_file(cx.build_dir, MAIN_ARCHIVE)
            } else {
                match link_paths.get(name) {
                    Some(f) => PathBuf::from(f),
                    None => continue,
                }
            };
            let Ok(h) = hash(&linked) else { continue };
            let Some(run) = history.find(key, &h) else {
                continue;
            };
            let linked_from = if is_main {
                main_linked.clone()
            } else {
                linked.to_string_lossy().into_owned()
            };
            let p_flag = if is_main { MAIN } else { name.as_str() };
            let package = Package::load(cx, p_flag, run.clone(), linked_from, &link_paths)?;
            packages.insert(name.clone(), package);
        }

        let mut by_file = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        let mut embedded = BTreeMap::new();
        for (name, p) in &packages {
            for f in p.files.keys() {
                by_file.insert(f.clone(), name.clone());
            }
            dirs.insert(p.dir.clone(), name.clone());
            for f in p
                .embedcfg
                .as_deref()
                .map(embedded_files)
                .unwrap_or_default()
            {
                if let Ok(rel) = lexical(&f).strip_prefix(cx.root) {
                    embedded.insert(rel.to_string_lossy().into_owned(), name.clone());
                }
            }
        }
        let link_env = cx.env.rebuild(&link, "the link");
        Ok(Recorded {
            graph,
            packages,
            by_file,
            dirs,
            embedded,
            link,
            link_env,
            link_importcfg,
            unusable: None,
        })
    }

    /// A quick rebuild that compiled `packages` was installed: the archives it wrote go into
    /// `history` with their compiles, so that a later full build taking one of them from the
    /// go cache (where the shadow build, or any go build of the same tree, put it) finds its
    /// record. The compile is deterministic: the same run over the same files writes the same
    /// bytes, whoever runs it.
    pub(super) fn remember_quick(&self, packages: &[String], history: &mut History) {
        for name in packages {
            let Some(p) = self.packages.get(name) else {
                continue;
            };
            let key = if *name == self.graph.main {
                MAIN
            } else {
                name.as_str()
            };
            if let Ok(h) = hash(&p.archive) {
                history.add(key, h, p.run.clone());
            }
        }
    }

    /// Packages of the graph without a usable record that a quick rebuild may need: those
    /// that import a recorded package, the main package, and those of the main module
    /// (`module_path`). Their cache entries are what [`super::graph::evict`] removes.
    pub(super) fn unrecorded(&self, module_path: Option<&str>) -> BTreeSet<String> {
        let recorded: BTreeSet<String> = self.packages.keys().cloned().collect();
        let in_module = |p: &str| {
            module_path
                .is_some_and(|m| p == m || p.strip_prefix(m).is_some_and(|r| r.starts_with('/')))
        };
        let mut wanted = self.graph.importers(&recorded);
        wanted.insert(self.graph.main.clone());
        wanted.extend(self.graph.packages.keys().filter(|p| in_module(p)).cloned());
        wanted.retain(|p| !recorded.contains(p));
        wanted
    }

    /// The recorded Go files, at most `max` of them named.
    pub(super) fn describe_files(&self, max: usize) -> String {
        let mut named: Vec<&str> = self.by_file.keys().take(max).map(String::as_str).collect();
        let more = format!("{} more files", self.by_file.len().saturating_sub(max));
        if self.by_file.len() > max {
            named.push(&more);
        }
        if named.is_empty() {
            return "no file yet".into();
        }
        named.join(", ")
    }
}

impl Package {
    /// `linked_from`: where the new link reads this package's archive; `link_paths`: the link's
    /// archives by import path, which this package's imports are pointed at (the archives its
    /// recorded build named may be gone).
    fn load(
        cx: &LoadCtx<'_>,
        name: &str,
        run: ToolRun,
        linked_from: String,
        link_paths: &BTreeMap<String, String>,
    ) -> Result<Package, String> {
        let mut argv = run.argv.clone();
        let (i, _) = flag_value(&argv, "o")
            .ok_or_else(|| format!("the recorded compile of {name} has no -o"))?;
        let archive = Record::Compile(name.to_string()).saved_file(cx.quick_dir, "a");
        set_flag_value(&mut argv, i, "o", &archive.to_string_lossy());
        let recorded_cfg = run
            .files
            .get("importcfg")
            .ok_or_else(|| format!("the recorded compile of {name} has no import configuration"))?;
        let mut unusable = recorded_cfg
            .lines()
            .filter_map(packagefile)
            .find(|(p, _)| !link_paths.contains_key(*p))
            .map(|(p, _)| format!("{name} imports {p}, which the link does not"));
        let importcfg = repoint(recorded_cfg, |p| link_paths.get(p).cloned());
        let embedcfg = run.files.get("embedcfg").cloned();

        // The go command leaves out `-complete` when a package has files other than Go source
        // (assembly, .syso objects it packs into the archive itself, cgo): only it can build
        // those.
        if !argv.iter().any(|a| a == "-complete") {
            unusable = Some(format!(
                "{name} has files that are not Go source (assembly, .syso, cgo)"
            ));
        }
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        for arg in argv.iter().rev().take_while(|a| a.ends_with(".go")) {
            // The go command names files `./pkg/x.go`.
            let path = lexical(&run.cwd.join(arg));
            match path.strip_prefix(cx.root).ok().and_then(Path::to_str) {
                Some(rel) => {
                    files.insert(rel.to_string(), read_header(cx.root, rel)?);
                }
                None => unusable = Some(format!("{name} has files outside the tree")),
            }
            dirs.extend(path.parent().map(Path::to_path_buf));
        }
        let dir = match (dirs.len(), dirs.into_iter().next()) {
            (1, Some(dir)) => dir,
            _ => {
                unusable = Some(format!(
                    "the recorded compile of {name} names no Go file or several directories"
                ));
                cx.root.to_path_buf()
            }
        };
        let listing = listing(&dir)?;
        let roles_agree = cx
            .tags
            .is_some_and(|t| roles_agree(t, &dir, &listing, &files, cx.root));
        let env = cx.env.rebuild(&run, &format!("the compile of {name}"));
        Ok(Package {
            argv,
            cwd: run.cwd.clone(),
            run,
            env,
            linked_from,
            archive,
            importcfg,
            embedcfg,
            files,
            dir,
            listing,
            unusable,
            roles_agree,
        })
    }
}

/// Whether `tags` say of every file in `dir` what the recorded compile did: exactly its Go
/// files compiled, every other file never read.
fn roles_agree(
    tags: &Tags,
    dir: &Path,
    listing: &BTreeMap<OsString, Kind>,
    compiled: &BTreeMap<String, GoHeader>,
    root: &Path,
) -> bool {
    let mut found = BTreeSet::new();
    for (name, kind) in listing {
        let Some(name) = name.to_str() else {
            return false;
        };
        if *kind != Kind::File {
            continue;
        }
        let path = dir.join(name);
        let Ok(content) = std::fs::read(&path) else {
            return false;
        };
        match tags.file_role(name, &content) {
            FileRole::Compiled => {
                let rel = path.strip_prefix(root).ok().and_then(Path::to_str);
                found.insert(rel.unwrap_or_default().to_string());
            }
            FileRole::Ignored => {}
            FileRole::Unsure(_) => return false,
        }
    }
    found.len() == compiled.len() && found.iter().all(|f| compiled.contains_key(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: usize) -> ToolRun {
        ToolRun {
            argv: vec!["compile".into(), n.to_string()],
            cwd: PathBuf::from("/"),
            env: Default::default(),
            files: BTreeMap::new(),
            output: None,
        }
    }

    #[test]
    fn history_keeps_the_newest_records_per_package_and_in_all() {
        let mut h = History::default();
        for n in 0..HISTORY_PER_PACKAGE + 10 {
            h.add("p", format!("out{n}"), run(n));
        }
        // The same archive again moves to the front, and is not counted twice.
        h.add("p", "out20".into(), run(20));
        assert_eq!(h.runs["p"].len(), HISTORY_PER_PACKAGE);
        assert_eq!(h.total, HISTORY_PER_PACKAGE);
        assert!(h.find("p", "out20").is_some());
        assert!(h.find("p", "out73").is_some());
        assert!(h.find("p", "out9").is_none(), "the oldest go first");

        // Many packages: the total stays bounded, and every package keeps its newest record.
        let packages = HISTORY_TOTAL / HISTORY_PER_PACKAGE * 3;
        for p in 0..packages {
            for n in 0..HISTORY_PER_PACKAGE {
                h.add(&format!("q{p}"), format!("out{n}"), run(n));
            }
        }
        let counted: usize = h.runs.values().map(Vec::len).sum();
        assert_eq!(counted, h.total);
        assert!(h.total <= HISTORY_TOTAL, "{} records kept", h.total);
        for p in 0..packages {
            let q = format!("q{p}");
            assert!(
                h.find(&q, &format!("out{}", HISTORY_PER_PACKAGE - 1))
                    .is_some(),
                "{q}"
            );
        }
    }

    #[test]
    fn archives_differing_only_in_their_build_id_hash_alike() {
        let archive = |id: &str, code: &str| {
            format!(
                "!<arch>\n__.PKGDEF 0 0 0 644 421 `\ngo object linux amd64\nbuild id \"{id}\"\n\
                 {code}\n_go_.o\nbuild id \"{id}\"\nend"
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            hash(&p).unwrap()
        };
        let quick = write("quick.a", archive("AAAAAAAA/AAAAAAAA", "code"));
        let go = write("go.a", archive("BBBBBBBB/CCCCCCCC", "code"));
        let other = write("other.a", archive("BBBBBBBB/CCCCCCCC", "edoc"));
        assert_eq!(quick, go);
        assert_ne!(go, other);
    }
}

//! What the last successful full build recorded ([`crate::quick_build::record`]), read back:
//! the packages of the tree it compiled (their Go files and headers, their directories' names,
//! what they import) and the link; and the steps of a quick rebuild of the tree as it is now.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kdev_protocol::hash_file;

use super::super::command::BuildSpec;
use crate::quick_build::go_header::{self, GoHeader};
use crate::quick_build::record::write_record;
use crate::quick_build::{
    MAIN_ARCHIVE, Record, ToolRun, flag_value, packagefile, repoint, set_flag_value,
};
use crate::serve::root::lexical;

/// The `-p` of the main package's compile.
const MAIN: &str = "main";

pub(super) struct Recorded {
    dir: PathBuf,
    /// By the `-p` of their compile: `main`, or the import path.
    packages: BTreeMap<String, Package>,
    /// Go files (sync-root relative) → the package that compiles them.
    by_file: BTreeMap<String, String>,
    link: ToolRun,
    link_importcfg: String,
}

/// One compiled package of the tree.
struct Package {
    run: ToolRun,
    /// Where the new link reads its archive (the quick link names the main package's own).
    linked_from: String,
    /// Where a quick rebuild writes it.
    archive: PathBuf,
    importcfg: String,
    embedcfg: Option<String>,
    /// The import paths its import configuration names.
    imports: BTreeSet<String>,
    files: BTreeMap<String, GoHeader>,
    dir: PathBuf,
    listing: Vec<OsString>,
    /// Why it cannot be compiled without the go command.
    unusable: Option<String>,
}

fn read_run(file: &Path) -> Result<ToolRun, String> {
    let data = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", file.display()))
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

impl Package {
    /// `linked_from`: where the new link reads this package's archive; `link_paths`: the link's
    /// archives by import path, which this package's imports are pointed at (the archives its
    /// recorded build named may be gone).
    fn load(
        dir: &Path,
        root: &Path,
        name: &str,
        mut run: ToolRun,
        linked_from: String,
        link_paths: &BTreeMap<String, String>,
    ) -> Result<Package, String> {
        let (i, _) = flag_value(&run.argv, "o")
            .ok_or_else(|| format!("the recorded compile of {name} has no -o"))?;
        let archive = Record::Compile(name.to_string()).saved_file(dir, "a");
        set_flag_value(&mut run.argv, i, "o", &archive.to_string_lossy());
        let recorded_cfg = run
            .files
            .get("importcfg")
            .ok_or_else(|| format!("the recorded compile of {name} has no import configuration"))?;
        let imports: BTreeSet<String> = recorded_cfg
            .lines()
            .filter_map(packagefile)
            .map(|(p, _)| p.to_string())
            .collect();
        if let Some(p) = imports.iter().find(|p| !link_paths.contains_key(*p)) {
            return Err(format!("{name} imports {p}, which the link does not"));
        }
        let importcfg = repoint(recorded_cfg, |p| link_paths.get(p).cloned());
        let embedcfg = run.files.get("embedcfg").cloned();

        // The go command leaves out `-complete` when a package has files other than Go source
        // (assembly, .syso objects it packs into the archive itself, cgo): only it can build
        // those.
        let mut unusable = (!run.argv.iter().any(|a| a == "-complete"))
            .then(|| format!("{name} has files that are not Go source (assembly, .syso, cgo)"));
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        for arg in run.argv.iter().rev().take_while(|a| a.ends_with(".go")) {
            // The go command names files `./pkg/x.go`.
            let path = lexical(&run.cwd.join(arg));
            match path.strip_prefix(root).ok().and_then(Path::to_str) {
                Some(rel) => {
                    files.insert(rel.to_string(), header(root, rel)?);
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
                root.to_path_buf()
            }
        };
        Ok(Package {
            listing: listing(&dir)?,
            dir,
            run,
            linked_from,
            archive,
            importcfg,
            embedcfg,
            imports,
            files,
            unusable,
        })
    }
}

/// The BLAKE3 of a file, as a record keeps it.
fn hash(path: &Path) -> Result<String, String> {
    hash_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Recorded {
    /// The records after a successful full build: its link, the compiles it ran, and the compiles
    /// of earlier builds whose archives it linked unchanged (taken from its cache); other compile
    /// records are removed.
    pub(super) fn load(dir: &Path, root: &Path) -> Result<Recorded, String> {
        let link = read_run(&Record::Link.file(dir))?;
        let link_importcfg = link
            .files
            .get("importcfg")
            .cloned()
            .ok_or("the link has no import configuration")?;
        let (_, out) = flag_value(&link.argv, "o").ok_or("the recorded link has no -o")?;
        // `$WORK/b001/exe/a.out`: this build's temporary directory.
        let work = Path::new(out).ancestors().nth(3).map(Path::to_path_buf);
        let main_linked = link.argv.last().cloned().unwrap_or_default();
        if !link_importcfg.contains(&main_linked) {
            return Err("the link's import configuration does not name the main package".into());
        }
        let link_paths: BTreeMap<String, String> = link_importcfg
            .lines()
            .filter_map(packagefile)
            .map(|(p, f)| (p.to_string(), f.to_string()))
            .collect();

        let compiles =
            Record::compiles_in(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let mut packages = BTreeMap::new();
        let mut main_error = None;
        for file in compiles {
            match Self::load_compile(dir, root, &file, &work, &main_linked, &link_paths) {
                Ok((name, package)) => {
                    packages.insert(name, package);
                }
                // A record that does not describe this build (or cannot be read) is removed:
                // its package's next edit runs go build, which records it again.
                Err((name, why)) => {
                    let _ = std::fs::remove_file(&file);
                    if name.as_deref() == Some(MAIN) {
                        main_error = Some(why);
                    }
                }
            }
        }
        if !packages.contains_key(MAIN) {
            return Err(format!(
                "the main package {}",
                main_error.unwrap_or_else(|| "came from the build cache".into())
            ));
        }
        let by_file = packages
            .iter()
            .flat_map(|(name, p)| p.files.keys().map(move |f| (f.clone(), name.clone())))
            .collect();
        Ok(Recorded {
            dir: dir.to_path_buf(),
            packages,
            by_file,
            link,
            link_importcfg,
        })
    }

    /// One compile record, if it describes the package the new link reads: `(package, why
    /// not)` otherwise.
    fn load_compile(
        dir: &Path,
        root: &Path,
        file: &Path,
        work: &Option<PathBuf>,
        main_linked: &str,
        link_paths: &BTreeMap<String, String>,
    ) -> Result<(String, Package), (Option<String>, String)> {
        let mut run = read_run(file).map_err(|e| (None, e))?;
        let name = flag_value(&run.argv, "p")
            .map(|(_, p)| p.to_string())
            .ok_or_else(|| (None, format!("{}: no -p", file.display())))?;
        let fail = |why: String| (Some(name.clone()), why);
        let linked_from = match name.as_str() {
            MAIN => Some(main_linked.to_string()),
            _ => link_paths.get(&name).cloned(),
        }
        .ok_or_else(|| fail("is not in the new link".into()))?;
        let compiled_here = flag_value(&run.argv, "o")
            .is_some_and(|(_, o)| Path::new(o).ancestors().nth(2) == work.as_deref());
        if compiled_here {
            // What this build wrote is what its link reads.
            let built = match name.as_str() {
                MAIN => Record::Link.saved_file(dir, MAIN_ARCHIVE),
                _ => PathBuf::from(&linked_from),
            };
            run.output = Some(hash(&built).map_err(fail)?);
            write_record(file, &run).map_err(|e| fail(format!("{}: {e}", file.display())))?;
        } else if run.output.is_none() || hash(Path::new(&linked_from)).ok() != run.output {
            // Taken from the cache, but not the bytes this record's compile wrote.
            return Err(fail(
                "came from the build cache, built by no recorded compile".into(),
            ));
        }
        let package =
            Package::load(dir, root, &name, run, linked_from, link_paths).map_err(fail)?;
        Ok((name, package))
    }

    /// The recorded Go files, at most `max` of them named.
    pub(super) fn describe_files(&self, max: usize) -> String {
        let mut named: Vec<&str> = self.by_file.keys().take(max).map(String::as_str).collect();
        let more = self.by_file.len().saturating_sub(max);
        let more = format!("{more} more files");
        if self.by_file.len() > max {
            named.push(&more);
        }
        named.join(", ")
    }

    /// The steps of a quick rebuild after `changed` (build inputs changed since the recorded
    /// build), linking to `output`; `Err(why not)` when only `go build` will do.
    pub(super) fn plan(
        &self,
        changed: &BTreeSet<String>,
        root: &Path,
        output: &Path,
    ) -> Result<Vec<BuildSpec>, String> {
        let order = self.rebuild_order(changed, root)?;
        self.steps(&order, output)
    }

    /// The packages to compile again, each after those it imports: the edited ones, every
    /// recorded package that imports one of them, and the main package.
    fn rebuild_order(&self, changed: &BTreeSet<String>, root: &Path) -> Result<Vec<&str>, String> {
        let mut rebuild: BTreeSet<&str> = BTreeSet::from([MAIN]);
        for path in changed {
            // `go build` never reads tests.
            if path.ends_with("_test.go") {
                continue;
            }
            let name = self.by_file.get(path).ok_or_else(|| {
                format!("{path} is not a Go file of a package the last build compiled")
            })?;
            if header(root, path)? != self.packages[name].files[path] {
                return Err(format!("{path}'s imports or build directives changed"));
            }
            rebuild.insert(name);
        }
        for name in &rebuild {
            let p = &self.packages[*name];
            if listing(&p.dir)? != p.listing {
                return Err(format!(
                    "files were added to or removed from {}",
                    if *name == MAIN {
                        "the main package"
                    } else {
                        name
                    }
                ));
            }
        }
        // Their importers' compiles read their export data: those are compiled again too.
        loop {
            let more: Vec<&str> = self
                .packages
                .iter()
                .filter(|(n, p)| {
                    !rebuild.contains(n.as_str())
                        && p.imports.iter().any(|i| rebuild.contains(i.as_str()))
                })
                .map(|(n, _)| n.as_str())
                .collect();
            if more.is_empty() {
                break;
            }
            rebuild.extend(more);
        }
        if let Some(why) = rebuild
            .iter()
            .find_map(|n| self.packages[*n].unusable.clone())
        {
            return Err(why);
        }
        let mut order = Vec::with_capacity(rebuild.len());
        while !rebuild.is_empty() {
            let ready: Vec<&str> = rebuild
                .iter()
                .copied()
                .filter(|n| {
                    self.packages[*n]
                        .imports
                        .iter()
                        .all(|i| i == n || !rebuild.contains(i.as_str()))
                })
                .collect();
            if ready.is_empty() {
                return Err("the recorded packages import each other in a cycle".into());
            }
            for n in ready {
                rebuild.remove(n);
                order.push(n);
            }
        }
        Ok(order)
    }

    fn steps(&self, order: &[&str], output: &Path) -> Result<Vec<BuildSpec>, String> {
        let rebuilt: BTreeMap<&str, String> = order
            .iter()
            .filter(|n| **n != MAIN)
            .map(|n| (*n, self.packages[*n].archive.to_string_lossy().into_owned()))
            .collect();
        let write = |file: PathBuf, text: String| {
            std::fs::write(&file, text)
                .map(|()| file.to_string_lossy().into_owned())
                .map_err(|e| format!("{}: {e}", file.display()))
        };
        let mut steps = Vec::with_capacity(order.len() + 1);
        for name in order {
            let p = &self.packages[*name];
            let record = Record::Compile(name.to_string());
            let cfg = write(
                record.saved_file(&self.dir, "quick-importcfg"),
                repoint(&p.importcfg, |n| rebuilt.get(n).cloned()),
            )?;
            let mut argv = p.run.argv.clone();
            if let Some((i, _)) = flag_value(&argv, "importcfg") {
                set_flag_value(&mut argv, i, "importcfg", &cfg);
            }
            if let (Some(text), Some((i, _))) = (&p.embedcfg, flag_value(&argv, "embedcfg")) {
                let file = write(record.saved_file(&self.dir, "quick-embedcfg"), text.clone())?;
                set_flag_value(&mut argv, i, "embedcfg", &file);
            }
            steps.push(BuildSpec {
                argv,
                cwd: p.run.cwd.clone(),
                env: p.run.env.clone(),
                output: p.archive.clone(),
                group_file: None,
            });
        }
        // The link reads the main package's archive from where the quick compile wrote it.
        let main = &self.packages[MAIN];
        let main_archive = main.archive.to_string_lossy().into_owned();
        let cfg = write(
            Record::Link.saved_file(&self.dir, "quick-importcfg"),
            repoint(&self.link_importcfg, |n| rebuilt.get(n).cloned())
                .replace(&main.linked_from, &main_archive),
        )?;
        let mut argv = self.link.argv.clone();
        for a in argv.iter_mut() {
            if *a == main.linked_from {
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
            env: self.link.env.clone(),
            output: output.to_path_buf(),
            group_file: None,
        });
        Ok(steps)
    }
}

//! `kdev-controller record-tool DIR ROOT TOOL ARGS…`: the `-toolexec` wrapper of full builds.
//! Saves in DIR every `compile` of a package whose directory is in the sync root ROOT (the main
//! package's always) and the `link` (see [`super`]), then replaces itself with TOOL ARGS, so
//! the go command sees the tool's own exit code and output.
//!
//! Recording never fails the build: a record that cannot be written is simply missing, and the
//! next edit takes the go command again.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{MAIN_ARCHIVE, Record, ToolRun, flag_value, packagefile};

/// Flags whose files live in the go command's temporary directory, deleted when it exits.
const SAVED_FLAGS: [&str; 2] = ["importcfg", "embedcfg"];

/// Run as the wrapper with the arguments after `record-tool`. Returns only if TOOL cannot be
/// run; the caller reports that.
pub fn run(args: Vec<OsString>) -> io::Error {
    let mut args = args.into_iter();
    let (Some(dir), Some(root), Some(tool)) = (args.next(), args.next(), args.next()) else {
        return io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: kdev-controller record-tool DIR ROOT TOOL [ARGS...]",
        );
    };
    let rest: Vec<OsString> = args.collect();
    if let (Some(argv), Ok(cwd)) = (utf8_argv(&tool, &rest), std::env::current_dir())
        && let Some(record) = recorded(&argv, &cwd, Path::new(&root))
    {
        let _ = save(Path::new(&dir), &record, argv, cwd);
    }
    Command::new(&tool).args(&rest).exec()
}

fn utf8_argv(tool: &OsString, rest: &[OsString]) -> Option<Vec<String>> {
    std::iter::once(tool)
        .chain(rest)
        .map(|a| a.to_str().map(str::to_string))
        .collect()
}

/// The runs worth saving: compiles of the main package and of packages with files in `root`
/// (the go command runs every compile in the module's root, so the files say where a package
/// is), and the link (not `-V=full` queries).
fn recorded(argv: &[String], cwd: &Path, root: &Path) -> Option<Record> {
    if argv.iter().any(|a| a.starts_with("-V")) {
        return None;
    }
    let name = Path::new(&argv[0]).file_name()?.to_str()?;
    match name {
        "compile" => {
            let (_, package) = flag_value(argv, "p")?;
            let in_root = argv
                .iter()
                .filter(|a| a.ends_with(".go"))
                .any(|f| cwd.join(f).starts_with(root));
            (package == "main" || in_root).then(|| Record::Compile(package.to_string()))
        }
        "link" => Some(Record::Link),
        _ => None,
    }
}

/// Write `<dir>/<record>.json` (atomically: the record holds its configuration files).
fn save(dir: &Path, record: &Record, argv: Vec<String>, cwd: PathBuf) -> io::Result<()> {
    let mut files = BTreeMap::new();
    for flag in SAVED_FLAGS {
        if let Some((_, v)) = flag_value(&argv, flag) {
            files.insert(flag.to_string(), std::fs::read_to_string(v)?);
        }
    }
    if *record == Record::Link {
        // The link's last argument is the main package's archive, which a quick rebuild
        // compiles; the others made in this run are deleted with `$WORK` (`$WORK/b001/
        // importcfg.link` names it): keep copies. The serve side hashes the main one.
        let main = argv.last().map(String::as_str);
        if let Some(text) = files.get_mut("importcfg")
            && let Some((_, v)) = flag_value(&argv, "importcfg")
        {
            let work = Path::new(v).parent().and_then(Path::parent);
            *text = keep_archives(text, work, dir, main)?;
        }
        if let Some(main) = main {
            std::fs::copy(main, record.saved_file(dir, MAIN_ARCHIVE))?;
        }
    }
    let run = ToolRun {
        output: None,
        files,
        argv,
        cwd,
        env: std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect::<BTreeMap<_, _>>(),
    };
    write_record(&record.file(dir), &run)
}

/// Replace `file` with `run`, atomically.
pub fn write_record(file: &Path, run: &ToolRun) -> io::Result<()> {
    crate::util::write_atomic(file, &serde_json::to_vec(run)?)
}

/// `importcfg` with every archive the go command built in this run (below `work`, deleted when
/// it exits) copied to `<dir>/archives/` and named there; `except` stays as it is.
fn keep_archives(
    importcfg: &str,
    work: Option<&Path>,
    dir: &Path,
    except: Option<&str>,
) -> io::Result<String> {
    let Some(work) = work.filter(|w| w.parent().is_some()) else {
        return Ok(importcfg.to_string());
    };
    let archives = super::archives_dir(dir);
    let mut out = String::with_capacity(importcfg.len());
    for line in importcfg.split_inclusive('\n') {
        let built_here = packagefile(line)
            .filter(|(_, path)| Some(*path) != except)
            .and_then(|(pkg, path)| Some((pkg, path, Path::new(path).strip_prefix(work).ok()?)));
        let Some((pkg, path, below)) = built_here else {
            out.push_str(line);
            continue;
        };
        std::fs::create_dir_all(&archives)?;
        let kept = archives.join(below.to_string_lossy().replace('/', "-"));
        // Kept already by another record of this build (the directory is emptied before each).
        if !kept.exists() {
            std::fs::copy(path, &kept)?;
        }
        out.push_str(&format!("packagefile {pkg}={}\n", kept.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn compiles_in_the_tree_the_main_one_and_the_link_are_recorded() {
        let tool = "/usr/local/go/pkg/tool/linux_amd64/";
        let compile = format!("{tool}compile");
        let link = format!("{tool}link");
        let root = Path::new("/kdev/src");
        let rec = |a: &[&str]| recorded(&argv(a), root, root);
        assert_eq!(
            rec(&[&compile, "-o", "x", "-p", "main", "/elsewhere/a.go"]),
            Some(Record::Compile("main".into()))
        );
        assert_eq!(
            rec(&[
                &compile,
                "-p",
                "example.com/x/pkg",
                "./pkg/a.go",
                "./pkg/b.go"
            ]),
            Some(Record::Compile("example.com/x/pkg".into()))
        );
        // The go command compiles the standard library and the module cache from the same
        // directory, naming their files by absolute path.
        assert_eq!(
            rec(&[&compile, "-p", "fmt", "/usr/local/go/src/fmt/print.go"]),
            None
        );
        assert_eq!(rec(&[&compile, "-V=full"]), None);
        assert_eq!(rec(&[&link, "-o", "a.out", "x.a"]), Some(Record::Link));
        assert_eq!(rec(&[&link, "-V=full"]), None);
        assert_eq!(rec(&[&format!("{tool}asm"), "-p", "main"]), None);
    }

    #[test]
    fn a_record_holds_its_configuration_files() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::write(work.join("importcfg"), "packagefile fmt=/c/fmt-d\n").unwrap();
        std::fs::write(work.join("embedcfg"), "{}").unwrap();
        let cfg = work.join("importcfg").display().to_string();
        let emb = format!("-embedcfg={}", work.join("embedcfg").display());
        let main = Record::Compile("main".into());
        let cwd = std::env::current_dir().unwrap();
        save(
            tmp.path(),
            &main,
            argv(&["compile", "-importcfg", &cfg, &emb, "-p", "main", "a.go"]),
            cwd.clone(),
        )
        .unwrap();
        // The go command deletes its temporary directory when it exits.
        std::fs::remove_dir_all(&work).unwrap();
        let run: ToolRun =
            serde_json::from_slice(&std::fs::read(main.file(tmp.path())).unwrap()).unwrap();
        assert_eq!(run.files["importcfg"], "packagefile fmt=/c/fmt-d\n");
        assert_eq!(run.files["embedcfg"], "{}");
        assert_eq!(run.argv[2], cfg);
        assert_eq!(run.cwd, cwd);
        assert!(run.env.contains_key("PATH"));
    }

    #[test]
    fn archives_built_in_the_same_run_are_kept_and_the_main_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, work) = (tmp.path().join("rec"), tmp.path().join("go-build1"));
        for b in ["b001", "b002"] {
            std::fs::create_dir_all(work.join(b)).unwrap();
            std::fs::write(work.join(b).join("_pkg_.a"), b).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let main = work.join("b001/_pkg_.a").display().to_string();
        let dep = work.join("b002/_pkg_.a").display().to_string();
        let cfg = format!(
            "# import config\npackagefile fmt=/cache/ab/cd-d\npackagefile m/pkg={dep}\n\
             packagefile m={main}\nmodinfo \"x\"\n"
        );
        std::fs::write(work.join("b001/importcfg.link"), cfg).unwrap();
        let link_cfg = work.join("b001/importcfg.link").display().to_string();
        save(
            &dir,
            &Record::Link,
            argv(&["link", "-o", "a.out", "-importcfg", &link_cfg, &main]),
            PathBuf::from("/"),
        )
        .unwrap();
        std::fs::remove_dir_all(&work).unwrap();
        let run: ToolRun =
            serde_json::from_slice(&std::fs::read(Record::Link.file(&dir)).unwrap()).unwrap();
        let saved = &run.files["importcfg"];
        let kept = super::super::archives_dir(&dir).join("b002-_pkg_.a");
        assert_eq!(
            *saved,
            format!(
                "# import config\npackagefile fmt=/cache/ab/cd-d\npackagefile m/pkg={}\n\
                 packagefile m={main}\nmodinfo \"x\"\n",
                kept.display()
            )
        );
        assert_eq!(std::fs::read_to_string(kept).unwrap(), "b002");
    }
}

//! `kdev-controller record-tool DIR ROOT TOOL ARGS…`: the `-toolexec` wrapper of full builds.
//! Saves in DIR (one directory per build) every `compile` of a package whose files are in the
//! sync root ROOT (the main package's always) and the `link`, then replaces itself with TOOL
//! ARGS, so the go command sees the tool's own exit code and output.
//!
//! A record ([`ToolRun`]) holds the argument vector, the working directory, the environment
//! without its values ([`super::env`]) and the contents of the configuration files the run
//! was given; for the link, copies of the archives the build made in its temporary directory
//! (the go command deletes them when it exits). Files are written mode 0600 in a directory of
//! mode 0700 that only the sidecar has ([`super`]).
//!
//! Recording never fails the build: a record that cannot be written is simply missing, and the
//! package's next edit takes the go command again.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::env::{self, RecordedEnv};
use super::go_command::{flag_value, packagefile, work_of_link_output};

/// The argument to `kdev-controller` that makes it the `-toolexec` wrapper.
pub const RECORD_TOOL: &str = "record-tool";

/// Flags whose files live in the go command's temporary directory, deleted when it exits.
const SAVED_FLAGS: [&str; 2] = ["importcfg", "embedcfg"];

/// One run of a Go tool, as the go command started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRun {
    /// The tool's path first.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: RecordedEnv,
    /// The contents of the configuration files it was given (`importcfg`, `embedcfg`, by flag).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// A compile's: the [`archive_digest`] of the archive it wrote.
    #[serde(default)]
    pub output: Option<String>,
}

/// Which run a record is of: the compile of a package (named by its `-p`: `main`, or an import
/// path), or the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Compile(String),
    Link,
}

/// What the link record keeps of the main package's archive: `<dir>/link.main-archive`.
pub const MAIN_ARCHIVE: &str = "main-archive";

/// The file name prefix of compile records.
const COMPILE: &str = "compile@";

impl Record {
    /// `link`, or `compile@<package>` with `%` and `/` escaped.
    fn stem(&self) -> String {
        match self {
            Record::Link => "link".to_string(),
            Record::Compile(p) => format!("{COMPILE}{}", p.replace('%', "%25").replace('/', "%2F")),
        }
    }

    /// `<dir>/<stem>.json`: the record.
    pub fn file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.json", self.stem()))
    }

    /// `<dir>/<stem>.<what>`: a file that belongs to this record.
    pub fn saved_file(&self, dir: &Path, what: &str) -> PathBuf {
        dir.join(format!("{}.{what}", self.stem()))
    }

    /// The compile records in `dir`.
    pub fn compiles_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(COMPILE) && name.ends_with(".json") {
                found.push(dir.join(&*name));
            }
        }
        found.sort();
        Ok(found)
    }
}

/// `<dir>/archives/`: copies of the package archives a recorded build made in its temporary
/// directory.
fn archives_dir(dir: &Path) -> PathBuf {
    dir.join("archives")
}

/// Run as the wrapper with the arguments after `record-tool`. Returns only if TOOL cannot be
/// run; the caller reports that.
///
/// The link is recorded before it runs, then replaced by it. A compile runs as a child and is
/// recorded after it succeeded, with the digest of what it wrote: its record then tells any
/// later build that takes that archive from the go cache how it was made, even when this
/// build failed later on.
pub fn run(args: Vec<OsString>) -> io::Error {
    let mut args = args.into_iter();
    let (Some(dir), Some(root), Some(tool)) = (args.next(), args.next(), args.next()) else {
        return io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: kdev-controller record-tool DIR ROOT TOOL [ARGS...]",
        );
    };
    let rest: Vec<OsString> = args.collect();
    let dir = Path::new(&dir);
    let found = match (utf8_argv(&tool, &rest), std::env::current_dir()) {
        (Some(argv), Ok(cwd)) => {
            recorded(&argv, &cwd, Path::new(&root)).map(|record| (record, argv, cwd))
        }
        _ => None,
    };
    match found {
        Some((Record::Link, argv, cwd)) => {
            let _ = save(dir, &Record::Link, argv, cwd, None);
        }
        Some((record, argv, cwd)) => {
            let status = match Command::new(&tool).args(&rest).status() {
                Ok(s) => s,
                Err(e) => return e,
            };
            if status.success() {
                let output =
                    flag_value(&argv, "o").and_then(|(_, o)| archive_digest(Path::new(o)).ok());
                if output.is_some() {
                    let _ = save(dir, &record, argv, cwd, output);
                }
            }
            std::process::exit(exit_code(status));
        }
        None => {}
    }
    Command::new(&tool).args(&rest).exec()
}

/// The exit code a shell would give for `status` (128 + the signal that ended it).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The BLAKE3 (hex) of a package archive with its build ID blanked.
///
/// The build ID (`build id "ACTION/CONTENT"`, in the archive's two headers) is the only part
/// of an archive that names the compile rather than its inputs: a quick compile reruns a
/// recorded compile with that compile's `-buildid`, and the go command rewrites the ID of
/// the archives it caches, so the same package compiled from the same files differs there
/// alone.
pub(crate) fn archive_digest(path: &Path) -> io::Result<String> {
    let mut bytes = std::fs::read(path)?;
    blank_archive_build_id(&mut bytes);
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// Zero every occurrence of the build ID the archive's first header names.
fn blank_archive_build_id(bytes: &mut [u8]) {
    const MARK: &[u8] = b"build id \"";
    let Some(start) = find(bytes, MARK).map(|i| i + MARK.len()) else {
        return;
    };
    let Some(len) = bytes[start..].iter().position(|&b| b == b'"' || b == b'\n') else {
        return;
    };
    if len == 0 {
        return;
    }
    let id = bytes[start..start + len].to_vec();
    let mut at = 0;
    while let Some(i) = find(&bytes[at..], &id) {
        bytes[at + i..at + i + len].fill(0);
        at += i + len;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
fn save(
    dir: &Path,
    record: &Record,
    argv: Vec<String>,
    cwd: PathBuf,
    output: Option<String>,
) -> io::Result<()> {
    let mut files = BTreeMap::new();
    for flag in SAVED_FLAGS {
        if let Some((_, v)) = flag_value(&argv, flag) {
            files.insert(flag.to_string(), std::fs::read_to_string(v)?);
        }
    }
    if *record == Record::Link {
        // The link's last argument is the main package's archive, which a quick rebuild
        // compiles; the others made in this run are deleted with `$WORK`: keep copies.
        let main = argv.last().map(String::as_str);
        let work = flag_value(&argv, "o").and_then(|(_, o)| work_of_link_output(o));
        if let Some(text) = files.get_mut("importcfg") {
            *text = keep_archives(text, work, dir, main)?;
        }
        if let Some(main) = main {
            copy_private(Path::new(main), &record.saved_file(dir, MAIN_ARCHIVE))?;
        }
    }
    let run = ToolRun {
        files,
        argv,
        cwd,
        output,
        env: env::record(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        ),
    };
    write_private(&record.file(dir), &serde_json::to_vec(&run)?)
}

/// Replace `file` with `data`, atomically, readable by its owner only.
pub(crate) fn write_private(file: &Path, data: &[u8]) -> io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    for attempt in 0..16u32 {
        let tmp = dir.join(format!(
            ".{}.{}-{attempt}-{:x}.tmp",
            file.file_name()
                .map_or("record".into(), |n| n.to_string_lossy()),
            std::process::id(),
            nonce(),
        ));
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = f.write_all(data).and_then(|()| std::fs::rename(&tmp, file));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        return written;
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free temporary name in {}", dir.display()),
    ))
}

/// Some bits that differ from call to call (names of temporary files).
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Copy `from` to `to`, mode 0600.
fn copy_private(from: &Path, to: &Path) -> io::Result<()> {
    write_private(to, &std::fs::read(from)?)
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
    let archives = archives_dir(dir);
    let mut out = String::with_capacity(importcfg.len());
    for line in importcfg.split_inclusive('\n') {
        let built_here = packagefile(line)
            .filter(|(_, path)| Some(*path) != except)
            .and_then(|(pkg, path)| Some((pkg, path, Path::new(path).strip_prefix(work).ok()?)));
        let Some((pkg, path, below)) = built_here else {
            out.push_str(line);
            continue;
        };
        create_private_dir(&archives)?;
        let kept = archives.join(below.to_string_lossy().replace('/', "-"));
        if !kept.exists() {
            copy_private(Path::new(path), &kept)?;
        }
        out.push_str(&format!("packagefile {pkg}={}\n", kept.display()));
    }
    Ok(out)
}

/// Create `dir` (and its parents) with mode 0700; an existing one is left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn records_are_named_by_package() {
        let dir = Path::new("/r");
        assert_eq!(Record::Link.file(dir), Path::new("/r/link.json"));
        assert_eq!(
            Record::Compile("main".into()).file(dir),
            Path::new("/r/compile@main.json")
        );
        assert_eq!(
            Record::Compile("example.com/a%b/c".into()).saved_file(dir, "importcfg"),
            Path::new("/r/compile@example.com%2Fa%25b%2Fc.importcfg")
        );
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
    fn a_record_holds_its_configuration_files_and_no_environment_value() {
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
            Some("digest".into()),
        )
        .unwrap();
        // The go command deletes its temporary directory when it exits.
        std::fs::remove_dir_all(&work).unwrap();
        let file = main.file(tmp.path());
        let text = std::fs::read_to_string(&file).unwrap();
        let run: ToolRun = serde_json::from_str(&text).unwrap();
        assert_eq!(run.files["importcfg"], "packagefile fmt=/c/fmt-d\n");
        assert_eq!(run.files["embedcfg"], "{}");
        assert_eq!(run.argv[2], cfg);
        assert_eq!(run.cwd, cwd);
        let path = std::env::var("PATH").unwrap();
        assert!(run.env.contains_key("PATH"));
        assert!(!text.contains(&path), "{text}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn archives_built_in_the_same_run_are_kept_and_the_main_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, work) = (tmp.path().join("rec"), tmp.path().join("go-build1"));
        for b in ["b001", "b002"] {
            std::fs::create_dir_all(work.join(b)).unwrap();
            std::fs::write(work.join(b).join("_pkg_.a"), b).unwrap();
        }
        std::fs::create_dir_all(work.join("b001/exe")).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let main = work.join("b001/_pkg_.a").display().to_string();
        let dep = work.join("b002/_pkg_.a").display().to_string();
        let cfg = format!(
            "# import config\npackagefile fmt=/cache/ab/cd-d\npackagefile m/pkg={dep}\n\
             packagefile m={main}\nmodinfo \"x\"\n"
        );
        std::fs::write(work.join("b001/importcfg.link"), cfg).unwrap();
        let link_cfg = work.join("b001/importcfg.link").display().to_string();
        let out = work.join("b001/exe/a.out").display().to_string();
        save(
            &dir,
            &Record::Link,
            argv(&["link", "-o", &out, "-importcfg", &link_cfg, &main]),
            PathBuf::from("/"),
            None,
        )
        .unwrap();
        std::fs::remove_dir_all(&work).unwrap();
        let run: ToolRun =
            serde_json::from_slice(&std::fs::read(Record::Link.file(&dir)).unwrap()).unwrap();
        let kept = archives_dir(&dir).join("b002-_pkg_.a");
        assert_eq!(
            run.files["importcfg"],
            format!(
                "# import config\npackagefile fmt=/cache/ab/cd-d\npackagefile m/pkg={}\n\
                 packagefile m={main}\nmodinfo \"x\"\n",
                kept.display()
            )
        );
        assert_eq!(std::fs::read_to_string(kept).unwrap(), "b002");
        assert_eq!(
            std::fs::read_to_string(Record::Link.saved_file(&dir, MAIN_ARCHIVE)).unwrap(),
            "b001"
        );
    }
}

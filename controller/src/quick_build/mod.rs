//! Quick rebuilds: an edit confined to Go files of packages the last `go build` compiled is
//! built by running the compiler on those packages (and on the packages of the tree that import
//! them) and the linker, exactly as that build ran them, without the go command. On a Gin
//! service the go command's own work (loading ~100 packages, hashing their sources to find them
//! in its cache) is about 120 of a rebuild's 500 ms.
//!
//! * [`record`]: a full build runs `go build -toolexec '<controller> record-tool <dir> <root>'`;
//!   the wrapper saves how each `compile` of a package in the sync root and the `link` were run
//!   (argument vector, working directory, environment, the import and embed configuration files
//!   they name, and for the link copies of the archives the build made in its temporary
//!   directory) and then runs the tool itself. With the tool's own `-V=full` answer passed
//!   through, the go command's cache keys do not change, so a warm cache stays warm.
//! * [`go_header`]: what in a Go file can change how `go build` treats it (build and debug
//!   directives, package name, imports). The serve side (`serve::build::quick`) uses it to
//!   decide whether an edit may take the quick path; anything else takes `go build`.

pub mod go_header;
pub mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The argument to `kdev-controller` that makes it the `-toolexec` wrapper.
pub const RECORD_TOOL: &str = "record-tool";

/// One run of a Go tool, as the go command started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRun {
    /// The tool's path first.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// The contents of the configuration files it was given (`importcfg`, `embedcfg`, by flag):
    /// the go command deletes them, and kept in the record they cannot be paired with another.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// A compile's: the BLAKE3 of the archive it wrote, once known (the serve side adds it after
    /// the build; a later build that takes the package from its cache must link these bytes for
    /// the record to still describe it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

    /// `<dir>/<stem>.<what>`: a file that belongs to this record (what a quick rebuild writes and
    /// reads).
    pub fn saved_file(&self, dir: &Path, what: &str) -> PathBuf {
        dir.join(format!("{}.{what}", self.stem()))
    }

    /// The compile records in `dir`.
    pub fn compiles_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
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
/// directory (the go command names them there, and deletes them when it exits).
pub fn archives_dir(dir: &Path) -> PathBuf {
    dir.join("archives")
}

/// `(import path, archive)` of an import configuration's `packagefile` line.
pub fn packagefile(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix("packagefile ")?
        .trim_end()
        .split_once('=')
}

/// `importcfg` with the `packagefile` line of every package `archive_of` names an archive for
/// naming that archive instead; other lines as they are.
pub fn repoint(importcfg: &str, archive_of: impl Fn(&str) -> Option<String>) -> String {
    importcfg
        .lines()
        .map(
            |line| match packagefile(line).and_then(|(p, _)| Some((p, archive_of(p)?))) {
                Some((p, archive)) => format!("packagefile {p}={archive}\n"),
                None => format!("{line}\n"),
            },
        )
        .collect()
}

/// The value of `-name V` or `-name=V` in `argv`, and the index holding it.
pub fn flag_value<'a>(argv: &'a [String], name: &str) -> Option<(usize, &'a str)> {
    let dash = format!("-{name}");
    let eq = format!("-{name}=");
    argv.iter().enumerate().find_map(|(i, a)| {
        if *a == dash {
            argv.get(i + 1).map(|v| (i + 1, v.as_str()))
        } else {
            a.strip_prefix(&eq).map(|v| (i, v))
        }
    })
}

/// Set the value of a flag found by [`flag_value`] at `index`.
pub fn set_flag_value(argv: &mut [String], index: usize, name: &str, value: &str) {
    let eq = format!("-{name}=");
    if argv[index].starts_with(&eq) {
        argv[index] = format!("{eq}{value}");
    } else {
        argv[index] = value.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_configurations_name_the_rebuilt_archives() {
        let cfg = "# import config\npackagefile fmt=/c/fmt-d\npackagefile m/pkg=/r/archives/b002\n\
                   importmap x=vendor/x\nmodinfo \"z\"\n";
        let rebuilt = BTreeMap::from([("m/pkg", "/r/compile@m%2Fpkg.a".to_string())]);
        assert_eq!(
            repoint(cfg, |p| rebuilt.get(p).cloned()),
            "# import config\npackagefile fmt=/c/fmt-d\npackagefile m/pkg=/r/compile@m%2Fpkg.a\n\
             importmap x=vendor/x\nmodinfo \"z\"\n"
        );
        assert_eq!(
            cfg.lines().filter_map(packagefile).collect::<Vec<_>>(),
            [("fmt", "/c/fmt-d"), ("m/pkg", "/r/archives/b002")]
        );
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
    fn flags_are_found_and_set_in_both_spellings() {
        let mut argv: Vec<String> = ["compile", "-o", "a.o", "-importcfg=cfg", "x.go"]
            .map(String::from)
            .into();
        assert_eq!(flag_value(&argv, "o"), Some((2, "a.o")));
        assert_eq!(flag_value(&argv, "importcfg"), Some((3, "cfg")));
        assert_eq!(flag_value(&argv, "embedcfg"), None);
        set_flag_value(&mut argv, 2, "o", "b.o");
        set_flag_value(&mut argv, 3, "importcfg", "other");
        assert_eq!(argv, ["compile", "-o", "b.o", "-importcfg=other", "x.go"]);
        // A flag at the end with no value is not found.
        assert_eq!(flag_value(&["link".into(), "-o".into()], "o"), None);
    }
}

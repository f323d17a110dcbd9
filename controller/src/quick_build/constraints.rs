//! Which Go files `go build` compiles, by go's own rules (`go/build`'s `matchFile`,
//! `shouldBuild` and `goodOSArchFile`), ported line for line: names starting with `_` or `.`
//! and `_test.go` files are never compiled; a `_GOOS`, `_GOARCH` or `_GOOS_GOARCH` suffix must
//! match; the file's build constraint ([`super::build_constraint`]) must hold.
//!
//! The quick path uses [`Tags::file_role`], which tells whether a file is compiled at all; it
//! is checked against what the recorded build compiled before it is trusted
//! ([`super::recorded`]).

use std::collections::BTreeSet;

use super::build_constraint::{Constraint, contains, trim_space};

/// `internal/syslist.KnownOS`.
const KNOWN_OS: [&str; 18] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];
/// `internal/syslist.UnixOS`.
const UNIX_OS: [&str; 12] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "linux",
    "netbsd",
    "openbsd",
    "solaris",
];
/// `internal/syslist.KnownArch`.
const KNOWN_ARCH: [&str; 24] = [
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// The build context's tags, as the go command of the build reports them (`go list`'s
/// `context`): `GOOS`, `GOARCH`, cgo, the compiler, `-tags`, the tool and release tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    pub goos: String,
    pub goarch: String,
    pub cgo: bool,
    pub compiler: String,
    /// Build, tool and release tags.
    pub tags: BTreeSet<String>,
}

/// What go does with a file of a package's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRole {
    /// Compiled into the package.
    Compiled,
    /// Never read by `go build` (name, suffix or constraint).
    Ignored,
    /// Go reads it but kdev does not decide what for (other source kinds, or an error).
    Unsure(String),
}

impl Tags {
    /// `go/build.Context.matchTag`.
    fn matches(&self, name: &str) -> bool {
        if self.cgo && name == "cgo" {
            return true;
        }
        if name == self.goos || name == self.goarch || name == self.compiler {
            return true;
        }
        let alias = |os: &str, of: &str| self.goos == os && name == of;
        if alias("android", "linux") || alias("illumos", "solaris") || alias("ios", "darwin") {
            return true;
        }
        if name == "unix" && UNIX_OS.contains(&self.goos.as_str()) {
            return true;
        }
        let name = if name == "boringcrypto" {
            "goexperiment.boringcrypto"
        } else {
            name
        };
        self.tags.contains(name)
    }

    /// `go/build.Context.goodOSArchFile`.
    pub fn good_os_arch_file(&self, name: &str) -> bool {
        let name = name.split('.').next().unwrap_or(name);
        let Some(i) = name.find('_') else {
            return true;
        };
        let mut l: Vec<&str> = name[i..].split('_').collect();
        if l.last() == Some(&"test") {
            l.pop();
        }
        let n = l.len();
        if n >= 2 && KNOWN_OS.contains(&l[n - 2]) && KNOWN_ARCH.contains(&l[n - 1]) {
            return self.matches(l[n - 1]) && self.matches(l[n - 2]);
        }
        if n >= 1 && (KNOWN_OS.contains(&l[n - 1]) || KNOWN_ARCH.contains(&l[n - 1])) {
            return self.matches(l[n - 1]);
        }
        true
    }

    /// What `go build` does with the file `name` (of a package's directory) holding `content`.
    pub fn file_role(&self, name: &str, content: &[u8]) -> FileRole {
        if name.starts_with('_') || name.starts_with('.') {
            return FileRole::Ignored;
        }
        let ext = name.rfind('.').map_or("", |i| &name[i..]);
        if ext != ".go" {
            return if SOURCE_EXTENSIONS.contains(&ext) {
                FileRole::Unsure(format!("{name} is a {ext} source file"))
            } else {
                FileRole::Ignored
            };
        }
        if !self.good_os_arch_file(name) {
            return FileRole::Ignored;
        }
        // Where go's reading needs Unicode tables kdev does not port (spaces and letters
        // beyond ASCII in constraint lines), kdev does not decide.
        let exotic = content.split(|&b| b == b'\n').any(|l| {
            let l = trim_space(l);
            (l.starts_with(b"//go:build") || contains(l, b"+build")) && !l.is_ascii()
        });
        if exotic {
            return FileRole::Unsure(format!("{name} has a build constraint beyond ASCII"));
        }
        // go reads every test file's header too: one go refuses fails the build.
        let Some(header) = std::str::from_utf8(content)
            .ok()
            .and_then(super::header::parse)
        else {
            return FileRole::Unsure(format!("{name} does not start like a Go file"));
        };
        if name.ends_with("_test.go") {
            return match Constraint::of(content) {
                Ok(_) => FileRole::Ignored,
                Err(e) => FileRole::Unsure(format!("{name}: {e}")),
            };
        }
        if header.package == "documentation" {
            return FileRole::Unsure(format!("{name} is of package documentation"));
        }
        match Constraint::of(content) {
            Ok(c) if c.holds(&|t| self.matches(t)) => FileRole::Compiled,
            Ok(_) => FileRole::Ignored,
            Err(e) => FileRole::Unsure(format!("{name}: {e}")),
        }
    }
}

/// Extensions `go/build` files as sources of a package (`fileListForExt`), `.go` aside: files
/// with these are read by the go command, anything else in a package's directory is not.
pub(crate) const SOURCE_EXTENSIONS: [&str; 19] = [
    ".c", ".cc", ".cpp", ".cxx", ".m", ".h", ".hh", ".hpp", ".hxx", ".f", ".F", ".for", ".f90",
    ".s", ".S", ".sx", ".swig", ".swigcxx", ".syso",
];
#[cfg(test)]
mod tests {
    use super::*;

    fn linux() -> Tags {
        Tags {
            goos: "linux".into(),
            goarch: "amd64".into(),
            cgo: false,
            compiler: "gc".into(),
            tags: ["go1.1", "go1.21", "amd64.v1", "dev"]
                .map(String::from)
                .into(),
        }
    }

    #[test]
    fn files_are_in_or_out_as_go_decides() {
        let t = linux();
        let role = |name: &str, src: &str| t.file_role(name, src.as_bytes());
        let plain = "package p\n";
        assert_eq!(role("a.go", plain), FileRole::Compiled);
        assert_eq!(role("a_linux.go", plain), FileRole::Compiled);
        assert_eq!(role("a_windows.go", plain), FileRole::Ignored);
        assert_eq!(role("a_linux_arm64.go", plain), FileRole::Ignored);
        assert_eq!(role("a_linux_amd64.go", plain), FileRole::Compiled);
        // Before Go 1.4's rule: a name that is only a GOOS is not a suffix.
        assert_eq!(role("windows.go", plain), FileRole::Compiled);
        assert_eq!(role("a_test.go", plain), FileRole::Ignored);
        assert_eq!(role("_a.go", plain), FileRole::Ignored);
        assert_eq!(role(".a.go", plain), FileRole::Ignored);
        assert_eq!(role("README.md", plain), FileRole::Ignored);
        assert!(matches!(role("a.s", plain), FileRole::Unsure(_)));
        assert_eq!(
            role("a.go", "//go:build unix && !cgo\n\npackage p\n"),
            FileRole::Compiled
        );
        assert_eq!(
            role("a.go", "//go:build go1.22\n\npackage p\n"),
            FileRole::Ignored
        );
        assert_eq!(
            role("a.go", "// +build dev\n// +build !gc\n\npackage p\n"),
            FileRole::Ignored
        );
        assert!(matches!(
            role("a.go", "//go:build (\n\npackage p\n"),
            FileRole::Unsure(_)
        ));
    }
}

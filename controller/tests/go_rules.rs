//! What quick rebuilds take from the go command, checked against the machine's go.
//!
//! * `build_constraints_are_decided_as_go_list_decides`: kdev's port of go/build's file
//!   rules (`quick_build::constraints`: names, `_GOOS_GOARCH` suffixes, `//go:build` and
//!   `// +build` headers) gives every file of random package directories the role
//!   `go list -e -json` gives it, under random `GOOS`/`GOARCH`, `CGO_ENABLED` and `-tags`.
//!   It is seeded: a failure prints its seed, and `KDEV_GO_RULES_SEED=<seed>` replays it;
//!   `KDEV_GO_RULES_ROUNDS=<n>` runs more package directories than the default.
//! * `the_go_command_works_as_quick_rebuilds_assume`: each numbered assumption of
//!   `quick_build::go_command`'s documentation, one by one, on a small module built with a
//!   cache of its own: plain and recorded builds share cache entries, the recorded compiles and
//!   link have the shapes the records are read with, the action graph says what it is read to
//!   say, evicting an action's entry makes go compile the package again to the same bytes, the
//!   tools' environment is the go command's plus `go env`'s, and a rerun compile and link make
//!   the bytes go build makes, build IDs aside.

mod common;

use common::rng::Rng;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kdev_controller::quick_build::constraints::{FileRole, Tags};
use kdev_controller::quick_build::env::{self as recorded_env, EnvValue};
use kdev_controller::quick_build::go_command::{
    base64url_to_hex, evict_action, flag_value, packagefile, repoint, set_flag_value,
    work_of_compile_output, work_of_link_output,
};
use kdev_controller::quick_build::graph::Graph;
use kdev_controller::quick_build::record::{MAIN_ARCHIVE, RECORD_TOOL, Record, ToolRun};

const BIN: &str = env!("CARGO_BIN_EXE_kdev-controller");
const GO: &str = "go";

// ---------------------------------------------------------------------------------------------
// Build constraints: a differential test against `go list`.

/// Package directories per run unless `KDEV_GO_RULES_ROUNDS` says otherwise.
const DEFAULT_ROUNDS: usize = 80;

fn seed() -> u64 {
    match std::env::var("KDEV_GO_RULES_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("KDEV_GO_RULES_SEED={s:?}: {e}"))
        }
        Err(_) => common::rand_u64(),
    }
}

fn rounds() -> usize {
    std::env::var("KDEV_GO_RULES_ROUNDS")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("KDEV_GO_RULES_ROUNDS={s:?}: {e}"))
        })
        .unwrap_or(DEFAULT_ROUNDS)
}

/// Tags the headers are made of: targets, their aliases, the special ones go knows (`unix`,
/// `cgo`, the compilers, release, tool and experiment tags), the `-tags` of the rounds, and
/// some nobody sets.
const TAGS: &[&str] = &[
    "linux",
    "windows",
    "darwin",
    "android",
    "illumos",
    "solaris",
    "ios",
    "freebsd",
    "js",
    "amd64",
    "arm64",
    "386",
    "wasm",
    "unix",
    "cgo",
    "gc",
    "gccgo",
    "go1.1",
    "go1.21",
    "go1.99",
    "dev",
    "prod",
    "ignore",
    "amd64.v1",
    "amd64.v3",
    "arm64.v8.0",
    "goexperiment.greenteagc",
    "boringcrypto",
    "foo.bar",
    "_x",
    "x1",
];

/// Tags of characters outside ASCII: a letter go takes; and characters Rust's
/// `char::is_numeric`/`is_alphabetic` accept but go's `unicode.IsLetter`/`IsDigit` do not.
const EXOTIC_TAGS: &[&str] = &["é", "x²", "Ⅳ"];

/// Targets of the rounds not built for the machine's own (all valid `go tool dist list` pairs).
const TARGETS: &[(&str, &str)] = &[
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("linux", "386"),
    ("windows", "amd64"),
    ("windows", "arm64"),
    ("darwin", "arm64"),
    ("android", "arm64"),
    ("illumos", "amd64"),
    ("ios", "arm64"),
    ("freebsd", "amd64"),
    ("js", "wasm"),
];

const OS_SUFFIXES: &[&str] = &[
    "_linux",
    "_windows",
    "_darwin",
    "_android",
    "_illumos",
    "_solaris",
    "_ios",
    "_amd64",
    "_arm64",
    "_386",
    "_wasm",
    "_linux_amd64",
    "_linux_arm64",
    "_windows_amd64",
    "_android_arm64",
    "_amd64_linux",
    "_linux_foo",
    "_unix",
    "_x_windows",
];

const OTHER_EXTENSIONS: &[&str] = &[
    ".s", ".S", ".c", ".h", ".syso", ".txt", ".md", ".json", ".GO", ".go.txt", "",
];

/// One generated file.
struct GenFile {
    name: String,
    content: Vec<u8>,
    /// An error was put in its header (a second `//go:build`, an expression go rejects).
    faulty: bool,
}

struct Gen<'a> {
    rng: &'a mut Rng,
    faulty: bool,
}

impl Gen<'_> {
    fn tag(&mut self) -> String {
        if self.rng.percent(1) {
            self.rng.pick(EXOTIC_TAGS).to_string()
        } else {
            self.rng.pick(TAGS).to_string()
        }
    }

    fn space(&mut self) -> &'static str {
        self.rng.pick(&["", " ", " ", " ", "\t", "  "])
    }

    /// A `//go:build` expression go accepts.
    fn expr(&mut self, depth: usize) -> String {
        let kind = if depth == 0 { 0 } else { self.rng.below(7) };
        match kind {
            0 | 1 => self.tag(),
            2 => {
                let bang = self.rng.pick(&["!", "!", "! "]);
                if self.rng.percent(70) {
                    format!("{bang}{}", self.tag())
                } else {
                    format!("{bang}({})", self.expr(depth - 1))
                }
            }
            3 | 4 => {
                let op = self.rng.pick(&["&&", "||"]);
                let (a, b) = (self.expr(depth - 1), self.expr(depth - 1));
                format!("{a}{}{op}{}{b}", self.space(), self.space())
            }
            _ => {
                let x = self.expr(depth - 1);
                format!("({}{x}{})", self.space(), self.space())
            }
        }
    }

    /// A `//go:build` expression go rejects.
    fn bad_expr(&mut self) -> String {
        self.faulty = true;
        let x = self.expr(2);
        let t = self.tag();
        match self.rng.below(9) {
            0 => format!("{x} &&"),
            1 => format!("!!{t}"),
            2 => format!("({x}"),
            3 => format!("{x})"),
            4 => format!("{t} & {}", self.tag()),
            5 => format!("{t} {}", self.tag()),
            6 => format!("{t}-x"),
            7 => String::new(),
            _ => format!("{x} /* why */"),
        }
    }

    /// Text after a comment line: usually nothing.
    fn trail(&mut self) -> &'static str {
        if self.rng.percent(5) {
            self.rng.pick(&[" ", "\t", "\u{a0}"])
        } else {
            ""
        }
    }

    fn go_build_line(&mut self) -> String {
        let lead = self.rng.pick(&["", "", "", " ", "\t"]);
        let sep = if self.rng.percent(2) {
            self.rng.pick(&["\u{a0}", ""])
        } else {
            self.rng.pick(&[" ", " ", " ", "  ", "\t"])
        };
        let x = if self.rng.percent(8) {
            self.bad_expr()
        } else {
            let depth = self.rng.below(4);
            self.expr(depth)
        };
        format!("{lead}//go:build{sep}{x}{}", self.trail())
    }

    fn plus_build_line(&mut self) -> String {
        let slash = self.rng.pick(&["// ", "// ", "//", "//  "]);
        let sep = self.rng.pick(&[" ", " ", " ", "\t", "  ", ""]);
        let clauses: Vec<String> = (0..self.rng.below(4))
            .map(|_| {
                (0..1 + self.rng.below(3))
                    .map(|_| match self.rng.below(40) {
                        0 => format!("!!{}", self.tag()),
                        1 => "!".into(),
                        2 => String::new(),
                        3 => format!("{}-y", self.tag()),
                        4..=10 => format!("!{}", self.tag()),
                        _ => self.tag(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let between = self.rng.pick(&[" ", " ", "  ", "\t"]);
        format!(
            "{slash}+build{sep}{}{}",
            clauses.join(between),
            self.trail()
        )
    }

    fn slash_star(&mut self) -> String {
        self.rng
            .pick(&[
                "/* A note. */",
                "/*\n * A longer note,\n * on lines of its own.\n */",
                "/*\n//go:build ignore\n// +build ignore\n*/",
                "/* a */ // b",
                "/* a\n//go:build ignore */",
                "/* a */ /* b */",
                "  /* indented */",
            ])
            .to_string()
    }

    fn plain_comment(&mut self) -> String {
        self.rng
            .pick(&[
                "// Package p does things.",
                "// go:build ignore",
                "//go:buildignore",
                "//go:generate echo hi",
                "// +buildignore",
                "// NOTE: +build ignore",
                "//",
                "// Code generated by hand. DO NOT EDIT.",
            ])
            .to_string()
    }

    /// A Go file's text: a random header, the package clause, a body.
    fn go_source(&mut self, index: usize, package: &str) -> String {
        let mut lines: Vec<String> = Vec::new();
        if self.rng.percent(20) {
            lines.push(format!(
                "// Copyright 20{:02} The Authors.",
                self.rng.below(30)
            ));
            if self.rng.percent(50) {
                lines.push("// Use of this source code is governed by a license.".into());
            }
        }
        let mut go_builds = 0;
        for _ in 0..self.rng.below(7) {
            match self.rng.below(12) {
                0..=2 => lines.push(String::new()),
                3 => lines.push(self.slash_star()),
                4..=6 => {
                    if go_builds == 0 || self.rng.percent(6) {
                        go_builds += 1;
                        if go_builds > 1 {
                            self.faulty = true;
                        }
                        lines.push(self.go_build_line());
                    } else {
                        lines.push(self.plus_build_line());
                    }
                }
                7..=9 => lines.push(self.plus_build_line()),
                10 => lines.push(self.plain_comment()),
                _ => {
                    lines.push(format!("// Copyright 20{:02} Someone.", self.rng.below(30)));
                }
            }
        }
        if self.rng.percent(60) {
            lines.push(String::new());
        }
        if self.rng.percent(25) {
            lines.push(format!("// Package {package} is file {index}'s."));
        }
        let clause = match self.rng.below(10) {
            0 => format!("/* x */ package {package}"),
            1 => format!("package {package} // trailing"),
            2 => format!("package  {package}"),
            _ => format!("package {package}"),
        };
        lines.push(clause);
        lines.push(String::new());
        for _ in 0..self.rng.below(3) {
            lines.push(
                self.rng
                    .pick(&[
                        "//go:build ignore",
                        "// +build ignore",
                        "/* trailing\n*/",
                        "// More.",
                    ])
                    .into(),
            );
        }
        lines.push(format!("func f{index}() {{}}"));
        let mut text = lines.join("\n") + "\n";
        if self.rng.percent(5) {
            text = text.replace('\n', "\r\n");
        }
        if self.rng.percent(2) {
            text.insert(0, '\u{feff}');
        }
        text
    }
}

/// A random name, unique in `taken`: plain or with target suffixes, a test, hidden by `_` or
/// `.`, Go or another extension.
fn file_name(rng: &mut Rng, index: usize, taken: &mut BTreeSet<String>) -> String {
    loop {
        let prefix = match rng.below(100) {
            0..=3 => "_",
            4..=6 => ".",
            _ => "",
        };
        let stem = match rng.below(20) {
            // A name that is only a GOOS or GOARCH is no suffix.
            0 => rng
                .pick(&["linux", "windows", "amd64", "arm64", "test"])
                .to_string(),
            1 => format!("f{index}_test_x"),
            _ => format!("f{index}"),
        };
        let suffix = if rng.percent(45) {
            rng.pick(OS_SUFFIXES)
        } else {
            ""
        };
        let test = if rng.percent(15) { "_test" } else { "" };
        let ext = if rng.percent(82) {
            ".go"
        } else {
            rng.pick(OTHER_EXTENSIONS)
        };
        let name = format!("{prefix}{stem}{suffix}{test}{ext}");
        if taken.insert(name.clone()) {
            return name;
        }
    }
}

fn package_files(rng: &mut Rng) -> Vec<GenFile> {
    let mut taken = BTreeSet::new();
    let count = 30 + rng.below(31);
    (0..count)
        .map(|i| {
            let name = file_name(rng, i, &mut taken);
            let mut g = Gen {
                rng: &mut *rng,
                faulty: false,
            };
            let content = if name.ends_with(".go") {
                let package = if name.ends_with("_test.go") && g.rng.percent(50) {
                    "p_test"
                } else {
                    "p"
                };
                g.go_source(i, package).into_bytes()
            } else if name.ends_with(".syso") {
                (0..64).map(|_| g.rng.next() as u8).collect()
            } else {
                // Other sources are read for their constraints too.
                let mut text = g.go_source(i, "p");
                text.push_str("// not Go\n");
                text.into_bytes()
            };
            GenFile {
                name,
                content,
                faulty: g.faulty,
            }
        })
        .collect()
}

/// A go command with the module environment tests use, on top of this process's.
fn go_command(dir: &Path, vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(GO);
    c.current_dir(dir)
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .envs(vars.iter().copied())
        .stdin(Stdio::null());
    c
}

fn stdout_of(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: output is not UTF-8: {e}"))
}

/// The build's tags as the controller asks for them (`quick_build::build_tags`, which is
/// private: the same `go list` template on `runtime`, the same parse).
fn context_tags(module: &Path, vars: &[(&str, &str)], flags: &[String]) -> Tags {
    let format = "{{context.GOOS}}|{{context.GOARCH}}|{{context.CgoEnabled}}|{{context.Compiler}}|\
                  {{join context.BuildTags \",\"}}|{{join context.ToolTags \",\"}}|\
                  {{join context.ReleaseTags \",\"}}";
    let out = go_command(module, vars)
        .args(["list", "-e", "-f", format])
        .args(flags)
        .arg("runtime")
        .output()
        .expect("the go toolchain is needed for this test");
    let text = stdout_of("go list of the build context", out);
    let f: Vec<&str> = text.trim().split('|').collect();
    let [goos, goarch, cgo, compiler, build, tool, release] = f[..] else {
        panic!("unexpected build context from go list: {text:?}");
    };
    Tags {
        goos: goos.into(),
        goarch: goarch.into(),
        cgo: cgo == "true",
        compiler: compiler.into(),
        tags: [build, tool, release]
            .iter()
            .flat_map(|l| l.split(','))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

/// What `go list` did with each file of a package: the name of the list it is in.
fn go_lists(
    module: &Path,
    dir: &str,
    vars: &[(&str, &str)],
    flags: &[String],
) -> HashMap<String, String> {
    let out = go_command(module, vars)
        .args(["list", "-e", "-json"])
        .args(flags)
        .arg(format!("./{dir}"))
        .output()
        .expect("the go toolchain is needed for this test");
    let text = stdout_of("go list -e -json", out);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("go list's JSON: {e}\n{text}"));
    let mut lists = HashMap::new();
    // InvalidGoFiles first: a file there may be in another list too, and that one is not the
    // verdict.
    for list in [
        "InvalidGoFiles",
        "GoFiles",
        "CgoFiles",
        "IgnoredGoFiles",
        "TestGoFiles",
        "XTestGoFiles",
        "CFiles",
        "CXXFiles",
        "MFiles",
        "HFiles",
        "FFiles",
        "SFiles",
        "SwigFiles",
        "SwigCXXFiles",
        "SysoFiles",
        "IgnoredOtherFiles",
    ] {
        for name in v[list].as_array().into_iter().flatten() {
            let name = name.as_str().expect("file names are strings").to_string();
            lists.entry(name).or_insert_with(|| list.to_string());
        }
    }
    lists
}

/// Sources go reads for their constraints and then drops when cgo is off.
const CGO_ONLY_EXTENSIONS: &[&str] = &[".c", ".cc", ".cpp", ".cxx", ".m", ".swig", ".swigcxx"];

/// go's verdict on a file, in kdev's terms: `compiled`, `ignored`, or `unsure` (go reports it
/// as invalid, or it is a source of another kind go reads). A source only cgo uses, with cgo
/// off, is in no list although go read it: kdev, which does not decide such files, may be
/// unsure of it.
fn go_verdict(name: &str, list: Option<&str>, cgo: bool, kdev: &str) -> &'static str {
    let go_file = name.ends_with(".go");
    let ext = name.rfind('.').map_or("", |i| &name[i..]);
    match list {
        None if !cgo && CGO_ONLY_EXTENSIONS.contains(&ext) && kdev == "unsure" => "unsure",
        None => "ignored",
        Some("GoFiles") if go_file => "compiled",
        Some("IgnoredGoFiles" | "TestGoFiles" | "XTestGoFiles") if go_file => "ignored",
        Some("InvalidGoFiles") if go_file => "unsure",
        Some(_) if !go_file => "unsure",
        Some(_) => "something kdev has no word for",
    }
}

fn kdev_verdict(role: &FileRole) -> &'static str {
    match role {
        FileRole::Compiled => "compiled",
        FileRole::Ignored => "ignored",
        FileRole::Unsure(_) => "unsure",
    }
}

#[derive(Default, Debug)]
struct Tally {
    go_files: usize,
    compiled: usize,
    ignored: usize,
    /// Ignored for their constraint alone (name and suffix would have them compiled).
    ignored_by_constraint: usize,
    unsure_go: usize,
    faulty_go: usize,
    other_sources: usize,
}

#[test]
fn build_constraints_are_decided_as_go_list_decides() {
    let seed = seed();
    let rounds = rounds();
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let module = tmp.path();
    std::fs::write(
        module.join("go.mod"),
        "module example.com/rules\n\ngo 1.22\n",
    )
    .unwrap();
    let native = stdout_of(
        "go env GOOS GOARCH",
        go_command(module, &[])
            .args(["env", "GOOS", "GOARCH"])
            .output()
            .expect("the go toolchain is needed for this test"),
    );
    let native: Vec<String> = native.split_whitespace().map(str::to_string).collect();
    let native = (native[0].clone(), native[1].clone());
    let mut contexts: HashMap<(String, String, String, Vec<String>), Tags> = HashMap::new();
    let mut tally = Tally::default();
    // (content length, description): the shortest are the easiest to read.
    let mut mismatches: Vec<(usize, String)> = Vec::new();

    for round in 0..rounds {
        let (goos, goarch) = if rng.percent(50) {
            native.clone()
        } else {
            let (os, arch) = rng.pick(TARGETS);
            (os.to_string(), arch.to_string())
        };
        let cgo = rng.pick(&["0", "1"]).to_string();
        let tags: Vec<&str> = ["dev", "prod", "foo.bar"]
            .into_iter()
            .filter(|t| rng.percent(if *t == "foo.bar" { 10 } else { 50 }))
            .collect();
        let flags: Vec<String> = if tags.is_empty() {
            vec![]
        } else {
            vec![format!("-tags={}", tags.join(","))]
        };
        let vars = [
            ("GOOS", goos.as_str()),
            ("GOARCH", goarch.as_str()),
            ("CGO_ENABLED", cgo.as_str()),
        ];
        let context = contexts
            .entry((goos.clone(), goarch.clone(), cgo.clone(), flags.clone()))
            .or_insert_with(|| context_tags(module, &vars, &flags))
            .clone();

        let dir = format!("r{round}");
        std::fs::create_dir(module.join(&dir)).unwrap();
        let files = package_files(&mut rng);
        for f in &files {
            std::fs::write(module.join(&dir).join(&f.name), &f.content).unwrap();
        }
        let lists = go_lists(module, &dir, &vars, &flags);

        for f in &files {
            let list = lists.get(&f.name).map(String::as_str);
            let role = context.file_role(&f.name, &f.content);
            let kdev = kdev_verdict(&role);
            let go = go_verdict(&f.name, list, context.cgo, kdev);
            // Unsure is never wrong (kdev runs go build), only slow: it must stay rare.
            if go != kdev && kdev != "unsure" {
                mismatches.push((
                    f.content.len(),
                    format!(
                        "round {round} ({goos}/{goarch}, CGO_ENABLED={cgo}, {flags:?}): {name}: go \
                     lists it in {list} ({go}), kdev says {role:?}\ncontent: {content:?}",
                        name = f.name,
                        list = list.unwrap_or("no list"),
                        content = String::from_utf8_lossy(&f.content),
                    ),
                ));
                continue;
            }
            if !f.name.ends_with(".go") {
                tally.other_sources += usize::from(kdev == "unsure");
                continue;
            }
            tally.go_files += 1;
            tally.faulty_go += usize::from(f.faulty);
            match &role {
                FileRole::Compiled => tally.compiled += 1,
                FileRole::Ignored => {
                    tally.ignored += 1;
                    let by_name = f.name.starts_with(['_', '.'])
                        || f.name.ends_with("_test.go")
                        || !context.good_os_arch_file(&f.name);
                    tally.ignored_by_constraint += usize::from(!by_name);
                }
                FileRole::Unsure(_) => {
                    tally.unsure_go += 1;
                }
            }
        }
    }

    mismatches.sort();
    assert!(
        mismatches.is_empty(),
        "seed {seed} (KDEV_GO_RULES_SEED={seed} replays it): {} files where kdev and go list \
         disagree; the shortest ones:\n\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(12)
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    // Not a vacuous agreement: every verdict was met, and the constraints themselves decided a
    // good share of them.
    let min = rounds;
    assert!(
        tally.compiled >= min && tally.ignored_by_constraint >= min && tally.other_sources > 0,
        "seed {seed}: too few files of some kind to prove anything: {tally:?}"
    );
    // Unsure is rare: only for files whose header go rejects (checked file by file above).
    assert!(
        tally.unsure_go * 100 <= tally.go_files * 15,
        "seed {seed}: kdev is unsure of too many Go files: {tally:?}"
    );
    eprintln!("seed {seed}: {rounds} package directories, {tally:?}");
}

// ---------------------------------------------------------------------------------------------
// The go command's behaviour.

const MODULE: &str = "example.com/rules";
const PKG: &str = "example.com/rules/pkg";
const ASM: &str = "example.com/rules/asm";
/// Marks the go command's own environment, to be found in its tools'.
const MARK: &str = "KDEV_GO_RULES_MARK";

/// A small module: a main package importing `pkg` (Go only) and `asm` (Go, an assembly file
/// and an embedded file). `version` goes into each package's code.
fn write_module(root: &Path, version: &str) {
    let files = [
        ("go.mod", format!("module {MODULE}\n\ngo 1.22\n")),
        (
            "main.go",
            format!(
                "package main\n\nimport (\n\t\"{ASM}\"\n\t\"{PKG}\"\n)\n\nconst version = \"{version}\"\n\n\
                 func main() {{ println(pkg.Name(), asm.Banner(), version) }}\n"
            ),
        ),
        (
            "pkg/pkg.go",
            format!("package pkg\n\nfunc Name() string {{ return \"pkg-{version}\" }}\n"),
        ),
        (
            "asm/asm.go",
            "package asm\n\nimport _ \"embed\"\n\n//go:embed banner.txt\nvar banner string\n\n\
             func Banner() string { return banner }\n"
                .to_string(),
        ),
        (
            "asm/asm.s",
            "// No code: the package has a file that is not Go, which is what counts.\n".into(),
        ),
        ("asm/banner.txt", format!("banner-{version}")),
    ];
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// The module, its own cache, and the exact environment its go commands run with.
struct Module {
    root: PathBuf,
    gocache: PathBuf,
    env: BTreeMap<String, String>,
    out: PathBuf,
}

/// One `go build` and its action graph.
struct Built {
    graph: Graph,
    json: Vec<serde_json::Value>,
    binary: PathBuf,
}

impl Built {
    /// The packages this build compiled (the others came from the cache).
    fn compiled(&self) -> BTreeSet<String> {
        self.graph
            .packages
            .iter()
            .filter(|(_, p)| p.compiled)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Module {
    fn go(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(GO)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .output()
            .expect("the go toolchain is needed for this test")
    }

    /// `go build` of the module into `name`, through the record-tool wrapper recording into
    /// `record` if given.
    fn build(&self, name: &str, record: Option<&Path>) -> Built {
        let binary = self.out.join(name);
        let graph_file = self.out.join(format!("{name}.actiongraph.json"));
        let mut args = vec!["build".to_string()];
        if let Some(dir) = record {
            std::fs::create_dir_all(dir).unwrap();
            args.push(format!(
                "-toolexec={BIN} {RECORD_TOOL} {} {}",
                dir.display(),
                self.root.display()
            ));
        }
        args.push(format!("-debug-actiongraph={}", graph_file.display()));
        args.extend(["-o".into(), binary.display().to_string(), ".".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stdout_of(
            &format!("go {}", args.join(" ")),
            self.go(&self.root, &args),
        );
        let raw = std::fs::read(&graph_file).unwrap();
        let graph = Graph::parse(&raw).unwrap_or_else(|e| {
            panic!("(4) go's action graph does not read as kdev reads it: {e}")
        });
        let json = serde_json::from_slice(&raw).unwrap();
        Built {
            graph,
            json,
            binary,
        }
    }
}

fn read_run(file: &Path) -> ToolRun {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The `packagefile` lines of an import configuration, by import path.
fn packagefiles(importcfg: &str) -> BTreeMap<String, String> {
    importcfg
        .lines()
        .filter_map(packagefile)
        .map(|(p, f)| (p.to_string(), f.to_string()))
        .collect()
}

/// The Go files at the end of a compile's arguments, resolved against its directory.
fn trailing_go_files(run: &ToolRun) -> BTreeSet<PathBuf> {
    run.argv
        .iter()
        .rev()
        .take_while(|a| a.ends_with(".go"))
        .map(|a| run.cwd.join(a))
        .collect()
}

/// The cache's action entries (`XX/<64 hex>-a`) whose name starts with `hex`.
fn action_entries(gocache: &Path, hex: &str) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(gocache.join(&hex[..2])) else {
        return vec![];
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 66 && n.starts_with(hex) && n.ends_with("-a"))
        .map(|n| gocache.join(&hex[..2]).join(n))
        .collect()
}

/// Where the description of the first ELF note named `name` of type `kind` is.
fn note_desc(binary: &[u8], name: &[u8; 4], kind: u32) -> Option<std::ops::Range<usize>> {
    let mut head = kind.to_le_bytes().to_vec();
    head.extend_from_slice(name);
    let word = |at: usize| u32::from_le_bytes(binary[at..at + 4].try_into().unwrap());
    binary
        .windows(head.len())
        .enumerate()
        .filter(|(_, w)| *w == head.as_slice())
        .find_map(|(at, _)| {
            let (namesz, descsz) = (word(at.checked_sub(8)?), word(at.checked_sub(4)?) as usize);
            let start = at + 8;
            (namesz <= 4 && (1..=256).contains(&descsz) && start + descsz <= binary.len())
                .then_some(start..start + descsz)
        })
}

/// Zero every copy of `needle` in `bytes`; how many there were.
fn zero_all(bytes: &mut [u8], needle: &[u8]) -> usize {
    let (mut at, mut copies) = (0, 0);
    while let Some(i) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        bytes[at + i..at + i + needle.len()].fill(0);
        at += i + needle.len();
        copies += 1;
    }
    copies
}

/// Zero an archive's build ID (the one its first `build id "…"` header names, wherever it
/// is); its length.
fn blank_archive_build_id(bytes: &mut [u8]) -> usize {
    const MARK: &[u8] = b"build id \"";
    let start = bytes
        .windows(MARK.len())
        .position(|w| w == MARK)
        .expect("an archive names its build ID")
        + MARK.len();
    let len = bytes[start..].iter().position(|&b| b == b'"').unwrap();
    let id = bytes[start..start + len].to_vec();
    zero_all(bytes, &id);
    len
}

/// A binary's bytes with its Go build ID (every copy of the text `go tool buildid` prints)
/// and the GNU build ID note zeroed, and that Go build ID.
fn without_build_ids(m: &Module, binary: &Path) -> (Vec<u8>, String) {
    let id = stdout_of(
        "go tool buildid",
        m.go(&m.root, &["tool", "buildid", &binary.display().to_string()]),
    );
    let id = id.trim().to_string();
    assert!(!id.is_empty(), "{} has no build ID", binary.display());
    let mut bytes = std::fs::read(binary).unwrap();
    let copies = zero_all(&mut bytes, id.as_bytes());
    assert!(
        copies > 0,
        "{}: its build ID is not in its bytes",
        binary.display()
    );
    if let Some(gnu) = note_desc(&bytes, b"GNU\0", 3) {
        bytes[gnu].fill(0);
    }
    (bytes, id)
}

/// Run a recorded tool again as a quick rebuild does: its arguments with `changes` applied,
/// in its directory, with the environment rebuilt from the go command's and `go env`'s.
fn rerun(run: &ToolRun, argv: Vec<String>, sources: &[&BTreeMap<String, String>], what: &str) {
    let env = recorded_env::rebuild(&run.env, sources).unwrap_or_else(|missing| {
        panic!("(6) {what}: variables neither the go command's nor go env's: {missing:?}")
    });
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&run.cwd)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what} rerun failed: {argv:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `argv` with flag `name` set to `value` (which it must have).
fn with_flag(mut argv: Vec<String>, name: &str, value: &str) -> Vec<String> {
    let (i, _) = flag_value(&argv, name).unwrap_or_else(|| panic!("no -{name} in {argv:?}"));
    set_flag_value(&mut argv, i, name, value);
    argv
}

#[test]
fn the_go_command_works_as_quick_rebuilds_assume() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let root = base.join("m");
    let out = base.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mark = format!("mark-{:x}", common::rand_u64());
    let mut env: BTreeMap<String, String> = [
        ("GOCACHE", base.join("gocache").display().to_string()),
        ("GOPROXY", "off".into()),
        ("GOTOOLCHAIN", "local".into()),
        ("GOFLAGS", "-mod=mod".into()),
        (MARK, mark.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for k in ["PATH", "HOME", "TMPDIR"] {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.into(), v);
        }
    }
    env.entry("HOME".into())
        .or_insert_with(|| base.join("home").display().to_string());
    let m = Module {
        gocache: base.join("gocache"),
        root: root.clone(),
        env,
        out,
    };
    let go_env: BTreeMap<String, String> = serde_json::from_str(&stdout_of(
        "go env -json",
        m.go(Path::new("/"), &["env", "-json"]),
    ))
    .unwrap();
    let sources = [&m.env, &go_env];
    write_module(&root, "v1");

    // (1) A plain build with an empty cache compiles everything; the same build through the
    // wrapper then finds every compile in the cache, so the wrapper changed no cache key.
    let a = m.build("a", None);
    let ours: BTreeSet<String> = [MODULE, PKG, ASM].map(String::from).into();
    assert!(
        a.compiled().is_superset(&ours) && a.compiled().contains("runtime"),
        "(4) a build with an empty cache shows every package compiled (a Cmd): {:?}",
        a.compiled()
    );
    let rec_b = base.join("rec-b");
    let b = m.build("b", Some(&rec_b));
    assert_eq!(
        b.compiled(),
        BTreeSet::new(),
        "(1) a build through {RECORD_TOOL} missed the cache entries of a plain build"
    );
    assert!(
        Record::Link.file(&rec_b).exists() && Record::compiles_in(&rec_b).unwrap().is_empty(),
        "(1) the wrapper ran the link (and no compile) of the build through it"
    );
    // The tools' `-V=full` answer, all go adds to the cache keys for them, comes through the
    // wrapper unchanged (and is not recorded).
    let tooldir = &go_env["GOTOOLDIR"];
    let rec_v = base.join("rec-v");
    std::fs::create_dir_all(&rec_v).unwrap();
    for tool in ["compile", "link"] {
        let tool = format!("{tooldir}/{tool}");
        let plain = Command::new(&tool).arg("-V=full").output().unwrap();
        let wrapped = Command::new(BIN)
            .args([
                RECORD_TOOL,
                &rec_v.display().to_string(),
                &root.display().to_string(),
            ])
            .arg(&tool)
            .arg("-V=full")
            .output()
            .unwrap();
        assert!(plain.status.success() && !plain.stdout.is_empty());
        assert_eq!(
            (wrapped.status.code(), &wrapped.stdout),
            (plain.status.code(), &plain.stdout),
            "(1) {tool} -V=full answers differently through the wrapper"
        );
    }
    assert_eq!(
        std::fs::read_dir(&rec_v).unwrap().count(),
        0,
        "(1) -V=full queries are not recorded"
    );

    // New sources: the recorded build compiles exactly the module's packages (the standard
    // library's entries, made by plain build a, are hits), and a plain build after it finds
    // everything it compiled.
    write_module(&root, "v2");
    let rec = base.join("rec-c");
    let c = m.build("c", Some(&rec));
    assert_eq!(
        c.compiled(),
        ours,
        "(1)/(4) a recorded build compiles its changed packages and nothing else"
    );
    let d = m.build("d", None);
    assert_eq!(
        d.compiled(),
        BTreeSet::new(),
        "(1) a plain build missed the cache entries of a build through {RECORD_TOOL}"
    );
    assert!(
        std::fs::read(&c.binary).unwrap() == std::fs::read(&d.binary).unwrap(),
        "(7) the recorded and the plain build of one tree linked different bytes"
    );

    // (2) The compiles.
    let main_run = read_run(&Record::Compile("main".into()).file(&rec));
    let pkg_run = read_run(&Record::Compile(PKG.into()).file(&rec));
    let asm_run = read_run(&Record::Compile(ASM.into()).file(&rec));
    let link = read_run(&Record::Link.file(&rec));
    assert_eq!(
        Record::compiles_in(&rec).unwrap().len(),
        3,
        "(2) one compile record per package of the module"
    );
    let (_, link_out) = flag_value(&link.argv, "o").expect("(3) the link has an -o");
    let work = work_of_link_output(link_out).expect("(3) the link's -o has a $WORK");
    let runs = [
        ("main", MODULE, &main_run, vec!["main.go"], true),
        (PKG, PKG, &pkg_run, vec!["pkg/pkg.go"], true),
        (ASM, ASM, &asm_run, vec!["asm/asm.go"], false),
    ];
    for (p, import_path, run, go_files, complete) in &runs {
        let name = Path::new(&run.argv[0])
            .file_name()
            .unwrap()
            .to_string_lossy();
        assert_eq!(name, "compile", "(2) the recorded tool of {p}");
        assert_eq!(
            flag_value(&run.argv, "p").map(|(_, v)| v),
            Some(*p),
            "(2) -p names the package ({p}): {:?}",
            run.argv
        );
        let (_, o) = flag_value(&run.argv, "o").expect("(2) a compile has -o");
        let objdir = Path::new(o).parent().unwrap();
        let objdir_name = objdir.file_name().unwrap().to_string_lossy();
        assert!(
            o.ends_with("/_pkg_.a")
                && objdir_name.len() >= 4
                && objdir_name.starts_with('b')
                && objdir_name[1..].bytes().all(|c| c.is_ascii_digit())
                && work_of_compile_output(o) == Some(work),
            "(2) {p}'s archive is $WORK/bNNN/_pkg_.a ($WORK {}): {o}",
            work.display()
        );
        let mut cfgs = vec!["importcfg"];
        if *p == ASM {
            cfgs.push("embedcfg");
        }
        for flag in cfgs {
            let (_, file) =
                flag_value(&run.argv, flag).unwrap_or_else(|| panic!("(2) {p} has -{flag}"));
            assert_eq!(
                Path::new(file).parent(),
                Some(objdir),
                "(2) {p}'s -{flag} is in its archive's directory"
            );
            assert!(
                run.files.contains_key(flag),
                "(2) {p}'s record keeps its {flag}"
            );
        }
        assert_eq!(
            run.cwd, root,
            "(2) the go command compiles in the module's root"
        );
        let want: BTreeSet<PathBuf> = go_files.iter().map(|f| root.join(f)).collect();
        assert_eq!(
            trailing_go_files(run),
            want,
            "(2) {p}'s Go files come last: {:?}",
            run.argv
        );
        assert_eq!(
            run.argv.iter().any(|a| a == "-complete"),
            *complete,
            "(2) -complete is there exactly when {p} is all Go: {:?}",
            run.argv
        );
        assert_eq!(
            run.env.get("TOOLEXEC_IMPORTPATH"),
            Some(&EnvValue::Clear(import_path.to_string())),
            "(6) go tells its tools the package they work on"
        );
    }
    let embedcfg: serde_json::Value = serde_json::from_str(&asm_run.files["embedcfg"]).unwrap();
    assert_eq!(
        embedcfg["Files"]["banner.txt"].as_str(),
        Some(root.join("asm/banner.txt").to_str().unwrap()),
        "(2) the embed configuration names the embedded file: {embedcfg}"
    );

    // (3) The link.
    assert!(
        link_out.ends_with("/b001/exe/a.out")
            && work
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("go-build"),
        "(3) the link writes $WORK/b001/exe/a.out: {link_out}"
    );
    assert!(
        !work.exists(),
        "(3) $WORK ({}) is gone when the go command has exited",
        work.display()
    );
    let (_, main_o) = flag_value(&main_run.argv, "o").unwrap();
    assert_eq!(
        link.argv.last().map(String::as_str),
        Some(main_o),
        "(3) the main package's archive is the link's last argument"
    );
    let link_cfg = &link.files["importcfg"];
    let linked = packagefiles(link_cfg);
    assert_eq!(
        linked.keys().cloned().collect::<BTreeSet<_>>(),
        c.graph.packages.keys().cloned().collect(),
        "(3)/(4) the link's import configuration names every package of the graph"
    );
    assert_eq!(
        linked.get(MODULE).map(String::as_str),
        Some(main_o),
        "(3) the link's import configuration names the main package's archive"
    );
    for (p, file) in &linked {
        assert!(
            p == MODULE || Path::new(file).is_file(),
            "(3) {p}'s archive {file} was kept or is in the cache"
        );
    }

    // (4) The action graph.
    assert_eq!(
        c.graph.main, MODULE,
        "(4) the link action names the main package"
    );
    for action in &c.json {
        let mode = action["Mode"]
            .as_str()
            .expect("(4) every action has a Mode");
        if mode == "build" {
            assert!(
                action["Package"].is_string()
                    && action["Deps"].is_array()
                    && action["ActionID"].is_string()
                    && action.get("Cmd").is_some(),
                "(4) a build action has Package, Deps, ActionID and Cmd: {action}"
            );
        }
    }
    for mode in ["build", "link"] {
        assert!(
            c.json.iter().any(|a| a["Mode"] == mode),
            "(4) the graph has {mode} actions"
        );
    }
    let listed = stdout_of(
        "go list -deps",
        m.go(
            &root,
            &[
                "list",
                "-deps",
                "-f",
                "{{.ImportPath}} {{join .Imports \" \"}}",
                ".",
            ],
        ),
    );
    let listed: BTreeMap<String, BTreeSet<String>> = listed
        .lines()
        .map(|l| {
            let mut words = l.split_whitespace().map(str::to_string);
            let p = words.next().unwrap();
            (p, words.filter(|i| i != "unsafe").collect())
        })
        .filter(|(p, _)| p != "unsafe")
        .collect();
    assert_eq!(
        c.graph.packages.keys().collect::<Vec<_>>(),
        listed.keys().collect::<Vec<_>>(),
        "(4) the graph's build actions are the packages go list -deps lists (unsafe aside)"
    );
    for (p, imports) in &listed {
        assert!(
            c.graph.packages[p].imports.is_superset(imports),
            "(4) {p}'s build dependencies include its imports {imports:?}: {:?}",
            c.graph.packages[p].imports
        );
    }
    for (p, _, run, _, _) in &runs {
        let package = if *p == "main" { MODULE } else { *p };
        let g = &c.graph.packages[package];
        let cfg: BTreeSet<String> = packagefiles(&run.files["importcfg"]).into_keys().collect();
        assert_eq!(
            g.imports, cfg,
            "(4) {package}'s build dependencies are what its compile imports"
        );
        let id = g
            .action_id
            .as_deref()
            .expect("(4) a build action has an ActionID");
        let hex = base64url_to_hex(id).unwrap_or_else(|| panic!("(4) ActionID {id} is base64url"));
        assert_eq!(hex.len(), 30, "(4) ActionID {id} is 15 bytes");
        let (_, build_id) =
            flag_value(&run.argv, "buildid").expect("(2)/(4) a compile has -buildid");
        assert!(
            build_id.starts_with(&format!("{id}/")),
            "(4) ActionID {id} is the compile's action ID (-buildid {build_id})"
        );
        assert_eq!(
            action_entries(&m.gocache, &hex).len(),
            1,
            "(5) {package}'s compile has its cache entry GOCACHE/{}/{hex}…-a",
            &hex[..2]
        );
    }

    // (5) Evicting pkg's entry makes the next build compile pkg again, to the same bytes: its
    // importers are not compiled again and the binary is the same.
    let pkg_id = c.graph.packages[PKG].action_id.clone().unwrap();
    let hex = base64url_to_hex(&pkg_id).unwrap();
    assert!(
        evict_action(&m.gocache, &pkg_id),
        "(5) pkg's entry is evicted"
    );
    assert!(
        action_entries(&m.gocache, &hex).is_empty(),
        "(5) no entry of pkg's action is left"
    );
    assert!(
        !evict_action(&m.gocache, &pkg_id),
        "(5) an evicted entry is gone"
    );
    let e = m.build("e", None);
    assert_eq!(
        e.compiled(),
        BTreeSet::from([PKG.to_string()]),
        "(5)/(7) after the eviction go compiles pkg again (to the same bytes: nothing that \
         imports it is compiled again)"
    );
    assert!(
        std::fs::read(&e.binary).unwrap() == std::fs::read(&d.binary).unwrap(),
        "(5)/(7) the build after an eviction links the same bytes"
    );
    assert_eq!(
        action_entries(&m.gocache, &hex).len(),
        1,
        "(5) the entry is back"
    );

    // (6) The tools' environment: the go command's own plus go env's values, nothing else.
    for (what, run) in [
        ("main's compile", &main_run),
        ("pkg's compile", &pkg_run),
        ("asm's compile", &asm_run),
        ("the link", &link),
    ] {
        let rebuilt = recorded_env::rebuild(&run.env, &sources).unwrap_or_else(|missing| {
            panic!(
                "(6) {what} got variables that are neither the go command's nor go env's (or \
                 with other values): {missing:?}"
            )
        });
        assert_eq!(
            rebuilt.get(MARK),
            Some(&mark),
            "(6) {what} got the go command's environment"
        );
        for k in [
            "GOROOT",
            "GOOS",
            "GOARCH",
            "GOTOOLDIR",
            "GOVERSION",
            "GOPATH",
            "CGO_ENABLED",
        ] {
            assert!(
                !m.env.contains_key(k),
                "(6) the test does not set {k} itself"
            );
            assert_eq!(rebuilt.get(k), go_env.get(k), "(6) {what} got go env's {k}");
        }
    }

    // (7) Determinism. The recorded compiles, run again as they were (their imports pointed at
    // the archives the link record kept), write the same bytes each time, and the bytes the
    // build wrote but for the build ID (the go command rewrites its content half). asm's is
    // not run: it reads files of $WORK the records do not keep, as packages without
    // `-complete` may (2).
    let importcfg_of = |run: &ToolRun, name: &str, extra: &BTreeMap<String, String>| {
        let cfg = repoint(&run.files["importcfg"], |p| {
            extra.get(p).or_else(|| linked.get(p)).cloned()
        });
        let file = m.out.join(format!("{name}.importcfg"));
        std::fs::write(&file, cfg).unwrap();
        file.display().to_string()
    };
    let none = BTreeMap::new();
    for (p, run, was) in [
        (
            "main",
            &main_run,
            Record::Link.saved_file(&rec, MAIN_ARCHIVE),
        ),
        (PKG, &pkg_run, PathBuf::from(&linked[PKG])),
    ] {
        let stem = p.replace('/', "_");
        let cfg = importcfg_of(run, &stem, &none);
        let runs: Vec<Vec<u8>> = (0..2)
            .map(|i| {
                let again = m.out.join(format!("{stem}-{i}.a"));
                let argv = with_flag(run.argv.clone(), "o", &again.display().to_string());
                rerun(
                    run,
                    with_flag(argv, "importcfg", &cfg),
                    &sources,
                    &format!("{p}'s compile"),
                );
                std::fs::read(&again).unwrap()
            })
            .collect();
        assert!(
            runs[0] == runs[1],
            "(7) {p}'s recorded compile, run twice, wrote different bytes"
        );
        let mut again = runs[0].clone();
        let mut went = std::fs::read(&was).unwrap();
        assert!(
            blank_archive_build_id(&mut again) == blank_archive_build_id(&mut went)
                && again == went,
            "(7) {p}'s recorded compile, run again, writes other bytes than go's (build ID aside)"
        );
    }
    // A quick rebuild: main.go changed; its recorded compile and the link, run again, make
    // what go build makes of the new tree, build IDs aside.
    std::fs::write(
        root.join("main.go"),
        std::fs::read_to_string(root.join("main.go"))
            .unwrap()
            .replace("version = \"v2\"", "version = \"v3\""),
    )
    .unwrap();
    let quick_main = m.out.join("quick-main.a");
    let argv = with_flag(
        main_run.argv.clone(),
        "o",
        &quick_main.display().to_string(),
    );
    let argv = with_flag(
        argv,
        "importcfg",
        &importcfg_of(&main_run, "quick-main", &none),
    );
    rerun(&main_run, argv, &sources, "main's compile");
    let quick = m.out.join("quick");
    let to_quick_main = BTreeMap::from([(MODULE.to_string(), quick_main.display().to_string())]);
    let link_cfg_file = importcfg_of(&link, "quick-link", &to_quick_main);
    let mut argv = with_flag(link.argv.clone(), "o", &quick.display().to_string());
    argv = with_flag(argv, "importcfg", &link_cfg_file);
    *argv.last_mut().unwrap() = quick_main.display().to_string();
    rerun(&link, argv, &sources, "the link");
    let f = m.build("f", None);
    assert_eq!(
        f.compiled(),
        BTreeSet::from([MODULE.to_string()]),
        "(7) go build compiles the changed main package (alone)"
    );
    let (quick_bytes, quick_id) = without_build_ids(&m, &quick);
    let (go_bytes, go_id) = without_build_ids(&m, &f.binary);
    assert_ne!(
        quick_id, go_id,
        "(7) the quick binary keeps the recorded build's IDs"
    );
    assert!(
        quick_bytes == go_bytes,
        "(7) the rerun compile and link made a binary that differs from go build's in more than \
         the build IDs"
    );
    let ran = Command::new(&quick).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ran.stderr).trim(),
        "pkg-v2 banner-v2 v3",
        "(7) the quick binary runs the new main package"
    );
}

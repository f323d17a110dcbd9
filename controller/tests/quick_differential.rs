//! Quick rebuilds against `go build`, differentially: a generated multi-package app (a chain
//! and a diamond of imports, constants and small functions inlined across packages, generics,
//! struct layout, method sets, init order, an embedded file, build constraints) goes through a
//! seeded random series of edits. After each, `serve` builds it (quickly where it can) and what
//! the installed app prints must be what a `go build` of the same tree prints; where go build
//! fails, serve's build must fail too.
//!
//! `KDEV_QUICK_DIFF_SEED` replays a series, `KDEV_QUICK_DIFF_EDITS` sets its length (50 by
//! default). The seed is printed at the start and in every failure.

mod common;

use std::collections::BTreeMap;

use common::go_session::*;
use common::rng::Rng;
use kdev_protocol::BuildOutcome;

/// How `a/extra.go`'s header reads: whether go compiles it depends on go's placement rules.
const EXTRA_HEADERS: [&str; 6] = [
    // Honoured: a `+build` line in the leading comments, then a blank line.
    "// +build ignore\n\npackage a\n",
    // Not honoured: no blank line before the package clause.
    "// +build ignore\npackage a\n",
    // Not honoured: after a /* */ comment.
    "/* extra */\n// +build ignore\n\npackage a\n",
    "//go:build !linux\n\npackage a\n",
    "//go:build linux && (amd64 || arm64 || !cgo || cgo)\n\npackage a\n",
    // `//go:build` after a /* */ comment still counts.
    "/* extra */\n//go:build ignore\n\npackage a\n",
];

/// Everything the generated app's source depends on.
#[derive(Clone, Debug)]
struct App {
    a_k: i64,
    a_add: i64,
    a_name: String,
    /// Fields of `a.S`: its size shows in the output.
    a_fields: Vec<&'static str>,
    /// `a.S` has a `String` method (so it satisfies `m1.Stringer`).
    a_stringer: bool,
    /// `a.Swap` swaps (or keeps) its generic pair.
    a_swaps: bool,
    a_extra_header: usize,
    /// `a/more.go` exists.
    a_more: bool,
    b_k: i64,
    b_mul: i64,
    m1_init: String,
    m2_mul: i64,
    /// `m2` also imports `b` (an edge of the import graph that comes and goes).
    m2_uses_b: bool,
    c1_add: i64,
    /// A new function in c1 that main calls.
    c1_extra: Option<i64>,
    msg: String,
    main_msg: String,
    /// Breaks the build of `m2` (a type error).
    broken: bool,
    go_mod_comment: u64,
    /// Which init in main runs first (file order).
    main_init: String,
    lib_name: String,
    /// Written into every Go file as a trailing comment: each run's versions are its own, so
    /// that no package comes from a go cache an earlier run filled (a cache hit without a
    /// record is a session-start matter, tested in `quick_build.rs`, not this test's).
    run: u64,
}

const FIELDS: [&str; 5] = ["X int64", "Y int8", "Z string", "W [3]int32", "V *int"];

impl App {
    fn new(run: u64) -> App {
        App {
            run,
            a_k: 1,
            a_add: 2,
            a_name: "s".into(),
            a_fields: vec![FIELDS[0]],
            a_stringer: false,
            a_swaps: true,
            a_extra_header: 0,
            a_more: true,
            b_k: 3,
            b_mul: 4,
            m1_init: "m1".into(),
            m2_mul: 5,
            m2_uses_b: false,
            c1_add: 6,
            c1_extra: None,
            msg: "hello".into(),
            main_msg: "main".into(),
            broken: false,
            go_mod_comment: 0,
            main_init: "i0".into(),
            lib_name: "lib".into(),
        }
    }

    /// The files of the tree.
    fn files(&self) -> BTreeMap<String, String> {
        let mut f = BTreeMap::new();
        let mut put = |p: &str, s: String| {
            f.insert(p.to_string(), s);
        };
        put(
            "go.mod",
            format!(
                "module example.com/diff\n\n// edit {}\ngo 1.22\n",
                self.go_mod_comment
            ),
        );
        put(
            "trace/trace.go",
            "package trace\n\nvar L []string\n\nfunc Log(s string) { L = append(L, s) }\n".into(),
        );
        let stringer = if self.a_stringer {
            "func (s S) String() string { return \"S!\" }\n"
        } else {
            ""
        };
        let swap = if self.a_swaps {
            "Pair[T]{p.R, p.L}"
        } else {
            "p"
        };
        put(
            "a/a.go",
            format!(
                "package a\n\nimport \"example.com/diff/trace\"\n\nconst K = {}\n\n\
                 func Add(x int) int {{ return x + {} }}\n\n\
                 type Pair[T any] struct{{ L, R T }}\n\n\
                 func Swap[T any](p Pair[T]) Pair[T] {{ return {swap} }}\n\n\
                 type S struct {{\n\t{}\n}}\n\n\
                 func (s S) Name() string {{ return \"{}\" }}\n\n{stringer}\n\
                 func init() {{ trace.Log(\"a\") }}\n",
                self.a_k,
                self.a_add,
                self.a_fields.join("\n\t"),
                self.a_name,
            ),
        );
        put(
            "a/extra.go",
            format!(
                "{}\nimport \"example.com/diff/trace\"\n\nfunc init() {{ trace.Log(\"extra\") }}\n",
                EXTRA_HEADERS[self.a_extra_header]
            ),
        );
        if self.a_more {
            put(
                "a/more.go",
                "package a\n\nfunc More() int { return K * 2 }\n".into(),
            );
        }
        // Never built: a test file, and files for other systems.
        put(
            "a/a_test.go",
            format!(
                "package a\n\nimport \"testing\"\n\nfunc TestK(t *testing.T) {{ _ = {} }}\n",
                self.a_k
            ),
        );
        put(
            "a/a_windows.go",
            format!(
                "package a\n\nfunc init() {{ panic(\"windows {}\") }}\n",
                self.a_k
            ),
        );
        put(
            "b/b.go",
            format!(
                "package b\n\nimport \"example.com/diff/trace\"\n\nconst K = {}\n\n\
                 func Scale(x int) int {{ return x * {} }}\n\n\
                 func Max[T int | float64](x, y T) T {{\n\tif x > y {{\n\t\treturn x\n\t}}\n\treturn y\n}}\n\n\
                 func init() {{ trace.Log(\"b\") }}\n",
                self.b_k, self.b_mul
            ),
        );
        put(
            "m1/m1.go",
            format!(
                "package m1\n\nimport (\n\t\"unsafe\"\n\n\t\"example.com/diff/a\"\n\t\"example.com/diff/b\"\n\t\"example.com/diff/trace\"\n)\n\n\
                 type Stringer interface{{ String() string }}\n\n\
                 func Has(v any) bool {{ _, ok := v.(Stringer); return ok }}\n\n\
                 func Size() uintptr {{ return unsafe.Sizeof(a.S{{}}) }}\n\n\
                 func Val() int {{ return a.Add(a.K) + b.Scale(b.K) }}\n\n\
                 func init() {{ trace.Log(\"{}\") }}\n",
                self.m1_init
            ),
        );
        let (b_import, b_use) = if self.m2_uses_b {
            ("\t\"example.com/diff/b\"\n", " + b.K")
        } else {
            ("", "")
        };
        let broken = if self.broken { " + \"x\"" } else { "" };
        put(
            "m2/m2.go",
            format!(
                "package m2\n\nimport (\n\t\"example.com/diff/a\"\n{b_import}\t\"example.com/diff/trace\"\n)\n\n\
                 func Val() int {{ return a.K*{}{b_use}{broken} }}\n\n\
                 func Sw() string {{ p := a.Swap(a.Pair[string]{{L: \"l\", R: \"r\"}}); return p.L + p.R }}\n\n\
                 func init() {{ trace.Log(\"m2\") }}\n",
                self.m2_mul
            ),
        );
        let extra = match self.c1_extra {
            Some(n) => format!("\nfunc Extra() int {{ return {n} }}\n"),
            None => String::new(),
        };
        put(
            "c1/c1.go",
            format!(
                "package c1\n\nimport \"example.com/diff/m1\"\n\n\
                 func Val() int {{ return m1.Val() + {} }}\n{extra}",
                self.c1_add
            ),
        );
        put(
            "c2/c2.go",
            "package c2\n\nimport (\n\t_ \"embed\"\n\n\t\"example.com/diff/c1\"\n)\n\n\
             //go:embed msg.txt\nvar Msg string\n\n\
             func Val() int { return c1.Val() * 2 }\n"
                .into(),
        );
        put("c2/msg.txt", self.msg.clone());
        // A package whose directory is named like a test file.
        put(
            "lib_test.go/lib.go",
            format!(
                "package lib\n\nfunc Name() string {{ return \"{}\" }}\n",
                self.lib_name
            ),
        );
        let extra_call = if self.c1_extra.is_some() {
            "c1.Extra()"
        } else {
            "0"
        };
        put(
            "main.go",
            format!(
                "package main\n\nimport (\n\t\"fmt\"\n\t\"strings\"\n\n\
                 \t\"example.com/diff/a\"\n\t\"example.com/diff/b\"\n\t\"example.com/diff/c1\"\n\
                 \t\"example.com/diff/c2\"\n\t\"example.com/diff/lib_test.go\"\n\
                 \t\"example.com/diff/m1\"\n\t\"example.com/diff/m2\"\n\t\"example.com/diff/trace\"\n)\n\n\
                 const message = \"{}\"\n\n\
                 func main() {{\n\tfmt.Println(message, c2.Val(), m2.Val(), m2.Sw(), m1.Has(a.S{{}}), \
                 m1.Size(), a.S{{}}.Name(), c1.Val(), c2.Msg, b.Max(3, b.K), {extra_call}, lib.Name(), \
                 strings.Join(trace.L, \",\"))\n}}\n",
                self.main_msg
            ),
        );
        put(
            "init.go",
            format!(
                "package main\n\nimport \"example.com/diff/trace\"\n\nfunc init() {{ trace.Log(\"{}\") }}\n",
                self.main_init
            ),
        );
        let run = self.run;
        for (path, text) in f.iter_mut() {
            if path.ends_with(".go") {
                text.push_str(&format!("\n// differential run {run}\n"));
            }
        }
        f
    }

    /// Going from `self` to `to` changes only the code of existing Go files of packages the
    /// app already builds, and both build: no header, embedded file, file set or go.mod
    /// changes. Those edits should be quick.
    fn only_code_changes(&self, to: &App) -> bool {
        !self.broken
            && !to.broken
            && self.a_extra_header == to.a_extra_header
            && self.msg == to.msg
            && self.a_more == to.a_more
            && self.m2_uses_b == to.m2_uses_b
            && self.go_mod_comment == to.go_mod_comment
    }

    /// One random edit: what it changed.
    fn edit(&mut self, rng: &mut Rng, n: i64) -> &'static str {
        match rng.below(20) {
            0 | 1 => {
                self.a_k = n;
                "a.K (inlined into m1, m2)"
            }
            2 => {
                self.a_add = n;
                "a.Add's body (inlined)"
            }
            3 => {
                self.b_k = n % 7;
                "b.K"
            }
            4 => {
                self.b_mul = n;
                "b.Scale's body"
            }
            5 => {
                let f = FIELDS[rng.below(FIELDS.len())];
                if self.a_fields.contains(&f) && self.a_fields.len() > 1 {
                    self.a_fields.retain(|x| *x != f);
                } else if !self.a_fields.contains(&f) {
                    self.a_fields.push(f);
                } else {
                    self.a_fields.reverse();
                }
                "a.S's fields (its layout)"
            }
            6 => {
                self.a_stringer = !self.a_stringer;
                "a.S's method set"
            }
            7 => {
                self.a_swaps = !self.a_swaps;
                "a.Swap, a generic function"
            }
            8 => {
                self.m1_init = format!("m1-{n}");
                "m1's init"
            }
            9 => {
                self.m2_mul = n;
                "m2.Val"
            }
            10 => {
                self.c1_add = n;
                "c1 (a chain of importers)"
            }
            11 => {
                self.c1_extra = if self.c1_extra.is_some() {
                    None
                } else {
                    Some(n)
                };
                "a new function in c1, called by main"
            }
            12 => {
                self.main_msg = format!("main{n}");
                "main's constant"
            }
            13 => {
                self.lib_name = format!("lib{n}");
                "lib_test.go/lib.go"
            }
            14 => {
                self.a_extra_header = rng.below(EXTRA_HEADERS.len());
                "a/extra.go's build constraint"
            }
            15 => {
                self.msg = format!("msg{n}");
                "the embedded c2/msg.txt"
            }
            16 => {
                self.a_more = !self.a_more;
                "a/more.go added or deleted"
            }
            17 => {
                self.m2_uses_b = !self.m2_uses_b;
                "m2's imports"
            }
            18 => {
                self.go_mod_comment = n as u64;
                "go.mod"
            }
            _ => {
                self.broken = !self.broken;
                "a type error in m2 (or its fix)"
            }
        }
    }
}

#[test]
fn every_build_serves_what_go_build_of_the_same_tree_serves() {
    let seed = std::env::var("KDEV_QUICK_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(common::rand_u32()));
    let edits: usize = std::env::var("KDEV_QUICK_DIFF_EDITS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    // With shadow builds, as a developer who pauses between saves has them: each edit waits
    // until serve is idle (its shadow builds have their verdicts). Slower; off by default.
    let shadows = std::env::var("KDEV_QUICK_DIFF_SHADOW").is_ok_and(|v| v == "1");
    eprintln!(
        "quick rebuild differential test: KDEV_QUICK_DIFF_SEED={seed}, {edits} edits{}",
        if shadows {
            ", with shadow builds (KDEV_QUICK_DIFF_SHADOW=1)"
        } else {
            ""
        }
    );
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let verify = if shadows { "1" } else { "0" };
    let mut s = Session::start(kdev, go_config(&[("KDEV_QUICK_VERIFY", verify)]));
    // Its own versions for every run, also of one seed (the go cache outlives runs).
    let mut app = App::new(rng.next() ^ u64::from(common::rand_u32()));
    let mut sent = app.files();
    let all: Vec<(&str, &str)> = sent.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let b = s.patch(&all, &[]);
    assert_eq!(
        b.outcome,
        BuildOutcome::Succeeded,
        "seed {seed}: {}",
        b.output
    );
    assert_go_build_agrees(kdev, &s.run_app());

    // Earlier versions to go back to: reverts are common edits.
    let mut versions = vec![app.clone()];
    let (mut quick, mut full, mut eligible, mut eligible_quick) = (0, 0, 0, 0);
    // Why edits that could have been quick were not, for the summary.
    let mut missed: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in 1..=edits {
        let before = app.clone();
        let mut what = Vec::new();
        if rng.percent(15) {
            app = versions[rng.below(versions.len())].clone();
            what.push("a revert to an earlier version");
        } else {
            // One to three edits in one save.
            for _ in 0..=rng.below(3) {
                what.push(app.edit(&mut rng, i as i64));
            }
        }
        let now = app.files();
        let changed: Vec<(&str, &str)> = now
            .iter()
            .filter(|(p, c)| sent.get(*p) != Some(c))
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        let deleted: Vec<&str> = sent
            .keys()
            .filter(|p| !now.contains_key(*p))
            .map(String::as_str)
            .collect();
        let context = format!(
            "seed {seed}, edit {i} ({}): changed {changed:?}, deleted {deleted:?}",
            what.join(", ")
        );
        let b = s.patch(&changed, &deleted);
        let reference = go_build_output(kdev);
        if shadows {
            wait_for_shadow_builds(&s, &context);
        }
        match (&reference, b.outcome) {
            (Ok(expected), BuildOutcome::Succeeded) => {
                assert_eq!(&s.run_app(), expected, "{context}\n{}", b.log);
            }
            (Err(_), BuildOutcome::Failed) => {}
            (reference, outcome) => panic!(
                "{context}: serve's build {outcome:?}, go build's {reference:?}\n{}\n{}",
                b.log, b.output
            ),
        }
        if b.quick() {
            quick += 1;
        } else {
            full += 1;
        }
        if before.only_code_changes(&app) {
            eligible += 1;
            eligible_quick += usize::from(b.quick());
            if !b.quick() {
                let why = b.why_go_build().unwrap_or("the quick rebuild failed");
                // Package names and counts vary; the reason's kind is what matters.
                let kind: String = why.chars().take_while(|c| *c != ':').take(90).collect();
                missed.entry(kind).or_default().push(i);
            }
        }
        sent = now;
        if reference.is_ok() && rng.percent(30) {
            versions.push(app.clone());
        }
    }
    eprintln!(
        "seed {seed}: {edits} edits, {quick} quick, {full} go build; \
         {eligible_quick} of {eligible} edits of existing Go files quick; 0 mismatches"
    );
    for (why, at) in &missed {
        eprintln!("  {} not quick: {why} (edits {at:?})", at.len());
    }
    if shadows {
        let log = s.s.stderr();
        let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
        eprintln!(
            "shadow builds: {} proved a quick binary the same as go build's, {} recorded \
             packages from the go cache, {} cancelled by the next save",
            count(": the same binary")
                - count(": recording packages").min(count(": the same binary")),
            count(": recording packages"),
            count(": cancelled (the tree changed)"),
        );
        assert!(
            !log.contains("differs from go build's") && !log.contains("go build fails where"),
            "seed {seed}: a shadow build found a quick binary wrong\n{log}"
        );
    }
    // The bound quick rebuilds promise: at least 90 % of the edits that only change existing Go files of
    // built packages are quick (all were in runs here: each run's versions are its own, and a
    // revert finds its compiles among the last 64 per package).
    assert!(
        eligible_quick * 10 >= eligible * 9,
        "seed {seed}: only {eligible_quick} of {eligible} edits of existing Go files were quick\n{}",
        s.s.stderr()
    );
}

/// Wait until every shadow build serve started has its verdict (one is due 300 ms after a
/// build; a little more is given for it to start).
fn wait_for_shadow_builds(s: &Session, context: &str) {
    std::thread::sleep(std::time::Duration::from_millis(500));
    let deadline = std::time::Instant::now() + BUILD;
    loop {
        let log = s.s.stderr();
        let started = log
            .lines()
            .filter(|l| l.contains(": proving quick rebuild") || l.contains(": recording packages"))
            .count();
        let ended = log
            .lines()
            .filter(|l| {
                l.contains("kdev-serve: shadow build ")
                    && (l.contains(" ms: ") || l.contains(": cancelled"))
            })
            .count();
        if ended >= started {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{context}: a shadow build never ended\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

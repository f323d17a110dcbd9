//! Quick rebuilds with the real Go toolchain: `serve` builds a small program (a main package
//! and one it imports) through a series of edits; each built binary is run and must print what
//! `go build` of that tree prints, and the serve log must show which edits skipped the go
//! command and why the others did not.

mod common;

use std::path::Path;

use common::go_session::*;
use common::*;
use kdev_protocol::{BuildOutcome, SessionConfig};

const GO_MOD: &str = "module example.com/quick\n\ngo 1.22\n";

fn main_go(message: &str) -> String {
    format!(
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/quick/pkg\"\n)\n\n\
         var extra string\n\nconst message = \"{message}\"\n\n\
         func main() {{ fmt.Println(message, pkg.Name()+extra) }}\n"
    )
}

/// Adds `+util` to the output, unless a build constraint leaves it out.
const UTIL_GO: &str = "package main\n\nfunc init() { extra += \"+util\" }\n";

fn pkg_go(name: &str) -> String {
    format!("package pkg\n\nfunc Name() string {{ return \"{name}\" }}\n")
}

#[test]
fn edits_of_compiled_packages_skip_the_go_command_and_everything_else_takes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Session::start(kdev, go_config(&[]));
    let test_go = "package main\n\nimport \"testing\"\n\nfunc TestA(t *testing.T) {}\n";
    let b = s.patch(
        &[
            ("go.mod", GO_MOD),
            ("main.go", &main_go("v1")),
            ("util.go", UTIL_GO),
            ("main_test.go", test_go),
            ("pkg/pkg.go", &pkg_go("p1")),
            ("README.md", "notes\n"),
        ],
        &[],
    );
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "v1 p1+util");
    assert!(
        s.s.stderr().contains(
            "quick rebuilds ready: edits of main.go, pkg/pkg.go, util.go skip the go command"
        ),
        "{}",
        s.s.stderr()
    );

    // A change of the main package's code only: the compiler and the linker, nothing else.
    let b = s.patch(&[("main.go", &main_go("v2"))], &[]);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "v2 p1+util");

    // An edit of a test (`go build` never reads them): quick, and the same bytes again.
    let before = std::fs::read(kdev.join("bin/app")).unwrap();
    let b = s.patch(&[("main_test.go", &format!("{test_go}// more\n"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert!(std::fs::read(kdev.join("bin/app")).unwrap() == before);

    // A build constraint leaves util.go out: only the go command knows that.
    let b = s.patch(
        &[("util.go", &format!("//go:build ignore\n\n{UTIL_GO}"))],
        &[],
    );
    assert!(
        b.log
            .contains("go build (util.go's build constraint, imports or directives changed)"),
        "{}",
        b.log
    );
    assert_eq!(s.run_app(), "v2 p1");

    // A new import.
    let upper = main_go("v4")
        .replace("\"fmt\"\n", "\"fmt\"\n\t\"strings\"\n")
        .replace("Println(message", "Println(strings.ToUpper(message)");
    let b = s.patch(&[("main.go", &upper)], &[]);
    assert!(
        b.log
            .contains("go build (main.go's build constraint, imports or directives changed)"),
        "{}",
        b.log
    );
    assert_eq!(s.run_app(), "V4 p1");
    let b = s.patch(&[("main.go", &upper.replace("v4", "v5"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V5 p1");

    // pkg was compiled by the first build only; the builds since took it from their cache, with
    // the bytes its record says it wrote, so the record still holds and its edits are quick.
    let b = s.patch(&[("pkg/pkg.go", &pkg_go("p6"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V5 p6");
    let b = s.patch(&[("pkg/pkg.go", &pkg_go("p7"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V5 p7");

    // A new function in pkg, used by main in the same save: pkg is compiled first, then main
    // against its new export data.
    let shout = format!(
        "{}\nfunc Shout(s string) string {{ return s + \"!\" }}\n",
        pkg_go("p8")
    );
    let shouting = upper.replace("pkg.Name()+extra", "pkg.Shout(pkg.Name())+extra");
    let b = s.patch(
        &[
            ("pkg/pkg.go", &shout),
            ("main.go", &shouting.replace("v4", "v8")),
        ],
        &[],
    );
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V8 p8!");
    let b = s.patch(&[("main.go", &upper.replace("v4", "v8"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V8 p8");

    // A compile error: the quick compile fails, go build reports it; the app is kept.
    let b = s.patch(
        &[("main.go", &upper.replace("func main() {", "func main() {("))],
        &[],
    );
    assert_eq!(b.outcome, BuildOutcome::Failed, "{}", b.output);
    assert!(b.log.contains("the quick rebuild failed"), "{}", b.log);
    assert!(
        b.output.contains("main.go:"),
        "go build's own output: {}",
        b.output
    );
    assert_eq!(s.run_app(), "V8 p8");
    let b = s.patch(&[("main.go", &upper.replace("v4", "v9"))], &[]);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "V9 p8");

    // A file added to, then removed from the main package.
    let more = "package main\n\nfunc init() { extra += \"+more\" }\n";
    let b = s.patch(&[("more.go", more)], &[]);
    assert!(
        b.log
            .contains("go build (more.go is a new Go file of its package)"),
        "{}",
        b.log
    );
    assert_eq!(s.run_app(), "V9 p8+more");
    let b = s.patch(&[], &["more.go"]);
    assert!(!b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V9 p8");

    // A file that is neither Go source nor embedded: go build ignores it, and so do quick
    // rebuilds (the binary is the same).
    s.patch(&[("main.go", &upper.replace("v4", "v10"))], &[]);
    let b = s.patch(&[("notes.txt", "x")], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V10 p8");
    let b = s.patch(&[("main.go", &upper.replace("v4", "v11"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V11 p8");

    // go.mod's language version goes to 1.21, back to 1.22 and to 1.21 again: the last build
    // takes the main package compiled for 1.21 from its cache. The record of that compile (the
    // first build's) is kept with the archive it wrote, so the next edit is quick and compiled
    // for 1.21.
    for version in ["1.21", "1.22", "1.21"] {
        let b = s.patch(&[("go.mod", &GO_MOD.replace("1.22", version))], &[]);
        assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
        assert!(!b.quick(), "{}", b.log);
    }
    let b = s.patch(&[("main.go", &upper.replace("v4", "v12"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "V12 p8");
    assert_go_build_agrees(kdev, &s.run_app());
}

/// Builds the small program, then an edit of main.go, in a session started with `cfg`: the
/// edit is served and not quick, and serve's log says quick rebuilds are off and `why`.
fn assert_quick_rebuilds_off(kdev: &Path, cfg: SessionConfig, why: &str) {
    let mut s = Session::start(kdev, cfg);
    let (main, pkg) = (main_go("v1"), pkg_go("p1"));
    s.patch(
        &[
            ("go.mod", GO_MOD),
            ("main.go", &main),
            ("util.go", UTIL_GO),
            ("pkg/pkg.go", &pkg),
        ],
        &[],
    );
    let b = s.patch(&[("main.go", &main_go("v2"))], &[]);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert!(!b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "v2 p1+util");
    let off = format!("quick rebuilds are off: {why}");
    assert!(s.s.stderr().contains(&off), "{}", s.s.stderr());
}

#[test]
fn kdev_quick_build_0_turns_quick_rebuilds_off() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    assert_quick_rebuilds_off(
        kdev,
        go_config(&[("KDEV_QUICK_BUILD", "0")]),
        "KDEV_QUICK_BUILD=0",
    );
}

/// main imports mid, mid imports leaf. A constant of leaf's is compiled into mid: an edit of
/// leaf alone must compile leaf, then mid, then main, or the binary would print the old value.
#[test]
fn an_edit_compiles_the_packages_that_import_it_too() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Session::start(kdev, go_config(&[]));
    let main = "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/quick/mid\"\n)\n\n\
                func main() { fmt.Println(mid.Say()) }\n";
    let mid = "package mid\n\nimport \"example.com/quick/leaf\"\n\n\
               func Say() string { return \"mid says \" + leaf.Word }\n";
    let leaf = |word: &str| format!("package leaf\n\nconst Word = \"{word}\"\n");
    let b = s.patch(
        &[
            ("go.mod", GO_MOD),
            ("main.go", main),
            ("mid/mid.go", mid),
            ("leaf/leaf.go", &leaf("one")),
        ],
        &[],
    );
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "mid says one");

    let b = s.patch(&[("leaf/leaf.go", &leaf("two"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "mid says two");

    // A new function in leaf and its first use in mid, in one save.
    let leaf3 = format!(
        "{}\nfunc Loud(s string) string {{ return s + \"!\" }}\n",
        leaf("three")
    );
    let mid3 = mid.replace("+ leaf.Word", "+ leaf.Loud(leaf.Word)");
    let b = s.patch(&[("leaf/leaf.go", &leaf3), ("mid/mid.go", &mid3)], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "mid says three!");
}

/// Assembly in a package: the go command assembles it and packs the objects into the
/// package's archive itself, so an edit of that package takes go build; the main package's
/// edits stay quick.
#[test]
fn a_package_with_assembly_takes_go_build() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Session::start(kdev, go_config(&[]));
    let main = |m: &str| {
        format!(
            "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/quick/asm\"\n)\n\n\
             func main() {{ fmt.Println(\"{m}\", asm.Two(), asm.Name()) }}\n"
        )
    };
    let go = |name: &str| {
        format!(
            "package asm\n\n// Two is in two_$GOARCH.s.\nfunc Two() int\n\n\
             func Name() string {{ return \"{name}\" }}\n"
        )
    };
    let amd64 = "#include \"textflag.h\"\n\nTEXT ·Two(SB),NOSPLIT,$0-8\n\tMOVQ $2, AX\n\
                 \tMOVQ AX, ret+0(FP)\n\tRET\n";
    let arm64 = "#include \"textflag.h\"\n\nTEXT ·Two(SB),NOSPLIT,$0-8\n\tMOVD $2, R0\n\
                 \tMOVD R0, ret+0(FP)\n\tRET\n";
    let b = s.patch(
        &[
            ("go.mod", GO_MOD),
            ("main.go", &main("m1")),
            ("asm/asm.go", &go("a1")),
            ("asm/two_amd64.s", amd64),
            ("asm/two_arm64.s", arm64),
        ],
        &[],
    );
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "m1 2 a1");

    let b = s.patch(&[("asm/asm.go", &go("a2"))], &[]);
    // The go command packs the assembly into the archive after the compile: the archive the
    // link reads is not what the recorded compile wrote, so asm has no usable record.
    assert!(
        b.log.contains(
            "go build (asm/asm.go is not a Go file of a package the last build compiled)"
        ),
        "{}",
        b.log
    );
    assert_eq!(s.run_app(), "m1 2 a2");
    let b = s.patch(&[("main.go", &main("m2"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "m2 2 a2");
}

/// A `-toolexec` of the user's own, set with `go env -w` (the go env file), is kept: quick
/// rebuilds are off rather than the user's wrapper silently replaced by kdev's.
#[test]
fn a_toolexec_in_the_go_env_file_turns_quick_rebuilds_off() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let wrapper = kdev.join("wrap.sh");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\necho \"$1\" >> \"$0.log\"\nexec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env_file = kdev.join("go.env");
    let goflags = format!("GOFLAGS=-mod=mod -toolexec={}\n", wrapper.display());
    std::fs::write(&env_file, goflags).unwrap();
    let mut cfg = go_config(&[("GOENV", &env_file.to_string_lossy())]);
    // GOFLAGS in the environment would override the file's, for the go command too.
    cfg.build.env.remove("GOFLAGS");
    assert_quick_rebuilds_off(kdev, cfg, "the build sets its own -toolexec");
    // The user's wrapper ran the tools.
    let ran = std::fs::read_to_string(kdev.join("wrap.sh.log")).unwrap();
    assert!(ran.contains("/link"), "{ran}");
}

/// A main package importing `pkg` from `dir` (an import path of the module), printing
/// `message` and `pkg.Name()`.
fn main_importing(dir: &str, message: &str) -> String {
    format!(
        "package main\n\nimport (\n\t\"fmt\"\n\n\tpkg \"example.com/quick/{dir}\"\n)\n\n\
         func main() {{ fmt.Println(\"{message}\", pkg.Name()) }}\n"
    )
}

/// Whether go reads a `// +build` line depends on where it is: in the leading comments and
/// followed by a blank line. An edit that moves it so that it counts (or no longer does) must
/// take go build, as any edit of a file's constraint does.
#[test]
fn an_edit_that_makes_a_plus_build_line_count_takes_go_build() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Session::start(kdev, go_config(&[]));
    let legacy = |header: &str| format!("{header}\nfunc init() {{ extra += \"+legacy\" }}\n");
    // No blank line before the package clause: the line is a plain comment, the file counts.
    let b = s.patch(
        &[
            ("go.mod", GO_MOD),
            ("main.go", &main_go("v1")),
            ("pkg/pkg.go", &pkg_go("p1")),
            ("legacy.go", &legacy("// +build ignore\npackage main\n")),
        ],
        &[],
    );
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "v1 p1+legacy");
    // A blank line: now it is a constraint and go leaves the file out.
    let b = s.patch(
        &[("legacy.go", &legacy("// +build ignore\n\npackage main\n"))],
        &[],
    );
    assert!(!b.quick(), "{}", b.log);
    assert!(b.log.contains("legacy.go's build constraint"), "{}", b.log);
    assert_eq!(s.run_app(), "v1 p1");
    assert_go_build_agrees(kdev, "v1 p1");
    // An edit of main.go while legacy.go is left out: quick, and still without it.
    let b = s.patch(&[("main.go", &main_go("v2"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "v2 p1");
    // After a /* */ comment a `+build` line does not count again.
    let b = s.patch(
        &[(
            "legacy.go",
            &legacy("/* x */\n// +build ignore\n\npackage main\n"),
        )],
        &[],
    );
    assert!(!b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "v2 p1+legacy");
    assert_go_build_agrees(kdev, "v2 p1+legacy");
}

/// A package directory may be named like a test file (`v_test.go` is a legal import path
/// element). Deleting it along with an edit of main.go must not be taken for a deleted test:
/// go build fails, and so must kdev's build, keeping the app.
#[test]
fn a_deleted_package_directory_named_like_a_test_file_takes_go_build() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Session::start(kdev, go_config(&[]));
    let b = s.patch(
        &[
            ("go.mod", GO_MOD),
            ("main.go", &main_importing("pkgs/v_test.go", "m1")),
            ("pkgs/v_test.go/v.go", &pkg_go("v1")),
        ],
        &[],
    );
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "m1 v1");
    let b = s.patch(&[("pkgs/v_test.go/v.go", &pkg_go("v2"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "m1 v2");

    let b = s.patch(
        &[("main.go", &main_importing("pkgs/v_test.go", "m2"))],
        &["pkgs/v_test.go"],
    );
    assert!(!b.quick(), "{}", b.log);
    assert_eq!(b.outcome, BuildOutcome::Failed, "{}", b.output);
    assert!(go_build_output(kdev).is_err());
    assert_eq!(s.run_app(), "m1 v2", "the app is kept");
}

/// A directory named like a test file swapped for a link to another package's directory: the
/// link is followed, as go follows it, on that save and every later one.
#[test]
fn a_package_directory_swapped_for_a_link_is_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Session::start(kdev, go_config(&[]));
    let b = s.patch(
        &[
            ("go.mod", GO_MOD),
            ("main.go", &main_importing("lib_test.go", "m1")),
            ("lib_test.go/lib.go", &pkg_go("lib")),
            ("alt/alt.go", &pkg_go("alt")),
        ],
        &[],
    );
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "m1 lib");
    let b = s.patch_tar(
        tar_with_links(&[], &[("lib_test.go", "alt")]),
        &["lib_test.go"],
    );
    assert!(!b.quick(), "{}", b.log);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "m1 alt");
    for m in ["m2", "m3"] {
        let b = s.patch(&[("main.go", &main_importing("lib_test.go", m))], &[]);
        assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
        assert_eq!(s.run_app(), format!("{m} alt"));
    }
    let b = s.patch(&[("alt/alt.go", &pkg_go("alt2"))], &[]);
    assert_eq!(s.run_app(), "m3 alt2", "{}", b.log);
    assert_go_build_agrees(kdev, "m3 alt2");
}

/// The program of the cache tests: main imports api, api imports util.
fn layered(util: &str, main: &str) -> Vec<(&'static str, String)> {
    vec![
        ("go.mod", GO_MOD.to_string()),
        (
            "main.go",
            format!(
                "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/quick/api\"\n)\n\n\
                 func main() {{ fmt.Println(\"{main}\", api.Name()) }}\n"
            ),
        ),
        (
            "api/api.go",
            "package api\n\nimport \"example.com/quick/util\"\n\n\
             func Name() string { return \"api-\" + util.Name() }\n"
                .to_string(),
        ),
        (
            "util/util.go",
            format!("package util\n\nfunc Name() string {{ return \"{util}\" }}\n"),
        ),
    ]
}

fn borrowed<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(p, c)| (*p, c.as_str())).collect()
}

/// A new session over a tree built before finds every package in the go cache, with no
/// record of any compile. An edit of util, imported by api (unrecorded), must not link api's
/// stale archive: with no record of api the edit takes go build. The cache entries of the
/// unrecorded packages are removed, so the next go build compiles and records them, or,
/// with shadow builds on, a shadow build while the session is idle.
#[test]
fn packages_from_the_go_cache_are_recorded_again_and_never_linked_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let v1 = layered("u1", "m1");
    {
        let mut s = Session::start(kdev, go_config(&[]));
        let b = s.patch(&borrowed(&v1), &[]);
        assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
        assert_eq!(s.run_app(), "m1 api-u1");
    }

    // Without shadow builds: the edit of util takes go build (api has no record).
    {
        let mut s = Session::start(kdev, go_config(&[]));
        let b = s.patch(&borrowed(&v1), &[]);
        assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
        assert!(
            s.s.stderr()
                .contains("came from the build cache with no record"),
            "{}",
            s.s.stderr()
        );
        let v2 = layered("u2", "m1");
        let b = s.patch(&[("util/util.go", &v2[3].1)], &[]);
        assert!(!b.quick(), "{}", b.log);
        assert_eq!(s.run_app(), "m1 api-u2");
        // That go build compiled (and recorded) what it was missing: quick from now on.
        let v3 = layered("u3", "m1");
        let b = s.patch(&[("util/util.go", &v3[3].1)], &[]);
        assert!(b.quick(), "{}", b.log);
        assert_eq!(s.run_app(), "m1 api-u3");
        assert_go_build_agrees(kdev, "m1 api-u3");
    }

    // With shadow builds: one records them while the session is idle (its binary is the
    // running one's, and is not installed), so the first edit is quick already.
    {
        // The go build of u2 above put every package of this tree in the go cache.
        let v2 = layered("u2", "m1");
        let mut s = Session::start(kdev, go_config(&[("KDEV_QUICK_VERIFY", "1")]));
        let b = s.patch(&borrowed(&v2), &[]);
        assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
        assert_eq!(s.run_app(), "m1 api-u2");
        let recorded = "shadow build 1: Succeeded";
        wait_for(BUILD, "the record build", || {
            s.s.stderr().contains(recorded).then_some(())
        });
        let log = s.s.stderr();
        assert!(
            log.contains(
                "shadow build 1: recording packages the last build took from the go cache"
            ) && log.contains("shadow build 1: Succeeded")
                && log.contains(": the same binary"),
            "{log}"
        );
        let v5 = layered("u5", "m1");
        let b = s.patch(&[("util/util.go", &v5[3].1)], &[]);
        assert!(b.quick(), "{}\n{}", b.log, s.s.stderr());
        assert_eq!(s.run_app(), "m1 api-u5");
        assert_go_build_agrees(kdev, "m1 api-u5");
    }
}

/// Every quick binary is proven by the shadow build: the same binary as go build's gives a
/// `BuildVerified` event; a newer save cancels a shadow build.
#[test]
fn the_shadow_build_proves_quick_binaries_and_a_save_cancels_it() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Session::start(kdev, go_config(&[("KDEV_QUICK_VERIFY", "1")]));
    let b = s.patch(&borrowed(&layered("u1", "m1")), &[]);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    let b = s.patch(&[("main.go", &layered("u1", "m2")[1].1)], &[]);
    assert!(b.quick(), "{}", b.log);
    let verified =
        s.s.event_until(BUILD, "the shadow build's verdict", |e| match e {
            kdev_protocol::Event::BuildVerified {
                build_id, verified, ..
            } => Some((*build_id, *verified)),
            _ => None,
        });
    assert_eq!(verified, (2, 1));
    assert_eq!(s.run_app(), "m2 api-u1");

    // A save as soon as the next shadow build starts cancels it.
    let b = s.patch(&[("util/util.go", &layered("u3", "m2")[3].1)], &[]);
    assert!(b.quick(), "{}", b.log);
    let shadow = "shadow build 2: proving quick rebuild 3";
    wait_for(BUILD, shadow, || {
        s.s.stderr().contains(shadow).then_some(())
    });
    let b = s.patch(&[("util/util.go", &layered("u4", "m2")[3].1)], &[]);
    assert!(b.quick(), "{}", b.log);
    assert!(
        s.s.stderr()
            .contains("shadow build 2: cancelled (the tree changed)"),
        "{}",
        s.s.stderr()
    );
    // The next one proves build 4, which holds build 3's edits too.
    let verified = s.s.event_until(BUILD, "the next verdict", |e| match e {
        kdev_protocol::Event::BuildVerified { build_id, .. } => Some(*build_id),
        _ => None,
    });
    assert_eq!(verified, 4);
    assert_eq!(s.run_app(), "m2 api-u4");
}

/// A quick binary that differs from go build's (here: a package outside the synced tree,
/// pulled in by a `replace`, changed behind kdev's back) is replaced by go build's, the app
/// restarted, one warning names the packages, and quick rebuilds stay off.
#[test]
fn a_quick_binary_that_differs_from_go_builds_is_replaced_and_quick_rebuilds_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let ext = tmp.path().join("ext");
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::write(ext.join("go.mod"), "module example.com/ext\n\ngo 1.22\n").unwrap();
    let ext_go = |v: &str| format!("package ext\n\nfunc Name() string {{ return \"{v}\" }}\n");
    std::fs::write(ext.join("ext.go"), ext_go("e1")).unwrap();
    let go_mod = format!(
        "{GO_MOD}\nrequire example.com/ext v0.0.0\n\nreplace example.com/ext => {}\n",
        ext.display()
    );
    let main = |m: &str| {
        format!(
            "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/ext\"\n)\n\n\
             func main() {{ fmt.Println(\"{m}\", ext.Name()) }}\n"
        )
    };
    let mut s = Session::start(kdev, go_config(&[("KDEV_QUICK_VERIFY", "1")]));
    let b = s.patch(&[("go.mod", &go_mod), ("main.go", &main("m1"))], &[]);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert_eq!(s.run_app(), "m1 e1");
    std::fs::write(ext.join("ext.go"), ext_go("e2")).unwrap();
    let b = s.patch(&[("main.go", &main("m2"))], &[]);
    assert!(b.quick(), "{}", b.log);
    let warning =
        s.s.event_until(BUILD, "the shadow build's warning", |e| match e {
            kdev_protocol::Event::Warning { code, message } if code == "quick_build_differs" => {
                Some(message.clone())
            }
            _ => None,
        });
    assert!(
        warning.contains("the quick rebuild of build 2 differs from go build's (packages"),
        "{warning}"
    );
    wait_for(BUILD, "go build's binary", || {
        (s.run_app() == "m2 e2").then_some(())
    });
    let b = s.patch(&[("main.go", &main("m3"))], &[]);
    assert!(!b.quick(), "{}", b.log);
    assert!(
        s.s.stderr()
            .contains("quick rebuilds are off: the quick rebuild of build 2")
    );
    assert_eq!(s.run_app(), "m3 e2");
}

/// The records hold no environment values (a secret in `build.env` appears nowhere), are
/// readable by the controller's user alone, and live outside the kdev directory the app
/// container mounts.
#[test]
fn records_keep_no_secrets_and_only_the_controller_reads_them() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let secret = "s3cr3t-proxy-token-4c1d";
    let mut s = Session::start(
        kdev,
        go_config(&[("KDEV_TEST_TOKEN", secret), ("GONOSUMDB", secret)]),
    );
    let b = s.patch(&borrowed(&layered("u1", "m1")), &[]);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    let b = s.patch(&[("main.go", &layered("u1", "m2")[1].1)], &[]);
    assert!(b.quick(), "{}", b.log);

    let dir = kdev_protocol::Layout::new(kdev).quick_build_dir();
    assert!(!dir.starts_with(kdev), "{}", dir.display());
    let mut files = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
                continue;
            }
            files += 1;
            // Records (and the files kept with them) are 0600; the go command's own outputs
            // (archives, the action graph) are protected by the directory.
            let name = e.file_name().to_string_lossy().into_owned();
            let record = name.starts_with("compile@") || name.starts_with("link");
            if record && !name.ends_with(".a") {
                let mode = meta.permissions().mode();
                assert_eq!(mode & 0o077, 0, "{}", e.path().display());
            }
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                e.path().display()
            );
        }
    }
    assert!(files > 3, "records were written under {}", dir.display());
}

/// Frames of many deletions of absent paths, with quick rebuilds on and with `build: never`:
/// serve's memory stays bounded (the changed set collapses to "go build needed").
#[test]
fn serve_memory_stays_bounded_under_floods_of_deletions() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Session::start(kdev, go_config(&[]));
    let b = s.patch(&borrowed(&layered("u1", "m1")), &[]);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    for frame in 0..3u64 {
        let deletes: Vec<String> = (0..4_000)
            .map(|i| format!("gone/{frame}/{i:06}/absent-file-with-a-long-name.go"))
            .collect();
        s.s.send(&kdev_protocol::ClientMessage::Patch(kdev_protocol::Patch {
            id: 1000 + frame,
            deletes,
            build: kdev_protocol::BuildMode::Never,
            tar: Vec::new(),
        }));
    }
    let b = s.patch(&[("main.go", &layered("u1", "m2")[1].1)], &[]);
    assert_eq!(b.outcome, BuildOutcome::Succeeded, "{}", b.output);
    assert!(!b.quick(), "{}", b.log);
    assert!(
        b.log
            .contains("more files changed than a quick rebuild follows"),
        "{}",
        b.log
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.s.child.id())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(hwm_kb < 100 * 1024, "serve peaked at {hwm_kb} kB");
    let b = s.patch(&[("main.go", &layered("u1", "m3")[1].1)], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "m3 api-u1");
}

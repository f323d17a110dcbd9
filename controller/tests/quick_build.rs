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
/// edits stay quick. A record that cannot be read is removed, and the others still serve.
#[test]
fn a_package_with_assembly_takes_go_build_and_a_bad_record_is_dropped_alone() {
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
    assert!(
        b.log.contains(
            "go build (example.com/quick/asm has files that are not Go source (assembly, .syso, cgo))"
        ),
        "{}",
        b.log
    );
    assert_eq!(s.run_app(), "m1 2 a2");
    let b = s.patch(&[("main.go", &main("m2"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "m2 2 a2");

    // A record cut short (a disk that filled up, say): the next full build drops it alone.
    let bad = kdev.join("run/quick-build/compile@example.com%2Fquick%2Fasm.json");
    assert!(bad.exists());
    std::fs::write(&bad, "{\"argv\": [").unwrap();
    let b = s.patch(&[("notes.txt", "x")], &[]);
    assert!(!b.quick(), "{}", b.log);
    assert!(!bad.exists());
    let b = s.patch(&[("main.go", &main("m3"))], &[]);
    assert!(b.quick(), "{}", b.log);
    assert_eq!(s.run_app(), "m3 2 a2");
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

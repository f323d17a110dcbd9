//! The `kdev` binary as a subprocess, on a copy of examples/gin-hello, where no cluster is
//! needed: plain `cargo test` runs these (the end-to-end tests against a real cluster live in
//! the kdev-tests crate, which `tests/run` adds with `--workspace`).
//!
//! Every run sets `KUBECONFIG` itself, so whatever the machine has configured does not matter.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// examples/gin-hello in the repository.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gin-hello")
}

/// Copy a directory tree (files and directories only).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Run `kdev ARGS` in `dir` with `KUBECONFIG` set to `kubeconfig`.
fn kdev(dir: &Path, args: &[&str], kubeconfig: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdev"))
        .args(args)
        .current_dir(dir)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap()
}

/// As `kdev`: whether it succeeded, and stdout followed by stderr.
fn run_kdev(dir: &Path, args: &[&str], kubeconfig: &Path) -> (bool, String) {
    let out = kdev(dir, args, kubeconfig);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A kubeconfig with one context, `only`, for a server that does not exist.
const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: 'https://127.0.0.1:1'}
users:
- name: someone
  user: {token: not-a-token}
contexts:
- name: only
  context: {cluster: nowhere, user: someone, namespace: default}
current-context: only
";

#[test]
fn malformed_config_and_missing_cluster_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("svc");
    copy_dir(&example(), &project);
    let nowhere = dir.path().join("no-such-dir/kubeconfig");

    std::fs::write(
        project.join("kdev.yaml"),
        "manifests: [k8s/]\nbuild:\n  packge: .\n",
    )
    .unwrap();
    let (ok, out) = run_kdev(&project, &["watch"], &nowhere);
    assert!(!ok);
    assert!(out.contains("kdev.yaml:3:3:"), "{out}");
    assert!(out.contains("unknown field `packge`"), "{out}");
    assert!(
        !out.contains("panicked") && !out.contains("backtrace"),
        "{out}"
    );

    std::fs::write(project.join("kdev.yaml"), "manifests: [k8s/]\n").unwrap();
    let (ok, out) = run_kdev(&project, &["watch"], &nowhere);
    assert!(!ok);
    assert!(out.contains("kubeconfig"), "{out}");
    assert!(
        !out.contains("panicked") && !out.contains("backtrace"),
        "{out}"
    );

    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
    let (ok, out) = run_kdev(
        &project,
        &["watch", "--context", "no-such-context"],
        &kubeconfig,
    );
    assert!(!ok);
    assert!(out.contains("no-such-context"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn print_config_writes_valid_launch_json_without_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("svc");
    copy_dir(&example(), &project);
    let out = kdev(
        &project,
        &["debug", "--print-config", "--port", "4000"],
        &dir.path().join("no-such-dir/kubeconfig"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').unwrap();
    let end = text.find("\n}").unwrap() + 2;
    let v: Value = serde_json::from_str(&text[start..end]).unwrap();
    assert_eq!(v["port"], 4000);
    assert_eq!(
        v["substitutePath"][0]["from"],
        project.canonicalize().unwrap().to_string_lossy().as_ref()
    );
    assert_eq!(v["substitutePath"][0]["to"], "/kdev/src");
}

/// `kdev schema` is valid JSON Schema, accepts the examples' kdev.yaml files, and refuses a
/// misspelt field and a wrong type, as kdev itself does.
#[test]
fn the_schema_accepts_the_examples_and_refuses_wrong_files() {
    let out = Command::new(env!("CARGO_BIN_EXE_kdev"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for example in ["gin-hello", "shop"] {
        let text = std::fs::read_to_string(examples.join(example).join("kdev.yaml")).unwrap();
        let doc: Value = yaml_serde::from_str(&text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{example}/kdev.yaml: {errors:?}");
    }
    for wrong in [
        "build:\n  packge: ./cmd\n",
        "run:\n  ports: [eighty]\n",
        "services:\n  - workload: deployment/x\n",
        "workload: Not_A_Name\n",
    ] {
        let doc: Value = yaml_serde::from_str(wrong).unwrap();
        assert!(
            !validator.is_valid(&doc),
            "the schema must refuse:\n{wrong}"
        );
    }
}

#[test]
fn completions_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kdev"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("watch") && script.contains("take-over"),
            "{shell}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kdev"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(&format!("(protocol {})", kdev_protocol::PROTOCOL_VERSION)),
        "{version}"
    );
}

#[test]
fn init_asks_what_it_cannot_decide_through_flags_when_not_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("gin-hello");
    copy_dir(&example(), &project);
    std::fs::remove_file(project.join("kdev.yaml")).unwrap();
    // A second main package: which one builds deployment/gin-hello cannot be told by name.
    std::fs::create_dir_all(project.join("cmd/migrate")).unwrap();
    std::fs::write(
        project.join("cmd/migrate/main.go"),
        "package main\n\nfunc main() {}\n",
    )
    .unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();

    let out = kdev(&project, &["init"], &kubeconfig);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("deployment/gin-hello (one of ., ./cmd/migrate)")
            && err.contains("--service WORKLOAD=PACKAGE"),
        "{err}"
    );
    assert!(!project.join("kdev.yaml").exists());

    let (ok, text) = run_kdev(
        &project,
        &["init", "--service", "gin-hello=./cmd/migrate"],
        &kubeconfig,
    );
    assert!(ok, "{text}");
    let written = std::fs::read_to_string(project.join("kdev.yaml")).unwrap();
    assert!(written.contains("package: ./cmd/migrate"), "{written}");
    assert!(project.join(".kdev/kdev.schema.json").is_file());

    let (ok, text) = run_kdev(&project, &["init", "--service", "nope=."], &kubeconfig);
    assert!(
        !ok && text.contains("--force"),
        "an existing file comes first: {text}"
    );
    let (ok, text) = run_kdev(
        &project,
        &["init", "--force", "--service", "nope=."],
        &kubeconfig,
    );
    assert!(
        !ok && text.contains("no workload nope (they have: deployment/gin-hello)"),
        "{text}"
    );
    let (ok, text) = run_kdev(
        &project,
        &["init", "--force", "--service", "gin-hello=."],
        &kubeconfig,
    );
    assert!(ok, "{text}");
    assert!(
        std::fs::read_to_string(project.join("kdev.yaml"))
            .unwrap()
            .contains("package: .\n")
    );
}

//! The sync engine against a real `kdev-controller serve` on this machine (no cluster): the
//! controller runs as a child process with its stdio as the session's stream, exactly as it
//! does behind the exec in a pod. Each test ends by comparing the controller's tree with the
//! local one (kind, content, permission bits, link targets).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use kdev_protocol::{BuildConfig, SessionConfig};

use super::*;
use crate::pod::session::{ControllerSession, SessionError};
use crate::ui::Ui;

/// The controller binary of this workspace, built if it is not there yet.
fn controller_bin() -> PathBuf {
    // target/<profile>/deps/kdev-<hash> → target/<profile>/kdev-controller
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("kdev-controller");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = std::process::Command::new(cargo)
            .args(["build", "-p", "kdev-controller", "--bin", "kdev-controller"])
            .status()
            .expect("running cargo build");
        assert!(built.success(), "building kdev-controller failed");
    }
    bin
}

/// A local `serve` with its kdev dir in `dir`, and a session to it.
async fn serve(dir: &Path) -> ControllerSession {
    start_serve(dir, |_| {})
        .await
        .expect("handshake with the local serve")
}

/// A controller of another protocol refuses the session: an error of its own (which the reload
/// loop does not retry), naming both versions.
#[tokio::test]
async fn a_controller_of_another_protocol_is_a_version_mismatch() {
    let (_tmp, _local, kdev) = project();
    let err = start_serve(&kdev, |h| h.protocol_version -= 1)
        .await
        .err()
        .expect("a session with another protocol");
    let SessionError::VersionMismatch(message) = &err else {
        panic!("not a version mismatch: {err}");
    };
    let v = kdev_protocol::PROTOCOL_VERSION;
    assert!(
        message.contains(&format!("protocol {}", v - 1)),
        "{message}"
    );
    assert!(message.contains(&format!("protocol {v}")), "{message}");
}

async fn start_serve(
    dir: &Path,
    change_hello: impl FnOnce(&mut kdev_protocol::Hello),
) -> Result<ControllerSession, SessionError> {
    let mut child = tokio::process::Command::new(controller_bin())
        .arg("serve")
        .arg(format!("--kdev-dir={}", dir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting kdev-controller serve");
    let (stdout, stdin, stderr) = (
        child.stdout.take().expect("piped"),
        child.stdin.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let config = SessionConfig {
        sync_root: Some(dir.join("src").to_string_lossy().into_owned()),
        // No Go here: a "build" that writes a binary, so the tree's build state is exercised.
        build: BuildConfig {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                "printf app > {output}".into(),
            ]),
            ..Default::default()
        },
        forward_app_output: false,
        ..Default::default()
    };
    let mut hello = kdev_protocol::handshake::hello("engine test", config);
    change_hello(&mut hello);
    ControllerSession::start(stdout, stdin, stderr, hello, Box::new(child), None).await
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File(Vec<u8>, u32),
    Dir,
    Link(String),
    Other,
}

/// Every path below `root` (lstat), without `skip`.
fn tree_of(root: &Path, skip: &[&str]) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, Node>) {
        for e in std::fs::read_dir(dir).expect("readable").flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("below")
                .to_string_lossy()
                .into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let node = if m.file_type().is_symlink() {
                Node::Link(
                    std::fs::read_link(&p)
                        .expect("link")
                        .to_string_lossy()
                        .into(),
                )
            } else if m.is_dir() {
                walk(root, &p, skip, out);
                Node::Dir
            } else if m.is_file() {
                Node::File(
                    std::fs::read(&p).expect("read"),
                    m.permissions().mode() & 0o777,
                )
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

fn engine(root: &Path) -> SyncEngine {
    let rules = IgnoreRules::load(root, &[]).expect("rules");
    SyncEngine::new(root, rules, BuildMode::Auto)
}

fn project() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let local = tmp.path().join("project");
    let kdev = tmp.path().join("kdev");
    std::fs::create_dir_all(local.join("handlers")).expect("mkdir");
    std::fs::create_dir_all(&kdev).expect("mkdir");
    std::fs::write(local.join("main.go"), "package main\n").expect("write");
    std::fs::write(local.join("handlers/hello.go"), "package handlers\n").expect("write");
    std::fs::write(local.join("run.sh"), "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(local.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::os::unix::fs::symlink("handlers/hello.go", local.join("link.go")).expect("symlink");
    (tmp, local, kdev)
}

fn set(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    paths.iter().cloned().collect()
}

#[tokio::test]
async fn the_pods_tree_follows_every_kind_of_change() {
    let (_tmp, local, kdev) = project();
    let ui = Ui::plain();
    let mut session = serve(&kdev).await;
    let mut e = engine(&local);
    // Something stale in the pod's tree is removed by the reconcile.
    std::fs::create_dir_all(kdev.join("src/stale")).expect("mkdir");
    std::fs::write(kdev.join("src/stale/old.go"), "x").expect("write");

    let first = e
        .initial_sync(&mut session, &ui)
        .await
        .expect("initial sync");
    assert!(!first.in_sync);
    assert_eq!(first.files, 3);
    assert_eq!(tree_of(&kdev.join("src"), &[]), tree_of(&local, &[]));

    // An edit, a new nested file, a deletion, a rename, a lost executable bit.
    std::fs::write(local.join("main.go"), "package main // v2\n").expect("write");
    std::fs::create_dir_all(local.join("internal/deep")).expect("mkdir");
    std::fs::write(local.join("internal/deep/x.go"), "package deep\n").expect("write");
    std::fs::remove_file(local.join("link.go")).expect("rm");
    std::fs::rename(
        local.join("handlers/hello.go"),
        local.join("handlers/greet.go"),
    )
    .expect("mv");
    std::fs::set_permissions(local.join("run.sh"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let changed = set(&[
        local.join("main.go"),
        local.join("internal"),
        local.join("link.go"),
        local.join("handlers/hello.go"),
        local.join("handlers/greet.go"),
        local.join("run.sh"),
    ]);
    let synced = e
        .sync_paths(&mut session, &changed, &ui)
        .await
        .expect("sync")
        .expect("something was applied");
    assert!(
        synced.changed.contains(&"-link.go".to_string()),
        "{:?}",
        synced.changed
    );
    assert_eq!(tree_of(&kdev.join("src"), &[]), tree_of(&local, &[]));

    // The same paths again: nothing to send.
    assert!(
        e.sync_paths(&mut session, &changed, &ui)
            .await
            .expect("sync")
            .is_none()
    );

    // A directory deleted as a whole.
    std::fs::remove_dir_all(local.join("internal")).expect("rm -r");
    e.sync_paths(&mut session, &set(&[local.join("internal")]), &ui)
        .await
        .expect("sync");
    assert_eq!(tree_of(&kdev.join("src"), &[]), tree_of(&local, &[]));
}

#[tokio::test]
async fn what_cannot_be_synced_is_left_out_and_the_rest_syncs() {
    let (_tmp, local, kdev) = project();
    let ui = Ui::plain();
    let mut session = serve(&kdev).await;
    let mut e = engine(&local);
    std::os::unix::fs::symlink("/etc", local.join("etc-link")).expect("symlink");
    let fifo =
        std::ffi::CString::new(local.join("fifo").to_string_lossy().as_bytes()).expect("a path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    e.initial_sync(&mut session, &ui)
        .await
        .expect("initial sync");
    let skip = ["etc-link", "fifo"];
    assert_eq!(tree_of(&kdev.join("src"), &[]), tree_of(&local, &skip));
    assert_eq!(e.warned.len(), 2, "each is named once: {:?}", e.warned);

    // Later changes still sync; the unsyncable paths are not named again.
    std::fs::write(local.join("main.go"), "package main // v3\n").expect("write");
    let paths = set(&[
        local.join("main.go"),
        local.join("fifo"),
        local.join("etc-link"),
    ]);
    e.sync_paths(&mut session, &paths, &ui).await.expect("sync");
    assert_eq!(tree_of(&kdev.join("src"), &[]), tree_of(&local, &skip));
    assert_eq!(e.warned.len(), 2);
}

#[tokio::test]
async fn a_new_engine_on_an_unchanged_tree_finds_the_pod_in_sync() {
    let (_tmp, local, kdev) = project();
    let ui = Ui::plain();
    {
        let mut session = serve(&kdev).await;
        let first = engine(&local)
            .initial_sync(&mut session, &ui)
            .await
            .expect("initial sync");
        assert!(
            first.listing_sent,
            "an empty pod's digest differs: {first:?}"
        );
        // Let the (fake) build finish, so the tree is recorded as built.
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let ev = tokio::time::timeout_at(deadline.into(), session.next_event())
                .await
                .expect("a build event within 20 s")
                .expect("the stream");
            if let kdev_protocol::ServerMessage::Event {
                event: kdev_protocol::Event::BuildFinished { .. },
                ..
            } = ev
            {
                break;
            }
        }
        session.close().await;
    }
    let mut session = serve(&kdev).await;
    let again = engine(&local)
        .initial_sync(&mut session, &ui)
        .await
        .expect("initial sync");
    assert!(
        again.in_sync,
        "nothing to send or build after a restart: {again:?}"
    );
    // Equal digests: the pod's listing itself never had to travel.
    assert!(!again.listing_sent, "{again:?}");
}

/// A sync larger than the in-flight window goes out as pipelined patches, which the pod applies
/// in the order sent: the tree ends up equal (a directory replaced by a file of the same name:
/// its deletion came first), and the one build starts after the last patch.
#[tokio::test]
async fn a_large_sync_is_pipelined_and_applied_in_order() {
    let (_tmp, local, kdev) = project();
    let ui = Ui::plain();
    std::fs::create_dir_all(kdev.join("src/x/deep")).expect("mkdir");
    std::fs::write(kdev.join("src/x/deep/a.go"), "x").expect("write");
    std::fs::write(local.join("x"), "a file now").expect("write");
    // 24 MiB in 3 MiB files: one patch each, more than the window holds.
    std::fs::create_dir_all(local.join("big")).expect("mkdir");
    for i in 0..8u8 {
        std::fs::write(local.join(format!("big/{i}.bin")), vec![i; 3 << 20]).expect("write");
    }
    let mut session = serve(&kdev).await;
    let mut e = engine(&local);
    let s = e
        .initial_sync(&mut session, &ui)
        .await
        .expect("initial sync");
    assert_eq!((s.sent_files, s.deleted), (15, 1));
    assert!(
        session.peak_in_flight() > 1,
        "patches were sent one at a time"
    );
    assert!(
        session.peak_in_flight() < 8,
        "the window bounds what is on the way"
    );
    assert_eq!(tree_of(&kdev.join("src"), &[]), tree_of(&local, &[]));
    let mut builds = 0;
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), session.next_event())
            .await
            .expect("a build within 20 s")
            .expect("the stream");
        match ev {
            kdev_protocol::ServerMessage::Event {
                event: kdev_protocol::Event::BuildStarted { .. },
                ..
            } => builds += 1,
            kdev_protocol::ServerMessage::Event {
                event: kdev_protocol::Event::BuildFinished { .. },
                ..
            } => break,
            _ => {}
        }
    }
    assert_eq!(builds, 1);
}

#[test]
fn what_the_pod_could_not_list_is_deleted_or_replaced() {
    let file = |path: &str, hash: Option<&str>| Entry {
        path: path.into(),
        kind: kdev_protocol::EntryKind::File,
        size: 1,
        mode: 0o644,
        hash: hash.map(String::from),
        target: None,
    };
    let skipped = |path: &str| kdev_protocol::Refused {
        path: path.into(),
        reason: "not a regular file, directory or symlink".into(),
    };
    let remote = kdev_protocol::ReconcileResult {
        id: 1,
        root: "/kdev/src".into(),
        entries: vec![file("main.go", Some("h"))],
        skipped: vec![skipped("pipe"), skipped("data.bin"), skipped("../bad")],
        elapsed_ms: 0,
        cached: 0,
        more: false,
    };
    let local = vec![file("main.go", Some("h")), file("data.bin", Some("d"))];
    let plan = diff(&local, &pod_listing(remote));
    assert_eq!(plan.delete, ["pipe"]);
    assert_eq!(plan.send, ["data.bin"]);
}

//! A build whose binary is byte-identical to the one the app runs (a monorepo's other service
//! changed) is not installed and does not restart the app; anything else installs and
//! restarts as before. `supervise` and `serve` run as real processes; builds are `sh` scripts
//! writing known bytes, except the last test, which uses the real Go toolchain.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use kdev_protocol::{
    AppState, BuildConfig, BuildMode, BuildOutcome, ClientMessage, Event, Patch, Ping,
    ServerMessage, SessionConfig,
};

const T: Duration = Duration::from_secs(30);
/// A cold `go build` (empty GOCACHE) on a busy two-core machine.
const GO_BUILD: Duration = Duration::from_secs(600);

/// The app: a shell script that stays up. Its last line makes versions differ.
fn app_script(version: &str) -> String {
    format!("#!/bin/sh\necho \"app {version} up\"\nexec sleep 1000\n# {version}\n")
}

fn send_patch(s: &mut Serve, id: u64, files: &[(&str, &str)]) {
    s.send(&ClientMessage::Patch(Patch {
        id,
        deletes: vec![],
        build: BuildMode::Auto,
        tar: tar_of(files),
    }));
}

/// The build copies the synced `app.sh` to the output: the same `app.sh`, the same bytes,
/// whatever else changed (`other.go` stands for the other service's code).
fn copy_build() -> SessionConfig {
    SessionConfig {
        build: BuildConfig {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                "cp app.sh {output} && chmod 755 {output}".into(),
            ]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// (outcome, output, installed, unchanged) of a build.
fn build_finished(
    s: &mut Serve,
    build_id: u64,
    timeout: Duration,
) -> (BuildOutcome, String, bool, bool) {
    s.event_until(
        timeout,
        &format!("build {build_id} to finish"),
        |e| match e {
            Event::BuildFinished {
                build_id: b,
                outcome,
                output,
                installed,
                unchanged,
                ..
            } if *b == build_id => Some((*outcome, output.clone(), *installed, *unchanged)),
            _ => None,
        },
    )
}

fn restarted(s: &mut Serve, build_id: u64) -> u32 {
    s.event_until(
        T,
        &format!("the restart after build {build_id}"),
        |e| match e {
            Event::Restarted {
                build_id: Some(b),
                pid,
                ..
            } if *b == build_id => Some(*pid),
            Event::RestartFailed { reason, .. } => panic!("restart failed: {reason}"),
            _ => None,
        },
    )
}

/// Let anything that would follow show up (the app watcher polls every 25 ms), then make
/// sure everything serve sent so far was received.
fn settle(s: &mut Serve, ping: u64) {
    std::thread::sleep(Duration::from_millis(500));
    s.send(&ClientMessage::Ping(Ping { id: ping }));
    s.recv_until(T, "pong", |m| {
        matches!(m, ServerMessage::Pong(Ping { id }) if *id == ping).then_some(())
    });
}

fn restarts_seen(s: &Serve) -> Vec<Event> {
    s.seen
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Event { event, .. } => Some(event),
            _ => None,
        })
        .filter(|e| {
            matches!(
                e,
                Event::Restarted { .. } | Event::RestartFailed { .. } | Event::AppStarted { .. }
            )
        })
        .cloned()
        .collect()
}

fn inode(p: &Path) -> u64 {
    fs::metadata(p).unwrap().ino()
}

/// A supervisor running `bin/app` once it exists, and a serve session building with
/// [`copy_build`].
fn start(kdev: &Path, supervisor_flags: &[&str]) -> (Supervisor, Serve) {
    let app = kdev.join("bin/app").to_string_lossy().into_owned();
    let mut flags = vec!["--wait-for", &app, "--grace-period", "2s"];
    flags.extend_from_slice(supervisor_flags);
    let sup = Supervisor::start(kdev, &flags, &[&app], &[]);
    wait_for(T, "the supervisor's PID file", || {
        kdev.join("run/supervisor.pid").exists().then_some(())
    });
    let mut s = Serve::start(kdev, &[]);
    s.hello(copy_build());
    (sup, s)
}

/// Build 1 from `app.sh` v1: installed, started by the supervisor. Returns the app's PID.
fn first_build(kdev: &Path, s: &mut Serve) -> u32 {
    send_patch(s, 1, &[("app.sh", &app_script("v1")), ("other.go", "1")]);
    let (outcome, output, installed, unchanged) = build_finished(s, 1, T);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed && !unchanged);
    let pid = restarted(s, 1);
    let st = read_status(kdev).unwrap();
    assert_eq!((st.state, st.pid), (AppState::Running, Some(pid)));
    // The supervisor recorded which file it started.
    let id = st
        .app_binary
        .expect("the status names the binary the app was started from");
    assert_eq!(id.ino, inode(&kdev.join("bin/app")));
    assert_eq!(id.size, app_script("v1").len() as u64);
    pid
}

#[test]
fn an_identical_binary_is_not_installed_and_the_app_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let (_sup, mut s) = start(kdev, &[]);
    let pid1 = first_build(kdev, &mut s);
    let starts = read_status(kdev).unwrap().starts;
    let ino = inode(&kdev.join("bin/app"));
    settle(&mut s, 100);
    let before = restarts_seen(&s).len();

    // The other service's code changed: rebuilt, same bytes.
    send_patch(&mut s, 2, &[("other.go", "2")]);
    let (outcome, output, installed, unchanged) = build_finished(&mut s, 2, T);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(unchanged, "an identical binary is reported unchanged");
    assert!(!installed);
    settle(&mut s, 101);
    let after = &restarts_seen(&s)[before..];
    assert!(
        after.is_empty(),
        "no restart after an unchanged build: {after:?}"
    );
    let st = read_status(kdev).unwrap();
    assert_eq!(
        (st.state, st.pid, st.starts),
        (AppState::Running, Some(pid1), starts)
    );
    assert!(process_alive(pid1));
    assert_eq!(inode(&kdev.join("bin/app")), ino, "not renamed over");
    assert!(!kdev.join("bin/app.next").exists());
    assert!(
        s.stderr().contains("identical to the running binary"),
        "{}",
        s.stderr()
    );
    // The tree counts as built, as after an install.
    let state = fs::read_to_string(kdev.join("run/build-state.json")).unwrap();
    assert!(state.contains(r#""dirty":false"#), "{state}");

    // The app's own code changed: installed and restarted as before.
    send_patch(&mut s, 3, &[("app.sh", &app_script("v2"))]);
    let (outcome, output, installed, unchanged) = build_finished(&mut s, 3, T);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed && !unchanged);
    let pid3 = restarted(&mut s, 3);
    assert_ne!(pid3, pid1);
    assert_ne!(inode(&kdev.join("bin/app")), ino);
    assert_eq!(
        fs::read_to_string(kdev.join("bin/app")).unwrap(),
        app_script("v2")
    );

    // A new session is not told to build.
    s.send(&ClientMessage::Bye);
    assert_eq!(s.wait_exit(T), 0);
    let mut s = Serve::start(kdev, &[]);
    assert!(!s.hello(copy_build()).needs_build);
}

#[test]
fn an_identical_binary_starts_an_app_that_is_not_running() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    // A long backoff: a crashed app stays down until someone restarts it.
    let (_sup, mut s) = start(kdev, &["--backoff-min", "10m", "--backoff-max", "10m"]);
    let pid1 = first_build(kdev, &mut s);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(T, "the app to be in backoff", || {
        read_status(kdev).filter(|st| st.state == AppState::Backoff)
    });

    send_patch(&mut s, 2, &[("other.go", "2")]);
    let (outcome, output, installed, unchanged) = build_finished(&mut s, 2, T);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(
        installed && !unchanged,
        "the app is down: an identical binary is installed and started"
    );
    let pid2 = restarted(&mut s, 2);
    assert_ne!(pid2, pid1);
    assert!(process_alive(pid2));
    assert!(
        s.stderr()
            .contains("installing (the app is not running (it exited, waiting to start again)"),
        "{}",
        s.stderr()
    );
}

#[test]
fn an_identical_binary_restarts_an_app_started_from_an_older_one() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let (_sup, mut s) = start(kdev, &[]);
    let pid1 = first_build(kdev, &mut s);
    // As an install whose restart failed leaves it: bin/app holds v2, the app still runs v1.
    let staged = kdev.join("bin/staged");
    fs::write(&staged, app_script("v2")).unwrap();
    fs::rename(&staged, kdev.join("bin/app")).unwrap();

    // A build of v2: the same bytes as bin/app, but not what the app runs.
    send_patch(&mut s, 2, &[("app.sh", &app_script("v2"))]);
    let (outcome, output, installed, unchanged) = build_finished(&mut s, 2, T);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed && !unchanged);
    let pid2 = restarted(&mut s, 2);
    assert_ne!(pid2, pid1);
    assert!(
        s.stderr()
            .contains("the running app was not started from the installed binary"),
        "{}",
        s.stderr()
    );
}

#[test]
fn an_identical_binary_without_a_supervisor_is_installed_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    fs::create_dir_all(kdev.join("bin")).unwrap();
    fs::write(kdev.join("bin/app"), app_script("v1")).unwrap();
    let mut s = Serve::start(kdev, &[]);
    s.hello(copy_build());
    send_patch(&mut s, 1, &[("app.sh", &app_script("v1"))]);
    let (outcome, output, installed, unchanged) = build_finished(&mut s, 1, T);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed && !unchanged);
    let reason = s.event_until(T, "the restart failure", |e| match e {
        Event::RestartFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.contains("supervisor.pid"), "{reason}");
}

// ------------------------------------------------------------------------------------------
// The real Go toolchain
// ------------------------------------------------------------------------------------------

const GO_MOD: &str = "module example.com/mono\n\ngo 1.22\n";

fn service(name: &str, version: &str) -> String {
    format!(
        r#"package main

import (
	"fmt"
	"time"
)

func main() {{
	fmt.Println("{name} {version} up")
	for {{
		time.Sleep(time.Hour)
	}}
}}
"#
    )
}

/// A monorepo of two services, the gateway's pod: a change to `cmd/orders` rebuilds the
/// gateway with the real `go build` (default command, GOFLAGS and the user's go env file
/// out of the way, an empty GOCACHE), which gives the same bytes, so the gateway keeps
/// running; a change to the gateway itself installs and restarts it. The same holds after a
/// quick rebuild of the gateway, whose bytes differ from `go build`'s in the build ID only.
#[test]
fn a_real_go_rebuild_of_unchanged_sources_gives_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let gocache = tempfile::tempdir().unwrap();
    let app = kdev.join("bin/app").to_string_lossy().into_owned();
    let _sup = Supervisor::start(
        kdev,
        &["--wait-for", &app, "--grace-period", "2s"],
        &[&app],
        &[],
    );
    wait_for(T, "the supervisor's PID file", || {
        kdev.join("run/supervisor.pid").exists().then_some(())
    });
    let mut s = Serve::start_with_env(
        kdev,
        &["--gocache", gocache.path().to_str().unwrap()],
        // GOENV=off: no `go env -w` settings of this machine (its GOFLAGS) apply.
        &[
            ("GOENV", "off"),
            ("GOTOOLCHAIN", "local"),
            ("GOPROXY", "off"),
        ],
        &["GOFLAGS"],
    );
    s.hello(SessionConfig {
        build: BuildConfig {
            package: Some("./cmd/gateway".into()),
            ..Default::default()
        },
        ..Default::default()
    });

    send_patch(
        &mut s,
        1,
        &[
            ("go.mod", GO_MOD),
            ("cmd/orders/main.go", &service("orders", "v1")),
            ("cmd/gateway/main.go", &service("gateway", "v1")),
        ],
    );
    let (outcome, output, installed, _) = build_finished(&mut s, 1, GO_BUILD);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed);
    let pid1 = restarted(&mut s, 1);
    let built_once = fs::read(kdev.join("bin/app")).unwrap();

    send_patch(
        &mut s,
        2,
        &[("cmd/orders/main.go", &service("orders", "v2"))],
    );
    let (outcome, output, installed, unchanged) = build_finished(&mut s, 2, GO_BUILD);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(
        unchanged && !installed,
        "go build of unchanged sources must give identical bytes; serve's log:\n{}",
        s.stderr()
    );
    settle(&mut s, 100);
    assert_eq!(read_status(kdev).unwrap().pid, Some(pid1));
    assert_eq!(fs::read(kdev.join("bin/app")).unwrap(), built_once);

    send_patch(
        &mut s,
        3,
        &[("cmd/gateway/main.go", &service("gateway", "v2"))],
    );
    let (outcome, output, installed, unchanged) = build_finished(&mut s, 3, GO_BUILD);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed && !unchanged);
    let pid3 = restarted(&mut s, 3);
    assert_ne!(pid3, pid1);
    assert_ne!(fs::read(kdev.join("bin/app")).unwrap(), built_once);

    // The gateway again: a quick rebuild (compile and link without the go command).
    send_patch(
        &mut s,
        4,
        &[("cmd/gateway/main.go", &service("gateway", "v3"))],
    );
    let (outcome, output, installed, _) = build_finished(&mut s, 4, GO_BUILD);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed);
    assert!(
        s.stderr().contains("build 4: quick rebuild"),
        "{}",
        s.stderr()
    );
    let pid4 = restarted(&mut s, 4);
    assert_ne!(pid4, pid3);
    let quick = fs::read(kdev.join("bin/app")).unwrap();

    // Then the other service: `go build` of the same gateway sources differs from the quick
    // binary in the build ID only, which does not count.
    send_patch(
        &mut s,
        5,
        &[("cmd/orders/main.go", &service("orders", "v3"))],
    );
    let (outcome, output, installed, unchanged) = build_finished(&mut s, 5, GO_BUILD);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(
        unchanged && !installed,
        "a go build of what a quick rebuild built is the same program; serve's log:\n{}",
        s.stderr()
    );
    settle(&mut s, 101);
    assert_eq!(read_status(kdev).unwrap().pid, Some(pid4));
    assert_eq!(fs::read(kdev.join("bin/app")).unwrap(), quick);
}

/// A new pod: the sidecar's build (from a warm cache) finished before the main container's
/// supervisor came up. It used to fail at once ("no supervisor to restart the app"), although
/// the supervisor then started the new binary; now the restart waits for the supervisor.
#[test]
fn a_build_that_beats_the_supervisor_is_reported_restarted_once_it_comes_up() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    fs::create_dir_all(kdev.join("bin")).unwrap();
    let mut s = Serve::start(kdev, &[]);
    s.hello(copy_build());
    send_patch(&mut s, 1, &[("app.sh", &app_script("v1"))]);
    let (outcome, output, installed, _) = build_finished(&mut s, 1, T);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed);
    std::thread::sleep(Duration::from_secs(2));
    let app = kdev.join("bin/app");
    let wait_for = format!("--wait-for={}", app.display());
    let sup = Supervisor::start(kdev, &[&wait_for], &[app.to_str().unwrap()], &[]);
    let pid = s.event_until(T, "the restart", |e| match e {
        Event::Restarted { pid, .. } => Some(*pid),
        Event::RestartFailed { reason, .. } => panic!("the restart failed: {reason}"),
        _ => None,
    });
    assert_eq!(sup.wait_running(0, T).pid, Some(pid));
}

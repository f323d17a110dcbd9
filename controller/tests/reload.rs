//! The whole in-pod loop, locally: `supervise` runs the app, `serve` receives patches, builds
//! them with the real Go toolchain, swaps the binary, restarts the app and reports readiness.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use kdev_protocol::{
    BuildConfig, BuildMode, BuildOutcome, ClientMessage, Event, Patch, Ping, ServerMessage,
    SessionConfig, Stream,
};

/// A cold `go build` of net/http on a busy two-core machine can take minutes.
const BUILD: Duration = Duration::from_secs(600);
const T: Duration = Duration::from_secs(60);

fn main_go(version: &str) -> String {
    format!(
        r#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {{
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {{
		fmt.Fprint(w, "{version}")
	}})
	fmt.Println("listening {version}")
	if err := http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil); err != nil {{
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}}
}}
"#
    )
}

fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the app");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn patch_build_restart_ready_with_the_real_go_toolchain() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let port = free_port();
    let port_s = port.to_string();
    let app = kdev.join("bin/app").to_string_lossy().into_owned();
    let sup = Supervisor::start(
        kdev,
        &["--wait-for", &app, "--grace-period", "5s"],
        &[&app],
        &[("PORT", port_s.as_str())],
    );
    wait_for(T, "the supervisor's PID file", || {
        kdev.join("run/supervisor.pid").exists().then_some(())
    });

    let gocache = gocache();
    let mut s = Serve::start(kdev, &["--gocache", gocache.to_str().unwrap()]);
    let cfg = SessionConfig {
        app_port: Some(port),
        build: BuildConfig {
            env: [
                ("GOFLAGS".to_string(), "-mod=mod".to_string()),
                ("GOPROXY".to_string(), "off".to_string()),
                ("GOTOOLCHAIN".to_string(), "local".to_string()),
            ]
            .into(),
            ..Default::default()
        },
        ready_timeout_ms: Some(60_000),
        ..Default::default()
    };
    let w = s.hello(cfg);
    assert!(w.needs_build && !w.app_binary_present);
    assert_eq!(w.supervisor_pid, Some(sup.pid()));

    // First sync: the supervisor is waiting for the binary; the build makes it start.
    let go_mod = "module example.com/hello\n\ngo 1.22\n";
    let v1 = main_go("v1");
    s.send(&ClientMessage::Patch(Patch {
        id: 1,
        deletes: vec![],
        build: BuildMode::Auto,
        tar: tar_of(&[("go.mod", go_mod), ("main.go", &v1)]),
    }));
    let (outcome, output) = s.event_until(BUILD, "build 1", |e| match e {
        Event::BuildFinished {
            build_id: 1,
            outcome,
            output,
            ..
        } => Some((*outcome, output.clone())),
        _ => None,
    });
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    let pid1 = s.event_until(T, "the app to start", |e| match e {
        Event::Restarted {
            build_id: Some(1),
            pid,
            ..
        } => Some(*pid),
        Event::RestartFailed { reason, .. } => panic!("restart failed: {reason}"),
        _ => None,
    });
    s.event_until(T, "the app to be ready", |e| match e {
        Event::Ready {
            build_id: Some(1),
            port: p,
            pid,
            ..
        } if *p == port && *pid == pid1 => Some(()),
        Event::NotReady { reason, .. } => panic!("not ready: {reason}"),
        _ => None,
    });
    assert_eq!(get(port), "v1");

    // An edit: rebuilt, restarted with a new PID, serving the new code.
    let v2 = main_go("v2");
    s.send(&ClientMessage::Patch(Patch {
        id: 2,
        deletes: vec![],
        build: BuildMode::Auto,
        tar: tar_of(&[("main.go", &v2)]),
    }));
    let (outcome, output) = s.event_until(BUILD, "build 2", |e| match e {
        Event::BuildFinished {
            build_id: 2,
            outcome,
            output,
            ..
        } => Some((*outcome, output.clone())),
        _ => None,
    });
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    let (pid2, stop_ms) = s.event_until(T, "the restart", |e| match e {
        Event::Restarted {
            build_id: Some(2),
            pid,
            stop_ms,
            ..
        } => Some((*pid, *stop_ms)),
        Event::RestartFailed { reason, .. } => panic!("restart failed: {reason}"),
        _ => None,
    });
    assert_ne!(pid1, pid2);
    assert!(stop_ms.is_some());
    let since_signal = s.event_until(T, "ready after the restart", |e| match e {
        Event::Ready {
            build_id: Some(2),
            since_signal_ms,
            ..
        } => Some(*since_signal_ms),
        Event::NotReady { reason, .. } => panic!("not ready: {reason}"),
        _ => None,
    });
    assert!(since_signal < 30_000);
    assert_eq!(get(port), "v2");
    // The old process's stop was reported as an expected exit; output lines were forwarded.
    s.event_seen_or_until(T, "the old app's exit", |e| match e {
        Event::AppExited {
            pid,
            expected: true,
            ..
        } if *pid == pid1 => Some(()),
        _ => None,
    });
    s.event_seen_or_until(T, "the new app's output", |e| match e {
        Event::AppOutput {
            stream: Stream::Stdout,
            line,
            pid,
        } if line == "listening v2" && *pid == pid2 => Some(()),
        _ => None,
    });

    // A compile error: reported with paths relative to the sync root; the app keeps running.
    let broken = v2.replace(
        "fmt.Println(\"listening v2\")",
        "fmt.Println(\"listening v2\"",
    );
    s.send(&ClientMessage::Patch(Patch {
        id: 3,
        deletes: vec![],
        build: BuildMode::Auto,
        tar: tar_of(&[("main.go", &broken)]),
    }));
    let (outcome, output) = s.event_until(BUILD, "build 3", |e| match e {
        Event::BuildFinished {
            build_id: 3,
            outcome,
            output,
            ..
        } => Some((*outcome, output.clone())),
        _ => None,
    });
    assert_eq!(outcome, BuildOutcome::Failed);
    assert!(output.contains("main.go:"), "{output}");
    assert!(
        !output.contains(&kdev.to_string_lossy().to_string()),
        "absolute sync-root paths must be stripped: {output}"
    );
    s.send(&ClientMessage::Ping(Ping { id: 9 }));
    s.recv_until(T, "pong", |m| {
        matches!(m, ServerMessage::Pong(Ping { id: 9 })).then_some(())
    });
    assert!(
        !s.seen.iter().any(|m| matches!(
            m,
            ServerMessage::Event {
                event: Event::Restarted {
                    build_id: Some(3),
                    ..
                },
                ..
            }
        )),
        "a failed build must not restart the app"
    );
    assert_eq!(get(port), "v2");
    assert_eq!(read_status(kdev).unwrap().pid, Some(pid2));

    // The app crashing on its own is reported with its exit code.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid2 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let sig = s.event_until(T, "the crash", |e| match e {
        Event::AppExited {
            pid,
            expected: false,
            signal,
            next_start_in_ms,
            ..
        } if *pid == pid2 => {
            assert!(next_start_in_ms.is_some());
            Some(*signal)
        }
        _ => None,
    });
    assert_eq!(sig, Some(9));
    s.event_until(T, "the automatic restart", |e| {
        matches!(e, Event::AppStarted { .. }).then_some(())
    });

    s.close_stdin();
    assert_eq!(s.wait_exit(T), 0);
}

//! `kdev-controller supervise`, run for real against small shell-script apps.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use kdev_protocol::AppState;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

/// Install a shell-script "binary" the way serve does: write app.next, rename over app.
fn install_app(kdev: &Path, script: &str) {
    let bin = kdev.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let next = bin.join("app.next");
    fs::write(&next, format!("#!/bin/sh\n{script}\n")).unwrap();
    fs::set_permissions(&next, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&next, bin.join("app")).unwrap();
}

fn app_path(kdev: &Path) -> String {
    kdev.join("bin/app").to_string_lossy().into_owned()
}

#[test]
fn waits_for_the_binary_then_sighup_restarts_with_new_pid_and_rebuilt_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let app = app_path(kdev);
    let sup = Supervisor::start(
        kdev,
        &["--wait-for", &app, "--grace-period", "5s"],
        &[&app],
        &[],
    );
    // Nothing to run yet: the supervisor waits, says so once, and writes its PID file.
    let pid_file = kdev.join("run/supervisor.pid");
    let pid: u32 = wait_for(T, "the PID file", || {
        fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    assert_eq!(pid, sup.pid());
    wait_for(T, "the waiting status", || {
        read_status(kdev).filter(|s| s.state == AppState::Waiting)
    });
    wait_for(T, "the waiting message", || {
        sup.stderr().contains("waiting for").then_some(())
    });

    install_app(kdev, "echo \"version 1 pid $$\"\nexec sleep 1000");
    let s1 = sup.wait_running(0, T);
    let pid1 = s1.pid.unwrap();
    wait_for(T, "version 1 output in app.log", || {
        log_lines(kdev)
            .iter()
            .any(|(p, l)| *p == pid1 && l == &format!("version 1 pid {pid1}"))
            .then_some(())
    });
    // The output is also copied to the supervisor's own stdout (kubectl logs).
    wait_for(T, "version 1 on the supervisor's stdout", || {
        fs::read_to_string(kdev.join("supervisor.stdout"))
            .ok()?
            .contains("version 1")
            .then_some(())
    });

    install_app(kdev, "echo \"version 2 pid $$\"\nexec sleep 1000");
    sup.signal(Signal::SIGHUP);
    let s2 = sup.wait_running(s1.starts, T);
    let pid2 = s2.pid.unwrap();
    assert_ne!(pid1, pid2, "a restart must start a new process");
    wait_for(T, "version 2 output from the new process", || {
        log_lines(kdev)
            .iter()
            .any(|(p, l)| *p == pid2 && l == &format!("version 2 pid {pid2}"))
            .then_some(())
    });
    assert!(
        !process_exists(pid1),
        "the old process {pid1} must be gone (and reaped)"
    );
    let exit = s2.last_exit.expect("the stop is recorded");
    assert_eq!(exit.pid, pid1);
    assert!(exit.expected);
    assert_eq!(
        exit.signal,
        Some(Signal::SIGTERM as i32),
        "{}",
        sup.stderr()
    );
    let r = s2.last_restart.expect("restart info");
    assert!(!r.killed);
    assert_eq!(r.start_seq, s2.starts);
}

#[test]
fn child_ignoring_sigterm_is_killed_after_the_grace_period_with_its_group() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let gc = kdev.join("grandchild.pid");
    // TERM is ignored by the shell and (inherited) by its background sleep.
    install_app(
        kdev,
        &format!(
            "trap '' TERM\nsleep 1000 &\necho $! > {}\nwhile true; do sleep 0.05; done",
            gc.display()
        ),
    );
    let app = app_path(kdev);
    let sup = Supervisor::start(kdev, &["--grace-period", "1s"], &[&app], &[]);
    let s1 = sup.wait_running(0, T);
    let pid1 = s1.pid.unwrap();
    let gc_pid: u32 = wait_for(T, "the grandchild PID", || {
        fs::read_to_string(&gc).ok()?.trim().parse().ok()
    });
    assert!(process_exists(gc_pid));

    sup.signal(Signal::SIGHUP);
    let s2 = sup.wait_running(s1.starts, T);
    let r = s2.last_restart.expect("restart info");
    assert!(r.killed, "SIGKILL must have been needed: {r:?}");
    assert!(
        r.stop_ms >= 900,
        "the grace period (1s) must be honoured, stopped after {} ms",
        r.stop_ms
    );
    assert!(r.stop_ms < 10_000, "stopping took {} ms", r.stop_ms);
    assert_eq!(
        s2.last_exit.as_ref().unwrap().signal,
        Some(Signal::SIGKILL as i32)
    );
    assert!(!process_exists(pid1), "old app {pid1} still exists");
    assert!(
        !process_exists(gc_pid),
        "grandchild {gc_pid} still exists (not killed or not reaped)"
    );
    assert!(sup.stderr().contains("SIGKILL"), "{}", sup.stderr());
}

#[test]
fn crashing_child_is_restarted_with_growing_delay_and_the_exit_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    install_app(kdev, "echo \"crash $$\"\nexit 3");
    let app = app_path(kdev);
    let mut sup = Supervisor::start(
        kdev,
        &[
            "--backoff-min",
            "100ms",
            "--backoff-max",
            "3s",
            "--healthy-after",
            "30s",
        ],
        &[&app],
        &[],
    );
    // Collect the start time of each run from its output line.
    let starts = wait_for(T, "five crashing runs", || {
        let recs = log_records(kdev);
        let times: Vec<u64> = recs
            .iter()
            .filter(|r| r["line"].as_str().is_some_and(|l| l.starts_with("crash")))
            .map(|r| r["at_ms"].as_u64().unwrap())
            .collect();
        (times.len() >= 5).then_some(times)
    });
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Delays 100, 200, 400, 800 ms (plus start-up time): each gap is at least its delay, so the
    // lower bounds themselves show the growth without depending on how fast processes start.
    for (i, g) in gaps.iter().take(4).enumerate() {
        let min = 100u64 << i;
        assert!(
            *g >= min * 9 / 10,
            "gap {i} is {g} ms, expected >= {min} ms; gaps {gaps:?}"
        );
    }
    // The fifth run's output can be logged before the status that counts its start is written.
    let st = wait_for(T, "the status to count five starts", || {
        read_status(kdev).filter(|s| s.starts >= 5)
    });
    let exit = st.last_exit.expect("exit recorded");
    assert_eq!(exit.code, Some(3));
    assert!(!exit.expected);
    // The supervisor itself never exits for that.
    assert!(
        sup.child.try_wait().unwrap().is_none(),
        "the supervisor must keep running"
    );
    // A restart request resets the delay and starts right away.
    install_app(kdev, "echo fixed\nexec sleep 1000");
    let before = read_status(kdev).unwrap().starts;
    sup.signal(Signal::SIGHUP);
    sup.wait_running(before, Duration::from_secs(5));
}

#[test]
fn sigterm_to_the_supervisor_leaves_no_child_or_zombie_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let gc = kdev.join("gc.pid");
    let orphan = kdev.join("orphan.pid");
    // A background grandchild in the group, and an orphan: its parent shell exits at once, so it
    // is reparented to the supervisor (child subreaper), which must reap it when it exits.
    install_app(
        kdev,
        &format!(
            "sleep 1000 &\necho $! > {}\nsh -c 'sleep 0.3 & echo $! > {}'\nexec sleep 1000",
            gc.display(),
            orphan.display()
        ),
    );
    let app = app_path(kdev);
    let mut sup = Supervisor::start(kdev, &["--grace-period", "5s"], &[&app], &[]);
    let st = sup.wait_running(0, T);
    let pid = st.pid.unwrap();
    let gc_pid: u32 = wait_for(T, "grandchild PID", || {
        fs::read_to_string(&gc).ok()?.trim().parse().ok()
    });
    let orphan_pid: u32 = wait_for(T, "orphan PID", || {
        fs::read_to_string(&orphan).ok()?.trim().parse().ok()
    });
    // The orphan exits after 0.3 s; as a zombie it would keep its /proc entry.
    wait_for(T, "the orphan to be reaped by the supervisor", || {
        (!process_exists(orphan_pid)).then_some(())
    });

    let t0 = std::time::Instant::now();
    sup.signal(Signal::SIGTERM);
    let status = wait_for(T, "the supervisor to exit", || {
        sup.child.try_wait().unwrap()
    });
    // The app stops on SIGTERM: no need to wait for the 5 s grace period.
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}\n{}",
        t0.elapsed(),
        sup.stderr()
    );
    assert!(
        status.success(),
        "supervisor exit: {status:?}\n{}",
        sup.stderr()
    );
    assert!(!process_exists(pid), "app {pid} survived");
    assert!(!process_exists(gc_pid), "grandchild {gc_pid} survived");
    assert!(
        !kdev.join("run/supervisor.pid").exists(),
        "PID file must be removed"
    );
    assert_eq!(read_status(kdev).unwrap().state, AppState::Stopped);
}

#[test]
fn missing_command_is_retried_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let app = app_path(kdev);
    let mut sup = Supervisor::start(
        kdev,
        &["--backoff-min", "50ms", "--backoff-max", "200ms"],
        &[&app],
        &[],
    );
    let st = wait_for(T, "the start error in the status", || {
        read_status(kdev).filter(|s| s.last_error.is_some())
    });
    assert!(st.last_error.unwrap().contains("cannot start"));
    install_app(kdev, "exec sleep 1000");
    sup.wait_running(0, T);
    assert!(sup.child.try_wait().unwrap().is_none());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn workers_left_by_an_exited_app_are_stopped_before_the_restart_and_at_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let k = kdev.display();
    let port = free_port();
    // Each run starts a worker that listens on the app's port (and ignores SIGTERM, so only
    // SIGKILL stops it), waits until the worker reports whether it could bind, then: run 1
    // exits 0, run 2 crashes (SIGKILL to itself), later runs stay up.
    install_app(
        kdev,
        &format!(
            r#"n=$(cat {k}/runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > {k}/runs
perl -MIO::Socket::INET -e '$SIG{{TERM}}="IGNORE"; my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => {port}, Listen => 5, ReuseAddr => 1); open(my $f, ">", "{k}/bind.tmp.$$") or die; print $f ($s ? "bound" : "failed: $@"); close $f; rename("{k}/bind.tmp.$$", "{k}/bind.'$n'"); sleep 1000' &
echo $! > {k}/worker.$n
while [ ! -e {k}/bind.$n ]; do sleep 0.02; done
case $n in
  1) exit 0 ;;
  2) kill -KILL $$ ;;
esac
exec sleep 1000"#
        ),
    );
    let app = app_path(kdev);
    let mut sup = Supervisor::start(
        kdev,
        &[
            "--grace-period",
            "300ms",
            "--backoff-min",
            "50ms",
            "--backoff-max",
            "100ms",
        ],
        &[&app],
        &[],
    );
    let bind = |n: u32| {
        wait_for(T, &format!("run {n} to report its bind"), || {
            fs::read_to_string(kdev.join(format!("bind.{n}"))).ok()
        })
    };
    let worker = |n: u32| {
        wait_for(T, &format!("the worker PID of run {n}"), || {
            read_pid(&kdev.join(format!("worker.{n}")))
        })
    };
    // Runs 1 (exit 0) and 2 (crash) leave a worker each; each must be gone before the next
    // run starts, or that run's worker cannot bind.
    for n in 1..=3 {
        assert_eq!(bind(n), "bound", "run {n}\n{}", sup.stderr());
        if n > 1 {
            let old = worker(n - 1);
            assert!(
                !process_exists(old),
                "the worker {old} of run {} survived the restart",
                n - 1
            );
        }
    }
    let st = sup.wait_running(2, T);
    assert_eq!(st.starts, 3);
    // A SIGHUP restart of a running app stops its worker too.
    sup.signal(Signal::SIGHUP);
    assert_eq!(bind(4), "bound", "{}", sup.stderr());
    assert!(!process_exists(worker(3)));
    // And the supervisor's own exit leaves nothing of the group.
    let st = sup.wait_running(3, T);
    let pgid = st.pid.unwrap();
    sup.signal(Signal::SIGTERM);
    let status = wait_for(T, "the supervisor to exit", || {
        sup.child.try_wait().unwrap()
    });
    assert!(status.success(), "{}", sup.stderr());
    assert!(!process_exists(worker(4)), "the last worker survived");
    assert_eq!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None),
        Err(nix::errno::Errno::ESRCH),
        "processes of the app's group are left"
    );
}

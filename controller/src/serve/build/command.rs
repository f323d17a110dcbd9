//! Running one build command: its own process group (so cancelling kills the compiler
//! processes too, and `run/build.pgid` lets the next session kill it if this one is killed),
//! combined stdout+stderr captured through one pipe, the sync root as working directory and
//! any absolute sync-root prefix stripped from the output.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kdev_protocol::BuildOutcome;
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::build_spec::BuildSpec;
use crate::serve::leftovers;

/// Output kept per build; the rest is counted and dropped.
const MAX_OUTPUT: usize = 1024 * 1024;

/// How a build ended.
#[derive(Debug)]
pub(crate) struct BuildResult {
    pub outcome: BuildOutcome,
    pub exit_code: Option<i32>,
    pub output: String,
    pub truncated: bool,
    pub elapsed: Duration,
    pub kind: BuildKind,
}

/// What ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildKind {
    /// The build command (`go build`, or the user's), recording into this directory when quick
    /// rebuilds are on ([`crate::quick_build`]).
    Command { recorded_in: Option<PathBuf> },
    /// A quick rebuild, compiling these packages (then the link).
    Quick { packages: Vec<String> },
}

impl BuildResult {
    /// A build cancelled before its command started.
    pub(crate) fn cancelled() -> BuildResult {
        BuildResult {
            outcome: BuildOutcome::Cancelled,
            exit_code: None,
            output: String::new(),
            truncated: false,
            elapsed: Duration::ZERO,
            kind: BuildKind::Command { recorded_in: None },
        }
    }
}

/// Why a build command could not run at all (its output says so).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot create a pipe for the build output: {0}")]
    Pipe(Errno),
    #[error("cannot duplicate the build output pipe: {0}")]
    DupPipe(io::Error),
    #[error(
        "cannot run the build command {program:?}: {error} (is the Go toolchain on PATH in this container?)"
    )]
    Spawn { program: String, error: io::Error },
}

/// Replace `<root>/` (and a bare `<root>`) in build output with nothing, so paths are relative
/// to the sync root.
fn strip_root(text: &str, root: &Path) -> String {
    let root = root.to_string_lossy();
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return text.to_string();
    }
    text.replace(&format!("{root}/"), "").replace(root, ".")
}

fn read_capped(fd: OwnedFd) -> (Vec<u8>, bool) {
    let mut f = File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(out.len());
                if n > room {
                    truncated = true;
                }
                out.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (out, truncated)
}

/// Start the build command in its own process group, its stdout and stderr into one pipe.
/// Returns the child and the pipe's read end.
fn spawn(spec: &BuildSpec) -> Result<(tokio::process::Child, OwnedFd), StartError> {
    let (rd, wr) = nix::unistd::pipe().map_err(StartError::Pipe)?;
    let wr2 = wr.try_clone().map_err(StartError::DupPipe)?;
    let mut cmd = tokio::process::Command::new(&spec.argv[0]);
    if spec.env_clear {
        cmd.env_clear();
    }
    if spec.nice {
        // SAFETY: setpriority is async-signal-safe; between fork and exec nothing else runs.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                Ok(())
            });
        }
    }
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(wr))
        .stderr(Stdio::from(wr2))
        .process_group(0)
        .kill_on_drop(false);
    let spawned = cmd.spawn();
    // Close our copies of the write end, or the reader would never see EOF.
    drop(cmd);
    match spawned {
        Ok(child) => Ok((child, rd)),
        Err(error) => Err(StartError::Spawn {
            program: spec.argv[0].clone(),
            error,
        }),
    }
}

/// Run the build. Resolves early with `Cancelled` (after killing the whole process group) when
/// `cancel` fires.
pub(crate) async fn run(spec: BuildSpec, cancel: &mut oneshot::Receiver<()>) -> BuildResult {
    let t0 = Instant::now();
    let fail = |e: StartError| BuildResult {
        outcome: BuildOutcome::Error,
        exit_code: None,
        output: e.to_string(),
        truncated: false,
        elapsed: t0.elapsed(),
        kind: BuildKind::Command { recorded_in: None },
    };
    let _ = std::fs::remove_file(&spec.output);
    let (mut child, rd) = match spawn(&spec) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    if let (Some(f), Some(pg)) = (&spec.group_file, pgid) {
        leftovers::record_build(f, pg.as_raw());
    }
    let reader = tokio::task::spawn_blocking(move || read_capped(rd));
    let (status, cancelled) = tokio::select! {
        st = child.wait() => (st.ok(), false),
        _ = cancel => {
            if let Some(pg) = pgid {
                let _ = signal::killpg(pg, Signal::SIGKILL);
            }
            (child.wait().await.ok(), true)
        }
    };
    if let Some(f) = &spec.group_file {
        let _ = std::fs::remove_file(f);
    }
    // The go command waits for its compiler processes; if a custom command leaves helpers
    // holding the pipe, do not wait for them forever.
    let (bytes, truncated) = match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(r)) => r,
        _ => (b"(build output could not be collected)".to_vec(), false),
    };
    let output = strip_root(&String::from_utf8_lossy(&bytes), &spec.cwd);
    let exit_code = status.and_then(|s| s.code());
    let outcome = if cancelled {
        let _ = std::fs::remove_file(&spec.output);
        BuildOutcome::Cancelled
    } else if exit_code == Some(0) {
        if spec.output.is_file() {
            BuildOutcome::Succeeded
        } else {
            return BuildResult {
                outcome: BuildOutcome::Error,
                exit_code,
                output: format!(
                    "{output}\nthe build command succeeded but did not write {}; a custom build command must write the binary to {{output}}",
                    spec.output.display()
                ),
                truncated,
                elapsed: t0.elapsed(),
                kind: BuildKind::Command { recorded_in: None },
            };
        }
    } else {
        BuildOutcome::Failed
    };
    BuildResult {
        outcome,
        exit_code,
        output,
        truncated,
        elapsed: t0.elapsed(),
        kind: BuildKind::Command { recorded_in: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build_spec::BuildDefaults;
    use kdev_protocol::BuildConfig;

    #[test]
    fn strips_root() {
        let s = strip_root(
            "/kdev/src/main.go:3:1: x\n/kdev/src: y",
            Path::new("/kdev/src"),
        );
        assert_eq!(s, "main.go:3:1: x\n.: y");
    }

    #[tokio::test]
    async fn hooks_run_in_order_before_the_build_and_a_failing_one_fails_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let d = BuildDefaults {
            go: "go".into(),
            gocache: root.join("c"),
            gomodcache: root.join("m"),
        };
        let cfg = BuildConfig {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                "cat gen.txt > {output}".into(),
            ]),
            before: vec![
                "echo \"it's generated\" > gen.txt".into(),
                "echo second >> gen.txt".into(),
            ],
            ..Default::default()
        };
        let out = root.join("app.next");
        let spec = BuildSpec::resolve(&cfg, &d, root, &out);
        let (_tx, mut rx) = oneshot::channel();
        let r = run(spec, &mut rx).await;
        assert_eq!(r.outcome, BuildOutcome::Succeeded, "{}", r.output);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "it's generated\nsecond\n"
        );
        assert!(
            r.output.contains("$ echo second >> gen.txt"),
            "{}",
            r.output
        );

        let failing = BuildConfig {
            before: vec!["echo 'no generator' >&2; exit 7".into(), "touch ran".into()],
            ..cfg
        };
        let spec = BuildSpec::resolve(&failing, &d, root, &out);
        let (_tx, mut rx) = oneshot::channel();
        let r = run(spec, &mut rx).await;
        assert_eq!(r.outcome, BuildOutcome::Failed, "{}", r.output);
        assert_eq!(r.exit_code, Some(7));
        assert!(r.output.contains("no generator"), "{}", r.output);
        assert!(
            !root.join("ran").exists(),
            "hooks after the failing one do not run"
        );
    }
}

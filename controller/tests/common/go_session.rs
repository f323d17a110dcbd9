//! A `serve` session that builds Go: send patches, wait for each build, run the app.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kdev_protocol::{
    BuildConfig, BuildMode, BuildOutcome, ClientMessage, Event, Patch, Reconcile, ServerMessage,
    SessionConfig,
};

use super::{Serve, gocache, tar_of};

/// A cold `go build` of the standard library on a busy two-core machine.
pub const BUILD: Duration = Duration::from_secs(600);

pub fn go_config(extra_env: &[(&str, &str)]) -> SessionConfig {
    let env: std::collections::BTreeMap<String, String> = [
        ("GOFLAGS", "-mod=mod"),
        ("GOPROXY", "off"),
        ("GOTOOLCHAIN", "local"),
        // Shadow builds start when the session is idle: tests of them turn them on.
        ("KDEV_QUICK_VERIFY", "0"),
    ]
    .into_iter()
    .chain(extra_env.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    SessionConfig {
        build: BuildConfig {
            env,
            ..Default::default()
        },
        ..Default::default()
    }
}

pub struct Session {
    pub s: Serve,
    pub kdev: PathBuf,
    pub next: u64,
}

/// What one build did: its outcome and output, and what the serve log said about it.
pub struct Built {
    pub outcome: BuildOutcome,
    pub output: String,
    pub log: String,
}

impl Built {
    pub fn quick(&self) -> bool {
        self.log
            .contains(": quick rebuild (the go command skipped)")
    }

    /// Why the build took the go command, as serve logged it (`build N: go build (why)`).
    pub fn why_go_build(&self) -> Option<&str> {
        self.log.lines().find_map(|l| {
            let (_, rest) = l.split_once(": go build (")?;
            Some(rest.strip_suffix(')').unwrap_or(rest))
        })
    }
}

impl Session {
    pub fn start(kdev: &Path, cfg: SessionConfig) -> Session {
        let gocache = gocache();
        let mut s = Serve::start(kdev, &["--gocache", &gocache.to_string_lossy()]);
        s.hello(cfg);
        Session {
            s,
            kdev: kdev.to_path_buf(),
            next: 1,
        }
    }

    /// Send a patch of `files` (and `deletes`) and wait for its build.
    pub fn patch(&mut self, files: &[(&str, &str)], deletes: &[&str]) -> Built {
        self.patch_tar(tar_of(files), deletes)
    }

    /// Send a patch of the entries in `tar` (and `deletes`) and wait for its build.
    pub fn patch_tar(&mut self, tar: Vec<u8>, deletes: &[&str]) -> Built {
        let id = self.next;
        self.next += 1;
        self.s.send(&ClientMessage::Patch(Patch {
            id,
            deletes: deletes.iter().map(|d| d.to_string()).collect(),
            build: BuildMode::Always,
            tar,
        }));
        let (outcome, output) = self
            .s
            .event_until(BUILD, &format!("build {id}"), |e| match e {
                Event::BuildFinished {
                    build_id,
                    outcome,
                    output,
                    ..
                } if *build_id == id => Some((*outcome, output.clone())),
                _ => None,
            });
        // serve reads the build's quick-rebuild records back after reporting it. A listing
        // is answered by the session's own loop, so once that is done (pings are answered by
        // the reader at once): the log below has all of it.
        let barrier = 1_000_000 + id;
        self.s.send(&ClientMessage::Reconcile(Reconcile {
            id: barrier,
            digest_first: true,
        }));
        self.s
            .recv_until(BUILD, "the listing after the build", |m| {
                matches!(m, ServerMessage::ListingDigest(d) if d.id == barrier).then_some(())
            });
        let prefix = format!("build {id}: ");
        let log = self
            .s
            .stderr()
            .lines()
            .filter(|l| l.contains(&prefix))
            .collect::<Vec<_>>()
            .join("\n");
        Built {
            outcome,
            output,
            log,
        }
    }

    /// What the installed binary prints.
    pub fn run_app(&self) -> String {
        let out = Command::new(self.kdev.join("bin/app")).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

/// `go build` of `kdev`'s sync root, run: what the binary prints, or `Err(go build's output)`.
/// It has a go cache of its own: what it compiles must not turn up in `serve`'s builds as
/// cache hits no real session would have.
pub fn go_build_output(kdev: &Path) -> Result<String, String> {
    let out = tempfile::tempdir().unwrap();
    let bin = out.path().join("app");
    let st = Command::new("go")
        .args(["build", "-mod=mod", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(kdev.join("src"))
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env(
            "GOCACHE",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gocache-reference"),
        )
        .output()
        .unwrap();
    if !st.status.success() {
        return Err(String::from_utf8_lossy(&st.stderr).into_owned());
    }
    let run = Command::new(&bin).output().unwrap();
    assert!(run.status.success(), "go build's binary failed: {run:?}");
    Ok(String::from_utf8_lossy(&run.stdout).trim().to_string())
}

/// `go build` of the tree in `kdev`'s sync root prints `expected` too.
pub fn assert_go_build_agrees(kdev: &Path, expected: &str) {
    match go_build_output(kdev) {
        Ok(out) => assert_eq!(out, expected, "go build's binary prints otherwise"),
        Err(e) => panic!("go build fails where kdev's build succeeded:\n{e}"),
    }
}

//! The module source with this machine's real go and a hermetic `file://` GOPROXY: two tiny
//! modules laid out as a proxy directory, a module cache of the test's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kdev_protocol::ModuleStatus;

use super::*;

/// A proxy directory holding `example.com/dep@v1.0.0` and `example.com/Upper@v1.0.0`, and an
/// empty module cache, in one temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for module in ["example.com/dep", "example.com/Upper"] {
            write_module(&dir.path().join("proxy"), module, "v1.0.0");
        }
        Fixture { dir }
    }

    fn proxy(&self) -> PathBuf {
        self.dir.path().join("proxy")
    }

    fn modcache(&self) -> PathBuf {
        self.dir.path().join("mod")
    }

    /// go as the test's: this machine's, with the proxy and the cache above.
    fn go(&self) -> GoEnv {
        let vars = [
            ("GOMODCACHE", self.modcache().display().to_string()),
            ("GOPROXY", format!("file://{}", self.proxy().display())),
            ("GOSUMDB", "off".into()),
            // -modcacherw: the extracted modules can be removed with the directory.
            ("GOFLAGS", "-mod=mod -modcacherw".into()),
            // Nothing of this machine's go settings (its env file, a GOPRIVATE) takes part.
            ("GOENV", "off".into()),
            ("GOPRIVATE", String::new()),
            ("GONOPROXY", String::new()),
            ("GOTOOLCHAIN", "local".into()),
        ];
        GoEnv {
            program: "go".into(),
            vars: vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    /// The bytes the proxy serves for `file` of `module` (escaped) at v1.0.0.
    fn served(&self, module: &str, ext: &str) -> Vec<u8> {
        std::fs::read(self.proxy().join(format!("{module}/@v/v1.0.0.{ext}"))).expect("in the proxy")
    }
}

/// `module`@`version` in a proxy directory: `list`, `.info`, `.mod` and the `.zip` (every file
/// under `module@version/`, written by python3's zipfile).
fn write_module(proxy: &Path, module: &str, version: &str) {
    let at_v = proxy.join(escape(module)).join("@v");
    std::fs::create_dir_all(&at_v).unwrap();
    let gomod = format!("module {module}\n\ngo 1.21\n");
    std::fs::write(at_v.join("list"), format!("{version}\n")).unwrap();
    std::fs::write(
        at_v.join(format!("{version}.info")),
        format!(r#"{{"Version":"{version}","Time":"2024-01-02T03:04:05Z"}}"#),
    )
    .unwrap();
    std::fs::write(at_v.join(format!("{version}.mod")), &gomod).unwrap();
    let zip = at_v.join(format!("{version}.zip"));
    let script = "import sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1], 'w')\n\
                  p = sys.argv[2] + '@' + sys.argv[3] + '/'\n\
                  z.writestr(p + 'go.mod', sys.argv[4])\n\
                  z.writestr(p + 'dep.go', 'package dep\\n\\nconst X = 1\\n')\n\
                  z.close()\n";
    let made = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&zip)
        .args([module, version, &gomod])
        .status()
        .expect("running python3");
    assert!(made.success(), "writing {}", zip.display());
}

/// Every part of `answer`, concatenated.
async fn body(answer: Answer) -> Vec<u8> {
    let mut parts = answer.into_parts(1);
    let mut out = Vec::new();
    while let Some(p) = parts.next().await {
        assert_eq!(p.status, ModuleStatus::Ok, "{}", p.reason);
        out.extend(p.body);
    }
    out
}

#[tokio::test]
async fn a_miss_is_fetched_through_go_then_served_from_the_cache() {
    let fx = Fixture::new();
    let source = ModuleSource::new(fx.go());
    let path = "example.com/dep/@v/v1.0.0.zip";
    let (answer, fetch) = source.answer(path).await;
    assert_eq!(fetch.status, ModuleStatus::Ok, "{}", fetch.reason);
    assert_eq!(fetch.source, Source::Go("go mod download"));
    assert_eq!(body(answer).await, fx.served("example.com/dep", "zip"));
    assert!(fx.modcache().join("cache/download").join(path).is_file());

    // Now in the cache: no go this time, for the zip nor for what go downloaded with it.
    for ext in ["zip", "mod", "info"] {
        let (answer, fetch) = source
            .answer(&format!("example.com/dep/@v/v1.0.0.{ext}"))
            .await;
        assert_eq!(fetch.source, Source::Cache, "{ext}");
        let got = body(answer).await;
        if ext != "info" {
            assert_eq!(got, fx.served("example.com/dep", ext), "{ext}");
        }
        assert_eq!(fetch.bytes, got.len() as u64);
    }
}

#[tokio::test]
async fn a_go_mod_is_fetched_alone_and_capital_letters_stay_escaped() {
    let fx = Fixture::new();
    let source = ModuleSource::new(fx.go());
    let (answer, fetch) = source.answer("example.com/!upper/@v/v1.0.0.mod").await;
    assert_eq!(fetch.source, Source::Go("go list"), "{}", fetch.reason);
    assert_eq!(body(answer).await, fx.served("example.com/!upper", "mod"));
    let download = fx.modcache().join("cache/download/example.com/!upper/@v");
    assert!(download.join("v1.0.0.mod").is_file());
    // Only what was asked for: the zip stays on the proxy.
    assert!(!download.join("v1.0.0.zip").exists());

    let (answer, fetch) = source.answer("example.com/!upper/@v/v1.0.0.info").await;
    assert_eq!(fetch.status, ModuleStatus::Ok);
    let info: serde_json::Value = serde_json::from_slice(&body(answer).await).unwrap();
    assert_eq!(info["Version"], "v1.0.0");
}

#[tokio::test]
async fn versions_and_latest_come_from_go_list() {
    let fx = Fixture::new();
    let source = ModuleSource::new(fx.go());
    let (answer, fetch) = source.answer("example.com/dep/@v/list").await;
    assert_eq!(fetch.status, ModuleStatus::Ok, "{}", fetch.reason);
    assert_eq!(body(answer).await, b"v1.0.0\n");
    let (answer, _) = source.answer("example.com/dep/@latest").await;
    let info: serde_json::Value = serde_json::from_slice(&body(answer).await).unwrap();
    assert_eq!(info["Version"], "v1.0.0");
    assert_eq!(info["Time"], "2024-01-02T03:04:05Z");
}

#[tokio::test]
async fn a_missing_version_is_not_found_with_go_s_reason() {
    let fx = Fixture::new();
    let source = ModuleSource::new(fx.go());
    for path in [
        "example.com/dep/@v/v9.9.9.zip",
        "example.com/dep/@v/v9.9.9.info",
    ] {
        let (answer, fetch) = source.answer(path).await;
        assert_eq!(
            answer.status,
            ModuleStatus::NotFound,
            "{path}: {}",
            answer.reason
        );
        assert!(
            answer.reason.contains("example.com/dep@v9.9.9"),
            "{}",
            answer.reason
        );
        // The zip's failure is said; an .info is also how go probes prefixes (not said).
        if path.ends_with(".zip") {
            let warning = fetch.warning().expect("a missing version warns");
            assert!(
                warning.starts_with("module example.com/dep@v9.9.9: not found on this machine: "),
                "{warning}"
            );
        } else {
            assert_eq!(fetch.warning(), None);
        }
    }
    let (answer, _) = source.answer("example.com/nope/@v/list").await;
    assert_eq!(answer.status, ModuleStatus::NotFound, "{}", answer.reason);
}

#[tokio::test]
async fn concurrent_requests_for_one_version_run_go_once() {
    let fx = Fixture::new();
    let source = Arc::new(ModuleSource::new(fx.go()));
    let asks = (0..4).map(|_| {
        let source = source.clone();
        tokio::spawn(async move { source.answer("example.com/dep/@v/v1.0.0.zip").await })
    });
    let mut through_go = 0;
    for ask in asks {
        let (answer, fetch) = ask.await.unwrap();
        through_go += usize::from(fetch.source != Source::Cache);
        assert_eq!(body(answer).await, fx.served("example.com/dep", "zip"));
    }
    assert_eq!(through_go, 1);
    assert!(lock(&source.fetching).is_empty());
}

#[tokio::test]
async fn a_path_outside_the_protocol_is_refused_before_anything_runs() {
    let fx = Fixture::new();
    let source = ModuleSource::new(fx.go());
    for path in [
        "../../.netrc",
        "example.com/dep/@v/../../../../.ssh/id_rsa.zip",
        "example.com/dep/@v/v1.0.0.ziphash",
        "/etc/passwd",
    ] {
        let (answer, fetch) = source.answer(path).await;
        assert_eq!(answer.status, ModuleStatus::Failed);
        assert!(
            answer.reason.starts_with("not a module proxy request"),
            "{}",
            answer.reason
        );
        assert_eq!(fetch.source, Source::Nothing);
    }
    // Not even `go env` ran, and the cache was not looked at.
    assert!(!source.setup.initialized());
    assert!(!fx.modcache().exists());
}

#[tokio::test]
async fn without_go_the_cache_alone_answers() {
    let fx = Fixture::new();
    // Fill the cache with go, then lose go.
    let (_, fetch) = ModuleSource::new(fx.go())
        .answer("example.com/dep/@v/v1.0.0.zip")
        .await;
    assert_eq!(fetch.status, ModuleStatus::Ok, "{}", fetch.reason);
    let no_go = GoEnv {
        program: fx.dir.path().join("no-go-here"),
        vars: BTreeMap::from([("GOMODCACHE".into(), fx.modcache().display().to_string())]),
    };
    let source = ModuleSource::new(no_go);
    let (answer, fetch) = source.answer("example.com/dep/@v/v1.0.0.zip").await;
    assert_eq!(fetch.source, Source::Cache);
    assert_eq!(body(answer).await, fx.served("example.com/dep", "zip"));
    let (answer, _) = source.answer("example.com/!upper/@v/v1.0.0.zip").await;
    assert_eq!(
        (answer.status, answer.reason.as_str()),
        (ModuleStatus::Failed, "go is not installed on this machine")
    );
}

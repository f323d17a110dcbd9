//! End-to-end: kdev installed with its one command (`cargo install --path cli`) into an empty
//! prefix starts a session with nothing else (its controller is embedded); and a node whose
//! architecture kdev has no controller for stops kdev before anything is uploaded, naming the
//! architecture and the command that builds the right controller.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kdev_tests::watch::dev_pod;
use kdev_tests::{
    KdevProcess, TestNamespace, client, exec, free_port, http_get, poll_until, repo_root,
};
use kube::ResourceExt;
use kube::api::Api;

/// The example with a kdev.yaml for the test cluster, in `dir`.
fn project(dir: &Path, ns: &str, port: u16) -> Result<PathBuf> {
    kdev_tests::example_project(dir, ns, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_install_command_gives_a_kdev_that_starts_a_session() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-install").await?;
    let prefix = tempfile::tempdir()?;
    // Its own target directory: the suite's is locked by the `cargo test` running this.
    let cache = std::env::var_os("KDEV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/kdev")
        });
    let install = Command::new("cargo")
        .args(["install", "--locked", "--path"])
        .arg(repo_root().join("cli"))
        .arg("--root")
        .arg(prefix.path())
        .env("CARGO_TARGET_DIR", cache.join("install-target"))
        .env_remove("KDEV_CONTROLLER_BIN")
        // tests/run's test runner sets it for libtest's per-test times; not for this build.
        .env_remove("RUSTC_BOOTSTRAP")
        .output()?;
    ensure!(
        install.status.success(),
        "cargo install failed:\n{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let kdev = prefix.path().join("bin/kdev");
    let installed: Vec<String> = std::fs::read_dir(prefix.path().join("bin"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    ensure!(
        installed == ["kdev"],
        "one binary is installed: {installed:?}"
    );
    let version = Command::new(&kdev).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    ensure!(version.contains("controllers: linux/amd64"), "{version}");
    eprintln!("installed: {version}");

    let dir = tempfile::tempdir()?;
    let port = free_port();
    let project = project(dir.path(), ns.name(), port)?;
    let mut cmd = Command::new(&kdev);
    cmd.arg("watch")
        .current_dir(&project)
        .env_remove("KDEV_CONTROLLER_BIN")
        // tests/run's test runner sets it for libtest's per-test times; not for this build.
        .env_remove("RUSTC_BOOTSTRAP");
    let watch = KdevProcess::spawn(&mut cmd)?;
    let served =
        poll_until(
            Duration::from_secs(240),
            "the installed kdev to serve",
            || async move {
                Ok(tokio::task::spawn_blocking(move || {
                    http_get(port, "/ping", Duration::from_secs(5))
                })
                .await?
                .is_ok_and(|b| b.contains("pong")))
            },
        )
        .await;
    let text = watch.stop();
    served.map_err(|e| anyhow::anyhow!("{e}\nkdev output:\n{text}"))?;
    ensure!(text.contains("uploaded kdev-controller"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_kdev_has_no_controller_for_stops_it_before_any_upload() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-arch").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let dir = tempfile::tempdir()?;
    let project = project(dir.path(), ns.name(), free_port())?;
    // A copy of the suite's kdev, alone in a directory: it finds nothing next to itself or in a
    // workspace (where a developer may have built an arm64 controller), so the only controller
    // it has is the linux/amd64 one it is given.
    let alone = dir.path().join("bin");
    std::fs::create_dir_all(&alone)?;
    std::fs::copy(kdev_tests::kdev_bin(), alone.join("kdev"))?;
    let mut kdev = Command::new(alone.join("kdev"));
    kdev.arg("watch")
        .current_dir(&project)
        .env("KDEV_TEST_NODE_ARCH", "arm64");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::task::spawn_blocking(move || kdev.output()),
    )
    .await???;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.code() == Some(1),
        "exit {:?}: {err}",
        out.status.code()
    );
    ensure!(
        err.contains("a linux/arm64 node")
            && err.contains("no kdev-controller for linux/arm64")
            && err.contains("`controller/build-static aarch64`"),
        "{err}"
    );
    ensure!(!err.contains("uploaded kdev-controller"), "{err}");
    let pod = dev_pod(&pods).await?.name_any();
    let present = exec(
        &pods,
        &pod,
        "kdev",
        &[
            "sh",
            "-c",
            "test -e /kdev/bin/kdev-controller && echo present || echo absent",
        ],
        None,
    )
    .await?
    .stdout_str();
    ensure!(
        present.trim() == "absent",
        "a controller was uploaded: {present}"
    );
    Ok(())
}

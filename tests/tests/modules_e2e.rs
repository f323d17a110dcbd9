//! End-to-end: Go modules reach the pod through kdev's session, from this machine (the
//! "laptop"), on the test cluster whose pods have no network at all.
//!
//! The pod builds with an empty module cache of its own (`build.env: GOMODCACHE`), so every
//! module of the Gin app comes through kdev's module proxy; the laptop starts with an empty
//! module cache too, so kdev fetches each with the laptop's own go: public ones from the Go
//! module proxy, a private one from an authenticated module proxy on this machine's loopback
//! (`tests/tools/module-proxy`, HTTPS + netrc) that the pod could not reach even with a network.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kdev_tests::module_proxy::{Module, ModuleProxy};
use kdev_tests::watch::{Watch, WatchOptions, assert_pod_tree_equals_local, dev_pod};
use kdev_tests::{TestNamespace, client, exec};
use kube::ResourceExt;
use kube::api::Api;

/// The pod's own module cache, empty at the start (in the sidecar, not on the cache volume).
const POD_MODCACHE: &str = "/tmp/kdev-e2e-modcache";
const GREETING: &str = "hello from a private module";

/// The private module `kdev.test/greet@v1.0.0`.
fn greet_module(dir: &Path) -> Result<Module> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("go.mod"), "module kdev.test/greet\n\ngo 1.21\n")?;
    std::fs::write(
        dir.join("greet.go"),
        format!("package greet\n\n// Hello greets.\nconst Hello = \"{GREETING}\"\n"),
    )?;
    Ok(Module::new("kdev.test/greet", "v1.0.0", dir))
}

/// The laptop's go environment: the private proxy first (it answers 404 for the rest), then
/// the public Go module proxy; the system's CA certificates plus the private proxy's.
fn laptop_env(proxy: &ModuleProxy, dir: &Path) -> Result<Vec<(String, String)>> {
    let mut bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    bundle.extend(std::fs::read(proxy.cert())?);
    let bundle_path = dir.join("ca-bundle.crt");
    std::fs::write(&bundle_path, bundle)?;
    let mut env = proxy.go_env();
    for (k, v) in &mut env {
        match k.as_str() {
            "GOPROXY" => *v = format!("{},https://proxy.golang.org", proxy.url()),
            "SSL_CERT_FILE" => *v = bundle_path.to_string_lossy().into_owned(),
            _ => {}
        }
    }
    Ok(env)
}

fn go(project: &Path, env: &[(String, String)], args: &[&str]) -> Result<String> {
    let out = Command::new("go")
        .args(args)
        .current_dir(project)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .context("running go")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "go {args:?} failed: {text}");
    Ok(text)
}

/// `sh -c script` in the dev pod's sidecar, with `stdin`; its stdout.
async fn sidecar_sh(pods: &Api<Pod>, script: &str, stdin: Option<&[u8]>) -> Result<String> {
    let pod = dev_pod(pods).await?.name_any();
    Ok(exec(pods, &pod, "kdev", &["sh", "-c", script], stdin)
        .await?
        .stdout_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_come_from_the_laptop_and_a_new_dependency_is_one_save_away() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-modules").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let scratch = tempfile::tempdir()?;
    let secret = format!("s3cret-{}", std::process::id());
    let proxy = ModuleProxy::start(
        &[greet_module(&scratch.path().join("greet"))?],
        "dev",
        &secret,
    )?;
    let env = laptop_env(&proxy, scratch.path())?;
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let own_cache = |project: &Path| -> Result<()> {
        let yaml = project.join("kdev.yaml");
        let mut text = std::fs::read_to_string(&yaml)?;
        text.push_str(&format!("build:\n  env:\n    GOMODCACHE: {POD_MODCACHE}\n"));
        std::fs::write(yaml, text)?;
        Ok(())
    };
    let w = Watch::start_opts(
        ns.name(),
        WatchOptions {
            args: &["-v"],
            env: &env_refs,
            prepare: Some(Box::new(own_cache)),
            ..Default::default()
        },
    )?;

    // 1. The first build: every module of the app from the laptop.
    let took = w.wait_served("pong", Duration::from_secs(480)).await?;
    eprintln!("FIGURE first build with every module through kdev: served after {took:?}");
    let out = w.output();
    ensure!(
        out.contains("module github.com/gin-gonic/gin@"),
        "-v names each module fetched:\n{out}"
    );
    let in_pod = sidecar_sh(
        &pods,
        &format!("ls {POD_MODCACHE}/cache/download/github.com/gin-gonic/gin/@v/"),
        None,
    )
    .await?;
    ensure!(
        in_pod.contains(".zip"),
        "gin's zip is not in the pod's module cache: {in_pod}"
    );

    // 2. `go get` on the laptop, then an edit that uses the new module: one save away.
    let project = w.project();
    go(&project, &env, &["get", "kdev.test/greet@v1.0.0"])?;
    let main = project.join("main.go");
    let text = std::fs::read_to_string(&main)?;
    let edited = text.replacen("import (", "import (\n\t\"kdev.test/greet\"", 1);
    std::fs::write(&main, edited)?;
    kdev_tests::set_ping_expr(&project, "greet.Hello")?;
    let saved = Instant::now();
    w.wait_served(GREETING, Duration::from_secs(120)).await?;
    eprintln!(
        "FIGURE go get + an edit that uses the new module → served: {:?}",
        saved.elapsed()
    );
    let fetched: Vec<_> = proxy
        .requests()?
        .into_iter()
        .filter(|r| r.path.contains("kdev.test/greet") && r.status == 200)
        .collect();
    ensure!(
        fetched.iter().any(|r| r.path.ends_with(".zip")),
        "the laptop's go fetched the private module from the private proxy: {fetched:?}"
    );

    // 3. The pod holds no credential: not in a file kdev or go wrote, not in any process's
    // environment (the pod's PID namespace is shared: the app's processes are seen too).
    // The secret comes on stdin, so no command line of the check holds it.
    let script = "read -r pat; \
        printf '%s\\n' \"$pat\" | grep -rlF -f /dev/stdin /kdev /tmp /root /go/pkg/mod 2>/dev/null; \
        for e in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do \
        c=$(tr '\\0' ' ' < $e 2>/dev/null); case \"$c\" in *\"$pat\"*) echo $e;; esac; done; \
        echo checked";
    let stdin = format!("{secret}\n");
    let found = sidecar_sh(&pods, script, Some(stdin.as_bytes())).await?;
    ensure!(
        found.trim() == "checked",
        "the credential is in the pod: {found}"
    );

    // 4. A module the laptop cannot get: go's error plus one kdev line naming the module and
    // the laptop's reason; the previous app keeps serving.
    let gomod = project.join("go.mod");
    let text = std::fs::read_to_string(&gomod)?;
    ensure!(text.contains("kdev.test/greet v1.0.0"), "{text}");
    let sum = project.join("go.sum");
    let mut sums = std::fs::read_to_string(&sum)?;
    // go checks go.sum only once it has the files; the lines make go ask for them.
    sums.push_str(
        "kdev.test/greet v1.9.9 h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\
         kdev.test/greet v1.9.9/go.mod h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    );
    std::fs::write(&sum, sums)?;
    std::fs::write(
        &gomod,
        text.replace("kdev.test/greet v1.0.0", "kdev.test/greet v1.9.9"),
    )?;
    w.wait_output("kdev.test/greet@v1.9.9", Duration::from_secs(120))
        .await?;
    w.wait_output("build failed", Duration::from_secs(120))
        .await?;
    let out = w.output();
    let kdev_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("module kdev.test/greet@v1.9.9") && l.contains("on this machine"))
        .collect();
    ensure!(
        kdev_lines.len() == 1,
        "one kdev line names the module and the laptop's reason:\n{out}"
    );
    ensure!(
        kdev_lines[0].contains("reading https://"),
        "the line gives the laptop's reason (its go's error): {}",
        kdev_lines[0]
    );
    ensure!(
        out.contains("server response: kdev.test/greet@v1.9.9"),
        "go's own error in the build output carries the laptop's reason:\n{out}"
    );
    w.wait_served(GREETING, Duration::from_secs(10)).await?;
    assert_pod_tree_equals_local(&pods, &project, &[]).await?;
    Ok(())
}

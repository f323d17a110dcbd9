//! `kdev watch` as a subprocess on a copy of the example, and the check every fault test ends
//! with: the pod's whole tree equals the local one, by content, mode and link target.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::{example_project, exec, free_port, http_get, kdev_bin, set_ping_expr, spawn_captured};

/// Something done to the project copy before kdev starts.
pub type Prepare<'a> = Box<dyn FnOnce(&Path) -> Result<()> + 'a>;

/// How to start `kdev watch`.
#[derive(Default)]
pub struct WatchOptions<'a> {
    /// A command line that kdev's path is appended to (e.g. `unshare … sh -c …`).
    pub wrapper: &'a [&'a str],
    /// Extra arguments after `watch`.
    pub args: &'a [&'a str],
    /// Extra environment (e.g. a KUBECONFIG through a proxy).
    pub env: &'a [(&'a str, &'a str)],
    /// Runs on the project copy before kdev starts.
    pub prepare: Option<Prepare<'a>>,
}

/// `kdev watch` running in a copy of the example, with its output collected. Killed on drop.
pub struct Watch {
    pub child: Child,
    output: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The program and arguments it was started with, and its extra environment.
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl Watch {
    pub fn start(namespace: &str) -> Result<Watch> {
        Self::start_opts(namespace, WatchOptions::default())
    }

    /// `kdev watch ARGS`, run through `wrapper` (a command line that kdev's path is appended to).
    pub fn start_with(namespace: &str, wrapper: &[&str], args: &[&str]) -> Result<Watch> {
        Self::start_opts(
            namespace,
            WatchOptions {
                wrapper,
                args,
                ..Default::default()
            },
        )
    }

    pub fn start_opts(namespace: &str, opts: WatchOptions<'_>) -> Result<Watch> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let project = example_project(dir.path(), namespace, port)?;
        if let Some(prepare) = opts.prepare {
            prepare(&project)?;
        }
        let mut argv: Vec<String> = opts.wrapper.iter().map(|s| s.to_string()).collect();
        argv.push(kdev_bin().to_string_lossy().into_owned());
        argv.push("watch".into());
        argv.extend(opts.args.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = opts
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, output) = spawn(&argv, &env, &project)?;
        Ok(Watch {
            child,
            output,
            dir,
            port,
            argv,
            env,
        })
    }

    /// Stop this kdev (SIGINT, as Ctrl-C) and start it again, the same way, in the same project;
    /// the output starts afresh.
    pub fn restart(&mut self) -> Result<std::process::ExitStatus> {
        self.interrupt();
        let status = self.wait_exit(Duration::from_secs(20))?;
        let (child, output) = spawn(&self.argv, &self.env, &self.project())?;
        self.child = child;
        self.output = output;
        Ok(status)
    }

    /// Send SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }

    pub fn project(&self) -> PathBuf {
        self.dir
            .path()
            .join("gin-hello")
            .canonicalize()
            .expect("the project copy exists")
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Write `content` to `rel` in the project, creating directories.
    pub fn write(&self, rel: &str, content: &str) {
        let p = self.project().join(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }

    /// `msg` is a Go expression (or something that does not compile).
    pub fn set_message(&self, msg: &str) {
        set_ping_expr(&self.project(), msg).expect("main.go has the ping line");
    }

    /// Wait until GET /ping answers with `message`; returns how long it took.
    pub async fn wait_served(&self, message: &str, timeout: Duration) -> Result<Duration> {
        let want = format!(r#"{{"message":"{message}"}}"#);
        let port = self.port;
        let mut last;
        let t0 = tokio::time::Instant::now();
        let deadline = t0 + timeout;
        loop {
            let got = tokio::task::spawn_blocking(move || {
                http_get(port, "/ping", Duration::from_secs(10))
            })
            .await?;
            match got {
                Ok(body) if body.contains(&want) => return Ok(t0.elapsed()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{want} not served within {timeout:?}; last answer: {last}\nkdev output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until kdev's output has `needle`.
    pub async fn wait_output(&self, needle: &str, timeout: Duration) -> Result<Duration> {
        let t0 = tokio::time::Instant::now();
        while !self.output().contains(needle) {
            if t0.elapsed() > timeout {
                bail!(
                    "`{needle}` not in kdev's output within {timeout:?}:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(t0.elapsed())
    }

    /// Wait until kdev's output has `needle` (`Some`), or kdev exits first (`None`, its output
    /// complete).
    pub async fn wait_output_or_exit(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<Option<Duration>> {
        let t0 = tokio::time::Instant::now();
        loop {
            if self.output().contains(needle) {
                return Ok(Some(t0.elapsed()));
            }
            if self.child.try_wait()?.is_some() {
                self.wait_exit(Duration::from_secs(5))?;
                return Ok(None);
            }
            if t0.elapsed() > timeout {
                bail!(
                    "`{needle}` not in kdev's output within {timeout:?}:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait for kdev to exit, and for everything it wrote to be in `output()`; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // spawn_captured's reader threads hold the other references to the output until
                // they reach the end of kdev's stdout and stderr; kdev's last words (why it
                // stopped) may still be in a pipe when it has exited. A grandchild holding the
                // pipes open cannot delay this by more than 2 s.
                let drained = std::time::Instant::now() + Duration::from_secs(2);
                while Arc::strong_count(&self.output) > 1 && std::time::Instant::now() < drained {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "kdev did not exit within {timeout:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn spawn(
    argv: &[String],
    env: &[(String, String)],
    dir: &Path,
) -> Result<(Child, Arc<Mutex<String>>)> {
    let (program, rest) = argv.split_first().context("an empty command line")?;
    let mut cmd = Command::new(program);
    cmd.args(rest).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_captured(&mut cmd)
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest gin-hello dev pod that is not being deleted.
pub async fn dev_pod(pods: &Api<Pod>) -> Result<Pod> {
    let list = pods
        .list(&ListParams::default().labels("kdev.dev/project=gin-hello"))
        .await?;
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
        .context("no gin-hello pod")
}

/// One entry of a tree, as the fault tests compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { blake3: String, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// The local tree under `root` (lstat: links are not followed), without the paths in `skip`
/// (relative, with everything below them): what kdev cannot or must not sync.
pub fn local_nodes(root: &Path, skip: &[&str]) -> Result<BTreeMap<String, Node>> {
    fn walk(
        root: &Path,
        dir: &Path,
        skip: &[&str],
        out: &mut BTreeMap<String, Node>,
    ) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p)?;
            let mode = meta.permissions().mode() & 0o777;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&p)?.to_string_lossy().into_owned();
                out.insert(rel, Node::Symlink { target });
            } else if ft.is_dir() {
                out.insert(rel, Node::Dir { mode });
                walk(root, &p, skip, out)?;
            } else if ft.is_file() {
                let blake3 = blake3::hash(&std::fs::read(&p)?).to_hex().to_string();
                out.insert(rel, Node::File { blake3, mode });
            } else {
                bail!("{rel} is neither a file, a directory nor a symlink: add it to `skip`");
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out)?;
    Ok(out)
}

/// The pod's tree under the sync root, read through a tar made by the sidecar's busybox.
pub async fn pod_nodes(pods: &Api<Pod>, pod: &str) -> Result<BTreeMap<String, Node>> {
    let out = exec(
        pods,
        pod,
        "kdev",
        &["tar", "-c", "-C", "/kdev/src", "."],
        None,
    )
    .await?
    .ok()?;
    let mut nodes = BTreeMap::new();
    for entry in tar::Archive::new(out.stdout.as_slice()).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        let mode = entry.header().mode()? & 0o777;
        let ty = entry.header().entry_type();
        let node = if ty.is_dir() {
            Node::Dir { mode }
        } else if ty.is_symlink() {
            let target = entry
                .link_name()?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            Node::Symlink { target }
        } else if ty.is_file() {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content)?;
            Node::File {
                blake3: blake3::hash(&content).to_hex().to_string(),
                mode,
            }
        } else {
            bail!("unexpected tar entry {path} ({ty:?}) in the pod's tree");
        };
        nodes.insert(path, node);
    }
    Ok(nodes)
}

/// The differences between two trees, one line each (empty when equal).
pub fn tree_diff(local: &BTreeMap<String, Node>, pod: &BTreeMap<String, Node>) -> Vec<String> {
    let mut diff = Vec::new();
    for (p, l) in local {
        match pod.get(p) {
            None => diff.push(format!("missing in the pod: {p} ({l:?})")),
            Some(r) if r != l => diff.push(format!("differs: {p}: local {l:?}, pod {r:?}")),
            Some(_) => {}
        }
    }
    for (p, r) in pod {
        if !local.contains_key(p) {
            diff.push(format!("only in the pod: {p} ({r:?})"));
        }
    }
    diff
}

/// The dev pod's whole tree equals the local one (minus `skip`), within a few seconds.
pub async fn assert_pod_tree_equals_local(
    pods: &Api<Pod>,
    root: &Path,
    skip: &[&str],
) -> Result<()> {
    let mut last = Vec::new();
    for _ in 0..50 {
        let local = local_nodes(root, skip)?;
        let pod = dev_pod(pods).await?.name_any();
        match pod_nodes(pods, &pod).await {
            Ok(remote) => {
                last = tree_diff(&local, &remote);
                if last.is_empty() {
                    return Ok(());
                }
            }
            Err(e) => last = vec![e.to_string()],
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "the pod's tree differs from the local one:\n{}",
        last.join("\n")
    )
}

//! The CLI's side of the one long-lived exec stream to `kdev-controller serve`.
//!
//! A new exec per change would cost a round trip through the API server and the kubelet, which
//! is most of what a small change should cost; so one stream carries every request, response and
//! event of a session. Events can arrive at any time, also while a request waits for its
//! response: they are queued and handed out by [`ControllerSession::next_event`].

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kdev_protocol::asynchronous::{
    client_handshake_async, read_message_async, write_message_async,
};
use kdev_protocol::{
    BuildMode, ClientMessage, ErrorMessage, Hello, Patch, PatchResult, Ping, Reconcile,
    ReconcileResult, ServerMessage, Welcome,
};
use kube::api::{Api, AttachParams, AttachedProcess};
use tokio::io::{AsyncBufReadExt, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use crate::rewrite::{CONTROLLER_PATH, KDEV_DIR, SIDECAR_NAME};
use crate::tree::{self, Met, OpenError};
use crate::unsyncable::{Reason, Unsyncable};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot start kdev-controller in pod {pod}: {source}")]
    Exec {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("handshake with kdev-controller failed: {0}")]
    Handshake(String),
    #[error("the controller refused the request: {}: {}", .0.code, .0.message)]
    Refused(ErrorMessage),
    #[error("the exec stream to kdev-controller ended{}", stderr_suffix(.0))]
    Closed(String),
    #[error("writing to kdev-controller: {0}")]
    Write(String),
    #[error("building the patch: {0}")]
    Tar(std::io::Error),
    #[error("kdev-controller did not answer within {0:?}")]
    Timeout(Duration),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A running `kdev-controller serve`.
pub struct ControllerSession {
    writer: Writer,
    incoming: mpsc::Receiver<ServerMessage>,
    events: VecDeque<ServerMessage>,
    stderr_tail: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
    next_id: u64,
    pub welcome: Welcome,
    // Kept so the stream stays open; dropping it ends the session.
    _process: AttachedProcess,
}

impl ControllerSession {
    /// Exec `kdev-controller serve` in the pod's sidecar and do the handshake.
    pub async fn open(
        pods: &Api<Pod>,
        pod: &str,
        hello: Hello,
    ) -> Result<ControllerSession, SessionError> {
        let params = AttachParams::default()
            .container(SIDECAR_NAME)
            .stdin(true)
            .stdout(true)
            .stderr(true);
        // Build with the image's own Go caches (which it may ship pre-filled), where `go env`
        // says they are in that image.
        let script = format!(
            "m=$(go env GOMODCACHE 2>/dev/null); c=$(go env GOCACHE 2>/dev/null); \
             exec {CONTROLLER_PATH} serve --kdev-dir={KDEV_DIR} ${{m:+--gomodcache=\"$m\"}} \
             ${{c:+--gocache=\"$c\"}}"
        );
        let command = vec!["sh".to_string(), "-c".into(), script];
        let mut process =
            pods.exec(pod, command, &params)
                .await
                .map_err(|source| SessionError::Exec {
                    pod: pod.into(),
                    source,
                })?;
        let mut stdout = process.stdout().expect("stdout was requested");
        let stderr = process.stderr().expect("stderr was requested");
        let mut writer: Writer = Box::new(process.stdin().expect("stdin was requested"));

        // The controller logs to stderr; keep the last lines to explain a broken stream.
        let stderr_tail = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
        {
            let tail = stderr_tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "kdev::controller", "{line}");
                    let mut t = tail.lock().unwrap();
                    t.push_back(line);
                    if t.len() > 20 {
                        t.pop_front();
                    }
                }
            });
        }

        let welcome = tokio::time::timeout(
            Duration::from_secs(30),
            client_handshake_async(&mut stdout, &mut writer, hello),
        )
        .await
        .map_err(|_| SessionError::Timeout(Duration::from_secs(30)))?
        .map_err(|e| {
            let tail = stderr_tail
                .lock()
                .unwrap()
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            SessionError::Handshake(format!("{e}{}", stderr_suffix(&tail)))
        })?;

        let (tx, incoming) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = read_message_async::<ServerMessage, _>(&mut stdout).await {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        Ok(ControllerSession {
            writer,
            incoming,
            events: VecDeque::new(),
            stderr_tail,
            next_id: 1,
            welcome,
            _process: process,
        })
    }

    fn closed(&self) -> SessionError {
        SessionError::Closed(
            self.stderr_tail
                .lock()
                .unwrap()
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn send(&mut self, msg: &ClientMessage) -> Result<(), SessionError> {
        write_message_async(&mut self.writer, msg)
            .await
            .map_err(|e| SessionError::Write(e.to_string()))
    }

    /// Wait for the response `pick` accepts, queueing events that arrive meanwhile.
    async fn response<T>(
        &mut self,
        id: u64,
        timeout: Duration,
        mut pick: impl FnMut(ServerMessage) -> Result<T, Box<ServerMessage>>,
    ) -> Result<T, SessionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .map_err(|_| SessionError::Timeout(timeout))?
                .ok_or_else(|| self.closed())?;
            if let ServerMessage::Error(e) = &msg
                && (e.id == Some(id) || e.fatal)
            {
                return Err(SessionError::Refused(e.clone()));
            }
            match pick(msg) {
                Ok(t) => return Ok(t),
                Err(other) => self.events.push_back(*other),
            }
        }
    }

    /// The pod's listing of the sync root.
    pub async fn reconcile(&mut self) -> Result<ReconcileResult, SessionError> {
        let id = self.id();
        self.send(&ClientMessage::Reconcile(Reconcile { id }))
            .await?;
        self.response(id, Duration::from_secs(300), |m| match m {
            ServerMessage::ReconcileResult(r) if r.id == id => Ok(r),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Send deletions plus a tar of files; returns what was applied.
    pub async fn patch(
        &mut self,
        deletes: Vec<String>,
        tar: Vec<u8>,
        build: BuildMode,
    ) -> Result<PatchResult, SessionError> {
        let id = self.id();
        let bytes = tar.len();
        let t0 = std::time::Instant::now();
        self.send(&ClientMessage::Patch(Patch {
            id,
            deletes,
            build,
            tar,
        }))
        .await?;
        let t_sent = t0.elapsed();
        let result = self
            .response(id, Duration::from_secs(300), |m| match m {
                ServerMessage::PatchResult(r) if r.id == id => Ok(r),
                other => Err(Box::new(other)),
            })
            .await?;
        tracing::debug!(
            "patch {id}: {bytes} bytes written in {t_sent:?}, applied in the pod in {} ms, \
             answered after {:?}",
            result.elapsed_ms,
            t0.elapsed()
        );
        Ok(result)
    }

    /// Build now (and restart on success); the outcome arrives as events.
    pub async fn build(&mut self) -> Result<(), SessionError> {
        let id = self.id();
        self.send(&ClientMessage::Build(kdev_protocol::BuildRequest { id }))
            .await
    }

    /// Check that the controller still answers.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), SessionError> {
        let id = self.id();
        self.send(&ClientMessage::Ping(Ping { id })).await?;
        self.response(id, timeout, |m| match m {
            ServerMessage::Pong(p) if p.id == id => Ok(()),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// The next event (or unsolicited message); an error when the stream has ended.
    pub async fn next_event(&mut self) -> Result<ServerMessage, SessionError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        self.incoming.recv().await.ok_or_else(|| self.closed())
    }

    /// End the session politely.
    pub async fn close(mut self) {
        let _ = self.send(&ClientMessage::Bye).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.writer).await;
    }
}

/// A patch's tar, and what was left out of it.
#[derive(Debug, Default)]
pub struct PatchTar {
    pub tar: Vec<u8>,
    /// How many entries the tar holds.
    pub count: usize,
    /// Paths that can no longer be synced (they changed since they were listed): left out, and
    /// named so that the caller can treat them as it treats the listing's.
    pub skipped: Vec<Unsyncable>,
}

/// What goes into the tar for one path.
enum Item {
    Dir,
    Link(String),
    File(std::fs::File),
}

/// [`build_patch_tar`]'s tar and entry count (what it skipped is dropped: the next event or
/// rescan classifies those paths again).
pub fn build_tar(root: &Path, paths: &[String]) -> Result<(Vec<u8>, usize), SessionError> {
    let t = build_patch_tar(root, paths)?;
    Ok((t.tar, t.count))
}

/// A tar of `paths` (relative, `/`-separated) under `root`: files with their mode, symlinks as
/// symlinks, directories as directories. The paths were listed a moment ago and may have changed
/// since, so each is classified again, and nothing the pod cannot hold gets in: no path reached
/// through a symlink, no link leaving the root, no FIFO, socket or device (a file is opened with
/// `O_NOFOLLOW | O_NONBLOCK` and checked to still be a regular file, so a FIFO cannot block it),
/// and an unreadable file is skipped, not fatal. A path that vanished is skipped: the next event
/// for it will delete it.
pub fn build_patch_tar(root: &Path, paths: &[String]) -> Result<PatchTar, SessionError> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut out = PatchTar::default();
    for p in paths {
        if !tree::parents_are_dirs(root, Path::new(p)) {
            continue; // only reachable through a symlink now: not in the tree
        }
        let full = root.join(p);
        let unreadable =
            |e: &std::io::Error| Unsyncable::new(p, Reason::UnreadableFile(Reason::io_text(e)));
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.skipped.push(unreadable(&e));
                continue;
            }
        };
        let (meta, item) = if meta.is_file() {
            match tree::open_regular(&full) {
                // The fstat of what was opened describes what is sent.
                Ok((f, m)) => (m, Item::File(f)),
                Err(OpenError::Gone) => continue,
                Err(OpenError::NotRegular(reason)) => {
                    out.skipped.push(Unsyncable::new(p, reason));
                    continue;
                }
                Err(OpenError::Unreadable(e)) => {
                    out.skipped.push(unreadable(&e));
                    continue;
                }
            }
        } else {
            match tree::classify(root, &full, p.clone(), &meta) {
                None => continue,
                Some(Met::Unsyncable(u)) => {
                    out.skipped.push(u);
                    continue;
                }
                // The target checked by the classification is the one sent.
                Some(Met::Synced { stat, .. }) => match stat.target {
                    Some(t) => (meta, Item::Link(t)),
                    None => (meta, Item::Dir),
                },
            }
        };
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        // Deterministic mode drops the permission bits' detail; keep them exactly.
        {
            use std::os::unix::fs::PermissionsExt;
            header.set_mode(meta.permissions().mode() & 0o7777);
        }
        let res = match item {
            Item::Dir => {
                header.set_size(0);
                b.append_data(&mut header, p, std::io::empty())
            }
            Item::Link(target) => {
                header.set_size(0);
                b.append_link(&mut header, p, target)
            }
            Item::File(f) => {
                let len = meta.len();
                header.set_size(len);
                b.append_data(&mut header, p, std::io::Read::take(f, len))
            }
        };
        res.map_err(SessionError::Tar)?;
        out.count += 1;
    }
    out.tar = b.into_inner().map_err(SessionError::Tar)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tar_keeps_modes_symlinks_dirs_and_skips_vanished_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("pkg")).unwrap();
        std::fs::write(root.join("pkg/a.go"), "package pkg").unwrap();
        std::fs::write(root.join("run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("pkg/a.go", root.join("link")).unwrap();
        let paths: Vec<String> = ["pkg", "pkg/a.go", "run.sh", "link", "gone.go"]
            .map(String::from)
            .to_vec();
        let PatchTar {
            tar,
            count,
            skipped,
        } = build_patch_tar(root, &paths).unwrap();
        assert_eq!(count, 4);
        assert!(skipped.is_empty());
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let kind = e.header().entry_type();
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            seen.push((
                path,
                kind.is_dir(),
                kind.is_symlink(),
                mode & 0o777,
                data,
                link,
            ));
        }
        assert_eq!(seen[0].0, "pkg");
        assert!(seen[0].1);
        assert_eq!(
            (seen[1].0.as_str(), seen[1].4.as_str()),
            ("pkg/a.go", "package pkg")
        );
        assert_eq!(seen[1].3 & 0o111, 0, "a.go is not executable");
        assert_eq!(seen[2].3, 0o755, "run.sh keeps its executable bits");
        assert!(seen[3].2, "link is a symlink");
        assert_eq!(seen[3].5.as_deref(), Some("pkg/a.go"));
    }

    /// Paths listed a moment ago may have become something the pod cannot hold: the tar skips
    /// them (naming them), and a FIFO does not block it.
    #[test]
    fn tar_never_carries_or_blocks_on_what_cannot_be_synced() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir(root.join("handlers")).unwrap();
        std::fs::write(root.join("handlers/a.go"), "package handlers").unwrap();
        std::fs::write(root.join("ok.go"), "x").unwrap();
        std::os::unix::fs::symlink("handlers", root.join("alias")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../x", root.join("handlers/up")).unwrap();
        // Listed as a file, a FIFO by the time the tar is built.
        let fifo =
            std::ffi::CString::new(root.join("was-a-file.go").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(root.join("secret.go"), "x").unwrap();
        std::fs::set_permissions(
            root.join("secret.go"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        let paths: Vec<String> = [
            "alias/a.go",
            "etc",
            "handlers/up",
            "was-a-file.go",
            "secret.go",
            "ok.go",
        ]
        .map(String::from)
        .to_vec();
        let (tx, rx) = std::sync::mpsc::channel();
        let root2 = root.clone();
        std::thread::spawn(move || {
            let out = crate::tree::tests::without_dac_override(|| build_patch_tar(&root2, &paths));
            let _ = tx.send(out);
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("build_tar blocked (on the FIFO?)")
            .unwrap();
        let mut archive = tar::Archive::new(out.tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["ok.go"]);
        assert_eq!(out.count, 1);
        let skipped: Vec<String> = out.skipped.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            skipped,
            vec![
                "etc: symlink to /etc, outside the sync root",
                "handlers/up: symlink to ../../x, outside the sync root",
                "was-a-file.go: a FIFO (named pipe)",
                "secret.go: cannot read the file: permission denied",
            ]
        );
    }
}

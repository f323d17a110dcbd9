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
        let part = move |m| match m {
            ServerMessage::ReconcileResult(r) if r.id == id => Ok(r),
            other => Err(Box::new(other)),
        };
        // A large listing comes in parts: all but the last say `more`.
        let mut listing = self.response(id, Duration::from_secs(300), part).await?;
        while listing.more {
            let next = self.response(id, Duration::from_secs(300), part).await?;
            listing.absorb(next);
        }
        Ok(listing)
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

/// A tar of `paths` (relative, `/`-separated) under `root`: files with their mode, symlinks as
/// symlinks, directories as directories. A path that vanished since it was listed is skipped:
/// the next event for it will delete it.
pub fn build_tar(root: &Path, paths: &[String]) -> Result<(Vec<u8>, usize), SessionError> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut count = 0;
    for p in paths {
        let full = root.join(p);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SessionError::Tar(e)),
        };
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        // Deterministic mode drops the permission bits' detail; keep them exactly.
        {
            use std::os::unix::fs::PermissionsExt;
            header.set_mode(meta.permissions().mode() & 0o7777);
        }
        let ft = meta.file_type();
        let res = if ft.is_dir() {
            header.set_size(0);
            b.append_data(&mut header, p, std::io::empty())
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full).map_err(SessionError::Tar)?;
            header.set_size(0);
            b.append_link(&mut header, p, target)
        } else if ft.is_file() {
            match std::fs::File::open(&full) {
                Ok(f) => {
                    // The size may have changed since the stat: take it from the open file.
                    let len = f.metadata().map_err(SessionError::Tar)?.len();
                    header.set_size(len);
                    b.append_data(&mut header, p, std::io::Read::take(f, len))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SessionError::Tar(e)),
            }
        } else {
            continue;
        };
        res.map_err(SessionError::Tar)?;
        count += 1;
    }
    Ok((b.into_inner().map_err(SessionError::Tar)?, count))
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
        let (tar, count) = build_tar(root, &paths).unwrap();
        assert_eq!(count, 4);
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
}

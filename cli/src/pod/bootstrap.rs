//! Bootstrap: put the CLI's own, version-matched `kdev-controller` into the pod.
//!
//! No custom image, registry or `kind load`: the binary is statically linked, so it runs in any
//! image, and it travels through the exec API into the shared `/kdev` volume. An upload is
//! skipped when the pod already holds the same binary (same BLAKE3 hash).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::deploy::rewrite::{CONTROLLER_PATH, SIDECAR_NAME};

/// Environment variable naming the controller binary to upload.
pub const CONTROLLER_ENV: &str = "KDEV_CONTROLLER_BIN";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "this kdev carries no kdev-controller and found no statically linked one (looked at: \
         {0}). Install kdev with `cargo install --path cli` (release builds embed it), or build \
         one with `controller/build-static` and point {CONTROLLER_ENV} at it"
    )]
    NotFound(String),
    #[error(
        "{0} is dynamically linked and would not run in most images; build it with `controller/build-static`"
    )]
    Dynamic(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("uploading kdev-controller into pod {pod}: {message}")]
    Upload { pod: String, message: String },
}

/// Whether `data` is an ELF executable that needs a dynamic loader (a PT_INTERP header).
pub(super) fn is_dynamic_elf(data: &[u8]) -> bool {
    // ELF64 little-endian only (what we build); anything else is not ours to judge.
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let off = phoff + i * phentsize;
        off + 4 <= data.len() && u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

/// What [`upload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uploaded {
    /// The pod already had this binary.
    AlreadyPresent,
    /// Uploaded this many bytes.
    Bytes(usize),
}

/// Make sure the pod's sidecar holds `binary` at [`CONTROLLER_PATH`].
pub async fn upload(pods: &Api<Pod>, pod: &str, binary: &[u8]) -> Result<Uploaded, BootstrapError> {
    let hash = kdev_protocol::hash_bytes(binary).to_string();
    let marker = format!("{CONTROLLER_PATH}.blake3");
    let err = |message: String| BootstrapError::Upload {
        pod: pod.into(),
        message,
    };

    let present = exec_sh(pods, pod, &format!("cat {marker} 2>/dev/null; true"), None)
        .await
        .map_err(err)?;
    if present.trim() == hash
        && exec_sh(
            pods,
            pod,
            &format!("test -x {CONTROLLER_PATH} && echo ok"),
            None,
        )
        .await
        .map_err(err)?
        .trim()
            == "ok"
    {
        return Ok(Uploaded::AlreadyPresent);
    }
    // Write to a temp name and rename, so a reader never sees half a binary (a running
    // controller keeps its old inode).
    let script = format!(
        "set -e; d=$(dirname {CONTROLLER_PATH}); mkdir -p \"$d\"; t=\"$d/.kdev-controller.$$\"; \
         cat > \"$t\"; chmod 0755 \"$t\"; mv -f \"$t\" {CONTROLLER_PATH}; echo {hash} > {marker}; echo done"
    );
    let out = exec_sh(pods, pod, &script, Some(binary))
        .await
        .map_err(err)?;
    if out.trim() != "done" {
        return Err(BootstrapError::Upload {
            pod: pod.into(),
            message: format!("unexpected output: {out}"),
        });
    }
    Ok(Uploaded::Bytes(binary.len()))
}

/// Run a shell script in the sidecar and return its stdout; a failure carries its stderr.
pub(crate) async fn exec_sh(
    pods: &Api<Pod>,
    pod: &str,
    script: &str,
    stdin: Option<&[u8]>,
) -> Result<String, String> {
    use kube::api::AttachParams;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let params = AttachParams::default()
        .container(SIDECAR_NAME)
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true);
    let mut proc = pods
        .exec(
            pod,
            vec!["sh".to_string(), "-c".into(), script.into()],
            &params,
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) => format!("exec failed: {}", status.message),
            other => format!("exec failed: {other} (the sidecar image needs `sh` and `cat`)"),
        })?;
    let mut out = proc.stdout().expect("requested");
    let mut errs = proc.stderr().expect("requested");
    let status = proc.take_status().expect("first take");
    let read_out = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s).await;
        s
    });
    let read_err = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = errs.read_to_end(&mut s).await;
        s
    });
    if let Some(data) = stdin {
        let mut w = proc.stdin().expect("requested");
        w.write_all(data).await.map_err(|e| e.to_string())?;
        // Dropping the writer does not send EOF: shut it down.
        w.shutdown().await.map_err(|e| e.to_string())?;
    }
    let status = status.await;
    let stdout = read_out.await.unwrap_or_default();
    let stderr = read_err.await.unwrap_or_default();
    let _ = proc.join().await;
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => {
            Ok(String::from_utf8_lossy(&stdout).into_owned())
        }
        Some(s) => Err(format!(
            "{} {}",
            s.message.unwrap_or_default(),
            String::from_utf8_lossy(&stderr).trim()
        )),
        None => Err("the exec stream ended without a status".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dynamic_elf() {
        // This test binary is dynamically linked (cargo's default for the host).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_dynamic_elf(&me));
        assert!(!is_dynamic_elf(b"#!/bin/sh\necho not elf\n"));
        let busybox = std::path::Path::new("/bin/busybox");
        if let Ok(data) = std::fs::read(busybox) {
            // Debian's busybox-static is static; the dynamic `busybox` package is not.
            let dynamic = std::process::Command::new("ldd")
                .arg(busybox)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(true);
            assert_eq!(is_dynamic_elf(&data), dynamic);
        }
    }
}

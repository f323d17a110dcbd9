//! `kdev debug`: the watch loop with the app built for debugging and run under Delve headless,
//! Delve's port forwarded to localhost, and the editor's attach configuration printed.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::AsyncReadExt;

use crate::deploy::rewrite::DLV_PATH;
use crate::ui::Ui;

/// Delve's default port.
pub const DEFAULT_PORT: u16 = 2345;
/// `go build` flags that keep variables and lines debuggable.
pub const DEBUG_GCFLAGS: &str = "-gcflags=all=-N -l";

/// Options of `kdev debug`.
#[derive(Debug, Clone)]
pub struct DebugOptions {
    /// Delve's port, in the pod and on localhost.
    pub port: u16,
    /// Start the app at once (`dlv --continue`); false waits for a debugger to continue it.
    pub continue_at_start: bool,
    /// Sync saves but build and restart only when asked (Enter), so a debugging session is not
    /// cut by every save.
    pub hold: bool,
}

/// The VS Code `launch.json` entry and the GoLand settings that attach to kdev's Delve.
fn editor_config(
    local_root: &Path,
    remote_root: &str,
    port: u16,
    name: &str,
) -> (serde_json::Value, String) {
    let local = local_root.display().to_string();
    let vscode = serde_json::json!({
        "name": format!("kdev: attach to {name}"),
        "type": "go",
        "request": "attach",
        "mode": "remote",
        "host": "127.0.0.1",
        "port": port,
        "substitutePath": [{ "from": local, "to": remote_root }],
    });
    let goland = format!(
        "GoLand: Run > Edit Configurations > + > Go Remote: host 127.0.0.1, port {port}; \
         then in the debugger's path mappings map {local} to {remote_root}"
    );
    (vscode, goland)
}

/// What the editor's attach configuration maps: the local sources, the pod's, the project.
pub struct EditorTarget<'a> {
    pub local_root: &'a Path,
    pub remote_root: &'a str,
    pub name: &'a str,
}

/// Print the editor configuration.
pub fn print_editor_config(local_root: &Path, remote_root: &str, port: u16, name: &str) {
    let (vscode, goland) = editor_config(local_root, remote_root, port, name);
    println!("VS Code (.vscode/launch.json, in \"configurations\"):");
    println!(
        "{}",
        serde_json::to_string_pretty(&vscode).unwrap_or_default()
    );
    println!("{goland}");
}

/// Copy Delve from the sidecar image into the shared volume, where the app container can run
/// it. Delve must be statically linked (Go's default with CGO_ENABLED=0) to run there.
pub async fn install_delve(pods: &Api<Pod>, pod: &str, image: &str) -> anyhow::Result<()> {
    let script = format!(
        "set -e; d=$(command -v dlv || true); \
         if [ -z \"$d\" ]; then for c in /go/bin/dlv /root/go/bin/dlv /usr/local/bin/dlv; do [ -x $c ] && d=$c && break; done; fi; \
         [ -n \"$d\" ] || exit 3; \
         if [ -x {DLV_PATH} ] && cmp -s \"$d\" {DLV_PATH} 2>/dev/null; then exit 0; fi; \
         t={DLV_PATH}.$$; cp \"$d\" \"$t\"; chmod 0755 \"$t\"; mv -f \"$t\" {DLV_PATH}"
    );
    match crate::pod::bootstrap::exec_sh(pods, pod, &script, None).await {
        Ok(_) => Ok(()),
        Err(e) if e.contains("exit code 3") => anyhow::bail!(
            "Delve (dlv) is not in the sidecar image {image}: use an image that has it, e.g. build \
             one FROM golang with `RUN CGO_ENABLED=0 go install github.com/go-delve/delve/cmd/dlv@latest`, \
             and set `sidecar.image` in kdev.yaml"
        ),
        Err(e) => anyhow::bail!("copying Delve into the pod failed: {}", e.trim()),
    }
}

/// Whether something in the pod accepts connections on `port` (through a port-forward: a
/// refused connection closes the stream at once, an accepted one stays silent).
async fn port_open(pods: &Api<Pod>, pod: &str, port: u16) -> bool {
    let Ok(mut pf) = pods.portforward(pod, &[port]).await else {
        return false;
    };
    let Some(mut stream) = pf.take_stream(port) else {
        return false;
    };
    let mut buf = [0u8; 1];
    let open = matches!(
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await,
        Err(_) | Ok(Ok(1..))
    );
    drop(stream);
    pf.abort();
    open
}

/// A hint for Delve's own failure messages.
pub fn ptrace_hint(output: &str) -> Option<&'static str> {
    (output.contains("operation not permitted") || output.contains("ptrace")).then_some(
        "Delve may not ptrace here: allow it in the app container with \
         `securityContext: {capabilities: {add: [SYS_PTRACE]}}` (and a seccomp profile that \
         permits ptrace, e.g. `seccompProfile: {type: Unconfined}`)",
    )
}

/// Once Delve listens after a (re)start, say so: the full editor configuration the first time,
/// a reminder to re-attach after that.
pub async fn announce(
    pods: &Api<Pod>,
    pod: &str,
    d: &DebugOptions,
    editor: &EditorTarget<'_>,
    ui: &Ui,
    announced: &mut bool,
) {
    for _ in 0..20 {
        if port_open(pods, pod, d.port).await {
            if *announced {
                ui.ok(&format!(
                    "Delve restarted on 127.0.0.1:{}: re-attach your debugger",
                    d.port
                ));
            } else {
                ui.ok(&format!(
                    "Delve listening on 127.0.0.1:{} — attach your editor:",
                    d.port
                ));
                print_editor_config(editor.local_root, editor.remote_root, d.port, editor.name);
                *announced = true;
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ui.warn(&format!(
        "Delve does not accept connections on pod port {}; see the app's output above",
        d.port
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_json_maps_the_local_root_to_the_pod_root() {
        let (v, goland) = editor_config(
            Path::new("/home/me/gin-hello"),
            "/kdev/src",
            2345,
            "gin-hello",
        );
        assert_eq!(v["mode"], "remote");
        assert_eq!(v["port"], 2345);
        assert_eq!(v["substitutePath"][0]["from"], "/home/me/gin-hello");
        assert_eq!(v["substitutePath"][0]["to"], "/kdev/src");
        assert!(goland.contains("/home/me/gin-hello") && goland.contains("/kdev/src"));
        assert!(ptrace_hint("could not attach: operation not permitted").is_some());
    }
}

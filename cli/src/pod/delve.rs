//! `kdev debug`: the watch loop with the app built for debugging and run under Delve headless,
//! Delve's port forwarded to localhost, and the editor's attach configuration printed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

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
    println!(
        "{}",
        editor_config_text(local_root, remote_root, port, name)
    );
}

/// The editor configuration, as printed.
pub fn editor_config_text(local_root: &Path, remote_root: &str, port: u16, name: &str) -> String {
    let (vscode, goland) = editor_config(local_root, remote_root, port, name);
    format!(
        "VS Code (.vscode/launch.json, in \"configurations\"):\n{}\n{goland}",
        serde_json::to_string_pretty(&vscode).unwrap_or_default()
    )
}

/// The Delve kdev builds in the pod when the sidecar image has none (with the pod's own Go,
/// so it matches the toolchain that builds the app). The same as the test images carry; a
/// newer Go may need a newer Delve.
pub const DELVE_VERSION: &str = "v1.27.2";

/// How installing Delve went.
#[derive(Debug, PartialEq, Eq)]
pub enum DelveInstall {
    /// Copied from the sidecar image (or already in place).
    FromImage,
    /// Built in the pod now, taking this long.
    Built(Duration),
    /// Built in the pod earlier and kept on the build-cache volume.
    Cached,
}

/// Shell-quote a value for `sh -c` (single quotes).
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// The script that puts Delve at [`DLV_PATH`]: the sidecar image's own `dlv` if it has one;
/// otherwise (when `module_env` is set: the session's module proxy is up) one built with the
/// pod's Go, its modules coming through kdev, kept on the build-cache volume (or in
/// `/kdev/cache`) per Delve and Go version so a replaced pod does not build it again.
/// Exit 3: no Delve and no way to build one. Stdout's last line says which way it went.
fn install_script(module_env: &BTreeMap<String, String>) -> String {
    let copy_from_image = format!(
        "d=$(command -v dlv || true); \
         if [ -z \"$d\" ]; then for c in /go/bin/dlv /root/go/bin/dlv /usr/local/bin/dlv; do [ -x $c ] && d=$c && break; done; fi; \
         if [ -n \"$d\" ]; then \
           if ! {{ [ -x {DLV_PATH} ] && cmp -s \"$d\" {DLV_PATH} 2>/dev/null; }}; then \
             t={DLV_PATH}.$$; cp \"$d\" \"$t\"; chmod 0755 \"$t\"; mv -f \"$t\" {DLV_PATH}; fi; \
           echo image; exit 0; fi; "
    );
    if module_env.is_empty() {
        return format!("set -e; {copy_from_image}exit 3");
    }
    // Outside any module (`cd /`), with no GOFLAGS of the image (`-mod=vendor` would refuse
    // `go install pkg@version`), static (the app container may have no libc).
    let env: String = module_env
        .iter()
        .map(|(k, v)| format!("{k}={} ", sh_quote(v)))
        .collect();
    format!(
        "set -e; {copy_from_image}\
         command -v go >/dev/null || exit 3; \
         gv=$(go env GOVERSION); dir=\"${{KDEV_PERSISTENT_CACHE:-/kdev/cache}}/tools/dlv-{DELVE_VERSION}-$gv\"; \
         how=cached; \
         if [ ! -x \"$dir/dlv\" ]; then \
           how=built; tmp=\"$dir.tmp.$$\"; rm -rf \"$tmp\"; mkdir -p \"$tmp\"; cd /; \
           if ! env {env}GOFLAGS= CGO_ENABLED=0 GOBIN=\"$tmp\" go install \
                github.com/go-delve/delve/cmd/dlv@{DELVE_VERSION} >&2; then rm -rf \"$tmp\"; exit 4; fi; \
           rm -rf \"$dir\"; mv \"$tmp\" \"$dir\"; fi; \
         t={DLV_PATH}.$$; cp \"$dir/dlv\" \"$t\"; chmod 0755 \"$t\"; mv -f \"$t\" {DLV_PATH}; \
         echo \"$how $gv\""
    )
}

/// Put Delve into the shared volume, where the app container can run it: the sidecar image's
/// own, or (with the session's module proxy, `module_env` from the Welcome) one built in the
/// pod. Delve must be statically linked (Go's default with CGO_ENABLED=0) to run there.
pub async fn install_delve(
    pods: &Api<Pod>,
    pod: &str,
    image: &str,
    module_env: &BTreeMap<String, String>,
    ui: &Ui,
) -> anyhow::Result<DelveInstall> {
    let script = install_script(module_env);
    let t0 = Instant::now();
    // Said before, since building takes a while; the image's own is found at once.
    let building = tokio::spawn({
        let ui = ui.clone();
        let image = image.to_string();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            ui.step(&format!(
                "no Delve in {image}: building Delve {DELVE_VERSION} in the pod with its Go, \
                 modules through kdev (once per Go version; about a minute)"
            ));
        }
    });
    let res = crate::pod::bootstrap::exec_sh(pods, pod, &script, None).await;
    building.abort();
    match res {
        Ok(out) => {
            let last = out.lines().last().unwrap_or_default();
            Ok(match last.split_whitespace().next() {
                Some("built") => DelveInstall::Built(t0.elapsed()),
                Some("cached") => DelveInstall::Cached,
                _ => DelveInstall::FromImage,
            })
        }
        Err(e) if e.contains("exit code 3") => anyhow::bail!(
            "Delve (dlv) is not in the sidecar image {image}{}: use an image that has it, e.g. \
             build one FROM golang with `RUN CGO_ENABLED=0 go install \
             github.com/go-delve/delve/cmd/dlv@latest`, and set `sidecar.image` in kdev.yaml",
            if module_env.is_empty() {
                ", and kdev cannot build it there without its module proxy (vendored \
                 project, `modules: {proxy: false}` or a GOPROXY in build.env)"
            } else {
                ", which has no go command either"
            }
        ),
        Err(e) => anyhow::bail!(
            "installing Delve into the pod failed: {}",
            tail_lines(e.trim(), 15)
        ),
    }
}

/// The last `n` lines of `s` (go's error is at the end of its output).
fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

/// Once Delve listens for the first time, say so with the full editor configuration. Later
/// restarts need no word here: an attached editor stays attached ([`crate::debugger`] says
/// when it set a client's breakpoints again).
pub async fn announce(
    pods: &Api<Pod>,
    pod: &str,
    d: &DebugOptions,
    editor: &EditorTarget<'_>,
    ui: &Ui,
    announced: &mut bool,
) {
    if *announced {
        return;
    }
    for _ in 0..20 {
        if port_open(pods, pod, d.port).await {
            ui.ok(&format!(
                "Delve listening on 127.0.0.1:{} — attach your editor once; it stays attached \
                 across reloads:",
                d.port
            ));
            ui.text(&editor_config_text(
                editor.local_root,
                editor.remote_root,
                d.port,
                editor.name,
            ));
            *announced = true;
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

    #[test]
    fn delve_is_built_only_with_the_module_proxy_and_its_env_is_quoted() {
        let without = install_script(&BTreeMap::new());
        assert!(without.ends_with("exit 3"), "{without}");
        assert!(!without.contains("go install"));
        let env = BTreeMap::from([(
            "GOPROXY".to_string(),
            "http://127.0.0.1:4/it's/".to_string(),
        )]);
        let with = install_script(&env);
        assert!(with.contains(r"GOPROXY='http://127.0.0.1:4/it'\''s/' GOFLAGS= CGO_ENABLED=0"));
        assert!(with.contains(&format!("dlv@{DELVE_VERSION}")));
        // The image's own Delve still comes first.
        assert!(with.find("command -v dlv") < with.find("go install"));
    }
}

//! Rewrite the app's pod template into a kdev dev pod.
//!
//! What changes, and why:
//! - `shareProcessNamespace: true`: the sidecar signals the supervisor in the app container.
//! - an `emptyDir` at `/kdev` in both containers: sources, binaries and the controller.
//! - no cache in that `emptyDir`: the controller builds with the image's Go caches (`go env
//!   GOCACHE GOMODCACHE`, which an image may ship pre-filled), or, when kdev could get one, with a
//!   PersistentVolumeClaim at `/kdev/cache` that outlives the pod (added by [`super::cache`] once
//!   the claim is known).
//! - the sidecar as a native sidecar (an init container with `restartPolicy: Always`): it starts
//!   first, and its startup probe (the controller has been uploaded) holds the app container back
//!   until the supervisor exists, so that container never starts without it and never enters
//!   kubelet's restart backoff.
//! - the app container's command becomes `kdev-controller supervise -- /kdev/bin/app ARGS`.
//! - liveness and startup probes go: they would kill an app that has not been built yet; under
//!   `kdev debug` the readiness probe too: its requests would stop at the breakpoints.
//!   Readiness stays (it only gates Service traffic).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, ExecAction, PodSpec, PodTemplateSpec, Probe, Volume,
    VolumeMount,
};

use kdev_protocol::labels::{MANAGED_BY as LABEL_MANAGED_BY, MANAGED_BY_KDEV};
pub use kdev_protocol::layout::{APP_PATH, CONTROLLER_PATH, DLV_PATH, KDEV_DIR};

/// The sidecar's name.
pub const SIDECAR_NAME: &str = "kdev";
const SHARED_VOLUME: &str = "kdev";
/// The build cache volume's name in the pod spec (its claim is [`super::cache`]'s choice).
pub const CACHE_VOLUME: &str = "kdev-cache";

/// Run the app under Delve (`kdev debug`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugSpec {
    /// Delve's listen port in the pod.
    pub port: u16,
    /// Let the app run at once (`--continue`) rather than wait for a debugger to continue it.
    pub continue_at_start: bool,
}

/// How the template is rewritten.
#[derive(Debug, Clone)]
pub struct DevPodSpec {
    /// The app's container in the template.
    pub container: Option<String>,
    /// The sidecar's image (Go toolchain + sh).
    pub sidecar_image: String,
    /// The app's arguments; `None` keeps the container's own.
    pub args: Option<Vec<String>>,
    /// `--stop-signal` for the supervisor.
    pub stop_signal: Option<String>,
    /// `--grace-period` for the supervisor, in milliseconds.
    pub grace_period_ms: Option<u64>,
    /// Extra environment for the app container (`run.env`), overriding the container's own.
    pub env: BTreeMap<String, String>,
    /// Extra labels for the pod (session, owner).
    pub labels: BTreeMap<String, String>,
    /// Run the app under Delve.
    pub debug: Option<DebugSpec>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RewriteError {
    #[error("the workload's pod template has no containers")]
    NoContainers,
    #[error("container `{0}` not found in the workload (it has: {1})")]
    NoSuchContainer(String, String),
    #[error(
        "the workload already has a container or volume named `{0}`, which kdev needs; \
         rename it in your manifest"
    )]
    NameClash(String),
}

/// What the rewrite did that the user should know about.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RewriteNotes {
    /// The app container's name.
    pub container: String,
    /// The app's arguments after the rewrite.
    pub app_args: Vec<String>,
    /// Probes removed from the app container (`liveness`, `startup`).
    pub removed_probes: Vec<&'static str>,
    /// The container's TCP ports.
    pub ports: Vec<u16>,
}

/// Rewrite `template` in place.
pub fn rewrite_pod_template(
    template: &mut PodTemplateSpec,
    spec: &DevPodSpec,
) -> Result<RewriteNotes, RewriteError> {
    let labels = template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default);
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_KDEV.into());
    labels.extend(spec.labels.clone());

    let pod = template.spec.get_or_insert_with(Default::default);
    if pod.containers.is_empty() {
        return Err(RewriteError::NoContainers);
    }
    check_names_free(pod)?;
    pod.share_process_namespace = Some(true);
    pod.volumes
        .get_or_insert_with(Vec::new)
        .push(empty_dir(SHARED_VOLUME));

    let index = app_container(pod, spec.container.as_deref())?;
    let app = &mut pod.containers[index];
    let mut notes = RewriteNotes {
        container: app.name.clone(),
        ..Default::default()
    };

    // The app's own arguments: what followed the binary in `command`, then `args`.
    let app_args = spec.args.clone().unwrap_or_else(|| {
        let mut a: Vec<String> = app.command.iter().flatten().skip(1).cloned().collect();
        a.extend(app.args.iter().flatten().cloned());
        a
    });
    app.command = Some(supervise_command(spec, &app_args));
    app.args = None;
    notes.app_args = app_args;
    if !spec.env.is_empty() {
        let env = app.env.get_or_insert_with(Vec::new);
        env.retain(|e| !spec.env.contains_key(&e.name));
        env.extend(spec.env.iter().map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..Default::default()
        }));
    }

    if app.liveness_probe.take().is_some() {
        notes.removed_probes.push("liveness");
    }
    if app.startup_probe.take().is_some() {
        notes.removed_probes.push("startup");
    }
    // Under the debugger a readiness probe's requests stop at the developer's breakpoints (a
    // probe of the handler being debugged hits it every period), and the pod turns unready
    // while the app sits at one.
    if spec.debug.is_some() && app.readiness_probe.take().is_some() {
        notes.removed_probes.push("readiness");
    }
    app.volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: SHARED_VOLUME.into(),
            mount_path: KDEV_DIR.into(),
            ..Default::default()
        });
    notes.ports = app
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();

    pod.init_containers
        .get_or_insert_with(Vec::new)
        .push(sidecar(&spec.sidecar_image));
    Ok(notes)
}

/// The names kdev adds must be free: its volumes and its sidecar's.
fn check_names_free(pod: &PodSpec) -> Result<(), RewriteError> {
    let volumes = pod.volumes.iter().flatten();
    // The build cache's volume is added later, when its claim is known (`super::cache`).
    for name in [SHARED_VOLUME, CACHE_VOLUME] {
        if volumes.clone().any(|v| v.name == name) {
            return Err(RewriteError::NameClash(name.into()));
        }
    }
    if pod
        .init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
        .any(|c| c.name == SIDECAR_NAME)
    {
        return Err(RewriteError::NameClash(SIDECAR_NAME.into()));
    }
    Ok(())
}

/// The index of the app's container: the one named, else the first.
fn app_container(pod: &PodSpec, name: Option<&str>) -> Result<usize, RewriteError> {
    let Some(name) = name else {
        return Ok(0);
    };
    pod.containers
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| {
            let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
            RewriteError::NoSuchContainer(name.to_string(), names.join(", "))
        })
}

/// The app container's command: the supervisor, running the app (under Delve for `kdev
/// debug`) with its arguments.
fn supervise_command(spec: &DevPodSpec, app_args: &[String]) -> Vec<String> {
    let mut command = vec![CONTROLLER_PATH.to_string(), "supervise".into()];
    command.push(format!("--kdev-dir={KDEV_DIR}"));
    command.push(format!("--wait-for={APP_PATH}"));
    if let Some(sig) = &spec.stop_signal {
        command.push(format!("--stop-signal={sig}"));
    }
    if let Some(ms) = spec.grace_period_ms {
        command.push(format!("--grace-period={ms}ms"));
    }
    command.push("--".into());
    if let Some(d) = &spec.debug {
        // Delve launches the app as its child: no ptrace of another process is needed.
        command.push(DLV_PATH.into());
        command.extend(
            [
                "exec".to_string(),
                "--headless".into(),
                format!("--listen=:{}", d.port),
                "--api-version=2".into(),
                "--accept-multiclient".into(),
            ]
            .into_iter()
            .chain(d.continue_at_start.then(|| "--continue".to_string())),
        );
        command.push(APP_PATH.into());
        if !app_args.is_empty() {
            command.push("--".into());
        }
    } else {
        command.push(APP_PATH.into());
    }
    command.extend(app_args.iter().cloned());
    command
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// The native sidecar. Its main process only waits (the CLI runs `kdev-controller serve` in it
/// through exec); its startup probe passes once the controller has been uploaded.
fn sidecar(image: &str) -> Container {
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        restart_policy: Some("Always".into()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            // Exit promptly on TERM; otherwise wait forever without busy-looping.
            format!(
                "mkdir -p {KDEV_DIR}/bin {KDEV_DIR}/src {KDEV_DIR}/run; \
                 trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done"
            ),
        ]),
        // No GOFLAGS: `go` picks `-mod=vendor` for a vendored module and `readonly` otherwise,
        // as on the laptop, and an image's own GOFLAGS (or build.env's) stays in force.
        env: Some(vec![env("CGO_ENABLED", "0")]),
        volume_mounts: Some(vec![VolumeMount {
            name: SHARED_VOLUME.into(),
            mount_path: KDEV_DIR.into(),
            ..Default::default()
        }]),
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["test".into(), "-x".into(), CONTROLLER_PATH.into()]),
            }),
            period_seconds: Some(1),
            // The upload happens once the sidecar runs; allow a slow first image start.
            failure_threshold: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;

    fn gin_hello() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "gin-hello" },
            "spec": {
                "selector": { "matchLabels": { "app": "gin-hello" } },
                "template": {
                    "metadata": { "labels": { "app": "gin-hello" } },
                    "spec": {
                        "containers": [{
                            "name": "app",
                            "image": "kdev.local/gin-hello:dev",
                            "command": ["/app/gin-hello", "--verbose"],
                            "args": ["--port=8080"],
                            "env": [{ "name": "GIN_MODE", "value": "release" }],
                            "ports": [{ "containerPort": 8080, "name": "http" }],
                            "readinessProbe": { "httpGet": { "path": "/ping", "port": 8080 } },
                            "livenessProbe": { "httpGet": { "path": "/ping", "port": 8080 } }
                        }]
                    }
                }
            }
        }))
        .unwrap()
    }

    fn spec() -> DevPodSpec {
        DevPodSpec {
            container: None,
            sidecar_image: "golang:1.24".into(),
            args: None,
            stop_signal: Some("SIGINT".into()),
            grace_period_ms: Some(2000),
            env: BTreeMap::from([("GIN_MODE".to_string(), "debug".to_string())]),
            labels: BTreeMap::from([(
                kdev_protocol::labels::SESSION.to_string(),
                "s1".to_string(),
            )]),
            debug: None,
        }
    }

    #[test]
    fn rewrites_the_template_into_a_dev_pod() {
        let mut d = gin_hello();
        let template = &mut d.spec.as_mut().unwrap().template;
        let notes = rewrite_pod_template(template, &spec()).unwrap();
        let pod = template.spec.as_ref().unwrap();
        assert_eq!(pod.share_process_namespace, Some(true));
        let app = &pod.containers[0];
        assert_eq!(
            app.command.as_ref().unwrap(),
            &[
                "/kdev/bin/kdev-controller",
                "supervise",
                "--kdev-dir=/kdev",
                "--wait-for=/kdev/bin/app",
                "--stop-signal=SIGINT",
                "--grace-period=2000ms",
                "--",
                "/kdev/bin/app",
                "--verbose",
                "--port=8080"
            ]
        );
        assert!(app.args.is_none());
        assert!(app.liveness_probe.is_none());
        assert!(
            app.readiness_probe.is_some(),
            "readiness only gates traffic; it stays"
        );
        assert_eq!(notes.removed_probes, vec!["liveness"]);
        // run.env: added, and overriding the container's own value of the same name.
        let env: Vec<(String, Option<String>)> = app
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        assert_eq!(
            env.iter().filter(|(n, _)| n == "GIN_MODE").count(),
            1,
            "{env:?}"
        );
        assert!(
            env.contains(&("GIN_MODE".into(), Some("debug".into()))),
            "{env:?}"
        );
        assert_eq!(notes.ports, vec![8080]);
        assert!(
            app.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/kdev")
        );

        let sidecar = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, "kdev");
        assert_eq!(
            sidecar.restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        assert_eq!(sidecar.image.as_deref(), Some("golang:1.24"));
        assert!(sidecar.startup_probe.is_some());
        let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels["app"], "gin-hello", "selector labels are kept");
        assert_eq!(labels[kdev_protocol::labels::SESSION], "s1");
        assert_eq!(labels[LABEL_MANAGED_BY], "kdev");
    }

    #[test]
    fn debug_runs_the_app_under_delve() {
        let mut d = gin_hello();
        let template = &mut d.spec.as_mut().unwrap().template;
        let s = DevPodSpec {
            debug: Some(DebugSpec {
                port: 2345,
                continue_at_start: true,
            }),
            ..spec()
        };
        let notes = rewrite_pod_template(template, &s).unwrap();
        // Its requests would stop at the breakpoints.
        assert!(
            template.spec.as_ref().unwrap().containers[0]
                .readiness_probe
                .is_none()
        );
        assert_eq!(notes.removed_probes, vec!["liveness", "readiness"]);
        let cmd = template.spec.as_ref().unwrap().containers[0]
            .command
            .clone()
            .unwrap();
        let after: Vec<_> = cmd
            .iter()
            .skip_while(|a| *a != "--")
            .skip(1)
            .map(String::as_str)
            .collect();
        assert_eq!(
            after,
            vec![
                "/kdev/bin/dlv",
                "exec",
                "--headless",
                "--listen=:2345",
                "--api-version=2",
                "--accept-multiclient",
                "--continue",
                "/kdev/bin/app",
                "--",
                "--verbose",
                "--port=8080"
            ]
        );
    }

    #[test]
    fn configured_args_replace_the_containers_own() {
        let mut d = gin_hello();
        let template = &mut d.spec.as_mut().unwrap().template;
        let s = DevPodSpec {
            args: Some(vec!["serve".into()]),
            ..spec()
        };
        let notes = rewrite_pod_template(template, &s).unwrap();
        assert_eq!(notes.app_args, vec!["serve"]);
        let cmd = template.spec.as_ref().unwrap().containers[0]
            .command
            .clone()
            .unwrap();
        assert_eq!(&cmd[cmd.len() - 2..], &["/kdev/bin/app", "serve"]);
    }

    #[test]
    fn unknown_container_and_name_clashes_are_errors() {
        let mut d = gin_hello();
        let template = &mut d.spec.as_mut().unwrap().template;
        let s = DevPodSpec {
            container: Some("web".into()),
            ..spec()
        };
        assert_eq!(
            rewrite_pod_template(&mut template.clone(), &s),
            Err(RewriteError::NoSuchContainer("web".into(), "app".into()))
        );
        template.spec.as_mut().unwrap().volumes = Some(vec![empty_dir("kdev")]);
        assert_eq!(
            rewrite_pod_template(template, &spec()),
            Err(RewriteError::NameClash("kdev".into()))
        );
    }
}

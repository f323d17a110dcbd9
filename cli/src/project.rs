//! The project: kdev.yaml, where it lives, who is developing, and what kdev.yaml's build and
//! run settings mean for the dev pod and the controller's session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kdev_protocol::{BuildConfig, ModuleProxyConfig, SessionConfig};

use crate::config::{Config, FILE_NAME, ManifestSource, ModulesConfig, ServiceConfig};
use crate::deploy::{self, DebugSpec, DevPodSpec, DevTarget};
use crate::error::UsageError;
use crate::pod::delve::DebugOptions;
use crate::sync::ignore::IgnoreRules;

/// Who is developing: `--owner`, kdev.yaml's `owner`, else the kubeconfig user of the context.
pub fn resolve_owner(
    flag: Option<&str>,
    config: Option<&str>,
    context: Option<&str>,
) -> Result<String> {
    if let Some(o) = flag.or(config) {
        if crate::config::is_dns_label(o) {
            return Ok(o.to_string());
        }
        bail!("`{o}` is not a valid owner name (lowercase letters, digits and `-`, at most 63)");
    }
    let user = kube::config::Kubeconfig::read().ok().and_then(|kc| {
        let ctx_name = context.map(String::from).or(kc.current_context.clone())?;
        let ctx = kc.contexts.iter().find(|c| c.name == ctx_name)?;
        ctx.context.as_ref()?.user.clone()
    });
    user.as_deref()
        .and_then(deploy::owner_from_user)
        .context("cannot tell who you are from the kubeconfig: pass --owner NAME or set `owner` in kdev.yaml")
}

/// The project's name: its directory's, as a DNS label (Helm's default release name, labels).
pub fn project_name(root: &Path) -> String {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "project".into());
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.trim_matches('-').chars().take(63).collect()
}

/// A loaded project: kdev.yaml and where it lives.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub config: Config,
    pub name: String,
}

impl Project {
    pub fn load(config_path: &Path) -> Result<Project> {
        if !config_path.is_file() {
            bail!(
                "no {} at {}: run kdev in your project's root (`kdev init` writes one), or pass --file",
                FILE_NAME,
                config_path.display()
            );
        }
        let config = Config::load(config_path)?;
        let root = config_path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .canonicalize()
            .context("resolving the project directory")?;
        let name = project_name(&root);
        Ok(Project { root, config, name })
    }

    /// Every object of the project's manifests, rendered for `namespace`.
    pub fn load_manifests(
        &self,
        namespace: &str,
    ) -> Result<Vec<deploy::ManifestObject>, deploy::DeployError> {
        let sources = if self.config.manifests.is_empty() {
            vec![ManifestSource::Path("k8s".into())]
        } else {
            self.config.manifests.clone()
        };
        let ctx = deploy::render::RenderContext {
            root: &self.root,
            namespace,
            release: &self.name,
        };
        deploy::render::load(&sources, &ctx)
    }

    /// Every service of kdev.yaml (one, when it has no `services:`).
    pub fn services(&self) -> Vec<Service> {
        self.config
            .services()
            .into_iter()
            .map(|config| Service {
                root: self.root.clone(),
                config,
                modules: self.config.modules.clone(),
            })
            .collect()
    }

    /// The services `names` select (all when empty), or a usage error naming the unknown one.
    pub fn select_services(&self, names: &[String]) -> Result<Vec<Service>, UsageError> {
        let all = self.services();
        if names.is_empty() {
            return Ok(all);
        }
        let known: Vec<&str> = all.iter().map(|s| s.config.name.as_str()).collect();
        for n in names {
            if !known.contains(&n.as_str()) {
                return Err(UsageError(if known == [""] {
                    format!(
                        "kdev.yaml has no `services:`, so there is no service `{n}` to select; \
                         run `kdev watch` alone"
                    )
                } else {
                    format!(
                        "no service `{n}` in kdev.yaml (it has: {})",
                        known.join(", ")
                    )
                }));
            }
        }
        Ok(all
            .into_iter()
            .filter(|s| names.contains(&s.config.name))
            .collect())
    }

    /// The objects to apply in `namespace`, with the workloads of `services` rewritten for
    /// development (`debug`: the services run under Delve, by name).
    pub fn deploy_plan(
        &self,
        objects: &[deploy::ManifestObject],
        namespace: &str,
        services: &[Service],
        debug: &BTreeMap<String, DebugOptions>,
    ) -> Result<deploy::DeployPlan, deploy::DeployError> {
        let targets: Vec<DevTarget<'_>> = services
            .iter()
            .map(|s| DevTarget {
                service: &s.config.name,
                workload: s.config.workload.as_ref(),
                dev: s.dev_pod_spec(debug.get(&s.config.name)),
            })
            .collect();
        deploy::prepare(objects, &targets, namespace, &self.labels())
    }

    /// Labels on everything kdev applies for this project.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            kdev_protocol::labels::PROJECT.to_string(),
            self.name.clone(),
        )])
    }
}

/// One service of the project: a workload, and how to build, sync and run it.
#[derive(Debug, Clone)]
pub struct Service {
    /// The project root (paths in the service's config are relative to it).
    root: PathBuf,
    pub config: ServiceConfig,
    /// kdev.yaml's `modules` (the project's).
    modules: ModulesConfig,
}

impl Service {
    /// The local directory that is synced.
    pub fn sync_root(&self) -> PathBuf {
        match &self.config.sync.root {
            Some(r) => self.root.join(r),
            None => self.root.clone(),
        }
    }

    /// The sidecar image: configured, else `golang:<go directive of go.mod>`.
    pub fn sidecar_image(&self) -> String {
        if let Some(i) = &self.config.sidecar.image {
            return i.clone();
        }
        let gomod = std::fs::read_to_string(self.sync_root().join("go.mod")).unwrap_or_default();
        let version = gomod
            .lines()
            .find_map(|l| l.strip_prefix("go "))
            .map(|v| v.trim().split('.').take(2).collect::<Vec<_>>().join("."))
            .unwrap_or_else(|| "1".into());
        format!("golang:{version}")
    }

    /// How the service's pod becomes a dev pod.
    fn dev_pod_spec(&self, debug: Option<&DebugOptions>) -> DevPodSpec {
        let cfg = &self.config;
        DevPodSpec {
            container: cfg.container.clone(),
            sidecar_image: self.sidecar_image(),
            args: cfg.run.args.clone(),
            stop_signal: cfg.run.stop_signal.clone(),
            grace_period_ms: cfg.run.grace_period.map(|d| d.0.as_millis() as u64),
            env: cfg.run.env.clone(),
            labels: BTreeMap::new(),
            debug: debug.map(|d| DebugSpec {
                port: d.port,
                continue_at_start: d.continue_at_start,
            }),
        }
    }

    /// Whether the pod's go commands get their modules through kdev
    /// ([`crate::modules::proxy_wanted`]). go builds in the sync root, so the main module (or
    /// workspace) is the sync root's: it is vendored when its `vendor/modules.txt` is synced
    /// (`rules`: a vendor directory that is not synced is not in the pod).
    pub fn wants_module_proxy(&self, rules: &IgnoreRules) -> bool {
        let modules_txt = self.sync_root().join("vendor/modules.txt");
        let vendored = modules_txt.is_file() && !rules.is_ignored(&modules_txt, false);
        crate::modules::proxy_wanted(&self.modules, &self.config.build, vendored)
    }

    /// What the controller is told at the handshake: where the sources live, how to build,
    /// which port means "ready", whether to serve go the module proxy.
    pub fn session_config(
        &self,
        debug: bool,
        app_port: Option<u16>,
        module_proxy: Option<ModuleProxyConfig>,
    ) -> SessionConfig {
        let cfg = &self.config;
        SessionConfig {
            sync_root: Some(cfg.sync.remote.clone()),
            build: BuildConfig {
                package: Some(cfg.build.package.clone()),
                flags: go_build_flags(&cfg.build, debug),
                env: cfg.build.env.clone(),
                before: cfg.build.before.clone(),
                ..Default::default()
            },
            app_port,
            forward_app_output: true,
            module_proxy,
            ..Default::default()
        }
    }
}

/// Linker flag for `watch` builds: no DWARF. Nothing in the loop reads it (panics and pprof use
/// the symbol table, which stays), and linking without it takes about a quarter less time
/// (gin-hello: 0.75 s → 0.55 s in the pod).
const WATCH_LDFLAGS: &str = "-ldflags=-w";

/// Linker flag for `kdev debug` builds: DWARF left uncompressed. Delve reads all of it when it
/// starts the new binary after each reload, and inflating it was a third of that start
/// (gin-hello with `-N -l`: serving under Delve 389 ms after its start → 248 ms, medians of 4;
/// the binary is 5 MB larger).
const DEBUG_LDFLAGS: &str = "-ldflags=-compressdwarf=false";

/// `go build` flags: the user's, then for `kdev debug` the ones that keep code debuggable, and
/// [`WATCH_LDFLAGS`] (`kdev watch`) or [`DEBUG_LDFLAGS`] unless the user sets linker flags
/// (theirs win, whole).
fn go_build_flags(build: &crate::config::BuildConfig, debug: bool) -> Vec<String> {
    let mut flags = build.flags.clone();
    if debug {
        flags.push(crate::pod::delve::DEBUG_GCFLAGS.to_string());
    }
    let sets_ldflags = |s: &str| s.trim_start_matches('-').starts_with("ldflags");
    let user_ldflags = build.flags.iter().any(|f| sets_ldflags(f))
        || build
            .env
            .get("GOFLAGS")
            .is_some_and(|g| g.split_whitespace().any(sets_ldflags));
    if !user_ldflags {
        let ldflags = if debug { DEBUG_LDFLAGS } else { WATCH_LDFLAGS };
        flags.insert(0, ldflags.to_string());
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BuildConfig;

    fn project(yaml: &str) -> Project {
        Project {
            root: PathBuf::from("/src/shop"),
            config: Config::parse(yaml, Path::new("kdev.yaml")).unwrap(),
            name: "shop".into(),
        }
    }

    #[test]
    fn services_are_selected_by_name_in_kdev_yaml_order() {
        let p = project(
            "services:\n  - {name: orders, build: {package: ./cmd/orders}}\n  \
             - {name: gateway, build: {package: ./cmd/gateway}}\n",
        );
        let names = |selected: Vec<Service>| -> Vec<String> {
            selected.into_iter().map(|s| s.config.name).collect()
        };
        assert_eq!(
            names(p.select_services(&[]).unwrap()),
            ["orders", "gateway"]
        );
        let both = ["gateway".to_string(), "orders".to_string()];
        assert_eq!(
            names(p.select_services(&both).unwrap()),
            ["orders", "gateway"]
        );
        let err = p.select_services(&["web".into()]).unwrap_err().to_string();
        assert_eq!(
            err,
            "no service `web` in kdev.yaml (it has: orders, gateway)"
        );
        let single = project("build: {package: .}\n");
        let err = single
            .select_services(&["web".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kdev.yaml has no `services:`"), "{err}");
    }

    #[test]
    fn a_vendored_module_gets_no_module_proxy_unless_its_vendor_directory_is_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("go.mod"), "module example.com/shop\n").unwrap();
        let project = |yaml: &str| Project {
            root: root.to_path_buf(),
            config: Config::parse(yaml, Path::new("kdev.yaml")).unwrap(),
            name: "shop".into(),
        };
        let wants = |p: &Project| {
            let service = &p.services()[0];
            let rules = IgnoreRules::load(&service.sync_root(), &service.config.sync.exclude);
            service.wants_module_proxy(&rules.unwrap())
        };
        assert!(wants(&project("")));
        assert!(!wants(&project("modules: {proxy: false}\n")));
        std::fs::create_dir(root.join("vendor")).unwrap();
        std::fs::write(
            root.join("vendor/modules.txt"),
            "# example.com/dep v1.0.0\n",
        )
        .unwrap();
        assert!(!wants(&project("")));
        // Not synced, so not in the pod: go downloads there.
        assert!(wants(&project("sync: {exclude: [vendor/]}\n")));
        // And with a GOPROXY of its own, the build uses that.
        let own = "build: {env: {GOPROXY: https://goproxy.corp}}\nsync: {exclude: [vendor/]}\n";
        assert!(!wants(&project(own)));
    }

    #[test]
    fn watch_builds_drop_dwarf_unless_the_user_sets_ldflags() {
        let mut b = BuildConfig {
            flags: vec!["-tags".into(), "dev".into()],
            ..Default::default()
        };
        assert_eq!(go_build_flags(&b, false), ["-ldflags=-w", "-tags", "dev"]);
        // Debugging needs DWARF (uncompressed: Delve starts faster) and unoptimized code.
        assert_eq!(
            go_build_flags(&b, true),
            [
                "-ldflags=-compressdwarf=false",
                "-tags",
                "dev",
                "-gcflags=all=-N -l"
            ]
        );
        b.flags = vec!["-ldflags".into(), "-X main.v=1".into()];
        assert_eq!(go_build_flags(&b, false), ["-ldflags", "-X main.v=1"]);
        assert_eq!(
            go_build_flags(&b, true),
            ["-ldflags", "-X main.v=1", "-gcflags=all=-N -l"]
        );
        b.flags = vec!["--ldflags=-s".into()];
        assert_eq!(go_build_flags(&b, false), ["--ldflags=-s"]);
        b.flags.clear();
        b.env
            .insert("GOFLAGS".into(), "-mod=mod -ldflags=-X=main.v=2".into());
        assert!(go_build_flags(&b, false).is_empty());
    }
}

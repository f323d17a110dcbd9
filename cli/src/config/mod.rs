//! `kdev.yaml`: the project's kdev configuration.
//!
//! Every field has a default, so the smallest useful file names only what cannot be guessed
//! (often nothing: the manifests in `k8s/` and their only Deployment). Unknown fields are errors,
//! so a typo is reported with its line and column instead of being silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file kdev looks for in the project root.
pub const FILE_NAME: &str = "kdev.yaml";
/// Where the sources live in the pod unless `sync.remote` says otherwise.
pub use kdev_protocol::layout::SRC_DIR as DEFAULT_REMOTE_ROOT;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad YAML or a field of the wrong shape: where, and what was expected.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed but not meaningful (e.g. a port of 0).
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    /// Something wrong with one entry of `services:`.
    #[error("{path}:{line}: service `{service}`: {message}")]
    Service {
        path: PathBuf,
        line: usize,
        service: String,
        message: String,
    },
}

/// The configuration as written in `kdev.yaml`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// What to apply, relative to the project root: YAML files or directories (a directory
    /// with a `kustomization.yaml` is rendered with `kustomize build`, one with a `Chart.yaml`
    /// with `helm template`), or `{kustomize: DIR}`, `{helm: {chart, release, values, set}}`,
    /// `{render: COMMAND}` (any command whose stdout is YAML). Default: `k8s/`.
    #[serde(default)]
    pub manifests: Vec<ManifestSource>,
    /// The workload that runs the app, as `kind/name` (e.g. `deployment/gin-hello`) or a bare
    /// Deployment name. Default: the only Deployment in the manifests.
    #[serde(default)]
    pub workload: Option<WorkloadRef>,
    /// The app's container in that workload. Default: the first container.
    #[serde(default)]
    pub container: Option<String>,
    /// Namespace to deploy into. Default: the kubeconfig context's namespace, else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// kubeconfig context to use. Default: the current context.
    #[serde(default)]
    pub context: Option<String>,
    /// Who is developing: names and labels this developer's objects and session lock.
    /// Default: the kubeconfig user's name.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub build: BuildConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub sidecar: SidecarConfig,
    /// Several services in one session, each with its own workload, build, sync and run
    /// settings. Without it, the fields above describe the one service.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Where builds keep Go's caches (for every service).
    #[serde(default)]
    pub cache: CacheConfig,
    /// How the pods' go commands get Go modules (for every service).
    #[serde(default)]
    pub modules: ModulesConfig,
}

/// Go modules for the dev pods' builds.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModulesConfig {
    /// Serve the pods' go commands the modules they download from this machine, through kdev:
    /// from your module cache, else through your own `go` (your GOPROXY, GOPRIVATE, netrc and
    /// git credentials, which never enter the cluster). Not used for a vendored module or when
    /// `build.env` sets `GOPROXY`. Default: true.
    #[serde(default = "default_true")]
    pub proxy: bool,
}

impl Default for ModulesConfig {
    fn default() -> Self {
        ModulesConfig { proxy: true }
    }
}

/// Go's build cache in the dev pods: on a PersistentVolumeClaim that outlives the pod (when the
/// cluster can provide one), else the sidecar image's own.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheConfig {
    /// Keep the build cache on a PersistentVolumeClaim. Default: true.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// The claim's StorageClass. Default: the cluster's default StorageClass.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// The claim's size, as Kubernetes writes quantities. Default: `5Gi`.
    #[serde(default = "default_cache_size")]
    pub size: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            persistent: true,
            storage_class: None,
            size: default_cache_size(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_cache_size() -> String {
    "5Gi".to_string()
}

/// A Kubernetes quantity of bytes as people write them: `5Gi`, `500Mi`, `10G`, `1.5Gi`.
fn is_quantity(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c != '0' && c != '.')
        && ["", "Ki", "Mi", "Gi", "Ti", "Pi", "k", "M", "G", "T", "P"].contains(&suffix)
}

/// One entry of `manifests`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum ManifestSource {
    /// A YAML file, a directory of them, a Kustomize directory or a Helm chart.
    Path(PathBuf),
    /// A Kustomize directory, rendered with `kustomize build`.
    Kustomize { kustomize: PathBuf },
    /// A Helm chart, rendered with `helm template`.
    Helm { helm: HelmSource },
    /// A command run with `sh -c` in the project root; its stdout is the YAML to apply.
    Render { render: String },
}

/// A Helm chart and how to render it.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HelmSource {
    /// The chart's directory, relative to the project root.
    pub chart: PathBuf,
    /// The release name. Default: the project's name.
    #[serde(default)]
    pub release: Option<String>,
    /// Values files, relative to the project root, in order.
    #[serde(default)]
    pub values: Vec<PathBuf>,
    /// `--set` pairs.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

/// One service of a `services:` list: a workload and how to build, sync and run it.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    /// A DNS label: prefixes the service's output, and `kdev watch NAME` selects it.
    pub name: String,
    /// Default: the Deployment (or StatefulSet) named like the service.
    #[serde(default)]
    pub workload: Option<WorkloadRef>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub build: BuildConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub sidecar: SidecarConfig,
}

/// How the app is built in the sidecar.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildConfig {
    /// The Go package to build, relative to the sync root. Default: `.`.
    #[serde(default = "default_package")]
    pub package: String,
    /// Extra `go build` flags, e.g. `["-tags", "dev"]`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Extra environment for the build (`CGO_ENABLED=0` is the default).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Shell commands run in the sidecar, in the sync root, before each build (e.g.
    /// `go generate ./...`); a failure is shown like a build error and the old app keeps
    /// running.
    #[serde(default)]
    pub before: Vec<String>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            package: default_package(),
            flags: Vec::new(),
            env: BTreeMap::new(),
            before: Vec::new(),
        }
    }
}

fn default_package() -> String {
    ".".to_string()
}

/// What is synced, from where to where.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncConfig {
    /// Local directory to sync, relative to the project root. Default: the project root.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Directory in the pod. Default: `/kdev/src`.
    #[serde(default = "default_remote")]
    pub remote: String,
    /// Extra exclude patterns, in `.gitignore` syntax (on top of `.gitignore`, `.kdevignore`,
    /// `.git/` and kdev's own defaults).
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            root: None,
            remote: default_remote(),
            exclude: Vec::new(),
        }
    }
}

fn default_remote() -> String {
    DEFAULT_REMOTE_ROOT.to_string()
}

/// How the app runs in its container.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunConfig {
    /// Arguments for the app. Default: the container's own `args` (and `command` past argv[0]).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Ports to forward to localhost. Default: the container's `containerPort`s.
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
    /// The port whose accepting connections means "ready". Default: the first port.
    #[serde(default)]
    pub ready_port: Option<u16>,
    /// Signal that asks the app to stop. Default: SIGTERM.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// How long the app may take to stop before it is killed, e.g. `5s`, `500ms`. Default: 5s.
    #[serde(default)]
    pub grace_period: Option<DurationSpec>,
    /// Extra environment for the app (on top of, and overriding, the container's own `env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The sidecar that builds the app.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarConfig {
    /// An image with the Go toolchain and `sh`. Default: `golang:<go version of go.mod>`.
    #[serde(default)]
    pub image: Option<String>,
}

/// `deployment/name`, `statefulset/name` or a bare Deployment name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
        };
        write!(f, "{kind}/{}", self.name)
    }
}

impl std::str::FromStr for WorkloadRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = match s.split_once('/') {
            Some((k, n)) => (k, n),
            None => ("deployment", s),
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => WorkloadKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => WorkloadKind::StatefulSet,
            other => {
                return Err(format!(
                    "unsupported workload kind `{other}`: expected `deployment/NAME` or `statefulset/NAME`"
                ));
            }
        };
        if !is_dns_label(name) && !is_dns_subdomain(name) {
            return Err(format!("`{name}` is not a valid Kubernetes object name"));
        }
        Ok(WorkloadRef {
            kind,
            name: name.to_string(),
        })
    }
}

impl<'de> Deserialize<'de> for WorkloadRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A port to forward: `8080` (same port locally) or `"9000:8080"` (local:remote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub local: u16,
    pub remote: u16,
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        let parse = |s: &str| -> Result<u16, String> {
            match s.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("`{s}` is not a port number (1-65535)")),
                Ok(p) => Ok(p),
            }
        };
        let spec = match Raw::deserialize(d)? {
            Raw::Num(n) => {
                let p = parse(&n.to_string()).map_err(serde::de::Error::custom)?;
                PortSpec {
                    local: p,
                    remote: p,
                }
            }
            Raw::Str(s) => match s.split_once(':') {
                Some((l, r)) => PortSpec {
                    local: parse(l).map_err(serde::de::Error::custom)?,
                    remote: parse(r).map_err(serde::de::Error::custom)?,
                },
                None => {
                    let p = parse(&s).map_err(serde::de::Error::custom)?;
                    PortSpec {
                        local: p,
                        remote: p,
                    }
                }
            },
        };
        Ok(spec)
    }
}

/// A duration written as `5s`, `500ms`, `1m` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSpec(pub Duration);

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(DurationSpec(Duration::from_secs(n))),
            Raw::Str(s) => kdev_protocol::parse_duration(&s)
                .map(DurationSpec)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Config {
    /// Parse `kdev.yaml` text; `path` is only used in error messages. An empty file is the
    /// default configuration.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            yaml_serde::from_str(text).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((1, 1));
                ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: strip_location(&e.to_string()),
                }
            })?
        };
        config.validate(path)?;
        config.validate_services(path, text)?;
        Ok(config)
    }

    /// The services of this file: the `services:` list, or the one service the top-level fields
    /// describe (named after its workload once the manifests are known; `""` here).
    pub fn services(&self) -> Vec<ServiceConfig> {
        if !self.services.is_empty() {
            return self.services.clone();
        }
        vec![ServiceConfig {
            name: String::new(),
            workload: self.workload.clone(),
            container: self.container.clone(),
            build: self.build.clone(),
            sync: self.sync.clone(),
            run: self.run.clone(),
            sidecar: self.sidecar.clone(),
        }]
    }

    /// Each service's own fields, and what services must not share: names, workloads, local
    /// ports. Errors name the service and its line.
    fn validate_services(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        if self.services.is_empty() {
            return Ok(());
        }
        // The n-th entry with this name (a duplicate is reported where it repeats).
        let err_nth = |service: &str, nth: usize, message: String| ConfigError::Service {
            path: path.to_path_buf(),
            line: service_line(text, service, nth).unwrap_or(1),
            service: service.to_string(),
            message,
        };
        let err = |service: &str, message: String| err_nth(service, 0, message);
        let top_level = [
            ("workload", self.workload.is_some()),
            ("container", self.container.is_some()),
            ("build", self.build != BuildConfig::default()),
            ("sync", self.sync != SyncConfig::default()),
            ("run", self.run != RunConfig::default()),
            ("sidecar", self.sidecar != SidecarConfig::default()),
        ];
        if let Some((field, _)) = top_level.iter().find(|(_, set)| *set) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                field,
                message: "with `services:`, each service has its own; move it into the services \
                          that need it"
                    .into(),
            });
        }
        let mut names = BTreeSet::new();
        let mut workloads = BTreeMap::new();
        let mut ports = BTreeMap::new();
        for svc in &self.services {
            if !is_dns_label(&svc.name) {
                return Err(err(
                    &svc.name,
                    "a service name is a DNS label (lowercase letters, digits and `-`, at most 63)"
                        .into(),
                ));
            }
            if !names.insert(svc.name.as_str()) {
                return Err(err_nth(
                    &svc.name,
                    1,
                    "the name is used by two services".into(),
                ));
            }
            let workload = svc
                .workload
                .as_ref()
                .map(|w| w.to_string())
                .unwrap_or_else(|| format!("deployment/{}", svc.name));
            if let Some(other) = workloads.insert(workload.clone(), svc.name.as_str()) {
                return Err(err(
                    &svc.name,
                    format!("{workload} is already the workload of service `{other}`"),
                ));
            }
            for p in svc.run.ports.iter().flatten() {
                if let Some(other) = ports.insert(p.local, svc.name.as_str()) {
                    return Err(err(
                        &svc.name,
                        format!(
                            "local port {} is also forwarded for service `{other}`; map another \
                             one, e.g. `\"{}:{}\"`",
                            p.local,
                            p.local.wrapping_add(1),
                            p.remote
                        ),
                    ));
                }
            }
            let fields = Fields {
                container: &svc.container,
                build: &svc.build,
                sync: &svc.sync,
                run: &svc.run,
            };
            if let Err((field, message)) = fields.validate() {
                return Err(err(&svc.name, format!("{field}: {message}")));
            }
        }
        Ok(())
    }

    /// Read and parse the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        let labels = [
            ("namespace", &self.namespace, "namespace name"),
            ("owner", &self.owner, "owner"),
        ];
        for (field, value, what) in labels {
            if let Some(v) = value
                && !is_dns_label(v)
            {
                return Err(invalid(
                    field,
                    format!(
                        "`{v}` is not a valid {what} (lowercase letters, digits and `-`, at most 63)"
                    ),
                ));
            }
        }
        if !is_quantity(&self.cache.size) {
            return Err(invalid(
                "cache.size",
                format!(
                    "`{}` is not a size (a number with an optional suffix, e.g. `5Gi`, `500Mi`)",
                    self.cache.size
                ),
            ));
        }
        if let Some(c) = &self.cache.storage_class
            && !is_dns_subdomain(c)
        {
            return Err(invalid(
                "cache.storageClass",
                format!("`{c}` is not a valid StorageClass name"),
            ));
        }
        let fields = Fields {
            container: &self.container,
            build: &self.build,
            sync: &self.sync,
            run: &self.run,
        };
        fields
            .validate()
            .map_err(|(field, message)| invalid(field, message))
    }
}

/// The fields one service has, wherever they are written (top level or in `services:`).
struct Fields<'a> {
    container: &'a Option<String>,
    build: &'a BuildConfig,
    sync: &'a SyncConfig,
    run: &'a RunConfig,
}

impl Fields<'_> {
    /// The first field that is wrong, and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.sync.remote.starts_with('/') {
            return Err((
                "sync.remote",
                format!("`{}` must be an absolute path in the pod", self.sync.remote),
            ));
        }
        if self.sync.remote.split('/').any(|c| c == "..") {
            return Err((
                "sync.remote",
                format!("`{}` must not contain `..`", self.sync.remote),
            ));
        }
        if let Some(v) = self.container
            && !is_dns_label(v)
        {
            return Err((
                "container",
                format!(
                    "`{v}` is not a valid container name (lowercase letters, digits and `-`, at \
                     most 63)"
                ),
            ));
        }
        if let Some(sig) = &self.run.stop_signal
            && let Err(e) = kdev_protocol::Signal::parse(sig)
        {
            return Err(("run.stopSignal", e.to_string()));
        }
        for key in self.build.env.keys() {
            if key.is_empty() || key.contains('=') {
                return Err((
                    "build.env",
                    format!("`{key}` is not an environment variable name"),
                ));
            }
        }
        if self.build.package.is_empty() {
            return Err((
                "build.package",
                "must not be empty (use `.` for the sync root)".into(),
            ));
        }
        Ok(())
    }
}

/// The line of the `nth` `services:` entry named `name` (its `name:` line), for messages.
fn service_line(text: &str, name: &str, nth: usize) -> Option<usize> {
    let start = text
        .lines()
        .position(|l| l.trim_start().starts_with("services:"))?;
    text.lines()
        .enumerate()
        .skip(start)
        .filter(|(_, l)| {
            let l = l.trim_start().trim_start_matches('-').trim_start();
            l.strip_prefix("name:")
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == name)
                .unwrap_or(false)
        })
        .nth(nth)
        .map(|(i, _)| i + 1)
}

/// yaml_serde appends " at line L column C" to messages; we print the location first instead.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// RFC 1123 label: what namespaces, container names and label values mostly need.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what most object names need.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// kdev.yaml's JSON Schema, derived from the types above (it imports them; they know nothing
/// of it).
pub mod schema;

#[cfg(test)]
mod tests;

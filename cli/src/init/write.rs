//! The kdev.yaml `kdev init` writes: what it decided, with comments saying where each value
//! came from and what else can be set.

use std::fmt::Write as _;

use crate::config::ManifestSource;

use super::air::FromAir;
use super::plan::PlannedService;

/// Where the JSON Schema goes, relative to the project root (`.kdev/` is never synced).
pub const SCHEMA_PATH: &str = ".kdev/kdev.schema.json";

/// Everything the file says.
pub struct InitFile<'a> {
    pub manifests: &'a ManifestSource,
    pub services: &'a [PlannedService],
    /// Workloads applied as the manifests say, with why.
    pub left: &'a [(String, String)],
    /// The `go` directive of go.mod, for the default sidecar image's comment.
    pub go_version: Option<&'a str>,
    pub sidecar_image: Option<&'a str>,
    /// What `.air.toml` said, applied to the service that builds `air.package` (or the only one).
    pub air: Option<&'a FromAir>,
}

/// A YAML scalar: plain when YAML reads it back as the same string, else double-quoted (a JSON
/// string is a YAML string).
fn q(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "./_-+".contains(c))
        && !s.starts_with(['-', '.', '+'])
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain || s == "." || s.starts_with("./") {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

fn manifests_yaml(m: &ManifestSource) -> String {
    match m {
        ManifestSource::Path(p) => format!(
            "# Plain YAML files (a directory of them, a Kustomize directory or a Helm chart also work).\n\
             manifests:\n  - {}\n",
            q(&dir(p))
        ),
        ManifestSource::Kustomize { kustomize } => format!(
            "# Rendered with `kustomize build` (kustomize must be on PATH).\n\
             manifests:\n  - kustomize: {}\n",
            q(&kustomize.to_string_lossy())
        ),
        ManifestSource::Helm { helm } => format!(
            "# Rendered with `helm template` (helm must be on PATH).\n\
             manifests:\n  - helm:\n      chart: {}\n\
             \x20     # release: my-release       # default: the project directory's name\n\
             \x20     # values: [values-dev.yaml]  # values files, in order\n\
             \x20     # set: {{image.tag: dev}}     # --set pairs\n",
            q(&helm.chart.to_string_lossy())
        ),
        ManifestSource::Render { render } => format!("manifests:\n  - render: {}\n", q(render)),
    }
}

/// A directory path as written in kdev.yaml: with a trailing slash.
fn dir(p: &std::path::Path) -> String {
    let s = p.to_string_lossy();
    if s.ends_with('/') {
        s.into_owned()
    } else {
        format!("{s}/")
    }
}

/// The fields of one service, indented by `pad`.
fn service_yaml(
    s: &PlannedService,
    pad: &str,
    air: Option<&FromAir>,
    sidecar: &Sidecar<'_>,
    with_name: bool,
) -> String {
    let mut out = String::new();
    if with_name {
        let _ = writeln!(out, "{pad}name: {}", q(&s.name));
    }
    let _ = writeln!(out, "{pad}workload: {}", q(&s.workload.reference()));
    let _ = writeln!(out, "{pad}build:");
    let _ = writeln!(out, "{pad}  package: {}", q(&s.package));
    if let Some(air) = air {
        if !air.flags.is_empty() {
            let _ = writeln!(out, "{pad}  flags: {}  # from .air.toml", list(&air.flags));
        }
        if !air.before.is_empty() {
            let _ = writeln!(
                out,
                "{pad}  # Run in the sidecar before each build (.air.toml's pre_cmd)."
            );
            let _ = writeln!(out, "{pad}  before:");
            for b in &air.before {
                let _ = writeln!(out, "{pad}    - {}", q(b));
            }
        }
    } else {
        let _ = writeln!(
            out,
            "{pad}  # before: [\"go generate ./...\"]  # commands run in the sidecar before each build"
        );
    }
    if let Some(air) = air.filter(|a| !a.exclude.is_empty()) {
        let _ = writeln!(out, "{pad}sync:");
        let _ = writeln!(
            out,
            "{pad}  exclude: {}  # .air.toml's exclude_dir",
            list(&air.exclude)
        );
    }
    let mut run = Vec::new();
    if s.ports.is_empty() {
        run.push("# The container declares no port: forward one with ports: [\"8080\"].".into());
    } else {
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|&(l, r)| {
                if l == r {
                    format!("{r}")
                } else {
                    format!("{l}:{r}")
                }
            })
            .collect();
        run.push(format!(
            "# The container's ports, forwarded to localhost{}.",
            if s.ports.iter().any(|(l, r)| l != r) {
                " (LOCAL:REMOTE where another service has the same port)"
            } else {
                ""
            }
        ));
        run.push(format!("ports: {}", list(&ports)));
    }
    match air {
        Some(air) => {
            if !air.args.is_empty() {
                run.push(format!("args: {}  # .air.toml's args_bin", list(&air.args)));
            }
            if !air.env.is_empty() {
                run.push("env:  # from .air.toml's full_bin".into());
                for (k, v) in &air.env {
                    run.push(format!(
                        "  {k}: {}",
                        serde_json::to_string(v).unwrap_or_default()
                    ));
                }
            }
        }
        None => run.push("# env: {LOG_LEVEL: debug}  # extra environment for the app".into()),
    }
    let has_field = run.iter().any(|l| !l.starts_with('#'));
    let _ = writeln!(out, "{pad}{}run:", if has_field { "" } else { "# " });
    for line in run {
        let _ = writeln!(out, "{pad}  {line}");
    }
    for line in sidecar.lines() {
        let _ = writeln!(out, "{pad}{line}");
    }
    out
}

/// The sidecar image: given, or golang's for go.mod's version (kdev's default, as a comment).
struct Sidecar<'a> {
    image: Option<&'a str>,
    go_version: Option<&'a str>,
}

impl Sidecar<'_> {
    fn lines(&self) -> Vec<String> {
        match (self.image, self.go_version) {
            (Some(image), _) => vec![
                "# The sidecar that builds the app: the Go toolchain and `sh`.".into(),
                "sidecar:".into(),
                format!("  image: {}", q(image)),
            ],
            (None, Some(v)) => vec![
                format!("# The sidecar that builds the app (default: golang:{v}, from go.mod):"),
                format!("# sidecar: {{image: golang:{v}}}"),
            ],
            (None, None) => {
                vec!["# sidecar: {image: golang:1.24}  # the Go toolchain and `sh`".into()]
            }
        }
    }
}

/// The whole kdev.yaml text.
pub fn render(f: &InitFile<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# yaml-language-server: $schema={SCHEMA_PATH}");
    out.push_str(
        "# kdev configuration, written by `kdev init`. Every field is optional: `kdev schema` prints\n\
         # them all (your editor reads them through the line above), the README explains them.\n",
    );
    if let Some(air) = f.air
        && !air.notes.is_empty()
    {
        out.push_str("#\n# From .air.toml, not carried over:\n");
        for n in &air.notes {
            let _ = writeln!(out, "#   - {n}");
        }
    }
    for (workload, why) in f.left {
        let _ = writeln!(
            out,
            "# {workload} is applied as the manifests say ({why}); add it as a service to develop it."
        );
    }
    out.push('\n');
    out.push_str(&manifests_yaml(f.manifests));
    let sidecar = Sidecar {
        image: f.sidecar_image,
        go_version: f.go_version,
    };
    let air_for = |s: &PlannedService| {
        f.air
            .filter(|a| f.services.len() == 1 || a.package.as_deref() == Some(s.package.as_str()))
    };
    match f.services {
        [one] => {
            out.push('\n');
            out.push_str(&service_yaml(one, "", air_for(one), &sidecar, false));
        }
        several => {
            out.push_str(
                "\n# One session develops every service below; `kdev watch NAME` only the named ones.\n\
                 services:\n",
            );
            for s in several {
                let body = service_yaml(s, "    ", air_for(s), &sidecar, true);
                // The first line of each entry carries the list's dash.
                out.push_str("  - ");
                out.push_str(body.trim_start());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, PortSpec};
    use crate::init::detect::WorkloadFound;

    fn service(name: &str, package: &str, ports: &[(u16, u16)]) -> PlannedService {
        PlannedService {
            name: name.into(),
            workload: WorkloadFound {
                kind: "deployment",
                name: name.into(),
                container: Some("app".into()),
                image: None,
                ports: ports.iter().map(|p| p.1).collect(),
            },
            package: package.into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn several_services_with_air_settings_load_back_as_written() {
        let air = crate::init::air::FromAir {
            package: Some("./cmd/api".into()),
            flags: vec!["-tags".into(), "dev".into()],
            exclude: vec!["/tmp/".into()],
            args: vec!["--verbose".into()],
            env: [("APP_ENV".to_string(), "dev: yes".to_string())].into(),
            before: vec!["go generate ./...".into()],
            notes: vec!["something".into()],
        };
        let services = [
            service("api", "./cmd/api", &[(8080, 8080)]),
            service("worker", "./cmd/worker", &[]),
        ];
        let text = render(&InitFile {
            manifests: &ManifestSource::Kustomize {
                kustomize: "k8s/overlays/dev".into(),
            },
            services: &services,
            left: &[("deployment/redis".into(), "not built here".into())],
            go_version: Some("1.24"),
            sidecar_image: Some("registry.example/go:1.24"),
            air: Some(&air),
        });
        assert!(text.starts_with("# yaml-language-server: $schema=.kdev/kdev.schema.json\n"));
        assert!(text.contains("deployment/redis is applied as the manifests say"));
        let c = Config::parse(&text, Path::new("kdev.yaml")).unwrap();
        let s = c.services();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].build.flags, ["-tags", "dev"]);
        assert_eq!(s[0].build.before, ["go generate ./..."]);
        assert_eq!(s[0].sync.exclude, ["/tmp/"]);
        assert_eq!(
            s[0].run.args.as_deref(),
            Some(&["--verbose".to_string()][..])
        );
        assert_eq!(s[0].run.env["APP_ENV"], "dev: yes");
        assert_eq!(
            s[0].run.ports.as_deref(),
            Some(
                &[PortSpec {
                    local: 8080,
                    remote: 8080
                }][..]
            )
        );
        // Air's settings belong to the service that builds its package only.
        assert!(s[1].build.flags.is_empty() && s[1].run.ports.is_none());
        assert_eq!(
            s[1].sidecar.image.as_deref(),
            Some("registry.example/go:1.24")
        );
        assert_eq!(
            c.manifests,
            [ManifestSource::Kustomize {
                kustomize: "k8s/overlays/dev".into()
            }]
        );
    }

    #[test]
    fn one_service_is_written_without_a_services_list() {
        let services = [service("gin-hello", ".", &[(8080, 8080)])];
        let text = render(&InitFile {
            manifests: &ManifestSource::Path("k8s".into()),
            services: &services,
            left: &[],
            go_version: Some("1.24"),
            sidecar_image: None,
            air: None,
        });
        let c = Config::parse(&text, Path::new("kdev.yaml")).unwrap();
        assert!(c.services.is_empty());
        assert_eq!(c.workload.unwrap().name, "gin-hello");
        assert_eq!(c.manifests, [ManifestSource::Path("k8s/".into())]);
        assert!(c.sidecar.image.is_none());
        assert!(text.contains("# sidecar: {image: golang:1.24}"));
    }

    #[test]
    fn scalars_are_quoted_only_when_yaml_would_read_them_otherwise() {
        assert_eq!(q("./cmd/x"), "./cmd/x");
        assert_eq!(q("8080"), "\"8080\"");
        assert_eq!(q("yes"), "\"yes\"");
        assert_eq!(q("a: b"), "\"a: b\"");
        assert_eq!(q("-v"), "\"-v\"");
    }
}

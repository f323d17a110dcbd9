//! Rendering the project's manifests: plain YAML files and directories are read; a Kustomize
//! directory goes through `kustomize build`, a Helm chart through `helm template`, and a
//! `render` command through `sh -c`. Whatever renders them, the objects then go through the same
//! rewrite. A missing tool, a failing render, or output that is not YAML is a clear error that
//! names the command and shows its stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{HelmSource, ManifestSource};

use super::error::DeployError;
use super::manifests::{ManifestObject, parse_manifests, yaml_files};

/// What a render needs beyond the source itself.
pub struct RenderContext<'a> {
    /// The project root: relative paths and `render` commands start there.
    pub root: &'a Path,
    /// The namespace the objects go to (`helm template --namespace`).
    pub namespace: &'a str,
    /// Helm's default release name.
    pub release: &'a str,
}

/// Every object of the project's manifests, rendered as each source says.
pub fn load(
    sources: &[ManifestSource],
    ctx: &RenderContext<'_>,
) -> Result<Vec<ManifestObject>, DeployError> {
    let mut out = Vec::new();
    for source in sources {
        match source {
            ManifestSource::Path(p) => {
                let path = ctx.root.join(p);
                if is_kustomization(&path) {
                    out.extend(kustomize(&path, ctx)?);
                } else if path.join("Chart.yaml").is_file() {
                    let helm = HelmSource {
                        chart: p.clone(),
                        release: None,
                        values: Vec::new(),
                        set: Default::default(),
                    };
                    out.extend(helm_template(&helm, ctx)?);
                } else {
                    for file in yaml_files(&path)? {
                        let text =
                            std::fs::read_to_string(&file).map_err(|source| DeployError::Read {
                                path: file.clone(),
                                source,
                            })?;
                        out.extend(parse_manifests(&text, &file)?);
                    }
                }
            }
            ManifestSource::Kustomize { kustomize: dir } => {
                out.extend(kustomize(&ctx.root.join(dir), ctx)?)
            }
            ManifestSource::Helm { helm } => out.extend(helm_template(helm, ctx)?),
            ManifestSource::Render { render } => {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", render]);
                out.extend(run(cmd, render, ctx, "a shell")?);
            }
        }
    }
    if out.is_empty() {
        let names: Vec<String> = sources.iter().map(describe).collect();
        return Err(DeployError::NoManifests(names.join(", ")));
    }
    Ok(out)
}

fn describe(source: &ManifestSource) -> String {
    match source {
        ManifestSource::Path(p) => p.display().to_string(),
        ManifestSource::Kustomize { kustomize } => format!("kustomize {}", kustomize.display()),
        ManifestSource::Helm { helm } => format!("helm chart {}", helm.chart.display()),
        ManifestSource::Render { render } => format!("render `{render}`"),
    }
}

/// A directory Kustomize would build.
fn is_kustomization(dir: &Path) -> bool {
    ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .any(|f| dir.join(f).is_file())
}

fn kustomize(dir: &Path, ctx: &RenderContext<'_>) -> Result<Vec<ManifestObject>, DeployError> {
    let mut cmd = Command::new("kustomize");
    cmd.arg("build").arg(dir);
    let shown = format!("kustomize build {}", relative(dir, ctx.root));
    run(cmd, &shown, ctx, "kustomize")
}

fn helm_template(
    helm: &HelmSource,
    ctx: &RenderContext<'_>,
) -> Result<Vec<ManifestObject>, DeployError> {
    let release = helm.release.as_deref().unwrap_or(ctx.release);
    let mut cmd = Command::new("helm");
    cmd.args(["template", release])
        .arg(ctx.root.join(&helm.chart))
        .args(["--namespace", ctx.namespace]);
    let mut shown = format!(
        "helm template {release} {} --namespace {}",
        helm.chart.display(),
        ctx.namespace
    );
    for v in &helm.values {
        cmd.arg("--values").arg(ctx.root.join(v));
        shown.push_str(&format!(" --values {}", v.display()));
    }
    for (k, v) in &helm.set {
        cmd.arg("--set").arg(format!("{k}={v}"));
        shown.push_str(&format!(" --set {k}={v}"));
    }
    run(cmd, &shown, ctx, "helm")
}

/// Run a render command in the project root; its stdout, parsed.
fn run(
    mut cmd: Command,
    shown: &str,
    ctx: &RenderContext<'_>,
    tool: &str,
) -> Result<Vec<ManifestObject>, DeployError> {
    let render_err = |message: String| DeployError::Render {
        command: shown.to_string(),
        message,
    };
    let output = cmd.current_dir(ctx.root).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            render_err(format!(
                "`{tool}` is not installed (not on PATH); install it, or render the manifests with \
                 a `render:` command"
            ))
        } else {
            render_err(format!("cannot run it: {e}"))
        }
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(render_err(format!(
            "it failed ({}):\n{}",
            output.status,
            stderr.trim_end()
        )));
    }
    let text = String::from_utf8(output.stdout)
        .map_err(|_| render_err("its output is not UTF-8 text".into()))?;
    let objects = parse_manifests(&text, &PathBuf::from(format!("`{shown}`")))
        .map_err(|e| render_err(format!("its output is not Kubernetes YAML: {e}")))?;
    tracing::debug!("{shown}: {} objects", objects.len());
    Ok(objects)
}

fn relative(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(root: &Path) -> RenderContext<'_> {
        RenderContext {
            root,
            namespace: "team",
            release: "shop",
        }
    }

    const POD: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";

    #[test]
    fn a_render_command_is_run_in_the_root_and_its_failures_are_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("cm.yaml"), POD).unwrap();
        let objs = load(
            &[ManifestSource::Render {
                render: "cat cm.yaml".into(),
            }],
            &ctx(root),
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
        let err = load(
            &[ManifestSource::Render {
                render: "echo broken >&2; exit 3".into(),
            }],
            &ctx(root),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`echo broken >&2; exit 3`") && err.contains("broken"),
            "{err}"
        );
        let err = load(
            &[ManifestSource::Render {
                render: "echo 'not: [yaml'".into(),
            }],
            &ctx(root),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not Kubernetes YAML"), "{err}");
    }

    #[test]
    fn a_missing_tool_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("kustomization.yaml"), "resources: []\n").unwrap();
        let mut cmd = Command::new("kdev-no-such-tool");
        cmd.arg("build");
        let err = run(cmd, "kustomize build .", &ctx(root), "kustomize")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`kustomize` is not installed"), "{err}");
        assert!(is_kustomization(root));
    }
}

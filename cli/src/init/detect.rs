//! What `kdev init` finds in a project: the Go module and its main packages, where the
//! manifests are and how they render, and the workloads they hold (with containers and ports).

use std::path::{Path, PathBuf};

use kube::ResourceExt;

use crate::config::{HelmSource, ManifestSource};
use crate::deploy::{self, ManifestObject};

/// Directories searched for manifests, in order.
const MANIFEST_DIRS: &[&str] = &[
    "k8s",
    "deploy",
    "kubernetes",
    "manifests",
    "kustomize",
    "charts",
    "chart",
    "helm",
];

/// One workload of the manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadFound {
    /// `deployment` or `statefulset`.
    pub kind: &'static str,
    pub name: String,
    /// The first container's name, image and TCP ports.
    pub container: Option<String>,
    pub image: Option<String>,
    pub ports: Vec<u16>,
}

impl WorkloadFound {
    pub fn reference(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// The module's `go` directive (`1.24`) and the directories of its main packages (`.`,
/// `./cmd/orders`), sorted; vendor, testdata and hidden directories are skipped.
pub fn go_module(root: &Path) -> (Option<String>, Vec<String>) {
    let gomod = std::fs::read_to_string(root.join("go.mod")).unwrap_or_default();
    let version = gomod
        .lines()
        .find_map(|l| l.strip_prefix("go "))
        .map(|v| v.trim().to_string());
    let mut mains = Vec::new();
    walk_go(root, root, &mut mains);
    mains.sort();
    (version, mains)
}

fn walk_go(root: &Path, dir: &Path, mains: &mut Vec<String>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut is_main = false;
    for e in read.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            let skip = name.starts_with('.')
                || name.starts_with('_')
                || matches!(name.as_str(), "vendor" | "testdata" | "node_modules");
            // A nested module is another project.
            if !skip && !e.path().join("go.mod").exists() {
                walk_go(root, &e.path(), mains);
            }
        } else if ft.is_file()
            && name.ends_with(".go")
            && !name.ends_with("_test.go")
            && !is_main
            && declares_main(&e.path())
        {
            is_main = true;
        }
    }
    if is_main {
        let rel = dir.strip_prefix(root).unwrap_or(dir);
        let rel = rel.to_string_lossy();
        mains.push(if rel.is_empty() {
            ".".to_string()
        } else {
            format!("./{rel}")
        });
    }
}

/// Whether a Go file's package clause is `package main`.
fn declares_main(file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .find(|l| l.starts_with("package "))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("main"))
}

/// Where the manifests are and how they render: the first directory of [`MANIFEST_DIRS`] that
/// holds a kustomization, a chart or YAML files (a `base`/`overlays` Kustomize layout prefers
/// an overlay named dev, then local, then the first).
pub fn manifests(root: &Path) -> Option<ManifestSource> {
    for d in MANIFEST_DIRS {
        let dir = root.join(d);
        if !dir.is_dir() {
            continue;
        }
        if let Some(s) = source_in(root, &dir) {
            return Some(s);
        }
        // One level down: `deploy/shop/Chart.yaml`, `k8s/overlays/dev/kustomization.yaml`.
        let overlays = dir.join("overlays");
        if overlays.is_dir() {
            for pick in ["dev", "development", "local"] {
                if let Some(s) = source_in(root, &overlays.join(pick)) {
                    return Some(s);
                }
            }
            if let Some(s) = first_child_source(root, &overlays) {
                return Some(s);
            }
        }
        if let Some(s) = first_child_source(root, &dir) {
            return Some(s);
        }
    }
    None
}

fn first_child_source(root: &Path, dir: &Path) -> Option<ManifestSource> {
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    children.sort();
    children.iter().find_map(|c| source_in(root, c))
}

fn source_in(root: &Path, dir: &Path) -> Option<ManifestSource> {
    let rel = dir.strip_prefix(root).unwrap_or(dir).to_path_buf();
    if ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .any(|f| dir.join(f).is_file())
    {
        return Some(ManifestSource::Kustomize { kustomize: rel });
    }
    if dir.join("Chart.yaml").is_file() {
        return Some(ManifestSource::Helm {
            helm: HelmSource {
                chart: rel,
                release: None,
                values: Vec::new(),
                set: Default::default(),
            },
        });
    }
    let has_yaml = std::fs::read_dir(dir).ok()?.flatten().any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.ends_with(".yaml") || n.ends_with(".yml")
    });
    has_yaml.then_some(ManifestSource::Path(rel))
}

/// The Deployments and StatefulSets of the rendered objects.
pub fn workloads(objects: &[ManifestObject]) -> Vec<WorkloadFound> {
    objects
        .iter()
        .filter_map(|o| {
            let kind = match o.kind() {
                "Deployment" => "deployment",
                "StatefulSet" => "statefulset",
                _ => return None,
            };
            let container = &o.object.data["spec"]["template"]["spec"]["containers"][0];
            let ports = container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
                .filter_map(|p| p["containerPort"].as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect();
            Some(WorkloadFound {
                kind,
                name: o.object.name_any(),
                container: container["name"].as_str().map(String::from),
                image: container["image"].as_str().map(String::from),
                ports,
            })
        })
        .collect()
}

/// Render `source` to find its workloads (Helm and Kustomize need their tools).
pub fn render(
    root: &Path,
    source: &ManifestSource,
    release: &str,
) -> Result<Vec<ManifestObject>, deploy::DeployError> {
    let ctx = deploy::render::RenderContext {
        root,
        namespace: "default",
        release,
    };
    deploy::render::load(std::slice::from_ref(source), &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_main_packages_and_manifests() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("go.mod"), "module example.com/x\n\ngo 1.24.2\n").unwrap();
        for (path, text) in [
            ("cmd/api/main.go", "// Command api.\npackage main\n"),
            ("cmd/worker/main.go", "package main\n"),
            ("internal/lib/lib.go", "package lib\n"),
            ("cmd/api/main_test.go", "package main\n"),
            ("vendor/x/main.go", "package main\n"),
            ("tools/gen/gen.go", "//go:build ignore\n\npackage main\n"),
        ] {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let (version, mains) = go_module(root);
        assert_eq!(version.as_deref(), Some("1.24.2"));
        assert_eq!(mains, ["./cmd/api", "./cmd/worker", "./tools/gen"]);

        std::fs::create_dir_all(root.join("k8s/overlays/dev")).unwrap();
        std::fs::create_dir_all(root.join("k8s/base")).unwrap();
        std::fs::write(
            root.join("k8s/overlays/dev/kustomization.yaml"),
            "resources: []\n",
        )
        .unwrap();
        assert_eq!(
            manifests(root),
            Some(ManifestSource::Kustomize {
                kustomize: "k8s/overlays/dev".into()
            })
        );
        std::fs::create_dir_all(root.join("deploy/chart")).unwrap();
        std::fs::write(root.join("deploy/chart/Chart.yaml"), "name: x\n").unwrap();
        std::fs::remove_dir_all(root.join("k8s")).unwrap();
        assert!(matches!(manifests(root), Some(ManifestSource::Helm { .. })));
    }
}

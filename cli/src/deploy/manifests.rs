//! Reading manifests (YAML files and directories) into objects, and finding the app's workload
//! among them. Rendering Kustomize, Helm and `render` commands is [`super::render`]'s.

use std::path::{Path, PathBuf};

use kube::ResourceExt;
use kube::api::DynamicObject;
use serde::Deserialize;

use crate::config::{WorkloadKind, WorkloadRef};

use super::error::DeployError;

/// One object read from a manifest file.
#[derive(Debug, Clone)]
pub struct ManifestObject {
    pub source: PathBuf,
    pub object: DynamicObject,
}

impl ManifestObject {
    pub fn kind(&self) -> &str {
        self.object
            .types
            .as_ref()
            .map(|t| t.kind.as_str())
            .unwrap_or("")
    }
}

/// The YAML files a path names: the file itself, or a directory's `*.yaml` and `*.yml`, sorted.
pub fn yaml_files(p: &Path) -> Result<Vec<PathBuf>, DeployError> {
    if !p.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let read = std::fs::read_dir(p).map_err(|source| DeployError::Read {
        path: p.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = read
        .flatten()
        .map(|e| e.path())
        .filter(|f| f.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Parse a multi-document YAML text; `path` is for messages.
pub fn parse_manifests(text: &str, path: &Path) -> Result<Vec<ManifestObject>, DeployError> {
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            DeployError::Yaml {
                path: path.into(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        if value.is_null() {
            continue; // an empty document (`---` at the end)
        }
        let object: DynamicObject =
            serde_json::from_value(value).map_err(|e| DeployError::Object {
                path: path.into(),
                doc: i + 1,
                message: format!("not a Kubernetes object: {e}"),
            })?;
        if object.types.is_none() || object.metadata.name.is_none() {
            return Err(DeployError::Object {
                path: path.into(),
                doc: i + 1,
                message: "every object needs apiVersion, kind and metadata.name".into(),
            });
        }
        out.push(ManifestObject {
            source: path.into(),
            object,
        });
    }
    Ok(out)
}

/// Find the workload that runs the app: the configured one, or the only Deployment.
pub fn find_workload(
    objects: &[ManifestObject],
    wanted: Option<&WorkloadRef>,
    by_name: Option<&str>,
    only_one: bool,
) -> Result<usize, DeployError> {
    let kind_of = |o: &ManifestObject| match o.kind() {
        "Deployment" => Some(WorkloadKind::Deployment),
        "StatefulSet" => Some(WorkloadKind::StatefulSet),
        _ => None,
    };
    let workloads: Vec<(usize, WorkloadRef)> = objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            Some((
                i,
                WorkloadRef {
                    kind: kind_of(o)?,
                    name: o.object.name_any(),
                },
            ))
        })
        .collect();
    let list = || {
        workloads
            .iter()
            .map(|(_, w)| w.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(w) = wanted {
        return workloads
            .iter()
            .find(|(_, x)| x == w)
            .map(|(i, _)| *i)
            .ok_or_else(|| {
                DeployError::Workload(format!(
                    "workload {w} is not in the manifests (they have: {})",
                    list()
                ))
            });
    }
    if let Some(name) = by_name {
        if let Some((i, _)) = workloads.iter().find(|(_, w)| w.name == name) {
            return Ok(*i);
        }
        if !only_one {
            return Err(DeployError::Workload(format!(
                "service `{name}`: no workload named {name} in the manifests (they have: {}); \
                 set its `workload`",
                list()
            )));
        }
    }
    match workloads.as_slice() {
        [(i, _)] => Ok(*i),
        [] => Err(DeployError::Workload(
            "the manifests contain no Deployment or StatefulSet to run the app".into(),
        )),
        _ => Err(DeployError::Workload(format!(
            "the manifests contain several workloads ({}); name the app's in kdev.yaml, e.g. \
             `workload: {}`",
            list(),
            workloads[0].1
        ))),
    }
}

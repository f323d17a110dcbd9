//! What can go wrong while deploying, and the API server's own words for it.

use std::path::PathBuf;

use super::rewrite;

/// A deploy step failed: a manifest, the workload, the rewrite, the apply or the dev pod.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: document {doc}: {message}")]
    Object {
        path: PathBuf,
        doc: usize,
        message: String,
    },
    #[error("no manifests found in {0}: point `manifests` in kdev.yaml at your YAML files")]
    NoManifests(String),
    #[error("rendering the manifests with `{command}`: {message}")]
    Render { command: String, message: String },
    #[error("{0}")]
    Workload(String),
    #[error(transparent)]
    Rewrite(#[from] rewrite::RewriteError),
    #[error("applying {kind}/{name}: {}", api_message(.source))]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("{0}")]
    Pod(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl DeployError {
    /// Whether this is the user's input to fix (a manifest, the workload's name) rather than
    /// something the cluster did.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DeployError::Read { .. }
                | DeployError::Yaml { .. }
                | DeployError::Object { .. }
                | DeployError::NoManifests(_)
                | DeployError::Render { .. }
                | DeployError::Workload(_)
                | DeployError::Rewrite(_)
        )
    }
}

/// The API server's own message for API errors (its Status, without the debug dump), else the
/// error itself.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

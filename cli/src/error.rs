//! The typed errors that decide kdev's exit code ([`crate::exit_code`] maps them): a usage
//! error, a cluster kdev cannot reach, a missing permission, a lost session. Errors of one
//! concern stay with it (`config::ConfigError`, `deploy::DeployError`, ...).

/// A usage or configuration error found by kdev itself (a bad path, an unknown service name).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The cluster cannot be reached as configured.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no usable kubeconfig: set KUBECONFIG or create ~/.kube/config (for a local cluster, \
         `kind create cluster --config kind-config.yaml`)"
    )]
    NoKubeconfig(#[source] kube::config::KubeconfigError),
    #[error("cannot use kubeconfig context `{context}`")]
    Context {
        context: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("the Kubernetes API server at {server} does not answer")]
    Unreachable {
        server: String,
        #[source]
        source: anyhow::Error,
    },
}

/// The user lacks permissions kdev needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "missing permission in namespace {namespace}: {}. Ask your cluster admin to grant it \
     (manifests/rbac/role.yaml in the kdev repository lists what kdev needs)",
    .missing.join(", ")
)]
pub struct MissingPermissions {
    pub namespace: String,
    pub missing: Vec<String>,
}

/// The dev session cannot go on (or cannot start): another kdev holds it, or it was lost.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SessionLost(pub String);

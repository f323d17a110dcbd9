//! What kdev's exit code says.
//!
//! Errors keep their causes (`anyhow` chains of typed errors); [`exit_code`] walks a chain and
//! picks the code from the first cause it recognises, so a 403 is recognised by its HTTP status
//! wherever it happened (an apply, an exec, a port-forward), never by its text. It knows the
//! error types of every layer, so it sits above them all and nothing below imports it.

use crate::error::{ClusterError, MissingPermissions, SessionLost, UsageError};

/// kdev's exit codes, as `kdev --help` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; also a `kdev watch` stopped with Ctrl-C.
    Success = 0,
    /// Anything not below (a pod that cannot start, a failed apply, an I/O error, ...).
    Failure = 1,
    /// A usage or configuration error: flags, kdev.yaml, manifests, ignore files.
    Usage = 2,
    /// No usable kubeconfig, or the API server does not answer.
    Cluster = 3,
    /// The cluster refused: a permission is missing.
    Forbidden = 4,
    /// The dev session is held by another kdev, or was lost (its Lease deleted or taken over).
    Session = 5,
}

/// The lines `kdev --help` ends with.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done (also `kdev watch` stopped with Ctrl-C)
  1  failure (a pod that cannot start, a failed apply, an I/O error)
  2  usage or configuration error (flags, kdev.yaml, manifests, ignore files)
  3  no usable kubeconfig, or the API server does not answer
  4  forbidden: a permission is missing (manifests/rbac/role.yaml lists what kdev needs)
  5  the dev session is held by another kdev, or was lost (Lease deleted or taken over)";

/// The exit code for an error: the first cause in its chain that says which.
pub fn exit_code(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if let Some(k) = cause.downcast_ref::<kube::Error>()
            && let kube::Error::Api(status) = k
            && status.code == 403
        {
            return Exit::Forbidden;
        }
        if cause.is::<MissingPermissions>() {
            return Exit::Forbidden;
        }
        if cause.is::<ClusterError>() {
            return Exit::Cluster;
        }
        if cause.is::<SessionLost>() {
            return Exit::Session;
        }
        if cause.is::<UsageError>()
            || cause.is::<crate::config::ConfigError>()
            || cause.is::<crate::sync::ignore::IgnoreError>()
        {
            return Exit::Usage;
        }
        if let Some(d) = cause.downcast_ref::<crate::deploy::DeployError>()
            && d.is_usage()
        {
            return Exit::Usage;
        }
    }
    Exit::Failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn forbidden() -> kube::Error {
        kube::Error::Api(
            serde_json::from_value(serde_json::json!({
                "status": "Failure", "message": "pods \"x\" is forbidden", "reason": "Forbidden",
                "code": 403
            }))
            .expect("a Status"),
        )
    }

    #[test]
    fn the_first_recognised_cause_decides() {
        // A 403 deep in a chain, by its status (the text says nothing of it).
        let e = anyhow::Error::new(forbidden()).context("uploading kdev-controller");
        assert_eq!(exit_code(&e), Exit::Forbidden);
        let e = anyhow::Error::new(UsageError("bad".into())).context("loading");
        assert_eq!(exit_code(&e), Exit::Usage);
        let e: anyhow::Error = SessionLost("lease deleted".into()).into();
        assert_eq!(exit_code(&e), Exit::Session);
        let e = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing")
            .unwrap_err();
        assert_eq!(exit_code(&e), Exit::Failure);
        let e: anyhow::Error = MissingPermissions {
            namespace: "team".into(),
            missing: vec!["create pods/portforward".into()],
        }
        .into();
        assert_eq!(exit_code(&e), Exit::Forbidden);
        assert!(e.to_string().contains("create pods/portforward"));
    }

    #[test]
    fn the_help_lists_every_code() {
        for code in [
            Exit::Success,
            Exit::Failure,
            Exit::Usage,
            Exit::Cluster,
            Exit::Forbidden,
            Exit::Session,
        ] {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {}  ", code as i32)));
        }
    }
}

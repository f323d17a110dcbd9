//! The Kubernetes label and annotation keys kdev puts on what it creates or rewrites, so that
//! `kdev down`, `kdev gc`, `kdev sessions` and the leases find them again.

/// On everything kdev creates or rewrites, with the value [`MANAGED_BY_KDEV`].
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`].
pub const MANAGED_BY_KDEV: &str = "kdev";
/// The developer a copy of a workload (and its ConfigMaps, Secrets, Service) belongs to.
pub const OWNER: &str = "kdev.dev/owner";
/// The kdev project (`name` in kdev.yaml).
pub const PROJECT: &str = "kdev.dev/project";
/// The dev session a pod belongs to.
pub const SESSION: &str = "kdev.dev/session";
/// On the PersistentVolumeClaims that hold a dev pod's Go build cache (value `go`): `kdev gc`
/// removes only these of a session's claims, never one of the project's own manifests.
pub const BUILD_CACHE: &str = "kdev.dev/build-cache";

/// Annotation on a session's Lease: the workload it develops (`deploy/api`).
pub const WORKLOAD_ANNOTATION: &str = "kdev.dev/workload";

/// Annotation on a session's Lease: the kdev.yaml service it develops.
pub const SERVICE_ANNOTATION: &str = "kdev.dev/service";

/// Annotation on a session's Lease, written with each renewal: `connected` while its kdev has
/// a session stream to the pod (its liveness is then the pod's to tell, and it renews seldom),
/// `connecting` while it starts or reconnects (it renews often: the Lease is its only sign of
/// life).
pub const CONNECTION_ANNOTATION: &str = "kdev.dev/connection";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_ones_in_clusters_today() {
        // Changing one orphans what older kdev versions created.
        assert_eq!(
            format!("{MANAGED_BY}={MANAGED_BY_KDEV}"),
            "app.kubernetes.io/managed-by=kdev"
        );
        assert_eq!(
            [OWNER, PROJECT, SESSION, WORKLOAD_ANNOTATION],
            [
                "kdev.dev/owner",
                "kdev.dev/project",
                "kdev.dev/session",
                "kdev.dev/workload"
            ]
        );
    }
}

//! Deploy: read the project's manifests ([`manifests`]), turn the app's workload into a dev
//! workload ([`rewrite`], planned here), make every object the owner's own ([`personalize`]),
//! give it a build cache that outlives the pod ([`cache`]), apply with server-side apply
//! ([`apply`]), and find the dev pod ([`wait`]).

mod aliases;
mod apply;
pub mod cache;
mod error;
mod manifests;
mod personalize;
mod plan;
pub mod render;
pub mod rewrite;
mod wait;

pub use apply::{Discovered, apply, discover, resource_kinds};
pub use error::DeployError;
pub use manifests::ManifestObject;
pub use personalize::{owner_from_user, personalize};
pub use plan::{DeployPlan, DevTarget, DevWorkload, prepare};
pub use rewrite::{DebugSpec, DevPodSpec};
pub use wait::{connectable, wait_for_dev_pod};

#[cfg(test)]
mod tests;

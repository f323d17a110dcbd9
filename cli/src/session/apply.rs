//! Step 3 of the set-up: apply. The Go build cache first (a claim that outlives the pod, else
//! the image's; one line says which), then every object of the plan; then each service says
//! what the user should know (probes removed, ports forwarded).

use anyhow::Result;
use tracing::Instrument;

use super::plan::Plan;
use super::service::ServiceSession;
use crate::deploy;
use crate::ui::Ui;

/// Apply the plan (its dev workloads given their build cache).
pub async fn apply(plan: &mut Plan, sessions: &[ServiceSession], ui: &Ui) -> Result<()> {
    let ns = plan.conn.namespace.as_str();
    let cache = deploy::cache::prepare(
        &plan.conn.client,
        ns,
        &mut plan.deploy,
        &plan.project.labels(),
        &plan.owner,
        &plan.project.config.cache,
    )
    .await?;
    match &cache {
        deploy::cache::CacheChoice::Image { warn: true, .. } => ui.warn(&cache.describe()),
        _ => ui.step(&cache.describe()),
    }
    let dev: Vec<String> = plan
        .deploy
        .workloads
        .iter()
        .map(|w| w.workload.to_string())
        .collect();
    ui.step(&format!(
        "applying {} objects to namespace {ns} ({} in dev mode)",
        plan.deploy.objects.len(),
        dev.join(", ")
    ));
    deploy::apply(&plan.deploy, &plan.discovered, ns)
        .instrument(tracing::info_span!(
            "deploy",
            objects = plan.deploy.objects.len()
        ))
        .await?;
    for s in sessions {
        s.announce();
    }
    Ok(())
}

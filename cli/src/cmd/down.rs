//! `kdev down`: remove what `kdev watch` applied for this project, and nothing else.
//!
//! An object is deleted only if it is named in the project's manifests AND carries kdev's
//! labels for this project: a same-named object someone else created is left alone and named.

use anyhow::Result;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

use kdev_protocol::labels::{
    MANAGED_BY as LABEL_MANAGED_BY, MANAGED_BY_KDEV, OWNER as LABEL_OWNER, PROJECT as LABEL_PROJECT,
};

use crate::cluster::access;
use crate::cluster::connect::connect;
use crate::cluster::lease::lease_name;
use crate::deploy;
use crate::project::{Project, resolve_owner};
use crate::ui::Ui;

pub async fn down(
    config_path: &std::path::Path,
    namespace: Option<&str>,
    context: Option<&str>,
    owner: Option<&str>,
) -> Result<()> {
    let ui = Ui::detect();
    let project = Project::load(config_path)?;
    let cfg = &project.config;
    let conn = connect(
        context.or(cfg.context.as_deref()),
        namespace.or(cfg.namespace.as_deref()),
    )
    .await?;
    let (client, ns) = (conn.client, conn.namespace);
    let objects = project.load_manifests(&ns)?;
    let mut plan = project.deploy_plan(
        &objects,
        &ns,
        &project.services(),
        &std::collections::BTreeMap::new(),
    )?;
    let owner = resolve_owner(
        owner,
        cfg.owner.as_deref(),
        context.or(cfg.context.as_deref()),
    )?;
    deploy::personalize(&mut plan, &owner);
    let discovered = deploy::discover(&client, &ns, &plan.objects).await?;
    let kinds = deploy::resource_kinds(&discovered);
    access::require(&client, &ns, &access::needed_for_down(&kinds)).await?;
    let mut removed = 0;
    for (obj, d) in plan.objects.iter().zip(&discovered).rev() {
        let (api, kind) = (&d.api, &d.resource.kind);
        let name = obj.name_any();
        let Some(live) = api.get_opt(&name).await? else {
            continue;
        };
        let labels = live.labels();
        let ours = labels
            .get(LABEL_MANAGED_BY)
            .is_some_and(|v| v == MANAGED_BY_KDEV)
            && labels
                .get(LABEL_PROJECT)
                .is_some_and(|v| v == &project.name)
            && labels.get(LABEL_OWNER).is_some_and(|v| v == &owner);
        if !ours {
            ui.warn(&format!(
                "{kind}/{name} in {ns} was not created by kdev for this project; left alone"
            ));
            continue;
        }
        api.delete(&name, &DeleteParams::background()).await?;
        ui.ok(&format!("deleted {kind}/{name}"));
        removed += 1;
    }
    // The build caches' claims, when the caller may (without the permission kdev never made one).
    if access::missing(&client, &ns, &access::needed_for_down_cache())
        .await?
        .is_empty()
    {
        let workloads: Vec<String> = plan
            .workloads
            .iter()
            .map(|w| w.workload.name.clone())
            .collect();
        for name in
            deploy::cache::delete_claims(&client, &ns, &workloads, &project.name, &owner).await?
        {
            ui.ok(&format!(
                "deleted PersistentVolumeClaim/{name} (the build cache)"
            ));
            removed += 1;
        }
    }
    // The session lock, unless a live kdev still holds it (then it is that session's to release).
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    for w in &plan.workloads {
        let _ = leases
            .delete(&lease_name(&w.workload.name), &DeleteParams::default())
            .await;
    }
    if removed == 0 {
        ui.step(&format!(
            "nothing of project {} to remove in namespace {ns}",
            project.name
        ));
    }
    Ok(())
}

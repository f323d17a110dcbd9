//! Per-owner objects in a shared namespace: names, labels and selectors carry the owner, and the
//! pod template's references to the project's ConfigMaps and Secrets follow the renaming.

use kdev_protocol::labels::OWNER as LABEL_OWNER;
use kube::ResourceExt;

use super::plan::DeployPlan;

/// Make the plan one developer's own, so several can share a namespace: workloads, Services,
/// ConfigMaps and Secrets get `-<owner>` appended to their names (and the pod templates refer
/// to the renamed ConfigMaps and Secrets), every object gets the owner label, and the selectors
/// of workloads and Services include it, so one developer's Service never selects another's
/// pods and one developer's config edit never reaches another's app.
///
/// The values of the labels that selectors use (`app: orders`) become the owner's too
/// (`app: orders-alice`), on the pods and in the selectors: otherwise the team's shared
/// Service `orders`, selecting `app: orders`, would also pick every developer's copy of the
/// orders pods, and a caller of the shared one would reach someone's unfinished change.
pub fn personalize(plan: &mut DeployPlan, owner: &str) {
    let renamed = |name: &str| {
        let mut n = format!("{name}-{owner}");
        n.truncate(63);
        n.trim_end_matches(['-', '.']).to_string()
    };
    let names_of = |kind: &str| -> Vec<String> {
        plan.objects
            .iter()
            .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
            .map(|o| o.name_any())
            .collect()
    };
    let services = names_of("Service");
    let config_maps = names_of("ConfigMap");
    let secrets = names_of("Secret");
    let selector_keys = selector_keys(plan);
    let own_value = |v: &str| {
        let mut n = format!("{v}-{owner}");
        n.truncate(63);
        n.trim_end_matches(['-', '.', '_']).to_string()
    };
    let own_selected = |map: &mut serde_json::Value| {
        if let Some(map) = map.as_object_mut() {
            for (k, v) in map.iter_mut() {
                if selector_keys.contains(k)
                    && let Some(s) = v.as_str()
                {
                    *v = serde_json::Value::String(own_value(s));
                }
            }
        }
    };
    for obj in &mut plan.objects {
        obj.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_OWNER.into(), owner.into());
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let owner_label = serde_json::Value::String(owner.to_string());
        match kind.as_str() {
            "Deployment" | "StatefulSet" => {
                obj.metadata.name = Some(renamed(&obj.name_any()));
                let spec = &mut obj.data["spec"];
                own_selected(&mut spec["selector"]["matchLabels"]);
                own_selected(&mut spec["template"]["metadata"]["labels"]);
                spec["selector"]["matchLabels"][LABEL_OWNER] = owner_label.clone();
                spec["template"]["metadata"]["labels"][LABEL_OWNER] = owner_label;
                if let Some(svc) = spec["serviceName"].as_str()
                    && services.iter().any(|s| s == svc)
                {
                    spec["serviceName"] = serde_json::Value::String(renamed(svc));
                }
                if let Some(pod) = spec.pointer_mut("/template/spec") {
                    rename_config_refs(pod, &config_maps, &secrets, &renamed);
                }
            }
            "ConfigMap" | "Secret" => {
                obj.metadata.name = Some(renamed(&obj.name_any()));
            }
            "Service" => {
                obj.metadata.name = Some(renamed(&obj.name_any()));
                if obj.data["spec"]["selector"].is_object() {
                    own_selected(&mut obj.data["spec"]["selector"]);
                    obj.data["spec"]["selector"][LABEL_OWNER] = owner_label;
                }
            }
            _ => {}
        }
    }
    for w in &mut plan.workloads {
        w.workload.name = renamed(&w.workload.name);
        for (k, v) in w.pod_selector.iter_mut() {
            if selector_keys.contains(k) {
                *v = own_value(v);
            }
        }
        w.pod_selector.insert(LABEL_OWNER.into(), owner.into());
    }
    for applied in plan.renamed_services.values_mut() {
        *applied = renamed(applied);
    }
}

/// The label keys the manifests' selectors use: workloads' `matchLabels` and Services'
/// `selector`.
fn selector_keys(plan: &DeployPlan) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    for obj in &plan.objects {
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.as_str())
            .unwrap_or_default();
        let selector = match kind {
            "Deployment" | "StatefulSet" => &obj.data["spec"]["selector"]["matchLabels"],
            "Service" => &obj.data["spec"]["selector"],
            _ => continue,
        };
        if let Some(map) = selector.as_object() {
            keys.extend(map.keys().filter(|k| *k != LABEL_OWNER).cloned());
        }
    }
    keys
}

/// Point a pod spec's references to the plan's ConfigMaps and Secrets at their renamed copies:
/// volumes (also projected), `envFrom`, `env[].valueFrom` and `imagePullSecrets`. References to
/// objects the manifests do not contain are shared ones and stay as they are.
fn rename_config_refs(
    pod: &mut serde_json::Value,
    config_maps: &[String],
    secrets: &[String],
    renamed: &dyn Fn(&str) -> String,
) {
    // Only existing fields are touched (`pointer_mut`): indexing a JSON value mutably would
    // insert the missing ones as nulls and corrupt the manifest.
    let rename = |item: &mut serde_json::Value, pointer: &str, names: &[String]| {
        if let Some(v) = item.pointer_mut(pointer)
            && let Some(n) = v.as_str()
            && names.iter().any(|x| x == n)
        {
            *v = serde_json::Value::String(renamed(n));
        }
    };
    for volume in array_mut(pod, "/volumes") {
        rename(volume, "/configMap/name", config_maps);
        rename(volume, "/secret/secretName", secrets);
        for source in array_mut(volume, "/projected/sources") {
            rename(source, "/configMap/name", config_maps);
            rename(source, "/secret/name", secrets);
        }
    }
    for pull in array_mut(pod, "/imagePullSecrets") {
        rename(pull, "/name", secrets);
    }
    for list in ["/initContainers", "/containers"] {
        for container in array_mut(pod, list) {
            for from in array_mut(container, "/envFrom") {
                rename(from, "/configMapRef/name", config_maps);
                rename(from, "/secretRef/name", secrets);
            }
            for env in array_mut(container, "/env") {
                rename(env, "/valueFrom/configMapKeyRef/name", config_maps);
                rename(env, "/valueFrom/secretKeyRef/name", secrets);
            }
        }
    }
}

/// The elements of the array at `pointer`, if there is one.
fn array_mut<'a>(
    v: &'a mut serde_json::Value,
    pointer: &str,
) -> std::slice::IterMut<'a, serde_json::Value> {
    match v.pointer_mut(pointer).and_then(|a| a.as_array_mut()) {
        Some(a) => a.iter_mut(),
        None => [].iter_mut(),
    }
}

/// A label-safe owner name from a user name (`alice@example.com` → `alice-example-com`).
pub fn owner_from_user(user: &str) -> Option<String> {
    let mut s: String = user
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(30);
    let s = s.trim_matches('-').to_string();
    crate::config::is_dns_label(&s).then_some(s)
}

//! Your services call your copies: name resolution in a developer's dev pods.
//!
//! In a shared namespace every developer's objects are renamed (`orders` → `orders-alice`), so
//! alice's gateway, which calls `orders`, would reach the shared orders, never her modified
//! copy. Each of the developer's dev pods therefore gets `hostAliases` (lines of its
//! `/etc/hosts`) that map the original names of the developer's dev services — `orders`,
//! `orders.<ns>`, `orders.<ns>.svc`, `orders.<ns>.svc.cluster.local` — to the ClusterIP of the
//! developer's copy. Services the developer does not run in dev mode resolve through cluster
//! DNS as usual: to the shared ones.
//!
//! Why `/etc/hosts`: it needs nothing in the cluster (no DNS rewrite, no proxy, no admission
//! webhook), works the same on every cluster, and changes nothing in the apps. Its limits: only
//! clients that read `/etc/hosts` see it (Go's resolver, glibc and musl do; a client that sends
//! DNS queries itself, such as gRPC's `dns:///` target, does not); SRV records and headless
//! Services (no ClusterIP) are not covered; the cluster domain is assumed to be
//! `cluster.local`; the addresses are fixed when the pod is created, so a copy's Service that
//! is deleted and recreated by hand needs the next `kdev watch` to re-apply.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::plan::DeployPlan;

/// The cluster domain assumed for the fully qualified names.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// The `hostAliases` entries for the plan's dev pods: each dev service's Services by their
/// original names, at the ClusterIP of the applied copy. `cluster_ips`: applied Service name →
/// ClusterIP (headless ones left out).
pub fn host_aliases(
    plan: &DeployPlan,
    cluster_ips: &BTreeMap<String, String>,
    namespace: &str,
) -> Vec<Value> {
    let mut by_ip: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for w in &plan.workloads {
        for original in &w.service_names {
            let applied = plan.renamed_services.get(original).unwrap_or(original);
            let Some(ip) = cluster_ips.get(applied) else {
                continue;
            };
            let names = by_ip.entry(ip.as_str()).or_default();
            for name in [
                original.clone(),
                format!("{original}.{namespace}"),
                format!("{original}.{namespace}.svc"),
                format!("{original}.{namespace}.svc.{CLUSTER_DOMAIN}"),
            ] {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    by_ip
        .into_iter()
        .map(|(ip, hostnames)| json!({ "ip": ip, "hostnames": hostnames }))
        .collect()
}

/// Add `aliases` to a workload object's pod template, after the manifest's own.
pub fn add_to_workload(workload: &mut Value, aliases: &[Value]) {
    if aliases.is_empty() {
        return;
    }
    let Some(pod) = workload.pointer_mut("/spec/template/spec") else {
        return;
    };
    let mut all: Vec<Value> = pod["hostAliases"].as_array().cloned().unwrap_or_default();
    all.extend(aliases.iter().cloned());
    pod["hostAliases"] = Value::Array(all);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{WorkloadKind, WorkloadRef};
    use crate::deploy::{plan::DevWorkload, rewrite::RewriteNotes};

    fn workload(service: &str, services: &[&str]) -> DevWorkload {
        DevWorkload {
            service: service.into(),
            workload: WorkloadRef {
                kind: WorkloadKind::Deployment,
                name: format!("{service}-alice"),
            },
            pod_selector: BTreeMap::new(),
            notes: RewriteNotes::default(),
            index: 0,
            service_names: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn each_dev_service_is_reachable_by_its_original_names_at_the_copys_address() {
        let plan = DeployPlan {
            objects: Vec::new(),
            workloads: vec![
                workload("orders", &["orders"]),
                workload("gateway", &["gateway"]),
            ],
            renamed_services: BTreeMap::from([
                ("orders".into(), "orders-alice".into()),
                ("gateway".into(), "gateway-alice".into()),
                ("payments".into(), "payments-alice".into()),
            ]),
        };
        let ips = BTreeMap::from([
            ("orders-alice".to_string(), "10.96.0.20".to_string()),
            ("gateway-alice".to_string(), "10.96.0.21".to_string()),
            ("payments-alice".to_string(), "10.96.0.22".to_string()),
        ]);
        let aliases = host_aliases(&plan, &ips, "team");
        assert_eq!(
            aliases,
            vec![
                json!({"ip": "10.96.0.20", "hostnames": ["orders", "orders.team", "orders.team.svc", "orders.team.svc.cluster.local"]}),
                json!({"ip": "10.96.0.21", "hostnames": ["gateway", "gateway.team", "gateway.team.svc", "gateway.team.svc.cluster.local"]}),
            ],
            "payments is not a dev service: it resolves to the shared one"
        );
        // A headless copy (no ClusterIP) is left to DNS.
        let headless = BTreeMap::from([("gateway-alice".to_string(), "10.96.0.21".to_string())]);
        assert_eq!(host_aliases(&plan, &headless, "team").len(), 1);

        let mut deployment = json!({"spec": {"template": {"spec": {
            "hostAliases": [{"ip": "1.2.3.4", "hostnames": ["legacy"]}]
        }}}});
        add_to_workload(&mut deployment, &aliases);
        let all = deployment["spec"]["template"]["spec"]["hostAliases"]
            .as_array()
            .unwrap();
        assert_eq!(all.len(), 3, "the manifest's own entries stay first");
        assert_eq!(all[0]["hostnames"][0], "legacy");
    }
}

//! One service's part of the [`super::Plan`]: its dev workload, its output, the ports it
//! forwards, the port that means "ready" and its Delve port. Decided from kdev.yaml, the flags
//! and the rewritten manifests alone (no cluster), and tested here.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::config::PortSpec;
use crate::deploy::DevWorkload;
use crate::error::UsageError;
use crate::pod::delve::DebugOptions;
use crate::project::Service;
use crate::ui::Ui;

/// What one service's session is set up with.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    pub service: Service,
    /// Its dev workload (its name, the labels that select its pod, what the rewrite changed).
    pub workload: DevWorkload,
    /// Its output: prefixed with its name when there are several services.
    pub ui: Ui,
    /// Local → remote ports to forward: the app's, then Delve's.
    pub ports: Vec<(u16, u16)>,
    /// The port whose readiness ends a reload; without one, the restart ends it.
    pub app_port: Option<u16>,
    /// `kdev debug`: Delve's options, on this service's own port.
    pub debug: Option<DebugOptions>,
    /// Its name in `--timings` records, with several services.
    pub timings_name: Option<String>,
}

/// One plan per dev workload (a service without `services:` is named after its workload),
/// failing if two would forward the same local port.
pub fn service_plans(
    workloads: &[DevWorkload],
    services: &[Service],
    debug: &BTreeMap<String, DebugOptions>,
    ui: &Ui,
) -> Result<Vec<ServicePlan>> {
    let several = workloads.len() > 1;
    let width = workloads.iter().map(|w| w.service.len()).max().unwrap_or(0);
    let mut plans = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let service = service_of(services, &w.service)
            .cloned()
            .context("each dev workload comes from a service")?;
        let run = &service.config.run;
        let mut ports = app_ports(run.ports.as_deref(), &w.notes.ports);
        let app_port = run.ready_port.or(ports.first().map(|p| p.1));
        let debug = debug.get(&service.config.name).cloned();
        ports.extend(debug.as_ref().map(|d| (d.port, d.port)));
        let ui = if several {
            ui.for_service(&w.service, i, width)
        } else {
            ui.about(&w.service)
        };
        plans.push(ServicePlan {
            service,
            workload: w.clone(),
            ui,
            ports,
            app_port,
            debug,
            timings_name: several.then(|| w.service.clone()),
        });
    }
    check_local_ports(&plans)?;
    Ok(plans)
}

/// `kdev debug`: each service's Delve options, by name: the first service on `--port`, the
/// next ones on the following ports.
pub fn debug_options(
    services: &[Service],
    debug: Option<&DebugOptions>,
) -> BTreeMap<String, DebugOptions> {
    let Some(d) = debug else {
        return BTreeMap::new();
    };
    services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let port = d.port.saturating_add(i as u16);
            (s.config.name.clone(), DebugOptions { port, ..d.clone() })
        })
        .collect()
}

/// The service a dev workload runs (a kdev.yaml without `services:` has one, unnamed).
fn service_of<'a>(services: &'a [Service], name: &str) -> Option<&'a Service> {
    services
        .iter()
        .find(|s| s.config.name == name || s.config.name.is_empty())
}

/// The app's ports, local → remote: kdev.yaml's `run.ports`, else the container's TCP ports
/// on the same local port.
fn app_ports(configured: Option<&[PortSpec]>, container: &[u16]) -> Vec<(u16, u16)> {
    match configured {
        Some(p) => p.iter().map(|p| (p.local, p.remote)).collect(),
        None => container.iter().map(|p| (*p, *p)).collect(),
    }
}

/// Local ports forwarded for two services, found before anything is applied.
fn check_local_ports(plans: &[ServicePlan]) -> Result<(), UsageError> {
    let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
    for s in plans {
        for (local, remote) in &s.ports {
            if let Some(other) = seen.insert(*local, &s.service.config.name) {
                return Err(UsageError(format!(
                    "services `{other}` and `{}` would both forward localhost:{local}; set \
                     `run.ports` of one, e.g. `[\"{}:{remote}\"]`",
                    s.service.config.name,
                    local.wrapping_add(1)
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::{Config, WorkloadKind, WorkloadRef};
    use crate::deploy::rewrite::RewriteNotes;
    use crate::project::Project;

    const TWO: &str = "\
services:
  - name: orders
    build: {package: ./cmd/orders}
  - name: gateway
    build: {package: ./cmd/gateway}
    run: {ports: [\"8080\", \"9000:90\"], readyPort: 90}
";

    fn services(yaml: &str) -> Vec<Service> {
        Project {
            root: PathBuf::from("/src/shop"),
            config: Config::parse(yaml, Path::new("kdev.yaml")).unwrap(),
            name: "shop".into(),
        }
        .services()
    }

    fn workload(service: &str, ports: &[u16]) -> DevWorkload {
        DevWorkload {
            service: service.into(),
            workload: WorkloadRef {
                kind: WorkloadKind::Deployment,
                name: service.into(),
            },
            pod_selector: BTreeMap::new(),
            notes: RewriteNotes {
                ports: ports.to_vec(),
                ..Default::default()
            },
            index: 0,
            service_names: Vec::new(),
        }
    }

    fn delve(port: u16) -> DebugOptions {
        DebugOptions {
            port,
            continue_at_start: false,
            hold: false,
        }
    }

    #[test]
    fn each_service_debugs_on_its_own_port_in_order() {
        let services = services(TWO);
        assert!(debug_options(&services, None).is_empty());
        let debug = debug_options(&services, Some(&delve(2345)));
        assert_eq!(debug["orders"].port, 2345);
        assert_eq!(debug["gateway"].port, 2346);
    }

    #[test]
    fn ports_come_from_run_ports_else_the_container_then_delve() {
        let services = services(TWO);
        let workloads = [workload("orders", &[8081, 7000]), workload("gateway", &[1])];
        let debug = debug_options(&services, Some(&delve(2345)));
        let plans = service_plans(&workloads, &services, &debug, &Ui::plain()).unwrap();
        let orders = &plans[0];
        assert_eq!(orders.service.config.name, "orders");
        assert_eq!(orders.ports, [(8081, 8081), (7000, 7000), (2345, 2345)]);
        // Ready when the first app port accepts, not Delve's.
        assert_eq!(orders.app_port, Some(8081));
        assert_eq!(orders.timings_name.as_deref(), Some("orders"));
        let gateway = &plans[1];
        assert_eq!(gateway.ports, [(8080, 8080), (9000, 90), (2346, 2346)]);
        assert_eq!(gateway.app_port, Some(90));
    }

    #[test]
    fn a_service_without_ports_has_no_ready_port_even_under_delve() {
        let services = services("build: {package: .}\n");
        let debug = debug_options(&services, Some(&delve(2345)));
        let plans =
            service_plans(&[workload("app", &[])], &services, &debug, &Ui::plain()).unwrap();
        // kdev.yaml without `services:`: its one service runs the one workload.
        assert_eq!(plans[0].service.config.name, "");
        assert_eq!(plans[0].ports, [(2345, 2345)]);
        assert_eq!(plans[0].app_port, None);
        assert_eq!(plans[0].timings_name, None);
    }

    #[test]
    fn two_services_forwarding_one_local_port_is_a_usage_error() {
        let services = services(TWO);
        let workloads = [workload("orders", &[8080]), workload("gateway", &[])];
        let err = service_plans(&workloads, &services, &BTreeMap::new(), &Ui::plain())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "services `orders` and `gateway` would both forward localhost:8080; set `run.ports` \
             of one, e.g. `[\"8081:8080\"]`"
        );
    }
}

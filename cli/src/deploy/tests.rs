//! Tests of the deploy pipeline: manifests, the dev-pod plan, per-owner objects.
use super::*;
use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use kdev_protocol::labels::{OWNER as LABEL_OWNER, PROJECT as LABEL_PROJECT};

use super::manifests::{find_workload, parse_manifests};
use crate::config::{WorkloadKind, WorkloadRef};

const MANIFEST: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: gin-hello
spec:
  replicas: 3
  selector:
    matchLabels: {app: gin-hello}
  template:
    metadata:
      labels: {app: gin-hello}
    spec:
      containers:
        - name: app
          image: kdev.local/gin-hello:dev
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: gin-hello
spec:
  selector: {app: gin-hello}
  ports: [{port: 8080}]
---
";

/// The one service of a kdev.yaml without `services:`.
fn one() -> DevTarget<'static> {
    DevTarget {
        service: "",
        workload: None,
        dev: dev(),
    }
}

fn dev() -> DevPodSpec {
    DevPodSpec {
        container: None,
        sidecar_image: "img".into(),
        args: None,
        stop_signal: None,
        grace_period_ms: None,
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
        debug: None,
    }
}

#[test]
fn parses_multi_document_manifests() {
    let objs = parse_manifests(MANIFEST, Path::new("k8s/app.yaml")).unwrap();
    assert_eq!(
        objs.iter().map(|o| o.kind()).collect::<Vec<_>>(),
        vec!["Deployment", "Service"]
    );
}

#[test]
fn bad_yaml_names_file_and_line() {
    let err = parse_manifests("kind: Pod\nmetadata: [\n", Path::new("k8s/x.yaml")).unwrap_err();
    assert!(err.to_string().starts_with("k8s/x.yaml:"), "{err}");
    let err = parse_manifests("foo: bar\n", Path::new("k8s/x.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("apiVersion, kind and metadata.name")
            || err.to_string().contains("not a Kubernetes object"),
        "{err}"
    );
}

#[test]
fn prepare_rewrites_the_only_deployment_and_labels_everything() {
    let objs = parse_manifests(MANIFEST, Path::new("a.yaml")).unwrap();
    let labels = BTreeMap::from([(LABEL_PROJECT.to_string(), "gin-hello".to_string())]);
    let plan = prepare(&objs, &[one()], "dev", &labels).unwrap();
    assert_eq!(
        plan.workloads[0].workload.to_string(),
        "deployment/gin-hello"
    );
    assert_eq!(
        plan.workloads[0].service, "gin-hello",
        "named after its workload"
    );
    assert_eq!(plan.workloads[0].service_names, ["gin-hello"]);
    assert_eq!(plan.workloads[0].pod_selector["app"], "gin-hello");
    for o in &plan.objects {
        assert_eq!(o.metadata.namespace.as_deref(), Some("dev"));
        assert_eq!(o.labels()[LABEL_PROJECT], "gin-hello");
    }
    let d: Deployment =
        serde_json::from_value(serde_json::to_value(&plan.objects[0]).unwrap()).unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    assert_eq!(
        spec.template.spec.unwrap().share_process_namespace,
        Some(true)
    );
}

#[test]
fn personalize_renames_and_selects_by_owner() {
    let objs = parse_manifests(MANIFEST, Path::new("a.yaml")).unwrap();
    let mut plan = prepare(&objs, &[one()], "team", &BTreeMap::new()).unwrap();
    personalize(&mut plan, "alice");
    assert_eq!(
        plan.workloads[0].workload.to_string(),
        "deployment/gin-hello-alice"
    );
    assert_eq!(plan.renamed_services["gin-hello"], "gin-hello-alice");
    assert_eq!(plan.workloads[0].pod_selector[LABEL_OWNER], "alice");
    let d = &plan.objects[0];
    assert_eq!(d.name_any(), "gin-hello-alice");
    assert_eq!(
        d.data["spec"]["selector"]["matchLabels"][LABEL_OWNER],
        "alice"
    );
    assert_eq!(
        d.data["spec"]["template"]["metadata"]["labels"][LABEL_OWNER],
        "alice"
    );
    let svc = &plan.objects[1];
    assert_eq!(svc.name_any(), "gin-hello-alice");
    assert_eq!(svc.data["spec"]["selector"][LABEL_OWNER], "alice");
    assert_eq!(svc.labels()[LABEL_OWNER], "alice");
    // A shared Service selecting `app: gin-hello` must not pick alice's copy: the selected
    // label's value is hers, on the pods and in her selectors alike.
    assert_eq!(
        d.data["spec"]["template"]["metadata"]["labels"]["app"],
        "gin-hello-alice"
    );
    assert_eq!(
        d.data["spec"]["selector"]["matchLabels"]["app"],
        "gin-hello-alice"
    );
    assert_eq!(svc.data["spec"]["selector"]["app"], "gin-hello-alice");
    assert_eq!(plan.workloads[0].pod_selector["app"], "gin-hello-alice");
    assert_eq!(
        owner_from_user("Alice@Example.com").as_deref(),
        Some("alice-example-com")
    );
    assert_eq!(owner_from_user("---"), None);
}

#[test]
fn personalize_gives_each_owner_their_config_and_leaves_shared_refs() {
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      imagePullSecrets: [{name: pull}, {name: shared-pull}]
      volumes:
        - {name: cfg, configMap: {name: web-config}}
        - {name: creds, secret: {secretName: web-secret}}
        - {name: both, projected: {sources: [{configMap: {name: web-config}}, {secret: {name: shared}}]}}
        - {name: scratch, emptyDir: {}}
      containers:
        - name: app
          image: web
          envFrom: [{configMapRef: {name: web-config}}, {secretRef: {name: shared}}]
          env:
            - {name: A, valueFrom: {configMapKeyRef: {name: web-config, key: a}}}
            - {name: B, valueFrom: {secretKeyRef: {name: web-secret, key: b}}}
            - {name: C, value: plain}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {a: "1"}
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret}
stringData: {b: "2"}
---
apiVersion: v1
kind: Secret
metadata: {name: pull}
type: kubernetes.io/dockerconfigjson
stringData: {.dockerconfigjson: "{}"}
"#;
    let objs = parse_manifests(manifest, Path::new("a.yaml")).unwrap();
    let mut plan = prepare(&objs, &[one()], "team", &BTreeMap::new()).unwrap();
    personalize(&mut plan, "bob");
    let names: Vec<String> = plan.objects.iter().map(|o| o.name_any()).collect();
    assert_eq!(
        names,
        ["web-bob", "web-config-bob", "web-secret-bob", "pull-bob"]
    );
    let pod = &plan.objects[0].data["spec"]["template"]["spec"];
    let v = &pod["volumes"];
    assert_eq!(v[0]["configMap"]["name"], "web-config-bob");
    assert_eq!(v[1]["secret"]["secretName"], "web-secret-bob");
    assert_eq!(
        v[2]["projected"]["sources"][0]["configMap"]["name"],
        "web-config-bob"
    );
    // Not in the manifests: shared, left alone.
    assert_eq!(v[2]["projected"]["sources"][1]["secret"]["name"], "shared");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "pull-bob");
    assert_eq!(pod["imagePullSecrets"][1]["name"], "shared-pull");
    let c = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .unwrap();
    assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "web-config-bob");
    assert_eq!(c["envFrom"][1]["secretRef"]["name"], "shared");
    assert_eq!(
        c["env"][0]["valueFrom"]["configMapKeyRef"]["name"],
        "web-config-bob"
    );
    assert_eq!(
        c["env"][1]["valueFrom"]["secretKeyRef"]["name"],
        "web-secret-bob"
    );
    // Nothing was added where there was nothing to rename.
    assert_eq!(v[3], serde_json::json!({"name": "scratch", "emptyDir": {}}));
    assert_eq!(
        c["env"][2],
        serde_json::json!({"name": "C", "value": "plain"})
    );
}

#[test]
fn missing_or_ambiguous_workloads_are_explained() {
    let objs = parse_manifests(MANIFEST, Path::new("a.yaml")).unwrap();
    let w: WorkloadRef = "deployment/other".parse().unwrap();
    let err = find_workload(&objs, Some(&w), None, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deployment/other is not in the manifests")
            && err.contains("deployment/gin-hello"),
        "{err}"
    );
    let two = [objs[0].clone(), objs[0].clone()];
    let err = find_workload(&two, None, None, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("several workloads"), "{err}");
}

#[test]
fn several_services_each_get_their_workload_and_the_rest_is_applied_as_is() {
    let text = format!(
        "{}---\n{}",
        MANIFEST,
        MANIFEST.replace("gin-hello", "orders")
    );
    let objs = parse_manifests(&text, Path::new("k8s/app.yaml")).unwrap();
    let targets = [DevTarget {
        service: "orders",
        workload: None,
        dev: dev(),
    }];
    let plan = prepare(&objs, &targets, "team", &BTreeMap::new()).unwrap();
    assert_eq!(plan.workloads.len(), 1);
    assert_eq!(plan.workloads[0].workload.to_string(), "deployment/orders");
    assert_eq!(plan.workloads[0].service_names, ["orders"]);
    // gin-hello is not developed: applied as the manifest says (3 replicas, no sidecar).
    let gin = &plan.objects[0];
    assert_eq!(gin.data["spec"]["replicas"], 3);
    // Two services on one workload, or a service without one, are explained.
    let both = [
        DevTarget {
            service: "a",
            workload: Some(&WorkloadRef {
                kind: WorkloadKind::Deployment,
                name: "orders".into(),
            }),
            dev: dev(),
        },
        DevTarget {
            service: "orders",
            workload: None,
            dev: dev(),
        },
    ];
    let err = prepare(&objs, &both, "team", &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("services `a` and `orders` would both run orders"),
        "{err}"
    );
    let missing = [
        DevTarget {
            service: "payments",
            workload: None,
            dev: dev(),
        },
        DevTarget {
            service: "orders",
            workload: None,
            dev: dev(),
        },
    ];
    let err = prepare(&objs, &missing, "team", &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service `payments`: no workload named payments"),
        "{err}"
    );
}

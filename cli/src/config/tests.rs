//! kdev.yaml parsing and validation.
use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("kdev.yaml"))
}

#[test]
fn empty_file_is_the_default_configuration() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.build.package, ".");
    assert_eq!(c.sync.remote, "/kdev/src");
}

const SERVICES: &str = "\
manifests: [k8s/]
services:
  - name: orders
    workload: deployment/orders
    build: {package: ./cmd/orders}
  - name: gateway
    workload: deployment/gateway
    build: {package: ./cmd/gateway}
    run: {ports: [\"8080\"]}
";

#[test]
fn services_parse_and_a_file_without_them_is_one_service() {
    let c = parse(SERVICES).unwrap();
    let s = c.services();
    assert_eq!(
        s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["orders", "gateway"]
    );
    assert_eq!(s[1].build.package, "./cmd/gateway");
    assert_eq!(s[1].run.ports.as_ref().unwrap()[0].local, 8080);
    let one = parse("workload: gin-hello\nbuild: {package: ./cmd/x}\n").unwrap();
    let s = one.services();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].build.package, "./cmd/x");
    assert_eq!(s[0].workload.as_ref().unwrap().name, "gin-hello");
}

#[test]
fn malformed_services_name_the_line_and_the_service() {
    let dup = SERVICES.replace("name: gateway", "name: orders");
    let err = parse(&dup).unwrap_err().to_string();
    assert_eq!(
        err,
        "kdev.yaml:6: service `orders`: the name is used by two services"
    );
    let two_on_one_port = SERVICES.replace(
        "    build: {package: ./cmd/orders}",
        "    build: {package: ./cmd/orders}\n    run: {ports: [8080]}",
    );
    let err = parse(&two_on_one_port).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "kdev.yaml:7: service `gateway`: local port 8080 is also forwarded for service `orders`"
        ),
        "{err}"
    );
    let same_workload = SERVICES.replace("deployment/gateway", "deployment/orders");
    let err = parse(&same_workload).unwrap_err().to_string();
    assert!(
        err.contains("deployment/orders is already the workload of service `orders`"),
        "{err}"
    );
    let bad_name = SERVICES.replace("name: gateway", "name: Gateway_1");
    assert!(
        parse(&bad_name)
            .unwrap_err()
            .to_string()
            .contains("DNS label")
    );
    let mixed = format!("build: {{package: ./x}}\n{SERVICES}");
    let err = parse(&mixed).unwrap_err().to_string();
    assert!(
        err.contains("build: with `services:`, each service has its own"),
        "{err}"
    );
    let bad_field = SERVICES.replace("./cmd/gateway}", "\"\"}");
    let err = parse(&bad_field).unwrap_err().to_string();
    assert!(
        err.contains("service `gateway`: build.package: must not be empty"),
        "{err}"
    );
}

#[test]
fn full_file_parses() {
    let c = parse(
            "manifests: [k8s/app.yaml]\n\
             workload: deployment/gin-hello\n\
             container: app\n\
             namespace: team-a\n\
             build:\n  package: ./cmd/server\n  flags: [-tags, dev]\n  env: {GOFLAGS: -mod=mod}\n\
             sync:\n  exclude: ['*.md', tmp/]\n\
             run:\n  ports: [8080, '9090:9000']\n  readyPort: 8080\n  gracePeriod: 500ms\n  stopSignal: SIGINT\n\
             sidecar:\n  image: golang:1.24\n",
        )
        .unwrap();
    assert_eq!(c.workload.unwrap().to_string(), "deployment/gin-hello");
    assert_eq!(c.build.package, "./cmd/server");
    assert_eq!(c.build.env["GOFLAGS"], "-mod=mod");
    assert_eq!(
        c.run.ports.unwrap(),
        vec![
            PortSpec {
                local: 8080,
                remote: 8080
            },
            PortSpec {
                local: 9090,
                remote: 9000
            }
        ]
    );
    assert_eq!(c.run.grace_period.unwrap().0, Duration::from_millis(500));
    assert_eq!(c.sidecar.image.as_deref(), Some("golang:1.24"));
}

#[test]
fn unknown_field_names_line_and_column() {
    let err = parse("build:\n  package: .\n  flagz: [-v]\n").unwrap_err();
    match &err {
        ConfigError::Syntax {
            line,
            column,
            message,
            ..
        } => {
            assert_eq!((*line, *column), (3, 3), "{err}");
            assert!(message.contains("unknown field `flagz`"), "{message}");
            assert!(
                message.contains("flags"),
                "should list the expected fields: {message}"
            );
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(err.to_string().starts_with("kdev.yaml:3:3: "), "{err}");
}

#[test]
fn malformed_yaml_names_line() {
    let err = parse("workload: a\nrun:\n  ports: [8080\n").unwrap_err();
    let ConfigError::Syntax { line, .. } = err else {
        panic!("expected syntax error")
    };
    assert!(line >= 3, "line {line}");
}

#[test]
fn bad_values_are_refused_with_what_was_expected() {
    let err = parse("run:\n  ports: [0]\n").unwrap_err().to_string();
    assert!(
        err.contains("kdev.yaml:2:") && err.contains("not a port number"),
        "{err}"
    );
    let err = parse("workload: cronjob/x\n").unwrap_err().to_string();
    assert!(err.contains("unsupported workload kind"), "{err}");
    let err = parse("sync:\n  remote: relative/path\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sync.remote") && err.contains("absolute"),
        "{err}"
    );
    let err = parse("run:\n  stopSignal: SIGFOO\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("run.stopSignal"), "{err}");
    let err = parse("run:\n  gracePeriod: soon\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a duration"), "{err}");
    let err = parse("namespace: Team_A\n").unwrap_err().to_string();
    assert!(err.contains("namespace"), "{err}");
}

#[test]
fn bare_workload_name_is_a_deployment() {
    let w: WorkloadRef = "gin-hello".parse().unwrap();
    assert_eq!(
        w,
        WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: "gin-hello".into()
        }
    );
    let w: WorkloadRef = "sts/db".parse().unwrap();
    assert_eq!(w.kind, WorkloadKind::StatefulSet);
}

#[test]
fn manifests_take_paths_kustomize_helm_and_render_commands() {
    let c = parse(
        "manifests:\n  - k8s/\n  - kustomize: deploy/overlays/dev\n  - helm:\n      chart: charts/shop\n      values: [dev.yaml]\n      set: {image.tag: dev}\n  - render: ./render.sh\n",
    )
    .unwrap();
    assert_eq!(
        c.manifests,
        vec![
            ManifestSource::Path("k8s/".into()),
            ManifestSource::Kustomize {
                kustomize: "deploy/overlays/dev".into()
            },
            ManifestSource::Helm {
                helm: HelmSource {
                    chart: "charts/shop".into(),
                    release: None,
                    values: vec!["dev.yaml".into()],
                    set: BTreeMap::from([("image.tag".into(), "dev".into())]),
                }
            },
            ManifestSource::Render {
                render: "./render.sh".into()
            },
        ]
    );
    assert!(parse("manifests:\n  - helm: {chrt: x}\n").is_err());
}

#[test]
fn the_cache_section() {
    let c = parse("").unwrap();
    assert!(c.cache.persistent);
    assert_eq!(c.cache.size, "5Gi");
    let c = parse("cache: {persistent: false}\n").unwrap();
    assert!(!c.cache.persistent);
    let c = parse("cache: {storageClass: fast-ssd, size: 1.5Gi}\n").unwrap();
    assert_eq!(c.cache.storage_class.as_deref(), Some("fast-ssd"));
    for bad in ["5 Gi", "Gi", "0", "-1Gi", "5GB", "1..5Gi"] {
        let err = parse(&format!("cache: {{size: \"{bad}\"}}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.size"), "{bad}: {err}");
    }
    let err = parse("cache: {storageClass: Fast_SSD}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache.storageClass"), "{err}");
    // Project-wide: also with `services:`.
    let with_services = format!("cache: {{persistent: false}}\n{SERVICES}");
    assert!(!parse(&with_services).unwrap().cache.persistent);
}

#[test]
fn the_modules_section() {
    assert!(parse("").unwrap().modules.proxy);
    assert!(!parse("modules: {proxy: false}\n").unwrap().modules.proxy);
    let err = parse("modules: {proxi: false}\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `proxi`"), "{err}");
    // Project-wide: also with `services:`.
    let with_services = format!("modules: {{proxy: false}}\n{SERVICES}");
    assert!(!parse(&with_services).unwrap().modules.proxy);
}

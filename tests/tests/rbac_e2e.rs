//! End-to-end: a developer bound only to manifests/rbac/role.yaml runs kdev in a team namespace
//! without any permission error; with one verb taken out of the Role, kdev names the missing
//! permission up front instead of failing halfway.
//!
//! The developer's client certificate is issued through the cluster's own CSR API
//! (signer `kubernetes.io/kube-apiserver-client`), so this works on any cluster whose admin may
//! approve CSRs, not only the local test cluster.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kdev_tests::{
    TestNamespace, client, example_project, free_port, http_get, kdev_bin, repo_root,
    set_ping_message, spawn_captured,
};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A kubeconfig for user `name`, with a certificate signed by the cluster.
async fn user_kubeconfig(
    admin: &kube::Client,
    name: &str,
    dir: &Path,
) -> Result<std::path::PathBuf> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
            "-subj",
            &format!("/CN={name}"),
        ])
        .output()
        .context("running openssl")?;
    ensure!(
        ok.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let csr_pem = std::fs::read(&csr)?;

    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    // Unique per call: tests in this binary run in parallel and may issue the same user.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let csr_name = format!("kdev-test-{name}-{}-{nanos}", std::process::id());
    let obj: CertificateSigningRequest = serde_json::from_value(json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": { "name": csr_name },
        "spec": {
            "request": base64(&csr_pem),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "usages": ["client auth"],
            "expirationSeconds": 3600
        }
    }))?;
    let _ = csrs.delete(&csr_name, &DeleteParams::default()).await;
    csrs.create(&PostParams::default(), &obj).await?;
    let mut approved = csrs.get(&csr_name).await?;
    approved.status = Some(serde_json::from_value(json!({
        "conditions": [{ "type": "Approved", "status": "True", "reason": "KdevTest", "message": "e2e test user" }]
    }))?);
    csrs.replace_subresource("approval", &csr_name, &PostParams::default(), &approved)
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let cert = loop {
        let c = csrs.get(&csr_name).await?;
        if let Some(cert) = c.status.and_then(|s| s.certificate) {
            break cert.0;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the CSR for {name} was not signed in 60s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = csrs.delete(&csr_name, &DeleteParams::default()).await;

    // The cluster's address and CA from the admin's kubeconfig.
    let kc = kube::config::Kubeconfig::read()?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("no cluster in kubeconfig")?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => data.clone(),
        (None, Some(path)) => base64(&std::fs::read(path)?),
        (None, None) => anyhow::bail!("the admin kubeconfig has no CA"),
    };
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\n\
             users:\n- name: {name}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n- name: {name}\n  context: {{cluster: c, user: {name}}}\ncurrent-context: {name}\n",
            cluster.server.context("no server")?,
            base64(&cert),
            base64(&std::fs::read(&key)?),
        ),
    )?;
    Ok(path)
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET /ping` on localhost:`port`, the body or an error.
async fn ping(port: u16) -> Result<String> {
    tokio::task::spawn_blocking(move || http_get(port, "/ping", Duration::from_secs(10))).await?
}

/// Wait until localhost:`port` serves `message`, failing early if `child` exits.
async fn wait_message(
    port: u16,
    message: &str,
    child: &mut std::process::Child,
    who: &str,
) -> Result<()> {
    let want = format!(r#"{{"message":"{message}"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        if ping(port).await.map(|b| b.contains(&want)).unwrap_or(false) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("kdev watch as {who} exited ({status})");
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{want} not served to {who} within 240s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace with the repository's Role bound to `users`, and a kubeconfig for each.
async fn team_namespace(
    admin: &kube::Client,
    users: &[&str],
    dir: &Path,
) -> Result<(TestNamespace, Vec<std::path::PathBuf>)> {
    let ns = TestNamespace::create(admin, "kdev-team").await?;
    Api::<Role>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &role_from_repo()?)
        .await?;
    let text = std::fs::read_to_string(repo_root().join("manifests/rbac/rolebinding.yaml"))?;
    let mut binding: RoleBinding = yaml_serde::from_str(&text)?;
    binding.subjects = Some(
        users
            .iter()
            .map(|u| {
                serde_json::from_value(
                    json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u }),
                )
            })
            .collect::<Result<_, _>>()?,
    );
    Api::<RoleBinding>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &binding)
        .await?;
    let mut configs = Vec::new();
    for u in users {
        configs.push(user_kubeconfig(admin, u, dir).await?);
    }
    Ok((ns, configs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_developers_share_a_namespace() -> Result<()> {
    let admin = client().await?;
    let dir = tempfile::tempdir()?;
    let (ns, kcs) = team_namespace(&admin, &["alice", "bob"], dir.path()).await?;
    let (alice, bob) = (kcs[0].clone(), kcs[1].clone());
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let proj_a = example_project(&da, ns.name(), pa)?;
    let proj_b = example_project(&db, ns.name(), pb)?;
    let start = |project: &Path, kc: &Path| {
        spawn_captured(
            Command::new(kdev_bin())
                .arg("watch")
                .current_dir(project)
                .env("KUBECONFIG", kc),
        )
    };
    let (mut ka, out_a) = start(&proj_a, &alice)?;
    let (mut kb, out_b) = start(&proj_b, &bob)?;
    wait_message(pa, "pong", &mut ka, "alice")
        .await
        .with_context(|| out_a.lock().unwrap().clone())?;
    wait_message(pb, "pong", &mut kb, "bob")
        .await
        .with_context(|| out_b.lock().unwrap().clone())?;

    // Each changes the message differently; each forwarded port serves only its owner's code.
    set_ping_message(&proj_a, "alice v2")?;
    set_ping_message(&proj_b, "bob v2")?;
    wait_message(pa, "alice v2", &mut ka, "alice").await?;
    wait_message(pb, "bob v2", &mut kb, "bob").await?;
    for _ in 0..10 {
        ensure!(
            ping(pa).await?.contains("alice v2"),
            "alice's port served someone else's code"
        );
        ensure!(
            ping(pb).await?.contains("bob v2"),
            "bob's port served someone else's code"
        );
    }

    // `kdev sessions` lists both.
    let sessions = Command::new(kdev_bin())
        .args(["sessions", "-n", ns.name()])
        .env("KUBECONFIG", &alice)
        .output()?;
    let table = String::from_utf8_lossy(&sessions.stdout).into_owned();
    ensure!(
        table.contains("alice")
            && table.contains("bob")
            && table.matches("live, connected (").count() == 2,
        "{table}"
    );

    // bob stops and runs `kdev down`: his objects go, alice keeps serving.
    let _ = kb.kill();
    let _ = kb.wait();
    let down = Command::new(kdev_bin())
        .arg("down")
        .current_dir(&proj_b)
        .env("KUBECONFIG", &bob)
        .output()?;
    ensure!(
        down.status.success(),
        "kdev down as bob: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), ns.name());
    ensure!(
        deployments.get_opt("gin-hello-bob").await?.is_none(),
        "bob's Deployment is still there"
    );
    ensure!(
        deployments.get_opt("gin-hello-alice").await?.is_some(),
        "alice's Deployment went too"
    );
    for _ in 0..5 {
        ensure!(
            ping(pa).await?.contains("alice v2"),
            "alice stopped being served after bob's down"
        );
    }
    // The example's ConfigMap is per developer too, and alice's Deployment uses her own.
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(admin.clone(), ns.name());
    ensure!(
        config_maps.get_opt("gin-hello-config-bob").await?.is_none(),
        "bob's ConfigMap is still there"
    );
    ensure!(
        config_maps
            .get_opt("gin-hello-config-alice")
            .await?
            .is_some(),
        "alice's ConfigMap went too"
    );
    let alice_deployment = serde_json::to_value(deployments.get("gin-hello-alice").await?)?;
    ensure!(
        alice_deployment
            .to_string()
            .contains(r#""name":"gin-hello-config-alice""#),
        "alice's pods do not use her ConfigMap: {alice_deployment}"
    );

    // alice's kdev dies without releasing its Lease. gc leaves a live (or recently expired)
    // session alone, and removes it once its Lease has been expired longer than the threshold.
    let _ = ka.kill();
    let _ = ka.wait();
    let gc = |older: &str| {
        Command::new(kdev_bin())
            .args(["gc", "-n", ns.name(), "--older-than", older])
            .env("KUBECONFIG", &alice)
            .output()
    };
    let early = gc("2s")?;
    ensure!(
        early.status.success(),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    ensure!(
        deployments.get_opt("gin-hello-alice").await?.is_some(),
        "gc removed a live session"
    );
    // Time passes: the Lease (90 s) as it looks 200 s after its last renewal.
    let past = k8s_openapi::jiff::Timestamp::from_second(
        k8s_openapi::jiff::Timestamp::now().as_second() - 200,
    )?;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns.name());
    let aged = json!({ "spec": { "renewTime": MicroTime(past), "acquireTime": MicroTime(past) } });
    leases
        .patch(
            "kdev-gin-hello-alice",
            &PatchParams::default(),
            &Patch::Merge(&aged),
        )
        .await?;
    let late = gc("2s")?;
    ensure!(
        late.status.success(),
        "{}",
        String::from_utf8_lossy(&late.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&late.stdout).contains("removed alice's session"),
        "{}",
        String::from_utf8_lossy(&late.stdout)
    );
    ensure!(
        deployments.get_opt("gin-hello-alice").await?.is_none(),
        "gc left alice's expired session"
    );
    ensure!(
        config_maps
            .get_opt("gin-hello-config-alice")
            .await?
            .is_none(),
        "gc left alice's ConfigMap"
    );
    Ok(())
}

/// Start kdev with `args` as the kubeconfig's user, wait until its Lease says it is connected
/// to the pod, then kill it (without releasing its Lease, like a crash). Returns its output.
async fn run_until_connected(
    leases: &Api<Lease>,
    project: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> Result<String> {
    let (mut child, output) = spawn_captured(
        Command::new(kdev_bin())
            .args(args)
            .current_dir(project)
            .env("KUBECONFIG", kubeconfig),
    )?;
    let holder = format!("/{}", child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let result = loop {
        let lease = leases.get_opt("kdev-gin-hello-alice").await?;
        let connected = lease.is_some_and(|l| {
            l.annotations()
                .get("kdev.dev/connection")
                .map(String::as_str)
                == Some("connected")
                && l.spec
                    .and_then(|s| s.holder_identity)
                    .is_some_and(|h| h.ends_with(&holder))
        });
        if connected {
            break Ok(());
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "kdev {args:?} exited ({status}): {}",
                output.lock().unwrap()
            ));
        }
        if std::time::Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "kdev {args:?} did not connect: {}",
                output.lock().unwrap()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let out = output.lock().unwrap().clone();
    result.map(|()| out)
}

fn role_from_repo() -> Result<Role> {
    let text = std::fs::read_to_string(repo_root().join("manifests/rbac/role.yaml"))?;
    Ok(yaml_serde::from_str(&text)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_is_enough_and_a_missing_verb_is_named() -> Result<()> {
    let admin = client().await?;
    let ns = TestNamespace::create(&admin, "kdev-team").await?;
    let dir = tempfile::tempdir()?;
    let alice = user_kubeconfig(&admin, "alice", dir.path()).await?;

    let roles: Api<Role> = Api::namespaced(admin.clone(), ns.name());
    roles
        .create(&PostParams::default(), &role_from_repo()?)
        .await?;
    let text = std::fs::read_to_string(repo_root().join("manifests/rbac/rolebinding.yaml"))?;
    let mut binding: RoleBinding = yaml_serde::from_str(&text)?;
    binding.subjects = Some(vec![serde_json::from_value(json!({
        "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"
    }))?]);
    Api::<RoleBinding>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &binding)
        .await?;

    // With the Role: kdev watch serves, kdev down cleans up, no permission error anywhere.
    let port = free_port();
    let project = example_project(dir.path(), ns.name(), port)?;
    let (mut child, output) = spawn_captured(
        Command::new(kdev_bin())
            .arg("watch")
            .current_dir(&project)
            .env("KUBECONFIG", &alice),
    )?;
    // Serves pong; stops at once if kdev exits (e.g. for lack of permission).
    let served = wait_message(port, "pong", &mut child, "alice").await;
    // The session lock: a second kdev for alice's workload is refused, naming her live session.
    let second = Command::new(kdev_bin())
        .arg("watch")
        .current_dir(&project)
        .env("KUBECONFIG", &alice)
        .output()?;
    let second_out = format!(
        "{}{}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
    let out = output.lock().unwrap().clone();
    served.with_context(|| out.clone())?;
    ensure!(
        !second.status.success(),
        "a second kdev watch should be refused: {second_out}"
    );
    ensure!(
        second_out.contains("already being developed by alice@")
            && second_out.contains("--take-over"),
        "{second_out}"
    );
    ensure!(
        second_out.contains("it is connected to pod gin-hello-alice-"),
        "the refusal should say how the first kdev is known to be alive: {second_out}"
    );
    // --take-over gets past a live session at once.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns.name());
    run_until_connected(&leases, &project, &alice, &["watch", "--take-over"]).await?;
    // That kdev was killed (as in a crash) while connected, its Lease live for another 90 s:
    // its pod no longer hears it, so the next kdev takes over at once, and says so.
    let third = run_until_connected(&leases, &project, &alice, &["watch"]).await?;
    ensure!(
        third.contains("took over gin-hello-alice's session of alice@")
            && third.contains("no kdev is connected to pod gin-hello-alice-"),
        "{third}"
    );
    ensure!(
        !out.contains("forbidden") && !out.contains("missing permission"),
        "{out}"
    );
    // The Role lets kdev keep the build cache on a claim of alice's own.
    ensure!(
        out.contains("build cache: PersistentVolumeClaim kdev-cache-gin-hello-alice "),
        "{out}"
    );
    let down = Command::new(kdev_bin())
        .arg("down")
        .current_dir(&project)
        .env("KUBECONFIG", &alice)
        .output()?;
    ensure!(
        down.status.success(),
        "kdev down as alice: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let down_out = String::from_utf8_lossy(&down.stdout);
    ensure!(
        down_out.contains("deleted PersistentVolumeClaim/kdev-cache-gin-hello-alice"),
        "kdev down should remove the build cache's claim: {down_out}"
    );

    // Take `create` on pods/portforward away: kdev says exactly that, before applying anything.
    let mut role = roles.get("kdev-developer").await?;
    for rule in role.rules.iter_mut().flatten() {
        if let Some(res) = rule.resources.as_mut() {
            res.retain(|r| r != "pods/portforward");
        }
    }
    roles
        .replace("kdev-developer", &PostParams::default(), &role)
        .await?;
    let out = Command::new(kdev_bin())
        .arg("watch")
        .current_dir(&project)
        .env("KUBECONFIG", &alice)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "kdev watch should fail without pods/portforward: {text}"
    );
    ensure!(
        text.contains("missing permission") && text.contains("create pods/portforward"),
        "{text}"
    );
    ensure!(
        !text.contains("applying"),
        "nothing should be applied before the check: {text}"
    );
    Ok(())
}

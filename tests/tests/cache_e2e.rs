//! End-to-end: Go's build cache outlives the dev pod.
//!
//! With a default StorageClass (the test cluster's `kdev-local`), `kdev watch` keeps GOCACHE on a
//! PersistentVolumeClaim: after `kubectl delete pod`, the new pod's first build of a vendored
//! project compiles nothing (the claim's GOCACHE gains no compiled package), where the first
//! pod compiled all of `vendor/` into it. Without a default StorageClass, kdev builds with the
//! image's cache and says so. The evidence is what the cache holds, not timings.
//!
//! The second test takes the cluster's default StorageClass away for a while, so the two hold
//! one lock: no claim of the first is created meanwhile.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kdev_tests::watch::{Watch, WatchOptions, dev_pod};
use kdev_tests::{TestNamespace, client, exec, kdev_bin, poll_until};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// The tests of this file one at a time (see the module docs).
static CLUSTER_STORAGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `go mod vendor` in the project.
fn vendor(project: &Path) -> Result<()> {
    kdev_tests::go_mod_vendor(project)
}

/// Compiled outputs (`*-d` files) in a GOCACHE of the dev pod's sidecar.
async fn cache_outputs(pods: &Api<Pod>, pod: &str, gocache: &str) -> Result<usize> {
    let script = format!("find {gocache} -type f -name '*-d' | wc -l");
    let out = exec(pods, pod, "kdev", &["sh", "-c", &script], None)
        .await?
        .ok()?
        .stdout_str();
    out.trim()
        .parse()
        .with_context(|| format!("counting {gocache}: {out:?}"))
}

/// [`cache_outputs`] once two counts 3 s apart agree (at most two minutes).
async fn settled_outputs(pods: &Api<Pod>, pod: &str, gocache: &str) -> Result<usize> {
    let mut last = cache_outputs(pods, pod, gocache).await?;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = cache_outputs(pods, pod, gocache).await?;
        if now == last {
            return Ok(now);
        }
        eprintln!("{gocache} in {pod}: {last} → {now} compiled outputs");
        last = now;
    }
    bail!("the compiled outputs in {gocache} of {pod} kept changing for two minutes")
}

/// Lines of kdev's output that contain `needle`.
fn count_lines(output: &str, needle: &str) -> usize {
    output.lines().filter(|l| l.contains(needle)).count()
}

/// The reload lines of whole-tree syncs (the first sync into each new pod).
const TREE_RELOAD: &str = " files → synced";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_pods_first_build_reuses_the_cache_on_the_claim() -> Result<()> {
    let _one_at_a_time = CLUSTER_STORAGE.lock().await;
    let client = client().await?;
    ensure!(
        default_classes(&client).await?.len() == 1,
        "this test needs one default StorageClass (tests/cluster/up makes `kdev-local`)"
    );
    let ns = TestNamespace::create(&client, "kdev-cache").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let w = Watch::start_opts(
        ns.name(),
        WatchOptions {
            prepare: Some(Box::new(vendor)),
            ..Default::default()
        },
    )?;
    // A cold build of all of vendor/ (minutes on a busy 2-core machine).
    w.wait_served("pong", Duration::from_secs(900)).await?;
    // The app answers a moment before its reload line is printed: the pod is deleted below
    // only once the first pod's reload is reported, so that the count of reload lines tells
    // the replaced pod's first build apart.
    w.wait_output(TREE_RELOAD, Duration::from_secs(60)).await?;
    let out = w.output();
    ensure!(
        out.contains("build cache: PersistentVolumeClaim kdev-cache-gin-hello-"),
        "kdev should say the cache is on a claim:\n{out}"
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns.name());
    let claim = claims
        .list(&ListParams::default().labels("kdev.dev/build-cache=go"))
        .await?
        .items
        .into_iter()
        .next()
        .context("no build cache claim in the namespace")?;
    let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
    ensure!(phase.as_deref() == Some("Bound"), "claim {phase:?}");

    let old = dev_pod(&pods).await?.name_any();
    let image_outputs = cache_outputs(&pods, &old, "/go/cache").await?;
    // Counted once the count holds still: the first pod's idle work after the build (a shadow
    // build recording packages) may still be writing to the cache. In one CI run the count
    // taken at the reload line was 90 short of what the cache held a moment later.
    let first_pod = settled_outputs(&pods, &old, "/kdev/cache/go-build").await?;
    // Seeded with the image's entries, plus vendor/ compiled by the first build: its ~107
    // packages added 92 to 154 outputs in runs here (fewer when the image's own pre-warming
    // already holds some of the same compile actions).
    ensure!(
        first_pod >= image_outputs + 50,
        "the claim's GOCACHE has {first_pod} compiled outputs, the image's {image_outputs}: the \
         first build should have added all of vendor/"
    );

    pods.delete(&old, &DeleteParams::default()).await?;
    poll_until(
        Duration::from_secs(600),
        "the first build in the new pod",
        || {
            let n = count_lines(&w.output(), TREE_RELOAD);
            async move { Ok(n >= 2) }
        },
    )
    .await
    .with_context(|| w.output())?;
    let new = dev_pod(&pods).await?.name_any();
    ensure!(new != old, "the pod was not replaced");
    let second_pod = cache_outputs(&pods, &new, "/kdev/cache/go-build").await?;
    let out = w.output();
    let builds: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(TREE_RELOAD))
        .map(|l| l.split("built ").nth(1).unwrap_or("?"))
        .collect();
    eprintln!(
        "compiled outputs: image {image_outputs}, after the first pod {first_pod}, after the \
         replaced pod's first build {second_pod}; builds: {builds:?}"
    );
    // Package main's compile is cached too (the same sources); the link is not cached by
    // `go build -o`. A cold build would add hundreds.
    if second_pod > first_pod + 3 {
        let script = "date +%T; find /kdev/cache/go-build -type f -name '*-d' -mmin -10 \
                      -printf '%TT %s\\n' | sort | awk '{print substr($1,1,8)}' | uniq -c";
        let newest = exec(&pods, &new, "kdev", &["sh", "-c", script], None)
            .await?
            .stdout_str();
        eprintln!("outputs written in the last 10 minutes, by second:\n{newest}");
    }
    ensure!(
        second_pod <= first_pod + 3,
        "the replaced pod's first build compiled {} packages again (cache outputs {first_pod} → \
         {second_pod}): it did not reuse the claim's cache",
        second_pod - first_pod
    );

    // `kdev down` removes the claim with the rest.
    let down = Command::new(kdev_bin())
        .arg("down")
        .current_dir(w.project())
        .output()?;
    let text = String::from_utf8_lossy(&down.stdout).into_owned();
    ensure!(down.status.success(), "kdev down: {text}");
    ensure!(
        text.contains("deleted PersistentVolumeClaim/kdev-cache-gin-hello-"),
        "{text}"
    );
    poll_until(Duration::from_secs(120), "the claim to go", || {
        let claims = claims.clone();
        let name = claim.name_any();
        async move { Ok(claims.get_opt(&name).await?.is_none()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_storage_class_the_images_cache_is_used_and_said() -> Result<()> {
    let _one_at_a_time = CLUSTER_STORAGE.lock().await;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-nocache").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let _no_default = NoDefaultClass::take(&client).await?;
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(300)).await?;
    let out = w.output();
    ensure!(
        out.contains(
            "build cache: the sidecar image's, which starts over in each new pod (the cluster \
             has no default StorageClass)"
        ),
        "kdev should say it builds with the image's cache, and why:\n{out}"
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns.name());
    poll_until(
        Duration::from_secs(30),
        "no claim left in the namespace",
        || {
            let claims = claims.clone();
            async move { Ok(claims.list(&ListParams::default()).await?.items.is_empty()) }
        },
    )
    .await?;
    let pod = dev_pod(&pods).await?;
    let spec = pod.spec.clone().unwrap_or_default();
    ensure!(
        !spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "kdev-cache"),
        "no cache volume without a claim"
    );
    // Builds went to the image's GOCACHE.
    let gocache = exec(
        &pods,
        &pod.name_any(),
        "kdev",
        &["sh", "-c", "ls /kdev/cache 2>&1; echo; go env GOCACHE"],
        None,
    )
    .await?
    .stdout_str();
    ensure!(gocache.contains("/go/cache"), "{gocache}");
    Ok(())
}

/// The cluster's default StorageClasses.
async fn default_classes(client: &Client) -> Result<Vec<String>> {
    Ok(Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| {
            c.annotations()
                .get(DEFAULT_CLASS)
                .is_some_and(|v| v == "true")
        })
        .map(|c| c.name_any())
        .collect())
}

/// While it lives, the cluster's default StorageClasses are not default; restored on drop.
struct NoDefaultClass {
    client: Client,
    classes: Vec<String>,
}

impl NoDefaultClass {
    async fn take(client: &Client) -> Result<NoDefaultClass> {
        let classes = default_classes(client).await?;
        let this = NoDefaultClass {
            client: client.clone(),
            classes,
        };
        for c in &this.classes {
            mark_default(client, c, "false").await?;
        }
        if !default_classes(client).await?.is_empty() {
            bail!("a default StorageClass remained");
        }
        Ok(this)
    }
}

async fn mark_default(client: &Client, class: &str, value: &str) -> Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {DEFAULT_CLASS: value}}});
    Api::<StorageClass>::all(client.clone())
        .patch(class, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

impl Drop for NoDefaultClass {
    fn drop(&mut self) {
        let (client, classes) = (self.client.clone(), std::mem::take(&mut self.classes));
        // Drop cannot be async: restore from a thread with its own runtime, and wait for it.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    for c in &classes {
                        if let Err(e) = mark_default(&client, c, "true").await {
                            eprintln!("could not make StorageClass {c} the default again: {e:#}");
                        }
                    }
                });
            }
        })
        .join();
    }
}

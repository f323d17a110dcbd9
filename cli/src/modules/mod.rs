//! The developer's side of the module proxy: Go modules reach the pod through kdev.
//!
//! The pod's go commands use a GOPROXY that `kdev-controller serve` runs in the pod; each of
//! their requests comes over the session as a `ModuleRequest` ([`kdev_protocol::module_proxy::ProxyPath`]
//! says which exist), and is answered here: from the developer's module cache
//! ([`cache`]), else through their own go ([`go_command`]: their GOPROXY, GOPRIVATE, netrc
//! and git credentials, which never enter the cluster), and checksum database requests the
//! way their go reaches the database ([`sumdb`]). The answers go back in parts ([`answer`]),
//! each fetch is reported ([`report`]). [`decide`] says which services use it.
//!
//! One [`ModuleSource`] serves every session of a run: it asks `go env` once, on first use,
//! and runs at most [`MAX_GO_COMMANDS`] go commands at once, one per module version.

mod answer;
mod cache;
mod decide;
mod go_command;
mod go_env;
mod report;
mod sumdb;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kdev_protocol::module_proxy::{FileKind, ProxyPath, escape, unescape};
use tokio::sync::{OnceCell, Semaphore};

pub use answer::Answer;
pub use decide::proxy_wanted;
pub use go_env::GoEnv;
pub use report::{Fetch, Source};

use go_command::{GoModule, NO_GO};
use go_env::GoSettings;
use sumdb::Sumdb;

/// The most go commands run at once for the pods: each downloads in parallel itself, and the
/// developer's machine stays usable.
const MAX_GO_COMMANDS: usize = 4;

/// Answers module requests from this machine's module cache and go.
pub struct ModuleSource {
    go: GoEnv,
    setup: OnceCell<Setup>,
    go_commands: Semaphore,
    /// One lock per module version being fetched through go (`module@version`, escaped): a
    /// second request for it waits, then finds it in the cache.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    sumdb: Sumdb,
}

/// What the first request decides, once per run.
struct Setup {
    settings: GoSettings,
    /// An empty directory to run go in, outside any module or workspace of the developer's.
    workdir: Result<tempfile::TempDir, String>,
}

impl ModuleSource {
    /// A source running `go` as `go` says; nothing runs before the first request.
    pub fn new(go: GoEnv) -> ModuleSource {
        ModuleSource {
            go,
            setup: OnceCell::new(),
            go_commands: Semaphore::new(MAX_GO_COMMANDS),
            fetching: Mutex::new(HashMap::new()),
            sumdb: Sumdb::default(),
        }
    }

    async fn setup(&self) -> &Setup {
        self.setup
            .get_or_init(|| async {
                let workdir = tempfile::Builder::new()
                    .prefix("kdev-go-")
                    .tempdir()
                    .map_err(|e| format!("cannot create a directory to run go in: {e}"));
                let dir = match &workdir {
                    Ok(d) => d.path().to_path_buf(),
                    Err(_) => std::env::temp_dir(),
                };
                let settings = go_env::settings(&self.go, &dir).await;
                // Not GOPROXY: it may hold a password.
                tracing::debug!(
                    target: "kdev::modules",
                    "module cache {}, go installed: {}",
                    settings.modcache.display(),
                    settings.go_installed
                );
                Setup { settings, workdir }
            })
            .await
    }

    /// GONOSUMDB for the pods' go commands: this machine's (its GOPRIVATE unless set), so the
    /// pods never ask a public checksum database about the developer's private modules.
    pub async fn nosumdb(&self) -> String {
        self.setup().await.settings.nosumdb.clone()
    }

    /// Whether there is a go on this machine to fetch what the module cache lacks.
    pub async fn go_installed(&self) -> bool {
        self.setup().await.settings.go_installed
    }

    /// Answer the request for `path` (below the proxy's root, as go sent it), and say how.
    pub async fn answer(&self, path: &str) -> (Answer, Fetch) {
        let started = Instant::now();
        let request = ProxyPath::parse(path);
        let (answer, source) = match &request {
            // Refused before anything is read or run.
            Err(e) => (Answer::failed(e.to_string()), Source::Nothing),
            Ok(r) => self.answer_request(r).await,
        };
        let fetch = Fetch {
            path: path.to_string(),
            request: request.ok(),
            status: answer.status,
            reason: answer.reason.clone(),
            bytes: answer.size(),
            elapsed: started.elapsed(),
            source,
        };
        (answer, fetch)
    }

    async fn answer_request(&self, request: &ProxyPath) -> (Answer, Source) {
        let setup = self.setup().await;
        match request {
            ProxyPath::File {
                module,
                version,
                kind,
            } => self.file(setup, module, version, *kind).await,
            ProxyPath::List { module } => {
                let Some(m) = unescape(module) else {
                    return (Answer::failed("bad module path escaping"), Source::Nothing);
                };
                let listed = self
                    .go(setup, &["list", "-m", "-versions", "-json", "-e", &m])
                    .await
                    .map(|found| {
                        let lines: String =
                            found.versions.iter().map(|v| format!("{v}\n")).collect();
                        Answer::bytes(lines.into_bytes())
                    });
                (listed.unwrap_or_else(|a| a), Source::Go("go list"))
            }
            ProxyPath::Latest { module } => {
                let Some(m) = unescape(module) else {
                    return (Answer::failed("bad module path escaping"), Source::Nothing);
                };
                let query = format!("{m}@latest");
                let latest = self
                    .go(setup, &["list", "-m", "-json", "-e", &query])
                    .await
                    .map(|found| Answer::bytes(info_json(&found)));
                (latest.unwrap_or_else(|a| a), Source::Go("go list"))
            }
            ProxyPath::SumdbSupported { name } => {
                (self.sumdb.supported(name, &setup.settings), Source::Nothing)
            }
            ProxyPath::Sumdb { name, rest } => {
                let (answer, via) = self.sumdb.get(name, rest, &setup.settings).await;
                let source = if via.is_empty() {
                    Source::Nothing
                } else {
                    Source::Checksum(via)
                };
                (answer, source)
            }
        }
    }

    /// A version's `.info`, `.mod` or `.zip`: from the cache, else through go.
    async fn file(
        &self,
        setup: &Setup,
        module: &str,
        version: &str,
        kind: FileKind,
    ) -> (Answer, Source) {
        let modcache = &setup.settings.modcache;
        if let Some(hit) = cached(modcache, module, version, kind).await {
            return (hit, Source::Cache);
        }
        if !setup.settings.go_installed {
            return (Answer::failed(NO_GO), Source::Nothing);
        }
        let key = format!("{module}@{version}");
        let gate = lock(&self.fetching).entry(key.clone()).or_default().clone();
        let held = gate.clone().lock_owned().await;
        // A fetch of the same version that finished while this one waited filled the cache.
        let fetched = match cached(modcache, module, version, kind).await {
            Some(hit) => (hit, Source::Cache),
            None => self.file_through_go(setup, module, version, kind).await,
        };
        drop(held);
        let mut fetching = lock(&self.fetching);
        // Only the map and `gate` hold it: nobody waits (others clone it under this lock).
        if Arc::strong_count(&gate) == 2 {
            fetching.remove(&key);
        }
        fetched
    }

    /// Have go put the file in the cache, and serve it from there: `go mod download` for a
    /// zip; `go list -m` for an `.info` or `.mod`, which fetches only those (go needs the
    /// go.mod files of many more versions than it builds).
    async fn file_through_go(
        &self,
        setup: &Setup,
        module: &str,
        version: &str,
        kind: FileKind,
    ) -> (Answer, Source) {
        let (Some(m), Some(v)) = (unescape(module), unescape(version)) else {
            return (Answer::failed("bad module path escaping"), Source::Nothing);
        };
        let query = format!("{m}@{v}");
        let (command, args) = match kind {
            FileKind::Zip => (
                "go mod download",
                ["mod", "download", "-json", &query].to_vec(),
            ),
            FileKind::Info | FileKind::Mod => {
                ("go list", ["list", "-m", "-json", "-e", &query].to_vec())
            }
        };
        let found = match self.go(setup, &args).await {
            Ok(found) => found,
            Err(answer) => return (answer, Source::Go(command)),
        };
        // The cache names the files by the canonical version (a query such as a branch name
        // or a commit resolves to one).
        let canonical = escape(&found.version);
        let answer = match cached(&setup.settings.modcache, module, &canonical, kind).await {
            Some(answer) => answer,
            None if kind == FileKind::Info && !found.version.is_empty() => {
                Answer::bytes(info_json(&found))
            }
            None => Answer::failed(format!(
                "go found {query} ({}), but its .{} is not in the module cache {}",
                found.version,
                kind.extension(),
                setup.settings.modcache.display()
            )),
        };
        (answer, Source::Go(command))
    }

    /// Run go in the work directory, at most [`MAX_GO_COMMANDS`] at once.
    async fn go(&self, setup: &Setup, args: &[&str]) -> Result<GoModule, Answer> {
        if !setup.settings.go_installed {
            return Err(Answer::failed(NO_GO));
        }
        let dir = setup
            .workdir
            .as_ref()
            .map_err(|e| Answer::failed(e.clone()))?;
        // Never closed, so acquiring only waits.
        let _permit = self
            .go_commands
            .acquire()
            .await
            .map_err(|_| Answer::failed("kdev is shutting down"))?;
        go_command::go_module(&self.go, &setup.settings, dir.path(), args).await
    }
}

/// The cache's file, if it is there (or the error reading it).
async fn cached(
    modcache: &std::path::Path,
    module: &str,
    version: &str,
    kind: FileKind,
) -> Option<Answer> {
    let path = cache::file(modcache, module, version, kind)?;
    match cache::open(&path).await {
        Ok(Some((file, size))) => Some(Answer::file(file, size)),
        Ok(None) => None,
        Err(e) => Some(Answer::failed(format!("reading {}: {e}", path.display()))),
    }
}

/// A version's `.info` as the proxy protocol has it: `{"Version": …, "Time": …}`.
fn info_json(found: &GoModule) -> Vec<u8> {
    let mut info = serde_json::json!({ "Version": found.version });
    if let Some(t) = &found.time {
        info["Time"] = t.clone().into();
    }
    info.to_string().into_bytes()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking holder cannot leave the map of locks half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The developer's side of one session's module proxy: the run's source, and the service's
/// output for what each request did.
#[derive(Clone)]
pub struct Proxy {
    source: Arc<ModuleSource>,
    ui: crate::ui::Ui,
    /// Warnings shown lately (shared by the sessions of one service).
    repeats: Arc<std::sync::Mutex<report::Repeats>>,
}

impl Proxy {
    pub fn new(source: Arc<ModuleSource>, ui: crate::ui::Ui) -> Proxy {
        Proxy {
            source,
            ui,
            repeats: Arc::default(),
        }
    }

    /// Answer `path` and report it (`-v`: every fetch; always: a failure).
    pub async fn answer(&self, path: &str) -> Answer {
        let (answer, fetch) = self.source.answer(path).await;
        report::show(&fetch, &self.ui, &self.repeats);
        answer
    }
}

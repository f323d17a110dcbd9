//! What each module request did, for the developer: one line per file fetched with `-v`
//! (`KDEV_LOG=kdev::modules=info` alone shows only those), and a warning for every failure
//! that breaks the pod's build, always.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kdev_protocol::ModuleStatus;
use kdev_protocol::module_proxy::{FileKind, ProxyPath, unescape};

use crate::ui::{Ui, fmt_bytes, fmt_duration};

/// Where an answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The developer's module cache, as it was.
    Cache,
    /// A go command run for it (`go mod download`, `go list`).
    Go(&'static str),
    /// The checksum database, at this URL (a proxy's `…/sumdb/<name>` or the database's own).
    Checksum(String),
    /// Nothing was asked: the request was refused, or answered from the settings alone.
    Nothing,
}

/// One module request and how it was answered.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The request as go sent it.
    pub path: String,
    /// The request, if it is one the proxy serves.
    pub request: Option<ProxyPath>,
    pub status: ModuleStatus,
    pub reason: String,
    pub bytes: u64,
    pub elapsed: Duration,
    pub source: Source,
}

impl Fetch {
    /// What was asked for, unescaped: `module github.com/Azure/x@v1.0.0 .zip`.
    fn what(&self) -> String {
        let name = |s: &str| unescape(s).unwrap_or_else(|| s.to_string());
        match &self.request {
            Some(ProxyPath::File {
                module,
                version,
                kind,
            }) => format!(
                "module {}@{} .{}",
                name(module),
                name(version),
                kind.extension()
            ),
            Some(ProxyPath::List { module }) => format!("module {} versions", name(module)),
            Some(ProxyPath::Latest { module }) => format!("module {}@latest", name(module)),
            Some(ProxyPath::SumdbSupported { name }) => format!("checksum database {name}"),
            Some(ProxyPath::Sumdb { name, rest }) => format!("checksum database {name} {rest}"),
            None => format!("module proxy request {:?}", self.path),
        }
    }

    /// The `-v` line: `module github.com/gin-gonic/gin@v1.10.0 .zip 1.2 MB in 85ms (from the
    /// module cache)`.
    pub fn line(&self) -> String {
        let from = match &self.source {
            Source::Cache => "from the module cache".to_string(),
            Source::Go(command) => format!("through {command}"),
            Source::Checksum(url) => format!("from {url}"),
            Source::Nothing => "from kdev's settings".to_string(),
        };
        let outcome = match self.status {
            ModuleStatus::Ok => size(self.bytes),
            ModuleStatus::NotFound => format!("not found: {}", one_line(&self.reason)),
            ModuleStatus::Failed => format!("failed: {}", one_line(&self.reason)),
        };
        format!(
            "{} {outcome} in {} ({from})",
            self.what(),
            fmt_duration(self.elapsed)
        )
    }

    /// The warning for a failure the pod's build will stumble on; `None` for successes and
    /// for the "not found"s go expects while it looks for a module (it asks every prefix of an
    /// import path for its versions) or checks whether the checksum database is proxied.
    pub fn warning(&self) -> Option<String> {
        // An `.info` is how go looks for which prefix of a package path is the module
        // (`go install example.com/m/cmd/x@v1` asks for `example.com@v1`, `example.com/m@v1`,
        // …): most fail, and go goes on. A module that is really missing fails its `.mod` or
        // `.zip` too, and is said then.
        let expected = matches!(
            self.request,
            Some(
                ProxyPath::List { .. }
                    | ProxyPath::Latest { .. }
                    | ProxyPath::SumdbSupported { .. }
                    | ProxyPath::File {
                        kind: FileKind::Info,
                        ..
                    }
            )
        );
        let what = match &self.request {
            Some(ProxyPath::File { .. }) => {
                // `module x@v1.0.0 .zip` → `module x@v1.0.0`: one line per version is enough.
                let w = self.what();
                w.rsplit_once(' ').map(|(m, _)| m.to_string()).unwrap_or(w)
            }
            _ => self.what(),
        };
        let reason = one_line(&self.reason);
        match self.status {
            ModuleStatus::Ok => None,
            ModuleStatus::NotFound if expected => None,
            ModuleStatus::NotFound => Some(format!("{what}: not found on this machine: {reason}")),
            ModuleStatus::Failed => {
                Some(format!("{what}: cannot get it on this machine: {reason}"))
            }
        }
    }
}

/// How long a warning is not repeated: go asks for a missing version's `.info`, `.mod` and
/// `.zip`, and every build of the session asks again; one line per failing module is enough.
const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// Warnings shown lately, so the same one is not repeated within [`REPEAT_WINDOW`].
#[derive(Debug, Default)]
pub struct Repeats {
    shown: HashMap<String, Instant>,
}

impl Repeats {
    /// Whether `line` is new (not shown within the window) at `now`; remembers it if so.
    pub fn first(&mut self, line: &str, now: Instant) -> bool {
        self.shown
            .retain(|_, at| now.saturating_duration_since(*at) < REPEAT_WINDOW);
        if self.shown.contains_key(line) {
            return false;
        }
        self.shown.insert(line.to_string(), now);
        true
    }
}

/// Say what `fetch` did: the `-v` line, and a warning when the pod's build will miss it
/// (once per window, see [`Repeats`]).
pub fn show(fetch: &Fetch, ui: &Ui, repeats: &Mutex<Repeats>) {
    tracing::info!(target: "kdev::modules", "{}", fetch.line());
    if let Some(w) = fetch.warning() {
        // A panicking holder cannot leave the map half-updated in a way that matters.
        let new = repeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first(&w, Instant::now());
        if new {
            ui.warn(&w);
        }
    }
}

/// `51 B`, `1.3 KB`, `1.2 MB` (an .info is a few dozen bytes).
fn size(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        fmt_bytes(bytes)
    }
}

/// A multi-line reason on one line.
fn one_line(reason: &str) -> String {
    reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(path: &str, status: ModuleStatus, reason: &str, source: Source) -> Fetch {
        Fetch {
            path: path.into(),
            request: ProxyPath::parse(path).ok(),
            status,
            reason: reason.into(),
            bytes: 1258291,
            elapsed: Duration::from_millis(85),
            source,
        }
    }

    #[test]
    fn a_warning_is_not_repeated_within_the_window() {
        let mut r = Repeats::default();
        let t0 = Instant::now();
        assert!(r.first("module x@v9: not found", t0));
        assert!(!r.first("module x@v9: not found", t0 + Duration::from_secs(1)));
        assert!(r.first("module y@v9: not found", t0 + Duration::from_secs(1)));
        assert!(r.first("module x@v9: not found", t0 + REPEAT_WINDOW));
    }

    #[test]
    fn a_fetched_file_is_one_line_naming_the_module_its_size_and_its_source() {
        let f = fetch(
            "github.com/gin-gonic/gin/@v/v1.10.0.zip",
            ModuleStatus::Ok,
            "",
            Source::Cache,
        );
        assert_eq!(
            f.line(),
            "module github.com/gin-gonic/gin@v1.10.0 .zip 1.2 MB in 85ms (from the module cache)"
        );
        assert_eq!(f.warning(), None);
        let f = fetch(
            "github.com/!azure/x/@v/v1.0.0.mod",
            ModuleStatus::Ok,
            "",
            Source::Go("go list"),
        );
        assert!(
            f.line()
                .starts_with("module github.com/Azure/x@v1.0.0 .mod "),
            "{}",
            f.line()
        );
        assert!(f.line().ends_with("(through go list)"), "{}", f.line());
        let f = Fetch { bytes: 51, ..f };
        assert!(f.line().contains(".mod 51 B in 85ms"), "{}", f.line());
    }

    #[test]
    fn failures_warn_with_the_module_and_the_reason_on_one_line() {
        let f = fetch(
            "example.com/x/@v/v9.9.9.mod",
            ModuleStatus::NotFound,
            "example.com/x@v9.9.9: reading …: 404 Not Found\n\tserver response: not found",
            Source::Go("go list"),
        );
        // go looks for the module of a package path by asking each prefix's .info: those
        // that are not found are expected.
        let probe = Fetch {
            path: "example.com/@v/v9.9.9.info".into(),
            request: ProxyPath::parse("example.com/@v/v9.9.9.info").ok(),
            ..f.clone()
        };
        assert_eq!(probe.warning(), None);
        assert_eq!(
            f.warning().unwrap(),
            "module example.com/x@v9.9.9: not found on this machine: example.com/x@v9.9.9: \
             reading …: 404 Not Found server response: not found"
        );
        let f = fetch(
            "git.corp/x/@v/v1.0.0.zip",
            ModuleStatus::Failed,
            "terminal prompts disabled",
            Source::Go("go mod download"),
        );
        assert_eq!(
            f.warning().unwrap(),
            "module git.corp/x@v1.0.0: cannot get it on this machine: terminal prompts disabled"
        );
        let refused = fetch(
            "../../.netrc",
            ModuleStatus::Failed,
            "not a module proxy request",
            Source::Nothing,
        );
        assert!(
            refused
                .warning()
                .unwrap()
                .starts_with("module proxy request \"../../.netrc\"")
        );
    }

    #[test]
    fn the_not_founds_of_go_s_own_searching_do_not_warn() {
        for path in [
            "example.com/a/b/@v/list",
            "example.com/a/b/@latest",
            "sumdb/sum.golang.org/supported",
        ] {
            let f = fetch(path, ModuleStatus::NotFound, "no", Source::Nothing);
            assert_eq!(f.warning(), None, "{path}");
            let f = fetch(path, ModuleStatus::Failed, "no", Source::Nothing);
            assert!(f.warning().is_some(), "{path}");
        }
    }
}

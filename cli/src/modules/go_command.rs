//! Asking the developer's go for what their module cache lacks, and reading its answer.
//!
//! go reaches modules with everything the developer set up (GOPROXY, GOPRIVATE, GONOSUMDB,
//! netrc, git credentials) and verifies them against go.sum's database as it always does; kdev
//! only reads what go put in the module cache. Its errors become the pod's: "not found" when go
//! says the module or version does not exist, "failed" otherwise, with go's own text (go
//! already redacts passwords in URLs).

use std::path::Path;
use std::time::Duration;

use kdev_protocol::ModuleStatus;
use serde::Deserialize;

use super::answer::Answer;
use super::go_env::{GoEnv, GoSettings};

/// How long one go command may take: a large module over a slow link takes minutes; a go that
/// hangs (a git prompt nobody sees) must not hold the pod's build forever.
const GO_TIMEOUT: Duration = Duration::from_secs(300);
/// The most lines of go's error text passed on.
const REASON_LINES: usize = 4;
/// The longest line of it passed on.
const REASON_LINE_CHARS: usize = 300;

/// What go prints about one module (`go mod download -json`, `go list -m -json -e`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct GoModule {
    /// The version, canonical (a query such as `master` or `latest` resolved).
    pub version: String,
    pub time: Option<String>,
    /// `go list -m -versions`: the known versions, oldest first.
    pub versions: Vec<String>,
    error: Option<GoError>,
}

/// `go mod download` reports an error as a string, `go list -e` as `{"Err": …}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum GoError {
    Text(String),
    Object {
        #[serde(rename = "Err")]
        err: String,
    },
}

impl GoError {
    fn text(&self) -> &str {
        match self {
            GoError::Text(t) | GoError::Object { err: t } => t,
        }
    }
}

/// Run `go args…` in `dir` and read the one module it reports on; a failure is the pod's
/// answer.
pub async fn go_module(
    env: &GoEnv,
    settings: &GoSettings,
    dir: &Path,
    args: &[&str],
) -> Result<GoModule, Answer> {
    let command = format!("go {}", args.join(" "));
    let run = env.command(settings, dir, args).output();
    let out = match tokio::time::timeout(GO_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Answer::failed(NO_GO));
        }
        Ok(Err(e)) => return Err(Answer::failed(format!("cannot run `{command}`: {e}"))),
        Err(_) => {
            return Err(Answer::failed(format!(
                "`{command}` did not finish within {} minutes",
                GO_TIMEOUT.as_secs() / 60
            )));
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    match serde_json::from_slice::<GoModule>(&out.stdout) {
        Ok(GoModule { error: Some(e), .. }) => Err(go_error(e.text())),
        Ok(m) if out.status.success() => Ok(m),
        _ if stderr.trim().is_empty() => Err(Answer::failed(format!(
            "`{command}` failed ({})",
            out.status
        ))),
        _ => Err(go_error(&stderr)),
    }
}

/// What the pod is told when there is no go to ask.
pub const NO_GO: &str = "go is not installed on this machine";

/// The pod's answer to go's error `text`.
pub fn go_error(text: &str) -> Answer {
    Answer::error(classify(text), brief(text))
}

/// Errors that mean go could not look, whatever else they say ("no such host" is not a
/// missing module).
const CANNOT_LOOK: &[&str] = &[
    "lookup disabled",
    "terminal prompts disabled",
    "dial tcp",
    "i/o timeout",
    "connection refused",
    "connection reset",
    "no such host",
    "tls:",
    "x509:",
    "deadline exceeded",
    "checksum mismatch",
    "verifying ",
    "401 unauthorized",
    "403 forbidden",
];

/// Errors that mean the module or version does not exist (a proxy's 404 or 410, a repository
/// without that revision, a `file://` proxy without that file).
const DOES_NOT_EXIST: &[&str] = &[
    "not found",
    "410 gone",
    "unknown revision",
    "no matching versions",
    "invalid version",
    "no such file or directory",
];

/// Whether go's error says the module or version does not exist (`NotFound`: the pod's go
/// tries its next proxy, or says so) or that it could not be had (`Failed`).
pub fn classify(text: &str) -> ModuleStatus {
    let t = text.to_lowercase();
    // proxy.golang.org's answer (403) for a path that is no module, e.g. `github.com` when go
    // looks for which prefix of a package path is the module: go must go on looking.
    if t.contains("this module version is not available") {
        ModuleStatus::NotFound
    } else if CANNOT_LOOK.iter().any(|s| t.contains(s)) {
        ModuleStatus::Failed
    } else if DOES_NOT_EXIST.iter().any(|s| t.contains(s)) {
        ModuleStatus::NotFound
    } else {
        ModuleStatus::Failed
    }
}

/// go's error text, shortened to its first lines.
pub fn brief(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .take(REASON_LINES)
        .map(|l| match l.char_indices().nth(REASON_LINE_CHARS) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_modules_and_versions_are_not_found_and_the_rest_failed() {
        let not_found = [
            "example.com/x@v9.9.9: reading https://proxy.golang.org/example.com/x/@v/v9.9.9.info: 404 Not Found\n\tserver response: not found",
            "github.com/a/b@v1.2.3: reading https://goproxy.corp/github.com/a/b/@v/v1.2.3.info: 410 Gone",
            "github.com@v1.27.2: reading https://proxy.golang.org/github.com/@v/v1.27.2.info: 403 Forbidden\n\tserver response: This module version is not available.",
            "github.com/a/b@v0.0.0-2020: invalid version: unknown revision 0123456789ab",
            "github.com/a/b@latest: no matching versions for query \"latest\"",
            "example.com/dep@v9.9.9: reading file:///tmp/p/example.com/dep/@v/v9.9.9.info: no such file or directory",
        ];
        for t in not_found {
            assert_eq!(classify(t), ModuleStatus::NotFound, "{t}");
        }
        let failed = [
            "example.com/x@v1.0.0: module lookup disabled by GOPROXY=off",
            "git.corp/x@v1.0.0: git ls-remote -q origin: exit status 128:\n\tfatal: could not read Username for 'https://git.corp': terminal prompts disabled",
            "example.com/x@v1.0.0: Get \"https://proxy.golang.org/example.com/x/@v/v1.0.0.info\": dial tcp: lookup proxy.golang.org: no such host",
            "example.com/x@v1.0.0: verifying module: checksum mismatch",
            "example.com/x@v1.0.0: reading https://goproxy.corp/example.com/x/@v/v1.0.0.zip: 403 Forbidden",
            "go: parsing $GOFLAGS: unknown flag -bogus",
            "",
        ];
        for t in failed {
            assert_eq!(classify(t), ModuleStatus::Failed, "{t}");
        }
    }

    #[test]
    fn the_reason_is_go_s_first_lines_kept_short() {
        assert_eq!(brief("\n  a\n\n\tb  \nc\nd\ne\n"), "  a\n\tb\nc\nd");
        let long = "x".repeat(REASON_LINE_CHARS + 10);
        let cut = brief(&long);
        assert_eq!(cut.chars().count(), REASON_LINE_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn go_s_json_is_read_with_either_form_of_error() {
        let download: GoModule = serde_json::from_str(
            r#"{"Path":"example.com/dep","Version":"v9.9.9","Error":"example.com/dep@v9.9.9: not found"}"#,
        )
        .unwrap();
        assert_eq!(
            download.error.unwrap().text(),
            "example.com/dep@v9.9.9: not found"
        );
        let list: GoModule = serde_json::from_str(
            r#"{"Path":"example.com/dep","Version":"v9.9.9","Error":{"Err":"no matching versions"}}"#,
        )
        .unwrap();
        assert_eq!(list.error.unwrap().text(), "no matching versions");
        let ok: GoModule = serde_json::from_str(
            r#"{"Path":"x","Versions":["v1.0.0","v1.1.0"],"Time":"2024-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(ok.versions, ["v1.0.0", "v1.1.0"]);
        assert!(ok.error.is_none());
    }
}

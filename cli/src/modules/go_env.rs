//! The developer's go: which program, with which environment, and the settings the module
//! proxy needs from it (`go env`), asked once per run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

/// How long `go env` may take (it reads a file or two).
const GO_ENV_TIMEOUT: Duration = Duration::from_secs(30);

/// The go commands kdev runs on this machine: the program and what is set for it.
#[derive(Debug, Clone)]
pub struct GoEnv {
    /// The go program (`go`, found on `PATH`).
    pub program: PathBuf,
    /// Set on every go command on top of kdev's own environment: nothing for kdev itself (the
    /// developer's environment is what reaches their modules); tests give a hermetic
    /// GOMODCACHE and GOPROXY without touching the process's environment.
    pub vars: BTreeMap<String, String>,
}

impl GoEnv {
    /// The developer's own go, as their shell would run it.
    pub fn developer() -> GoEnv {
        GoEnv {
            program: PathBuf::from("go"),
            vars: BTreeMap::new(),
        }
    }

    /// A variable as go commands see it in the environment (ours over the process's); empty
    /// counts as unset, as for go.
    fn var(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    }

    /// A go command in `dir` with this environment, GOFLAGS as `settings` made them safe.
    pub fn command(
        &self,
        settings: &GoSettings,
        dir: &Path,
        args: &[&str],
    ) -> tokio::process::Command {
        let mut cmd = self.go(dir, args);
        cmd.env("GOFLAGS", &settings.flags);
        cmd
    }

    /// A go command in `dir` with this environment. GOWORK=off and GO111MODULE=on: the
    /// commands are about one module version, outside any workspace or module of the
    /// developer's.
    fn go(&self, dir: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args)
            .current_dir(dir)
            .envs(&self.vars)
            .env("GOWORK", "off")
            .env("GO111MODULE", "on")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A session that ends drops its answers: their go commands stop with them.
            .kill_on_drop(true);
        cmd
    }
}

/// What the module proxy needs of the developer's go settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoSettings {
    /// GOMODCACHE: the files are in its `cache/download`.
    pub modcache: PathBuf,
    /// GOPROXY: where the checksum database is reached through.
    pub proxy: String,
    /// GOSUMDB: the checksum database, or `off`.
    pub sumdb: String,
    /// GONOSUMDB (GOPRIVATE unless set): the modules no checksum database is asked about.
    pub nosumdb: String,
    /// GOFLAGS without what breaks go commands run outside a module ([`safe_goflags`]).
    pub flags: String,
    /// Whether there is a go to run; without one only the module cache answers.
    pub go_installed: bool,
}

/// `go env -json`'s answer (every value a string).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct GoEnvJson {
    gomodcache: String,
    goproxy: String,
    gosumdb: String,
    gonosumdb: String,
    goflags: String,
}

/// The developer's settings: `go env` in `dir` (their env file included), else the
/// environment and go's defaults when go is not installed or does not answer.
pub async fn settings(env: &GoEnv, dir: &Path) -> GoSettings {
    let vars = ["GOMODCACHE", "GOPROXY", "GONOSUMDB", "GOFLAGS", "GOSUMDB"];
    // The developer's GOFLAGS as they are: `go env` does not mind what other commands refuse.
    let mut cmd = env.go(dir, &[&["env", "-json"][..], &vars].concat());
    let out = match tokio::time::timeout(GO_ENV_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(
                "{}: not found; modules come from the cache alone",
                env.program.display()
            );
            return fallback(env, false);
        }
        Ok(Err(e)) => {
            tracing::warn!("running `go env`: {e}");
            return fallback(env, true);
        }
        Err(_) => {
            tracing::warn!("`go env` did not answer within {GO_ENV_TIMEOUT:?}");
            return fallback(env, true);
        }
    };
    match serde_json::from_slice::<GoEnvJson>(&out.stdout) {
        Ok(j) if out.status.success() => GoSettings {
            modcache: PathBuf::from(j.gomodcache),
            proxy: j.goproxy,
            sumdb: j.gosumdb,
            nosumdb: j.gonosumdb,
            flags: safe_goflags(&j.goflags),
            go_installed: true,
        },
        _ => {
            tracing::warn!(
                "`go env` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            fallback(env, true)
        }
    }
}

/// The settings go would use by default, from the environment alone.
fn fallback(env: &GoEnv, go_installed: bool) -> GoSettings {
    let home = env.var("HOME").map(PathBuf::from).unwrap_or_default();
    let gopath = env
        .var("GOPATH")
        .and_then(|p| std::env::split_paths(&p).next())
        .unwrap_or_else(|| home.join("go"));
    let modcache = env
        .var("GOMODCACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| gopath.join("pkg/mod"));
    GoSettings {
        modcache,
        proxy: env
            .var("GOPROXY")
            .unwrap_or_else(|| "https://proxy.golang.org,direct".into()),
        sumdb: env
            .var("GOSUMDB")
            .unwrap_or_else(|| "sum.golang.org".into()),
        nosumdb: env
            .var("GONOSUMDB")
            .or_else(|| env.var("GOPRIVATE"))
            .unwrap_or_default(),
        flags: safe_goflags(&env.var("GOFLAGS").unwrap_or_default()),
        go_installed,
    }
}

/// GOFLAGS for go commands run outside a module: without `-modfile` (go refuses it with no
/// main module) and `-mod=vendor` (`go list -m` refuses to query with it). Everything else is
/// the developer's and stays (`-mod=mod` and `-mod=readonly` are harmless there).
pub fn safe_goflags(flags: &str) -> String {
    let breaks = |f: &&str| {
        let (name, value) = f.trim_start_matches('-').split_once('=').unwrap_or((f, ""));
        name == "modfile" || (name == "mod" && value == "vendor")
    };
    if !flags.split_whitespace().any(|f| breaks(&f)) {
        return flags.to_string();
    }
    flags
        .split_whitespace()
        .filter(|f| !breaks(f))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goflags_lose_only_what_breaks_outside_a_module() {
        assert_eq!(safe_goflags(""), "");
        assert_eq!(
            safe_goflags("-mod=mod -buildvcs=false"),
            "-mod=mod -buildvcs=false"
        );
        assert_eq!(safe_goflags("-mod=vendor -tags=dev"), "-tags=dev");
        assert_eq!(
            safe_goflags("--modfile=alt.mod  -mod=readonly"),
            "-mod=readonly"
        );
        // Left exactly as written when nothing is removed (go's own quoting stays intact).
        assert_eq!(safe_goflags("  -tags=a  "), "  -tags=a  ");
    }

    #[tokio::test]
    async fn without_go_the_environment_and_go_defaults_decide() {
        let dir = tempfile::tempdir().unwrap();
        let env = GoEnv {
            program: dir.path().join("no-go-here"),
            vars: BTreeMap::from([
                ("GOMODCACHE".into(), "/m".into()),
                ("GOPRIVATE".into(), "corp.example".into()),
                ("GOFLAGS".into(), "-mod=vendor".into()),
                ("GOPROXY".into(), "https://p.example".into()),
                ("GOSUMDB".into(), "off".into()),
            ]),
        };
        let s = settings(&env, dir.path()).await;
        assert_eq!(
            s,
            GoSettings {
                modcache: "/m".into(),
                proxy: "https://p.example".into(),
                sumdb: "off".into(),
                nosumdb: "corp.example".into(),
                flags: String::new(),
                go_installed: false,
            }
        );
        let env = GoEnv {
            vars: BTreeMap::from([
                ("GOMODCACHE".into(), String::new()),
                ("GOPATH".into(), "/gp:/other".into()),
            ]),
            ..env
        };
        assert_eq!(
            settings(&env, dir.path()).await.modcache,
            Path::new("/gp/pkg/mod")
        );
    }
}

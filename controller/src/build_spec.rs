//! A build command fully resolved: its argument vector, directory, environment and output.
//! `serve`'s builds resolve the session's `build` settings into one ([`BuildSpec::resolve`]);
//! quick rebuilds ([`crate::quick_build`]) make their compile and link steps as such; and
//! `serve::build::command` runs any of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kdev_protocol::BuildConfig;

/// A fully resolved build.
#[derive(Debug, Clone)]
pub(crate) struct BuildSpec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Run with `env` alone, not on top of the controller's environment (a recorded run's
    /// environment is complete).
    pub env_clear: bool,
    pub output: PathBuf,
    /// Where the running build's process group is recorded (see `serve::leftovers`).
    pub group_file: Option<PathBuf>,
    /// At the lowest CPU priority (the shadow build must not slow what the user waits for).
    pub nice: bool,
}

/// Build-related settings that come from the controller's flags.
#[derive(Debug, Clone)]
pub struct BuildDefaults {
    pub go: String,
    pub gocache: PathBuf,
    pub gomodcache: PathBuf,
}

impl BuildSpec {
    pub(crate) fn resolve(
        cfg: &BuildConfig,
        defaults: &BuildDefaults,
        root: &Path,
        output: &Path,
    ) -> BuildSpec {
        let out = output.to_string_lossy().into_owned();
        let package = cfg.package.clone().unwrap_or_else(|| ".".into());
        let argv = match &cfg.command {
            Some(cmd) if !cmd.is_empty() => cmd
                .iter()
                .map(|a| a.replace("{output}", &out).replace("{package}", &package))
                .collect(),
            _ => {
                let mut v = vec![defaults.go.clone(), "build".into(), "-o".into(), out];
                v.extend(cfg.flags.iter().cloned());
                v.push(package);
                v
            }
        };
        let argv = with_hooks(&cfg.before, argv);
        let mut env = BTreeMap::new();
        env.insert("CGO_ENABLED".to_string(), "0".to_string());
        env.insert(
            "GOCACHE".to_string(),
            defaults.gocache.to_string_lossy().into_owned(),
        );
        env.insert(
            "GOMODCACHE".to_string(),
            defaults.gomodcache.to_string_lossy().into_owned(),
        );
        env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(hook_env(&cfg.before));
        BuildSpec {
            argv,
            cwd: root.to_path_buf(),
            env,
            env_clear: false,
            output: output.to_path_buf(),
            group_file: None,
            nice: false,
        }
    }
}

/// The build command preceded by the `before` hooks: `sh -c` runs each (echoing it, so the
/// output shows which one failed) and then `exec`s the build; the first hook that fails ends it
/// with its exit code.
fn with_hooks(before: &[String], argv: Vec<String>) -> Vec<String> {
    if before.is_empty() {
        return argv;
    }
    let mut script = String::from("set -e\n");
    for i in 0..before.len() {
        script.push_str(&format!(
            "printf '%s\\n' \"$ $KDEV_HOOK_{i}\"\neval \"$KDEV_HOOK_{i}\"\n"
        ));
    }
    script.push_str("exec \"$@\"\n");
    let mut wrapped = vec!["sh".to_string(), "-c".into(), script, "kdev-build".into()];
    wrapped.extend(argv);
    wrapped
}

/// The environment the hooks' script reads them from (no quoting of commands into the script).
fn hook_env(before: &[String]) -> impl Iterator<Item = (String, String)> + '_ {
    before
        .iter()
        .enumerate()
        .map(|(i, h)| (format!("KDEV_HOOK_{i}"), h.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_custom_commands() {
        let d = BuildDefaults {
            go: "go".into(),
            gocache: "/c/b".into(),
            gomodcache: "/c/m".into(),
        };
        let cfg = BuildConfig {
            flags: vec!["-tags=dev".into()],
            package: Some("./cmd/app".into()),
            ..Default::default()
        };
        let s = BuildSpec::resolve(&cfg, &d, Path::new("/src"), Path::new("/bin/app.next"));
        assert_eq!(
            s.argv,
            [
                "go",
                "build",
                "-o",
                "/bin/app.next",
                "-tags=dev",
                "./cmd/app"
            ]
        );
        assert_eq!(s.env["CGO_ENABLED"], "0");
        let cfg = BuildConfig {
            command: Some(vec!["sh".into(), "-c".into(), "cp x {output}".into()]),
            env: [("CGO_ENABLED".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let s = BuildSpec::resolve(&cfg, &d, Path::new("/src"), Path::new("/o"));
        assert_eq!(s.argv, ["sh", "-c", "cp x /o"]);
        assert_eq!(s.env["CGO_ENABLED"], "1");
    }
}

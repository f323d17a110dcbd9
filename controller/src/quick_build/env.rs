//! A recorded tool run's environment, kept without its values. The go command runs its tools
//! with its own environment plus everything `go env` says (a `GOPROXY` with a token in it, a
//! `GOAUTH`, whatever `build.env` holds): a record keeps, per variable, its value only where go
//! sets it to something that is no secret ([`CLEAR`]: the target, the toolchain's paths, the
//! package's import path) and a BLAKE3 digest otherwise. A quick rebuild gives each tool the
//! very environment of the recorded run: values in clear as they are, every other value taken
//! from what the controller knows (the build's own environment, `go env`) when its digest
//! matches; a variable none matches means the run cannot be repeated, and go build runs.
//!
//! Variables that only say where modules are downloaded from ([`DOWNLOAD_ONLY`]) are not
//! recorded at all: no compile or link reads them, and with kdev's module proxy `GOPROXY`
//! names another port and token every session, which must never make a run look
//! unrepeatable. A repeated run gets their values of now.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Variables kept in clear: set by the go command for its tools, never a credential.
const CLEAR: [&str; 25] = [
    "TOOLEXEC_IMPORTPATH",
    "GOOS",
    "GOARCH",
    "GOAMD64",
    "GO386",
    "GOARM",
    "GOARM64",
    "GOMIPS",
    "GOMIPS64",
    "GOPPC64",
    "GORISCV64",
    "GOWASM",
    "GOROOT",
    "GOTOOLDIR",
    "GOVERSION",
    "GOHOSTOS",
    "GOHOSTARCH",
    "GOEXPERIMENT",
    "GOFIPS140",
    "CGO_ENABLED",
    "GCM_INTERACTIVE",
    "GIT_TERMINAL_PROMPT",
    "GOTOOLCHAIN",
    "GODEBUG",
    "PWD",
];

/// Where go fetches modules from and how it checks them: never an input of a compile or a
/// link.
pub const DOWNLOAD_ONLY: [&str; 7] = [
    "GOPROXY",
    "GONOPROXY",
    "GOPRIVATE",
    "GONOSUMDB",
    "GOSUMDB",
    "GOINSECURE",
    "GOVCS",
];

/// One variable of a recorded environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    Clear(String),
    Blake3(String),
}

/// A recorded environment: every variable, by name.
pub type RecordedEnv = BTreeMap<String, EnvValue>;

fn digest(key: &str, value: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(key.as_bytes());
    h.update(b"\0");
    h.update(value.as_bytes());
    h.finalize().to_hex().to_string()
}

/// What a record keeps of `env`.
pub(crate) fn record(env: impl IntoIterator<Item = (String, String)>) -> RecordedEnv {
    env.into_iter()
        .filter(|(k, _)| !DOWNLOAD_ONLY.contains(&k.as_str()))
        .map(|(k, v)| {
            let kept = if CLEAR.contains(&k.as_str()) {
                EnvValue::Clear(v)
            } else {
                EnvValue::Blake3(digest(&k, &v))
            };
            (k, kept)
        })
        .collect()
}

/// The environment of a recorded run, rebuilt from `candidates` (each a source of values, in
/// order of preference); `Err(names)` of the variables none of them gives. The
/// [`DOWNLOAD_ONLY`] variables come from the first candidate that has them.
pub fn rebuild(
    recorded: &RecordedEnv,
    candidates: &[&BTreeMap<String, String>],
) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut env = BTreeMap::new();
    let mut missing = Vec::new();
    for (k, kept) in recorded {
        let value = match kept {
            EnvValue::Clear(v) => Some(v.clone()),
            EnvValue::Blake3(d) => candidates
                .iter()
                .filter_map(|c| c.get(k))
                .find(|v| digest(k, v) == *d)
                .cloned(),
        };
        match value {
            Some(v) => {
                env.insert(k.clone(), v);
            }
            None => missing.push(k.clone()),
        }
    }
    for k in DOWNLOAD_ONLY {
        if let Some(v) = candidates.iter().find_map(|c| c.get(k)) {
            env.insert(k.to_string(), v.clone());
        }
    }
    if missing.is_empty() {
        Ok(env)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secrets_are_kept_as_digests_and_rebuilt_from_what_the_controller_knows() {
        let secret = "s3cret-token";
        let env = map(&[
            ("GOAUTH", secret),
            ("GOOS", "linux"),
            ("TOOLEXEC_IMPORTPATH", "example.com/m/api"),
            ("HOME", "/root"),
        ]);
        let rec = record(env.clone());
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains("/root"), "{text}");
        assert!(text.contains("example.com/m/api"), "{text}");

        let build_env = map(&[("HOME", "/root"), ("GOAUTH", "off")]);
        let go_env = map(&[("GOAUTH", secret)]);
        assert_eq!(rebuild(&rec, &[&build_env, &go_env]), Ok(env));
        // A value that changed since (another token) cannot be had: the run is not repeated.
        let other = map(&[("GOAUTH", "other")]);
        assert_eq!(
            rebuild(&rec, &[&build_env, &other]),
            Err(vec!["GOAUTH".to_string()])
        );
    }

    #[test]
    fn download_only_variables_are_not_recorded_and_come_from_now() {
        let proxy = |port: u16, token: &str| format!("http://127.0.0.1:{port}/{token}/");
        let recorded_with = map(&[
            ("GOPROXY", &proxy(40001, "a1b2c3")),
            ("GONOSUMDB", "corp.example"),
            ("GOSUMDB", "sum.golang.org"),
            ("GOOS", "linux"),
        ]);
        let rec = record(recorded_with);
        let text = serde_json::to_string(&rec).unwrap();
        assert!(
            !text.contains("a1b2c3") && !text.contains("GOPROXY"),
            "{text}"
        );
        // Another session: another port and token, and the run is still repeatable, with
        // today's values.
        let now = map(&[
            ("GOPROXY", &proxy(40002, "d4e5f6")),
            ("GONOSUMDB", "corp.example"),
        ]);
        let go_env = map(&[
            ("GOPROXY", "https://proxy.golang.org,direct"),
            ("GOSUMDB", "off"),
        ]);
        let env = rebuild(&rec, &[&now, &go_env]).unwrap();
        assert_eq!(env["GOPROXY"], proxy(40002, "d4e5f6"));
        assert_eq!(env["GONOSUMDB"], "corp.example");
        assert_eq!(env["GOSUMDB"], "off");
        assert_eq!(env["GOOS"], "linux");
        assert!(!env.contains_key("GOVCS"));
    }
}

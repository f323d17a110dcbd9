//! The environment that sends the pod's go commands to the proxy, and how it meets the
//! session's `build.env`.

use std::collections::BTreeMap;

/// `GOPROXY`, and the variables that would route modules around it.
///
/// * `GONOPROXY` and `GOPRIVATE` empty: every module goes through kdev's proxy, also what the
///   image marks private (the developer's machine holds the credentials, the pod none).
/// * `GONOSUMDB` is the developer's: go never asks a public checksum database about their
///   private modules.
/// * `GOSUMDB` and `GOFLAGS` stay the image's: go asks `<proxy>/sumdb/<name>/supported` and
///   reaches the checksum database through the proxy by itself.
pub(crate) fn module_env(proxy_url: &str, nosumdb: &str) -> BTreeMap<String, String> {
    [
        ("GOPROXY", proxy_url),
        ("GONOPROXY", ""),
        ("GOPRIVATE", ""),
        ("GONOSUMDB", nosumdb),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Whether the session's `build.env` leaves module fetching to kdev: one that sets `GOPROXY`
/// itself keeps what it had before the proxy existed (the CLI does not ask for the proxy
/// then; this is for a client that does anyway).
pub(crate) fn wanted(build_env: &BTreeMap<String, String>) -> bool {
    !build_env.contains_key("GOPROXY")
}

/// The build's environment: `module_env`, then `build_env` on top (the session's own
/// settings win).
pub(crate) fn merge(
    module_env: &BTreeMap<String, String>,
    build_env: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = module_env.clone();
    env.extend(build_env);
    env
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
    fn everything_goes_through_the_proxy_and_build_env_wins() {
        let m = module_env("http://127.0.0.1:4000/t0k/", "corp.example");
        assert_eq!(
            m,
            map(&[
                ("GOPROXY", "http://127.0.0.1:4000/t0k/"),
                ("GONOPROXY", ""),
                ("GOPRIVATE", ""),
                ("GONOSUMDB", "corp.example"),
            ])
        );
        let build = map(&[("GONOSUMDB", "*"), ("CGO_ENABLED", "1")]);
        assert!(wanted(&build));
        let merged = merge(&m, build);
        assert_eq!(merged["GONOSUMDB"], "*");
        assert_eq!(merged["GOPROXY"], "http://127.0.0.1:4000/t0k/");
        assert_eq!(merged["CGO_ENABLED"], "1");
        assert!(!merged.contains_key("GOSUMDB") && !merged.contains_key("GOFLAGS"));
        assert!(!wanted(&map(&[("GOPROXY", "https://corp.example/")])));
    }
}

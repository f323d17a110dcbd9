//! Whether a service's pod gets its Go modules through kdev.

use crate::config::{BuildConfig, ModulesConfig};

/// On unless kdev.yaml turns it off (`modules: {proxy: false}`), `build.env` sets GOPROXY (the
/// build then downloads as it did before kdev had a proxy), or the module is `vendored` (its
/// `vendor/modules.txt` reaches the pod) and the build does not tell go to look past it.
pub fn proxy_wanted(config: &ModulesConfig, build: &BuildConfig, vendored: bool) -> bool {
    if !config.proxy || build.env.contains_key("GOPROXY") {
        return false;
    }
    !vendored || ignores_vendor(build)
}

/// `-mod=mod` or `-mod=readonly` in the build's flags or GOFLAGS: go then downloads modules
/// even though a vendor directory is there.
fn ignores_vendor(build: &BuildConfig) -> bool {
    let downloads = |value: &str| value == "mod" || value == "readonly";
    let in_one = |f: &str| {
        f.trim_start_matches('-')
            .strip_prefix("mod=")
            .is_some_and(downloads)
    };
    let in_two = |w: &[String]| w[0].trim_start_matches('-') == "mod" && downloads(&w[1]);
    build.flags.iter().any(|f| in_one(f))
        || build.flags.windows(2).any(in_two)
        || build
            .env
            .get("GOFLAGS")
            .is_some_and(|g| g.split_whitespace().any(in_one))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(flags: &[&str], env: &[(&str, &str)]) -> BuildConfig {
        BuildConfig {
            flags: flags.iter().map(|f| f.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn on_by_default_off_when_asked_vendored_or_given_a_goproxy() {
        let on = ModulesConfig { proxy: true };
        let off = ModulesConfig { proxy: false };
        let plain = build(&[], &[]);
        assert!(proxy_wanted(&on, &plain, false));
        assert!(!proxy_wanted(&off, &plain, false));
        assert!(!proxy_wanted(&on, &plain, true));
        let own_proxy = build(&[], &[("GOPROXY", "https://goproxy.corp")]);
        assert!(!proxy_wanted(&on, &own_proxy, false));
        // Other settings do not matter.
        let other = build(
            &["-tags", "dev"],
            &[("GOFLAGS", "-mod=vendor"), ("GOPRIVATE", "x")],
        );
        assert!(proxy_wanted(&on, &other, false));
        assert!(!proxy_wanted(&on, &other, true));
    }

    #[test]
    fn a_vendored_module_built_with_mod_mod_still_downloads() {
        let on = ModulesConfig { proxy: true };
        for b in [
            build(&["-mod=mod"], &[]),
            build(&["--mod=readonly"], &[]),
            build(&["-mod", "mod"], &[]),
            build(&[], &[("GOFLAGS", "-tags=x -mod=mod")]),
        ] {
            assert!(proxy_wanted(&on, &b, true), "{b:?}");
        }
        assert!(!proxy_wanted(&on, &build(&["-mod=vendor"], &[]), true));
        assert!(!proxy_wanted(&on, &build(&["-modfile=x.mod"], &[]), true));
    }
}

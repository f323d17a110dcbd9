//! What carries over from an `.air.toml` (Air's config, the local hot-reload tool many Go
//! developers come from): the build package and flags, excluded directories, the app's
//! arguments and environment, and `pre_cmd` hooks.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The parts of `.air.toml` kdev understands (everything else is ignored).
#[derive(Debug, Default, Deserialize)]
struct AirFile {
    #[serde(default)]
    build: AirBuild,
}

#[derive(Debug, Default, Deserialize)]
struct AirBuild {
    cmd: Option<String>,
    full_bin: Option<String>,
    #[serde(default)]
    args_bin: Vec<String>,
    #[serde(default)]
    exclude_dir: Vec<String>,
    #[serde(default)]
    pre_cmd: Vec<String>,
}

/// `.air.toml` in kdev's terms.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FromAir {
    /// The package `go build` builds (`./cmd/server`).
    pub package: Option<String>,
    /// Other `go build` flags (`-tags dev`), without `-o`.
    pub flags: Vec<String>,
    /// `exclude_dir`, as `sync.exclude` patterns (`vendor` is kept: the pod builds from it).
    pub exclude: Vec<String>,
    pub args: Vec<String>,
    /// `VAR=value` prefixes of `full_bin`.
    pub env: BTreeMap<String, String>,
    pub before: Vec<String>,
    /// What could not be carried over, for a comment.
    pub notes: Vec<String>,
}

/// Parse `.air.toml` text.
pub fn parse(text: &str) -> Result<FromAir, String> {
    let air: AirFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let b = air.build;
    let mut out = FromAir {
        args: b.args_bin,
        before: b.pre_cmd,
        ..Default::default()
    };
    for dir in b.exclude_dir {
        let dir = dir.trim_matches('/').to_string();
        match dir.as_str() {
            // The pod builds from vendor/; Air only skips it for watching.
            "vendor" => out
                .notes
                .push("`exclude_dir` has vendor: kdev syncs it, the pod builds from it".into()),
            "" => {}
            _ => out.exclude.push(format!("/{dir}/")),
        }
    }
    if let Some(cmd) = b.cmd {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["go", "build", rest @ ..] => {
                let mut i = 0;
                while i < rest.len() {
                    match rest[i] {
                        "-o" => i += 1, // the output is kdev's
                        w if w.starts_with("-o=") => {}
                        w if w.starts_with('-') => {
                            out.flags.push(w.to_string());
                            // A flag's separate value (`-tags dev`).
                            if !w.contains('=')
                                && matches!(w, "-tags" | "-ldflags" | "-gcflags" | "-mod")
                                && let Some(v) = rest.get(i + 1)
                            {
                                out.flags.push(v.to_string());
                                i += 1;
                            }
                        }
                        pkg => out.package = Some(pkg.to_string()),
                    }
                    i += 1;
                }
            }
            _ => out.notes.push(format!(
                "`cmd` is not a `go build` (`{cmd}`): put it in build.before if it prepares the build"
            )),
        }
    }
    if let Some(full) = b.full_bin {
        for word in full.split_whitespace() {
            match word.split_once('=') {
                Some((k, v))
                    if !k.is_empty()
                        && k.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) =>
                {
                    out.env.insert(k.to_string(), v.to_string());
                }
                _ => break,
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn air_settings_carry_over() {
        let air = parse(
            r#"
root = "."
tmp_dir = "tmp"

[build]
cmd = "go build -tags dev -o ./tmp/main ./cmd/server"
full_bin = "APP_ENV=dev PORT=8080 ./tmp/main"
args_bin = ["--verbose"]
exclude_dir = ["assets", "tmp", "vendor", "testdata/"]
pre_cmd = ["go generate ./..."]
delay = 1000

[color]
main = "magenta"
"#,
        )
        .unwrap();
        assert_eq!(air.package.as_deref(), Some("./cmd/server"));
        assert_eq!(air.flags, ["-tags", "dev"]);
        assert_eq!(air.exclude, ["/assets/", "/tmp/", "/testdata/"]);
        assert_eq!(air.args, ["--verbose"]);
        assert_eq!(air.env["APP_ENV"], "dev");
        assert_eq!(air.env["PORT"], "8080");
        assert_eq!(air.before, ["go generate ./..."]);
        assert_eq!(air.notes.len(), 1, "vendor stays synced: {:?}", air.notes);
        assert!(parse("[build\n").is_err());
    }
}

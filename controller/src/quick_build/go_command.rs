//! Everything quick rebuilds assume about the go command, in one place. None of it is a
//! documented interface; each item names the test that fails if a new Go release changes it
//! (`controller/tests/go_rules.rs`, `the_go_command_works_as_quick_rebuilds_assume`, checks
//! them all against the machine's go; the others fail through a wrong binary or a lost quick
//! path). Where one does not hold for a build, that build takes `go build`.
//!
//! 1. **`-toolexec`**: every tool runs as `WRAPPER TOOL ARGS…`; the tool's `-V=full` answer,
//!    passed through unchanged, is all the go command adds to its cache keys, so a recorded
//!    build hits the same cache entries as a plain one (golang/go#27628).
//! 2. **A compile**: `-p` names the package (`main` for the main package), `-o` the archive it
//!    writes in `$WORK/bNNN/`, `-importcfg`/`-embedcfg` files in that directory, and the Go
//!    files come last, relative to the working directory (the module's root) or absolute.
//!    `-complete` is left out when the package has files that are not Go (assembly, `.syso`,
//!    cgo), which the go command handles itself.
//! 3. **The link**: `-o $WORK/b001/exe/a.out` (so `$WORK` is its third ancestor),
//!    `-importcfg` naming every archive as `packagefile PATH=FILE`, the main package's archive
//!    last. Everything in `$WORK` is deleted when the go command exits.
//! 4. **The action graph** (`-debug-actiongraph FILE`): JSON actions with `Mode` (`build` is a
//!    package's compile, `link` the link), `Package`, `Deps` (indices; a compile's `build`
//!    dependencies are its imports), `ActionID` (base64url of the first 15 bytes of the
//!    compile's action ID) and `Cmd` (empty when the archive came from the cache).
//! 5. **The cache**: a compile's entry is `GOCACHE/XX/<64 hex digits of the action ID>-a`
//!    (`XX` its first byte); removing it makes the next build compile the package again.
//! 6. **The tools' environment**: the go command's own, plus what `go env` says.
//! 7. **Determinism**: the same compile of the same inputs writes the same bytes, and a binary
//!    linked from them differs from `go build`'s only in the build IDs (the shadow build checks
//!    this for every quick binary: `serve::build`).

use std::path::Path;

/// The value of `-name V` or `-name=V` in `argv`, and the index holding it.
pub fn flag_value<'a>(argv: &'a [String], name: &str) -> Option<(usize, &'a str)> {
    let dash = format!("-{name}");
    let eq = format!("-{name}=");
    argv.iter().enumerate().find_map(|(i, a)| {
        if *a == dash {
            argv.get(i + 1).map(|v| (i + 1, v.as_str()))
        } else {
            a.strip_prefix(&eq).map(|v| (i, v))
        }
    })
}

/// Set the value of a flag found by [`flag_value`] at `index`.
pub fn set_flag_value(argv: &mut [String], index: usize, name: &str, value: &str) {
    let eq = format!("-{name}=");
    if argv[index].starts_with(&eq) {
        argv[index] = format!("{eq}{value}");
    } else {
        argv[index] = value.to_string();
    }
}

/// `(import path, archive)` of an import configuration's `packagefile` line.
pub fn packagefile(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix("packagefile ")?
        .trim_end()
        .split_once('=')
}

/// `importcfg` with the `packagefile` line of every package `archive_of` names an archive for
/// naming that archive instead; other lines as they are.
pub fn repoint(importcfg: &str, archive_of: impl Fn(&str) -> Option<String>) -> String {
    importcfg
        .lines()
        .map(
            |line| match packagefile(line).and_then(|(p, _)| Some((p, archive_of(p)?))) {
                Some((p, archive)) => format!("packagefile {p}={archive}\n"),
                None => format!("{line}\n"),
            },
        )
        .collect()
}

/// `$WORK` of a link whose output is `out` (`$WORK/b001/exe/a.out`).
pub fn work_of_link_output(out: &str) -> Option<&Path> {
    Path::new(out).ancestors().nth(3)
}

/// `$WORK` of a compile whose archive is `out` (`$WORK/bNNN/_pkg_.a`).
pub fn work_of_compile_output(out: &str) -> Option<&Path> {
    Path::new(out).ancestors().nth(2)
}

/// Remove the cache entry of the compile whose action ID go printed as `id`; true if one was
/// removed.
pub fn evict_action(gocache: &Path, id: &str) -> bool {
    let Some(prefix) = base64url_to_hex(id) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(gocache.join(&prefix[..2])) else {
        return false;
    };
    let mut removed = false;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.len() == 64 + 2 && name.starts_with(&prefix) && name.ends_with("-a") {
            removed |= std::fs::remove_file(e.path()).is_ok();
        }
    }
    removed
}

/// Lower-case hex of unpadded base64url text (go's `hashToString`).
pub fn base64url_to_hex(text: &str) -> Option<String> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut bytes = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bytes.len() >= 2).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn import_configurations_name_the_rebuilt_archives() {
        let cfg = "# import config\npackagefile fmt=/c/fmt-d\npackagefile m/pkg=/r/archives/b002\n\
                   importmap x=vendor/x\nmodinfo \"z\"\n";
        let rebuilt = BTreeMap::from([("m/pkg", "/r/compile@m%2Fpkg.a".to_string())]);
        assert_eq!(
            repoint(cfg, |p| rebuilt.get(p).cloned()),
            "# import config\npackagefile fmt=/c/fmt-d\npackagefile m/pkg=/r/compile@m%2Fpkg.a\n\
             importmap x=vendor/x\nmodinfo \"z\"\n"
        );
        assert_eq!(
            cfg.lines().filter_map(packagefile).collect::<Vec<_>>(),
            [("fmt", "/c/fmt-d"), ("m/pkg", "/r/archives/b002")]
        );
    }

    #[test]
    fn flags_are_found_and_set_in_both_spellings() {
        let mut argv: Vec<String> = ["compile", "-o", "a.o", "-importcfg=cfg", "x.go"]
            .map(String::from)
            .into();
        assert_eq!(flag_value(&argv, "o"), Some((2, "a.o")));
        assert_eq!(flag_value(&argv, "importcfg"), Some((3, "cfg")));
        assert_eq!(flag_value(&argv, "embedcfg"), None);
        set_flag_value(&mut argv, 2, "o", "b.o");
        set_flag_value(&mut argv, 3, "importcfg", "other");
        assert_eq!(argv, ["compile", "-o", "b.o", "-importcfg=other", "x.go"]);
        // A flag at the end with no value is not found.
        assert_eq!(flag_value(&["link".into(), "-o".into()], "o"), None);
    }

    #[test]
    fn an_action_id_names_its_cache_entry() {
        // From a real build: "p8NmtXk3WGiXIXeUI4a7" is the entry a7c366b5…-a.
        assert_eq!(
            base64url_to_hex("p8NmtXk3WGiXIXeUI4a7").as_deref(),
            Some("a7c366b579375868972177942386bb")
        );
        let cache = tempfile::tempdir().unwrap();
        std::fs::create_dir(cache.path().join("a7")).unwrap();
        let full = "a7c366b579375868972177942386bb3f935f3bec8608d311d3e06572177b6dbf";
        for suffix in ["-a", "-d"] {
            std::fs::write(cache.path().join(format!("a7/{full}{suffix}")), "x").unwrap();
        }
        assert!(evict_action(cache.path(), "p8NmtXk3WGiXIXeUI4a7"));
        assert!(!cache.path().join(format!("a7/{full}-a")).exists());
        // The output stays: other entries may name it.
        assert!(cache.path().join(format!("a7/{full}-d")).exists());
        assert!(!evict_action(cache.path(), "p8NmtXk3WGiXIXeUI4a7"));
        assert!(!evict_action(cache.path(), "not base64!"));
    }

    #[test]
    fn work_directories_are_found_from_outputs() {
        assert_eq!(
            work_of_link_output("/tmp/go-build1/b001/exe/a.out"),
            Some(Path::new("/tmp/go-build1"))
        );
        assert_eq!(
            work_of_compile_output("/tmp/go-build1/b002/_pkg_.a"),
            Some(Path::new("/tmp/go-build1"))
        );
    }
}

//! Module files kept on the build-cache volume, so a new session (or a replaced pod's) has
//! them without asking the developer's machine again. Only used when Go's own module cache
//! is not on the volume ([`super::super::build::cache`] decides): then it is the image's, and
//! whatever a build downloads into it is gone with the pod.
//!
//! `<volume>/module-proxy/<escaped module>/@v/<escaped version>.<info|mod|zip>`, the layout of
//! Go's own `cache/download`. Only files of a canonical version are kept (their content never
//! changes); lists, `@latest`, queries such as a branch name, and the checksum database are
//! always asked for. A file is written to a temporary name in its directory (starting with
//! `.`, which no stored name does) and renamed into place once complete and synced, so a
//! reader never sees part of one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kdev_protocol::module_proxy::ProxyPath;

use super::pending::MAX_RESPONSE;

/// The store's directory below the volume.
const STORE_DIR: &str = "module-proxy";

/// The module files on the volume.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of the volume mounted at `volume`.
    pub(crate) fn on_volume(volume: &Path) -> Store {
        Store {
            dir: volume.join(STORE_DIR),
        }
    }

    /// Where `path`'s file is kept, if it is one that is kept. `ProxyPath::parse` allowed no
    /// `.`/`..` element and no `/` in a version: the path stays inside the store.
    pub(crate) fn file(&self, path: &ProxyPath) -> Option<PathBuf> {
        let ProxyPath::File {
            module,
            version,
            kind,
        } = path
        else {
            return None;
        };
        canonical(version).then(|| {
            self.dir
                .join(module)
                .join("@v")
                .join(format!("{version}.{}", kind.extension()))
        })
    }

    /// The stored file for `path`, if there is one (blocking).
    pub(crate) fn read(&self, path: &ProxyPath) -> Option<Vec<u8>> {
        let file = self.file(path)?;
        let meta = fs::metadata(&file).ok()?;
        if !meta.is_file() || meta.len() > MAX_RESPONSE {
            return None;
        }
        fs::read(file).ok()
    }

    /// Keep `body` as `path`'s file (blocking). Nothing is written for paths that are not
    /// kept.
    pub(crate) fn write(&self, path: &ProxyPath, body: &[u8]) -> io::Result<()> {
        let Some(file) = self.file(path) else {
            return Ok(());
        };
        // `file()` always joins a name below the store's directory.
        let dir = file.parent().unwrap_or(&self.dir);
        fs::create_dir_all(dir)?;
        let tmp = temp_name(&file);
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(body)?;
            // On the volume before the name is: a crash must not leave a short file that
            // would be served forever.
            f.sync_all()?;
            fs::rename(&tmp, &file)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

/// `.<name>.<pid>.<n>.tmp` beside `file`: unique within the process, and across pods sharing
/// the volume as long as their PIDs differ; `create_new` refuses a name that is taken.
fn temp_name(file: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    file.with_file_name(format!(
        ".{}.{}.{n}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ))
}

/// A canonical semantic version as module versions are (`v1.2.3`, `v1.2.3-pre.1`,
/// `v2.0.0+incompatible`, pseudo-versions), in its escaped form: a branch, tag alias or
/// commit hash names different content over time. Versions with upper-case letters (escaped
/// with `!`) are left out, being rare and never needed for correctness.
fn canonical(v: &str) -> bool {
    let Some(v) = v.strip_prefix('v') else {
        return false;
    };
    let v = v.strip_suffix("+incompatible").unwrap_or(v);
    let (core, pre) = match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    };
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return false;
    }
    pre.is_none_or(|pre| {
        pre.split('.').all(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && (!id.bytes().all(|c| c.is_ascii_digit()) || numeric(id))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &str) -> ProxyPath {
        ProxyPath::parse(p).unwrap()
    }

    #[test]
    fn files_of_canonical_versions_are_kept_in_gos_download_layout() {
        let s = Store::on_volume(Path::new("/vol"));
        assert_eq!(
            s.file(&parse("github.com/!azure/x/@v/v1.2.3.zip")),
            Some(PathBuf::from(
                "/vol/module-proxy/github.com/!azure/x/@v/v1.2.3.zip"
            ))
        );
        for kept in [
            "m.io/a/@v/v0.0.0-20240101120000-abcdef123456.info",
            "m.io/a/@v/v2.0.0+incompatible.mod",
            "m.io/a/@v/v1.0.0-rc.1.zip",
        ] {
            assert!(s.file(&parse(kept)).is_some(), "{kept}");
        }
        for asked_again in [
            "m.io/a/@v/list",
            "m.io/a/@latest",
            "sumdb/sum.golang.org/lookup/m.io/a@v1.0.0",
            "m.io/a/@v/master.info",
            "m.io/a/@v/v1.info",
            "m.io/a/@v/v1.2.info",
            "m.io/a/@v/v01.2.3.info",
            "m.io/a/@v/v1.2.3-01.info",
            "m.io/a/@v/v1.2.3-.info",
            "m.io/a/@v/v1.2.3+meta.info",
            "m.io/a/@v/v1.2.3-!r!c1.info",
            "m.io/a/@v/abcdef123456.info",
        ] {
            assert_eq!(s.file(&parse(asked_again)), None, "{asked_again}");
        }
    }

    #[test]
    fn a_file_appears_whole_or_not_at_all() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::on_volume(t.path());
        let p = parse("example.com/m/@v/v1.0.0.mod");
        assert_eq!(s.read(&p), None);
        s.write(&p, b"module example.com/m\n").unwrap();
        assert_eq!(s.read(&p).as_deref(), Some(&b"module example.com/m\n"[..]));
        let dir = t.path().join("module-proxy/example.com/m/@v");
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["v1.0.0.mod"], "no temporary file is left");
        // A query is answered but never kept.
        s.write(&parse("example.com/m/@v/main.info"), b"{}")
            .unwrap();
        assert!(!dir.join("main.info").exists());
    }
}

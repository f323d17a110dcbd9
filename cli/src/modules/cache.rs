//! The developer's module cache: where a module version's files are, and reading them.
//!
//! Go keeps what it downloaded in `GOMODCACHE/cache/download/<module>/@v/<version>.<ext>`,
//! named in the same escaped form as the proxy protocol's paths. Go writes each file to a
//! temporary name and renames it, so a file that is there is complete.

use std::path::{Path, PathBuf};

use kdev_protocol::module_proxy::FileKind;

/// The cache file of `module`'s `version` (both escaped, as [`kdev_protocol::module_proxy::ProxyPath`]
/// accepted them). `None` unless every part is a plain name: nothing outside the cache can be
/// named, even if a caller skipped the parse.
pub fn file(modcache: &Path, module: &str, version: &str, kind: FileKind) -> Option<PathBuf> {
    let rel = format!("{module}/@v/{version}.{}", kind.extension());
    let plain = rel
        .split('/')
        .all(|e| !e.is_empty() && e != "." && e != ".." && !e.starts_with('.'));
    plain.then(|| modcache.join("cache/download").join(rel))
}

/// An open cache file and its size; `None` when it is not there (or is not a regular file).
pub async fn open(path: &Path) -> std::io::Result<Option<(tokio::fs::File, u64)>> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The size of what was opened, not of whatever the name points to by now.
    let meta = file.metadata().await?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdev_protocol::module_proxy::ProxyPath;

    #[test]
    fn a_request_maps_to_its_file_in_the_download_cache() {
        let m = Path::new("/home/me/go/pkg/mod");
        let p = ProxyPath::parse("github.com/!azure/go-x/@v/v1.2.3+incompatible.zip").unwrap();
        let ProxyPath::File {
            module,
            version,
            kind,
        } = p
        else {
            panic!("a file request");
        };
        assert_eq!(
            file(m, &module, &version, kind).unwrap(),
            Path::new(
                "/home/me/go/pkg/mod/cache/download/github.com/!azure/go-x/@v/v1.2.3+incompatible.zip"
            )
        );
        assert_eq!(
            file(m, "golang.org/x/sys", "v0.1.0", FileKind::Info).unwrap(),
            Path::new("/home/me/go/pkg/mod/cache/download/golang.org/x/sys/@v/v0.1.0.info")
        );
    }

    #[test]
    fn nothing_outside_the_cache_can_be_named() {
        let m = Path::new("/m");
        for (module, version) in [
            ("../../etc", "v1"),
            ("x/../../..", "v1"),
            ("/etc/passwd", "v1"),
            ("x", "../../../../.netrc"),
            ("x", "/abs"),
            ("", "v1"),
            ("x", ""),
            ("./x", "v1"),
        ] {
            assert_eq!(
                file(m, module, version, FileKind::Zip),
                None,
                "{module} {version}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_file_or_a_directory_is_not_there() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open(&dir.path().join("nope")).await.unwrap().is_none());
        assert!(open(dir.path()).await.unwrap().is_none());
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        let (_, size) = open(&dir.path().join("f")).await.unwrap().unwrap();
        assert_eq!(size, 3);
    }
}

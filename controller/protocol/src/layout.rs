//! The kdev directory of a dev pod (`/kdev`, a volume mounted in both containers): what lives
//! where. The CLI uses the absolute constants (in the pod spec and the commands it runs); the
//! controller uses [`Layout`], whose directories its flags can move.
//!
//! ```text
//! /kdev/src/                    the sync root (default)
//! /kdev/bin/app                 the installed app binary; app.next while a build writes it
//! /kdev/bin/kdev-controller     the controller the CLI uploads (dlv next to it for kdev debug)
//! /kdev/run/                    supervisor.pid, app-status.json, app.log (+ app.log.1),
//!                               build-state.json, build.pgid, serve.lock, serve.pid,
//!                               reconcile-cache
//! /kdev/cache/go-build, mod     default GOCACHE and GOMODCACHE; with a persistent cache
//!                               volume mounted at /kdev/cache: its GOCACHE (and GOMODCACHE)
//! ```

use std::path::{Path, PathBuf};

/// Where the shared volume is mounted in both containers.
pub const KDEV_DIR: &str = "/kdev";
/// The default sync root.
pub const SRC_DIR: &str = "/kdev/src";
/// The default build caches.
pub const CACHE_DIR: &str = "/kdev/cache";
/// Set on the sidecar (to [`CACHE_DIR`]) when a volume that outlives the pod is mounted there
/// for Go's caches; `serve` then builds with it (`--persistent-cache`).
pub const PERSISTENT_CACHE_ENV: &str = "KDEV_PERSISTENT_CACHE";
/// The app binary that `serve` installs and the supervisor runs.
pub const APP_PATH: &str = "/kdev/bin/app";
/// The controller binary the CLI uploads.
pub const CONTROLLER_PATH: &str = "/kdev/bin/kdev-controller";
/// Where `kdev debug` puts Delve.
pub const DLV_PATH: &str = "/kdev/bin/dlv";

/// The directories of one kdev directory, each of which can be moved, and the files in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The sync root (`<kdev>/src`).
    pub src: PathBuf,
    /// Built binaries (`<kdev>/bin`): `app`, `app.next`, `kdev-controller`.
    pub bin: PathBuf,
    /// Runtime files (`<kdev>/run`).
    pub run: PathBuf,
    /// Build caches (`<kdev>/cache`).
    pub cache: PathBuf,
}

impl Layout {
    /// The default layout below `kdev_dir`.
    pub fn new(kdev_dir: &Path) -> Layout {
        Layout {
            src: kdev_dir.join("src"),
            bin: kdev_dir.join("bin"),
            run: kdev_dir.join("run"),
            cache: kdev_dir.join("cache"),
        }
    }

    /// `bin/app`: the installed app binary.
    pub fn app_binary(&self) -> PathBuf {
        self.bin.join("app")
    }
    /// `bin/app.next`: the binary a build writes; renamed to `app` when it succeeds.
    pub fn app_next(&self) -> PathBuf {
        self.bin.join("app.next")
    }

    /// `run/supervisor.pid`: the supervisor's PID, one decimal line; removed when it exits.
    pub fn pid_file(&self) -> PathBuf {
        self.run.join("supervisor.pid")
    }
    /// `run/app-status.json`: [`crate::AppStatus`] as JSON, replaced atomically.
    pub fn status_file(&self) -> PathBuf {
        self.run.join("app-status.json")
    }
    /// `run/app.log`: the app's output, one JSON object per line.
    pub fn log_file(&self) -> PathBuf {
        self.run.join("app.log")
    }
    /// `run/app.log.1`: the previous app log, after a rotation.
    pub fn rotated_log_file(&self) -> PathBuf {
        self.run.join("app.log.1")
    }
    /// `run/build-state.json`: whether the tree needs a build.
    pub fn build_state_file(&self) -> PathBuf {
        self.run.join("build-state.json")
    }
    /// `run/build.pgid`: the running build's process group and its leader's start time.
    pub fn build_group_file(&self) -> PathBuf {
        self.run.join("build.pgid")
    }
    /// How full builds ran the compiler and the linker (quick rebuilds,
    /// `kdev_controller::quick_build`): a directory of the system's temporary directory, named
    /// after this run directory, outside the `/kdev` volume the app container mounts (records
    /// hold build configuration, which is none of the app's business).
    pub fn quick_build_dir(&self) -> PathBuf {
        let id = blake3::hash(self.run.as_os_str().as_encoded_bytes()).to_hex();
        std::env::temp_dir().join(format!("kdev-quick-build-{}", &id[..16]))
    }
    /// `bin/app.verify`: the shadow build's binary, compared with a quick rebuild's.
    pub fn app_verify(&self) -> PathBuf {
        self.bin.join("app.verify")
    }
    /// `run/reconcile-cache`: the listing's hash cache, kept across `serve` sessions
    /// ([`crate::hash_cache`]).
    pub fn reconcile_cache_file(&self) -> PathBuf {
        self.run.join("reconcile-cache")
    }
    /// `run/serve.lock`: held (flock) by the one `serve` session.
    pub fn serve_lock_file(&self) -> PathBuf {
        self.run.join("serve.lock")
    }
    /// `run/serve.pid`: the PID of the session holding the lock.
    pub fn serve_pid_file(&self) -> PathBuf {
        self.run.join("serve.pid")
    }

    /// `cache/go-build`: the default GOCACHE.
    pub fn gocache(&self) -> PathBuf {
        self.cache.join("go-build")
    }
    /// `cache/mod`: the default GOMODCACHE.
    pub fn gomodcache(&self) -> PathBuf {
        self.cache.join("mod")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_are_the_default_layout() {
        let l = Layout::new(Path::new(KDEV_DIR));
        assert_eq!(l.src, Path::new(SRC_DIR));
        assert_eq!(l.bin, Path::new("/kdev/bin"));
        assert_eq!(l.run, Path::new("/kdev/run"));
        assert_eq!(l.cache, Path::new(CACHE_DIR));
        assert_eq!(l.app_binary(), Path::new(APP_PATH));
        assert_eq!(l.bin.join("kdev-controller"), Path::new(CONTROLLER_PATH));
        assert_eq!(l.bin.join("dlv"), Path::new(DLV_PATH));
        assert_eq!(l.pid_file(), Path::new("/kdev/run/supervisor.pid"));
        assert_eq!(l.gomodcache(), Path::new("/kdev/cache/mod"));
    }
}

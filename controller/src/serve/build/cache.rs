//! Where builds keep Go's caches: the image's own (`--gocache`, `--gomodcache`: what `go env`
//! says in the sidecar image), or a volume that outlives the pod (`--persistent-cache DIR`,
//! from `KDEV_PERSISTENT_CACHE`, which the CLI sets on the sidecar when it mounts one).
//!
//! With a volume:
//! - GOCACHE is `DIR/go-build`. The first session that finds it missing seeds it with a copy of
//!   the image's GOCACHE (an image may ship it pre-filled, and Go has one GOCACHE: it cannot
//!   read from two), then renames the copy into place, so a half-made copy is never used. The
//!   copy runs in the background; a build waits for it. A flock on `DIR/.seed.lock` makes
//!   pods that share the volume (the old one still terminating) seed it once; copies a killed
//!   session left are removed by the next seeder. An image cache larger than half the volume's
//!   free space is not copied (the volume starts empty instead).
//! - GOMODCACHE is `DIR/mod` only when the image's module cache is empty (nothing pre-filled:
//!   what builds download then outlives the pod). A pre-filled one stays where it is: the
//!   image's pre-warmed GOCACHE entries were compiled from those paths, and Go's cache keys
//!   include a package's directory, so moving the modules would turn the entries into misses.
//!   (With `vendor/` the module cache is not used at all.)
//! - The module proxy keeps the module files it is sent on the volume
//!   (`DIR/module-proxy`, [`crate::serve::module_proxy`]) when GOMODCACHE is not there: with a
//!   pre-filled image module cache, what builds download otherwise goes with the pod. With
//!   GOMODCACHE on the volume, go's own cache persists, and nothing more is kept.
//! - A volume the sidecar's user cannot write to falls back to the image's caches, with a
//!   warning.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;

use crate::build_spec::BuildDefaults;
use crate::log::serve as log;
use crate::serve::io::Out;
use kdev_protocol::Event;

/// GOCACHE below the volume.
const GOCACHE_DIR: &str = "go-build";
/// GOMODCACHE below the volume (when the image's module cache is empty).
const GOMODCACHE_DIR: &str = "mod";
const SEED_LOCK: &str = ".seed.lock";
/// Copies in progress are `go-build.seeding.<pid>`.
const SEEDING_PREFIX: &str = "go-build.seeding.";

/// The caches a session builds with, and whether they are ready.
pub(crate) struct Caches {
    pub defaults: BuildDefaults,
    /// `true` once GOCACHE may be used (at once, unless it is being seeded).
    pub ready: watch::Receiver<bool>,
    /// The volume the module proxy keeps module files on: a writable volume that GOMODCACHE
    /// is not on.
    pub module_store: Option<PathBuf>,
    /// What [`Caches::start`] does: seed, warn, or nothing.
    pending: Pending,
}

enum Pending {
    Nothing,
    Warn(String),
    Seed {
        from: PathBuf,
        volume: PathBuf,
        done: watch::Sender<bool>,
    },
}

/// Decide where the caches are (cheap: no copying). `volume` is `--persistent-cache`.
pub(crate) fn resolve(image: &BuildDefaults, volume: Option<&Path>) -> Caches {
    let ready_now = || watch::channel(true).1;
    let Some(volume) = volume else {
        return Caches {
            defaults: image.clone(),
            ready: ready_now(),
            module_store: None,
            pending: Pending::Nothing,
        };
    };
    if let Err(e) = check_writable(volume) {
        return Caches {
            defaults: image.clone(),
            ready: ready_now(),
            module_store: None,
            pending: Pending::Warn(format!(
                "the build cache volume {} cannot be written ({e}); building with the image's \
                 Go caches, which do not outlive the pod (a pod securityContext.fsGroup may \
                 make the volume writable)",
                volume.display()
            )),
        };
    }
    let mut defaults = image.clone();
    // `GOCACHE=off` in the image stays off.
    let seed_from = (image.gocache != Path::new("off")).then(|| {
        defaults.gocache = volume.join(GOCACHE_DIR);
        image.gocache.clone()
    });
    if dir_is_empty(&image.gomodcache) {
        defaults.gomodcache = volume.join(GOMODCACHE_DIR);
    }
    let module_store = (!defaults.gomodcache.starts_with(volume)).then(|| volume.to_path_buf());
    match seed_from {
        Some(from) if !defaults.gocache.exists() => {
            let (done, ready) = watch::channel(false);
            Caches {
                defaults,
                ready,
                module_store,
                pending: Pending::Seed {
                    from,
                    volume: volume.to_path_buf(),
                    done,
                },
            }
        }
        _ => Caches {
            defaults,
            ready: ready_now(),
            module_store,
            pending: Pending::Nothing,
        },
    }
}

impl Caches {
    /// After the Welcome: say what needs saying, and seed GOCACHE in the background.
    pub(crate) async fn start(&mut self, out: &Out) {
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Nothing => {}
            Pending::Warn(message) => {
                log(&message);
                out.event(Event::Warning {
                    code: "build_cache".into(),
                    message,
                })
                .await;
            }
            Pending::Seed { from, volume, done } => {
                let out = out.clone();
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let res = tokio::task::spawn_blocking(move || seed(&from, &volume)).await;
                    let _ = done.send(true);
                    let warning = match res {
                        Ok(Ok(Seeded::Copied { files, bytes })) => {
                            log(format!(
                                "seeded the build cache volume with the image's GOCACHE: {files} \
                                 files, {} MiB in {} ms",
                                bytes >> 20,
                                t0.elapsed().as_millis()
                            ));
                            None
                        }
                        Ok(Ok(Seeded::AlreadyThere)) => None,
                        Ok(Ok(Seeded::NothingToCopy)) => {
                            log("the image has no GOCACHE to seed the volume with");
                            None
                        }
                        Ok(Ok(Seeded::TooLarge { bytes, available })) => Some(format!(
                            "the image's GOCACHE ({} MiB) was not copied to the build cache \
                             volume ({} MiB free): the first build starts from an empty cache",
                            bytes >> 20,
                            available >> 20
                        )),
                        Ok(Err(e)) => Some(format!(
                            "seeding the build cache volume with the image's GOCACHE failed \
                             ({e}): the first build starts from an empty cache"
                        )),
                        Err(e) => Some(format!("seeding the build cache volume failed: {e}")),
                    };
                    if let Some(message) = warning {
                        log(&message);
                        out.event(Event::Warning {
                            code: "build_cache".into(),
                            message,
                        })
                        .await;
                    }
                });
            }
        }
    }
}

/// Wait until GOCACHE may be used; returns how long that took.
pub(crate) async fn wait_ready(ready: &mut watch::Receiver<bool>) -> Duration {
    let t0 = Instant::now();
    // An error means the sender is gone: nothing is seeding any more.
    let _ = ready.wait_for(|r| *r).await;
    t0.elapsed()
}

fn check_writable(volume: &Path) -> io::Result<()> {
    fs::create_dir_all(volume)?;
    let probe = volume.join(format!(".kdev-write-test.{}", std::process::id()));
    fs::write(&probe, b"")?;
    fs::remove_file(&probe)
}

/// A directory that is missing or has no entries.
fn dir_is_empty(dir: &Path) -> bool {
    match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seeded {
    Copied { files: u64, bytes: u64 },
    AlreadyThere,
    NothingToCopy,
    TooLarge { bytes: u64, available: u64 },
}

/// Make `volume/go-build` a copy of `from` (once per volume; see the module docs).
pub(crate) fn seed(from: &Path, volume: &Path) -> io::Result<Seeded> {
    let target = volume.join(GOCACHE_DIR);
    if target.exists() {
        return Ok(Seeded::AlreadyThere);
    }
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(volume.join(SEED_LOCK))?;
    let _lock =
        Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
    if target.exists() {
        return Ok(Seeded::AlreadyThere);
    }
    // Copies a killed seeder left (it held the lock until it died).
    for e in fs::read_dir(volume)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(SEEDING_PREFIX) {
            let _ = make_writable_and_remove(&e.path());
        }
    }
    if dir_is_empty(from) {
        fs::create_dir(&target)?;
        return Ok(Seeded::NothingToCopy);
    }
    let (files, bytes) = tree_size(from)?;
    let available = available_bytes(volume)?;
    if bytes > available / 2 {
        fs::create_dir(&target)?;
        return Ok(Seeded::TooLarge { bytes, available });
    }
    let tmp = volume.join(format!("{SEEDING_PREFIX}{}", std::process::id()));
    copy_tree(from, &tmp).inspect_err(|_| {
        let _ = make_writable_and_remove(&tmp);
    })?;
    fs::rename(&tmp, &target)?;
    Ok(Seeded::Copied { files, bytes })
}

/// Regular files and their bytes below `dir`.
fn tree_size(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            let (f, b) = tree_size(&e.path())?;
            files += f;
            bytes += b;
        } else if ft.is_file() {
            files += 1;
            bytes += e.metadata()?.len();
        }
    }
    Ok((files, bytes))
}

fn available_bytes(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Copy directories and regular files (Go's cache has nothing else). Files get the copy's
/// time as their mtime: Go trims entries unused for days by mtime, and the image's are as old
/// as the image.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst)?;
        } else if ft.is_file() {
            fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

/// `rm -rf`, also of read-only directories.
fn make_writable_and_remove(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn chmod_dirs(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                chmod_dirs(&e.path());
            }
        }
    }
    chmod_dirs(dir);
    fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> BuildDefaults {
        BuildDefaults {
            go: "go".into(),
            gocache: dir.join("image/go-build"),
            gomodcache: dir.join("image/mod"),
        }
    }

    #[test]
    fn without_a_volume_the_images_caches_are_used() {
        let t = tempfile::tempdir().unwrap();
        let c = resolve(&image(t.path()), None);
        assert_eq!(c.defaults.gocache, t.path().join("image/go-build"));
        assert!(*c.ready.borrow());
    }

    #[test]
    fn a_fresh_volume_is_seeded_once_with_the_images_gocache() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path());
        fs::create_dir_all(img.gocache.join("ab")).unwrap();
        fs::write(img.gocache.join("ab/abc-d"), b"compiled").unwrap();
        fs::write(img.gocache.join("README"), b"go cache").unwrap();
        // A pre-filled module cache stays the image's; GOCACHE moves to the volume.
        fs::create_dir_all(img.gomodcache.join("cache")).unwrap();
        let volume = t.path().join("volume");
        let c = resolve(&img, Some(&volume));
        assert_eq!(c.defaults.gocache, volume.join("go-build"));
        assert_eq!(c.defaults.gomodcache, img.gomodcache);
        // What builds download would go with the pod: the module proxy keeps it.
        assert_eq!(c.module_store.as_deref(), Some(volume.as_path()));
        assert!(!*c.ready.borrow(), "a build waits for the seeding");
        // A copy a killed seeder left is removed.
        fs::create_dir_all(volume.join("go-build.seeding.1/xx")).unwrap();
        assert_eq!(
            seed(&img.gocache, &volume).unwrap(),
            Seeded::Copied {
                files: 2,
                bytes: 16
            }
        );
        assert_eq!(
            fs::read(volume.join("go-build/ab/abc-d")).unwrap(),
            b"compiled"
        );
        assert!(!volume.join("go-build.seeding.1").exists());
        assert_eq!(seed(&img.gocache, &volume).unwrap(), Seeded::AlreadyThere);
        // The next session finds it seeded: nothing to wait for.
        let c = resolve(&img, Some(&volume));
        assert!(*c.ready.borrow());
    }

    #[test]
    fn an_empty_image_module_cache_moves_to_the_volume() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path());
        let volume = t.path().join("volume");
        let c = resolve(&img, Some(&volume));
        assert_eq!(c.defaults.gomodcache, volume.join("mod"));
        // Go's own module cache persists there: the module proxy keeps nothing more.
        assert_eq!(c.module_store, None);
        assert_eq!(seed(&img.gocache, &volume).unwrap(), Seeded::NothingToCopy);
        assert!(volume.join("go-build").is_dir());
    }

    #[test]
    fn gocache_off_stays_off() {
        let t = tempfile::tempdir().unwrap();
        let mut img = image(t.path());
        img.gocache = "off".into();
        let c = resolve(&img, Some(&t.path().join("volume")));
        assert_eq!(c.defaults.gocache, Path::new("off"));
        assert!(*c.ready.borrow());
    }

    #[test]
    fn an_unwritable_volume_falls_back_to_the_images_caches() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path());
        // A file where the directory should be: never writable, whoever runs the test.
        let volume = t.path().join("volume");
        fs::write(&volume, b"").unwrap();
        let c = resolve(&img, Some(&volume));
        assert_eq!(c.defaults.gocache, img.gocache);
        assert_eq!(c.module_store, None);
        assert!(matches!(c.pending, Pending::Warn(_)));
    }
}

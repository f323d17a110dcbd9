//! The local tree as the sync engine knows it: its listings (listing stage), hashing only the
//! files whose stat moved ([`HashCache`]), and the stat picture its safety-net rescan compares
//! against ([`StatPicture`], watch stage). One walk draws both: the full listing
//! ([`LocalTree::scan`], e.g. the initial sync after a reconnect) is also the baseline of the
//! next rescan.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kdev_protocol::EntryKind;
use kdev_protocol::hash_cache::HashCache;

use crate::sync::ignore::IgnoreRules;
use crate::sync::listing::hashing::file_entry;
use crate::sync::listing::local::{Listing, Local};
use crate::sync::listing::partial::{below, path_entry};
use crate::sync::listing::walk::{ListError, Met, walk};
use crate::sync::unsyncable::Reason;
use crate::sync::watch::rescan::{Changes, StatPicture};

/// The local tree's listings and stat picture, with the hash cache.
#[derive(Debug)]
pub struct LocalTree {
    root: PathBuf,
    picture: StatPicture,
    cache: HashCache,
    now: fn() -> SystemTime,
}

impl LocalTree {
    /// The tree at `root`, not listed yet: the first rescan reports everything as added.
    pub fn new(root: &Path) -> LocalTree {
        LocalTree {
            root: root.to_path_buf(),
            picture: StatPicture::default(),
            cache: HashCache::default(),
            now: SystemTime::now,
        }
    }

    /// The full listing, hashing only files whose stat is not in the cache. It also becomes the
    /// baseline of the next [`Self::rescan`] (each stat is taken before its file is hashed, so
    /// that a change made while hashing is reported by that rescan rather than lost).
    ///
    /// One walk does both: a separate rescan first walked the tree a second time and opened
    /// every new file to learn whether it is readable, which hashing (or a cached hash, whose
    /// unchanged ctime means unchanged permissions) tells anyway; on 9,083 paths that took the
    /// listing from ~60 to ~170 ms.
    pub fn scan(&mut self, rules: &IgnoreRules) -> Result<Listing, ListError> {
        let now = (self.now)();
        let mut picture = self.picture.empty_like();
        let mut out = Listing::default();
        let cache = &mut self.cache;
        cache.begin_pass();
        let walked = walk(&self.root, rules, &self.root, &mut |met| match met {
            Met::Unsyncable(u) => {
                picture.saw_unsyncable(u.clone());
                out.unsyncable.push(u);
            }
            Met::Synced { wire, abs, stat } => {
                let mut unreadable = None;
                if stat.kind == EntryKind::File {
                    match file_entry(cache, wire.clone(), &abs, &stat) {
                        Local::Entry(e) => out.entries.push(e),
                        Local::Absent => return, // gone since the walk's lstat
                        Local::Unsyncable(u) => {
                            if let Reason::UnreadableFile(e) = &u.reason {
                                unreadable = Some(e.clone());
                                picture.saw_unsyncable(u.clone());
                            }
                            out.unsyncable.push(u);
                        }
                    }
                } else {
                    out.entries.push(stat.entry(wire.clone(), None));
                }
                picture.saw(wire, stat, unreadable, now);
            }
        });
        // Only an unreadable root fails, before anything is met: keep the old picture.
        walked?;
        self.cache.end_pass();
        self.picture = picture;
        out.entries.sort_by(|a, b| a.path.cmp(&b.path));
        out.unsyncable.sort();
        Ok(out)
    }

    /// The entry for one path (absolute), hashing a file only when its stat is not in the cache.
    pub fn entry(&mut self, rules: &IgnoreRules, path: &Path) -> Local {
        path_entry(&self.root, path, rules, &mut self.cache)
    }

    /// Everything below the synced directory `dir` (absolute), e.g. one that was renamed in.
    pub fn below(&mut self, rules: &IgnoreRules, dir: &Path) -> Listing {
        below(&self.root, dir, rules, &mut self.cache)
    }

    /// Keep the hash cache in `file` across restarts (loading what it holds now).
    pub fn persist_hashes_in(&mut self, file: PathBuf) {
        self.cache.persist_in(file, &self.root);
    }

    /// Write the hash cache to its file, if it is kept in one and changed.
    pub fn save_hashes(&mut self) -> std::io::Result<()> {
        self.cache.save()
    }

    /// How many synced paths the last rescan saw.
    pub fn len(&self) -> usize {
        self.picture.synced_len()
    }

    /// The hash cache's counters: (files hashed, hashes reused).
    #[cfg(test)]
    fn hash_counts(&self) -> (u64, u64) {
        self.cache.counts()
    }

    /// Walk the tree again (stat only) and return what changed since the previous rescan (see
    /// [`crate::sync::watch::rescan`]).
    pub fn rescan(&mut self, rules: &IgnoreRules) -> Result<Changes, ListError> {
        self.picture.rescan(&self.root, rules, (self.now)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    /// A clock past every file's settling time, so that the tests do not depend on timing.
    fn later() -> SystemTime {
        SystemTime::now() + kdev_protocol::hash_cache::SETTLE + Duration::from_secs(1)
    }

    fn project() -> (tempfile::TempDir, PathBuf, IgnoreRules) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("handlers")).unwrap();
        fs::create_dir_all(root.join("vendor")).unwrap();
        fs::write(root.join(".gitignore"), "vendor/\n").unwrap();
        fs::write(root.join("main.go"), "package main").unwrap();
        fs::write(root.join("handlers/a.go"), "package handlers").unwrap();
        fs::write(root.join("handlers/b.go"), "package handlers").unwrap();
        std::os::unix::fs::symlink("a.go", root.join("handlers/link")).unwrap();
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        (tmp, root, rules)
    }

    fn rel(root: &Path, paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn rescan_reports_what_changed_since_the_last_one() {
        let (_tmp, root, rules) = project();
        let mut snap = LocalTree::new(&root);
        snap.now = later;
        let listing = snap.scan(&rules).unwrap();
        assert_eq!(listing.entries.len(), 6);
        assert_eq!(snap.len(), 6);
        assert!(snap.rescan(&rules).unwrap().is_empty());

        fs::write(root.join("handlers/a.go"), "package handlers // edited").unwrap();
        fs::remove_file(root.join("handlers/b.go")).unwrap();
        fs::create_dir(root.join("pkg")).unwrap();
        fs::write(root.join("pkg/new.go"), "package pkg").unwrap();
        fs::remove_file(root.join("handlers/link")).unwrap();
        std::os::unix::fs::symlink("b.go", root.join("handlers/link")).unwrap();
        fs::set_permissions(root.join("main.go"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("vendor/ignored.go"), "x").unwrap();
        let sock = std::os::unix::net::UnixListener::bind(root.join("handlers/s.sock")).unwrap();
        let c = snap.rescan(&rules).unwrap();
        assert_eq!(rel(&root, &c.added), vec!["pkg", "pkg/new.go"]);
        assert_eq!(rel(&root, &c.removed), vec!["handlers/b.go"]);
        assert_eq!(
            rel(&root, &c.modified),
            vec!["handlers/a.go", "handlers/link", "main.go"]
        );
        let u: Vec<String> = c.unsyncable.iter().map(|u| u.to_string()).collect();
        assert_eq!(u, vec!["handlers/s.sock: a socket"]);
        // Reported once.
        assert!(snap.rescan(&rules).unwrap().is_empty());
        drop(sock);
    }

    /// A file seen before it settled is reported by the next rescan even with the same stat: a
    /// write in the same timestamp tick would leave no trace in it.
    #[test]
    fn a_file_seen_too_soon_after_a_change_is_reported_again() {
        let (_tmp, root, rules) = project();
        let mut snap = LocalTree::new(&root);
        snap.scan(&rules).unwrap(); // real clock: everything was just written
        snap.now = later;
        let c = snap.rescan(&rules).unwrap();
        assert_eq!(
            rel(&root, &c.modified),
            vec![".gitignore", "handlers/a.go", "handlers/b.go", "main.go"]
        );
        assert!(snap.rescan(&rules).unwrap().is_empty());
    }

    #[test]
    fn becoming_unreadable_or_a_fifo_is_leaving_the_synced_set() {
        let (_tmp, root, rules) = project();
        let mut snap = LocalTree::new(&root);
        snap.now = later;
        snap.scan(&rules).unwrap();
        fs::set_permissions(
            root.join("handlers/a.go"),
            fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        fs::remove_file(root.join("main.go")).unwrap();
        let c = std::ffi::CString::new(root.join("main.go").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let c = crate::sync::listing::tests::without_dac_override(|| snap.rescan(&rules)).unwrap();
        assert_eq!(rel(&root, &c.removed), vec!["handlers/a.go", "main.go"]);
        let u: Vec<String> = c.unsyncable.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            u,
            vec![
                "handlers/a.go: cannot read the file: permission denied",
                "main.go: a FIFO (named pipe)"
            ]
        );
        assert_eq!(snap.picture.unsyncable().count(), 2);
    }

    /// The listing after a reconnect reads only files that changed.
    #[test]
    fn a_second_scan_reuses_the_hashes_of_unchanged_files() {
        let (_tmp, root, rules) = project();
        let mut snap = LocalTree::new(&root);
        // Settled files (pretend the clock moved on, as it has by the time of a reconnect).
        snap.cache.set_clock(later);
        let first = snap.scan(&rules).unwrap();
        assert_eq!(snap.hash_counts(), (4, 0));
        std::thread::sleep(Duration::from_millis(50));
        fs::write(root.join("main.go"), "package main // edited").unwrap();
        let second = snap.scan(&rules).unwrap();
        assert_eq!(snap.hash_counts(), (5, 3));
        let hash =
            |l: &Listing, p: &str| l.entries.iter().find(|e| e.path == p).unwrap().hash.clone();
        assert_eq!(
            hash(&first, "handlers/a.go"),
            hash(&second, "handlers/a.go")
        );
        assert_eq!(
            hash(&second, "main.go"),
            Some(kdev_protocol::hash_bytes(b"package main // edited"))
        );
        // One path through the same cache.
        let Local::Entry(e) = snap.entry(&rules, &root.join("handlers/b.go")) else {
            panic!()
        };
        assert_eq!(e.hash, hash(&first, "handlers/b.go"));
        assert_eq!(snap.hash_counts(), (5, 4));
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
        let (wall, cpu) = (std::time::Instant::now(), thread_cpu());
        let t = f();
        (t, wall.elapsed(), thread_cpu() - cpu)
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }

    /// The safety net's cost on a 10,000-file tree (500 directories of 20 files, 2 KiB each,
    /// plus an ignored `node_modules/` of 2,000 files), warm page cache:
    /// `cargo test --release -p kdev rescan_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: run it in release, it prints figures"]
    fn rescan_cost() {
        const TOP: usize = 25;
        const SUB: usize = 20;
        const FILES: usize = 20;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let body = "x".repeat(2048);
        fs::write(root.join(".gitignore"), "*.log\n/bin/\nnode_modules/\n").unwrap();
        for t in 0..TOP {
            for s in 0..SUB {
                let dir = root.join(format!("pkg{t}/sub{s}"));
                fs::create_dir_all(&dir).unwrap();
                for f in 0..FILES {
                    fs::write(dir.join(format!("file{f}.go")), &body).unwrap();
                }
            }
        }
        for d in 0..100 {
            let dir = root.join(format!("node_modules/m{d}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..20 {
                fs::write(dir.join(format!("i{f}.js")), "x").unwrap();
            }
        }
        let files = TOP * SUB * FILES;
        let dirs = TOP * SUB + TOP;
        // A checkout from a while ago: its files have settled.
        std::thread::sleep(kdev_protocol::hash_cache::SETTLE + Duration::from_millis(200));
        let rules = IgnoreRules::load(&root, &[]).unwrap();
        let mut snap = LocalTree::new(&root);

        let (listing, wall, cpu) = timed(|| snap.scan(&rules).unwrap());
        assert_eq!(listing.entries.len(), files + dirs + 1);
        assert_eq!(snap.hash_counts(), (files as u64 + 1, 0));
        println!(
            "initial listing (stat baseline + hash {} files): {} wall, {} CPU",
            files + 1,
            ms(wall),
            ms(cpu)
        );
        let (_, wall, cpu) = timed(|| snap.scan(&rules).unwrap());
        assert_eq!(snap.hash_counts(), (files as u64 + 1, files as u64 + 1));
        println!(
            "listing again, e.g. after a reconnect (hash cache): {} wall, {} CPU",
            ms(wall),
            ms(cpu)
        );

        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        for _ in 0..21 {
            let (c, wall, cpu) = timed(|| snap.rescan(&rules).unwrap());
            assert!(c.is_empty(), "{c:?}");
            walls.push(wall);
            cpus.push(cpu);
        }
        walls.sort();
        cpus.sort();
        println!(
            "rescan of {files} files in {dirs} directories, {} runs: median {} wall \
             (min {}, max {}), median {} CPU",
            walls.len(),
            ms(walls[walls.len() / 2]),
            ms(walls[0]),
            ms(walls[walls.len() - 1]),
            ms(cpus[cpus.len() / 2])
        );

        // One same-size rewrite among 10,000 files is found, and nothing else.
        std::thread::sleep(Duration::from_millis(20));
        let edited = root.join("pkg7/sub13/file5.go");
        fs::write(&edited, "y".repeat(2048)).unwrap();
        let (c, wall, _) = timed(|| snap.rescan(&rules).unwrap());
        assert_eq!(c.modified, vec![edited.clone()]);
        assert!(c.added.is_empty() && c.removed.is_empty() && c.unsyncable.is_empty());
        let Local::Entry(e) = snap.entry(&rules, &edited) else {
            panic!()
        };
        assert_eq!(
            e.hash,
            Some(kdev_protocol::hash_bytes("y".repeat(2048).as_bytes()))
        );
        println!("rescan finding the one edited file: {}", ms(wall));
    }
}

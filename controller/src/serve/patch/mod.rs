//! Applying a patch (deletions + tar) to the sync root, treating the input as hostile.
//!
//! Two phases. **Plan** ([`plan`]) parses and validates the whole archive and turns every
//! entry into a planned operation or a refusal; a malformed archive is refused as a whole and
//! nothing at all is applied. **Apply** (here) then runs the deletions and the planned
//! operations in order through [`safe_root`], which never writes through a symlink and never
//! shows a half-written file. Refusals do not stop the other entries; the result lists exactly
//! what was applied and what was refused.

mod plan;
mod safe_root;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kdev_protocol::paths::normalize_wire_path;
use kdev_protocol::{PatchLimits, Refused};

use crate::util::error_chain;
use plan::{Op, Refusal, refuse};
pub(super) use safe_root::is_temp_name;
use safe_root::{FsError, SafeRoot};

/// Default limits (see [`PatchLimits`]).
pub(super) fn default_limits() -> PatchLimits {
    PatchLimits {
        max_entries: 100_000,
        max_file_size: u64::from(kdev_protocol::MAX_FRAME_SIZE),
        max_total_size: u64::from(kdev_protocol::MAX_FRAME_SIZE),
        max_extension_header: 64 * 1024,
        max_deletes: kdev_protocol::MAX_DELETES,
    }
}

/// The name used in refusals that concern the whole archive.
const ARCHIVE: &str = kdev_protocol::ARCHIVE_PATH;

/// What applying a patch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct PatchOutcome {
    pub applied: Vec<String>,
    pub deleted: Vec<String>,
    pub refused: Vec<Refused>,
    pub files: u32,
    pub bytes: u64,
    /// Stopped part-way because the session is ending (the rest was not applied).
    pub interrupted: bool,
}

impl PatchOutcome {
    /// Every path that changed (for deciding whether a build input was touched).
    pub(super) fn touched(&self) -> impl Iterator<Item = &str> {
        self.applied
            .iter()
            .chain(self.deleted.iter())
            .map(String::as_str)
    }
    /// Everything was applied.
    pub(super) fn complete(&self) -> bool {
        self.refused.is_empty()
    }
}

/// Apply deletions, then the tar's entries, below `root`. `stop` is checked between entries:
/// once set, nothing more is applied and the outcome says `interrupted`.
pub(super) fn apply_patch(
    root: &Path,
    deletes: &[String],
    tar_bytes: &[u8],
    limits: &PatchLimits,
    stop: &AtomicBool,
) -> PatchOutcome {
    apply_patch_with(root, deletes, tar_bytes, limits, stop, usize::MAX)
}

/// [`apply_patch`] with at most `max_workers` threads writing files (1: entry by entry, in
/// order: the outcome every patch must have).
fn apply_patch_with(
    root: &Path,
    deletes: &[String],
    tar_bytes: &[u8],
    limits: &PatchLimits,
    stop: &AtomicBool,
    max_workers: usize,
) -> PatchOutcome {
    let mut out = PatchOutcome::default();
    let mut plan_refused = Vec::new();
    let ops = match plan::plan(tar_bytes, limits, root, &mut plan_refused) {
        Ok(ops) => ops,
        Err(e) => {
            // Nothing is applied: report the archive and every deletion as refused.
            refuse(&mut out.refused, ARCHIVE, e);
            for d in deletes {
                refuse(&mut out.refused, d.clone(), Refusal::ArchiveRefused);
            }
            return out;
        }
    };
    let ops = plan::refuse_escaping_links(root, deletes, ops, &mut plan_refused);
    let safe = match SafeRoot::new(root) {
        Ok(safe) => safe,
        Err(e) => {
            // Nothing can be applied: every deletion and entry is refused with the reason.
            let why = error_chain(&e);
            let all = deletes
                .iter()
                .cloned()
                .chain(ops.into_iter().map(Op::into_path));
            out.refused.extend(all.map(|path| Refused {
                path,
                reason: why.clone(),
            }));
            out.refused.extend(plan_refused);
            return out;
        }
    };
    for d in deletes {
        if stop.load(Ordering::Relaxed) {
            out.interrupted = true;
            return out;
        }
        match normalize_wire_path(d)
            .map_err(Refusal::from)
            .and_then(|p| safe.delete(&p).map(|()| p).map_err(Refusal::from))
        {
            Ok(p) => out.deleted.push(p),
            Err(why) => refuse(&mut out.refused, d.clone(), why),
        }
    }
    out.refused.extend(plan_refused);
    let results = apply_ops(&safe, &ops, tar_bytes, stop, max_workers);
    for (op, res) in ops.into_iter().zip(results) {
        let Some(res) = res else {
            // Not applied: the session is ending.
            out.interrupted = true;
            continue;
        };
        if let (Op::File { len, .. }, Ok(())) = (&op, &res) {
            out.files += 1;
            out.bytes += *len as u64;
        }
        let path = op.into_path();
        match res {
            Ok(()) => out.applied.push(path),
            Err(reason) => refuse(&mut out.refused, path, reason),
        }
    }
    out
}

/// A patch with fewer files than this is applied by one thread.
const PARALLEL_MIN_FILES: usize = 64;
/// Consecutive files a worker takes at a time: neighbours in the archive share a directory,
/// whose lock a create holds, so workers mostly create in different directories.
const FILES_PER_TAKE: usize = 16;

/// Apply `ops`, returning each one's result in order (`None`: not applied, `stop` was set).
///
/// In the pod, creating files is the cost of a large sync (kernel time per create, mostly
/// waiting on the file system), and it overlaps across threads: on the 2-core test VM, four
/// `tar -x` processes extracting quarters of a 7,160-file tree took 0.15 s where one took
/// 0.33–0.72 s. So the files of a large patch are written by several workers, after its
/// directories and symlinks were applied in order by this thread. That reorders entries, and
/// the outcome must still be the one of applying them in order: the patch is cut into runs
/// of entries none of which changes what another one does ([`batches`]), applied one after
/// the other. A patch kdev makes is one such run.
fn apply_ops(
    safe: &SafeRoot,
    ops: &[Op],
    tar: &[u8],
    stop: &AtomicBool,
    max_workers: usize,
) -> Vec<Option<Result<(), FsError>>> {
    let mut results: Vec<Option<Result<(), FsError>>> = ops.iter().map(|_| None).collect();
    for batch in batches(ops) {
        let done = apply_batch(safe, &ops[batch.clone()], tar, stop, max_workers);
        let complete = done.iter().all(Option::is_some);
        for (slot, res) in results[batch].iter_mut().zip(done) {
            *slot = res;
        }
        if !complete {
            break;
        }
    }
    results
}

/// Cut `ops` into consecutive runs in which order only matters between an entry and a
/// directory above it that comes earlier. Then applying a run's directories and symlinks in
/// order and its files after them, in any order, ends as applying it in order: two entries
/// on paths neither of which is inside the other touch nothing in common but the directories
/// above both, which either makes the same way. A run ends before an entry whose path is
/// already in it, is inside a file or symlink in it (`a/b`, then a link `a`, in either
/// order), or has a path of it inside (`x/y`, then `x`).
fn batches(ops: &[Op]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut paths = PathTree::default();
    for (i, op) in ops.iter().enumerate() {
        let is_dir = matches!(op, Op::Dir { .. });
        if !paths.insert(op.path(), is_dir) {
            runs.push(start..i);
            start = i;
            paths = PathTree::default();
            paths.insert(op.path(), is_dir);
        }
    }
    runs.push(start..ops.len());
    runs
}

/// The paths of a run of entries as a tree of names (see [`batches`]).
struct PathTree<'a> {
    /// The root first.
    nodes: Vec<PathNode<'a>>,
}

#[derive(Default)]
struct PathNode<'a> {
    children: HashMap<&'a str, usize>,
    /// An entry's path ends here: whether it is a directory's.
    entry: Option<bool>,
}

impl Default for PathTree<'_> {
    fn default() -> Self {
        PathTree {
            nodes: vec![PathNode::default()],
        }
    }
}

impl<'a> PathTree<'a> {
    /// Add the path of an entry, unless it is already there, is inside a file or symlink
    /// there, or has paths there inside it: then return false and add nothing. Costs a
    /// lookup per name of the path.
    fn insert(&mut self, path: &'a str, is_dir: bool) -> bool {
        let mut names = path.split('/').peekable();
        let mut node = 0;
        while let Some(name) = names.next() {
            let Some(&next) = self.nodes[node].children.get(name) else {
                // New from here on: nothing of the run is at or below this path.
                self.add(node, name, names, is_dir);
                return true;
            };
            node = next;
            let inside_a_non_dir = self.nodes[node].entry == Some(false);
            if names.peek().is_some() && inside_a_non_dir {
                return false;
            }
        }
        // The whole path is there: as an entry's path, or above one.
        false
    }

    /// Add `first` and the `rest` of a path below `node`, the last one an entry's.
    fn add(
        &mut self,
        mut node: usize,
        first: &'a str,
        rest: impl Iterator<Item = &'a str>,
        is_dir: bool,
    ) {
        for name in std::iter::once(first).chain(rest) {
            let next = self.nodes.len();
            self.nodes.push(PathNode::default());
            self.nodes[node].children.insert(name, next);
            node = next;
        }
        self.nodes[node].entry = Some(is_dir);
    }
}

/// Apply one run of [`batches`]: its directories and symlinks in order on this thread, then
/// its files, by several workers when there are enough of them.
fn apply_batch(
    safe: &SafeRoot,
    ops: &[Op],
    tar: &[u8],
    stop: &AtomicBool,
    max_workers: usize,
) -> Vec<Option<Result<(), FsError>>> {
    let mut results: Vec<Option<Result<(), FsError>>> = ops.iter().map(|_| None).collect();
    let files: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i], Op::File { .. }))
        .collect();
    let workers = worker_count(files.len()).min(max_workers);
    let parallel = workers > 1;
    // In order on this thread: every op, or (when the files go to workers) all but the files.
    for (i, op) in ops.iter().enumerate() {
        if parallel && matches!(op, Op::File { .. }) {
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            return results;
        }
        results[i] = Some(apply_op(safe, op, tar));
    }
    if !parallel {
        return results;
    }
    let next = AtomicUsize::new(0);
    let done: Vec<Vec<(usize, Result<(), FsError>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let first = next.fetch_add(FILES_PER_TAKE, Ordering::Relaxed);
                        if first >= files.len() || stop.load(Ordering::Relaxed) {
                            return mine;
                        }
                        for &i in &files[first..files.len().min(first + FILES_PER_TAKE)] {
                            mine.push((i, apply_op(safe, &ops[i], tar)));
                        }
                    }
                })
            })
            .collect();
        // A worker only panics on a bug; carrying on would report its files as not applied.
        handles
            .into_iter()
            .map(|h| h.join().expect("a patch worker panicked"))
            .collect()
    });
    for (i, res) in done.into_iter().flatten() {
        results[i] = Some(res);
    }
    results
}

/// How many threads write a patch's `files` (1: this thread alone).
fn worker_count(files: usize) -> usize {
    if files < PARALLEL_MIN_FILES {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(2, 8)
}

fn apply_op(safe: &SafeRoot, op: &Op, tar: &[u8]) -> Result<(), FsError> {
    match op {
        Op::File {
            path,
            start,
            len,
            mode,
        } => safe.write_file(path, &tar[*start..*start + *len], *mode),
        Op::Dir { path, mode } => safe.make_dir(path, *mode),
        Op::Symlink { path, target } => safe.make_symlink(path, target),
    }
}

/// Whether `path` matches one of the build-input patterns (see
/// [`kdev_protocol::SessionConfig::build_inputs`]). `None` matches everything.
pub(super) fn is_build_input(path: &str, patterns: Option<&[String]>) -> bool {
    let Some(patterns) = patterns else {
        return true;
    };
    let name = path.rsplit('/').next().unwrap_or(path);
    patterns.iter().any(|p| {
        if let Some(dir) = p.strip_suffix('/') {
            path == dir || path.starts_with(p.as_str())
        } else if p.starts_with('.') {
            name.ends_with(p.as_str())
        } else {
            name == p || path == p
        }
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use tar::EntryType;

    use super::*;
    use std::collections::HashSet;

    static GO: AtomicBool = AtomicBool::new(false);

    fn header(ty: EntryType, path: &[u8], size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        // Write the raw name: set_path would refuse the malicious ones we want to test.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path);
        h.set_size(size);
        h.set_mode(mode);
        h.set_cksum();
        h
    }

    type Spec<'a> = (EntryType, &'a [u8], &'a [u8], Option<&'a str>);

    fn tar_of(entries: &[Spec<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (ty, path, data, link) in entries {
            let mut h = header(*ty, path, data.len() as u64, 0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
                h.set_cksum();
            }
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn applies_files_dirs_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            (EntryType::Regular, b"a/b/c.txt", b"hello", None),
            (EntryType::Directory, b"empty", b"", None),
            (EntryType::Symlink, b"a/link", b"", Some("b/c.txt")),
        ]);
        let out = apply_patch(dir.path(), &[], &t, &default_limits(), &GO);
        assert!(out.complete(), "{out:?}");
        assert_eq!(out.applied, ["a/b/c.txt", "empty", "a/link"]);
        assert_eq!(fs::read(dir.path().join("a/link")).unwrap(), b"hello");
        assert!(dir.path().join("empty").is_dir());
        assert_eq!((out.files, out.bytes), (1, 5));
    }

    /// A patch of many files across directories: written by several workers, with exactly the
    /// outcome one thread gives (every file, its content, the archive's order in `applied`).
    #[test]
    fn a_large_patch_is_written_by_several_workers_with_the_serial_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..400)
            .map(|i| {
                (
                    format!("d{}/s{}/f{i}.go", i % 7, i % 3),
                    format!("file {i}").into_bytes(),
                )
            })
            .collect();
        assert!(worker_count(files.len()) > 1);
        let mut entries: Vec<Spec<'_>> = vec![(EntryType::Directory, b"d0", b"", None)];
        entries.extend(
            files
                .iter()
                .map(|(p, d)| (EntryType::Regular, p.as_bytes(), d.as_slice(), None)),
        );
        entries.push((EntryType::Symlink, b"d0/link", b"", Some("s0/f0.go")));
        let out = apply_patch(dir.path(), &[], &tar_of(&entries), &default_limits(), &GO);
        assert!(out.complete() && !out.interrupted, "{out:?}");
        let mut want = vec!["d0".to_string()];
        want.extend(files.iter().map(|(p, _)| p.clone()));
        want.push("d0/link".into());
        assert_eq!(out.applied, want);
        assert_eq!(out.files, 400);
        for (p, d) in &files {
            assert_eq!(&fs::read(dir.path().join(p)).unwrap(), d, "{p}");
        }
        assert_eq!(fs::read(dir.path().join("d0/link")).unwrap(), b"file 0");
    }

    /// A path named twice (kdev never sends that; a hostile client may): applied in order by
    /// one thread, so the later entry wins every time.
    #[test]
    fn a_path_named_twice_in_a_large_patch_ends_with_the_later_entry() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<String> = (0..200).map(|i| format!("d{}/f{i}", i % 5)).collect();
        let mut entries: Vec<Spec<'_>> = files
            .iter()
            .map(|p| (EntryType::Regular, p.as_bytes(), b"first".as_slice(), None))
            .collect();
        entries.push((EntryType::Regular, b"d0/f0", b"second", None));
        let out = apply_patch(dir.path(), &[], &tar_of(&entries), &default_limits(), &GO);
        assert!(out.complete(), "{out:?}");
        assert_eq!(fs::read(dir.path().join("d0/f0")).unwrap(), b"second");
        assert_eq!(out.files, 201);
    }

    /// A stop set before the patch: nothing is written, and the outcome says interrupted.
    #[test]
    fn a_stop_before_a_large_patch_applies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<String> = (0..200).map(|i| format!("d{}/f{i}", i % 5)).collect();
        let entries: Vec<Spec<'_>> = files
            .iter()
            .map(|p| (EntryType::Regular, p.as_bytes(), b"x".as_slice(), None))
            .collect();
        let stop = AtomicBool::new(true);
        let out = apply_patch(dir.path(), &[], &tar_of(&entries), &default_limits(), &stop);
        assert!(out.interrupted && out.applied.is_empty(), "{out:?}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// What a tree holds: path → (kind, mode, content or link target), walked iteratively
    /// (the trees may be deep); a directory that cannot be read is recorded as such.
    pub(super) type Tree = std::collections::BTreeMap<String, (char, u32, Vec<u8>)>;

    pub(super) fn tree(root: &Path) -> Tree {
        use std::os::unix::fs::MetadataExt;
        let mut out = Tree::new();
        let mut dirs = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, prefix)) = dirs.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) => {
                    out.insert(
                        format!("{prefix}<unreadable>"),
                        ('?', 0, e.to_string().into()),
                    );
                    continue;
                }
            };
            for de in rd {
                let de = de.unwrap();
                let rel = format!("{prefix}{}", de.file_name().to_string_lossy());
                let m = fs::symlink_metadata(de.path()).unwrap();
                let mode = m.mode() & 0o7777;
                let entry = if m.file_type().is_symlink() {
                    let t = fs::read_link(de.path()).unwrap();
                    ('l', 0, t.into_os_string().into_encoded_bytes())
                } else if m.is_dir() {
                    dirs.push((de.path(), format!("{rel}/")));
                    ('d', mode, vec![])
                } else {
                    ('f', mode, fs::read(de.path()).unwrap())
                };
                out.insert(rel, entry);
            }
        }
        out
    }

    /// An entry refused for its name or length is refused before anything is created: the
    /// tree is as it was (no parent directories made for it are left).
    #[test]
    fn refused_entries_leave_the_tree_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("kept")).unwrap();
        fs::write(dir.path().join("kept/f"), "f").unwrap();
        let before = tree(dir.path());
        let long_name = format!("new1/new2/{}", "n".repeat(256));
        let long_path = format!("{}f", "d/".repeat(2100));
        let long_dir = format!("new4/{}", "n".repeat(256));
        let long_target = "t".repeat(5000);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &long_name, &b"x"[..]).unwrap();
        b.append_data(&mut h, &long_path, &b"x"[..]).unwrap();
        b.append_data(&mut h, format!("kept/{}", "n".repeat(300)), &b"x"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, &long_dir, &[][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "new3/l", &long_target).unwrap();
        let t = b.into_inner().unwrap();
        let out = apply_patch(dir.path(), &[], &t, &default_limits(), &GO);
        assert!(out.applied.is_empty(), "{out:?}");
        assert_eq!(out.refused.len(), 5, "{out:?}");
        for r in &out.refused {
            assert!(r.reason.contains("too long"), "{r:?}");
        }
        assert_eq!(tree(dir.path()), before);
    }

    /// A small, seedable random generator (splitmix64): a failing case can be run again.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
    }

    /// A random path of 1 to 3 names from a small set, so that paths often share parents and
    /// are often parents of each other (`x/y` and `x`); or, `wide` percent of the time, with a
    /// last name of its own, so that long runs of entries can be written by several workers.
    fn random_path(rng: &mut Rng, wide: usize) -> String {
        let depth = 1 + rng.below(3);
        let mut names: Vec<String> = (0..depth)
            .map(|_| rng.pick(&["a", "b", "c", "d", "e", "f"]).to_string())
            .collect();
        if rng.below(100) < wide {
            *names.last_mut().expect("a name") = format!("n{}", rng.below(1000));
        }
        names.join("/")
    }

    /// How many runs of a patch had enough files for several workers (the test's own check
    /// that it tests them).
    fn parallel_runs(root: &Path, tar: &[u8]) -> usize {
        let ops = plan::plan(tar, &default_limits(), root, &mut Vec::new()).unwrap();
        let files = |r: &std::ops::Range<usize>| {
            ops[r.clone()]
                .iter()
                .filter(|op| matches!(op, Op::File { .. }))
                .count()
        };
        batches(&ops)
            .iter()
            .filter(|r| worker_count(files(r)) > 1)
            .count()
    }

    /// A random patch of about `entries` entries (with enough files for several workers):
    /// files, directories and symlinks at random paths ([`random_path`] with `wide`), some
    /// repeated when `repeats`, and a few deletions.
    fn random_patch(
        rng: &mut Rng,
        entries: usize,
        wide: usize,
        repeats: bool,
    ) -> (Vec<String>, Vec<u8>) {
        let deletes = (0..rng.below(8)).map(|_| random_path(rng, wide)).collect();
        let mut b = tar::Builder::new(Vec::new());
        let mut used = HashSet::new();
        let mut files = 0;
        for i in 0.. {
            if i >= entries && files > PARALLEL_MIN_FILES {
                break;
            }
            let path = random_path(rng, wide);
            if !used.insert(path.clone()) && !repeats {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            match rng.below(10) {
                0 => {
                    h.set_entry_type(EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(rng.pick(&[0o755, 0o700, 0o750]));
                    b.append_data(&mut h, &path, &[][..]).unwrap();
                }
                1 => {
                    // Climb to the root, then name any path: always inside, lexically.
                    let up = "../".repeat(path.matches('/').count());
                    let target = format!("{up}{}", random_path(rng, wide));
                    h.set_entry_type(EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &path, &target).unwrap();
                }
                _ => {
                    let data = format!("{i}:{}", rng.next()).into_bytes();
                    h.set_size(data.len() as u64);
                    h.set_mode(rng.pick(&[0o644, 0o755, 0o600]));
                    b.append_data(&mut h, &path, &data[..]).unwrap();
                    files += 1;
                }
            }
        }
        (deletes, b.into_inner().unwrap())
    }

    /// The outcome as it can be compared: what was applied, deleted, refused and why.
    fn summary(out: &PatchOutcome) -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
        let refused = out
            .refused
            .iter()
            .map(|r| (r.path.clone(), r.reason.clone()));
        (out.applied.clone(), out.deleted.clone(), refused.collect())
    }

    /// Any patch applied with several workers ends exactly as applied entry by entry, in order:
    /// the same tree (kinds, modes, contents, link targets) and the same outcome. Random
    /// patches on random trees; KDEV_PATCH_DIFF_SEED picks the first seed (it is printed on
    /// failure), KDEV_PATCH_DIFF_ITERATIONS how many (default 40).
    #[test]
    fn a_parallel_apply_ends_as_the_serial_one() {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let first = env("KDEV_PATCH_DIFF_SEED").unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            t.map_or(1, |d| d.as_nanos() as u64)
        });
        let iterations = env("KDEV_PATCH_DIFF_ITERATIONS").unwrap_or(12);
        let mut parallel_runs_seen = 0;
        for seed in first..first + iterations {
            let mut rng = Rng(seed);
            let (parallel, serial) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            // Paths that overlap all the time (runs are short), rarely (long runs), or often.
            let wide = [0, 99, 75][(seed % 3) as usize];
            // The same random tree in both, applied entry by entry.
            let (deletes, tar) = random_patch(&mut rng, 50, wide, true);
            for root in [&parallel, &serial] {
                apply_patch_with(root.path(), &deletes, &tar, &default_limits(), &GO, 1);
            }
            let entries = 150 + rng.below(350);
            let (deletes, tar) = random_patch(&mut rng, entries, wide, seed % 4 == 0);
            parallel_runs_seen += parallel_runs(parallel.path(), &tar);
            let limits = default_limits();
            let p = apply_patch_with(parallel.path(), &deletes, &tar, &limits, &GO, usize::MAX);
            let s = apply_patch_with(serial.path(), &deletes, &tar, &limits, &GO, 1);
            let rerun = format!(
                "seed {seed} (run again with KDEV_PATCH_DIFF_SEED={seed} \
                 KDEV_PATCH_DIFF_ITERATIONS=1)"
            );
            assert_eq!(summary(&p), summary(&s), "outcomes differ: {rerun}");
            assert_eq!(
                tree(parallel.path()),
                tree(serial.path()),
                "trees differ: {rerun}"
            );
        }
        eprintln!("{parallel_runs_seen} runs written by several workers in {iterations} patches");
        assert!(
            iterations < 3 || parallel_runs_seen >= (iterations as usize / 6).max(1),
            "only {parallel_runs_seen} runs written by several workers in {iterations} patches"
        );
    }

    /// Where a patch is cut into runs: only where an entry's order relative to one before it
    /// could change what either does.
    #[test]
    fn runs_end_where_order_matters() {
        let file = |p: &str| Op::File {
            path: p.into(),
            start: 0,
            len: 0,
            mode: 0o644,
        };
        let dir = |p: &str| Op::Dir {
            path: p.into(),
            mode: 0o755,
        };
        let link = |p: &str| Op::Symlink {
            path: p.into(),
            target: "t".into(),
        };
        let runs = |ops: &[Op]| batches(ops).iter().map(|r| r.len()).collect::<Vec<_>>();
        // A directory, then what is in it, and unrelated paths: one run.
        let kdev_like = [
            dir("d"),
            file("d/a"),
            dir("d/e"),
            link("d/e/l"),
            file("x"),
            file("y/z"),
        ];
        assert_eq!(runs(&kdev_like), [6]);
        // The same path twice; a path inside a file or symlink before it; a path with one
        // inside it before it (a directory too: it would be made before its contents).
        assert_eq!(runs(&[file("a"), file("b"), file("a")]), [2, 1]);
        assert_eq!(runs(&[file("x"), file("x/y")]), [1, 1]);
        assert_eq!(runs(&[link("x"), dir("x/y")]), [1, 1]);
        assert_eq!(runs(&[file("x/y"), file("x")]), [1, 1]);
        assert_eq!(runs(&[file("a/b"), link("a")]), [1, 1]);
        assert_eq!(runs(&[file("d/f"), dir("d")]), [1, 1]);
        // A name that merely starts like another is another path.
        assert_eq!(runs(&[file("ab"), file("a/b"), file("a-b")]), [3]);
    }

    /// The two cases found first, which a random patch meets only now and then.
    #[test]
    fn a_large_patch_with_a_path_under_a_later_file_or_link_ends_as_applied_in_order() {
        for later in [EntryType::Regular, EntryType::Symlink] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = tar::Builder::new(Vec::new());
            let file = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
                let mut h = tar::Header::new_gnu();
                h.set_size(1);
                h.set_mode(0o644);
                b.append_data(&mut h, path, &b"x"[..]).unwrap();
            };
            file(&mut b, "x/y");
            for i in 0..100 {
                file(&mut b, &format!("d{}/f{i}", i % 7));
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            if later == EntryType::Regular {
                file(&mut b, "x");
            } else {
                h.set_entry_type(EntryType::Symlink);
                b.append_link(&mut h, "x", "d0").unwrap();
            }
            let t = b.into_inner().unwrap();
            let out = apply_patch(dir.path(), &[], &t, &default_limits(), &GO);
            assert_eq!(out.refused.len(), 1, "{later:?}: {out:?}");
            assert_eq!(out.refused[0].path, "x", "{later:?}");
            assert!(
                out.refused[0].reason.contains("a directory exists"),
                "{out:?}"
            );
            assert_eq!(fs::read(dir.path().join("x/y")).unwrap(), b"x", "{later:?}");
        }
    }

    #[test]
    fn refuses_escapes_but_applies_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            (EntryType::Regular, b"../evil", b"x", None),
            (EntryType::Regular, b"/abs", b"x", None),
            (EntryType::Symlink, b"up", b"", Some("../..")),
            (EntryType::Link, b"hl", b"", Some("/etc/passwd")),
            (EntryType::Char, b"dev", b"", None),
            (EntryType::Fifo, b"fifo", b"", None),
            (EntryType::Regular, b"ok.go", b"package main", None),
        ]);
        let out = apply_patch(root.path(), &["../x".into()], &t, &default_limits(), &GO);
        assert_eq!(out.applied, ["ok.go"]);
        let refused: Vec<&str> = out.refused.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            refused,
            ["../x", "../evil", "/abs", "up", "hl", "dev", "fifo"]
        );
        assert!(!root.path().join("up").exists());
    }

    #[test]
    fn never_writes_through_an_existing_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let t = tar_of(&[(EntryType::Regular, b"link/pwned", b"x", None)]);
        let out = apply_patch(
            root.path(),
            &["link/other".into()],
            &t,
            &default_limits(),
            &GO,
        );
        assert_eq!(out.refused.len(), 2, "{out:?}");
        assert!(out.refused[1].reason.contains("symlink"), "{out:?}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn malformed_archive_applies_nothing() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("keep"), "k").unwrap();
        let mut t = tar_of(&[(EntryType::Regular, b"a", b"12345", None)]);
        t[0] ^= 0xff; // break the checksum
        let out = apply_patch(root.path(), &["keep".into()], &t, &default_limits(), &GO);
        assert_eq!(out.refused[0].path, ARCHIVE);
        assert_eq!(out.refused[1].path, "keep");
        assert!(root.path().join("keep").exists());
        assert!(out.applied.is_empty() && out.deleted.is_empty());
    }

    #[test]
    fn oversized_long_name_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let long = "d/".repeat(40_000) + "f";
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"x"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let out = apply_patch(root.path(), &[], &t, &default_limits(), &GO);
        assert_eq!(out.refused.len(), 1, "{out:?}");
        assert!(
            out.refused[0].reason.contains("extension headers"),
            "{out:?}"
        );
    }

    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        // "<len> <key>=<value>\n", where <len> counts itself.
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn pax_path_is_honoured_and_oversized_pax_headers_are_refused() {
        let root = tempfile::tempdir().unwrap();
        // A PAX path override is what gets checked and applied (not the header's own name).
        let mut b = tar::Builder::new(Vec::new());
        let rec = pax_record("path", "../escaped");
        b.append(
            &header(EntryType::XHeader, b"pax", rec.len() as u64, 0o644),
            &rec[..],
        )
        .unwrap();
        b.append(
            &header(EntryType::Regular, b"innocent", 1, 0o644),
            &b"x"[..],
        )
        .unwrap();
        let out = apply_patch(
            root.path(),
            &[],
            &b.into_inner().unwrap(),
            &default_limits(),
            &GO,
        );
        assert_eq!(out.refused.len(), 1, "{out:?}");
        assert_eq!(out.refused[0].path, "../escaped");
        assert!(!root.path().join("innocent").exists());

        let mut b = tar::Builder::new(Vec::new());
        let rec = pax_record("comment", &"c".repeat(100_000));
        b.append(
            &header(EntryType::XHeader, b"pax", rec.len() as u64, 0o644),
            &rec[..],
        )
        .unwrap();
        b.append(&header(EntryType::Regular, b"f", 1, 0o644), &b"x"[..])
            .unwrap();
        let out = apply_patch(
            root.path(),
            &[],
            &b.into_inner().unwrap(),
            &default_limits(),
            &GO,
        );
        assert_eq!(out.refused[0].path, ARCHIVE, "{out:?}");
        assert!(out.refused[0].reason.contains("extension headers"));
        assert!(!root.path().join("f").exists());
    }

    #[test]
    fn declared_size_beyond_the_archive_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let h = header(EntryType::Regular, b"big", 1 << 40, 0o644);
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(&[0u8; 1024]);
        let out = apply_patch(root.path(), &[], &t, &default_limits(), &GO);
        assert_eq!(out.refused[0].path, ARCHIVE, "{out:?}");
        assert!(!root.path().join("big").exists());
    }

    #[test]
    fn too_many_entries() {
        let root = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            (EntryType::Regular, b"a", b"", None),
            (EntryType::Regular, b"b", b"", None),
        ]);
        let limits = PatchLimits {
            max_entries: 1,
            ..default_limits()
        };
        let out = apply_patch(root.path(), &[], &t, &limits, &GO);
        assert_eq!(out.refused[0].path, ARCHIVE);
        assert!(out.applied.is_empty());
    }

    #[test]
    fn executable_bit_and_file_replaced_by_directory() {
        let root = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(EntryType::Regular, b"run.sh", 3, 0o755);
        h.set_cksum();
        b.append(&h, &b"#!x"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let out = apply_patch(root.path(), &[], &t, &default_limits(), &GO);
        assert!(out.complete());
        let mode = fs::metadata(root.path().join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // Replace the file with a directory: delete + add in one patch.
        let t = tar_of(&[(EntryType::Regular, b"run.sh/inner", b"y", None)]);
        let out = apply_patch(root.path(), &["run.sh".into()], &t, &default_limits(), &GO);
        assert!(out.complete(), "{out:?}");
        assert!(root.path().join("run.sh/inner").is_file());
    }

    #[test]
    fn build_inputs() {
        let pats = vec![
            ".go".to_string(),
            "go.mod".to_string(),
            "assets/".to_string(),
        ];
        assert!(is_build_input("a/b.go", Some(&pats)));
        assert!(is_build_input("go.mod", Some(&pats)));
        assert!(is_build_input("assets/x.png", Some(&pats)));
        assert!(!is_build_input("README.md", Some(&pats)));
        assert!(is_build_input("README.md", None));
    }
}

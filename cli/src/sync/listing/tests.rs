//! Tests of the local listing on real directories, and the helper that lets tests running as
//! root meet unreadable files as a developer would.
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kdev_protocol::EntryKind;
use kdev_protocol::hash_cache::HashCache;

use crate::sync::ignore::IgnoreRules;
use crate::sync::listing::local::{Listing, Local};
use crate::sync::listing::partial::path_entry;
use crate::sync::listing::stat::{OpenError, open_regular};
use crate::sync::listing::walk::ListError;
use crate::sync::local_tree::LocalTree;
use crate::sync::unsyncable::Reason;

/// The full listing with an empty hash cache.
fn scan(root: &Path, rules: &IgnoreRules) -> Result<Listing, ListError> {
    LocalTree::new(root).scan(rules)
}

/// The entry of one path, with an empty hash cache.
fn entry_for(root: &Path, path: &Path, rules: &IgnoreRules) -> Local {
    path_entry(root, path, rules, &mut HashCache::default())
}

#[test]
fn scan_respects_gitignore_kdevignore_and_excludes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join(".git/objects")).unwrap();
    fs::write(root.join(".git/HEAD"), "ref").unwrap();
    fs::write(root.join(".gitignore"), "/bin/\n*.log\n").unwrap();
    fs::write(root.join(".kdevignore"), "docs/\n").unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/app"), "x").unwrap();
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::write(root.join("docs/a.md"), "x").unwrap();
    fs::create_dir_all(root.join("pkg/sub")).unwrap();
    fs::write(root.join("pkg/.gitignore"), "generated.go\n!keep.log\n").unwrap();
    fs::write(root.join("pkg/generated.go"), "x").unwrap();
    fs::write(root.join("pkg/keep.log"), "x").unwrap();
    fs::write(root.join("pkg/drop.log"), "x").unwrap();
    fs::write(root.join("pkg/sub/ok.go"), "package sub").unwrap();
    fs::write(root.join("main.go"), "package main").unwrap();
    fs::write(root.join("notes.tmp"), "x").unwrap();
    std::os::unix::fs::symlink("main.go", root.join("link.go")).unwrap();

    let rules = IgnoreRules::load(root, &["*.tmp".to_string()]).unwrap();
    let listing = scan(root, &rules).unwrap().entries;
    let paths: Vec<_> = listing.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            ".gitignore",
            ".kdevignore",
            "link.go",
            "main.go",
            "pkg",
            "pkg/.gitignore",
            "pkg/keep.log",
            "pkg/sub",
            "pkg/sub/ok.go"
        ]
    );
    let main = listing.iter().find(|e| e.path == "main.go").unwrap();
    assert_eq!(
        main.hash.as_deref(),
        Some(
            kdev_protocol::hash_bytes(b"package main")
                .to_string()
                .as_str()
        )
    );
    let link = listing.iter().find(|e| e.path == "link.go").unwrap();
    assert_eq!(link.target.as_deref(), Some("main.go"));
}

/// Tests run as root, which reads anything: run `f` in a thread whose effective
/// capabilities lack DAC override (capabilities are per thread on Linux), so that mode 000
/// means what it means for a developer. Not root (or not Linux): nothing to drop.
pub(crate) fn without_dac_override<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            #[cfg(target_os = "linux")]
            if unsafe { libc::geteuid() } == 0 {
                #[repr(C)]
                struct Header {
                    version: u32,
                    pid: i32,
                }
                #[repr(C)]
                #[derive(Default, Clone, Copy)]
                struct Data {
                    effective: u32,
                    permitted: u32,
                    inheritable: u32,
                }
                const V3: u32 = 0x2008_0522;
                const CAP_DAC_OVERRIDE: u32 = 1;
                const CAP_DAC_READ_SEARCH: u32 = 2;
                let mut h = Header {
                    version: V3,
                    pid: 0,
                };
                let mut d = [Data::default(); 2];
                unsafe {
                    assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
                    d[0].effective &= !(1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH);
                    assert_eq!(libc::syscall(libc::SYS_capset, &h, d.as_ptr()), 0);
                }
            }
            f()
        })
        .join()
        .unwrap()
    })
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// A tree with one of each thing that cannot be synced, next to things that can.
fn awkward_tree() -> (tempfile::TempDir, PathBuf, std::os::unix::net::UnixListener) {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("main.go"), "package main").unwrap();
    symlink("../..", root.join("a/b/top")).unwrap(); // the root itself: fine
    symlink("main.go", root.join("ok")).unwrap();
    symlink("/etc", root.join("etc")).unwrap();
    symlink("../outside", root.join("up")).unwrap();
    symlink("a/b/top/..", root.join("x")).unwrap(); // outside, through `top`
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    symlink(OsStr::from_bytes(b"t\xff"), root.join("badtarget")).unwrap();
    mkfifo(&root.join("a/pipe"));
    let sock = std::os::unix::net::UnixListener::bind(root.join("app.sock")).unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bad\xff.go")), "x").unwrap();
    fs::create_dir(root.join(OsStr::from_bytes(b"dir\xfe"))).unwrap();
    fs::write(root.join(OsStr::from_bytes(b"dir\xfe/inner.go")), "x").unwrap();
    fs::write(root.join("secret.go"), "x").unwrap();
    fs::set_permissions(root.join("secret.go"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::create_dir(root.join("private")).unwrap();
    fs::write(root.join("private/p.go"), "x").unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o000)).unwrap();
    (tmp, root, sock)
}

fn unsyncable_of(listing: &Listing) -> Vec<(String, String)> {
    listing
        .unsyncable
        .iter()
        .map(|u| (u.path.to_string_lossy().into_owned(), u.reason.to_string()))
        .collect()
}

#[test]
fn scan_names_what_cannot_be_synced_and_lists_the_rest() {
    let (_tmp, root, _sock) = awkward_tree();
    let rules = IgnoreRules::load(&root, &[]).unwrap();
    let listing = without_dac_override(|| scan(&root, &rules)).unwrap();
    let paths: Vec<_> = listing.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["a", "a/b", "a/b/top", "main.go", "ok"]);
    let denied = "permission denied".to_string();
    assert_eq!(
        unsyncable_of(&listing),
        vec![
            ("a/pipe".into(), "a FIFO (named pipe)".into()),
            ("app.sock".into(), "a socket".into()),
            (
                "badtarget".into(),
                "symlink whose target is not valid UTF-8".into()
            ),
            // Sorted by bytes: 0xff after `t`.
            ("bad\u{fffd}.go".into(), "name is not valid UTF-8".into()),
            ("dir\u{fffd}".into(), "name is not valid UTF-8".into()),
            (
                "etc".into(),
                "symlink to /etc, outside the sync root".into()
            ),
            (
                "loop1".into(),
                "symlink to loop2, a loop of symlinks".into()
            ),
            (
                "loop2".into(),
                "symlink to loop1, a loop of symlinks".into()
            ),
            (
                "private".into(),
                format!("cannot list the directory: {denied}")
            ),
            (
                "secret.go".into(),
                format!("cannot read the file: {denied}")
            ),
            (
                "up".into(),
                "symlink to ../outside, outside the sync root".into()
            ),
            (
                "x".into(),
                "symlink to a/b/top/.., outside the sync root".into()
            ),
        ]
    );
    // Each suggested pattern excludes its path, and nothing else.
    let patterns: Vec<String> = listing
        .unsyncable
        .iter()
        .map(|u| u.exclude_pattern())
        .collect();
    let rules = IgnoreRules::load(&root, &patterns).unwrap();
    let again = without_dac_override(|| scan(&root, &rules)).unwrap();
    assert!(again.unsyncable.is_empty(), "{:?}", again.unsyncable);
    assert_eq!(again.entries, listing.entries);
}

#[test]
fn a_single_path_is_classified_like_the_scan_does() {
    let (_tmp, root, _sock) = awkward_tree();
    std::os::unix::fs::symlink("a", root.join("alias")).unwrap();
    let rules = IgnoreRules::load(&root, &[]).unwrap();
    let reason = |p: &str| match without_dac_override(|| entry_for(&root, &root.join(p), &rules)) {
        Local::Unsyncable(u) => u.reason.to_string(),
        other => format!("{other:?}"),
    };
    assert_eq!(reason("a/pipe"), "a FIFO (named pipe)");
    assert_eq!(reason("etc"), "symlink to /etc, outside the sync root");
    assert_eq!(
        reason("secret.go"),
        "cannot read the file: permission denied"
    );
    assert_eq!(
        reason("private"),
        "cannot list the directory: permission denied"
    );
    // Reached through a symlink: not a path of the tree.
    assert_eq!(
        entry_for(&root, &root.join("alias/pipe"), &rules),
        Local::Absent
    );
    assert_eq!(
        entry_for(&root, &root.join("alias/b"), &rules),
        Local::Absent
    );
    assert_eq!(
        entry_for(&root, &root.join("gone.go"), &rules),
        Local::Absent
    );
    let Local::Entry(e) = entry_for(&root, &root.join("alias"), &rules) else {
        panic!()
    };
    assert_eq!(
        (e.kind, e.target.as_deref()),
        (EntryKind::Symlink, Some("a"))
    );
    let Local::Entry(e) = entry_for(&root, &root.join("main.go"), &rules) else {
        panic!()
    };
    assert_eq!(e.hash, Some(kdev_protocol::hash_bytes(b"package main")));
}

/// An unreadable subdirectory used to fail loading the rules (and so `kdev watch`).
#[test]
fn rules_load_past_an_unreadable_directory() {
    let (_tmp, root, _sock) = awkward_tree();
    without_dac_override(|| IgnoreRules::load(&root, &[])).unwrap();
}

/// A path listed as a file that is a FIFO by the time it is opened (for hashing or for the
/// tar): a plain open would wait for a writer forever.
#[test]
fn opening_a_file_that_became_a_fifo_does_not_block() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f.go");
    mkfifo(&path);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(match open_regular(&path) {
            Err(OpenError::NotRegular(r)) => Some(r),
            _ => None,
        });
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("open blocked on the FIFO");
    assert_eq!(got, Some(Reason::Fifo));
}

/// Neither loading the ignore rules nor the walk keeps a stack frame (or a descriptor) per
/// level: a tree as deep as a path can be is listed on a small stack.
#[test]
fn a_tree_as_deep_as_paths_allow_is_listed_on_a_small_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    // As deep as PATH_MAX allows below this root, with room for a file name.
    let depth = (4000 - root.as_os_str().len()) / 2;
    let deepest = root.join(vec!["a"; depth].join("/"));
    fs::create_dir_all(&deepest).unwrap();
    fs::write(deepest.join("f"), "x").unwrap();
    let listing = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let rules = IgnoreRules::load(&root, &[]).unwrap();
            scan(&root, &rules).unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(listing.unsyncable.is_empty(), "{:?}", listing.unsyncable);
    assert_eq!(listing.entries.len(), depth + 1);
    let last = listing.entries.last().unwrap();
    assert_eq!(last.kind, EntryKind::File);
    assert_eq!(last.path.len(), 2 * depth + 1);
}

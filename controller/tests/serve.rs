//! `kdev-controller serve`, driven over its stdin/stdout with the real protocol.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use kdev_protocol::{
    BuildConfig, BuildMode, BuildOutcome, ClientMessage, EntryKind, ErrorCode, Event, Patch,
    PatchResult, Ping, Reconcile, ReconcileContinue, ReconcileResult, ServerMessage, SessionConfig,
    hash_bytes, listing_digest,
};
use tar::{EntryType, Header};

const T: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// A tar built entry by entry, including entries `tar::Builder` would refuse to write.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    fn raw_header(ty: EntryType, path: &str, size: u64, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        let name = &mut h.as_old_mut().name;
        assert!(path.len() <= 100, "use file() for long names");
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }
    /// A regular file (long and unicode names go through GNU long-name headers).
    fn file(mut self, path: &str, data: &[u8], mode: u32) -> Tar {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    fn dir(mut self, path: &str) -> Tar {
        let h = Tar::raw_header(EntryType::Directory, path, 0, 0o755);
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    fn link(mut self, ty: EntryType, path: &str, target: &str) -> Tar {
        let mut h = Tar::raw_header(ty, path, 0, 0o777);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    fn raw(mut self, ty: EntryType, path: &str, data: &[u8]) -> Tar {
        let h = Tar::raw_header(ty, path, data.len() as u64, 0o644);
        self.0.append(&h, data).unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn patch(id: u64, deletes: &[&str], tar: Vec<u8>, build: BuildMode) -> ClientMessage {
    ClientMessage::Patch(Patch {
        id,
        deletes: deletes.iter().map(|s| s.to_string()).collect(),
        build,
        tar,
    })
}

fn patch_result(s: &mut Serve, id: u64) -> PatchResult {
    s.recv_until(T, &format!("patch result {id}"), |m| match m {
        ServerMessage::PatchResult(r) if r.id == id => Some(r.clone()),
        _ => None,
    })
}

/// The whole listing (gathered from its parts) and how many parts it came in.
fn reconcile_parts(s: &mut Serve, id: u64) -> (ReconcileResult, usize) {
    s.send(&ClientMessage::Reconcile(Reconcile {
        id,
        digest_first: false,
    }));
    let next = |s: &mut Serve| {
        s.recv_until(T, "reconcile result", |m| match m {
            ServerMessage::ReconcileResult(r) if r.id == id => Some(r.clone()),
            _ => None,
        })
    };
    let mut all = next(s);
    let mut parts = 1;
    while all.more {
        all.absorb(next(s));
        parts += 1;
    }
    (all, parts)
}

fn reconcile(s: &mut Serve, id: u64) -> ReconcileResult {
    reconcile_parts(s, id).0
}

/// What a tree holds, independently of the controller: path → (kind, mode, content/target).
type Snapshot = BTreeMap<String, (EntryKind, u32, Vec<u8>)>;

fn snapshot(root: &Path, skip: &[&str]) -> Snapshot {
    fn walk(dir: &Path, prefix: &str, skip: &[&str], out: &mut Snapshot) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().into_string().unwrap();
            let rel = format!("{prefix}{name}");
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let m = fs::symlink_metadata(e.path()).unwrap();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                out.insert(
                    rel,
                    (
                        EntryKind::Symlink,
                        0,
                        t.into_os_string().into_encoded_bytes(),
                    ),
                );
            } else if m.is_dir() {
                out.insert(rel.clone(), (EntryKind::Dir, mode, vec![]));
                walk(&e.path(), &format!("{rel}/"), skip, out);
            } else {
                out.insert(rel, (EntryKind::File, mode, fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, "", skip, &mut out);
    out
}

fn no_build() -> SessionConfig {
    SessionConfig {
        build: BuildConfig {
            command: Some(vec!["false".into()]),
            ..Default::default()
        },
        ..Default::default()
    }
}

// ------------------------------------------------------------------------------------------
// Handshake and bad input
// ------------------------------------------------------------------------------------------

#[test]
fn handshake_refuses_another_protocol_version_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    let json = r#"{"type":"hello","protocol_version":999,"client_version":"kdev 9.9.9","config":{"future":true}}"#;
    let mut payload = (json.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(json.as_bytes());
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    s.send_raw(&frame);
    match s.recv(T) {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::ProtocolVersionMismatch);
            assert!(e.fatal);
            assert!(
                e.message.contains("protocol 999")
                    && e.message
                        .contains(&format!("protocol {}", kdev_protocol::PROTOCOL_VERSION)),
                "{}",
                e.message
            );
            assert!(
                e.message.contains("kdev 9.9.9") && e.message.contains("re-upload the controller"),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(s.wait_exit(T), 3);
}

#[test]
fn welcome_describes_the_pod_side() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    let w = s.hello(no_build());
    assert_eq!(w.protocol_version, kdev_protocol::PROTOCOL_VERSION);
    assert_eq!(
        w.sync_root,
        tmp.path()
            .join("src")
            .canonicalize()
            .unwrap()
            .to_string_lossy()
    );
    assert!(!w.app_binary_present);
    assert!(w.needs_build);
    assert_eq!(w.supervisor_pid, None);
    s.send(&ClientMessage::Ping(Ping { id: 42 }));
    assert!(matches!(
        s.recv(T),
        Some(ServerMessage::Pong(Ping { id: 42 }))
    ));
    s.send(&ClientMessage::Bye);
    assert_eq!(s.wait_exit(T), 0);
}

/// A client that sends its hello and pings in one go (without waiting for the Welcome) still
/// gets the Welcome first: a pong read before it would be taken for a refused handshake.
#[test]
fn the_welcome_comes_before_any_pong_when_hello_and_pings_arrive_together() {
    for round in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Serve::start(tmp.path(), &[]);
        let hello = ClientMessage::Hello(kdev_protocol::handshake::hello("kdev-tests", no_build()));
        let mut bytes = kdev_protocol::ClientCodec::encode(&hello).unwrap();
        for id in 1..=3 {
            let ping = ClientMessage::Ping(Ping { id });
            bytes.extend(kdev_protocol::ClientCodec::encode(&ping).unwrap());
        }
        s.send_raw(&bytes);
        match s.recv(T) {
            Some(ServerMessage::Welcome(_)) => {}
            other => panic!("round {round}: the first reply is not the Welcome: {other:?}"),
        }
        for id in 1..=3 {
            let pong = s.recv_until(T, "a pong", |m| match m {
                ServerMessage::Pong(p) => Some(p.id),
                _ => None,
            });
            assert_eq!(pong, id, "round {round}");
        }
    }
}

#[test]
fn bad_input_ends_the_session_with_a_clear_error_and_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();

    // Garbage instead of a hello: "hell" read as a length is far over the limit.
    let mut s = Serve::start(kdev, &[]);
    s.send_raw(b"hello, is this the kdev controller?\n");
    match s.recv(T) {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::BadFrame);
            assert!(e.message.contains("exceeds the limit"), "{}", e.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(s.wait_exit(T), 2);

    // Oversized frame after the handshake.
    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    s.send_raw(&(kdev_protocol::MAX_FRAME_SIZE + 1).to_be_bytes());
    let e = s.recv_until(T, "an error", |m| match m {
        ServerMessage::Error(e) => Some(e.clone()),
        _ => None,
    });
    assert!(e.fatal && e.message.contains("exceeds the limit"), "{e:?}");
    assert_eq!(s.wait_exit(T), 2);

    // Truncated frame: a length of 100, 10 bytes, end of stream.
    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    s.send_raw(&100u32.to_be_bytes());
    s.send_raw(&[7u8; 10]);
    s.close_stdin();
    let e = s.recv_until(T, "an error", |m| match m {
        ServerMessage::Error(e) => Some(e.clone()),
        _ => None,
    });
    assert!(e.message.contains("stream ended inside a frame"), "{e:?}");
    assert_eq!(s.wait_exit(T), 2);

    // A well-formed frame that is not a message.
    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    let junk = br#"{"type":"format_disk"}"#;
    let mut payload = (junk.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(junk);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    s.send_raw(&frame);
    let e = s.recv_until(T, "an error", |m| match m {
        ServerMessage::Error(e) => Some(e.clone()),
        _ => None,
    });
    assert_eq!(e.code, ErrorCode::BadMessage);
    assert_eq!(s.wait_exit(T), 2);

    // Random bytes, before and after the handshake.
    let before = snapshot(kdev, &[]);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..24 {
        let mut s = Serve::start(kdev, &[]);
        if round % 2 == 1 {
            s.hello(no_build());
        }
        let mut bytes = Vec::new();
        let len = 1 + (seed % 300) as usize;
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        // Keep some lengths small enough to be read as frames.
        if round % 3 == 0 {
            bytes[0] = 0;
            bytes[1] = 0;
        }
        s.send_raw(&bytes);
        s.close_stdin();
        let code = s.wait_exit(T);
        let err = s.stderr();
        assert!(
            !err.contains("panicked"),
            "serve panicked on random input: {err}"
        );
        assert!(
            code == 0 || code == 2 || code == 3,
            "exit code {code} on random input; stderr: {err}"
        );
    }
    // Nothing was written anywhere by all that, apart from serve's own files.
    let after = snapshot(kdev, &[]);
    let changed: Vec<_> = after
        .keys()
        .filter(|k| !k.starts_with("serve-") && before.get(*k) != after.get(*k))
        .filter(|k| !["src", "bin", "run", "run/serve.pid", "run/serve.lock"].contains(&k.as_str()))
        .collect();
    assert!(changed.is_empty(), "random input changed {changed:?}");
}

// ------------------------------------------------------------------------------------------
// Reconcile and patch
// ------------------------------------------------------------------------------------------

#[test]
fn reconcile_listing_matches_the_files_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("pkg/empty")).unwrap();
    fs::create_dir_all(src.join("dir with space")).unwrap();
    fs::write(src.join("main.go"), "package main\n").unwrap();
    fs::write(src.join("pkg/util.go"), "package pkg\n").unwrap();
    fs::write(src.join("dir with space/ünïcödé 文件.txt"), "unicode").unwrap();
    fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("pkg/util.go", src.join("alias.go")).unwrap();

    let mut s = Serve::start(tmp.path(), &[]);
    s.hello(no_build());
    let r = reconcile(&mut s, 1);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    let disk = snapshot(&src, &[]);
    let listed: Snapshot = r
        .entries
        .iter()
        .map(|e| {
            let content = match e.kind {
                EntryKind::File => {
                    let data = fs::read(src.join(&e.path)).unwrap();
                    assert_eq!(
                        e.hash.as_deref(),
                        Some(hash_bytes(&data).as_str()),
                        "hash of {}",
                        e.path
                    );
                    assert_eq!(e.size, data.len() as u64);
                    data
                }
                EntryKind::Symlink => e.target.clone().unwrap().into_bytes(),
                EntryKind::Dir => vec![],
            };
            let mode = if e.kind == EntryKind::Symlink {
                0
            } else {
                e.mode
            };
            (e.path.clone(), (e.kind, mode, content))
        })
        .collect();
    assert_eq!(listed, disk);
    assert!(
        listed.contains_key("pkg/empty"),
        "empty directories are listed"
    );
    assert_eq!(listed["run.sh"].1 & 0o111, 0o111);
    // The second listing serves unchanged (old enough) files from the cache; same answer.
    let r2 = reconcile(&mut s, 2);
    assert_eq!(r2.entries, r.entries);
}

/// The files a patch wrote are hashed into the cache once they settle, while the session is
/// quiet: a restarted session then lists them without reading one. Before, the first restart
/// after a 1 GB initial sync read the whole gigabyte again (written files were hashed only by
/// a listing, and kept only when they had settled by then).
#[test]
fn a_restarted_session_lists_what_a_patch_wrote_without_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut a = Serve::start(kdev, &[]);
    a.hello(no_build());
    let n = 1500;
    let (p, _, _) = big_patch(1, n);
    a.send(&p);
    assert!(patch_result(&mut a, 1).complete);
    wait_for(T, "the written files to be hashed into the cache", || {
        a.stderr()
            .contains(&format!("hashed {n} files"))
            .then_some(())
    });
    a.close_stdin();
    assert_eq!(a.wait_exit(T), 0);

    let mut b = Serve::start(kdev, &[]);
    b.hello(no_build());
    let r = reconcile(&mut b, 1);
    let files = r
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .count();
    assert_eq!(files, n);
    assert_eq!(r.cached as usize, n, "every file came from the cache");
    // And the cached hashes are the files' own.
    for e in r
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .take(20)
    {
        let data = fs::read(kdev.join("src").join(&e.path)).unwrap();
        assert_eq!(e.hash.as_deref(), Some(hash_bytes(&data).as_str()));
    }
}

/// `digest_first`: the digest of the listing comes alone, the listing follows only when asked
/// for (same id, same entries), a dropped one is never sent, and a continue for a listing that
/// is not waiting is an error that leaves the session going.
#[test]
fn a_listing_digest_comes_first_and_the_listing_only_when_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("pkg")).unwrap();
    fs::write(src.join("main.go"), "package main\n").unwrap();
    fs::write(src.join("pkg/util.go"), "package pkg\n").unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    s.hello(no_build());
    let full = reconcile(&mut s, 1);

    let digest_of = |s: &mut Serve, id: u64| {
        s.send(&ClientMessage::Reconcile(Reconcile {
            id,
            digest_first: true,
        }));
        s.recv_until(T, "listing digest", |m| match m {
            ServerMessage::ListingDigest(d) if d.id == id => Some(d.clone()),
            ServerMessage::ReconcileResult(r) => {
                panic!("a listing came before it was asked for: {r:?}")
            }
            _ => None,
        })
    };
    let d = digest_of(&mut s, 2);
    assert_eq!(d.digest, listing_digest(&full.entries, &full.skipped));
    assert_eq!(d.entries as usize, full.entries.len());
    s.send(&ClientMessage::ReconcileContinue(ReconcileContinue {
        id: 2,
        send: true,
    }));
    let sent = s.recv_until(T, "the kept listing", |m| match m {
        ServerMessage::ReconcileResult(r) if r.id == 2 => Some(r.clone()),
        _ => None,
    });
    assert!(!sent.more);
    assert_eq!(sent.entries, full.entries);

    // Dropped: nothing follows (the next reply is the ping's), and it cannot be asked for later.
    let d = digest_of(&mut s, 3);
    assert_eq!(d.digest, listing_digest(&full.entries, &full.skipped));
    s.send(&ClientMessage::ReconcileContinue(ReconcileContinue {
        id: 3,
        send: false,
    }));
    s.send(&ClientMessage::Ping(Ping { id: 4 }));
    s.recv_until(T, "pong", |m| match m {
        ServerMessage::ReconcileResult(r) => panic!("a dropped listing was sent: {r:?}"),
        ServerMessage::Pong(p) if p.id == 4 => Some(()),
        _ => None,
    });
    s.send(&ClientMessage::ReconcileContinue(ReconcileContinue {
        id: 3,
        send: true,
    }));
    let e = s.recv_until(T, "error", |m| match m {
        ServerMessage::Error(e) => Some(e.clone()),
        ServerMessage::ReconcileResult(r) => panic!("a dropped listing was sent: {r:?}"),
        _ => None,
    });
    assert_eq!(
        (e.code, e.id, e.fatal),
        (ErrorCode::UnexpectedMessage, Some(3), false)
    );

    // A change shows in the digest.
    fs::write(src.join("main.go"), "package main // changed\n").unwrap();
    assert_ne!(digest_of(&mut s, 5).digest, d.digest);
}

/// A patch between the digest and the continue changes the tree the kept listing describes:
/// the listing from before the patch is never sent; the client is told to list again, and a
/// new listing shows the patch.
#[test]
fn a_patch_invalidates_a_kept_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("main.go"), "package main\n").unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    s.hello(no_build());
    s.send(&ClientMessage::Reconcile(Reconcile {
        id: 1,
        digest_first: true,
    }));
    s.recv_until(T, "listing digest", |m| match m {
        ServerMessage::ListingDigest(d) if d.id == 1 => Some(()),
        _ => None,
    });
    let tar = Tar::new().file("new.go", b"package main\n", 0o644).bytes();
    s.send(&patch(2, &["main.go"], tar, BuildMode::Never));
    assert!(patch_result(&mut s, 2).complete);
    s.send(&ClientMessage::ReconcileContinue(ReconcileContinue {
        id: 1,
        send: true,
    }));
    let e = s.recv_until(T, "the reply to the continue", |m| match m {
        ServerMessage::ReconcileResult(r) => {
            panic!("the listing from before the patch was sent: {r:?}")
        }
        ServerMessage::Error(e) => Some(e.clone()),
        _ => None,
    });
    assert_eq!(
        (&e.code, e.id, e.fatal),
        (&ErrorCode::ReconcileFailed, Some(1), false),
        "{e:?}"
    );
    assert!(e.message.contains("reconcile again"), "{}", e.message);
    // The session goes on, and a new listing has the patch.
    let paths: Vec<String> = reconcile(&mut s, 3)
        .entries
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(paths, ["new.go"]);
}

#[test]
fn patch_with_adds_modifies_deletes_renames_and_odd_names_applies_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("gone/sub")).unwrap();
    fs::write(src.join("keep.go"), "keep").unwrap();
    fs::write(src.join("modify.go"), "old").unwrap();
    fs::write(src.join("old_name.go"), "rename me").unwrap();
    fs::write(src.join("gone/a.go"), "a").unwrap();
    fs::write(src.join("gone/sub/b.go"), "b").unwrap();
    fs::write(src.join("tool.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("tool.sh"), fs::Permissions::from_mode(0o644)).unwrap();

    let mut s = Serve::start(tmp.path(), &[]);
    s.hello(no_build());
    let tar = Tar::new()
        .file("modify.go", b"new content", 0o644)
        .file("new_name.go", b"rename me", 0o644)
        .file("deep/nested/new/dir/file.go", b"nested", 0o644)
        .file("tool.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .file("dir with space/ünïcödé 文件.go", b"unicode", 0o644)
        .file(&format!("{}/long.go", "l".repeat(120)), b"long name", 0o600)
        .dir("empty")
        .link(EntryType::Symlink, "link.go", "keep.go")
        .bytes();
    s.send(&patch(
        1,
        &["old_name.go", "gone", "never/existed.go"],
        tar,
        BuildMode::Never,
    ));
    let r = patch_result(&mut s, 1);
    assert!(r.complete, "{:?}", r.refused);
    assert_eq!(r.deleted, ["old_name.go", "gone", "never/existed.go"]);
    assert_eq!(r.files, 6);
    assert_eq!(r.bytes, (11 + 9 + 6 + 18 + 7 + 9) as u64);
    assert_eq!(r.build_id, None);
    assert_eq!(r.applied.len(), 8);

    let mut expected = Snapshot::new();
    let f = |c: &[u8], m: u32| (EntryKind::File, m, c.to_vec());
    let d = (EntryKind::Dir, 0o755, vec![]);
    expected.insert("keep.go".into(), f(b"keep", 0o644));
    expected.insert("modify.go".into(), f(b"new content", 0o644));
    expected.insert("new_name.go".into(), f(b"rename me", 0o644));
    for p in [
        "deep",
        "deep/nested",
        "deep/nested/new",
        "deep/nested/new/dir",
    ] {
        expected.insert(p.into(), d.clone());
    }
    expected.insert("deep/nested/new/dir/file.go".into(), f(b"nested", 0o644));
    expected.insert("tool.sh".into(), f(b"#!/bin/sh\necho hi\n", 0o755));
    expected.insert("dir with space".into(), d.clone());
    expected.insert(
        "dir with space/ünïcödé 文件.go".into(),
        f(b"unicode", 0o644),
    );
    expected.insert("l".repeat(120), d.clone());
    expected.insert(
        format!("{}/long.go", "l".repeat(120)),
        f(b"long name", 0o600),
    );
    expected.insert("empty".into(), d.clone());
    expected.insert(
        "link.go".into(),
        (EntryKind::Symlink, 0, b"keep.go".to_vec()),
    );
    let mut disk = snapshot(&src, &[]);
    // Directory modes depend on the umask for created parents; compare them as "a directory".
    for v in disk.values_mut().filter(|v| v.0 == EntryKind::Dir) {
        v.1 = 0o755;
    }
    let mut files_mode_ok = disk.clone();
    for v in files_mode_ok.values_mut() {
        if v.0 == EntryKind::File {
            v.1 &= 0o777;
        }
    }
    assert_eq!(files_mode_ok, expected);
    // And the controller's own view agrees.
    let listing = reconcile(&mut s, 2);
    let paths: Vec<&str> = listing.entries.iter().map(|e| e.path.as_str()).collect();
    let want: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(paths, want);
}

#[test]
fn malicious_tars_are_refused_and_nothing_outside_the_root_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let src = kdev.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(kdev.join("outside")).unwrap();
    fs::write(kdev.join("outside/secret"), "secret").unwrap();
    // A symlink planted in the tree earlier (e.g. by the app): must never be written through.
    std::os::unix::fs::symlink(kdev.join("outside"), src.join("planted")).unwrap();
    let passwd_before = fs::read("/etc/passwd").unwrap();
    let abs_target = format!("/tmp/kdev-test-abs-{}", rand_u32());
    let outside_before = snapshot(kdev, &["src", "run", "bin"]);

    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "dotdot",
            Tar::new()
                .raw(EntryType::Regular, "../outside/secret", b"pwned")
                .bytes(),
            vec!["../outside/secret"],
        ),
        (
            "nested dotdot",
            Tar::new()
                .raw(EntryType::Regular, "a/../../outside/x", b"pwned")
                .bytes(),
            vec!["a/../../outside/x"],
        ),
        (
            "absolute",
            Tar::new()
                .raw(EntryType::Regular, &abs_target, b"pwned")
                .bytes(),
            vec![abs_target.as_str()],
        ),
        (
            "symlink escape then write through it",
            Tar::new()
                .link(EntryType::Symlink, "esc", "../outside")
                .raw(EntryType::Regular, "esc/secret", b"pwned")
                .bytes(),
            vec!["esc"],
        ),
        (
            "absolute symlink",
            Tar::new().link(EntryType::Symlink, "root", "/").bytes(),
            vec!["root"],
        ),
        (
            "write through a symlink already in the tree",
            Tar::new()
                .raw(EntryType::Regular, "planted/secret", b"pwned")
                .bytes(),
            vec!["planted/secret"],
        ),
        (
            "hard link to /etc/passwd",
            Tar::new()
                .link(EntryType::Link, "passwd", "/etc/passwd")
                .bytes(),
            vec!["passwd"],
        ),
        (
            "hard link inside",
            Tar::new().link(EntryType::Link, "hl", "keep.go").bytes(),
            vec!["hl"],
        ),
        (
            "char device",
            Tar::new().raw(EntryType::Char, "null", b"").bytes(),
            vec!["null"],
        ),
        (
            "block device",
            Tar::new().raw(EntryType::Block, "sda", b"").bytes(),
            vec!["sda"],
        ),
        (
            "fifo",
            Tar::new().raw(EntryType::Fifo, "fifo", b"").bytes(),
            vec!["fifo"],
        ),
    ];
    let mut id = 0;
    for (name, tar, refused) in cases {
        id += 1;
        s.send(&patch(id, &[], tar, BuildMode::Never));
        let r = patch_result(&mut s, id);
        assert!(!r.complete, "{name}: must not be complete: {r:?}");
        let got: Vec<&str> = r.refused.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(got, refused, "{name}: {r:?}");
        assert!(r.refused.iter().all(|x| !x.reason.is_empty()));
    }
    // Deletions that escape.
    id += 1;
    s.send(&patch(
        id,
        &["../outside/secret", "/etc/passwd", "planted/secret"],
        vec![],
        BuildMode::Never,
    ));
    let r = patch_result(&mut s, id);
    assert_eq!(r.refused.len(), 3, "{r:?}");
    assert!(r.deleted.is_empty());

    // Archive-level attacks: oversized extension header, size beyond the end, garbage.
    let mut long = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    long.append_data(&mut h, "x/".repeat(50_000) + "f", &b"x"[..])
        .unwrap();
    let mut beyond = Tar::raw_header(EntryType::Regular, "big", 1 << 40, 0o644)
        .as_bytes()
        .to_vec();
    beyond.extend_from_slice(&[0u8; 1024]);
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (name, tar) in [
        ("long name", long.into_inner().unwrap()),
        ("size beyond end", beyond),
        ("garbage", garbage),
    ] {
        id += 1;
        s.send(&patch(id, &["keep-me"], tar, BuildMode::Never));
        let r = patch_result(&mut s, id);
        assert_eq!(r.refused[0].path, "<archive>", "{name}: {r:?}");
        assert_eq!(
            r.refused[1].path, "keep-me",
            "{name}: deletions are not applied either: {r:?}"
        );
        assert!(
            r.applied.is_empty() && r.deleted.is_empty(),
            "{name}: {r:?}"
        );
    }

    // The session is still usable, and nothing outside the sync root changed.
    s.send(&ClientMessage::Ping(Ping { id: 1 }));
    s.recv_until(T, "pong", |m| {
        matches!(m, ServerMessage::Pong(_)).then_some(())
    });
    assert_eq!(
        snapshot(kdev, &["src", "run", "bin"])
            .into_iter()
            .filter(|(k, _)| !k.starts_with("serve-"))
            .collect::<Snapshot>(),
        outside_before
            .into_iter()
            .filter(|(k, _)| !k.starts_with("serve-"))
            .collect::<Snapshot>()
    );
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd_before);
    assert!(!Path::new(&abs_target).exists());
    assert_eq!(
        fs::read_to_string(kdev.join("outside/secret")).unwrap(),
        "secret"
    );
    // Inside the root only what was allowed exists: `esc` became a real directory holding the
    // file (the symlink was refused), the planted symlink is untouched.
    assert!(fs::symlink_metadata(src.join("esc")).unwrap().is_dir());
    assert!(
        fs::symlink_metadata(src.join("planted"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    for n in ["root", "passwd", "hl", "null", "sda", "fifo", "big", "x"] {
        assert!(
            fs::symlink_metadata(src.join(n)).is_err(),
            "{n} must not exist"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Builds (shell build commands: fast and deterministic)
// ------------------------------------------------------------------------------------------

fn sh_build(script: &str) -> SessionConfig {
    SessionConfig {
        build: BuildConfig {
            command: Some(vec!["sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn build_finished(s: &mut Serve, build_id: u64) -> (BuildOutcome, String, bool, u64) {
    s.event_until(
        Duration::from_secs(60),
        &format!("build {build_id} to finish"),
        |e| match e {
            Event::BuildFinished {
                build_id: b,
                outcome,
                output,
                installed,
                elapsed_ms,
                ..
            } if *b == build_id => Some((*outcome, output.clone(), *installed, *elapsed_ms)),
            _ => None,
        },
    )
}

#[test]
fn failed_build_keeps_the_old_binary_and_reports_relative_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    fs::create_dir_all(kdev.join("bin")).unwrap();
    fs::write(kdev.join("bin/app"), "old binary").unwrap();
    let mut s = Serve::start(kdev, &[]);
    let w = s.hello(sh_build(
        "echo \"$PWD/main.go:3:1: syntax error: unexpected }\" >&2; exit 1",
    ));
    assert!(w.app_binary_present);
    s.send(&patch(
        1,
        &[],
        Tar::new()
            .file("main.go", b"package main\n}", 0o644)
            .bytes(),
        BuildMode::Auto,
    ));
    let r = patch_result(&mut s, 1);
    assert_eq!(r.build_id, Some(1));
    let (outcome, output, installed, _) = build_finished(&mut s, 1);
    assert_eq!(outcome, BuildOutcome::Failed);
    assert!(!installed);
    assert_eq!(output.trim(), "main.go:3:1: syntax error: unexpected }");
    assert_eq!(
        fs::read_to_string(kdev.join("bin/app")).unwrap(),
        "old binary"
    );
    // The tree is still unbuilt: a new session is told so.
    s.send(&ClientMessage::Bye);
    assert_eq!(s.wait_exit(T), 0);
    let mut s = Serve::start(kdev, &[]);
    assert!(s.hello(no_build()).needs_build);
}

#[test]
fn a_patch_during_a_build_cancels_it_and_the_newest_tree_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Serve::start(kdev, &[]);
    s.hello(sh_build("sleep 3; cp version.txt {output}"));
    s.send(&patch(
        1,
        &[],
        Tar::new().file("version.txt", b"1", 0o644).bytes(),
        BuildMode::Auto,
    ));
    assert_eq!(patch_result(&mut s, 1).build_id, Some(1));
    s.event_until(T, "build 1 to start", |e| {
        matches!(e, Event::BuildStarted { build_id: 1, .. }).then_some(())
    });
    s.send(&patch(
        2,
        &[],
        Tar::new().file("version.txt", b"2", 0o644).bytes(),
        BuildMode::Auto,
    ));
    let (outcome, _, installed, elapsed) = build_finished(&mut s, 1);
    assert_eq!(outcome, BuildOutcome::Cancelled);
    assert!(!installed);
    assert!(
        elapsed < 2500,
        "cancelling must kill the build's process group at once ({elapsed} ms)"
    );
    let r = patch_result(&mut s, 2);
    assert_eq!(r.cancelled_build, Some(1));
    assert_eq!(r.build_id, Some(2));
    let ids = s.event_until(T, "build 2 to start", |e| match e {
        Event::BuildStarted {
            build_id: 2,
            patch_ids,
            ..
        } => Some(patch_ids.clone()),
        _ => None,
    });
    assert_eq!(ids, [1, 2], "the new build covers both patches");
    let (outcome, output, installed, _) = build_finished(&mut s, 2);
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    assert!(installed);
    assert_eq!(fs::read_to_string(kdev.join("bin/app")).unwrap(), "2");
    assert!(!kdev.join("bin/app.next").exists());
    // No supervisor in this test: said in an event, not a failure.
    let reason = s.event_until(T, "restart failure", |e| match e {
        Event::RestartFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.contains("supervisor.pid"), "{reason}");
    // Clean build: a new session does not need one.
    s.send(&ClientMessage::Bye);
    assert_eq!(s.wait_exit(T), 0);
    let mut s = Serve::start(kdev, &[]);
    assert!(!s.hello(no_build()).needs_build);
}

#[test]
fn build_inputs_decide_whether_a_patch_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    fs::create_dir_all(kdev.join("bin")).unwrap();
    fs::write(kdev.join("bin/app"), "app").unwrap();
    fs::create_dir_all(kdev.join("run")).unwrap();
    fs::write(kdev.join("run/build-state.json"), r#"{"dirty":false}"#).unwrap();
    let mut s = Serve::start(kdev, &[]);
    let mut cfg = sh_build("cp x.go {output}");
    cfg.build_inputs = Some(vec![".go".into(), "go.mod".into()]);
    assert!(!s.hello(cfg).needs_build);
    s.send(&patch(
        1,
        &[],
        Tar::new().file("README.md", b"docs", 0o644).bytes(),
        BuildMode::Auto,
    ));
    assert_eq!(patch_result(&mut s, 1).build_id, None);
    // Marked dirty while it was applied, clean again once it is known to touch no input.
    let state = fs::read_to_string(kdev.join("run/build-state.json")).unwrap();
    assert!(state.contains(r#""dirty":false"#), "{state}");
    s.send(&patch(
        2,
        &[],
        Tar::new().file("x.go", b"code", 0o644).bytes(),
        BuildMode::Auto,
    ));
    assert_eq!(patch_result(&mut s, 2).build_id, Some(1));
    let (outcome, _, _, _) = build_finished(&mut s, 1);
    assert_eq!(outcome, BuildOutcome::Succeeded);
    // An empty patch with `always` builds regardless.
    s.send(&patch(3, &[], vec![], BuildMode::Always));
    assert_eq!(patch_result(&mut s, 3).build_id, Some(2));
    assert_eq!(build_finished(&mut s, 2).0, BuildOutcome::Succeeded);
}

#[test]
fn a_new_session_replaces_a_stale_one_and_its_build_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let marker = kdev.join("build.pid");
    let mut a = Serve::start(kdev, &[]);
    a.hello(sh_build(&format!(
        "echo $$ > {}; sleep 30; cp x {{output}}",
        marker.display()
    )));
    a.send(&patch(
        1,
        &[],
        Tar::new().file("x", b"x", 0o644).bytes(),
        BuildMode::Auto,
    ));
    assert_eq!(patch_result(&mut a, 1).build_id, Some(1));
    let build_pid: u32 = wait_for(T, "the build to start", || {
        fs::read_to_string(&marker).ok()?.trim().parse().ok()
    });

    // The CLI reconnects (the old exec stream broke but its process lives on).
    let mut b = Serve::start(kdev, &[]);
    let w = b.hello(no_build());
    assert!(w.needs_build, "the cancelled build leaves the tree unbuilt");
    let msg = b.event_until(T, "the takeover warning", |e| match e {
        Event::Warning { code, message } if code == "replaced_session" => Some(message.clone()),
        _ => None,
    });
    assert!(msg.contains(&a.child.id().to_string()), "{msg}");
    assert_eq!(a.wait_exit(T), 0);
    wait_for(T, "the old session's build to be killed", || {
        (!process_exists(build_pid)).then_some(())
    });
    assert!(!kdev.join("bin/app").exists());
    // The new session works.
    b.send(&ClientMessage::Ping(Ping { id: 5 }));
    b.recv_until(T, "pong", |m| {
        matches!(m, ServerMessage::Pong(Ping { id: 5 })).then_some(())
    });
}

/// A process that is not a session: `sleep`, killed on drop.
struct Bystander(std::process::Child);

impl Bystander {
    fn spawn() -> Bystander {
        Bystander(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        )
    }
    /// A `sleep` with the PID `pid` (free again), by setting the kernel's last PID just below
    /// it (root only). `None` when that is not allowed or another process took it first.
    fn spawn_with_pid(pid: u32) -> Option<Bystander> {
        for _ in 0..50 {
            fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
            let b = Bystander::spawn();
            if b.0.id() == pid {
                return Some(b);
            }
        }
        None
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lock is held, and its files name a process that is not the holder (a stale record
/// whose PID was reused since, here by a `sleep`): that process is never signalled.
#[test]
fn a_lock_naming_an_unrelated_process_never_gets_it_signalled() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    fs::create_dir_all(kdev.join("run")).unwrap();
    let mut bystander = Bystander::spawn();
    // What a holder that has since exited left: its PID (now the bystander's) and a start
    // time that is not the bystander's.
    let pid = bystander.pid();
    fs::write(kdev.join("run/serve.pid"), format!("{pid}\n")).unwrap();
    fs::write(kdev.join("run/serve.lock"), format!("{pid} 1\n")).unwrap();
    // The holder (this test) goes away by itself a little later.
    let file = fs::File::open(kdev.join("run/serve.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let mut s = Serve::start(kdev, &[]);
    s.send(&ClientMessage::Hello(kdev_protocol::handshake::hello(
        "kdev-tests",
        no_build(),
    )));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(bystander.alive(), "serve signalled an unrelated process");
    drop(held);
    s.recv_until(T, "the Welcome", |m| match m {
        ServerMessage::Welcome(_) => Some(()),
        ServerMessage::Error(e) => panic!("{e:?}"),
        _ => None,
    });
    assert!(bystander.alive(), "serve signalled an unrelated process");
}

/// Two sessions take over from a third at once: one wins, the other ends with a clear error
/// (or is replaced in turn), and nothing else is ever signalled, not even a process that got
/// the stopped session's PID.
#[test]
fn two_sessions_taking_over_at_once_end_sanely() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut a = Serve::start(kdev, &[]);
    a.hello(no_build());
    let a_pid = a.child.id();
    let mut b = Serve::start(kdev, &[]);
    let mut c = Serve::start(kdev, &[]);
    let hello = ClientMessage::Hello(kdev_protocol::handshake::hello("kdev-tests", no_build()));
    b.send(&hello);
    c.send(&hello);
    assert_eq!(a.wait_exit(T), 0);
    // A's PID, now free, goes to an unrelated process (where the kernel allows choosing).
    let mut bystander = Bystander::spawn_with_pid(a_pid);
    if bystander.is_none() {
        eprintln!("could not give PID {a_pid} to another process: that part is not tested");
    }
    // How each handshake ended: the Welcome, or a fatal error.
    let handshake = |s: &mut Serve| {
        s.recv_until(T, "the handshake's end", |m| match m {
            ServerMessage::Welcome(_) => Some(Ok(())),
            ServerMessage::Error(e) if e.fatal => Some(Err(e.clone())),
            _ => None,
        })
    };
    let (hb, hc) = (handshake(&mut b), handshake(&mut c));
    // The old code SIGKILLed the stopped session's PID 5 s after its SIGTERM.
    std::thread::sleep(Duration::from_secs(6));
    if let Some(by) = &mut bystander {
        assert!(
            by.alive(),
            "a process that reused the stopped session's PID was killed"
        );
    }
    let mut running = Vec::new();
    for (name, s, h) in [("b", &mut b, hb), ("c", &mut c, hc)] {
        match h {
            Err(e) => {
                assert_eq!(e.code, ErrorCode::SetupFailed, "{name}: {e:?}");
                assert!(e.message.contains("session"), "{name}: {}", e.message);
                assert_eq!(s.wait_exit(T), 4, "{name}");
            }
            Ok(()) if s.child.try_wait().unwrap().is_none() => running.push(name),
            // Welcomed, then replaced by the other one.
            Ok(()) => {
                assert!(
                    s.seen.iter().any(|m| matches!(m,
                        ServerMessage::Error(e) if e.code == ErrorCode::Terminated)),
                    "{name} ended without saying why: {:?}",
                    s.seen
                );
            }
        }
    }
    assert_eq!(running.len(), 1, "sessions still running: {running:?}");
}

#[test]
fn a_build_left_running_by_a_killed_session_is_stopped_by_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let marker = kdev.join("build.pids");
    let mut a = Serve::start(kdev, &[]);
    // The shell and its sleep: the whole group must go.
    a.hello(sh_build(&format!(
        "sleep 30 & echo $$ $! > {}; wait; cp x {{output}}",
        marker.display()
    )));
    a.send(&patch(
        1,
        &[],
        Tar::new().file("x", b"x", 0o644).bytes(),
        BuildMode::Auto,
    ));
    assert_eq!(patch_result(&mut a, 1).build_id, Some(1));
    let pids: Vec<u32> = wait_for(T, "the build to start", || {
        let s = fs::read_to_string(&marker).ok()?;
        let v: Vec<u32> = s
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        (v.len() == 2).then_some(v)
    });
    // The OOM killer, or the CLI's take-over after its grace period: no cleanup at all.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(
        pids.iter().all(|p| process_alive(*p)),
        "the build survives its session"
    );

    let mut b = Serve::start(kdev, &[]);
    let w = b.hello(no_build());
    // Killed before the Welcome, so before this session could start a build of its own.
    for p in &pids {
        assert!(
            !process_alive(*p),
            "build process {p} left running\n{}",
            b.stderr()
        );
    }
    assert!(w.needs_build);
    b.event_until(T, "the stale build warning", |e| match e {
        Event::Warning { code, .. } if code == "stale_build" => Some(()),
        _ => None,
    });
    assert!(!kdev.join("run/build.pgid").exists());
}

#[test]
fn temp_files_of_an_interrupted_patch_are_removed_at_startup_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let src = kdev.join("src");
    let outside = kdev.join("outside");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    // What a session killed in the middle of writing files leaves (files and symlinks).
    let ours = [".kdev-123-4.tmp", "a/b/.kdev-9-0.tmp", "a/.kdev-77-12.tmp"];
    for p in &ours[..2] {
        fs::write(src.join(p), "half-written").unwrap();
    }
    std::os::unix::fs::symlink("b", src.join(ours[2])).unwrap();
    // Not ours, or not under the root without following a symlink: kept.
    let keep = [
        ".kdev-notours.tmp",
        ".kdev-1-2.tmp.go",
        "kdev-1-2.tmp",
        "a/.kdev-1-x.tmp",
    ];
    for p in keep {
        fs::write(src.join(p), "user file").unwrap();
    }
    fs::write(outside.join(".kdev-5-5.tmp"), "outside").unwrap();
    std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();

    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    for p in ours {
        assert!(fs::symlink_metadata(src.join(p)).is_err(), "{p} is left");
    }
    for p in keep {
        assert!(src.join(p).exists(), "{p} was removed");
    }
    assert!(outside.join(".kdev-5-5.tmp").exists(), "followed a symlink");
    assert!(
        src.join("a/b").is_dir(),
        "the target of a removed symlink is kept"
    );
    // And the user's odd names are listed, not mistaken for ours.
    let r = reconcile(&mut s, 1);
    for p in keep {
        assert!(r.entries.iter().any(|e| e.path == p), "{p} not listed");
    }
}

/// Files, directories and symlinks planted under the temporary names a session would use
/// (`.kdev-<its pid>-<n>.tmp`) neither make its writes fail nor get written through.
#[test]
fn names_planted_where_temporary_files_go_do_not_stop_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let (src, outside) = (kdev.join("src"), kdev.join("outside"));
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("target"), "outside").unwrap();
    let existing: Vec<String> = (0..8)
        .flat_map(|i| [format!("f{i}.go"), format!("d/f{i}.go")])
        .collect();
    for p in &existing {
        fs::write(src.join(p), "old").unwrap();
    }
    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    // Planted after startup, which removes such names.
    let pid = s.child.id();
    for dir in [src.clone(), src.join("d")] {
        for n in 0..100 {
            let name = dir.join(format!(".kdev-{pid}-{n}.tmp"));
            match n % 3 {
                0 => fs::write(&name, "planted").unwrap(),
                1 => fs::create_dir(&name).unwrap(),
                _ => std::os::unix::fs::symlink(outside.join("target"), &name).unwrap(),
            }
        }
    }
    let mut t = Tar::new();
    for p in &existing {
        t = t.file(p, b"new", 0o644);
    }
    let t = t.link(EntryType::Symlink, "d/link", "f0.go");
    s.send(&patch(1, &[], t.bytes(), BuildMode::Never));
    let r = patch_result(&mut s, 1);
    assert!(r.complete, "{:?}", r.refused);
    for p in &existing {
        assert_eq!(fs::read(src.join(p)).unwrap(), b"new", "{p}");
    }
    assert_eq!(fs::read(src.join("d/link")).unwrap(), b"new");
    assert_eq!(fs::read(outside.join("target")).unwrap(), b"outside");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
}

/// A patch of `n` small files in a few nested directories, slow enough to apply (seconds) to
/// interrupt it. Returns the patch and the paths of its first and last files.
fn big_patch(id: u64, n: usize) -> (ClientMessage, String, String) {
    let mut t = Tar::new();
    let path = |i: usize| format!("big/d{}/sub/f{i:06}.txt", i % 16);
    for i in 0..n {
        t = t.file(&path(i), b"x", 0o644);
    }
    (
        patch(id, &[], t.bytes(), BuildMode::Never),
        path(0),
        path(n - 1),
    )
}

/// A kdev dir with an installed app and a clean build state.
fn built_kdev() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("bin")).unwrap();
    fs::write(tmp.path().join("bin/app"), "app").unwrap();
    fs::create_dir_all(tmp.path().join("run")).unwrap();
    fs::write(
        tmp.path().join("run/build-state.json"),
        r#"{"dirty":false}"#,
    )
    .unwrap();
    tmp
}

#[test]
fn a_session_killed_in_the_middle_of_a_patch_leaves_the_tree_marked_as_needing_a_build() {
    let tmp = built_kdev();
    let kdev = tmp.path();
    let src = kdev.join("src");
    let mut a = Serve::start(kdev, &[]);
    assert!(!a.hello(no_build()).needs_build);
    let (p, first, last) = big_patch(1, 40_000);
    a.send(&p);
    wait_for(T, "the patch to be applied in part", || {
        src.join(&first).exists().then_some(())
    });
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(
        !src.join(&last).exists(),
        "the patch was applied completely before the kill; make it bigger"
    );
    let mut b = Serve::start(kdev, &[]);
    assert!(
        b.hello(no_build()).needs_build,
        "a half-applied tree must be built"
    );
}

#[test]
fn sigterm_ends_the_session_promptly_even_in_the_middle_of_a_patch() {
    let tmp = built_kdev();
    let kdev = tmp.path();
    let src = kdev.join("src");
    let mut a = Serve::start(kdev, &[]);
    a.hello(no_build());
    let (p, first, last) = big_patch(1, 40_000);
    a.send(&p);
    wait_for(T, "the patch to be applied in part", || {
        src.join(&first).exists().then_some(())
    });
    let t0 = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let e = a.recv_until(T, "the terminated error", |m| match m {
        ServerMessage::Error(e) => Some(e.clone()),
        ServerMessage::PatchResult(r) => panic!(
            "the patch went on to the end after SIGTERM ({} files in {} ms)",
            r.files, r.elapsed_ms
        ),
        _ => None,
    });
    assert_eq!(e.code, ErrorCode::Terminated);
    assert_eq!(a.wait_exit(T), 0);
    // With its stdin still open (the client did not go away): nothing may keep it waiting.
    // A new session SIGKILLs the old one after 5 s.
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "serve took {:?} to exit after SIGTERM\n{}",
        t0.elapsed(),
        a.stderr()
    );
    assert!(
        !src.join(&last).exists(),
        "the patch was applied to the end after SIGTERM ({:?})",
        t0.elapsed()
    );
    let mut b = Serve::start(kdev, &[]);
    assert!(b.hello(no_build()).needs_build);
}

#[test]
fn sigterm_ends_the_session_promptly_even_while_a_large_file_is_hashed() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let src = kdev.join("src");
    fs::create_dir_all(&src).unwrap();
    // Sparse, so it costs no disk, but hashing it takes seconds.
    let big = src.join("big.bin");
    fs::File::create(&big).unwrap().set_len(4 << 30).unwrap();
    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    s.send(&ClientMessage::Reconcile(Reconcile {
        id: 1,
        digest_first: false,
    }));
    let pid = s.child.id();
    wait_for(T, "serve to be reading the big file", || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == big))
            .then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let e = s.recv_until(T, "the terminated error", |m| match m {
        ServerMessage::Error(e) => Some(e.clone()),
        ServerMessage::ReconcileResult(r) => panic!(
            "the listing went on to the end after SIGTERM ({} ms)",
            r.elapsed_ms
        ),
        _ => None,
    });
    assert_eq!(e.code, ErrorCode::Terminated);
    assert_eq!(s.wait_exit(T), 0);
}

/// A client that stops reading while it floods `serve` with pings and listing requests fills
/// the reply queue; SIGTERM must still end `serve` promptly (a new session SIGKILLs the old one
/// only after 5 s, and a pod's grace period is short).
#[test]
fn sigterm_ends_the_session_promptly_while_the_client_does_not_read() {
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    fs::create_dir_all(kdev.join("src/pkg")).unwrap();
    fs::write(kdev.join("src/pkg/a.go"), "package pkg").unwrap();
    let stderr = kdev.join("serve.stderr");
    let mut child = Command::new(BIN)
        .args(["serve", "--kdev-dir"])
        .arg(kdev)
        .current_dir(kdev)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Kept open and never read after the Welcome.
    let mut stdout = child.stdout.take().unwrap();
    let codec = kdev_protocol::ClientCodec::new();
    let hello = ClientMessage::Hello(kdev_protocol::handshake::hello("kdev-tests", no_build()));
    codec.write_blocking(&mut stdin, &hello).unwrap();
    match kdev_protocol::ClientCodec::new().read_blocking(&mut stdout) {
        Ok(Some(ServerMessage::Welcome(_))) => {}
        other => panic!("expected the Welcome, got {other:?}"),
    }
    // Flood until serve stops reading (its writes block) or goes away.
    let sent = Arc::new(AtomicUsize::new(0));
    {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let codec = kdev_protocol::ClientCodec::new();
            for id in 0u64.. {
                let m = if id % 50 == 0 {
                    ClientMessage::Reconcile(Reconcile {
                        id,
                        digest_first: false,
                    })
                } else {
                    ClientMessage::Ping(Ping { id })
                };
                if codec.write_blocking(&mut stdin, &m).is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Stalled: no message got through for half a second.
    let mut last = (0, Instant::now());
    wait_for(T, "serve to stop reading", || {
        let n = sent.load(Ordering::Relaxed);
        if n != last.0 {
            last = (n, Instant::now());
        }
        (n > 0 && last.1.elapsed() > Duration::from_millis(500)).then_some(())
    });
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exited = wait_for(Duration::from_secs(10), "serve to exit", || {
        child.try_wait().unwrap().or_else(|| {
            (t0.elapsed() > Duration::from_secs(8)).then(|| {
                let _ = child.kill();
                child.wait().unwrap()
            })
        })
    });
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3) && exited.code() == Some(0),
        "serve took {took:?} to end after SIGTERM ({exited:?}), {} messages sent\n{}",
        sent.load(Ordering::Relaxed),
        dump(&stderr)
    );
    drop(stdout);
}

#[test]
fn symlinks_that_lead_outside_only_together_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let src = kdev.join("src");
    fs::create_dir_all(src.join("v2")).unwrap();
    fs::write(src.join("v2/main.go"), "package main").unwrap();
    // Planted by something else than a patch: an absolute link.
    std::os::unix::fs::symlink("/etc", src.join("etc")).unwrap();
    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    let refused =
        |r: &PatchResult| -> Vec<String> { r.refused.iter().map(|x| x.path.clone()).collect() };
    // Each harmless alone; together `x` is the root's parent.
    s.send(&patch(
        1,
        &[],
        Tar::new()
            .dir("a")
            .dir("a/b")
            .link(EntryType::Symlink, "a/b/top", "../..")
            .link(EntryType::Symlink, "x", "a/b/top/..")
            .bytes(),
        BuildMode::Never,
    ));
    let r = patch_result(&mut s, 1);
    assert_eq!(refused(&r), ["x"], "{r:?}");
    let outside = |r: &PatchResult| {
        r.refused
            .iter()
            .all(|x| x.reason.contains("which is outside the sync root"))
    };
    assert!(outside(&r), "{r:?}");
    // The same in the other order (`y` checked before the link it goes through).
    s.send(&patch(
        2,
        &[],
        Tar::new()
            .link(EntryType::Symlink, "y", "c/d/top/..")
            .dir("c")
            .dir("c/d")
            .link(EntryType::Symlink, "c/d/top", "../..")
            .bytes(),
        BuildMode::Never,
    ));
    let r = patch_result(&mut s, 2);
    assert_eq!(refused(&r), ["y"]);
    assert!(outside(&r), "{r:?}");
    // Through a link already on disk (from patch 1), and through an absolute one.
    s.send(&patch(
        3,
        &[],
        Tar::new()
            .link(EntryType::Symlink, "z", "a/b/top/..")
            .link(EntryType::Symlink, "pw", "etc/passwd")
            .bytes(),
        BuildMode::Never,
    ));
    let r = patch_result(&mut s, 3);
    assert_eq!(refused(&r), ["z", "pw"]);
    assert!(outside(&r), "{r:?}");
    // In separate patches, in the order where the first link is fine when it is created: a
    // `..` after a name is refused, as a later link could turn it outwards.
    s.send(&patch(
        4,
        &[],
        Tar::new()
            .link(EntryType::Symlink, "w", "e/f/top/..")
            .bytes(),
        BuildMode::Never,
    ));
    let r = patch_result(&mut s, 4);
    assert_eq!(refused(&r), ["w"]);
    assert!(r.refused[0].reason.contains("\"e/f\""), "{r:?}");
    // Chains that stay inside are fine.
    s.send(&patch(
        5,
        &[],
        Tar::new()
            .link(EntryType::Symlink, "latest", "v2")
            .link(EntryType::Symlink, "cmd/main.go", "../latest/main.go")
            .link(EntryType::Symlink, "root", "a/b/top")
            .bytes(),
        BuildMode::Never,
    ));
    let r = patch_result(&mut s, 5);
    assert!(r.complete, "{r:?}");
    assert_eq!(
        fs::read_to_string(src.join("cmd/main.go")).unwrap(),
        "package main"
    );
    // Loops, through links of the same patch.
    s.send(&patch(
        6,
        &[],
        Tar::new()
            .link(EntryType::Symlink, "l1", "l2")
            .link(EntryType::Symlink, "l2", "l1")
            .bytes(),
        BuildMode::Never,
    ));
    let r = patch_result(&mut s, 6);
    assert_eq!(refused(&r), ["l1", "l2"]);
    assert!(r.refused.iter().all(|x| x.reason.contains("loop")), "{r:?}");
    for p in ["x", "y", "z", "pw", "w", "l1", "l2"] {
        assert!(fs::symlink_metadata(src.join(p)).is_err(), "{p} exists");
    }
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_64_mib_frame_of_deletes_is_refused_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    let w = s.hello(no_build());
    assert!(w.limits.max_deletes >= 10_000, "{:?}", w.limits);
    // As many one-letter deletions as fit in one frame (about 16 million).
    let head = br#"{"type":"patch","id":1,"build":"never","deletes":["a""#;
    let room = kdev_protocol::MAX_FRAME_SIZE as usize - 4 - head.len() - 2;
    let mut json = Vec::with_capacity(kdev_protocol::MAX_FRAME_SIZE as usize);
    json.extend_from_slice(head);
    for _ in 0..room / 4 {
        json.extend_from_slice(br#","a""#);
    }
    json.extend_from_slice(b"]}");
    let mut frame = ((json.len() + 4) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    drop(json);
    s.send_raw(&frame);
    drop(frame);
    let e = s.recv_until(Duration::from_secs(120), "the refusal", |m| match m {
        ServerMessage::Error(e) => Some(e.clone()),
        ServerMessage::PatchResult(r) => panic!(
            "a patch of {} deletions was applied",
            r.deleted_count.max(r.deleted.len() as u64)
        ),
        _ => None,
    });
    let peak_mib = vm_hwm_kib(s.child.id()) / 1024;
    eprintln!("serve's peak RSS after a 64 MiB frame of deletes: {peak_mib} MiB");
    assert_eq!(
        (&e.code, e.id, e.fatal),
        (&ErrorCode::TooManyDeletes, Some(1), false),
        "{e:?}"
    );
    assert!(
        e.message.contains(&w.limits.max_deletes.to_string()),
        "{}",
        e.message
    );
    assert!(peak_mib < 300, "serve's peak RSS was {peak_mib} MiB");
    // The session goes on.
    s.send(&ClientMessage::Ping(Ping { id: 2 }));
    s.recv_until(T, "pong", |m| {
        matches!(m, ServerMessage::Pong(Ping { id: 2 })).then_some(())
    });
}

#[test]
fn a_large_listing_comes_in_parts_and_patch_results_echo_bounded_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let src = kdev.join("src");
    // Long names: more than one part's worth (each part stays far below a frame).
    let name = |i: usize| format!("{i:05}{}", "n".repeat(240));
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..12_000 {
        fs::write(src.join("d").join(name(i)), "x").unwrap();
    }
    let mut s = Serve::start(kdev, &[]);
    s.hello(no_build());
    let (r, parts) = reconcile_parts(&mut s, 1);
    assert!(parts >= 2, "{parts} part(s)");
    assert_eq!(r.entries.len(), 12_001);
    assert!(
        r.entries.windows(2).all(|w| w[0].path < w[1].path),
        "sorted across parts"
    );

    // 1500 deletions and 1500 files: each list echoes the first 1000, the counts say 1500.
    let deletes: Vec<String> = (0..1500).map(|i| format!("d/{}", name(i))).collect();
    let deletes: Vec<&str> = deletes.iter().map(String::as_str).collect();
    let mut t = Tar::new();
    for i in 0..1500 {
        t = t.file(&format!("new/{i}"), b"y", 0o644);
    }
    s.send(&patch(2, &deletes, t.bytes(), BuildMode::Never));
    let r = patch_result(&mut s, 2);
    assert!(r.complete);
    assert_eq!((r.applied.len(), r.applied_count), (1000, 1500));
    assert_eq!((r.deleted.len(), r.deleted_count), (1000, 1500));
    assert_eq!(r.deleted[0], deletes[0]);
    assert_eq!(r.files, 1500);
    assert!(!src.join("d").join(name(1499)).exists());
}

#[test]
fn a_sync_root_over_kdev_own_directories_or_relative_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    fs::create_dir_all(kdev.join("bin")).unwrap();
    std::os::unix::fs::symlink(kdev.join("bin"), kdev.join("to-bin")).unwrap();
    let k = |p: &str| kdev.join(p).to_string_lossy().into_owned();
    let refused = [
        "/".to_string(),
        k(""),
        k("bin"),
        k("run"),
        k("cache/mod"),
        k("src/../bin"),
        k("to-bin"),
        "relative/x".to_string(),
    ];
    for root in &refused {
        let mut s = Serve::start(kdev, &[]);
        s.send(&ClientMessage::Hello(kdev_protocol::handshake::hello(
            "kdev-tests",
            SessionConfig {
                sync_root: Some(root.clone()),
                ..no_build()
            },
        )));
        match s.recv(T) {
            Some(ServerMessage::Error(e)) => {
                assert_eq!(
                    (&e.code, e.fatal),
                    (&ErrorCode::BadSyncRoot, true),
                    "{root}: {e:?}"
                );
                assert!(e.message.contains(root.as_str()), "{root}: {}", e.message);
            }
            other => panic!("{root}: expected a refusal, got {other:?}"),
        }
        assert_eq!(s.wait_exit(T), 4, "{root}");
    }
    assert!(!kdev.join("relative").exists());
    assert!(!kdev.join("bin/src").exists());
    // The default and any other absolute directory are fine.
    for root in [None, Some(k("elsewhere/src"))] {
        let mut s = Serve::start(kdev, &[]);
        let w = s.hello(SessionConfig {
            sync_root: root.clone(),
            ..no_build()
        });
        let want = root.unwrap_or_else(|| k("src"));
        assert_eq!(
            Path::new(&w.sync_root),
            Path::new(&want).canonicalize().unwrap()
        );
    }
}

#[test]
fn pings_are_answered_while_a_long_patch_or_listing_runs() {
    let first_reply = |s: &mut Serve, id: u64| {
        s.recv_until(T, "a reply", |m| match m {
            ServerMessage::Pong(Ping { id: p }) if *p == id => Some("pong"),
            ServerMessage::PatchResult(_) => Some("patch result"),
            ServerMessage::ReconcileResult(_) => Some("listing"),
            _ => None,
        })
    };
    // A patch that takes a second or more to apply, then a ping right behind it.
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    s.hello(no_build());
    let (p, _, _) = big_patch(1, 10_000);
    s.send(&p);
    s.send(&ClientMessage::Ping(Ping { id: 10 }));
    assert_eq!(first_reply(&mut s, 10), "pong");
    assert_eq!(patch_result(&mut s, 1).files, 10_000);

    // A listing that takes seconds (hashing a big sparse file), then two pings.
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("src")).unwrap();
    fs::File::create(tmp.path().join("src/big.bin"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    s.hello(no_build());
    s.send(&ClientMessage::Reconcile(Reconcile {
        id: 2,
        digest_first: false,
    }));
    s.send(&ClientMessage::Ping(Ping { id: 11 }));
    assert_eq!(first_reply(&mut s, 11), "pong");
    s.send(&ClientMessage::Ping(Ping { id: 12 }));
    assert_eq!(first_reply(&mut s, 12), "pong");
    let r = s.recv_until(T, "the listing", |m| match m {
        ServerMessage::ReconcileResult(r) if r.id == 2 => Some(r.clone()),
        _ => None,
    });
    assert!(r.entries.iter().any(|e| e.path == "big.bin"));
}

#[test]
fn the_build_inherits_the_sidecar_environment_with_the_session_env_on_top() {
    let build_env = |sidecar: &[(&str, &str)], unset: &[&str]| {
        let tmp = tempfile::tempdir().unwrap();
        let kdev = tmp.path();
        let mut s = Serve::start_with_env(kdev, &[], sidecar, unset);
        let mut cfg = sh_build("env > {output}");
        cfg.build.env = [
            ("KDEV_T_SESSION", "from-session"),
            ("KDEV_T_BOTH", "session-wins"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        s.hello(cfg);
        s.send(&patch(1, &[], vec![], BuildMode::Always));
        let (outcome, output, _, _) = build_finished(&mut s, 1);
        assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
        let env: BTreeMap<String, String> = fs::read_to_string(kdev.join("bin/app"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env
    };
    // The image's GOFLAGS reaches the build untouched; nothing forces -mod=mod.
    let env = build_env(
        &[
            ("GOFLAGS", "-mod=vendor"),
            ("KDEV_T_SIDECAR", "from-image"),
            ("KDEV_T_BOTH", "image"),
        ],
        &[],
    );
    assert_eq!(env.get("GOFLAGS").map(String::as_str), Some("-mod=vendor"));
    assert_eq!(env["KDEV_T_SIDECAR"], "from-image");
    assert_eq!(env["KDEV_T_SESSION"], "from-session");
    assert_eq!(env["KDEV_T_BOTH"], "session-wins");
    assert_eq!(env["CGO_ENABLED"], "0");
    // No GOFLAGS in the image: none in the build either.
    let env = build_env(&[], &["GOFLAGS"]);
    assert_eq!(env.get("GOFLAGS"), None, "{env:?}");
    assert_eq!(env["KDEV_T_SESSION"], "from-session");
}

//! The module proxy of `kdev-controller serve`: go's HTTP requests become `module_request`s
//! on the session, which the test answers as the CLI would, in parts.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use kdev_protocol::{
    BuildConfig, BuildMode, BuildOutcome, ClientMessage, Event, ModuleProxyConfig, ModuleRequest,
    ModuleResponse, ModuleStatus, Patch, Ping, ServerMessage, SessionConfig, Welcome,
};

const T: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// Where the proxy listens, from the Welcome's `GOPROXY`.
#[derive(Clone)]
struct Proxy {
    /// `127.0.0.1:PORT`
    addr: String,
    /// `/<token>/`
    root: String,
}

impl Proxy {
    fn of(w: &Welcome) -> Proxy {
        let url = &w.module_env["GOPROXY"];
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("{url}"));
        let (addr, root) = rest.split_once('/').unwrap();
        assert!(addr.starts_with("127.0.0.1:"), "{url}");
        assert!(root.len() >= 32 && root.ends_with('/'), "{url}");
        Proxy {
            addr: addr.into(),
            root: format!("/{root}"),
        }
    }

    /// GET a path below the proxy root, in a thread (the answer waits for the test's).
    fn get(&self, path: &str) -> JoinHandle<Reply> {
        let (addr, target) = (self.addr.clone(), format!("{}{path}", self.root));
        std::thread::spawn(move || http(&addr, "GET", &target))
    }
}

/// An HTTP response: status, content type, body.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on its own connection, with `target` sent as it is.
fn http(addr: &str, method: &str, target: &str) -> Reply {
    read_reply(send_request(addr, method, target))
}

fn send_request(addr: &str, method: &str, target: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    c
}

fn read_reply(mut c: TcpStream) -> Reply {
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let body = raw[end + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some(body.len().to_string().as_str()),
        "{head}"
    );
    Reply {
        status,
        content_type: headers.get("content-type").cloned().unwrap_or_default(),
        body,
    }
}

fn proxy_config(nosumdb: &str) -> SessionConfig {
    SessionConfig {
        build: BuildConfig {
            command: Some(vec!["false".into()]),
            ..Default::default()
        },
        module_proxy: Some(ModuleProxyConfig {
            nosumdb: nosumdb.into(),
        }),
        ..Default::default()
    }
}

/// The next module request.
fn request(s: &mut Serve) -> ModuleRequest {
    s.recv_until(T, "a module request", |m| match m {
        ServerMessage::ModuleRequest(r) => Some(r.clone()),
        _ => None,
    })
}

/// One part of an answer.
fn part(id: u64, status: ModuleStatus, size: usize, more: bool, body: &[u8]) -> ClientMessage {
    ClientMessage::ModuleResponse(ModuleResponse {
        id,
        status,
        reason: String::new(),
        size: size as u64,
        more,
        body: body.to_vec(),
    })
}

/// Answer `id` with `body`, in `parts` parts.
fn answer_ok(s: &mut Serve, id: u64, body: &[u8], parts: usize) {
    let chunk = body.len().div_ceil(parts).max(1);
    let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
    for (i, c) in chunks.iter().enumerate() {
        s.send(&part(
            id,
            ModuleStatus::Ok,
            body.len(),
            i + 1 < chunks.len(),
            c,
        ));
    }
}

fn answer_status(s: &mut Serve, id: u64, status: ModuleStatus, reason: &str) {
    s.send(&ClientMessage::ModuleResponse(ModuleResponse {
        id,
        status,
        reason: reason.into(),
        size: 0,
        more: false,
        body: vec![],
    }));
}

/// Everything serve sent until the pong of a ping sent now: a module request caused by
/// something before the ping would be among it.
fn until_pong(s: &mut Serve, id: u64) -> Vec<ServerMessage> {
    s.send(&ClientMessage::Ping(Ping { id }));
    let mut seen = Vec::new();
    s.recv_until(T, "the pong", |m| {
        seen.push(m.clone());
        matches!(m, ServerMessage::Pong(p) if p.id == id).then_some(())
    });
    seen
}

fn no_module_request(seen: &[ServerMessage]) {
    let asked: Vec<_> = seen
        .iter()
        .filter(|m| matches!(m, ServerMessage::ModuleRequest(_)))
        .collect();
    assert!(asked.is_empty(), "{asked:?}");
}

/// Every regular file below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// serve with a build-cache volume and a pre-filled image module cache (so GOMODCACHE is not
/// on the volume, and the proxy keeps files there).
fn serve_with_volume(kdev: &Path, volume: &Path) -> Serve {
    let image_mod = kdev.join("image-mod");
    fs::create_dir_all(image_mod.join("cache")).unwrap();
    let image_build = kdev.join("image-go-build");
    fs::create_dir_all(&image_build).unwrap();
    Serve::start(
        kdev,
        &[
            "--persistent-cache",
            volume.to_str().unwrap(),
            "--gomodcache",
            image_mod.to_str().unwrap(),
            "--gocache",
            image_build.to_str().unwrap(),
        ],
    )
}

// ------------------------------------------------------------------------------------------
// The proxy over the session
// ------------------------------------------------------------------------------------------

#[test]
fn a_file_reaches_go_whole_once_every_part_arrived_and_requests_run_in_parallel() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    let w = s.hello(proxy_config("corp.example,*.internal"));
    assert_eq!(w.module_env["GONOPROXY"], "");
    assert_eq!(w.module_env["GOPRIVATE"], "");
    assert_eq!(w.module_env["GONOSUMDB"], "corp.example,*.internal");
    assert!(!w.module_env.contains_key("GOSUMDB") && !w.module_env.contains_key("GOFLAGS"));
    let proxy = Proxy::of(&w);

    let mut conn = send_request(
        &proxy.addr,
        "GET",
        &format!("{}example.com/m/@v/v1.0.0.mod", proxy.root),
    );
    let r = request(&mut s);
    assert_eq!(r.path, "example.com/m/@v/v1.0.0.mod");
    let body = b"module example.com/m\n\ngo 1.22\n\nrequire example.com/dep v1.0.0\n";
    let (a, b) = body.split_at(20);
    let (b, c) = b.split_at(20);
    s.send(&part(r.id, ModuleStatus::Ok, body.len(), true, a));
    s.send(&part(r.id, ModuleStatus::Ok, body.len(), true, b));
    // The reader has handed both parts over once it answers a ping sent after them; go still
    // has not a byte: no half response.
    until_pong(&mut s, 1);
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let early = conn.read(&mut [0; 64]);
    assert!(
        early.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "go got something before the last part: {early:?}"
    );
    s.send(&part(r.id, ModuleStatus::Ok, body.len(), false, c));
    let reply = read_reply(conn);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body, body);
    assert_eq!(reply.content_type, "text/plain; charset=utf-8");

    // Several at once, answered in another order; escaped capitals arrive as go writes them.
    let zip = proxy.get("github.com/%21azure/x/@v/v1.2.3.zip");
    let info = proxy.get("github.com/%21azure/x/@v/v1.2.3.info");
    let (r1, r2) = (request(&mut s), request(&mut s));
    let (rz, ri) = if r1.path.ends_with(".zip") {
        (r1, r2)
    } else {
        (r2, r1)
    };
    assert_eq!(rz.path, "github.com/!azure/x/@v/v1.2.3.zip");
    assert_eq!(ri.path, "github.com/!azure/x/@v/v1.2.3.info");
    assert_ne!(rz.id, ri.id);
    let zip_body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let info_body = br#"{"Version":"v1.2.3","Time":"2024-01-01T00:00:00Z"}"#;
    s.send(&part(
        rz.id,
        ModuleStatus::Ok,
        zip_body.len(),
        true,
        &zip_body[..1 << 20],
    ));
    answer_ok(&mut s, ri.id, info_body, 1);
    let reply = info.join().unwrap();
    assert_eq!(
        (reply.status, reply.content_type.as_str()),
        (200, "application/json")
    );
    assert_eq!(reply.body, info_body);
    s.send(&part(
        rz.id,
        ModuleStatus::Ok,
        zip_body.len(),
        true,
        &zip_body[1 << 20..2 << 20],
    ));
    s.send(&part(
        rz.id,
        ModuleStatus::Ok,
        zip_body.len(),
        false,
        &zip_body[2 << 20..],
    ));
    let reply = zip.join().unwrap();
    assert_eq!(
        (reply.status, reply.content_type.as_str()),
        (200, "application/zip")
    );
    assert!(reply.body == zip_body, "the zip differs");
    // Successes are not logged (the CLI reports fetches).
    assert!(!s.stderr().contains("module proxy"), "{}", s.stderr());
    s.send(&ClientMessage::Bye);
    assert_eq!(s.wait_exit(T), 0);
}

#[test]
fn paths_outside_the_protocol_and_requests_without_the_token_never_reach_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    let proxy = Proxy::of(&s.hello(proxy_config("")));
    let root = &proxy.root;
    let refused = [
        format!("{root}../../etc/passwd"),
        format!("{root}example.com/m/@v/../../../../etc/passwd.zip"),
        format!("{root}example.com/%2e%2e/@v/v1.0.0.zip"),
        format!("{root}Example.com/m/@v/v1.0.0.mod"),
        format!("{root}example.com/m/@v/v1.0.0.ziphash"),
        format!("{root}etc/passwd"),
        root.to_string(),
    ];
    for target in &refused {
        let r = http(&proxy.addr, "GET", target);
        assert_eq!(r.status, 404, "{target}");
        assert_eq!(r.text(), "not a module proxy request\n", "{target}");
    }
    let token = root.trim_matches('/');
    let other_token = format!("/{}/example.com/m/@v/v1.0.0.mod", "0".repeat(token.len()));
    for target in [
        "/etc/passwd",
        "/example.com/m/@v/v1.0.0.mod",
        &other_token,
        &format!("/{}/example.com/m/@v/v1.0.0.mod", &token[1..]),
    ] {
        let r = http(&proxy.addr, "GET", target);
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, "not found\n"),
            "{target}"
        );
    }
    let r = http(
        &proxy.addr,
        "POST",
        &format!("{root}example.com/m/@v/v1.0.0.mod"),
    );
    assert_eq!(r.status, 405);
    no_module_request(&until_pong(&mut s, 9));
    // One line each in serve's log, and never the token.
    let log = s.stderr();
    assert_eq!(
        log.matches("module proxy: ").count(),
        refused.len() + 5,
        "{log}"
    );
    assert!(!log.contains(token), "{log}");
}

#[test]
fn not_found_and_failed_answers_reach_go_with_their_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Serve::start(tmp.path(), &[]);
    let proxy = Proxy::of(&s.hello(proxy_config("")));

    let get = proxy.get("example.com/m/@v/v9.9.9.info");
    let r = request(&mut s);
    answer_status(
        &mut s,
        r.id,
        ModuleStatus::NotFound,
        "example.com/m@v9.9.9: invalid version: unknown revision v9.9.9",
    );
    let reply = get.join().unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.text(),
        "example.com/m@v9.9.9: invalid version: unknown revision v9.9.9\n"
    );

    let get = proxy.get("corp.example/private/@v/list");
    let r = request(&mut s);
    // A failure after a first part: the part is dropped, nothing of it reaches go.
    s.send(&part(r.id, ModuleStatus::Ok, 100, true, b"v1.0.0\n"));
    answer_status(
        &mut s,
        r.id,
        ModuleStatus::Failed,
        "git ls-remote: terminal prompts disabled",
    );
    let reply = get.join().unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "git ls-remote: terminal prompts disabled\n");
    // Parts after the answer (or for ids never asked) are dropped; the session goes on.
    s.send(&part(r.id, ModuleStatus::Ok, 100, false, b"late"));
    s.send(&part(12345, ModuleStatus::Ok, 1, false, b"x"));
    until_pong(&mut s, 2);
    let log = s.stderr();
    assert!(
        log.contains("module proxy: GET example.com/m/@v/v9.9.9.info: 404: example.com/m@v9.9.9")
            && log.contains("module proxy: GET corp.example/private/@v/list: 502: git ls-remote"),
        "{log}"
    );
}

#[test]
fn closing_stdin_mid_request_answers_503_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let volume = tmp.path().join("volume");
    let mut s = serve_with_volume(tmp.path(), &volume);
    let proxy = Proxy::of(&s.hello(proxy_config("")));
    let get = proxy.get("example.com/m/@v/v1.0.0.zip");
    let r = request(&mut s);
    s.send(&part(r.id, ModuleStatus::Ok, 1000, true, &[7; 500]));
    until_pong(&mut s, 1);
    s.close_stdin();
    let reply = get.join().unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.text(),
        "the kdev session ended; the next session fetches it again\n"
    );
    assert_eq!(s.wait_exit(T), 0);
    assert_eq!(
        files_below(&volume.join("module-proxy")),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn a_stored_file_is_answered_by_the_next_session_without_asking() {
    let tmp = tempfile::tempdir().unwrap();
    let volume = tmp.path().join("volume");
    let body = b"module example.com/m\n".to_vec();
    {
        let mut s = serve_with_volume(tmp.path(), &volume);
        let proxy = Proxy::of(&s.hello(proxy_config("")));
        let get = proxy.get("example.com/m/@v/v1.0.0.mod");
        let r = request(&mut s);
        answer_ok(&mut s, r.id, &body, 2);
        assert_eq!(get.join().unwrap().body, body);
        // A list changes over time: never kept.
        let get = proxy.get("example.com/m/@v/list");
        let r = request(&mut s);
        answer_ok(&mut s, r.id, b"v1.0.0\n", 1);
        assert_eq!(get.join().unwrap().status, 200);
        s.send(&ClientMessage::Bye);
        assert_eq!(s.wait_exit(T), 0);
    }
    assert_eq!(
        files_below(&volume.join("module-proxy")),
        [volume.join("module-proxy/example.com/m/@v/v1.0.0.mod")]
    );
    let mut s = serve_with_volume(tmp.path(), &volume);
    let proxy = Proxy::of(&s.hello(proxy_config("")));
    let reply = proxy.get("example.com/m/@v/v1.0.0.mod").join().unwrap();
    assert_eq!((reply.status, &reply.body), (200, &body));
    no_module_request(&until_pong(&mut s, 1));
    let get = proxy.get("example.com/m/@v/list");
    let r = request(&mut s);
    assert_eq!(r.path, "example.com/m/@v/list");
    answer_ok(&mut s, r.id, b"v1.0.0\n", 1);
    get.join().unwrap();
    s.send(&ClientMessage::Bye);
    s.wait_exit(T);

    // GOMODCACHE on the volume (the image's is empty): go's own cache persists there, and the
    // proxy keeps nothing.
    let tmp = tempfile::tempdir().unwrap();
    let volume = tmp.path().join("volume");
    let empty = tmp.path().join("image-mod");
    let mut s = Serve::start(
        tmp.path(),
        &[
            "--persistent-cache",
            volume.to_str().unwrap(),
            "--gomodcache",
            empty.to_str().unwrap(),
            "--gocache",
            "off",
        ],
    );
    let proxy = Proxy::of(&s.hello(proxy_config("")));
    let get = proxy.get("example.com/m/@v/v1.0.0.mod");
    let r = request(&mut s);
    answer_ok(&mut s, r.id, &body, 1);
    assert_eq!(get.join().unwrap().status, 200);
    assert!(!volume.join("module-proxy").exists());
}

// ------------------------------------------------------------------------------------------
// The environment of go commands
// ------------------------------------------------------------------------------------------

/// The environment a build command and its `before` hook see, and the Welcome's module_env.
fn build_sees(
    build_env: &[(&str, &str)],
) -> (BTreeMap<String, String>, String, BTreeMap<String, String>) {
    let tmp = tempfile::tempdir().unwrap();
    let kdev = tmp.path();
    let mut s = Serve::start_with_env(kdev, &[], &[("GOPROXY", "off"), ("GOPRIVATE", "*")], &[]);
    let mut cfg = proxy_config("corp.example");
    cfg.build.command = Some(vec!["sh".into(), "-c".into(), "env > {output}".into()]);
    cfg.build.before = vec!["echo \"hook GOPROXY=$GOPROXY\"".into()];
    cfg.build.env = build_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let w = s.hello(cfg);
    s.send(&ClientMessage::Patch(Patch {
        id: 1,
        deletes: vec![],
        build: BuildMode::Always,
        tar: vec![],
    }));
    let output = s.event_until(T, "the build", |e| match e {
        Event::BuildFinished {
            outcome, output, ..
        } => {
            assert_eq!(*outcome, BuildOutcome::Succeeded, "{output}");
            Some(output.clone())
        }
        _ => None,
    });
    let env = fs::read_to_string(kdev.join("bin/app"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (w.module_env, output, env)
}

#[test]
fn builds_and_their_hooks_get_the_module_env_and_build_env_wins() {
    let (module_env, hook, env) = build_sees(&[("GONOSUMDB", "*"), ("KDEV_T", "x")]);
    let proxy = &module_env["GOPROXY"];
    assert!(hook.contains(&format!("hook GOPROXY={proxy}")), "{hook}");
    // Over the image's GOPROXY=off and GOPRIVATE=*.
    assert_eq!(&env["GOPROXY"], proxy);
    assert_eq!(env["GOPRIVATE"], "");
    assert_eq!(env["GONOPROXY"], "");
    assert_eq!(env["GONOSUMDB"], "*");
    assert_eq!(env["KDEV_T"], "x");

    // A build.env with its own GOPROXY keeps what it had: no proxy at all.
    let (module_env, hook, env) = build_sees(&[("GOPROXY", "https://corp.example/proxy")]);
    assert!(module_env.is_empty(), "{module_env:?}");
    assert!(
        hook.contains("hook GOPROXY=https://corp.example/proxy"),
        "{hook}"
    );
    assert_eq!(env["GOPRIVATE"], "*");
}

// ------------------------------------------------------------------------------------------
// The real go command
// ------------------------------------------------------------------------------------------

/// A zip of `files` (stored, not compressed), as module zips may be.
fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in files {
        let offset = out.len() as u32;
        let (crc, size, nlen) = (crc32(data), data.len() as u32, name.len() as u16);
        // version needed, flags, method (stored), time, date (1980-01-01)
        let common = |v: &mut Vec<u8>| {
            for x in [20u16, 0, 0, 0, 0x21] {
                v.extend(x.to_le_bytes());
            }
            for x in [crc, size, size] {
                v.extend(x.to_le_bytes());
            }
            v.extend(nlen.to_le_bytes());
            v.extend(0u16.to_le_bytes());
        };
        out.extend(0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend(name.as_bytes());
        out.extend(*data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        common(&mut central);
        // comment length, disk, internal and external attributes, offset
        for x in [0u16, 0, 0] {
            central.extend(x.to_le_bytes());
        }
        central.extend(0u32.to_le_bytes());
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let (cd_offset, cd_size, n) = (out.len() as u32, central.len() as u32, files.len() as u16);
    out.extend(central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    for x in [0u16, 0, n, n] {
        out.extend(x.to_le_bytes());
    }
    out.extend(cd_size.to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// The module `example.com/dep v1.0.0` as a proxy serves it (`.info`, `.mod`, `.zip`, by
/// request path) and its go.sum lines, as go itself checked and hashed it.
fn dep_module(dir: &Path) -> (BTreeMap<String, Vec<u8>>, String) {
    let go_mod = b"module example.com/dep\n\ngo 1.21\n";
    let dep_go = b"package dep\n\nfunc Hello() string { return \"hello from dep\" }\n";
    let v = dir.join("fileproxy/example.com/dep/@v");
    fs::create_dir_all(&v).unwrap();
    fs::write(v.join("list"), "v1.0.0\n").unwrap();
    fs::write(
        v.join("v1.0.0.info"),
        r#"{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    fs::write(v.join("v1.0.0.mod"), go_mod).unwrap();
    let zip = stored_zip(&[
        ("example.com/dep@v1.0.0/go.mod", go_mod),
        ("example.com/dep@v1.0.0/dep.go", dep_go),
    ]);
    fs::write(v.join("v1.0.0.zip"), zip).unwrap();
    let modcache = dir.join("download-modcache");
    let out = Command::new("go")
        .args(["mod", "download", "-json", "example.com/dep@v1.0.0"])
        .current_dir(dir)
        .env(
            "GOPROXY",
            format!("file://{}", dir.join("fileproxy").display()),
        )
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .env("GONOSUMDB", "*")
        .env("GOSUMDB", "off")
        .env("GOMODCACHE", &modcache)
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", gocache())
        .output()
        .expect("the go toolchain is needed for this test");
    assert!(out.status.success(), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = |key: &str| fs::read(j[key].as_str().unwrap()).unwrap();
    let files = [
        ("example.com/dep/@v/v1.0.0.info", file("Info")),
        ("example.com/dep/@v/v1.0.0.mod", file("GoMod")),
        ("example.com/dep/@v/v1.0.0.zip", file("Zip")),
    ]
    .map(|(p, b)| (p.to_string(), b))
    .into();
    let sum = format!(
        "example.com/dep v1.0.0 {}\nexample.com/dep v1.0.0/go.mod {}\n",
        j["Sum"].as_str().unwrap(),
        j["GoModSum"].as_str().unwrap()
    );
    (files, sum)
}

/// Build `example.com/app` (which needs the dep) in a fresh serve whose image says
/// `GOPROXY=off`, with the proxy on, answering module requests with `answer`: the build's
/// outcome and output, and the paths asked for.
fn build_app(
    dir: &Path,
    go_sum: &str,
    mut answer: impl FnMut(&mut Serve, &ModuleRequest),
) -> (BuildOutcome, String, Vec<String>, PathBuf) {
    let kdev = dir.join(format!("kdev-{}", rand_u32()));
    fs::create_dir_all(&kdev).unwrap();
    let modcache = kdev.join("gomodcache");
    let gocache = gocache();
    let mut s = Serve::start_with_env(
        &kdev,
        &[
            "--gocache",
            gocache.to_str().unwrap(),
            "--gomodcache",
            modcache.to_str().unwrap(),
        ],
        &[
            ("GOPROXY", "off"),
            ("GOFLAGS", "-mod=mod -modcacherw"),
            ("GOTOOLCHAIN", "local"),
        ],
        &["GONOSUMDB", "GOPRIVATE", "GONOPROXY", "GOSUMDB"],
    );
    let mut cfg = proxy_config("example.com");
    cfg.build = BuildConfig {
        env: [("KDEV_QUICK_VERIFY", "0")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        ..Default::default()
    };
    s.hello(cfg);
    let main_go = "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/dep\"\n)\n\n\
                   func main() { fmt.Println(dep.Hello()) }\n";
    let go_mod = "module example.com/app\n\ngo 1.21\n\nrequire example.com/dep v1.0.0\n";
    s.send(&ClientMessage::Patch(Patch {
        id: 1,
        deletes: vec![],
        build: BuildMode::Always,
        tar: tar_of(&[("go.mod", go_mod), ("go.sum", go_sum), ("main.go", main_go)]),
    }));
    let mut asked = Vec::new();
    let deadline = std::time::Instant::now() + go_session::BUILD;
    let (outcome, output) = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match s.recv(left) {
            Some(ServerMessage::ModuleRequest(r)) => {
                answer(&mut s, &r);
                asked.push(r.path);
            }
            Some(ServerMessage::Event {
                event:
                    Event::BuildFinished {
                        outcome, output, ..
                    },
                ..
            }) => break (outcome, output),
            Some(_) => {}
            None => panic!("serve ended during the build:\n{}", s.stderr()),
        }
    };
    s.send(&ClientMessage::Bye);
    s.wait_exit(T);
    (outcome, output, asked, kdev)
}

#[test]
fn go_builds_a_module_it_gets_through_the_session_and_reports_what_the_client_could_not_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, go_sum) = dep_module(tmp.path());
    let (outcome, output, asked, kdev) =
        build_app(tmp.path(), &go_sum, |s, r| match files.get(&r.path) {
            Some(body) => answer_ok(s, r.id, body, 2),
            None => answer_status(s, r.id, ModuleStatus::NotFound, "not in the test's proxy"),
        });
    assert_eq!(outcome, BuildOutcome::Succeeded, "{output}");
    for needed in [
        "example.com/dep/@v/v1.0.0.mod",
        "example.com/dep/@v/v1.0.0.zip",
    ] {
        assert!(
            asked.iter().any(|p| p == needed),
            "{needed} not in {asked:?}"
        );
    }
    let run = Command::new(kdev.join("bin/app")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from dep\n");

    // The developer's machine cannot fetch it: go says why, with the client's reason.
    let reason = "kdev test: no credential for example.com/dep";
    let (outcome, output, asked, _) = build_app(tmp.path(), &go_sum, |s, r| {
        answer_status(s, r.id, ModuleStatus::Failed, reason)
    });
    assert_eq!(outcome, BuildOutcome::Failed, "{output}");
    assert!(!asked.is_empty());
    assert!(output.contains(reason), "{output}");
}

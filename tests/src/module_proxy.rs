//! A private Go module proxy on this machine, for tests of the module proxy kdev serves over its
//! session: `tests/tools/module-proxy` serving modules made from directories, over HTTPS (a
//! self-signed certificate of its own) behind HTTP Basic auth, so that only a go command given
//! the credential (a netrc file) fetches from it, and with every request logged, so a test can
//! tell who fetched what.
//!
//! Why HTTPS: go (1.26) sends no credential at all to an `http://` GOPROXY (it reads netrc for
//! `https://` only and refuses a URL with userinfo over `http://`). Why the netrc names
//! `127.0.0.1:PORT`: go matches a netrc `machine` against the URL's host and port. The script's
//! header has the details; `tests/tools/module-proxy-selftest` checks them with go.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How long the proxy may take to print its URL (making its certificate with Go's
/// generate_cert.go, where there is no openssl, compiles it first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One module version the proxy serves: its module path (`kdev.test/greet`), its version
/// (`v1.0.0`) and the directory holding its files (whose `go.mod`, if any, must declare that
/// path; without one the proxy serves `module <path>`).
#[derive(Clone, Debug)]
pub struct Module {
    pub path: String,
    pub version: String,
    pub dir: PathBuf,
}

impl Module {
    pub fn new(path: &str, version: &str, dir: impl Into<PathBuf>) -> Module {
        Module {
            path: path.to_string(),
            version: version.to_string(),
            dir: dir.into(),
        }
    }
}

/// One line of the proxy's request log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRequest {
    pub method: String,
    /// Percent-decoded, in Go's case escaping: `/kdev.test/!upper/@v/v0.1.0.zip`.
    pub path: String,
    pub status: u16,
    /// The client's address (`127.0.0.1`: the proxy listens on nothing else).
    pub client: String,
}

/// `tests/tools/module-proxy` running with some modules and a credential; killed on drop. Its
/// files (certificate, netrc, log, and the module cache of [`ModuleProxy::go_env`]) live in a
/// temporary directory that goes with it.
pub struct ModuleProxy {
    child: Child,
    /// The proxy stops when its stdin closes: it goes with the test process even when no drop
    /// runs (a killed test binary).
    _stdin: ChildStdin,
    url: String,
    user: String,
    password: String,
    module_paths: Vec<String>,
    dir: tempfile::TempDir,
}

impl ModuleProxy {
    /// Start the proxy serving `modules` to clients that authenticate as `user`/`password`
    /// (HTTP Basic), and write the netrc file naming it.
    pub fn start(modules: &[Module], user: &str, password: &str) -> Result<ModuleProxy> {
        if modules.is_empty() {
            bail!("the module proxy needs at least one module");
        }
        let dir = tempfile::Builder::new()
            .prefix("kdev-module-proxy.")
            .tempdir()?;
        let script = crate::repo_root().join("tests/tools/module-proxy");
        let stderr_path = dir.path().join("proxy.stderr");
        let mut cmd = Command::new(&script);
        cmd.arg("--tls")
            .arg(dir.path().join("tls"))
            .arg("--auth")
            .arg(format!("{user}:{password}"))
            .arg("--log")
            .arg(dir.path().join("requests.log"));
        for m in modules {
            cmd.arg("--module")
                .arg(format!("{}@{}={}", m.path, m.version, m.dir.display()));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("starting {} (needs python3)", script.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");

        // The first line is the URL; the rest of stdout is drained so the proxy never blocks.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let first = rx.recv_timeout(START_TIMEOUT);
        let url = match first {
            Ok(Some(Ok(line))) if line.starts_with("https://127.0.0.1:") => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                bail!(
                    "the module proxy did not start (first line {other:?}): {}",
                    stderr.trim()
                );
            }
        };

        let mut module_paths: Vec<String> = modules.iter().map(|m| m.path.clone()).collect();
        module_paths.sort();
        module_paths.dedup();
        let proxy = ModuleProxy {
            child,
            _stdin: stdin,
            url,
            user: user.to_string(),
            password: password.to_string(),
            module_paths,
            dir,
        };
        write_private(
            &proxy.netrc(),
            &format!(
                "machine {} login {user} password {password}\n",
                proxy.host_port()
            ),
        )?;
        write_private(&proxy.dir.path().join("netrc-empty"), "")?;
        Ok(proxy)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> &str {
        self.url.trim_start_matches("https://")
    }

    /// The user and password the proxy requires.
    pub fn credential(&self) -> (&str, &str) {
        (&self.user, &self.password)
    }

    /// The netrc file with the credential: `machine 127.0.0.1:PORT login USER password PASS`.
    pub fn netrc(&self) -> PathBuf {
        self.dir.path().join("netrc")
    }

    /// The proxy's self-signed certificate (go trusts it through `SSL_CERT_FILE`).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/cert.pem")
    }

    /// The module cache [`ModuleProxy::go_env`] names (`GOMODCACHE`), empty at the start.
    pub fn mod_cache(&self) -> PathBuf {
        self.dir.path().join("mod")
    }

    /// The environment a developer's go command needs to fetch the served modules through this
    /// proxy with the credential:
    ///
    /// - `GOPROXY` = [`ModuleProxy::url`] (nothing after it: a module it does not serve fails)
    /// - `NETRC` = [`ModuleProxy::netrc`], `GOAUTH=netrc` (go's default, set in case the
    ///   machine's is another)
    /// - `SSL_CERT_FILE` = [`ModuleProxy::cert`] (it replaces the system's CA certificates for
    ///   that command)
    /// - `GONOSUMDB` and `GOPRIVATE` = the served module paths, comma-separated (sum.golang.org
    ///   does not know them), and `GONOPROXY=none` (GOPRIVATE would otherwise also make go
    ///   bypass the proxy for them)
    /// - `GOFLAGS=-mod=mod`, `GOTOOLCHAIN=local` (no toolchain download through the proxy)
    /// - `GOMODCACHE` = [`ModuleProxy::mod_cache`], so every module comes from the proxy.
    pub fn go_env(&self) -> Vec<(String, String)> {
        self.env_with_netrc(self.netrc())
    }

    /// [`ModuleProxy::go_env`] without the credential (`NETRC` names an empty file), for
    /// checking that a fetch fails without it.
    pub fn go_env_without_credential(&self) -> Vec<(String, String)> {
        self.env_with_netrc(self.dir.path().join("netrc-empty"))
    }

    fn env_with_netrc(&self, netrc: PathBuf) -> Vec<(String, String)> {
        let paths = self.module_paths.join(",");
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        [
            ("GOPROXY", self.url.clone()),
            ("NETRC", path(netrc)),
            ("GOAUTH", "netrc".into()),
            ("SSL_CERT_FILE", path(self.cert())),
            ("GONOSUMDB", paths.clone()),
            ("GOPRIVATE", paths),
            ("GONOPROXY", "none".into()),
            ("GOFLAGS", "-mod=mod".into()),
            ("GOTOOLCHAIN", "local".into()),
            ("GOMODCACHE", path(self.mod_cache())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The request log as written: one `METHOD PATH STATUS CLIENT` line per request.
    pub fn log(&self) -> Result<String> {
        let path = self.dir.path().join("requests.log");
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            other => other.with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The request log, parsed.
    pub fn requests(&self) -> Result<Vec<ProxyRequest>> {
        self.log()?
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                let [method, path, status, client] = f[..] else {
                    bail!("module proxy log line {line:?}: want METHOD PATH STATUS CLIENT");
                };
                Ok(ProxyRequest {
                    method: method.to_string(),
                    path: path.to_string(),
                    status: status
                        .parse()
                        .with_context(|| format!("status in {line:?}"))?,
                    client: client.to_string(),
                })
            })
            .collect()
    }

    /// Whether the proxy process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ModuleProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // go makes its module cache read-only; the temporary directory could not go otherwise.
        make_writable(self.dir.path());
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

/// Add owner write permission to every directory below `dir` (best effort).
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut perm = meta.permissions();
    if perm.mode() & 0o700 != 0o700 {
        perm.set_mode(perm.mode() | 0o700);
        let _ = std::fs::set_permissions(dir, perm);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `go get` + `go build` of a module importing one the proxy serves: refused without the
    /// credential, done with it; the log shows the fetches; the proxy is gone after drop.
    /// Needs go and python3 (and openssl, or go compiles a certificate maker), no cluster.
    #[test]
    fn go_fetches_through_the_proxy_only_with_the_credential() -> Result<()> {
        let src = tempfile::tempdir()?;
        let greet = src.path().join("greet");
        let app = src.path().join("app");
        std::fs::create_dir_all(&greet)?;
        std::fs::create_dir_all(&app)?;
        std::fs::write(greet.join("go.mod"), "module kdev.test/greet\n\ngo 1.22\n")?;
        std::fs::write(
            greet.join("greet.go"),
            "package greet\n\nfunc Hello() string { return \"hello\" }\n",
        )?;
        std::fs::write(app.join("go.mod"), "module kdev.test/app\n\ngo 1.22\n")?;
        std::fs::write(
            app.join("main.go"),
            "package main\n\nimport \"kdev.test/greet\"\n\nfunc main() { println(greet.Hello()) }\n",
        )?;

        let proxy = ModuleProxy::start(
            &[Module::new("kdev.test/greet", "v1.0.0", &greet)],
            "dev",
            "s3cret",
        )?;
        let go = |env: &[(String, String)], args: &[&str]| -> Result<std::process::Output> {
            Command::new("go")
                .args(args)
                .current_dir(&app)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .output()
                .context("running go")
        };

        let out = go(
            &proxy.go_env_without_credential(),
            &["get", "kdev.test/greet@v1.0.0"],
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "go get without the credential worked"
        );
        assert!(stderr.contains("401 Unauthorized"), "{stderr}");

        let out = go(&proxy.go_env(), &["get", "kdev.test/greet@v1.0.0"])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = go(&proxy.go_env(), &["build", "./..."])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let requests = proxy.requests()?;
        let zip = ProxyRequest {
            method: "GET".into(),
            path: "/kdev.test/greet/@v/v1.0.0.zip".into(),
            status: 200,
            client: "127.0.0.1".into(),
        };
        assert!(requests.contains(&zip), "{requests:#?}");
        assert!(
            requests
                .iter()
                .any(|r| r.status == 401 && r.path == "/kdev.test/greet/@v/v1.0.0.info"),
            "{requests:#?}"
        );

        let addr: std::net::SocketAddr = proxy.host_port().parse()?;
        let dir = proxy.dir.path().to_path_buf();
        assert!(
            proxy
                .mod_cache()
                .join("kdev.test/greet@v1.0.0/greet.go")
                .is_file()
        );
        drop(proxy);
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "the proxy still answers after drop"
        );
        assert!(
            !dir.exists(),
            "{} (read-only module cache) left",
            dir.display()
        );
        Ok(())
    }
}

//! A small WebDriver client for browser tests: chromedriver driving a headless Chromium, both
//! from Debian's packages (`chromium chromium-driver`, which tests/cluster/install-deps installs).
//!
//! Blocking, over plain std networking (ureq, which has no runtime of its own), so it works the
//! same from a `#[test]` and from inside `#[tokio::test]`; there it blocks the runtime's thread
//! for each call, which a test that only drives the browser does not mind. Dropping the
//! [`Browser`] ends the session and kills chromedriver and the browser it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::{Value, json};

/// How to get the binaries, for the errors that say they are missing.
const INSTALL_HINT: &str = "install Debian's packages `chromium chromium-driver` \
     (`apt-get install chromium chromium-driver`; tests/cluster/install-deps does)";

/// The key a W3C WebDriver element reference is wrapped in.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The window a session starts with: a desktop layout, the same on every machine.
const WINDOW_SIZE: (u32, u32) = (1280, 900);

/// Per-request limit of the HTTP client. Above chromedriver's own page-load timeout (set in
/// the session's capabilities), so a slow page fails with WebDriver's error, not ours.
const HTTP_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest WebDriver response read; ureq's default (10 MB) is small for a screenshot of a tall
/// page.
const MAX_RESPONSE: u64 = 256 * 1024 * 1024;

/// chromedriver's output, in the browser's temporary directory.
const DRIVER_LOG: &str = "chromedriver.log";

/// A headless Chromium session through a chromedriver of its own.
pub struct Browser {
    http: ureq::Agent,
    /// `http://127.0.0.1:PORT` of our chromedriver.
    base: String,
    /// `{base}/session/{id}` once the session exists.
    session: Option<String>,
    driver: Child,
    /// The browser's fresh profile (`--user-data-dir`) and chromedriver's log. A field, so it
    /// is removed after `drop` has stopped the processes that use it.
    dir: tempfile::TempDir,
}

/// One message of the browser's console, as [`Browser::console_log`] returns it.
#[derive(Debug, Clone)]
pub struct ConsoleMessage {
    /// `SEVERE` (console.error, failed loads, uncaught exceptions), `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// The text, prefixed by Chromium with the script's URL and line.
    pub message: String,
}

impl std::fmt::Display for ConsoleMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.level, self.message)
    }
}

impl Browser {
    /// Start chromedriver on a free local port and open a session with a headless Chromium
    /// (fresh profile, 1280×900 window, console messages recorded for [`Browser::console_log`]).
    pub fn start() -> Result<Browser> {
        let driver_bin = find_binary("chromedriver", "/usr/bin/chromedriver")?;
        let chromium = find_binary("chromium", "/usr/bin/chromium")?;
        let dir = tempfile::Builder::new()
            .prefix("kdev-browser-")
            .tempdir()
            .context("creating a temporary directory for the browser")?;
        let profile = dir.path().join("profile");
        let log_path = dir.path().join(DRIVER_LOG);
        let http: ureq::Agent = ureq::Agent::config_builder()
            // WebDriver reports failures as 4xx/5xx with a JSON body that says what went wrong:
            // read it rather than getting ureq's bare status error.
            .http_status_as_error(false)
            // Only localhost is spoken to; an HTTP(S)_PROXY in the environment must not apply.
            .proxy(None)
            .timeout_global(Some(HTTP_TIMEOUT))
            .build()
            .into();

        let (driver, base) = spawn_driver(&driver_bin, &log_path, &http)?;
        let mut browser = Browser {
            http,
            base,
            session: None,
            driver,
            dir,
        };

        let (width, height) = WINDOW_SIZE;
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            // We run as root, where Chromium's sandbox refuses to start.
                            "--no-sandbox",
                            "--disable-gpu",
                            // /dev/shm is small in containers; Chromium crashes when it fills.
                            "--disable-dev-shm-usage",
                            format!("--window-size={width},{height}"),
                            format!("--user-data-dir={}", profile.display()),
                            "--no-first-run",
                            "--no-default-browser-check",
                        ],
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                    "timeouts": { "implicit": 0, "pageLoad": 60_000, "script": 30_000 },
                }
            }
        });
        let created = http_call(
            &browser.http,
            "POST",
            &format!("{}/session", browser.base),
            Some(&capabilities),
        )
        .with_context(|| {
            format!(
                "creating a headless Chromium session ({} with {}); chromedriver's log:\n{}",
                driver_bin.display(),
                chromium.display(),
                log_tail(&log_path)
            )
        })?;
        let id = created["sessionId"]
            .as_str()
            .with_context(|| format!("no sessionId in chromedriver's answer: {created}"))?;
        browser.session = Some(format!("{}/session/{id}", browser.base));
        Ok(browser)
    }

    /// Load `url` and wait until the page has loaded (its `load` event).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .with_context(|| format!("loading {url}"))?;
        Ok(())
    }

    /// The current page's URL.
    pub fn url(&self) -> Result<String> {
        let v = self.command("GET", "/url", None)?;
        v.as_str()
            .map(str::to_string)
            .with_context(|| format!("the URL is not a string: {v}"))
    }

    /// The current page's title.
    pub fn title(&self) -> Result<String> {
        let v = self.command("GET", "/title", None)?;
        v.as_str()
            .map(str::to_string)
            .with_context(|| format!("the title is not a string: {v}"))
    }

    /// Reload the page and wait until it has loaded.
    pub fn refresh(&self) -> Result<()> {
        self.command("POST", "/refresh", Some(json!({})))?;
        Ok(())
    }

    /// Resize the window (outer size, as `--window-size`; the viewport is what remains).
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.command(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .with_context(|| format!("resizing the window to {width}×{height}"))?;
        Ok(())
    }

    /// The first element matching the CSS selector `css`, now (no waiting).
    pub fn find(&self, css: &str) -> Result<Element<'_>> {
        let v = self
            .command("POST", "/element", Some(by_css(css)))
            .with_context(|| format!("finding {css}"))?;
        Element::from_reference(self, css, &v)
    }

    /// Every element matching `css`, in document order; empty if none.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>> {
        let v = self
            .command("POST", "/elements", Some(by_css(css)))
            .with_context(|| format!("finding all of {css}"))?;
        Element::list(self, css, &v)
    }

    /// The first element matching `css` once there is one (in the DOM, displayed or not),
    /// polling for up to `timeout`.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element<'_>> {
        let mut found = None;
        self.wait_until(timeout, &format!("an element matching {css}"), |b| {
            found = Some(b.find(css)?.id);
            Ok(true)
        })?;
        Ok(Element {
            browser: self,
            id: found.expect("set when wait_until succeeds"),
            css: css.to_string(),
        })
    }

    /// Call `check` every 100 ms until it returns true; after `timeout`, fail naming `what` and
    /// with the last error `check` returned (an error counts as "not yet", since elements come
    /// and go while a page changes).
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Browser) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() > deadline {
                return Err(match last_err {
                    Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                    None => anyhow!("timed out after {timeout:?} waiting for {what}"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `script` as the body of a function (`return …` gives the result) with `args` as
    /// `arguments`; an [`Element::reference`] passes an element. Returns what it returned, as
    /// JSON (elements as references).
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .with_context(|| format!("running script {}", abbreviate(script)))
    }

    /// Write a PNG of the viewport to `path` (its directory is created if missing).
    pub fn screenshot(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let v = self.command("GET", "/screenshot", None)?;
        let b64 = v.as_str().with_context(|| {
            format!(
                "the screenshot is not a string: {}",
                abbreviate(&v.to_string())
            )
        })?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("decoding the screenshot's base64")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// The browser console's messages since the last call (Chromium hands each out once): the
    /// page's console.* calls, uncaught exceptions and failed loads. Worth printing when a test
    /// fails.
    pub fn console_log(&self) -> Result<Vec<ConsoleMessage>> {
        let body = json!({ "type": "browser" });
        // `/se/log` is chromedriver's W3C-mode name; `/log` the older one, kept as a fallback.
        let v = match self.command("POST", "/se/log", Some(body.clone())) {
            Ok(v) => v,
            Err(e) => self
                .command("POST", "/log", Some(body))
                .with_context(|| format!("reading the console log (/se/log: {e:#})"))?,
        };
        let entries = v
            .as_array()
            .with_context(|| format!("the console log is not a list: {v}"))?;
        Ok(entries
            .iter()
            .map(|e| ConsoleMessage {
                level: e["level"].as_str().unwrap_or_default().to_string(),
                message: e["message"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// The end of chromedriver's log (its warnings and errors: a browser that crashed, say),
    /// worth printing when a test fails.
    pub fn driver_log(&self) -> String {
        log_tail(&self.dir.path().join(DRIVER_LOG))
    }

    /// A WebDriver command on the session: `path` is relative to `/session/{id}`.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let session = self.session.as_deref().context("no WebDriver session")?;
        http_call(
            &self.http,
            method,
            &format!("{session}{path}"),
            body.as_ref(),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium the orderly way. A short limit: a browser that
        // hangs is killed below anyway.
        if let Some(session) = self.session.take() {
            let _ = self
                .http
                .delete(&session)
                .config()
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .call();
        }
        // Then the whole process group chromedriver leads (see `start`): chromedriver and any
        // Chromium process still there. Before `wait`, while the group's id is still ours.
        kill_driver(&mut self.driver);
    }
}

/// An element of the page, found by a CSS selector.
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
    /// The selector that found it, for errors.
    css: String,
}

impl<'b> Element<'b> {
    fn from_reference(browser: &'b Browser, css: &str, v: &Value) -> Result<Element<'b>> {
        let id = v[ELEMENT_KEY]
            .as_str()
            .with_context(|| format!("not an element reference: {v}"))?;
        Ok(Element {
            browser,
            id: id.to_string(),
            css: css.to_string(),
        })
    }

    fn list(browser: &'b Browser, css: &str, v: &Value) -> Result<Vec<Element<'b>>> {
        v.as_array()
            .with_context(|| format!("not a list of elements: {v}"))?
            .iter()
            .map(|e| Element::from_reference(browser, css, e))
            .collect()
    }

    /// The reference WebDriver knows this element by, to pass it to [`Browser::execute`].
    pub fn reference(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// The selector that found it.
    pub fn css(&self) -> &str {
        &self.css
    }

    /// Its rendered text, as the user sees it (empty when it is hidden).
    pub fn text(&self) -> Result<String> {
        let v = self.get("/text", "reading the text")?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The HTML attribute `name` (`None` when absent). For what the user typed into an input,
    /// use [`Element::property`] `value`: the attribute stays the initial value.
    pub fn attr(&self, name: &str) -> Result<Option<String>> {
        let v = self.get(
            &format!("/attribute/{name}"),
            &format!("reading attribute {name}"),
        )?;
        Ok(v.as_str().map(str::to_string))
    }

    /// The DOM property `name` (`value`, `checked`, …), as JSON (null when not set).
    pub fn property(&self, name: &str) -> Result<Value> {
        self.get(
            &format!("/property/{name}"),
            &format!("reading property {name}"),
        )
    }

    /// Its tag name, lower case.
    pub fn tag_name(&self) -> Result<String> {
        let v = self.get("/name", "reading the tag name")?;
        Ok(v.as_str().unwrap_or_default().to_lowercase())
    }

    /// Click it as a user would (scrolled into view; fails if something covers it).
    pub fn click(&self) -> Result<()> {
        self.post("/click", json!({}), "clicking")
    }

    /// Whether it is rendered visibly (WebDriver's "displayed" check: not `display: none`,
    /// `visibility: hidden`, zero-sized, …).
    pub fn is_displayed(&self) -> Result<bool> {
        let v = self.get("/displayed", "checking whether it is displayed")?;
        v.as_bool()
            .with_context(|| format!("{}: displayed is not a bool: {v}", self.css))
    }

    /// Whether it is selected (an `<option>`, a checkbox or radio button).
    pub fn is_selected(&self) -> Result<bool> {
        let v = self.get("/selected", "checking whether it is selected")?;
        v.as_bool()
            .with_context(|| format!("{}: selected is not a bool: {v}", self.css))
    }

    /// Type `text` into it (focusing it first), as key presses.
    pub fn send_keys(&self, text: &str) -> Result<()> {
        self.post("/value", json!({ "text": text }), "typing into")
    }

    /// Empty an input or textarea.
    pub fn clear(&self) -> Result<()> {
        self.post("/clear", json!({}), "clearing")
    }

    /// Choose the `<option>` whose value is `value` in this `<select>`, by clicking it as a user
    /// would (so `input` and `change` fire); fails if there is none or it did not get selected
    /// (a disabled option, say).
    pub fn select_by_value(&self, value: &str) -> Result<()> {
        let tag = self.tag_name()?;
        if tag != "select" {
            bail!("{}: select_by_value on a <{tag}>, not a <select>", self.css);
        }
        // Compared here rather than by an `option[value=…]` selector: no CSS quoting to get
        // right, and an option without a value attribute has its text as value.
        let options = self.find_all("option")?;
        let mut values = Vec::new();
        for option in &options {
            let v = option.property("value")?;
            let v = v.as_str().unwrap_or_default();
            if v == value {
                option.click()?;
                if !option.is_selected()? {
                    bail!("{}: option {value:?} did not get selected", self.css);
                }
                return Ok(());
            }
            values.push(v.to_string());
        }
        bail!(
            "{}: no option with value {value:?} (there are {values:?})",
            self.css
        )
    }

    /// The first element inside this one matching `css`.
    pub fn find(&self, css: &str) -> Result<Element<'b>> {
        let what = format!("{} {css}", self.css);
        let v = self
            .browser
            .command("POST", &self.path("/element"), Some(by_css(css)))
            .with_context(|| format!("finding {what}"))?;
        Element::from_reference(self.browser, &what, &v)
    }

    /// Every element inside this one matching `css`.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'b>>> {
        let what = format!("{} {css}", self.css);
        let v = self
            .browser
            .command("POST", &self.path("/elements"), Some(by_css(css)))
            .with_context(|| format!("finding all of {what}"))?;
        Element::list(self.browser, &what, &v)
    }

    fn path(&self, rest: &str) -> String {
        format!("/element/{}{rest}", self.id)
    }

    fn get(&self, rest: &str, doing: &str) -> Result<Value> {
        self.browser
            .command("GET", &self.path(rest), None)
            .with_context(|| format!("{doing} of {}", self.css))
    }

    fn post(&self, rest: &str, body: Value, doing: &str) -> Result<()> {
        self.browser
            .command("POST", &self.path(rest), Some(body))
            .with_context(|| format!("{doing} {}", self.css))?;
        Ok(())
    }
}

/// One WebDriver request; the response's `value`, or an error with WebDriver's own words.
fn http_call(http: &ureq::Agent, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
    let what = || format!("WebDriver {method} {url}");
    let response = match (method, body) {
        ("GET", None) => http.get(url).call(),
        ("DELETE", None) => http.delete(url).call(),
        ("POST", Some(body)) => http.post(url).send_json(body),
        _ => bail!("unsupported WebDriver request {method} {url} (body: {body:?})"),
    };
    let mut response = response.with_context(what)?;
    let status = response.status();
    let mut v: Value = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_json()
        .with_context(|| format!("{}: reading the {status} response", what()))?;
    if !status.is_success() {
        let e = &v["value"];
        bail!(
            "{}: {status}: {}: {}",
            what(),
            e["error"].as_str().unwrap_or("(no error code)"),
            e["message"].as_str().unwrap_or("(no message)")
        );
    }
    Ok(v["value"].take())
}

/// Start chromedriver on a free local port and wait until it is ready; it and its address.
///
/// The port comes from `free_port`, free a moment ago; should another process take it before
/// chromedriver binds it, chromedriver exits and the next port is tried.
fn spawn_driver(bin: &Path, log_path: &Path, http: &ureq::Agent) -> Result<(Child, String)> {
    let mut attempt = 1;
    loop {
        let port = crate::free_port();
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // A process group of its own, led by chromedriver: Chromium and its helpers inherit it,
        // so `kill_driver` can end them all through the child's id without looking for them.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut driver = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        match wait_driver_ready(&mut driver, &base, http, log_path) {
            Ok(()) => return Ok((driver, base)),
            Err(e) => {
                let exited = driver.try_wait().ok().flatten().is_some();
                kill_driver(&mut driver);
                if !exited || attempt == 3 {
                    return Err(e);
                }
                eprintln!("chromedriver on port {port} exited ({e:#}); trying another port");
                attempt += 1;
            }
        }
    }
}

/// Poll chromedriver's /status until it says it is ready; fail early if it exits.
fn wait_driver_ready(
    driver: &mut Child,
    base: &str,
    http: &ureq::Agent,
    log_path: &Path,
) -> Result<()> {
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    let url = format!("{base}/status");
    loop {
        if let Some(status) = driver.try_wait()? {
            bail!(
                "chromedriver exited ({status}) before it was ready; its log:\n{}",
                log_tail(log_path)
            );
        }
        let status = http_call(http, "GET", &url, None);
        if let Ok(v) = &status
            && v["ready"] == true
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "chromedriver not ready after {timeout:?} (last /status: {status:?}); its log:\n{}",
                log_tail(log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kill chromedriver and what is left in its process group (Chromium, should it still run),
/// and reap it. The group is killed before `wait`, while its id is still ours.
fn kill_driver(driver: &mut Child) {
    let pgid = driver.id();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

/// A locator for a CSS selector.
fn by_css(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

/// `name` in PATH, else at `fallback`; an error saying what to install when neither exists.
fn find_binary(name: &str, fallback: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| executable(p));
    if let Some(p) = in_path {
        return Ok(p);
    }
    let fallback = PathBuf::from(fallback);
    if executable(&fallback) {
        return Ok(fallback);
    }
    bail!(
        "{name} not found (neither in PATH nor at {}): browser tests need it; {INSTALL_HINT}",
        fallback.display()
    )
}

/// The last lines of chromedriver's log, for errors.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    if tail.trim().is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

/// A script or value shortened for an error message.
fn abbreviate(s: &str) -> String {
    let short: String = s.chars().take(120).collect();
    if short.len() < s.len() {
        format!("{short}…")
    } else {
        short
    }
}

//! End-to-end: the status view as a person sees it. `kdev watch --ui` of examples/shop (two
//! services) runs on a terminal (tmux); the page is driven by a headless Chromium; `kdev status`
//! and `kdev ui` are run from another "terminal". Screenshots go to `$KDEV_SCREENSHOTS` (else
//! tests/screenshots/) for a person to look at.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kdev_tests::browser::Browser;
use kdev_tests::tmux::Tmux;
use kdev_tests::{TestNamespace, client, free_port, kdev_bin, repo_root, set_const, shop_project};

fn screenshots() -> PathBuf {
    std::env::var_os("KDEV_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/screenshots"))
}

/// `kdev ARGS` from another terminal of the same user (the same runtime directory).
fn kdev(project: &Path, runtime: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(kdev_bin())
        .args(args)
        .current_dir(project)
        .env("KDEV_RUNTIME_DIR", runtime)
        .output()?;
    ensure!(
        out.status.success(),
        "kdev {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kdev status -o json`'s one session.
fn status(project: &Path, runtime: &Path) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&kdev(project, runtime, &["status", "-o", "json"])?)?;
    let sessions = v.as_array().context("an array")?;
    ensure!(sessions.len() == 1, "one session running: {v}");
    Ok(sessions[0].clone())
}

fn service<'a>(session: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    session["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// Poll `check` every 300 ms; on timeout, fail with `what`, its last note and the terminal.
async fn wait(
    what: &str,
    timeout: Duration,
    term: &Tmux,
    mut check: impl FnMut() -> Result<Option<String>>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(None) => return Ok(()),
            Ok(Some(note)) => note,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "{what}: not within {timeout:?} ({last})\nterminal:\n{}",
                term.history().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The terminal: the block is the screen's last lines (a header, a row per service in
/// kdev.yaml's order), drawn exactly once in all the terminal showed, and every line above it
/// is a whole log line.
fn check_terminal(term: &Tmux, want: &[(&str, &str)]) -> Result<Option<String>> {
    let screen = term.screen()?;
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    let n = want.len() + 1;
    ensure!(lines.len() > n, "too few lines:\n{screen}");
    let block = &lines[lines.len() - n..];
    if !block[0].starts_with("── kdev watch · shop") {
        return Ok(Some(format!("no block header at the bottom:\n{screen}")));
    }
    for ((name, state), row) in want.iter().zip(&block[1..]) {
        let starts = format!(" {name:<7} ");
        if !row.starts_with(&starts) || !row.contains(&format!(" {state} ")) {
            return Ok(Some(format!(
                "row of {name} is not {state}: {row:?}\n{screen}"
            )));
        }
    }
    let history = term.history()?;
    let headers = history
        .lines()
        .filter(|l| l.contains("── kdev watch"))
        .count();
    ensure!(
        headers == 1,
        "the block must be redrawn in place, never left in the scrollback ({headers} headers):\n{history}"
    );
    // Every line above the block is one of kdev's: a service's (prefixed), a session line, or
    // indented detail; a block row mixed into a log line would break this.
    let above: Vec<&str> = history
        .lines()
        .take_while(|l| !l.starts_with("── kdev watch"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    for l in &above {
        let whole = l.starts_with("orders  │ ")
            || l.starts_with("gateway │ ")
            || ["→ ", "✓ ", "! ", "✗ "].iter().any(|m| l.starts_with(m))
            || l.starts_with("    ");
        ensure!(
            whole && !l.contains(" ● ") && !l.contains("restarts "),
            "a garbled line above the block: {l:?}\n{history}"
        );
    }
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_block_show_two_services_reloads_errors_and_logs() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-status").await?;
    let dir = tempfile::tempdir()?;
    let project = shop_project(dir.path(), ns.name(), free_port(), free_port())?;
    let runtime = dir.path().join("run");
    let stderr = dir.path().join("kdev.stderr");
    let shots = screenshots();
    std::fs::create_dir_all(&shots)?;

    let command = format!(
        "KDEV_RUNTIME_DIR='{}' '{}' watch --ui --owner dev 2>'{}'",
        runtime.display(),
        kdev_bin().display(),
        stderr.display()
    );
    let term = Tmux::start(&project, &command, 160, 45)?;
    let on_failure = |e: anyhow::Error| {
        let err = std::fs::read_to_string(&stderr).unwrap_or_default();
        e.context(format!("kdev's stderr:\n{err}"))
    };

    // `kdev status` from another terminal: both services ready.
    wait(
        "kdev status shows both services ready",
        Duration::from_secs(300),
        &term,
        || {
            let s = status(&project, &runtime)?;
            let states = [
                service(&s, "orders")["state"].clone(),
                service(&s, "gateway")["state"].clone(),
            ];
            Ok((states != ["ready", "ready"]).then(|| format!("states {states:?}")))
        },
    )
    .await
    .map_err(on_failure)?;
    let table = kdev(&project, &runtime, &["status"])?;
    ensure!(
        table.contains("shop (kdev watch")
            && table.lines().any(|l| l.starts_with(" orders  ● ready"))
            && table.lines().any(|l| l.starts_with(" gateway ● ready")),
        "kdev status:\n{table}"
    );
    wait(
        "the terminal's block",
        Duration::from_secs(20),
        &term,
        || check_terminal(&term, &[("orders", "ready"), ("gateway", "ready")]),
    )
    .await?;

    // The page, from `kdev ui`.
    let url = kdev(&project, &runtime, &["ui"])?.trim().to_string();
    ensure!(
        url.starts_with("http://127.0.0.1:") && url.contains("/?token="),
        "{url}"
    );
    let browser = Browser::start()?;
    browser.goto(&url)?;
    let state_of = |b: &Browser, name: &str| -> Result<String> {
        b.find(&format!("tr[data-service={name}] td.state"))?.text()
    };
    browser.wait_until(Duration::from_secs(20), "both rows ready", |b| {
        Ok(state_of(b, "orders")? == "ready" && state_of(b, "gateway")? == "ready")
    })?;
    browser.screenshot(shots.join("status-1-ready.png"))?;

    // An edit's reload appears in orders' history with its phases.
    let bars = |b: &Browser, name: &str| -> Result<usize> {
        Ok(
            b.find_all(&format!("section.history[data-service={name}] g.bar"))?
                .len(),
        )
    };
    let before = bars(&browser, "orders")?;
    set_const(
        &project,
        "cmd/orders/main.go",
        "ordersMessage",
        "two orders",
    )?;
    browser.wait_until(
        Duration::from_secs(90),
        "a new bar in orders' history",
        |b| Ok(bars(b, "orders")? > before),
    )?;
    let last = browser
        .find_all("section.history[data-service=orders] g.bar")?
        .pop()
        .context("a bar")?;
    ensure!(
        last.attr("data-outcome")?.as_deref() == Some("served"),
        "the edit's reload served: {:?}",
        last.attr("data-outcome")?
    );
    let build_segments = last.find_all("rect.seg-build")?.len();
    ensure!(build_segments == 1, "its build phase is drawn");
    let s = status(&project, &runtime)?;
    let reload = &service(&s, "orders")["last_reload"];
    ensure!(
        reload["phases"]["build_ms"].as_u64().is_some()
            && reload["phases"]["sync_ms"].as_u64().is_some()
            && reload["paths"][0]
                .as_str()
                .is_some_and(|p| p.ends_with("main.go")),
        "the API has the reload's phases: {reload}"
    );
    browser.screenshot(shots.join("status-2-reload.png"))?;

    // A compile error: its local file:line:column, linked to the editor.
    let main_go = project.join("cmd/orders/main.go");
    let good = std::fs::read_to_string(&main_go)?;
    let broken = format!("{good}\nvar broken = undefinedThing\n");
    let line = broken.lines().count();
    std::fs::write(&main_go, &broken)?;
    let want_loc = format!("cmd/orders/main.go:{line}:14");
    browser.wait_until(Duration::from_secs(90), "the build error's place", |b| {
        let texts: Vec<String> = b
            .find_all("section.error[data-service=orders] a.loc")?
            .iter()
            .map(|a| a.text())
            .collect::<Result<_>>()?;
        Ok(texts.iter().any(|t| t.contains(&want_loc)))
    })?;
    let href = browser
        .find("section.error[data-service=orders] a.loc")?
        .attr("href")?
        .unwrap_or_default();
    ensure!(
        href == format!("vscode://file{}:{line}:14", main_go.display()),
        "the link opens VS Code at the place: {href}"
    );
    ensure!(state_of(&browser, "orders")? == "failed");
    wait(
        "the failed row on the terminal",
        Duration::from_secs(20),
        &term,
        || check_terminal(&term, &[("orders", "failed"), ("gateway", "ready")]),
    )
    .await?;
    let screen = term.screen()?;
    ensure!(
        screen.contains(&format!("build failed: {want_loc}")),
        "the row names the place:\n{screen}"
    );
    browser.screenshot(shots.join("status-3-build-error.png"))?;
    std::fs::write(&main_go, &good)?;
    browser.wait_until(Duration::from_secs(90), "orders ready again", |b| {
        Ok(state_of(b, "orders")? == "ready"
            && b.find_all("section.error[data-service=orders]")?.is_empty())
    })?;

    // The log filter hides the other service's lines, and survives a reload of the page.
    browser.find("#f-service")?.select_by_value("gateway")?;
    let hidden_orders = |b: &Browser| -> Result<bool> {
        let orders = b.find_all(".log-line[data-service=orders]")?;
        ensure!(!orders.is_empty(), "orders has log lines");
        for l in &orders {
            if l.is_displayed()? {
                return Ok(false);
            }
        }
        let gateway = b.find_all(".log-line[data-service=gateway]")?;
        Ok(gateway.iter().any(|l| l.is_displayed().unwrap_or(false)))
    };
    browser.wait_until(
        Duration::from_secs(10),
        "only gateway's lines",
        hidden_orders,
    )?;
    ensure!(
        browser.url()?.contains("service=gateway"),
        "{}",
        browser.url()?
    );
    browser.refresh()?;
    browser.wait_until(
        Duration::from_secs(20),
        "the filter kept across a reload",
        |b| {
            let kept = b.find("#f-service")?.property("value")? == "gateway";
            Ok(kept && hidden_orders(b)?)
        },
    )?;
    browser.screenshot(shots.join("status-4-filtered-logs.png"))?;

    // The rebuild button builds gateway: its line, and a reload in its history. Gateway's
    // reload of the fix above may still be in flight (it builds too): counted before the click.
    browser.wait_until(Duration::from_secs(90), "gateway ready", |b| {
        Ok(state_of(b, "gateway")? == "ready")
    })?;
    let before = bars(&browser, "gateway")?;
    browser
        .find("tr[data-service=gateway] button[data-action=rebuild]")?
        .click()?;
    let asked = |history: &str| {
        history
            .lines()
            .any(|l| l.starts_with("gateway │ → building (asked for on the status page)"))
    };
    let waited = browser.wait_until(Duration::from_secs(90), "the rebuild's reload", |b| {
        Ok(asked(&term.history()?) && bars(b, "gateway")? > before)
    });
    let history = term.history()?;
    waited.with_context(|| format!("kdev says the build was asked for:\n{history}"))?;
    browser.screenshot(shots.join("status-5-rebuilt.png"))?;
    browser.set_window_size(390, 844)?;
    browser.screenshot(shots.join("status-6-narrow.png"))?;

    // Idle with the page open: what the session costs (a figure, not a goal checked here).
    let pid = status(&project, &runtime)?["pid"].as_u64().context("pid")?;
    let ticks = |pid: u64| -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    };
    let t0 = ticks(pid)?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let used = ticks(pid)? - t0;
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "idle 10 s with the page open: kdev used {used} CPU ticks ({:.2} % of a core); {rss}",
        used as f64 / 10.0
    );
    // The terminal as a person sees it, beside the screenshots.
    std::fs::write(shots.join("status-terminal.txt"), term.screen()?)?;
    eprintln!("screenshots: {}", shots.display());

    // Ctrl-C: the block is erased and the session says it stopped.
    term.send_keys("C-c")?;
    wait("kdev stops", Duration::from_secs(30), &term, || {
        let screen = term.screen()?;
        Ok((!screen.contains("stopped; the dev pods keep running")).then(|| "running".into()))
    })
    .await?;
    let history = term.history()?;
    ensure!(
        !history.contains("── kdev watch"),
        "the block is erased at the end:\n{history}"
    );
    ensure!(
        kdev(&project, &runtime, &["status", "-o", "json"])?.trim() == "[]",
        "the session is gone from kdev status"
    );
    Ok(())
}

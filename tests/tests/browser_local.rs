//! The WebDriver client (tests/src/browser.rs) against a page served by the test itself: no
//! cluster, only chromium and chromium-driver (tests/cluster/install-deps installs them). Fails
//! when the browser cannot be started or driven, so the browser tests that build on it cannot
//! pass vacuously.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kdev_tests::browser::Browser;
use serde_json::json;

const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>kdev browser check</title></head>
<body>
  <p id="msg">before</p>
  <button id="go" data-role="trigger"
          onclick="document.getElementById('msg').textContent = 'after'">Go</button>
  <select id="color" onchange="document.getElementById('chosen').textContent = this.value">
    <option value="red">Red</option>
    <option value="green">Green</option>
    <option value="blue" disabled>Blue</option>
  </select>
  <p id="chosen">none</p>
  <input id="name" value="initial">
  <div id="secret" style="display: none">hidden text</div>
  <script>console.error("kdev-console-check " + (1 + 1));</script>
</body>
</html>
"#;

/// Serve `PAGE` at / (404 elsewhere) on 127.0.0.1 from a thread; the port.
fn serve_page() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the page's server")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // A thread per connection: Chromium opens speculative connections it may never
            // send a request on, which must not hold up the next one.
            std::thread::spawn(move || {
                let _ = answer(stream);
            });
        }
    });
    Ok(port)
}

fn answer(mut stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/" {
        ("200 OK", PAGE)
    } else {
        ("404 Not Found", "not found\n")
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// From inside a tokio runtime, as the browser tests against a cluster will run.
#[tokio::test]
async fn drives_a_local_page() -> Result<()> {
    let started = Instant::now();
    let port = serve_page()?;
    let browser = Browser::start()?;
    eprintln!("browser started in {:?}", started.elapsed());

    let url = format!("http://127.0.0.1:{port}/");
    browser.goto(&url)?;
    ensure!(
        browser.url()? == url,
        "the browser is at {}",
        browser.url()?
    );
    ensure!(browser.title()? == "kdev browser check");

    // Click: the handler changes the text.
    let msg = browser.wait_for("#msg", Duration::from_secs(10))?;
    ensure!(msg.text()? == "before", "#msg reads {:?}", msg.text()?);
    let go = browser.find("#go")?;
    ensure!(go.attr("data-role")?.as_deref() == Some("trigger"));
    ensure!(go.attr("no-such-attribute")?.is_none());
    go.click()?;
    browser.wait_until(Duration::from_secs(5), "#msg to read \"after\"", |b| {
        Ok(b.find("#msg")?.text()? == "after")
    })?;

    // A <select>: the option is chosen and the page's change handler ran.
    let select = browser.find("#color")?;
    ensure!(browser.find_all("#color option")?.len() == 3);
    select.select_by_value("green")?;
    ensure!(browser.find("#chosen")?.text()? == "green");
    let value = browser.execute("return arguments[0].value", &[select.reference()])?;
    ensure!(value == json!("green"), "the select's value is {value}");
    let err = select
        .select_by_value("purple")
        .err()
        .context("selecting a value no option has succeeded")?;
    ensure!(format!("{err:#}").contains("purple"), "{err:#}");
    ensure!(
        select.select_by_value("blue").is_err(),
        "a disabled option was selected"
    );

    // Visibility.
    ensure!(msg.is_displayed()?, "#msg is not displayed");
    let secret = browser.find("#secret")?;
    ensure!(
        !secret.is_displayed()?,
        "#secret (display: none) is displayed"
    );

    // Typing.
    let name = browser.find("#name")?;
    name.clear()?;
    name.send_keys("kdev")?;
    ensure!(name.property("value")? == json!("kdev"));
    ensure!(name.attr("value")?.as_deref() == Some("initial"));

    // Waiting for what never comes fails in time, naming it.
    let t = Instant::now();
    let err = browser
        .wait_for("#never-there", Duration::from_millis(300))
        .err()
        .context("wait_for found an element that does not exist")?;
    ensure!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let err = format!("{err:#}");
    ensure!(
        err.contains("#never-there") && err.contains("no such element"),
        "{err}"
    );

    // The console.error of the page's script.
    let console = browser.console_log()?;
    ensure!(
        console
            .iter()
            .any(|m| m.level == "SEVERE" && m.message.contains("kdev-console-check 2")),
        "console: {console:?}"
    );

    // A reload brings the page back to its initial state.
    browser.refresh()?;
    ensure!(browser.find("#msg")?.text()? == "before");

    // A screenshot: a PNG as wide as the (resized) viewport.
    browser.set_window_size(800, 600)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shots/page.png");
    browser.screenshot(&path)?;
    let png = std::fs::read(&path)?;
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {} bytes starting {:?}",
        png.len(),
        &png[..png.len().min(8)]
    );
    let width = u32::from_be_bytes(png[16..20].try_into()?);
    let viewport = browser.execute(
        "return Math.round(window.innerWidth * window.devicePixelRatio)",
        &[],
    )?;
    ensure!(
        json!(width) == viewport && width <= 800,
        "screenshot {width} px wide, viewport {viewport}"
    );

    drop(browser);
    eprintln!("whole test took {:?}", started.elapsed());
    Ok(())
}

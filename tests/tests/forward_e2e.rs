//! The forwarded port across reloads: a client that keeps sending requests through kdev's
//! forward while the app is rebuilt and restarted sees no error, on kept-alive connections and on
//! fresh ones (a request that arrives while the app restarts waits for the new one); a request
//! that arrives while no app runs fails clearly after waiting 10 s for one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kdev_tests::watch::Watch;
use kdev_tests::{TestNamespace, client};

/// One HTTP/1.1 `GET /ping` on `conn` (a kept-alive connection); the body.
fn get(conn: &mut BufReader<TcpStream>, close: bool) -> Result<String> {
    let connection = if close { "close" } else { "keep-alive" };
    conn.get_mut().write_all(
        format!("GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n")
            .as_bytes(),
    )?;
    let mut status = String::new();
    if conn.read_line(&mut status)? == 0 {
        bail!("closed before an answer");
    }
    ensure!(status.starts_with("HTTP/1.1 200"), "status {status:?}");
    let mut length = None;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            bail!("closed in the headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = Some(value.trim().parse::<usize>()?);
        }
    }
    let mut body = vec![0u8; length.context("no Content-Length")?];
    conn.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn connect(port: u16) -> Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    Ok(BufReader::new(s))
}

/// What a hammering client saw.
#[derive(Default, Debug)]
struct Seen {
    requests: usize,
    errors: Vec<String>,
    slowest: Duration,
}

/// GET /ping every `period` until `stop`, on one kept-alive connection (reopened only after an
/// error, which is counted) or on a fresh connection each time.
fn hammer(port: u16, period: Duration, keep_alive: bool, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut conn = None;
    while !stop.load(Ordering::SeqCst) {
        let t0 = Instant::now();
        let result = (|| {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(connect(port)?),
            };
            get(c, !keep_alive)
        })();
        seen.requests += 1;
        seen.slowest = seen.slowest.max(t0.elapsed());
        let failed = match result {
            Ok(body) if body.contains("message") => false,
            Ok(body) => {
                seen.errors.push(format!("unexpected answer {body:?}"));
                true
            }
            Err(e) => {
                seen.errors.push(format!("{e:#}"));
                true
            }
        };
        if !keep_alive || failed {
            conn = None;
        }
        std::thread::sleep(period.saturating_sub(t0.elapsed()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_the_forward_see_no_error_across_reloads() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-fwd").await?;
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let port = w.port;
    let clients: Vec<_> = [true, false]
        .into_iter()
        .map(|keep_alive| {
            let stop = stop.clone();
            std::thread::spawn(move || hammer(port, Duration::from_millis(40), keep_alive, stop))
        })
        .collect();
    for i in 1..=5 {
        let message = format!("reload-{i}");
        w.set_message(&format!("\"{message}\""));
        w.wait_served(&message, Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut report = Vec::new();
    for (c, name) in clients.into_iter().zip(["kept-alive", "fresh"]) {
        let seen = c.join().expect("the client thread");
        report.push(format!(
            "{name}: {} requests, {} errors, slowest {:?}: {:?}",
            seen.requests,
            seen.errors.len(),
            seen.slowest,
            seen.errors
        ));
        ensure!(
            seen.requests > 50,
            "too few requests: {}",
            report.join("\n")
        );
    }
    let failed = report.iter().any(|r| !r.contains(" 0 errors"));
    ensure!(
        !failed,
        "requests failed across 5 reloads:\n{}\nkdev output:\n{}",
        report.join("\n"),
        w.output()
    );
    eprintln!("{}", report.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_fails_clearly_when_no_app_comes_within_10s() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kdev-fwd-wait").await?;
    let w = Watch::start(ns.name())?;
    w.wait_served("pong", Duration::from_secs(240)).await?;

    // An app that exits at once: in crash backoff, nothing accepts connections.
    let main_go = w.project().join("main.go");
    let text = std::fs::read_to_string(&main_go)?;
    let crashing = text.replacen(
        "func main() {",
        "func main() {\n\tif true {\n\t\tlog.Fatal(\"crashing on purpose\")\n\t}",
        1,
    );
    ensure!(crashing != text, "main.go has no `func main() {{`");
    std::fs::write(&main_go, &crashing)?;
    w.wait_output("crashing on purpose", Duration::from_secs(60))
        .await?;
    let t0 = Instant::now();
    let port = w.port;
    let failed = tokio::task::spawn_blocking(move || get(&mut connect(port)?, true)).await?;
    let waited = t0.elapsed();
    ensure!(failed.is_err(), "no app runs, yet: {failed:?}");
    ensure!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(20),
        "the request should wait about 10 s for an app, waited {waited:?}"
    );
    w.wait_output(
        "nothing accepted the connection in 10s",
        Duration::from_secs(5),
    )
    .await?;

    // A working app is served again through the same forward.
    std::fs::write(&main_go, text.replace("\"pong\"", "\"back\""))?;
    w.wait_served("back", Duration::from_secs(120)).await?;
    Ok(())
}

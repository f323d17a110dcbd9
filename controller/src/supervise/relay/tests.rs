//! The relay end to end on loopback: a fake kdev speaking frames to it, fake apps that restart
//! and crash under it.

use std::time::Duration;

use kdev_protocol::relay as frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::gate::AppGate;
use super::listener::{Relay, start, start_with};

async fn relay_client(relay: &Relay, port: u16, flags: u8) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
    s.write_all(&frame::open(port, flags)).await.unwrap();
    s
}

/// Frames from the relay until `until` is seen (or the stream ends); APP_DATA joined.
async fn read_until(s: &mut TcpStream, until: u8) -> (Vec<u8>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut data = Vec::new();
    let mut kinds = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((kind, payload)) = frame::decode(&mut buf).unwrap() {
            kinds.push(kind);
            if kind == frame::APP_DATA {
                data.extend_from_slice(&payload);
            }
            if kind == until {
                return (kinds, data);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the relay answers")
            .unwrap();
        if n == 0 {
            return (kinds, data);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn data(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_data(frame::DATA, bytes, &mut out);
    out
}

/// An "app" answering each line with "v<version>:<line>"; aborting it closes its
/// connections, as an exit would.
async fn app(listener: TcpListener, version: u32) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        connections.spawn(async move {
            let (r, mut w) = s.into_split();
            let mut lines = tokio::io::BufReader::new(r);
            let mut line = String::new();
            use tokio::io::AsyncBufReadExt;
            while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                let _ = w.write_all(format!("v{version}:{line}").as_bytes()).await;
                line.clear();
            }
        });
    }
}

#[tokio::test]
async fn a_connection_waits_for_the_app_and_survives_its_restart() {
    let relay = start().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // No app yet: the request waits.
    let mut s = relay_client(&relay, port, frame::OPEN_RESUME).await;
    s.write_all(&data(b"one\n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let l1 = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let a1 = tokio::spawn(app(l1, 1));
    relay.gate.send_replace(AppGate {
        running: true,
        stopping: false,
        starts: 1,
        pid: Some(std::process::id()),
    });
    let (_, got) = read_until(&mut s, frame::APP_DATA).await;
    assert_eq!(got, b"v1:one\n");

    // A restart: the app closes the idle connection; the next request reaches app 2.
    relay.gate.send_replace(AppGate {
        running: false,
        stopping: true,
        starts: 1,
        pid: None,
    });
    a1.abort();
    let _ = a1.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&data(b"two\n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let l2 = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(app(l2, 2));
    relay.gate.send_replace(AppGate {
        running: true,
        stopping: false,
        starts: 2,
        pid: Some(std::process::id()),
    });
    let (kinds, got) = read_until(&mut s, frame::APP_DATA).await;
    assert_eq!(got, b"v2:two\n", "frames: {kinds:x?}");
}

fn gate(running: bool, starts: u64) -> AppGate {
    AppGate {
        running,
        stopping: !running,
        starts,
        pid: running.then(std::process::id),
    }
}

#[tokio::test]
async fn a_request_the_stopping_app_dropped_is_sent_to_the_next_one() {
    let relay = start().unwrap();
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l1.local_addr().unwrap().port();
    relay.gate.send_replace(gate(true, 1));
    let mut s = relay_client(&relay, port, frame::OPEN_RESUME).await;
    s.write_all(&data(b"lost?\n")).await.unwrap();
    // The old app reads the request and, stopping, closes without answering.
    let (mut conn, _) = l1.accept().await.unwrap();
    let mut got = [0u8; 6];
    conn.read_exact(&mut got).await.unwrap();
    relay.gate.send_replace(gate(false, 1));
    drop(conn);
    drop(l1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let l2 = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(app(l2, 2));
    relay.gate.send_replace(gate(true, 2));
    let (kinds, got) = read_until(&mut s, frame::APP_DATA).await;
    assert_eq!(got, b"v2:lost?\n", "frames: {kinds:x?}");
}

#[tokio::test]
async fn a_close_by_the_running_app_is_passed_on() {
    let relay = start().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    relay.gate.send_replace(gate(true, 1));
    let mut s = relay_client(&relay, port, frame::OPEN_RESUME).await;
    let (conn, _) = l.accept().await.unwrap();
    drop(conn);
    let (kinds, _) = read_until(&mut s, frame::APP_EOF).await;
    assert_eq!(kinds, [frame::HELLO, frame::APP_EOF]);
}

#[tokio::test]
async fn a_request_in_flight_when_the_app_crashed_is_not_sent_again() {
    let relay = start().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    // A PID that does not exist: the app is gone, the supervisor has not said so yet.
    relay.gate.send_replace(AppGate {
        running: true,
        stopping: false,
        starts: 1,
        pid: Some(u32::MAX / 2),
    });
    let mut s = relay_client(&relay, port, frame::OPEN_RESUME).await;
    s.write_all(&data(b"boom\n")).await.unwrap();
    let (mut conn, _) = l.accept().await.unwrap();
    let mut got = [0u8; 5];
    conn.read_exact(&mut got).await.unwrap();
    drop(conn);
    let (kinds, _) = read_until(&mut s, frame::ERROR).await;
    assert_eq!(kinds.last(), Some(&frame::ERROR));
}

#[tokio::test]
async fn without_resume_the_apps_close_is_passed_on() {
    let relay = start().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    relay.gate.send_replace(AppGate {
        running: true,
        stopping: false,
        starts: 1,
        pid: Some(std::process::id()),
    });
    let mut s = relay_client(&relay, port, 0).await;
    let (conn, _) = l.accept().await.unwrap();
    drop(conn);
    let (kinds, _) = read_until(&mut s, frame::APP_EOF).await;
    assert_eq!(kinds, [frame::HELLO, frame::APP_EOF]);
}

#[tokio::test]
async fn no_app_in_time_is_an_error() {
    let relay = start_with(Duration::from_millis(300)).unwrap();
    let mut s = relay_client(&relay, 1, frame::OPEN_RESUME).await;
    let (kinds, _) = read_until(&mut s, frame::ERROR).await;
    assert_eq!(kinds.last(), Some(&frame::ERROR));
}

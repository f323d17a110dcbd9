//! The relay's listener: a port on 127.0.0.1 served on a thread (and runtime) of its own for as
//! long as the supervisor lives, each accepted stream from kdev served by [`super::conn`].

use std::io;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::conn::{WAIT_FOR_APP, serve};
use super::gate::AppGate;

/// A running relay: its port, and where the supervisor publishes the app's state.
pub struct Relay {
    pub port: u16,
    pub gate: watch::Sender<AppGate>,
}

/// Bind 127.0.0.1:0 and serve connections on a thread of its own.
pub fn start() -> io::Result<Relay> {
    start_with(WAIT_FOR_APP)
}

/// [`start`], with connections waiting up to `wait_for_app` for an app.
pub(super) fn start_with(wait_for_app: Duration) -> io::Result<Relay> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let (gate, rx) = watch::channel(AppGate::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("kdev-relay".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return eprintln!("kdev-supervise: relay: {e}"),
                };
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(serve(stream, rx.clone(), wait_for_app));
                        }
                        // Out of file descriptors, most likely: wait for some to be freed.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        })?;
    Ok(Relay { port, gate })
}

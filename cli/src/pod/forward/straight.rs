//! Forwarding straight to the app's port, for a controller without the relay (and until the
//! relay's port is known): the connection is closed here when the app process exits (see the
//! `forward` module docs for why).

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::dial::dial;
use super::target::ForwardTarget;

/// A stream straight to the app's port, copied both ways until either side ends or the app
/// exits.
pub(super) async fn straight(
    target: &ForwardTarget,
    app_exits: &mut watch::Receiver<u64>,
    mut conn: TcpStream,
    remote: u16,
) -> Result<(), String> {
    let pod = &target.pod;
    let (pf, mut upstream) = dial(target, remote).await?;
    // Only exits from now on end this connection: it reaches whichever process runs now.
    app_exits.mark_unchanged();
    let copied = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => copied,
        // The process this connection reached is gone: close it now (see the module docs).
        // The port-forward itself winds down in the background.
        Ok(()) = app_exits.changed() => return Ok(()),
    };
    drop(upstream);
    let _ = pf.join().await;
    match copied {
        Ok(_) => Ok(()),
        // The client hanging up early is normal (browsers do it all the time).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("{pod}:{remote}: {e}")),
    }
}

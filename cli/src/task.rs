//! Spawned tasks tied to the value that needs them.

use tokio::task::JoinHandle;

/// Aborts its task when dropped: a task that only serves its owner (an exec stream's WebSocket
/// pump, a watcher's reader) stops with it instead of running on unobserved.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    pub(crate) fn new(task: JoinHandle<()>) -> AbortOnDrop {
        AbortOnDrop(task)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_it_aborts_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Holds the sender until aborted.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(AbortOnDrop::new(task));
        assert!(
            rx.await.is_err(),
            "the sender was dropped with the aborted task"
        );
    }
}

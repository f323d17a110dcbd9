//! The spare pool driven by fake connections, on tokio's paused clock (time moves only when
//! every task waits, straight to the next timer), so its backoff is measured exactly.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// Targets are numbers (a pod, say); 0 takes no spares (a pod whose relay is not known yet).
type Target = u32;

/// A fake warm connection: the target it was opened for, and whether it still stands.
struct FakeSpare {
    target: Target,
    alive: Arc<AtomicBool>,
}

impl Spare<Target> for FakeSpare {
    fn serves(&self, target: &Target) -> bool {
        self.target == *target
    }

    fn alive(&mut self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// Opens [`FakeSpare`]s after [`FakeOpener::takes`], failing while `fail` is set; records every
/// attempt.
#[derive(Clone, Default)]
struct FakeOpener {
    /// How long an open takes.
    takes: Duration,
    fail: Arc<AtomicBool>,
    /// (when, for which target) of every attempt.
    attempts: Arc<Mutex<Vec<(Instant, Target)>>>,
    /// The `alive` switch of every spare opened, in order.
    opened: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl OpenSpare<Target> for FakeOpener {
    type Spare = FakeSpare;

    fn takes_spares(&self, target: &Target) -> bool {
        *target != 0
    }

    fn open(
        &self,
        target: Target,
    ) -> impl Future<Output = Result<FakeSpare, String>> + Send + 'static {
        let me = self.clone();
        async move {
            me.attempts.lock().unwrap().push((Instant::now(), target));
            tokio::time::sleep(me.takes).await;
            if me.fail.load(Ordering::SeqCst) {
                return Err("refused".to_string());
            }
            let alive = Arc::new(AtomicBool::new(true));
            me.opened.lock().unwrap().push(alive.clone());
            Ok(FakeSpare { target, alive })
        }
    }
}

impl FakeOpener {
    fn attempts(&self) -> usize {
        self.attempts.lock().unwrap().len()
    }

    fn targets(&self) -> Vec<Target> {
        self.attempts.lock().unwrap().iter().map(|a| a.1).collect()
    }

    /// The time between consecutive attempts, in ms.
    fn gaps_ms(&self) -> Vec<u128> {
        let attempts = self.attempts.lock().unwrap();
        attempts
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).as_millis())
            .collect()
    }
}

/// A pool keeping `wanted` spares to what the returned sender holds (dropping the sender ends
/// the keeper, so tests hold it).
fn pool(
    opener: &FakeOpener,
    target: Target,
    wanted: usize,
) -> (SparePool<FakeSpare>, watch::Sender<Option<Target>>) {
    let (tx, rx) = watch::channel(Some(target));
    let pool = SparePool::start(opener.clone(), rx, wanted, 8080);
    (pool, tx)
}

/// Let the keeper do what it does within `ms` (virtual time).
async fn after_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn fake_opener() -> FakeOpener {
    FakeOpener {
        takes: Duration::from_millis(10),
        ..FakeOpener::default()
    }
}

#[tokio::test(start_paused = true)]
async fn keeps_the_wanted_number_warm_and_opens_no_more() {
    let opener = fake_opener();
    let (pool, _tx) = pool(&opener, 1, 2);
    after_ms(100).await;
    assert_eq!(pool.ready(), 2);
    // Several idle checks later, still the same two.
    after_ms(30_000).await;
    assert_eq!(pool.ready(), 2);
    assert_eq!(opener.attempts(), 2, "opened at the same time, once each");
}

#[tokio::test(start_paused = true)]
async fn a_spare_handed_out_is_replaced() {
    let opener = fake_opener();
    let (pool, _tx) = pool(&opener, 1, 2);
    after_ms(100).await;
    let spare = pool.take(&1).expect("a warm spare");
    assert_eq!(spare.target, 1);
    assert_eq!(pool.ready(), 1);
    after_ms(100).await;
    assert_eq!(pool.ready(), 2, "refilled");
    assert_eq!(opener.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_opened_for_a_target_that_takes_no_spares() {
    let opener = fake_opener();
    let (pool, tx) = pool(&opener, 0, 2);
    after_ms(10_000).await;
    assert_eq!(opener.attempts(), 0);
    assert!(pool.take(&0).is_none());
    // Its relay became known.
    tx.send_replace(Some(1));
    after_ms(100).await;
    assert_eq!(pool.ready(), 2);
}

#[tokio::test(start_paused = true)]
async fn spares_of_a_previous_target_are_dropped_and_not_handed_out() {
    let opener = fake_opener();
    let (pool, tx) = pool(&opener, 1, 2);
    after_ms(100).await;
    assert_eq!(pool.ready(), 2);
    tx.send_replace(Some(2));
    assert!(
        pool.take(&2).is_none(),
        "a spare to target 1 is no spare to 2"
    );
    after_ms(100).await;
    assert_eq!(opener.targets(), [1, 1, 2, 2]);
    assert_eq!(pool.ready(), 2);
    assert_eq!(pool.take(&2).map(|s| s.target), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_spare_opened_for_a_target_that_moved_on_is_not_kept() {
    let opener = FakeOpener {
        takes: Duration::from_secs(1),
        ..FakeOpener::default()
    };
    let (pool, tx) = pool(&opener, 1, 1);
    after_ms(100).await;
    // Target 1's spare is still opening when target 2 comes.
    tx.send_replace(Some(2));
    after_ms(3000).await;
    assert_eq!(opener.targets(), [1, 2]);
    assert_eq!(pool.ready(), 1);
    assert_eq!(pool.take(&2).map(|s| s.target), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_dead_spare_is_never_handed_out() {
    let opener = fake_opener();
    let (pool, _tx) = pool(&opener, 1, 2);
    after_ms(100).await;
    for alive in opener.opened.lock().unwrap().iter() {
        alive.store(false, Ordering::SeqCst);
    }
    assert!(pool.take(&1).is_none());
    // Both were dropped by the take; the keeper opens two new ones.
    after_ms(100).await;
    assert_eq!(opener.attempts(), 4);
    let spare = pool.take(&1).expect("a new spare");
    assert!(spare.alive.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_spare_that_died_while_idle_is_replaced_at_the_next_check() {
    let opener = fake_opener();
    let (pool, _tx) = pool(&opener, 1, 2);
    after_ms(100).await;
    opener.opened.lock().unwrap()[0].store(false, Ordering::SeqCst);
    after_ms(1000).await;
    assert_eq!(opener.attempts(), 2, "not seen before the check");
    after_ms(CHECK_EVERY.as_millis() as u64).await;
    assert_eq!(opener.attempts(), 3, "replaced at the check");
    assert_eq!(pool.ready(), 2);
    for _ in 0..2 {
        let spare = pool.take(&1).expect("a spare");
        assert!(spare.alive.load(Ordering::SeqCst), "the dead one is gone");
    }
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_up_to_the_ceiling() {
    let opener = FakeOpener::default();
    opener.fail.store(true, Ordering::SeqCst);
    let (pool, _tx) = pool(&opener, 1, 1);
    after_ms(130_000).await;
    assert_eq!(
        opener.gaps_ms(),
        [
            250, 500, 1000, 2000, 4000, 8000, 16000, 30_000, 30_000, 30_000
        ]
    );
    assert_eq!(pool.ready(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_backoff() {
    let opener = FakeOpener::default();
    opener.fail.store(true, Ordering::SeqCst);
    let (pool, _tx) = pool(&opener, 1, 1);
    // Attempts at 0, 250, 750, 1750 ms; the next at 3750.
    after_ms(2000).await;
    assert_eq!(opener.gaps_ms(), [250, 500, 1000]);
    opener.fail.store(false, Ordering::SeqCst);
    after_ms(2000).await;
    assert_eq!(opener.attempts(), 5);
    assert_eq!(pool.ready(), 1, "the fifth attempt opened one");
    // Failing again after a success waits the first wait again, not 4 s.
    opener.fail.store(true, Ordering::SeqCst);
    assert!(pool.take(&1).is_some());
    after_ms(300).await;
    let gaps = opener.gaps_ms();
    assert_eq!(gaps[gaps.len() - 1], 250, "gaps: {gaps:?}");
}

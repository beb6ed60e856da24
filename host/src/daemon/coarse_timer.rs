//! A timer for deadlines that are safety nets, not schedules: the header-read timeout of every
//! request and the timeout of every task. Both are armed on every request and almost never fire.
//!
//! Why not `tokio::time`: arming a tokio timer when the runtime's timer wheel is empty (or
//! holds only later deadlines) wakes the thread parked on the I/O driver so that it can shorten
//! its sleep: an eventfd write and a context switch per request, measured as the largest
//! source of wake-ups per task left once plugins did their HTTP on the host (BENCHMARKS.md,
//! "Host cost"). Here arming is a lock and a map insert; one ticker on the background runtime
//! wakes whatever is due every [`TICK`], so a deadline fires up to one tick late.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How late a deadline may fire.
pub(crate) const TICK: Duration = Duration::from_millis(50);

type Key = (Instant, u64);

#[derive(Default)]
struct Wheel {
    due: Mutex<BTreeMap<Key, Waker>>,
    next_id: AtomicU64,
}

fn wheel() -> &'static Wheel {
    static WHEEL: OnceLock<Wheel> = OnceLock::new();
    WHEEL.get_or_init(|| {
        match crate::isolation::background_runtime() {
            Ok(rt) => {
                rt.spawn(tick());
            }
            // No background runtime: deadlines never fire, which is what the daemon's own
            // start-up would have failed on long before.
            Err(e) => tracing::error!("the coarse timer has no runtime: {e}"),
        }
        Wheel::default()
    })
}

async fn tick() {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = Instant::now();
        let woken: Vec<Waker> = {
            let mut due = crate::isolation::lock(&wheel().due);
            let later = due.split_off(&(now, u64::MAX));
            std::mem::replace(&mut *due, later).into_values().collect()
        };
        for w in woken {
            w.wake();
        }
    }
}

/// Resolves at (or up to one [`TICK`] after) its deadline. Dropping it disarms it.
#[derive(Debug)]
pub(crate) struct CoarseSleep {
    deadline: Instant,
    key: Option<Key>,
}

/// A sleep until `deadline`.
pub(crate) fn sleep_until(deadline: Instant) -> CoarseSleep {
    CoarseSleep {
        deadline,
        key: None,
    }
}

/// A sleep of `d` from now.
pub(crate) fn sleep(d: Duration) -> CoarseSleep {
    sleep_until(Instant::now() + d)
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.disarm();
            return Poll::Ready(());
        }
        let w = wheel();
        let deadline = self.deadline;
        let key = *self
            .key
            .get_or_insert_with(|| (deadline, w.next_id.fetch_add(1, Ordering::Relaxed)));
        let mut due = crate::isolation::lock(&w.due);
        match due.get_mut(&key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                due.insert(key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl CoarseSleep {
    fn disarm(&mut self) {
        if let Some(key) = self.key.take() {
            crate::isolation::lock(&wheel().due).remove(&key);
        }
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

/// [`hyper::rt::Timer`] on the coarse wheel, for the server's header-read timeout.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_fires_after_its_deadline_and_within_a_tick_or_two() {
        let t = Instant::now();
        sleep(Duration::from_millis(120)).await;
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(120), "{took:?}");
        // Generous: CI machines are busy; the point is that it fires at all.
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn a_dropped_sleep_leaves_nothing_armed() {
        let s = sleep(Duration::from_secs(3600));
        let polled = tokio::time::timeout(Duration::from_millis(10), s).await;
        assert!(polled.is_err());
        let armed = crate::isolation::lock(&wheel().due)
            .keys()
            .filter(|(at, _)| *at > Instant::now() + Duration::from_secs(3000))
            .count();
        assert_eq!(armed, 0);
    }
}

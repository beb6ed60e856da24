//! Load for the benchmarks: `n` requests at concurrency `c`, each one's latency.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;

/// The `p` percentile (0..=1) of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `n` futures made by `f`, `c` at a time: their latencies, sorted, and the wall time.
pub async fn run(
    n: usize,
    c: usize,
    f: impl Fn() -> BoxFuture<'static, ()>,
) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(0..n)
        .map(|_| {
            let fut = f();
            async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            }
        })
        .buffer_unordered(c)
        .collect()
        .await;
    let wall = start.elapsed();
    lat.sort();
    (lat, wall)
}

/// Milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

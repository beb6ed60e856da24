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

/// One row of [`post_load`].
#[derive(Debug, Clone, Copy)]
pub struct PostRow {
    /// Requests per second.
    pub per_s: f64,
    /// CPU of the measured process per request, in microseconds.
    pub cpu_us: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

/// `n` POSTs of `body` to `url`, `c` at a time, after a warm-up (connections, caches): the
/// rate, the CPU process `pid` spent per request, and the latencies. Each answer must be a
/// 200 with a task's `output` or a completion's `choices`.
pub async fn post_load(
    n: usize,
    c: usize,
    pid: Option<u32>,
    url: &str,
    body: &serde_json::Value,
    client: &reqwest::Client,
) -> PostRow {
    let one = || {
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        Box::pin(async move {
            let r = client
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("the request");
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.expect("a JSON answer");
            assert!(
                v.get("output").is_some() || v.get("choices").is_some(),
                "{v}"
            );
        }) as BoxFuture<'static, ()>
    };
    run(c.min(200), c, one).await;
    let cpu0 = crate::procs::cpu_time(pid);
    let (lat, wall) = run(n, c, one).await;
    let cpu = crate::procs::cpu_time(pid) - cpu0;
    PostRow {
        per_s: n as f64 / wall.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}

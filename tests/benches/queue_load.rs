//! Tasks through the NATS queue against the single-process daemon, in the same run: tasks/s
//! through a front with 1, 2 and 3 workers, the latency the queue hop adds (p50/p99), and the
//! time to recover a task whose worker is SIGKILLed.
//!
//! The driver is the scripted one with no delay (no upstream), so the figures are the host's
//! and the queue's own cost. Every piece is a process of its own on this machine: one
//! `nats-server -js`, the workers, the front (`grip serve --nats`) or the daemon (`grip
//! serve`); this process is only the client. Run with `cargo bench -p e2e --bench queue_load`
//! (`-- N C` for other sizes; the default is 2,000 tasks at concurrency 32).

use std::time::{Duration, Instant};

use e2e::load::{ms, percentile, run};
use e2e::nats::{Cluster, Proc};
use e2e::procs::start_daemon;
use e2e::scripted;
use serde_json::{Value, json};

fn task(
    client: &reqwest::Client,
    base: &str,
) -> impl Fn() -> futures::future::BoxFuture<'static, ()> + use<> {
    let (client, url) = (client.clone(), format!("{base}/v1/tasks"));
    move || {
        let (client, url) = (client.clone(), url.clone());
        Box::pin(async move {
            let r = client
                .post(url)
                .json(&json!({"driver": "scripted", "input": "hello"}))
                .send()
                .await
                .expect("POST");
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.expect("JSON");
            assert_eq!(v["output"], "echo: hello");
        })
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, c) = (
        args.first().copied().unwrap_or(2000),
        args.get(1).copied().unwrap_or(32),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::new();

    // The baseline: one daemon, tasks run in its process.
    let dir = tempfile::tempdir().expect("dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests");
    scripted("scripted").write(&manifests, "scripted.toml");
    let (daemon, addr) = start_daemon(dir.path(), "");
    let daemon = Proc(daemon);
    let single = rt.block_on(async {
        run(200, c, task(&client, &addr)).await;
        run(n, c, task(&client, &addr)).await
    });
    drop(daemon);

    println!(
        "{n} tasks at concurrency {c}, scripted driver (no upstream), every piece its own process on one 2-core machine\n"
    );
    println!("| mode | tasks/s | p50 | p99 | added p50 | added p99 |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, (lat, wall): &(Vec<Duration>, Duration)| {
        let (l0, _) = &single;
        let added = |p| percentile(lat, p).saturating_sub(percentile(l0, p));
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} |",
            n as f64 / wall.as_secs_f64(),
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
            ms(added(0.5)),
            ms(added(0.99)),
        );
    };
    row("single-process daemon (baseline)", &single);

    let cluster = Cluster::new("concurrency = 32");
    let (_front, base) = cluster.front();
    let mut workers = Vec::new();
    for k in 1..=3 {
        workers.push(cluster.worker(&format!("w{k}")));
        let queued = rt.block_on(async {
            run(200, c, task(&client, &base)).await;
            run(n, c, task(&client, &base)).await
        });
        row(&format!("front + {k} worker(s)"), &queued);
    }
    drop(workers);

    // Recovery: a 1 s task whose worker is killed as soon as it has it.
    let cluster = Cluster::new("ack_wait_ms = 2000");
    let (_front, base) = cluster.front();
    let mut pair = [cluster.worker("a"), cluster.worker("b")];
    let recovered = rt.block_on(async {
        let body = json!({"id": "r1", "driver": "scripted", "input": "x", "wait": false, "config": {"delay_ms": 1000}});
        let r = client
            .post(format!("{base}/v1/tasks"))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 202);
        let worker = loop {
            let v: Value = client
                .get(format!("{base}/v1/tasks/r1"))
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("JSON");
            if let Some(w) = v["worker"].as_str() {
                break w.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        pair[usize::from(worker == "b")].kill();
        let killed = Instant::now();
        loop {
            let r = client
                .get(format!("{base}/v1/tasks/r1"))
                .send()
                .await
                .expect("GET");
            if r.status() == 200 {
                break killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    println!(
        "\nRecovery: a 1 s task's result {} after its worker was SIGKILLed (ack_wait 2000 ms: \
         the redelivery waits out the silence, then the task runs again from the start)",
        ms(recovered)
    );
}

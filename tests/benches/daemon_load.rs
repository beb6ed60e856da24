//! The daemon in front of a fast local upstream: tasks/s and p50/p99 added latency at
//! concurrency 1, 64 and 512 (daemon response time minus the same requests made straight to the
//! upstream, in the same run), then RSS with 10,000 concurrent slow tasks.
//!
//! The upstream (the OpenAI-compatible mock) and the daemon (`grip serve`) each run in a process
//! of their own; this process is only the client. Run with
//! `cargo bench -p e2e --bench daemon_load`.

use std::time::{Duration, Instant};

use e2e::load::{percentile, run};
use e2e::procs::{start_daemon, start_mock, status_kib};
use e2e::{ManifestSpec, scripted};
use serde_json::{Value, json};

fn main() {
    let (mut upstream, base_url) = start_mock(&[]);

    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    scripted("scripted").write(&manifests, "scripted.toml");
    ManifestSpec::named("openai", "openai_driver")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .extra(&format!(
            "[config]\nmodel = \"m\"\napi_key_env = \"NO_KEY\"\nbase_url = {base_url:?}\n"
        ))
        .write(&manifests, "openai.toml");
    let (mut daemon, daemon_url) = start_daemon(dir.path(), "task_timeout_ms = 120000\n");
    let daemon_pid = daemon.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let direct_body = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
    let task_body = json!({"driver": "openai", "input": "hello"});
    let direct_url = format!("{base_url}/chat/completions");
    let tasks_url = format!("{daemon_url}/v1/tasks");

    println!(
        "\n| concurrency | tasks/s via daemon | upstream p50 | upstream p99 | daemon p50 | daemon p99 | added p50 | added p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    rt.block_on(async {
        for c in [1usize, 64, 512] {
            let n = (c * 20).clamp(2000, 10_000);
            let direct = || {
                let (client, url, body) = (client.clone(), direct_url.clone(), direct_body.clone());
                let f: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
                    let r = client.post(url).json(&body).send().await.unwrap();
                    let v: Value = r.json().await.unwrap();
                    assert!(v["choices"].is_array());
                });
                f
            };
            let via = || {
                let (client, url, body) = (client.clone(), tasks_url.clone(), task_body.clone());
                let f: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
                    let r = client.post(url).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    let v: Value = r.json().await.unwrap();
                    assert_eq!(v["output"], "echo: hello");
                });
                f
            };
            run(c.min(200), c, direct).await; // warm-up
            run(c.min(200), c, via).await;
            let (d_lat, _) = run(n, c, direct).await;
            let (v_lat, v_wall) = run(n, c, via).await;
            let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
            let added = |p| percentile(&v_lat, p).saturating_sub(percentile(&d_lat, p));
            println!(
                "| {c} | {:.0} | {} | {} | {} | {} | {} | {} |",
                n as f64 / v_wall.as_secs_f64(),
                ms(percentile(&d_lat, 0.5)),
                ms(percentile(&d_lat, 0.99)),
                ms(percentile(&v_lat, 0.5)),
                ms(percentile(&v_lat, 0.99)),
                ms(added(0.5)),
                ms(added(0.99)),
            );
        }

        // RSS with 10,000 concurrent slow tasks (the scripted driver sleeps 4 s on the plugin's
        // runtime; no upstream sockets, so file descriptors stay within the limit).
        let idle = status_kib(Some(daemon_pid), "VmRSS:");
        let n = 10_000;
        let slow = json!({"driver": "scripted", "input": "slow", "config": {"delay_ms": 4000}});
        let big_client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let started = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (client, url, body) = (big_client.clone(), tasks_url.clone(), slow.clone());
                tokio::spawn(async move {
                    // Ramp up over ~1 s so the listen backlog is not the bottleneck.
                    tokio::time::sleep(Duration::from_micros(100 * i as u64)).await;
                    let r = client.post(url).json(&body).send().await;
                    r.map(|r| r.status().as_u16()).unwrap_or(0)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let during = status_kib(Some(daemon_pid), "VmRSS:");
        let metrics = client
            .get(format!("{daemon_url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let in_flight = metrics
            .lines()
            .find(|l| l.starts_with("grip_tasks_in_flight"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned();
        let mut ok = 0;
        for h in handles {
            if h.await.unwrap() == 200 {
                ok += 1;
            }
        }
        let peak = status_kib(Some(daemon_pid), "VmHWM:");
        println!(
            "\n10,000 concurrent slow tasks: {in_flight} in flight at the sample, {ok}/{n} answered 200 in {:.1} s; \
             daemon RSS idle {:.1} MiB, with them in flight {:.1} MiB, peak {:.1} MiB ({:.1} KiB per task)",
            started.elapsed().as_secs_f64(),
            idle as f64 / 1024.0,
            during as f64 / 1024.0,
            peak as f64 / 1024.0,
            (during.saturating_sub(idle)) as f64 / n as f64,
        );
    });
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(daemon_pid as i32, libc::SIGTERM);
    }
    let _ = daemon.wait();
    drop(upstream.stdin.take());
    let _ = upstream.wait();
}

//! What the host costs over the physical limit, end to end, against baselines in the same run.
//!
//! A local OpenAI-compatible upstream (the test mock, in processes of its own: one answering
//! at once, one after 200 ms) serves every mode. For N tasks at concurrency C:
//!
//! - baseline: the same HTTP requests made by a bare reqwest loop (two for the tool round trip);
//! - `async_run()` through the OpenAI plugin; `run()` on blocking threads; with one Calculator
//!   round trip; streaming with 3 async listeners; the daemon (`grip serve`, its own process)
//!   over HTTP;
//!
//! each with tasks/s, CPU per task (of the process doing the work), p50/p99 latency and the
//! latency added over the baseline, and the RSS. Then a scale sweep: 1, 64, 1,000 and 10,000
//! concurrent in-flight `async_run()` tasks against the 200 ms upstream: RSS and added latency.
//!
//! Run with `cargo bench -p e2e --bench e2e_load` (`-- N C` for other sizes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::procs::{cpu_time, start_daemon, start_mock, status_mib};
use e2e::{ManifestSpec, artifacts};
use futures::StreamExt;
use futures::future::BoxFuture;
use host::events::HandlerResult;
use host::{Driver, EventBus, EventListener, PromptTask, Registry, ToolHandle};
use serde_json::{Value, json};

#[derive(Clone)]
struct Stats {
    name: String,
    n: usize,
    wall: Duration,
    cpu: Duration,
    lat: Vec<Duration>,
    rss: f64,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        self.lat[((self.lat.len() as f64 - 1.0) * p).round() as usize]
    }
}

type Job = Arc<dyn Fn(usize) -> BoxFuture<'static, ()> + Send + Sync>;

/// `cpu_pids`: the processes whose CPU and RSS count (`None`: this one).
async fn measure(name: &str, n: usize, c: usize, cpu_pids: &[Option<u32>], job: Job) -> Stats {
    let cpu = || cpu_pids.iter().map(|p| cpu_time(*p)).sum::<Duration>();
    let warm = c.min(n).min(200);
    futures::stream::iter(0..warm)
        .map(|i| job(i))
        .buffer_unordered(c)
        .collect::<Vec<_>>()
        .await;
    let (t0, c0) = (Instant::now(), cpu());
    let mut lat: Vec<Duration> = futures::stream::iter(0..n)
        .map(|i| {
            let job = Arc::clone(&job);
            async move {
                let t = Instant::now();
                job(i).await;
                t.elapsed()
            }
        })
        .buffer_unordered(c)
        .collect()
        .await;
    lat.sort();
    Stats {
        name: name.to_owned(),
        n,
        wall: t0.elapsed(),
        cpu: cpu() - c0,
        lat,
        rss: cpu_pids.iter().map(|p| status_mib(*p, "VmRSS:")).sum(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn print(rows: &[(Stats, &Stats)]) {
    println!(
        "| mode | tasks/s | CPU us/task | CPU vs baseline | p50 ms | p99 ms | added p50 ms | added p99 ms | RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (s, base) in rows {
        let cpu = s.cpu.as_secs_f64() * 1e6 / s.n as f64;
        let base_cpu = base.cpu.as_secs_f64() * 1e6 / base.n as f64;
        println!(
            "| {} | {:.0} | {:.1} | {:.2} | {} | {} | {} | {} | {:.0} |",
            s.name,
            s.n as f64 / s.wall.as_secs_f64(),
            cpu,
            cpu / base_cpu,
            ms(s.pct(0.5)),
            ms(s.pct(0.99)),
            ms(s.pct(0.5).saturating_sub(base.pct(0.5))),
            ms(s.pct(0.99).saturating_sub(base.pct(0.99))),
            s.rss
        );
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(5000);
    let c = args.get(1).copied().unwrap_or(64);
    let a = artifacts();
    let (mut fast, fast_url) = start_mock(&[]);
    let (mut slow, slow_url) = start_mock(&["200"]);

    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    ManifestSpec::named("openai", "openai_driver")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .extra(&format!(
            "[config]\nmodel = \"m\"\napi_key_env = \"NO_KEY\"\nbase_url = {fast_url:?}\n"
        ))
        .write(&manifests, "openai.toml");
    ManifestSpec::named("calculator", "calculator")
        .kind("tool", &["sync", "async"])
        .write(&manifests, "calculator.toml");
    let registry = Registry::load_dirs(std::slice::from_ref(&manifests), &a.options());
    let plugin = registry.get("openai").unwrap();
    let driver: Driver = plugin.new_driver(None).unwrap();
    let slow_driver: Driver = plugin
        .new_driver(Some(&json!({"base_url": slow_url})))
        .unwrap();
    let calc: ToolHandle = registry.get("calculator").unwrap().new_tool(None).unwrap();
    // The same driver on the plugin's own client and runtime (ABI generation 1's way), for the
    // rows that compare the two in this run.
    let own_driver: Driver = plugin
        .new_driver(Some(&json!({"http": {"client": "own"}})))
        .unwrap();

    let (mut daemon, daemon_url) = start_daemon(dir.path(), "");
    let daemon_pid = daemon.id();
    // The same daemon with the OpenAI plugin in a child process of its own.
    let (mut isolated, isolated_url) = e2e::procs::start_daemon_with(
        dir.path(),
        "",
        "[plugins.isolation_by_id]\nopenai = \"process\"\n",
    );
    let isolated_pid = isolated.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2048)
        .build()
        .unwrap();
    let chat_url = format!("{fast_url}/chat/completions");

    let bare = |client: reqwest::Client, url: String, body: Value| -> Job {
        Arc::new(move |_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            Box::pin(async move {
                let v: Value = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert!(v["choices"].is_array());
            })
        })
    };
    let plain_body = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});

    rt.block_on(async {
        let baseline = measure("baseline: bare reqwest", n, c, &[None], bare(client.clone(), chat_url.clone(), plain_body.clone())).await;
        let two_body = json!({"model": "m", "messages": [{"role": "user", "content": "calc: 6*7"}]});
        let tool_result_body = json!({"model": "m", "messages": [
            {"role": "user", "content": "calc: 6*7"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "Calculator_calculate", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "42"}]});
        let baseline2 = {
            let (client, url) = (client.clone(), chat_url.clone());
            let job: Job = Arc::new(move |_| {
                let (client, url, b1, b2) = (client.clone(), url.clone(), two_body.clone(), tool_result_body.clone());
                Box::pin(async move {
                    for b in [b1, b2] {
                        let v: Value = client.post(&url).json(&b).send().await.unwrap().json().await.unwrap();
                        assert!(v["choices"].is_array());
                    }
                })
            });
            measure("baseline: two bare requests", n, c, &[None], job).await
        };

        let task_job = |driver: Driver, tools: Vec<ToolHandle>, input: &'static str, stream: bool, listeners: usize, want: &'static str| -> Job {
            Arc::new(move |_| {
                let (driver, tools) = (driver.clone(), tools.clone());
                Box::pin(async move {
                    let bus = Arc::new(EventBus::new());
                    let _g: Vec<_> = (0..listeners)
                        .map(|i| {
                            bus.add_listener(EventListener::on_event_async(format!("l{i}"), |e| async move {
                                std::hint::black_box(&e);
                                HandlerResult::Ok(None)
                            }))
                        })
                        .collect();
                    let out = PromptTask::new(driver, input).tools(tools).stream(stream).event_bus(bus).async_run().await.unwrap();
                    assert!(out.text.starts_with(want), "{}", out.text);
                })
            })
        };
        let async_run = measure("PromptTask async_run()", n, c, &[None], task_job(driver.clone(), vec![], "hello", false, 0, "echo: hello")).await;
        let async_own = measure("PromptTask async_run(), the plugin's own client", n, c, &[None], task_job(own_driver.clone(), vec![], "hello", false, 0, "echo: hello")).await;
        let sync_run = {
            let driver = driver.clone();
            let job: Job = Arc::new(move |_| {
                let driver = driver.clone();
                Box::pin(async move {
                    let out = tokio::task::spawn_blocking(move || {
                        PromptTask::new(driver, "hello").event_bus(Arc::new(EventBus::new())).run()
                    })
                    .await
                    .unwrap()
                    .unwrap();
                    assert_eq!(out.text, "echo: hello");
                })
            });
            measure("PromptTask run() on blocking threads", n, c, &[None], job).await
        };
        let tool = measure("async_run() + Calculator round trip", n, c, &[None], task_job(driver.clone(), vec![calc.clone()], "calc: 6*7", false, 0, "the result is 42")).await;
        let streamed = measure("async_run() streamed, 3 async listeners", n, c, &[None], task_job(driver.clone(), vec![], "hello", true, 3, "echo: hello")).await;
        let streamed_own = measure("async_run() streamed, 3 async listeners, the plugin's own client", n, c, &[None], task_job(own_driver.clone(), vec![], "hello", true, 3, "echo: hello")).await;
        let daemon_job = |base: &str| -> Job {
            let (client, url) = (client.clone(), format!("{base}/v1/tasks"));
            Arc::new(move |_| {
                let (client, url) = (client.clone(), url.clone());
                Box::pin(async move {
                    let v: Value = client
                        .post(url)
                        .json(&json!({"driver": "openai", "input": "hello"}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(v["output"], "echo: hello");
                })
            })
        };
        let via_daemon = measure("daemon over HTTP (CPU: daemon process)", n, c, &[Some(daemon_pid)], daemon_job(&daemon_url)).await;
        let plugins: Value = client.get(format!("{isolated_url}/v1/plugins")).send().await.unwrap().json().await.unwrap();
        let child_pid = plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "openai")
            .and_then(|p| p["pid"].as_u64())
            .expect("the isolated OpenAI plugin's child pid") as u32;
        let via_isolated = measure(
            "daemon, OpenAI plugin process-isolated (CPU: daemon + its child)",
            n,
            c,
            &[Some(isolated_pid), Some(child_pid)],
            daemon_job(&isolated_url),
        )
        .await;

        println!("\n{n} tasks at concurrency {c}; upstream answers at once, in its own process:\n");
        let rows = vec![
            (async_run, &baseline),
            (async_own, &baseline),
            (sync_run, &baseline),
            (tool, &baseline2),
            (streamed, &baseline),
            (streamed_own, &baseline),
            (via_daemon, &baseline),
            (via_isolated, &baseline),
        ];
        let mut all: Vec<(Stats, &Stats)> = vec![(baseline.clone(), &baseline), (baseline2.clone(), &baseline2)];
        all.extend(rows);
        print(&all);

        // Scale sweep against the 200 ms upstream.
        println!("\nScale sweep: concurrent in-flight async_run() tasks, upstream latency 200 ms:\n");
        println!("| in flight | tasks | p50 ms | p99 ms | added p50 ms | added p99 ms | RSS MiB | RSS per in-flight task KiB |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        let idle = status_mib(None, "VmRSS:");
        for inflight in [1usize, 64, 1000, 10_000] {
            let tasks = (inflight * 2).max(20);
            let sampler_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let peak = Arc::new(std::sync::Mutex::new(0.0f64));
            let (stop2, peak2) = (Arc::clone(&sampler_stop), Arc::clone(&peak));
            let sampler = std::thread::spawn(move || {
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = status_mib(None, "VmRSS:");
                    let mut p = peak2.lock().unwrap();
                    *p = p.max(r);
                    drop(p);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let s = measure("sweep", tasks, inflight, &[None], task_job(slow_driver.clone(), vec![], "hello", false, 0, "echo: hello")).await;
            sampler_stop.store(true, std::sync::atomic::Ordering::Relaxed);
            sampler.join().unwrap();
            let peak = *peak.lock().unwrap();
            let up = Duration::from_millis(200);
            println!(
                "| {inflight} | {tasks} | {} | {} | {} | {} | {peak:.0} | {:.1} |",
                ms(s.pct(0.5)),
                ms(s.pct(0.99)),
                ms(s.pct(0.5).saturating_sub(up)),
                ms(s.pct(0.99).saturating_sub(up)),
                (peak - idle).max(0.0) * 1024.0 / inflight as f64
            );
        }
    });
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(daemon_pid as i32, libc::SIGTERM)
    };
    let _ = daemon.wait();
    e2e::procs::sigterm(&isolated);
    let _ = isolated.wait();
    for m in [&mut fast, &mut slow] {
        drop(m.stdin.take());
        let _ = m.wait();
    }
}

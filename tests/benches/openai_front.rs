//! `POST /v1/chat/completions` against `POST /v1/tasks` for the same work (the openai driver in
//! front of the fast local mock), at concurrency 1 and 64, in one run: tasks/s, the daemon
//! process's CPU per request, and p50/p99 latency. The daemon and the upstream run in processes
//! of their own; this process is only the client. `cargo bench -p e2e --bench openai_front`.

use std::time::Duration;

use e2e::load::post_load;
use e2e::procs::{start_daemon, start_mock};
use e2e::{ManifestSpec, scripted};
use serde_json::json;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3000);
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
    let pid = Some(daemon.id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let tasks = (
        format!("{daemon_url}/v1/tasks"),
        json!({"driver": "openai", "input": "hello"}),
    );
    let chat = (
        format!("{daemon_url}/v1/chat/completions"),
        json!({"model": "openai", "messages": [{"role": "user", "content": "hello"}]}),
    );
    println!("\n{n} requests per row; daemon CPU per request; ratio = chat / tasks, same run");
    println!(
        "| concurrency | front | req/s | CPU us/req | p50 ms | p99 ms | CPU ratio | p50 ratio |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    rt.block_on(async {
        for c in [1usize, 64] {
            let t = post_load(n, c, pid, &tasks.0, &tasks.1, &client).await;
            let o = post_load(n, c, pid, &chat.0, &chat.1, &client).await;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            for (name, r) in [("/v1/tasks", &t), ("/v1/chat/completions", &o)] {
                println!(
                    "| {c} | `{name}` | {:.0} | {:.0} | {:.2} | {:.2} | {:.2}x | {:.2}x |",
                    r.per_s,
                    r.cpu_us,
                    ms(r.p50),
                    ms(r.p99),
                    r.cpu_us / t.cpu_us,
                    ms(r.p50) / ms(t.p50)
                );
            }
        }
    });
    let _ = daemon.kill();
    let _ = upstream.kill();
}

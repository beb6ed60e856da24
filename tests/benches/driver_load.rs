//! Requests/s and CPU per request of the remote driver plugins (OpenAI and Anthropic; async and
//! stream, concurrency 64) against a raw reqwest loop making the same requests to the same local
//! server, in one run. Each server runs in a separate process, so the CPU counted is the
//! client's alone.
//!
//! Run with `cargo bench -p e2e --bench driver_load` (`-- N C` to change the request count
//! and the concurrency).

use std::time::{Duration, Instant};

use e2e::procs::{cpu_time, start_mock};
use e2e::{ManifestSpec, artifacts};
use futures::StreamExt;
use host::Registry;
use plugin_api::wire::{Message, PromptRequest};
use serde_json::json;

struct Row {
    name: String,
    wall: Duration,
    cpu: Duration,
    n: usize,
}

async fn measure<F, Fut>(name: String, n: usize, c: usize, f: F) -> Row
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Warm up connections and caches.
    futures::stream::iter(0..c.min(n))
        .map(&f)
        .buffer_unordered(c)
        .collect::<Vec<_>>()
        .await;
    let (t0, c0) = (Instant::now(), cpu_time(None));
    futures::stream::iter(0..n)
        .map(&f)
        .buffer_unordered(c)
        .collect::<Vec<_>>()
        .await;
    Row {
        name,
        wall: t0.elapsed(),
        cpu: cpu_time(None) - c0,
        n,
    }
}

/// What differs between the two wire formats.
struct Vendor {
    id: &'static str,
    library: &'static str,
    server_arg: &'static str,
    /// Raw request path under the base URL, body, and headers.
    path: &'static str,
    body: serde_json::Value,
    headers: &'static [(&'static str, &'static str)],
    /// Whether a raw response is a proper answer.
    answered: fn(&serde_json::Value) -> bool,
}

fn vendors() -> [Vendor; 2] {
    [
        Vendor {
            id: "openai",
            library: "openai_driver",
            server_arg: "",
            path: "/chat/completions",
            body: json!({"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]}),
            headers: &[],
            answered: |v| v["choices"][0]["message"]["content"].is_string(),
        },
        Vendor {
            id: "anthropic",
            library: "anthropic_driver",
            server_arg: "anthropic",
            path: "/v1/messages",
            body: json!({"model": "m", "max_tokens": 4096, "system": "be brief", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]}),
            headers: &[("anthropic-version", "2023-06-01")],
            answered: |v| v["content"][0]["text"].is_string(),
        },
    ]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(20_000);
    let c = args.get(1).copied().unwrap_or(64);
    let a = artifacts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = PromptRequest::new(vec![
        Message::system("be brief"),
        Message::user("hello there"),
    ]);
    let client = reqwest::Client::new();
    let mut tables = Vec::new();
    for v in vendors() {
        let args: &[&str] = if v.server_arg.is_empty() {
            &[]
        } else {
            &[v.server_arg]
        };
        let (mut server, base_url) = start_mock(args);

        let dir = tempfile::tempdir().unwrap();
        let path = ManifestSpec::named(v.id, v.library)
            .kind("prompt_driver", &["sync", "async", "stream"])
            .write(dir.path(), "driver.toml");
        let mut registry = Registry::new();
        registry.add_manifest(&path, &a.options()).unwrap();
        let driver = registry
            .get(v.id)
            .unwrap()
            .new_driver(Some(
                &json!({"base_url": base_url, "model": "m", "api_key_env": "NO_SUCH_KEY_VAR"}),
            ))
            .unwrap();
        let url = format!("{base_url}{}", v.path);
        let rows = rt.block_on(async {
            let raw = measure(format!("{} raw reqwest", v.id), n, c, |_| {
                let (client, url, v) = (&client, &url, &v);
                async move {
                    let mut rb = client.post(url).json(&v.body);
                    for (k, val) in v.headers {
                        rb = rb.header(*k, *val);
                    }
                    let body: serde_json::Value = rb.send().await.unwrap().json().await.unwrap();
                    assert!((v.answered)(&body), "{body}");
                }
            })
            .await;
            let plugin = measure(format!("{} plugin prompt_async", v.id), n, c, |_| {
                let (driver, request) = (&driver, &request);
                async move {
                    let r = driver.prompt_async(request).await.unwrap();
                    assert_eq!(r.message.content, "echo: hello there");
                }
            })
            .await;
            let stream = measure(format!("{} plugin stream", v.id), n, c, |_| {
                let (driver, request) = (&driver, &request);
                async move {
                    let items: Vec<_> = driver.stream(request).unwrap().collect().await;
                    assert!(items.iter().all(Result::is_ok));
                }
            })
            .await;
            vec![raw, plugin, stream]
        });
        drop(server.stdin.take());
        let _ = server.wait();
        tables.push(rows);
    }

    println!("\n{n} requests at concurrency {c}, each server in its own process:\n");
    println!("| mode | req/s | CPU us/req | CPU ratio vs raw | req/s ratio vs raw |");
    println!("|---|---:|---:|---:|---:|");
    for rows in &tables {
        let base = &rows[0];
        for r in rows {
            let rps = r.n as f64 / r.wall.as_secs_f64();
            let cpu = r.cpu.as_secs_f64() * 1e6 / r.n as f64;
            let base_rps = base.n as f64 / base.wall.as_secs_f64();
            let base_cpu = base.cpu.as_secs_f64() * 1e6 / base.n as f64;
            println!(
                "| {} | {:.0} | {:.1} | {:.2} | {:.2} |",
                r.name,
                rps,
                cpu,
                cpu / base_cpu,
                rps / base_rps
            );
        }
    }
}

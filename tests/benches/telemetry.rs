//! What OpenTelemetry costs the daemon: the same tasks through three `grip serve` processes,
//! telemetry off, on (exporting spans and metrics over OTLP/HTTP to a real receiver in this
//! process) and on with content capture, at concurrency 1 and 64, in one run: daemon CPU per
//! task and p50/p99 latency, each as a ratio to "off". The upstream is the local mock in a
//! process of its own. `cargo bench -p e2e --bench telemetry [-- N]`.

use std::process::Child;
use std::time::Duration;

use e2e::ManifestSpec;
use e2e::load::post_load;
use e2e::otlp::Receiver;
use e2e::procs::{start_daemon_with, start_mock};
use serde_json::json;

struct Daemon {
    name: &'static str,
    child: Child,
    url: String,
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let (mut upstream, base_url) = start_mock(&[]);
    let otlp = Receiver::start();
    let mut daemons = Vec::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let modes = [
        ("off", String::new()),
        (
            "on",
            format!(
                "[telemetry]\nendpoint = {:?}\nprotocol = \"http/protobuf\"\nmetrics_interval_ms = 1000\n",
                otlp.http
            ),
        ),
        (
            "on + content",
            format!(
                "[telemetry]\nendpoint = {:?}\nprotocol = \"http/protobuf\"\nmetrics_interval_ms = 1000\ncapture_content = true\n",
                otlp.http
            ),
        ),
    ];
    for ((name, tail), dir) in modes.into_iter().zip(&dirs) {
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        ManifestSpec::named("openai", "openai_driver")
            .kind("prompt_driver", &["sync", "async", "stream"])
            .extra(&format!(
                "[config]\nmodel = \"m\"\napi_key_env = \"NO_KEY\"\nbase_url = {base_url:?}\n"
            ))
            .write(&manifests, "openai.toml");
        ManifestSpec::named("calculator", "calculator")
            .kind("tool", &["sync", "async"])
            .write(&manifests, "calculator.toml");
        let (child, url) = start_daemon_with(dir.path(), "task_timeout_ms = 120000\n", &tail);
        daemons.push(Daemon { name, child, url });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let work = [
        ("plain task", json!({"driver": "openai", "input": "hello"})),
        (
            "calculator round trip",
            json!({"driver": "openai", "input": "calc: 2+3", "tools": ["calculator"]}),
        ),
    ];
    println!("\n{n} tasks per row; daemon CPU per task; ratios against telemetry off, same run");
    println!(
        "| work | concurrency | telemetry | CPU us/task | p50 ms | p99 ms | CPU ratio | p50 ratio | p99 ratio |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    rt.block_on(async {
        for (what, body) in &work {
            for c in [1usize, 64] {
                let mut off = None;
                for d in &daemons {
                    let url = format!("{}/v1/tasks", d.url);
                    let r = post_load(n, c, Some(d.child.id()), &url, body, &client).await;
                    let base = off.as_ref().unwrap_or(&r);
                    println!(
                        "| {what} | {c} | {} | {:.0} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.2}x |",
                        d.name,
                        r.cpu_us,
                        ms(r.p50),
                        ms(r.p99),
                        r.cpu_us / base.cpu_us,
                        ms(r.p50) / ms(base.p50),
                        ms(r.p99) / ms(base.p99),
                    );
                    if off.is_none() {
                        off = Some(r);
                    }
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1500)); // the last metrics export
    println!(
        "\nthe receiver got {} spans and {} histogram points",
        otlp.spans().len(),
        otlp.points().len()
    );
    for mut d in daemons {
        let _ = d.child.kill();
    }
    let _ = upstream.kill();
}

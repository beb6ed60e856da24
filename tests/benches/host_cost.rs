//! What the daemon costs per task against what a user could hand-write: `grip serve` (the
//! openai driver plugin) and `baseline-proxy` (one axum handler making the same upstream call
//! with reqwest) side by side, in front of the same mock upstream, at concurrency 1, 16 and 64,
//! in one run. Each is its own process, so its CPU per task is read from /proc; latencies are
//! the client's, and "added" is over posting the chat body straight to the upstream.
//! `cargo bench -p e2e --bench host_cost [-- N]`.

use std::process::{Child, Command};
use std::time::Duration;

use e2e::load::{PostRow, post_load};
use e2e::procs::{spawn_line, start_daemon, start_mock};
use e2e::{ManifestSpec, artifacts};
use serde_json::json;

struct Target {
    name: &'static str,
    child: Option<Child>,
    url: String,
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3000);
    let (mut upstream, base_url) = start_mock(&[]);
    let dir = tempfile::tempdir().unwrap();
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
    let (daemon, daemon_url) = start_daemon(dir.path(), "task_timeout_ms = 120000\n");
    let mut proxy = Command::new(artifacts().lib_dir.join("baseline-proxy"));
    proxy.arg(&base_url);
    let (proxy, proxy_url) = spawn_line(proxy, "");
    let targets = [
        Target {
            name: "baseline-proxy",
            child: Some(proxy),
            url: format!("{proxy_url}/v1/tasks"),
        },
        Target {
            name: "grip serve",
            child: Some(daemon),
            url: format!("{daemon_url}/v1/tasks"),
        },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let direct = format!("{base_url}/chat/completions");
    let work = [
        (
            "plain task",
            json!({"driver": "openai", "input": "hello"}),
            1,
        ),
        (
            "calculator round trip",
            json!({"driver": "openai", "input": "calc: 2+3", "tools": ["calculator"]}),
            2,
        ),
    ];
    println!(
        "\n{n} tasks per row; CPU is the serving process's; ratios against baseline-proxy, same run"
    );
    println!(
        "| work | c | server | tasks/s | CPU us/task | p50 ms | p99 ms | added p50 | added p99 | CPU ratio | added p99 ratio |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    rt.block_on(async {
        for (what, body, calls) in &work {
            for c in [1usize, 16, 64] {
                let chat = json!({"model": "m", "messages": [{"role": "user", "content": body["input"]}]});
                let bare = post_load(n, c, None, &direct, &chat, &client).await;
                // A task of `calls` model calls waits for them one after the other.
                let bare_p50 = ms(bare.p50) * f64::from(*calls);
                let bare_p99 = ms(bare.p99) * f64::from(*calls);
                let mut base: Option<PostRow> = None;
                for t in &targets {
                    let pid = t.child.as_ref().map(Child::id);
                    let r = post_load(n, c, pid, &t.url, body, &client).await;
                    let b = base.get_or_insert(r);
                    let added99 = (ms(r.p99) - bare_p99).max(0.0);
                    let base_added99 = ms(b.p99) - bare_p99;
                    // Under 50 us the baseline's added p99 is noise, and a ratio to it meaningless.
                    let p99_ratio = if base_added99 < 0.05 {
                        "-".to_owned()
                    } else {
                        format!("{:.2}x", added99 / base_added99)
                    };
                    println!(
                        "| {what} | {c} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {p99_ratio} |",
                        t.name,
                        r.per_s,
                        r.cpu_us,
                        ms(r.p50),
                        ms(r.p99),
                        (ms(r.p50) - bare_p50).max(0.0),
                        added99,
                        r.cpu_us / b.cpu_us,
                    );
                }
            }
        }
    });
    for t in targets {
        if let Some(mut c) = t.child {
            let _ = c.kill();
        }
    }
    let _ = upstream.kill();
}

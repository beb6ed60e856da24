//! 1,000 streamed tasks through the daemon against an upstream that answers 20% of requests
//! with 429 and cuts 10% of streams half-way (seeded, so both runs meet the same faults in
//! the same order): the share that succeeds with cut streams restarted (the default) and
//! without (`http.retry.restart_streams = false`, which is how the drivers behaved before
//! restarts existed), in one run. Every failure is classified: retry budget exhausted (it says
//! "after 3 attempts") or not. The target: no task fails with budget left.
//!
//! The upstream and the daemon run in processes of their own. Run with
//! `cargo bench -p e2e --bench upstream_faults`.

use e2e::ManifestSpec;
use e2e::procs::{start_daemon_with, start_mock};
use futures::StreamExt;
use serde_json::json;

const TASKS: usize = 1000;

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    exhausted: usize,
    with_budget_left: usize,
    retry_events: usize,
    example: Option<String>,
}

async fn one(
    client: &reqwest::Client,
    url: &str,
    i: usize,
    restart: bool,
) -> (bool, Option<String>, usize) {
    let body = json!({"driver": "openai", "input": format!("hello {i}"), "stream": true,
        "config": {"http": {"retry": {"restart_streams": restart}}}});
    let resp = client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("POST /v1/tasks");
    assert_eq!(resp.status(), 200, "the daemon accepted task {i}");
    let events = e2e::daemon::sse(resp).await;
    let retries = events
        .iter()
        .filter(|(n, _, _)| n == "PromptRetryEvent")
        .count();
    let (name, finish, _) = events.last().expect("a FinishTaskEvent");
    assert_eq!(name, "FinishTaskEvent");
    if finish["output"] == format!("echo: hello {i}") {
        // A client that keeps the chunks after the last PromptRetryEvent has the output.
        let last = events.iter().rposition(|(n, _, _)| n == "PromptRetryEvent");
        let text: String = events[last.map_or(0, |p| p + 1)..]
            .iter()
            .filter(|(n, _, _)| n == "TextChunkEvent")
            .map(|(_, d, _)| d["token"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            text,
            format!("echo: hello {i}"),
            "task {i}: the chunks add up"
        );
        (true, None, retries)
    } else {
        (false, finish["error"].as_str().map(str::to_owned), retries)
    }
}

async fn run(client: &reqwest::Client, url: &str, restart: bool) -> Tally {
    let results: Vec<_> = futures::stream::iter(0..TASKS)
        .map(|i| one(client, url, i, restart))
        .buffered(32)
        .collect()
        .await;
    let mut t = Tally::default();
    for (ok, error, retries) in results {
        t.retry_events += retries;
        match (ok, error) {
            (true, _) => t.ok += 1,
            (false, Some(e)) if e.contains("after 3 attempts") => t.exhausted += 1,
            (false, e) => {
                t.with_budget_left += 1;
                t.example.get_or_insert(e.unwrap_or_default());
            }
        }
    }
    t
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let mut rows = Vec::new();
    for restart in [false, true] {
        // A fresh upstream per run, same seed: both runs draw the same faults.
        let (mut upstream, base_url) = start_mock(&["rate_limit=20", "truncate=10", "seed=42"]);
        ManifestSpec::named("openai", "openai_driver")
            .kind("prompt_driver", &["sync", "async", "stream"])
            .extra(&format!(
                "[config]\nmodel = \"m\"\napi_key_env = \"NO_KEY\"\nbase_url = {base_url:?}\n\
                 [config.http.retry]\nmax_retries = 2\ninitial_backoff_ms = 5\nmax_backoff_ms = 50\n"
            ))
            .overridable(&["http.retry.restart_streams"])
            .write(&manifests, "openai.toml");
        let (mut daemon, daemon_url) =
            start_daemon_with(dir.path(), "task_timeout_ms = 120000\n", "");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = reqwest::Client::new();
        let url = format!("{daemon_url}/v1/tasks");
        let t = rt.block_on(run(&client, &url, restart));
        rows.push((restart, t));
        daemon.kill().ok();
        daemon.wait().ok();
        upstream.kill().ok();
        upstream.wait().ok();
    }
    println!("\n{TASKS} streamed tasks, upstream: 20% 429, 10% of streams cut; max_retries = 2\n");
    println!(
        "| cut streams | succeeded | failed, budget exhausted | failed with budget left | PromptRetryEvents |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (restart, t) in &rows {
        println!(
            "| {} | {} ({:.1}%) | {} | {} | {} |",
            if *restart {
                "restarted (default)"
            } else {
                "not retried (before)"
            },
            t.ok,
            100.0 * t.ok as f64 / TASKS as f64,
            t.exhausted,
            t.with_budget_left,
            t.retry_events
        );
    }
    for (restart, t) in &rows {
        if let Some(e) = &t.example {
            println!("\nexample failure with budget left (restart={restart}): {e}");
        }
    }
}

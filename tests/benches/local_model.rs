//! The local-model driver (llama.cpp, SmolLM2-135M-Instruct Q4_1): model load time, prompt and
//! generation tokens/s, RSS, and first-token latency through the daemon (SSE), in one run.
//! Run with `cargo bench -p e2e --bench local_model`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::first_party_registry;
use futures::StreamExt;
use plugin_api::wire::{Message, PromptRequest};
use serde_json::json;

fn rss_mib() -> f64 {
    e2e::procs::status_mib(None, "VmRSS:")
}

fn main() {
    let registry = first_party_registry();
    let plugin = registry.get("local").unwrap().clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut host_config = host::models::HostConfig::default();
    rt.block_on(host_config.prepare(&plugin, &host::models::cache_dir(), true))
        .unwrap();
    let rss_before = rss_mib();

    let t = Instant::now();
    let driver = host_config
        .new_driver(
            &plugin,
            Some(&json!({"temperature": 0.0, "max_tokens": 128, "n_ctx": 2048})),
        )
        .unwrap();
    let load = t.elapsed();
    let rss_loaded = rss_mib();

    // Prompt processing: a long prompt, one generated token.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let one = host_config
        .new_driver(&plugin, Some(&json!({"temperature": 0.0, "max_tokens": 1})))
        .unwrap();
    let req = PromptRequest::new(vec![Message::user(format!("Summarise: {long}"))]);
    one.prompt(&req).unwrap(); // warm-up
    let t = Instant::now();
    let r = one.prompt(&req).unwrap();
    let prompt_time = t.elapsed();
    let prompt_tokens = r.usage.input_tokens;
    let prompt_tps = prompt_tokens as f64 / prompt_time.as_secs_f64();

    // Generation: a short prompt, up to 128 tokens.
    let req = PromptRequest::new(vec![Message::user(
        "Write a short story about a robot who learns to paint.",
    )]);
    let t = Instant::now();
    let r = driver.prompt(&req).unwrap();
    let total = t.elapsed();
    let short_prompt = Duration::from_secs_f64(r.usage.input_tokens as f64 / prompt_tps);
    let gen_tps = r.usage.output_tokens as f64 / (total.saturating_sub(short_prompt)).as_secs_f64();
    let rss_after = rss_mib();

    // First token through the daemon, over SSE.
    let first_token = rt.block_on(async {
        let mut c = host::daemon::DaemonConfig::default();
        let a = e2e::artifacts();
        c.plugins.manifest_dirs = vec![a.root.join("manifests")];
        c.plugins.lib_dirs = vec![a.lib_dir.clone()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut state = host::daemon::AppState::new(c, addr).unwrap();
        state.prepare_models().await;
        let state = Arc::new(state);
        tokio::spawn(host::daemon::serve(state, listener, futures::future::pending()));
        let client = reqwest::Client::new();
        let mut samples = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let r = client
                .post(format!("http://{addr}/v1/tasks"))
                .json(&json!({"driver": "local", "input": "Say hello.", "stream": true, "config": {"max_tokens": 16}}))
                .send()
                .await
                .unwrap();
            let mut body = r.bytes_stream();
            let mut seen = String::new();
            let mut first = None;
            while let Some(chunk) = body.next().await {
                seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                if first.is_none() && seen.contains("event: TextChunkEvent") {
                    first = Some(t.elapsed());
                }
            }
            samples.push(first.unwrap_or_default());
        }
        samples.sort();
        samples[samples.len() / 2]
    });

    println!(
        "\nlocal model (SmolLM2-135M-Instruct Q4_1, llama.cpp, {} threads):\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| model load (first driver instance) | {:.0} ms |",
        load.as_secs_f64() * 1e3
    );
    println!(
        "| prompt processing (context set-up included) | {prompt_tps:.0} tokens/s ({prompt_tokens} tokens in {:.0} ms) |",
        prompt_time.as_secs_f64() * 1e3
    );
    println!(
        "| generation | {gen_tps:.0} tokens/s ({} tokens) |",
        r.usage.output_tokens
    );
    println!(
        "| RSS: host before load / after load / after generating | {rss_before:.0} / {rss_loaded:.0} / {rss_after:.0} MiB |"
    );
    println!(
        "| first token through the daemon (SSE, median of 5) | {:.0} ms |",
        first_token.as_secs_f64() * 1e3
    );
}

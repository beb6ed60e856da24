//! What one call across the plugin boundary costs, against in-process baselines measured in
//! the same run. Run with `cargo bench -p e2e --bench boundary`.
//!
//! Three ways of doing the same driver call:
//! - `in_process_typed`: a `dyn` trait object taking and returning typed structs (no boundary);
//! - `in_process_json`: the same, with the JSON round trip the boundary does (request and
//!   response each encoded and decoded once): what the wire format costs by itself;
//! - `plugin`: the real loaded library through the host's handle (JSON + FFI + panic guard +
//!   plugin runtime entry);
//! - `plugin_process`: the same library process-isolated: the same handle, the JSON over a pipe
//!   to its child (`grip plugin-host`) and back.
//!
//! `child_start` is what a restart after a crash costs (less the back-off): start a child, load
//! the library in it, and answer the first call.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use e2e::{ManifestSpec, artifacts};
use futures::StreamExt;
use host::Registry;
use plugin_api::wire::{Message, PromptRequest, PromptResponse, StreamDelta, Usage};

trait InProcess: Send + Sync {
    fn prompt(&self, r: &PromptRequest) -> PromptResponse;
}

struct Native;

impl InProcess for Native {
    fn prompt(&self, _: &PromptRequest) -> PromptResponse {
        PromptResponse::text(
            "ok",
            Usage {
                input_tokens: 1,
                output_tokens: 1,
            },
        )
    }
}

fn json_round_trip(d: &dyn InProcess, r: &PromptRequest) -> PromptResponse {
    let req: PromptRequest = serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
    let resp = d.prompt(&req);
    serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let path = ManifestSpec::named("bench", "bench_plugin")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .kind("event_listener", &["sync", "async"])
        .write(dir.path(), "bench.toml");
    let mut registry = Registry::new();
    registry.add_manifest(&path, &a.options()).unwrap();
    let driver = registry.get("bench").unwrap().new_driver(None).unwrap();
    let isolated_manifest = ManifestSpec::named("bench", "bench_plugin")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .kind("event_listener", &["sync", "async"])
        .isolated("")
        .write(dir.path(), "bench-isolated.toml");
    let mut isolated = Registry::new();
    isolated
        .add_manifest(&isolated_manifest, &a.options())
        .unwrap();
    let child = isolated.get("bench").unwrap().new_driver(None).unwrap();
    let native: Box<dyn InProcess> = Box::new(Native);
    let request = PromptRequest::new(vec![Message::user("1")]);

    let mut g = c.benchmark_group("sync_call");
    g.bench_function("in_process_typed", |b| {
        b.iter(|| black_box(native.prompt(black_box(&request))))
    });
    g.bench_function("in_process_json", |b| {
        b.iter(|| black_box(json_round_trip(native.as_ref(), black_box(&request))))
    });
    g.bench_function("plugin", |b| {
        b.iter(|| black_box(driver.prompt(black_box(&request)).unwrap()))
    });
    g.bench_function("plugin_process", |b| {
        b.iter(|| black_box(child.prompt(black_box(&request)).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("async_call");
    g.bench_function("in_process_typed", |b| {
        b.iter(|| {
            futures::executor::block_on(async { black_box(native.prompt(black_box(&request))) })
        })
    });
    g.bench_function("in_process_json", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                black_box(json_round_trip(native.as_ref(), &request))
            })
        })
    });
    g.bench_function("plugin", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                black_box(driver.prompt_async(&request).await.unwrap())
            })
        })
    });
    g.bench_function("plugin_process", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                black_box(child.prompt_async(&request).await.unwrap())
            })
        })
    });
    g.finish();

    // Per item: a stream of 1,000 items, time divided by 1,000 (criterion's throughput).
    const ITEMS: usize = 1000;
    let stream_request = PromptRequest::new(vec![Message::user(ITEMS.to_string())]);
    let mut g = c.benchmark_group("stream_item");
    g.throughput(criterion::Throughput::Elements(ITEMS as u64));
    g.bench_function("in_process_typed", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                let mut s = futures::stream::iter(
                    (0..ITEMS).map(|_| StreamDelta::Text { text: "ok".into() }),
                )
                .boxed();
                let mut n = 0;
                while let Some(d) = s.next().await {
                    black_box(d);
                    n += 1;
                }
                n
            })
        })
    });
    g.bench_function("in_process_json", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                let mut s = futures::stream::iter((0..ITEMS).map(|_| {
                    serde_json::to_string(&StreamDelta::Text { text: "ok".into() }).unwrap()
                }))
                .boxed();
                let mut n = 0;
                while let Some(d) = s.next().await {
                    black_box(serde_json::from_str::<StreamDelta>(&d).unwrap());
                    n += 1;
                }
                n
            })
        })
    });
    g.bench_function("plugin", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                let mut s = driver.stream(&stream_request).unwrap();
                let mut n = 0;
                while let Some(d) = s.next().await {
                    black_box(d.unwrap());
                    n += 1;
                }
                assert_eq!(n, ITEMS);
                n
            })
        })
    });
    g.bench_function("plugin_process", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                let mut s = child.stream(&stream_request).unwrap();
                let mut n = 0;
                while let Some(d) = s.next().await {
                    black_box(d.unwrap());
                    n += 1;
                }
                assert_eq!(n, ITEMS);
                n
            })
        })
    });
    g.finish();
}

fn wire(c: &mut Criterion) {
    use plugin_api::wire::{Event, EventKind, FunctionSpec};
    let mut stack = vec![Message::system(
        "You are a helpful assistant. Use the tools when they help.",
    )];
    for i in 0..5 {
        stack.push(Message::user(format!(
            "Question {i}: what is {i} times 17, and what day is it?"
        )));
        stack.push(Message::assistant(format!(
            "Answer {i}: {} and it is Tuesday.",
            i * 17
        )));
    }
    let mut request = PromptRequest::new(stack);
    request.tools = (0..3)
        .map(|i| FunctionSpec {
            name: format!("Tool{i}_run"),
            description: "Does a thing with an input".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}),
        })
        .collect();
    let event = Event::new(
        "task",
        "run",
        EventKind::TextChunk {
            token: "Hello".into(),
        },
    );
    let req_json = serde_json::to_string(&request).unwrap();
    let ev_json = serde_json::to_string(&event).unwrap();
    let mut g = c.benchmark_group("wire_json");
    g.bench_function("encode_prompt_stack_11_messages_3_tools", |b| {
        b.iter(|| serde_json::to_string(black_box(&request)).unwrap())
    });
    g.bench_function("decode_prompt_stack_11_messages_3_tools", |b| {
        b.iter(|| serde_json::from_str::<PromptRequest>(black_box(&req_json)).unwrap())
    });
    g.bench_function("encode_event", |b| {
        b.iter(|| serde_json::to_string(black_box(&event)).unwrap())
    });
    g.bench_function("decode_event", |b| {
        b.iter(|| serde_json::from_str::<Event>(black_box(&ev_json)).unwrap())
    });
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    use host::{EventBus, EventListener};
    use plugin_api::wire::{Event, EventKind};
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let path = ManifestSpec::named("bench", "bench_plugin")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .kind("event_listener", &["sync", "async"])
        .write(dir.path(), "bench.toml");
    let mut registry = host::Registry::new();
    registry.add_manifest(&path, &a.options()).unwrap();
    let plugin = registry.get("bench").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let event = Event::new(
        "t",
        "r",
        EventKind::TextChunk {
            token: "tok".into(),
        },
    );
    let mut g = c.benchmark_group("fan_out");
    for n in [1usize, 3, 10] {
        let native = std::sync::Arc::new(EventBus::new());
        let plugins = std::sync::Arc::new(EventBus::new());
        let mut guards = Vec::new();
        for i in 0..n {
            guards.push(
                native.add_listener(EventListener::on_event(format!("n{i}"), |e| {
                    black_box(&e);
                    Ok(None)
                })),
            );
            let handle = plugin.new_listener(None).unwrap();
            guards
                .push(plugins.add_listener(EventListener::new(format!("p{i}")).driver(handle, 1)));
        }
        g.bench_function(format!("publish_event_{n}_native"), |b| {
            b.iter(|| native.publish_event(&event).unwrap())
        });
        g.bench_function(format!("publish_event_{n}_plugin"), |b| {
            b.iter(|| plugins.publish_event(&event).unwrap())
        });
        g.bench_function(format!("apublish_event_{n}_native"), |b| {
            b.iter(|| rt.block_on(native.apublish_event(&event)))
        });
        g.bench_function(format!("apublish_event_{n}_plugin"), |b| {
            b.iter(|| rt.block_on(plugins.apublish_event(&event)))
        });
    }
    g.finish();
}

fn child_start(c: &mut Criterion) {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let manifest = ManifestSpec::named("bench", "bench_plugin")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .kind("event_listener", &["sync", "async"])
        .isolated("")
        .write(dir.path(), "bench-isolated.toml");
    let request = PromptRequest::new(vec![Message::user("1")]);
    let mut g = c.benchmark_group("child_start");
    g.sample_size(20);
    g.bench_function("start_load_first_call", |b| {
        b.iter(|| {
            let mut r = Registry::new();
            r.add_manifest(&manifest, &a.options()).unwrap();
            let d = r.get("bench").unwrap().new_driver(None).unwrap();
            black_box(d.prompt(&request).unwrap())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench, child_start, wire, fan_out
}
criterion_main!(benches);

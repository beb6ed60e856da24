//! What a PromptTask and the event bus cost, measured against baselines in the same run.
//! Run with `cargo bench -p e2e --bench task`.
//!
//! - `task/*`: one task per iteration with the scripted driver (no network, no delay), against
//!   a bare driver call (`driver_call_*`), so the ratio is the task machinery's own cost
//!   (events, prompt stack, loop). Single-threaded, so time per task is CPU per task.
//! - `apublish/*`: events/s through `apublish_event` to 1, 3 and 10 async listeners, against
//!   `publish_event` to as many sync listeners.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use e2e::first_party_registry;
use host::events::HandlerResult;
use host::{EventBus, EventListener, PromptTask};
use plugin_api::wire::{Event, EventKind, Message, PromptRequest};

fn bench(c: &mut Criterion) {
    let registry = first_party_registry();
    let driver = registry.get("scripted").unwrap().new_driver(None).unwrap();
    let tool_script = serde_json::json!({"script": [
        {"tool_calls": [{"name": "TextTools_word_count", "arguments": {"text": "a b c"}}]},
        {"text": "3"}
    ]});
    let tool_driver = registry
        .get("scripted")
        .unwrap()
        .new_driver(Some(&tool_script))
        .unwrap();
    let tools = registry.get("text-tools").unwrap().new_tool(None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = PromptRequest::new(vec![Message::user("hello")]);

    let mut g = c.benchmark_group("task");
    g.bench_function("driver_call_sync", |b| {
        b.iter(|| black_box(driver.prompt(&request).unwrap()))
    });
    g.bench_function("driver_call_async", |b| {
        b.iter(|| rt.block_on(async { black_box(driver.prompt_async(&request).await.unwrap()) }))
    });
    let bus = Arc::new(EventBus::new());
    g.bench_function("run", |b| {
        b.iter(|| {
            black_box(
                PromptTask::new(driver.clone(), "hello")
                    .event_bus(Arc::clone(&bus))
                    .run()
                    .unwrap(),
            )
        })
    });
    g.bench_function("async_run", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(
                    PromptTask::new(driver.clone(), "hello")
                        .event_bus(Arc::clone(&bus))
                        .async_run()
                        .await
                        .unwrap(),
                )
            })
        })
    });
    g.bench_function("run_with_tool_round_trip", |b| {
        b.iter(|| {
            black_box(
                PromptTask::new(tool_driver.clone(), "count")
                    .tool(tools.clone())
                    .event_bus(Arc::clone(&bus))
                    .run()
                    .unwrap(),
            )
        })
    });
    g.bench_function("async_run_with_tool_round_trip", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(
                    PromptTask::new(tool_driver.clone(), "count")
                        .tool(tools.clone())
                        .event_bus(Arc::clone(&bus))
                        .async_run()
                        .await
                        .unwrap(),
                )
            })
        })
    });
    g.finish();

    let event = Event::new(
        "t",
        "r",
        EventKind::TextChunk {
            token: "tok".into(),
        },
    );
    let mut g = c.benchmark_group("apublish");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 3, 10] {
        let sync_bus = Arc::new(EventBus::new());
        let async_bus = Arc::new(EventBus::new());
        let mut guards = Vec::new();
        for i in 0..n {
            guards.push(sync_bus.add_listener(EventListener::on_event(
                format!("s{i}"),
                |e: Event| {
                    black_box(&e);
                    Ok(None)
                },
            )));
            guards.push(async_bus.add_listener(EventListener::on_event_async(
                format!("a{i}"),
                |e: Event| async move {
                    black_box(&e);
                    HandlerResult::Ok(None)
                },
            )));
        }
        g.bench_function(format!("sync_publish_{n}_listeners"), |b| {
            b.iter(|| sync_bus.publish_event(black_box(&event)).unwrap())
        });
        g.bench_function(format!("apublish_{n}_async_listeners"), |b| {
            b.iter(|| rt.block_on(async_bus.apublish_event(black_box(&event))))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);

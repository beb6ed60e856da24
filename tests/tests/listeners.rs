//! The listener plugins against a real file and a real local HTTP endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use e2e::first_party_registry;
use host::{EventBus, EventListener, ListenerHandle, PromptTask, Registry};
use plugin_api::wire::{Event, EventKind};
use serde_json::{Value, json};

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(first_party_registry)
}

fn listener(id: &str, config: Value) -> ListenerHandle {
    registry()
        .get(id)
        .unwrap()
        .new_listener(Some(&config))
        .unwrap()
}

fn events(n: usize, tag: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                tag,
                "run",
                EventKind::TextChunk {
                    token: format!("{tag}-{i}"),
                },
            )
        })
        .collect()
}

#[derive(Default)]
struct Endpoint {
    batches: Mutex<Vec<Vec<Value>>>,
    requests: AtomicUsize,
    completed: AtomicUsize,
    fail_first: AtomicUsize,
    delay_ms: AtomicUsize,
}

async fn hook(State(s): State<Arc<Endpoint>>, body: String) -> StatusCode {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    if n < s.fail_first.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let v: Vec<Value> = serde_json::from_str(&body).unwrap();
    s.batches.lock().unwrap().push(v);
    s.completed.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

fn endpoint() -> (Arc<Endpoint>, String) {
    let state = Arc::new(Endpoint::default());
    let addr = e2e::serve_router(
        Router::new()
            .route("/hook", post(hook))
            .with_state(Arc::clone(&state)),
    );
    (state, format!("http://{addr}/hook"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_writes_whole_lines_under_concurrency_and_reports_write_failures() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let l = listener("jsonl", json!({"path": file}));
    let mut handles = Vec::new();
    for t in 0..8 {
        let l = l.clone();
        handles.push(std::thread::spawn(move || {
            for _ in 0..50 {
                l.publish(&events(3, &format!("t{t}"))).unwrap();
            }
        }));
    }
    for _ in 0..50 {
        l.publish_async(&events(3, "async")).await.unwrap();
    }
    for h in handles {
        h.join().unwrap();
    }
    l.flush_async().await.unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        9 * 50 * 3,
        "every event, one whole JSON line each"
    );
    assert!(lines.iter().all(|l| l["type"] == "TextChunkEvent"));

    // A full disk: the error is reported to the bus, which logs it; the task goes on.
    let full = listener("jsonl", json!({"path": "/dev/full"}));
    let e = full.publish(&events(1, "x")).unwrap_err();
    assert!(e.message.contains("cannot write to /dev/full"), "{e}");
    let bus = Arc::new(EventBus::new());
    let _g = bus.add_listener(EventListener::new("disk").driver(full, 1));
    let driver = registry()
        .get("scripted")
        .unwrap()
        .new_driver(None)
        .unwrap();
    let out = PromptTask::new(driver, "hi")
        .event_bus(Arc::clone(&bus))
        .async_run()
        .await
        .unwrap();
    assert_eq!(out.text, "echo: hi");
    assert!(bus.listener_failures() >= 4);

    let e = registry()
        .get("jsonl")
        .unwrap()
        .new_listener(Some(&json!({"path": "/nonexistent/dir/x.jsonl"})))
        .unwrap_err();
    assert!(
        e.message.contains("cannot open /nonexistent/dir/x.jsonl"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_batches_retries_and_flushes() {
    let (ep, url) = endpoint();
    ep.fail_first.store(1, Ordering::SeqCst);
    let l = listener(
        "webhook",
        json!({"url": url, "batch_size": 3, "max_delay_ms": 5000, "http": {"retry": {"initial_backoff_ms": 5}}}),
    );
    l.publish_async(&events(7, "w")).await.unwrap();
    l.flush_async().await.unwrap();
    let batches = ep.batches.lock().unwrap().clone();
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 1], "full batches, then the rest at flush");
    let tokens: Vec<&str> = batches
        .iter()
        .flatten()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, (0..7).map(|i| format!("w-{i}")).collect::<Vec<_>>());
    assert_eq!(
        ep.requests.load(Ordering::SeqCst),
        4,
        "the first POST failed and was retried"
    );

    // A partial batch goes out after max_delay without a flush.
    let (ep2, url2) = endpoint();
    let l2 = listener(
        "webhook",
        json!({"url": url2, "batch_size": 100, "max_delay_ms": 50}),
    );
    l2.publish(&events(2, "d")).unwrap();
    for _ in 0..100 {
        if ep2.completed.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ep2.batches.lock().unwrap()[0].len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_endpoint_never_blocks_publishing_and_losses_are_reported() {
    let (ep, url) = endpoint();
    ep.delay_ms.store(3000, Ordering::SeqCst);
    let l = listener(
        "webhook",
        json!({"url": url, "batch_size": 10, "max_delay_ms": 10}),
    );
    l.publish(&events(100, "slow")).unwrap();
    assert_eq!(
        ep.completed.load(Ordering::SeqCst),
        0,
        "publish returned while the endpoint was still busy"
    );

    // Nothing listens on port 9: every batch fails, the small queue overflows.
    let dead = listener(
        "webhook",
        json!({"url": "http://127.0.0.1:9/hook", "batch_size": 5, "max_delay_ms": 10, "queue_size": 5,
               "flush_timeout_ms": 3000, "http": {"retry": {"max_retries": 0}}}),
    );
    for _ in 0..10 {
        dead.publish_async(&events(10, "dead")).await.unwrap();
    }
    let e = dead.flush_async().await.unwrap_err();
    assert!(
        e.message.contains("events lost since the last flush"),
        "{e}"
    );
    assert!(e.message.contains("dropped from a full queue"), "{e}");
    // Reported once: a second flush with nothing new lost is clean.
    dead.flush_async().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_flushes_a_global_webhook_at_shutdown() {
    let (ep, url) = endpoint();
    let mut c = host::daemon::DaemonConfig::default();
    let a = e2e::artifacts();
    c.plugins.manifest_dirs = vec![a.root.join("manifests")];
    c.plugins.lib_dirs = vec![a.lib_dir.clone()];
    let table: toml::Table = toml::from_str(&format!(
        "url = {url:?}\nbatch_size = 100\nmax_delay_ms = 60000\n"
    ))
    .unwrap();
    c.listeners = vec![host::daemon::config::GlobalListener {
        plugin: "webhook".into(),
        config: Some(table),
        batch_size: 1,
    }];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(host::daemon::AppState::new(c, addr).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(host::daemon::serve(state, listener, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/v1/tasks"))
        .json(&json!({"driver": "scripted", "input": "one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let delivered = |ep: &Endpoint| {
        ep.batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum::<usize>()
    };
    assert_eq!(delivered(&ep), 4, "flushed at task end");

    // A task whose client leaves mid-stream is stopped: its FinishTaskEvent (with the reason)
    // goes out and the plugin's batch is flushed then, not at shutdown.
    let r = client
        .post(format!("http://{addr}/v1/tasks"))
        .json(
            &json!({"driver": "scripted", "input": "two", "stream": true,
                      "config": {"delay_ms": 100, "chunk_chars": 2}}),
        )
        .send()
        .await
        .unwrap();
    let mut body = futures::StreamExt::boxed(r.bytes_stream());
    let mut seen = String::new();
    while !seen.contains("TextChunkEvent") {
        seen.push_str(&String::from_utf8_lossy(
            &futures::StreamExt::next(&mut body).await.unwrap().unwrap(),
        ));
    }
    drop(body);
    for _ in 0..250 {
        if delivered(&ep) > 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batches = ep.batches.lock().unwrap().clone();
    let after: Vec<&Value> = batches.iter().flatten().skip(4).collect();
    assert!(
        after.iter().any(|e| e["type"] == "TextChunkEvent"),
        "{after:?}"
    );
    let last = after.last().unwrap();
    assert_eq!(last["type"], "FinishTaskEvent", "{after:?}");
    assert_eq!(
        last["error"], "task stopped: cancelled: the client went away",
        "{last}"
    );
    assert!(after.iter().all(|e| e["task_id"] == last["task_id"]));
    stop_tx.send(()).unwrap();
    let served = server.await.unwrap().unwrap();
    assert_eq!(served.abandoned, 0);
}

//! PromptTask, EventBus and EventListener with real plugins: both paths, the spec's type-safety
//! errors, tools, output schemas, streaming, event order, isolation and concurrency.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{ManifestSpec, artifacts, panicky, scripted};
use host::events::HandlerResult;
use host::task::{ActionsSubtask, SubtaskRunners};
use host::{
    ConversationMemory, Driver, EventBus, EventListener, PromptTask, Registry, TaskError,
    ToolHandle,
};
use plugin_api::wire::{Event, EventKind, Message, Role};
use serde_json::{Value, json};

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        let a = artifacts();
        let dir = tempfile::tempdir().unwrap().keep();
        scripted("scripted").write(&dir, "scripted.toml");
        ManifestSpec::named("mock-sync", "mock_sync_driver")
            .kind("prompt_driver", &["sync"])
            .write(&dir, "mock-sync.toml");
        ManifestSpec::named("mock-async", "mock_async_driver")
            .kind("prompt_driver", &["async", "stream"])
            .write(&dir, "mock-async.toml");
        ManifestSpec::named("text-tools", "text_tools")
            .kind("tool", &["sync", "async"])
            .write(&dir, "text-tools.toml");
        ManifestSpec::named("slow", "slow_tool")
            .kind("tool", &["async"])
            .write(&dir, "slow.toml");
        ManifestSpec::named("slow-sync", "slow_sync_tool")
            .kind("tool", &["sync"])
            .write(&dir, "slow-sync.toml");
        ManifestSpec::named("jsonl", "jsonl_listener")
            .kind("event_listener", &["sync", "async"])
            .write(&dir, "jsonl.toml");
        panicky().write(&dir, "panicky.toml");
        let r = Registry::load_dirs(&[dir], &a.options());
        assert!(r.refused().is_empty(), "{:?}", r.refused());
        r
    })
}

fn driver(id: &str, config: Value) -> Driver {
    registry()
        .get(id)
        .unwrap()
        .new_driver(Some(&config))
        .unwrap()
}

fn tool(id: &str) -> ToolHandle {
    registry().get(id).unwrap().new_tool(None).unwrap()
}

/// A bus with a sync listener recording every event.
fn recorded_bus() -> (Arc<EventBus>, Arc<Mutex<Vec<Event>>>, host::ListenerGuard) {
    let bus = Arc::new(EventBus::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let guard = bus.add_listener(EventListener::on_event(
        "recorder",
        move |e: Event| -> HandlerResult {
            s.lock().unwrap().push(e);
            Ok(None)
        },
    ));
    (bus, seen, guard)
}

fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.type_name()).collect()
}

fn tool_round_trip_script() -> Value {
    json!({"script": [
        {"tool_calls": [
            {"name": "TextTools_word_count", "arguments": {"text": "one two three"}},
            {"name": "TextTools_uppercase", "arguments": {"text": "shout"}}
        ]},
        {"text": "three words, and SHOUT"}
    ]})
}

const TOOL_ROUND_TRIP_ORDER: [&str; 8] = [
    "StartTaskEvent",
    "StartPromptEvent",
    "FinishPromptEvent",
    "StartActionsSubtaskEvent",
    "FinishActionsSubtaskEvent",
    "StartPromptEvent",
    "FinishPromptEvent",
    "FinishTaskEvent",
];

#[test]
fn run_on_the_sync_path_with_a_tool_round_trip_publishes_events_in_order() {
    let (bus, seen, _g) = recorded_bus();
    let task = PromptTask::new(
        driver("mock-sync", tool_round_trip_script()),
        "count please",
    )
    .tool(tool("text-tools"))
    .event_bus(Arc::clone(&bus));
    let out = task.run().unwrap();
    assert_eq!(out.text, "three words, and SHOUT");
    assert_eq!(out.subtasks, 1);
    assert!(out.usage.input_tokens > 0);

    let events = seen.lock().unwrap().clone();
    assert_eq!(types(&events), TOOL_ROUND_TRIP_ORDER);
    assert!(
        events
            .iter()
            .all(|e| e.task_id == task.id() && e.run_id == events[0].run_id)
    );
    let EventKind::FinishActionsSubtask { results, .. } = &events[4].kind else {
        panic!()
    };
    assert_eq!(results.len(), 2);
    assert_eq!(
        (results[0].content.as_str(), results[1].content.as_str()),
        ("3", "SHOUT")
    );
    // The second prompt carries the assistant turn and both tool results, in call order.
    let EventKind::StartPrompt { messages, driver } = &events[5].kind else {
        panic!()
    };
    assert_eq!(driver, "mock-sync");
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant, Role::Tool, Role::Tool]);
    let EventKind::FinishTask {
        output,
        error,
        usage,
    } = &events[7].kind
    else {
        panic!()
    };
    assert_eq!(
        (output.as_deref(), error),
        (Some("three words, and SHOUT"), &None)
    );
    assert_eq!(*usage, out.usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_run_with_streaming_publishes_chunks_and_returns_the_aggregate() {
    let (bus, seen, _g) = recorded_bus();
    let script = json!({"chunk_chars": 4, "script": [
        {"tool_calls": [{"name": "TextTools_reverse", "arguments": {"text": "abc"}}]},
        {"text": "reversed: cba"}
    ]});
    let task = PromptTask::new(driver("mock-async", script), "reverse abc")
        .tool(tool("text-tools"))
        .stream(true)
        .event_bus(Arc::clone(&bus));
    let out = task.async_run().await.unwrap();
    assert_eq!(out.text, "reversed: cba");

    let events = seen.lock().unwrap().clone();
    let t = types(&events);
    let chunks: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TextChunk { token } => Some(token.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(chunks, out.text, "text chunks concatenate to the result");
    assert_eq!(t.iter().filter(|t| **t == "ActionChunkEvent").count(), 2);
    // Chunks sit between their prompt's start and finish.
    let first_chunk = t.iter().position(|t| *t == "TextChunkEvent").unwrap();
    let last_start_prompt = t.iter().rposition(|t| *t == "StartPromptEvent").unwrap();
    let last_finish_prompt = t.iter().rposition(|t| *t == "FinishPromptEvent").unwrap();
    assert!(
        last_start_prompt < first_chunk && first_chunk < last_finish_prompt,
        "{t:?}"
    );
    let without_chunks: Vec<&str> = t
        .into_iter()
        .filter(|t| !t.ends_with("ChunkEvent"))
        .collect();
    assert_eq!(without_chunks, TOOL_ROUND_TRIP_ORDER);
}

#[test]
fn streaming_works_on_the_sync_path_too() {
    let (bus, seen, _g) = recorded_bus();
    let task = PromptTask::new(driver("scripted", json!({"chunk_chars": 2})), "stream me")
        .stream(true)
        .event_bus(bus);
    let out = task.run().unwrap();
    assert_eq!(out.text, "echo: stream me");
    let n = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind.type_name() == "TextChunkEvent")
        .count();
    assert_eq!(n, "echo: stream me".len().div_ceil(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_run_on_a_sync_only_driver_is_an_error_naming_plugin_and_capability() {
    let (bus, seen, _g) = recorded_bus();
    let task = PromptTask::new(driver("mock-sync", json!({})), "hi").event_bus(bus);
    let e = task.async_run().await.unwrap_err();
    assert!(matches!(e, TaskError::MissingCapability { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "prompt driver `mock-sync` lacks the `async` capability needed by async_run()"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused run publishes nothing"
    );

    let e = tokio::task::block_in_place(|| {
        PromptTask::new(driver("mock-async", json!({})), "hi").run()
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("`mock-async` lacks the `sync` capability needed by run()"),
        "{e}"
    );
    let e = tokio::task::block_in_place(|| {
        PromptTask::new(driver("mock-sync", json!({})), "hi")
            .stream(true)
            .run()
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("lacks the `stream` capability"),
        "{e}"
    );
}

#[test]
fn a_sync_run_that_reaches_an_async_listener_is_an_error_not_a_skip() {
    let bus = Arc::new(EventBus::new());
    let called = Arc::new(Mutex::new(0));
    let c = Arc::clone(&called);
    let _g = bus.add_listener(EventListener::on_event_async("db-logger", move |_e| {
        let c = Arc::clone(&c);
        async move {
            *c.lock().unwrap() += 1;
            Ok(None)
        }
    }));
    let task = PromptTask::new(driver("scripted", json!({})), "hi").event_bus(Arc::clone(&bus));
    let e = task.run().unwrap_err();
    assert!(matches!(e, TaskError::Publish(_)), "{e}");
    assert!(
        e.to_string()
            .contains("event listener `db-logger` has an async handler"),
        "{e}"
    );
    assert_eq!(*called.lock().unwrap(), 0);

    // The explicit sync publish says the same.
    let ev = Event::new("t", "r", EventKind::TextChunk { token: "x".into() });
    assert!(bus.publish_event(&ev).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_async_listeners_run_concurrently() {
    let bus = Arc::new(EventBus::new());
    let spans: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let mut guards = Vec::new();
    for i in 0..3 {
        let spans = Arc::clone(&spans);
        guards.push(
            bus.add_listener(
                EventListener::on_event_async(format!("slow-{i}"), move |_e| {
                    let spans = Arc::clone(&spans);
                    async move {
                        let start = Instant::now();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        spans.lock().unwrap().push((start, Instant::now()));
                        Ok(None)
                    }
                })
                .event_types(["StartTaskEvent"]),
            ),
        );
    }
    PromptTask::new(driver("scripted", json!({})), "hi")
        .event_bus(Arc::clone(&bus))
        .async_run()
        .await
        .unwrap();
    let spans = spans.lock().unwrap();
    assert_eq!(spans.len(), 3);
    // Concurrent: every handler started before any of them ended.
    let latest_start = spans.iter().map(|s| s.0).max().unwrap();
    let earliest_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "handlers ran one after another"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actions_of_one_subtask_run_concurrently_and_keep_call_order() {
    for (tool_id, name) in [("slow", "Slow_sleep"), ("slow-sync", "SlowSync_sleep")] {
        let calls: Vec<Value> = [60, 20, 40]
            .iter()
            .map(|ms| json!({"name": name, "arguments": {"ms": ms}}))
            .collect();
        let script = json!({"script": [{"tool_calls": calls}, {"text": "slept"}]});
        let (bus, seen, _g) = recorded_bus();
        PromptTask::new(driver("mock-async", script), "sleep")
            .tool(tool(tool_id))
            .event_bus(bus)
            .async_run()
            .await
            .unwrap();
        let events = seen.lock().unwrap().clone();
        let results = events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::FinishActionsSubtask { results, .. } => Some(results.clone()),
                _ => None,
            })
            .unwrap();
        let spans: Vec<(u64, u64)> = results
            .iter()
            .map(|m| {
                let v: Value = serde_json::from_str(&m.content).unwrap();
                (
                    v["start_us"].as_u64().unwrap(),
                    v["end_us"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            results
                .iter()
                .map(|m| m.tool_call_id.clone().unwrap())
                .collect::<Vec<_>>(),
            ["call_0_0", "call_0_1", "call_0_2"],
            "results in call order"
        );
        let latest_start = spans.iter().map(|s| s.0).max().unwrap();
        let earliest_end = spans.iter().map(|s| s.1).min().unwrap();
        assert!(
            latest_start < earliest_end,
            "{tool_id}: calls ran one after another: {spans:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tools_bad_arguments_and_tool_failures_go_back_to_the_model() {
    let script = json!({"script": [
        {"tool_calls": [
            {"name": "Nope_nothing", "arguments": {}},
            {"name": "TextTools_word_count", "arguments": {"txt": 1}},
            {"name": "Panicky_boom", "arguments": {}},
            {"name": "TextTools_word_count", "arguments": {"text": "still works"}}
        ]},
        {"text": "recovered"}
    ]});
    for path in ["sync", "async"] {
        let (bus, seen, _g) = recorded_bus();
        let task = PromptTask::new(driver("scripted", script.clone()), "go")
            .tools([tool("text-tools"), tool("panicky")])
            .event_bus(bus);
        let out = if path == "sync" {
            tokio::task::block_in_place(|| task.run())
        } else {
            task.async_run().await
        }
        .unwrap();
        assert_eq!(out.text, "recovered", "{path}");
        let events = seen.lock().unwrap().clone();
        let results = events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::FinishActionsSubtask { results, .. } => Some(results.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            results[0].is_error
                && results[0]
                    .content
                    .starts_with("unknown tool `Nope_nothing`; the tools on offer:")
        );
        assert!(results[0].content.contains("TextTools_word_count"));
        assert!(
            results[1].is_error
                && results[1]
                    .content
                    .contains("invalid arguments for `TextTools_word_count`")
        );
        assert!(
            results[2].is_error && results[2].content.contains("plugin `panicky`"),
            "{}",
            results[2].content
        );
        assert!(!results[3].is_error && results[3].content == "2");
    }
}

#[test]
fn max_subtasks_bounds_the_loop_with_a_clear_error_and_a_finish_event() {
    let call =
        json!({"tool_calls": [{"name": "TextTools_word_count", "arguments": {"text": "a"}}]});
    let script = json!({"script": [call, call, call, call]});
    let (bus, seen, _g) = recorded_bus();
    let e = PromptTask::new(driver("scripted", script), "loop")
        .tool(tool("text-tools"))
        .max_subtasks(2)
        .event_bus(bus)
        .run()
        .unwrap_err();
    assert!(matches!(e, TaskError::MaxSubtasks { limit: 2, .. }), "{e}");
    let events = seen.lock().unwrap().clone();
    let EventKind::FinishTask { error, output, .. } = &events.last().unwrap().kind else {
        panic!()
    };
    assert!(output.is_none());
    assert!(
        error
            .as_deref()
            .unwrap()
            .contains("exceeded max_subtasks (2)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_schema_failures_are_sent_back_until_valid() {
    let schema = json!({
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": false
    });
    let script = json!({"script": [
        {"text": "four"},
        {"json": {"answer": "four"}},
        {"text": "```json\n{\"answer\": 4}\n```"}
    ]});
    let (bus, seen, _g) = recorded_bus();
    let out = PromptTask::new(driver("mock-async", script.clone()), "2+2?")
        .output_schema(schema.clone())
        .event_bus(bus)
        .async_run()
        .await
        .unwrap();
    assert_eq!(out.json, Some(json!({"answer": 4})));
    assert_eq!(out.subtasks, 2);
    let events = seen.lock().unwrap().clone();
    let EventKind::StartPrompt { messages, .. } = &events
        .iter()
        .rev()
        .find(|e| e.kind.type_name() == "StartPromptEvent")
        .unwrap()
        .kind
    else {
        panic!()
    };
    let last_feedback = &messages[messages.len() - 1];
    assert_eq!(last_feedback.role, Role::User);
    assert!(
        last_feedback.content.contains("at `/answer`"),
        "{}",
        last_feedback.content
    );

    // With a limit of 1 it fails, carrying the last errors.
    let e = tokio::task::block_in_place(|| {
        PromptTask::new(driver("scripted", script), "2+2?")
            .output_schema(schema)
            .max_subtasks(1)
            .run()
    })
    .unwrap_err();
    let TaskError::MaxSubtasks { last_errors, .. } = &e else {
        panic!("{e}")
    };
    assert!(last_errors[0].contains("/answer"), "{last_errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_failures_are_carried_by_the_finish_events() {
    let script =
        json!({"script": [{"error": "upstream is down", "kind": "upstream", "retryable": true}]});
    let (bus, seen, _g) = recorded_bus();
    let e = PromptTask::new(driver("scripted", script), "hi")
        .event_bus(bus)
        .async_run()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "plugin `scripted` prompt_async: upstream error: upstream is down (retryable)"
        ),
        "{e}"
    );
    let events = seen.lock().unwrap().clone();
    assert_eq!(
        types(&events),
        [
            "StartTaskEvent",
            "StartPromptEvent",
            "FinishPromptEvent",
            "FinishTaskEvent"
        ]
    );
    let EventKind::FinishPrompt { error, .. } = &events[2].kind else {
        panic!()
    };
    assert!(error.as_deref().unwrap().contains("upstream is down"));
    let EventKind::FinishTask { error, .. } = &events[3].kind else {
        panic!()
    };
    assert!(error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_listeners_are_skipped_and_the_others_get_everything() {
    let (bus, seen, _g) = recorded_bus();
    let _bad = bus.add_listener(EventListener::on_event(
        "errs",
        |_e| Err("disk full".into()),
    ));
    let _worse = bus.add_listener(EventListener::on_event("panics", |_e| {
        panic!("listener bug")
    }));
    let _async_bad = bus.add_listener(EventListener::on_event_async("async-panics", |_e| async {
        panic!("async listener bug")
    }));
    let out = PromptTask::new(driver("scripted", json!({})), "hi")
        .event_bus(Arc::clone(&bus))
        .async_run()
        .await
        .unwrap();
    assert_eq!(out.text, "echo: hi");
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(
        bus.listener_failures(),
        12,
        "three failing listeners x four events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_filter_by_type_transform_events_and_feed_a_batched_driver_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let jsonl = registry()
        .get("jsonl")
        .unwrap()
        .new_listener(Some(&json!({"path": file})))
        .unwrap();
    let bus = Arc::new(EventBus::new());
    // Only prompt events; drop StartPrompt, tag FinishPrompt; batches of 10 (flushed at task end).
    let guard = bus.add_listener(
        EventListener::on_event("tagger", |mut e: Event| -> HandlerResult {
            if e.kind.type_name() == "StartPromptEvent" {
                return Ok(None);
            }
            e.meta.insert("tagged".into(), json!(true));
            Ok(Some(e))
        })
        .event_types(["StartPromptEvent", "FinishPromptEvent"])
        .driver(jsonl, 10),
    );
    let script = json!({"script": [
        {"tool_calls": [{"name": "TextTools_word_count", "arguments": {"text": "a b"}}]},
        {"text": "done"}
    ]});
    PromptTask::new(driver("scripted", script), "go")
        .tool(tool("text-tools"))
        .event_bus(Arc::clone(&bus))
        .async_run()
        .await
        .unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "two FinishPrompt events, flushed at task end"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["type"] == "FinishPromptEvent" && l["meta"]["tagged"] == true)
    );

    // Scope: once the guard is gone the listener no longer receives anything.
    guard.aclose().await;
    assert!(bus.listeners().is_empty());
    PromptTask::new(driver("scripted", json!({})), "again")
        .event_bus(Arc::clone(&bus))
        .async_run()
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
}

#[test]
fn a_listener_driver_plugin_that_fails_never_fails_the_task() {
    let bus = Arc::new(EventBus::new());
    let broken = registry()
        .get("panicky")
        .unwrap()
        .new_listener(None)
        .unwrap();
    let _g = bus.add_listener(EventListener::new("to-panicky").driver(broken, 1));
    let out = PromptTask::new(driver("scripted", json!({})), "hi")
        .event_bus(Arc::clone(&bus))
        .run()
        .unwrap();
    assert_eq!(out.text, "echo: hi");
    assert!(bus.listener_failures() >= 4, "{}", bus.listener_failures());
}

#[test]
fn rules_memory_and_reflect_on_tool_use() {
    let memory = Arc::new(ConversationMemory::new(Some(5)));
    let (bus, seen, _g) = recorded_bus();
    let d = driver("scripted", json!({}));
    PromptTask::new(d.clone(), "first")
        .memory(Arc::clone(&memory))
        .event_bus(Arc::clone(&bus))
        .run()
        .unwrap();
    PromptTask::new(d, "second")
        .memory(Arc::clone(&memory))
        .rule("Be brief")
        .event_bus(Arc::clone(&bus))
        .run()
        .unwrap();
    assert_eq!(memory.len(), 2);
    let events = seen.lock().unwrap().clone();
    let EventKind::StartPrompt { messages, .. } = &events
        .iter()
        .rev()
        .find(|e| e.kind.type_name() == "StartPromptEvent")
        .unwrap()
        .kind
    else {
        panic!()
    };
    let texts: Vec<(Role, &str)> = messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            (Role::System, "Rules:\n- Be brief"),
            (Role::User, "first"),
            (Role::Assistant, "echo: first"),
            (Role::User, "second")
        ]
    );

    // Without reflection the tool results are the output, after a single prompt.
    let script = json!({"script": [{"tool_calls": [{"name": "TextTools_uppercase", "arguments": {"text": "loud"}}]}]});
    let out = PromptTask::new(driver("scripted", script), "x")
        .tool(tool("text-tools"))
        .reflect_on_tool_use(false)
        .run()
        .unwrap();
    assert_eq!(out.text, "LOUD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_runners_replace_the_defaults_on_either_path() {
    let script = json!({"script": [
        {"tool_calls": [{"name": "TextTools_uppercase", "arguments": {"text": "x"}}]},
        {"text": "ok"}
    ]});
    let sync_runner: host::task::ActionsRunner =
        Arc::new(|_task: &PromptTask, sub: &ActionsSubtask| {
            sub.calls
                .iter()
                .map(|c| Message::tool_result(c.id.clone(), "from the sync runner", false))
                .collect()
        });
    for path in ["sync", "async-mapped"] {
        let (bus, seen, _g) = recorded_bus();
        let task = PromptTask::new(driver("scripted", script.clone()), "x")
            .tool(tool("text-tools"))
            .subtask_runners(SubtaskRunners {
                actions: Some(Arc::clone(&sync_runner)),
                ..Default::default()
            })
            .event_bus(bus);
        if path == "sync" {
            tokio::task::block_in_place(|| task.run()).unwrap();
        } else {
            task.async_run().await.unwrap();
        }
        let events = seen.lock().unwrap().clone();
        let found = events.iter().any(|e| {
            matches!(&e.kind, EventKind::FinishActionsSubtask { results, .. } if results[0].content == "from the sync runner")
        });
        assert!(found, "{path}");
    }
    let async_runner: host::task::AsyncActionsRunner = Arc::new(|_task, sub: ActionsSubtask| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            sub.calls
                .iter()
                .map(|c| Message::tool_result(c.id.clone(), "from the async runner", false))
                .collect()
        })
    });
    let (bus, seen, _g) = recorded_bus();
    let task = PromptTask::new(driver("scripted", script), "x")
        .tool(tool("text-tools"))
        .subtask_runners(SubtaskRunners {
            async_actions: Some(async_runner),
            ..Default::default()
        })
        .event_bus(bus);
    task.async_run().await.unwrap();
    assert!(seen.lock().unwrap().iter().any(|e| {
        matches!(&e.kind, EventKind::FinishActionsSubtask { results, .. } if results[0].content == "from the async runner")
    }));
    // An async-only runner cannot run on the sync path: refused before anything is published.
    seen.lock().unwrap().clear();
    let e = tokio::task::block_in_place(|| task.run()).unwrap_err();
    assert!(
        matches!(e, TaskError::AsyncRunnerOnSyncPath { runner: "actions" }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("use async_run(), or set a sync runner too"),
        "{e}"
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_on_their_own_buses_never_see_each_others_events() {
    let mut handles = Vec::new();
    for i in 0..8 {
        handles.push(tokio::spawn(async move {
            let (bus, seen, _g) = recorded_bus();
            let task = PromptTask::new(
                driver("scripted", json!({"delay_ms": 5})),
                format!("task {i}"),
            )
            .stream(true)
            .event_bus(bus);
            let out = task.async_run().await.unwrap();
            let events = seen.lock().unwrap().clone();
            assert!(events.iter().all(|e| e.task_id == task.id()));
            out.text
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), format!("echo: task {i}"));
    }
}

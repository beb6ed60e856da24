//! The Anthropic Messages driver plugin against a real local server speaking the Messages wire
//! format: every mode, turn building, parallel tool use, structured output through a forced
//! tool, the SSE event sequence, usage accounting, retries, timeouts and the fault modes of the
//! OpenAI tests.

use std::sync::{Arc, OnceLock};

use e2e::mock_llm::anthropic::{
    block_stop, event, json_delta, message, message_delta, message_start, message_stop, ping,
    sse_text, stream_error, text, text_delta, text_start, tool_start, tool_uses,
};
use e2e::mock_llm::{After, MockLlm, Reply, anthropic};
use e2e::remote::{RemoteDriver, collect, last_error, request, restarts, streamed_text};
use futures::StreamExt;
use host::error::ErrorKind;
use host::{Driver, EventBus, PromptTask};
use plugin_api::wire::{FunctionSpec, Message, PromptRequest, StreamDelta, ToolCall};
use serde_json::{Value, json};

const KEY_VAR: &str = "E2E_ANTHROPIC_TEST_KEY";
const KEY: &str = "sk-ant-test-very-secret-key-456";

fn remote() -> &'static RemoteDriver {
    static R: OnceLock<RemoteDriver> = OnceLock::new();
    R.get_or_init(|| RemoteDriver::load("anthropic", "anthropic_driver", KEY_VAR, KEY))
}

fn try_driver(config: Value) -> Result<Driver, host::CallError> {
    remote().try_driver(&config)
}

fn driver_with(mock: &MockLlm, extra: Value) -> Driver {
    remote().driver_with(mock, extra)
}

fn driver(mock: &MockLlm) -> Driver {
    driver_with(mock, json!({}))
}

fn text_tools() -> host::ToolHandle {
    remote().text_tools()
}

fn sse(events: Vec<String>, after: After) -> Reply {
    Reply::Sse {
        events,
        delay_ms: 0,
        after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_on_the_sync_async_and_stream_paths_with_headers_and_the_key_never_shown() {
    let mock = MockLlm::start_anthropic();
    let d = driver_with(
        &mock,
        json!({"temperature": 0.5, "top_k": 40, "stop_sequences": ["END"], "beta": ["b-1", "b-2"],
        "extra_body": {"metadata": {"user_id": "u-1"}}, "http": {"headers": {"X-Gateway": "yes"}}}),
    );
    let sync = tokio::task::block_in_place(|| d.prompt(&request("hello"))).unwrap();
    assert_eq!(sync.message.content, "echo: hello");
    assert_eq!(
        (sync.usage.input_tokens, sync.usage.output_tokens),
        (16, 5),
        "input counts cache writes (2) and reads (3)"
    );
    assert_eq!(sync.finish_reason.as_deref(), Some("stop"), "end_turn");
    let asy = d.prompt_async(&request("hello")).await.unwrap();
    assert_eq!(asy.message.content, "echo: hello");

    let items = collect(&d, &request("hello streaming world")).await;
    assert_eq!(streamed_text(&items), "echo: hello streaming world");
    let usages: Vec<(u64, u64)> = items
        .iter()
        .filter_map(|d| match d {
            Ok(StreamDelta::Usage { usage }) => Some((usage.input_tokens, usage.output_tokens)),
            _ => None,
        })
        .collect();
    assert_eq!(
        usages,
        [(9, 1), (9, 4)],
        "snapshots: input from message_start, output from message_delta"
    );
    assert!(
        items
            .iter()
            .any(|d| matches!(d, Ok(StreamDelta::Finish { reason }) if reason == "stop"))
    );

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    let r = &reqs[0];
    assert_eq!(r.headers["x-api-key"], KEY);
    assert_eq!(r.headers["anthropic-version"], "2023-06-01");
    assert_eq!(r.headers["anthropic-beta"], "b-1,b-2");
    assert_eq!(r.headers["x-gateway"], "yes");
    assert!(r.headers.get("authorization").is_none());
    assert_eq!(r.body["model"], "test-model");
    assert_eq!(r.body["max_tokens"], 4096, "required by the API: defaulted");
    assert_eq!(r.body["system"], "be nice");
    assert_eq!(r.body["temperature"], 0.5);
    assert_eq!(r.body["top_k"], 40);
    assert_eq!(r.body["stop_sequences"], json!(["END"]));
    assert_eq!(r.body["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(
        r.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    );
    assert!(r.body.get("stream").is_none() && r.body.get("tools").is_none());
    assert_eq!(reqs[2].body["stream"], true);

    // A bad key: the status, the error type and message, never the key.
    mock.push([anthropic::error(
        401,
        "authentication_error",
        "invalid x-api-key",
    )]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(
        e.message.contains("HTTP 401 Unauthorized")
            && e.message
                .contains("authentication_error: invalid x-api-key"),
        "{e}"
    );
    assert!(!e.to_string().contains(KEY));

    // No key at all: nothing is sent, and the 401 says which variable to set.
    let keyless = driver_with(&mock, json!({"api_key_env": "E2E_ANTHROPIC_UNSET_VAR"}));
    mock.push([anthropic::error(
        401,
        "authentication_error",
        "x-api-key header is required",
    )]);
    let e = keyless.prompt_async(&request("x")).await.unwrap_err();
    assert!(
        e.message
            .contains("(no API key was sent: set E2E_ANTHROPIC_UNSET_VAR)"),
        "{e}"
    );
    assert!(
        mock.requests()
            .last()
            .unwrap()
            .headers
            .get("x-api-key")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_alternate_and_tool_results_travel_as_one_user_turn() {
    let mock = MockLlm::start_anthropic();
    let d = driver_with(
        &mock,
        json!({"tool_choice": "auto", "parallel_tool_calls": false}),
    );
    let mut assistant = Message::assistant("Let me check.");
    assistant.tool_calls = vec![
        ToolCall {
            id: "toolu_1".into(),
            name: "TextTools_word_count".into(),
            arguments: json!({"text": "a b"}),
        },
        ToolCall {
            id: "toolu_2".into(),
            name: "TextTools_reverse".into(),
            // What the OpenAI driver keeps when a model sent arguments that are not JSON.
            arguments: json!("{not json"),
        },
    ];
    let mut req = PromptRequest::new(vec![
        Message::system("rule one"),
        Message::system("rule two"),
        Message::user("first"),
        Message::user("second"),
        assistant,
        Message::tool_result("toolu_1", "2", false),
        Message::tool_result("toolu_2", "bad input", true),
        Message::user("and now?"),
    ]);
    req.tools = vec![FunctionSpec {
        name: "TextTools_word_count".into(),
        description: "counts".into(),
        parameters: json!({"type": "object", "properties": {"text": {"type": "string"}}}),
    }];
    mock.push([tool_uses(
        "Both at once.",
        &[
            ("toolu_a", "TextTools_word_count", json!({"text": "x y z"})),
            ("toolu_b", "TextTools_uppercase", json!({"text": "hi"})),
        ],
    )]);
    let resp = d.prompt_async(&req).await.unwrap();
    assert_eq!(resp.message.content, "Both at once.");
    let calls = &resp.message.tool_calls;
    assert_eq!(calls.len(), 2, "parallel tool use");
    assert_eq!(
        (calls[0].id.as_str(), calls[0].arguments.clone()),
        ("toolu_a", json!({"text": "x y z"}))
    );
    assert_eq!(calls[1].name, "TextTools_uppercase");
    assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));

    let body = &mock.requests()[0].body;
    assert_eq!(body["system"], "rule one\n\nrule two");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "TextTools_word_count", "input": {"text": "a b"}},
                {"type": "tool_use", "id": "toolu_2", "name": "TextTools_reverse", "input": {"value": "{not json"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "2"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "bad input", "is_error": true},
                {"type": "text", "text": "and now?"}]}
        ])
    );
    assert_eq!(
        body["tools"],
        json!([{"name": "TextTools_word_count", "description": "counts",
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}])
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_goes_through_a_forced_tool_on_every_path() {
    let mock = MockLlm::start_anthropic();
    let d = driver(&mock);
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let mut req = request("capital of France?");
    req.output_schema = Some(schema.clone());
    mock.push([tool_uses(
        "",
        &[("toolu_o", "structured_output", json!({"city": "Paris"}))],
    )]);
    let resp = d.prompt_async(&req).await.unwrap();
    assert_eq!(resp.message.content, r#"{"city":"Paris"}"#);
    assert!(resp.message.tool_calls.is_empty());
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    let body = &mock.requests()[0].body;
    assert_eq!(body["tools"][0]["name"], "structured_output");
    assert_eq!(body["tools"][0]["input_schema"], schema);
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "structured_output"})
    );

    // Streamed: the tool's input JSON streams as the answer's text.
    mock.push([sse(
        vec![
            message_start(12),
            tool_start(0, "toolu_o", "structured_output"),
            json_delta(0, "{\"city\": "),
            json_delta(0, "\"Paris\"}"),
            block_stop(0),
            message_delta("tool_use", 6),
            message_stop(),
        ],
        After::End,
    )]);
    let items = collect(&d, &req).await;
    assert_eq!(streamed_text(&items), r#"{"city": "Paris"}"#);
    assert!(
        !items
            .iter()
            .any(|d| matches!(d, Ok(StreamDelta::ToolCall { .. })))
    );
    assert!(
        items
            .iter()
            .any(|d| matches!(d, Ok(StreamDelta::Finish { reason }) if reason == "stop"))
    );

    // A schema that is not an object is wrapped on the way out and unwrapped on the way back.
    let mut list = request("three colours");
    list.output_schema = Some(json!({"type": "array", "items": {"type": "string"}}));
    mock.push([
        tool_uses(
            "",
            &[(
                "toolu_o",
                "structured_output",
                json!({"value": ["red", "green", "blue"]}),
            )],
        ),
        sse(
            vec![
                message_start(5),
                tool_start(0, "toolu_o", "structured_output"),
                json_delta(0, "{\"value\": [\"red\""),
                json_delta(0, "]}"),
                block_stop(0),
                message_delta("tool_use", 3),
                message_stop(),
            ],
            After::End,
        ),
    ]);
    let resp = d.prompt_async(&list).await.unwrap();
    assert_eq!(resp.message.content, r#"["red","green","blue"]"#);
    let sent = &mock.requests()[2].body["tools"][0]["input_schema"];
    assert_eq!(sent["required"], json!(["value"]));
    assert_eq!(sent["properties"]["value"]["type"], "array");
    let items = collect(&d, &list).await;
    assert_eq!(streamed_text(&items), r#"["red"]"#);

    // A PromptTask with an output schema and a tool: the model must call some tool each turn
    // (`any`), uses the real tool first, then answers through the answer tool.
    mock.push([
        tool_uses(
            "",
            &[(
                "toolu_1",
                "TextTools_word_count",
                json!({"text": "one two three"}),
            )],
        ),
        tool_uses("", &[("toolu_2", "structured_output", json!({"words": 3}))]),
    ]);
    let out = PromptTask::new(driver(&mock), "count: one two three")
        .tool(text_tools())
        .output_schema(json!({"type": "object", "properties": {"words": {"type": "integer"}}, "required": ["words"]}))
        .event_bus(Arc::new(EventBus::new()))
        .async_run()
        .await
        .unwrap();
    assert_eq!(out.text, r#"{"words":3}"#);
    let reqs = mock.requests();
    let first = &reqs[reqs.len() - 2].body;
    assert_eq!(first["tool_choice"], json!({"type": "any"}));
    let names: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"structured_output") && names.len() > 1,
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sse_event_sequence_with_parallel_tool_use_in_a_streaming_prompt_task() {
    let mock = MockLlm::start_anthropic();
    mock.push([
        Reply::Sse {
            events: vec![
                message_start(20),
                ping(),
                text_start(0),
                text_delta(0, "Counting "),
                text_delta(0, "and shouting."),
                block_stop(0),
                // Thinking blocks and event types from the future are skipped.
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block": {"type": "thinking", "thinking": ""}}),
                ),
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
                ),
                block_stop(1),
                event("brand_new_event", json!({"type": "brand_new_event"})),
                tool_start(2, "toolu_0", "TextTools_word_count"),
                json_delta(2, ""),
                json_delta(2, "{\"text\": \"one"),
                json_delta(2, " two\"}"),
                block_stop(2),
                tool_start(3, "toolu_1", "TextTools_uppercase"),
                json_delta(3, "{\"text\": \"hi\"}"),
                block_stop(3),
                message_delta("tool_use", 9),
                message_stop(),
            ],
            delay_ms: 1,
            after: After::End,
        },
        sse_text(&["Done: ", "2 words, ", "HI."]),
    ]);
    let bus = Arc::new(EventBus::new());
    let chunks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&chunks);
    let _guard = bus.add_listener(host::EventListener::on_event(
        "chunks",
        move |e: plugin_api::wire::Event| -> host::events::HandlerResult {
            if let plugin_api::wire::EventKind::ActionChunk { index, .. } = &e.kind {
                seen.lock().unwrap().push(*index);
            }
            Ok(None)
        },
    ));
    let task = PromptTask::new(driver(&mock), "go")
        .tool(text_tools())
        .stream(true)
        .event_bus(bus);
    let out = task.async_run().await.unwrap();
    assert_eq!(out.text, "Done: 2 words, HI.");
    assert_eq!(
        (out.usage.input_tokens, out.usage.output_tokens),
        (29, 12),
        "20 + 9 input, 9 + 3 output: each stream's totals counted once"
    );
    let indices = chunks.lock().unwrap().clone();
    assert!(
        indices.iter().all(|i| *i <= 1) && indices.contains(&1),
        "tool calls are numbered per call, not per content block: {indices:?}"
    );
    let second = &mock.requests()[1].body;
    let msgs = second["messages"].as_array().unwrap();
    assert_eq!(
        msgs[1]["content"],
        json!([
            {"type": "text", "text": "Counting and shouting."},
            {"type": "tool_use", "id": "toolu_0", "name": "TextTools_word_count", "input": {"text": "one two"}},
            {"type": "tool_use", "id": "toolu_1", "name": "TextTools_uppercase", "input": {"text": "hi"}}
        ])
    );
    assert_eq!(
        msgs[2]["content"],
        json!([
            {"type": "tool_result", "tool_use_id": "toolu_0", "content": "2"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "HI"}
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_529_5xx_and_429_with_retry_after_but_not_on_other_4xx() {
    let mock = MockLlm::start_anthropic();
    let d = driver(&mock);
    mock.push([
        anthropic::error(529, "overloaded_error", "Overloaded"),
        text("recovered"),
    ]);
    assert_eq!(
        d.prompt_async(&request("x")).await.unwrap().message.content,
        "recovered"
    );
    assert_eq!(mock.requests().len(), 2);

    mock.push([
        anthropic::error(429, "rate_limit_error", "slow down").header("retry-after", "0.2"),
        text("after waiting"),
    ]);
    assert_eq!(
        d.prompt_async(&request("x")).await.unwrap().message.content,
        "after waiting"
    );
    assert_eq!(mock.requests().len(), 4);

    mock.push([anthropic::error(
        400,
        "invalid_request_error",
        "messages: roles must alternate",
    )]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::InvalidInput, false));
    assert!(
        e.message.contains("HTTP 400 Bad Request")
            && e.message
                .contains("invalid_request_error: messages: roles must alternate"),
        "{e}"
    );
    assert_eq!(mock.requests().len(), 5);

    mock.push([anthropic::error(404, "not_found_error", "model: nope")]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);

    mock.push([
        anthropic::error(529, "overloaded_error", "Overloaded"),
        anthropic::error(503, "api_error", "unavailable"),
        anthropic::error(529, "overloaded_error", "Overloaded"),
    ]);
    let e = tokio::task::block_in_place(|| d.prompt(&request("x"))).unwrap_err();
    assert!(
        !e.retryable
            && e.message.contains("HTTP 529 Overloaded")
            && e.message.contains("overloaded_error: Overloaded")
            && e.message.contains("after 3 attempts"),
        "{e}"
    );

    mock.push([anthropic::error(429, "rate_limit_error", "later").header("retry-after", "3600")]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert!(
        e.message
            .contains("Retry-After 3600s exceeds the retry policy"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_truncated_streams_error_events_and_dropped_connections() {
    let mock = MockLlm::start_anthropic();
    // No retries: each fault's own error is the answer (restarts are checked at the end).
    let d = driver_with(&mock, json!({"http": {"retry": {"max_retries": 0}}}));
    mock.push([Reply::Raw {
        status: 200,
        body: "{\"content\": [".into(),
    }]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert!(
        e.message.contains("malformed JSON from http://127.0.0.1:"),
        "{e}"
    );

    // The body ends before message_stop.
    mock.push([sse(
        vec![message_start(3), text_start(0), text_delta(0, "partial")],
        After::End,
    )]);
    let items = collect(&d, &request("x")).await;
    assert_eq!(streamed_text(&items), "partial");
    assert!(
        last_error(&items)
            .message
            .contains("ended without message_stop"),
        "{}",
        last_error(&items)
    );

    // ... in the middle of a tool call.
    mock.push([sse(
        vec![
            message_start(3),
            tool_start(0, "toolu_x", "TextTools_reverse"),
            json_delta(0, "{\"text\":"),
        ],
        After::End,
    )]);
    let items = collect(&d, &request("x")).await;
    let e = last_error(&items);
    assert!(
        e.message
            .contains("in the middle of tool call #0 (`TextTools_reverse`)"),
        "{e}"
    );

    // An error event mid-stream (the API's overloaded signal once a stream has begun).
    mock.push([sse(
        vec![
            message_start(3),
            text_start(0),
            text_delta(0, "a"),
            stream_error("overloaded_error", "Overloaded"),
        ],
        After::End,
    )]);
    let items = collect(&d, &request("x")).await;
    let e = last_error(&items);
    assert!(
        e.retryable
            && e.message
                .contains("error in the stream from http://127.0.0.1:")
            && e.message.contains("overloaded_error: Overloaded"),
        "{e}"
    );

    // Garbage: an event that is not JSON, and a delta for a block never opened.
    mock.push([
        sse(
            vec![
                message_start(3),
                "event: content_block_delta\ndata: {not json".into(),
            ],
            After::End,
        ),
        sse(vec![message_start(3), text_delta(4, "x")], After::End),
    ]);
    let items = collect(&d, &request("x")).await;
    assert!(
        last_error(&items)
            .message
            .contains("malformed stream event")
    );
    let items = collect(&d, &request("x")).await;
    assert!(
        last_error(&items)
            .message
            .contains("content block #4, which is not open"),
        "{}",
        last_error(&items)
    );

    // The connection drops.
    let before = mock.requests().len();
    mock.push([sse(
        vec![message_start(3), text_start(0), text_delta(0, "a")],
        After::Drop,
    )]);
    let items = collect(&d, &request("x")).await;
    let e = last_error(&items);
    assert!(
        e.message.contains("dropped mid-stream") || e.message.contains("without message_stop"),
        "{e}"
    );
    assert_eq!(mock.requests().len(), before + 1);

    // With a retry budget: an overloaded error before the first byte, and a cut or an
    // overloaded error event mid-stream, are each tried again; the cut attempt is void.
    let d = driver(&mock);
    for cut in [
        sse(
            vec![message_start(3), text_start(0), text_delta(0, "void")],
            After::Drop,
        ),
        sse(
            vec![
                message_start(3),
                text_start(0),
                text_delta(0, "void"),
                stream_error("overloaded_error", "Overloaded"),
            ],
            After::End,
        ),
    ] {
        let before = mock.requests().len();
        mock.push([anthropic::error(529, "overloaded_error", "Overloaded"), cut]);
        let items = collect(&d, &request("x")).await;
        assert!(items.iter().all(Result::is_ok), "{items:?}");
        assert_eq!(restarts(&items).len(), 1, "{items:?}");
        assert_eq!(restarts(&items)[0].0, 3);
        assert_eq!(streamed_text(&items), "echo: x");
        assert_eq!(mock.requests().len(), before + 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_idle_timeouts_unreachable_servers_and_bad_config() {
    let mock = MockLlm::start_anthropic();
    let d = driver_with(
        &mock,
        json!({"http": {"request_timeout_ms": 300, "stream_idle_timeout_ms": 200, "retry": {"max_retries": 0}}}),
    );
    mock.push([Reply::Hang]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");

    mock.push([sse(
        vec![
            message_start(3),
            text_start(0),
            text_delta(0, "then silence"),
        ],
        After::Hang,
    )]);
    let items = collect(&d, &request("x")).await;
    let e = last_error(&items);
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("idle for more than 200 ms"), "{e}");

    let closed = try_driver(json!({"base_url": "http://127.0.0.1:9", "http": {"retry": {"max_retries": 1, "initial_backoff_ms": 5}}})).unwrap();
    let e = closed.prompt_async(&request("x")).await.unwrap_err();
    assert!(
        e.message.contains("cannot connect") && e.message.contains("after 2 attempts"),
        "{e}"
    );

    for (config, expected) in [
        (json!({"max_tokens": 0}), "`max_tokens` must be at least 1"),
        (json!({"tool_choice": "sometimes"}), "`tool_choice` must be"),
        (json!({"base_url": "ftp://x"}), "must start with http://"),
        (json!({"max_token": 5}), "max_token"),
    ] {
        let Err(e) = try_driver(config.clone()) else {
            panic!("{config} was accepted")
        };
        assert!(e.to_string().contains(expected), "{config}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_the_upstream_request() {
    let mock = MockLlm::start_anthropic();
    let d = driver(&mock);
    let mut events = vec![message_start(3), text_start(0)];
    events.extend((0..200).map(|i| text_delta(0, &format!("t{i} "))));
    mock.push([Reply::Sse {
        events,
        delay_ms: 20,
        after: After::End,
    }]);
    let mut s = d.stream(&request("long")).unwrap();
    assert!(s.next().await.unwrap().is_ok());
    drop(s);
    for _ in 0..100 {
        if mock.abandoned() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(mock.abandoned(), 1, "the upstream saw the client go away");
    assert_eq!(mock.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_task_with_a_tool_round_trip_on_both_paths() {
    for path in ["sync", "async"] {
        let mock = MockLlm::start_anthropic();
        mock.push([
            tool_uses(
                "I'll count.",
                &[(
                    "toolu_1",
                    "TextTools_word_count",
                    json!({"text": "how many words here"}),
                )],
            ),
            text("There are 4 words."),
        ]);
        let task = PromptTask::new(driver(&mock), "count: how many words here")
            .tool(text_tools())
            .event_bus(Arc::new(EventBus::new()));
        let out = if path == "sync" {
            tokio::task::block_in_place(|| task.run())
        } else {
            task.async_run().await
        }
        .unwrap();
        assert_eq!(out.text, "There are 4 words.", "{path}");
        assert_eq!(out.usage.input_tokens, 32, "{path}");
        let second = &mock.requests()[1].body;
        let roles: Vec<&str> = second["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user"], "{path}");
        assert_eq!(
            second["messages"][2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "4"}]),
            "{path}"
        );
        let _ = message(vec![], "end_turn");
    }
}

#[test]
fn the_key_never_reaches_the_logs_even_at_trace_level() {
    let mock = MockLlm::start_anthropic();
    let a = e2e::artifacts();
    let key = "sk-ant-trace-level-secret-789";
    let config = json!({"base_url": mock.base_url(), "api_key_env": "E2E_ANTHROPIC_TRACE_KEY",
        "http": {"retry": {"initial_backoff_ms": 5}}});
    // One overloaded answer first, so the retry path logs too.
    mock.push([anthropic::error(529, "overloaded_error", "Overloaded")]);
    let out = a
        .grip_command()
        .args(["run", "--driver", "anthropic", "--manifests"])
        .arg(a.root.join("manifests"))
        .args([
            "--config",
            &config.to_string(),
            "--log-format",
            "json",
            "hello",
        ])
        .env("E2E_ANTHROPIC_TRACE_KEY", key)
        .env("GRIP_LOG", "trace")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("echo: hello"), "{stdout}");
    // The plugin's own log lines reach the host's log: the retry is there, with its URL.
    assert!(
        stderr.contains("retrying") && stderr.contains(&mock.base_url()),
        "{stderr}"
    );
    assert_eq!(
        mock.requests()[0].headers["x-api-key"],
        key,
        "the key was sent"
    );
    assert!(
        !stdout.contains(key) && !stderr.contains(key),
        "the key appears in the output"
    );
}

/// Explicit nulls where fields are optional read as absent; a reply with no `content` at all
/// (an Anthropic-shaped server answering `{}`) is an error, not an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_read_as_absent_and_a_reply_without_content_is_an_error() {
    let mock = MockLlm::start_anthropic();
    let d = driver(&mock);
    let json = |body: Value| Reply::Json {
        status: 200,
        body,
        headers: Vec::new(),
    };
    mock.push([
        json(
            json!({"id": null, "type": "message", "role": "assistant", "model": null,
                    "content": [{"type": "text", "text": "Paris", "citations": null},
                                {"type": "text", "text": null}],
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 3, "output_tokens": null,
                              "cache_read_input_tokens": null}}),
        ),
        json(json!({})),
        json(json!({"content": null, "stop_reason": "end_turn"})),
    ]);
    let r = d.prompt_async(&request("capital?")).await.unwrap();
    assert_eq!(r.message.content, "Paris");
    assert_eq!(r.usage.input_tokens, 3);
    for _ in 0..2 {
        let e = d.prompt_async(&request("capital?")).await.unwrap_err();
        assert!(e.message.contains("has no `content`"), "{e}");
    }
}

//! The OpenAI-compatible driver plugin against a real local server speaking the wire format:
//! every mode, tools, structured output, SSE, retries, timeouts and fault modes.

use std::sync::OnceLock;

use e2e::mock_llm::{After, MockLlm, Reply, text_chunk, tool_chunk, usage_chunk};
use e2e::remote::{RemoteDriver, collect, last_error, request, restarts, streamed_text};
use futures::StreamExt;
use host::error::ErrorKind;
use host::{Driver, EventBus, PromptTask};
use plugin_api::wire::{FunctionSpec, Role, StreamDelta};
use serde_json::{Value, json};

const KEY_VAR: &str = "E2E_OPENAI_TEST_KEY";
const KEY: &str = "sk-test-very-secret-key-123";

fn remote() -> &'static RemoteDriver {
    static R: OnceLock<RemoteDriver> = OnceLock::new();
    R.get_or_init(|| RemoteDriver::load("openai", "openai_driver", KEY_VAR, KEY))
}

fn registry() -> &'static host::Registry {
    &remote().registry
}

fn driver_with(mock: &MockLlm, extra: Value) -> Driver {
    remote().driver_with(mock, extra)
}

fn driver(mock: &MockLlm) -> Driver {
    driver_with(mock, json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_on_the_sync_async_and_stream_paths_with_the_key_sent_and_never_shown() {
    let mock = MockLlm::start();
    let d = driver_with(
        &mock,
        json!({"temperature": 0.5, "max_tokens": 64, "organization": "org-1", "project": "p-1",
        "extra_body": {"seed": 7}, "http": {"headers": {"X-Gateway": "yes"}}}),
    );
    let sync = tokio::task::block_in_place(|| d.prompt(&request("hello"))).unwrap();
    assert_eq!(sync.message.content, "echo: hello");
    assert_eq!((sync.usage.input_tokens, sync.usage.output_tokens), (11, 5));
    assert_eq!(sync.finish_reason.as_deref(), Some("stop"));
    let asy = d.prompt_async(&request("hello")).await.unwrap();
    assert_eq!(asy.message.content, "echo: hello");
    let deltas = collect(&d, &request("hello streaming world")).await;
    let text: String = deltas
        .iter()
        .filter_map(|d| match d.as_ref().unwrap() {
            StreamDelta::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "echo: hello streaming world");
    assert!(
        deltas
            .iter()
            .any(|d| matches!(d, Ok(StreamDelta::Usage { usage }) if usage.input_tokens == 7))
    );

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    let r = &reqs[0];
    assert_eq!(r.headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(r.headers["openai-organization"], "org-1");
    assert_eq!(r.headers["openai-project"], "p-1");
    assert_eq!(r.headers["x-gateway"], "yes");
    assert_eq!(r.body["model"], "test-model");
    assert_eq!(r.body["temperature"], 0.5);
    assert_eq!(r.body["max_tokens"], 64);
    assert_eq!(r.body["seed"], 7);
    assert_eq!(
        r.body["messages"][0],
        json!({"role": "system", "content": "be nice"})
    );
    assert!(r.body.get("stream").is_none());
    assert_eq!(reqs[2].body["stream"], true);
    assert_eq!(
        reqs[2].body["stream_options"],
        json!({"include_usage": true})
    );

    // A bad key: the status and the upstream's message, never the key.
    mock.push([Reply::error(
        401,
        "Incorrect API key provided",
        "invalid_api_key",
    )]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(
        e.message.contains("HTTP 401 Unauthorized")
            && e.message.contains("Incorrect API key provided"),
        "{e}"
    );
    assert!(!e.to_string().contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_parallel_calls_tool_choice_and_structured_output_in_the_request_and_response() {
    let mock = MockLlm::start();
    let d = driver_with(
        &mock,
        json!({"tool_choice": "auto", "parallel_tool_calls": true}),
    );
    mock.push([Reply::tool_calls(&[
        ("call_a", "TextTools_word_count", r#"{"text":"a b"}"#),
        ("call_b", "TextTools_uppercase", r#"{"text":"x"}"#),
        ("call_c", "TextTools_reverse", "{not json"),
    ])]);
    let mut req = request("use tools");
    req.tools = vec![FunctionSpec {
        name: "TextTools_word_count".into(),
        description: "counts".into(),
        parameters: json!({"type": "object", "properties": {"text": {"type": "string"}}}),
    }];
    req.output_schema = Some(json!({"type": "object"}));
    let resp = d.prompt_async(&req).await.unwrap();
    let calls = &resp.message.tool_calls;
    assert_eq!(calls.len(), 3);
    assert_eq!(
        (calls[0].id.as_str(), calls[0].arguments.clone()),
        ("call_a", json!({"text": "a b"}))
    );
    assert_eq!(calls[1].name, "TextTools_uppercase");
    assert_eq!(
        calls[2].arguments,
        json!("{not json"),
        "unparseable arguments are passed on as a string"
    );
    assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));

    let body = &mock.requests()[0].body;
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "TextTools_word_count");
    assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["parallel_tool_calls"], true);
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"],
        json!({"type": "object"})
    );

    // A refusal comes back as text with its own finish reason.
    mock.push([Reply::Json {
        status: 200,
        body: e2e::mock_llm::completion(
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
            "stop",
        ),
        headers: vec![],
    }]);
    let resp = d.prompt_async(&request("bad")).await.unwrap();
    assert_eq!(resp.message.content, "I can't help with that.");
    assert_eq!(resp.finish_reason.as_deref(), Some("refusal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_tool_call_deltas_interleaved_by_index_are_assembled() {
    let mock = MockLlm::start();
    let d = driver(&mock);
    mock.push([Reply::Sse {
        events: vec![
            tool_chunk(0, Some("call_0"), Some("TextTools_word_count"), ""),
            tool_chunk(1, Some("call_1"), Some("TextTools_uppercase"), "{\"te"),
            tool_chunk(0, None, None, "{\"text\": \"one"),
            tool_chunk(1, None, None, "xt\": \"hi\"}"),
            tool_chunk(0, None, None, " two\"}"),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                .to_string(),
            usage_chunk(20, 9),
            "[DONE]".into(),
        ],
        delay_ms: 1,
        after: After::End,
    }]);
    mock.push([Reply::sse_text(&["Done: ", "2 words, ", "HI."])]);
    let bus = std::sync::Arc::new(EventBus::new());
    let task = PromptTask::new(d, "go")
        .tool(remote().text_tools())
        .stream(true)
        .event_bus(bus);
    let out = task.async_run().await.unwrap();
    assert_eq!(out.text, "Done: 2 words, HI.");
    assert_eq!(
        out.usage.input_tokens, 27,
        "usage from both streams' final chunks"
    );
    // The second request carries the assembled calls and their results.
    let second = &mock.requests()[1].body;
    let msgs = second["messages"].as_array().unwrap();
    let assistant = &msgs[1];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(
        assistant["tool_calls"][0]["function"]["arguments"],
        "{\"text\":\"one two\"}"
    );
    assert_eq!(assistant["tool_calls"][1]["id"], "call_1");
    assert_eq!(
        msgs[2],
        json!({"role": "tool", "tool_call_id": "call_0", "content": "2"})
    );
    assert_eq!(
        msgs[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "HI"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_5xx_and_429_with_retry_after_but_not_on_other_4xx_or_exhausted_quota() {
    let mock = MockLlm::start();
    let d = driver(&mock);
    mock.push([
        Reply::error(500, "boom", "server_error"),
        Reply::text("recovered"),
    ]);
    assert_eq!(
        d.prompt_async(&request("x")).await.unwrap().message.content,
        "recovered"
    );
    assert_eq!(mock.requests().len(), 2);

    mock.push([
        Reply::error(429, "slow down", "rate_limit_exceeded").header("Retry-After", "0.2"),
        Reply::text("after waiting"),
    ]);
    assert_eq!(
        d.prompt_async(&request("x")).await.unwrap().message.content,
        "after waiting"
    );
    assert_eq!(mock.requests().len(), 4);

    mock.push([Reply::error(
        429,
        "You exceeded your current quota",
        "insufficient_quota",
    )]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::RateLimited, false));
    assert!(e.message.contains("quota exhausted: not retried"), "{e}");
    assert_eq!(mock.requests().len(), 5);

    mock.push([Reply::error(
        400,
        "Invalid 'messages': empty",
        "invalid_request_error",
    )]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(
        e.message.contains("HTTP 400 Bad Request") && e.message.contains("Invalid 'messages'"),
        "{e}"
    );
    assert_eq!(mock.requests().len(), 6);

    mock.push([Reply::error(
        404,
        "The model `nope` does not exist",
        "model_not_found",
    )]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("does not exist"), "{e}");

    mock.push([
        Reply::error(502, "bad gateway", "x"),
        Reply::error(503, "unavailable", "x"),
        Reply::error(500, "still broken", "x"),
    ]);
    let e = tokio::task::block_in_place(|| d.prompt(&request("x"))).unwrap_err();
    assert!(
        !e.retryable
            && e.message.contains("after 3 attempts")
            && e.message.contains("still broken"),
        "{e}"
    );
    // The retries were made: the final error does not invite more.
    assert!(!e.to_string().contains("(retryable)"), "{e}");

    mock.push([Reply::error(429, "later", "rate_limit_exceeded").header("Retry-After", "3600")]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert!(
        e.message
            .contains("Retry-After 3600s exceeds the retry policy"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_truncated_streams_and_dropped_connections_are_specific_errors() {
    let mock = MockLlm::start();
    // No retries: each fault's own error is the answer (restarts have a test of their own).
    let d = driver_with(&mock, json!({"http": {"retry": {"max_retries": 0}}}));
    mock.push([Reply::Raw {
        status: 200,
        body: "{\"choices\": [".into(),
    }]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert!(
        e.message.contains("malformed JSON from http://127.0.0.1:"),
        "{e}"
    );

    mock.push([Reply::Sse {
        events: vec![text_chunk("partial")],
        delay_ms: 0,
        after: After::End,
    }]);
    let items = collect(&d, &request("x")).await;
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert!(e.message.contains("ended without [DONE]"), "{e}");
    assert!(matches!(items[0], Ok(StreamDelta::Text { .. })));

    mock.push([Reply::Sse {
        events: vec![tool_chunk(
            0,
            Some("c"),
            Some("TextTools_reverse"),
            "{\"text\":",
        )],
        delay_ms: 0,
        after: After::End,
    }]);
    let items = collect(&d, &request("x")).await;
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert!(
        e.message
            .contains("in the middle of tool call #0 (`TextTools_reverse`)"),
        "{e}"
    );

    mock.push([Reply::Sse {
        events: vec![text_chunk("a"), "{not json".into()],
        delay_ms: 0,
        after: After::End,
    }]);
    let items = collect(&d, &request("x")).await;
    assert!(
        items
            .last()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .message
            .contains("malformed stream chunk")
    );

    mock.push([Reply::Sse {
        events: vec![text_chunk("a")],
        delay_ms: 0,
        after: After::Drop,
    }]);
    let items = collect(&d, &request("x")).await;
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert!(
        e.message.contains("dropped mid-stream") || e.message.contains("ended without [DONE]"),
        "{e}"
    );
}

/// A stream cut before `[DONE]` (ended early, dropped, or in the middle of a tool call) is sent
/// again within the retry budget, after bytes arrived: a `Restart` says what was delivered is
/// void, and the next attempt's deltas are the answer. Retries before a response (429, 5xx)
/// and restarts share one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_way_is_restarted_within_the_retry_budget() {
    let mock = MockLlm::start();
    let d = driver(&mock); // max_retries 2
    let cut = |events: Vec<String>, after| Reply::Sse {
        events,
        delay_ms: 0,
        after,
    };
    let tool_cut = vec![tool_chunk(
        0,
        Some("c"),
        Some("TextTools_reverse"),
        "{\"text\":",
    )];
    for (first, says) in [
        (
            cut(vec![text_chunk("void ")], After::End),
            &["ended without [DONE]"][..],
        ),
        // A drop reads as either, depending on whether the close beats the last frame.
        (
            cut(vec![text_chunk("void ")], After::Drop),
            &["dropped mid-stream", "ended without [DONE]"],
        ),
        (
            cut(tool_cut, After::End),
            &["in the middle of tool call #0"],
        ),
    ] {
        mock.push([first]);
        let items = collect(&d, &request("whole")).await;
        assert!(items.iter().all(Result::is_ok), "{items:?}");
        let r = restarts(&items);
        assert_eq!(r.len(), 1, "{items:?}");
        assert_eq!(r[0].0, 2);
        assert!(says.iter().any(|s| r[0].1.contains(s)), "{r:?}");
        assert_eq!(streamed_text(&items), "echo: whole");
    }

    // One budget: a 429, then a cut, then a whole stream is within 2 retries...
    mock.push([
        Reply::error(429, "slow down", "rate_limit_exceeded"),
        cut(vec![text_chunk("void")], After::End),
    ]);
    let items = collect(&d, &request("mixed")).await;
    assert_eq!(streamed_text(&items), "echo: mixed", "{items:?}");
    assert_eq!(restarts(&items)[0].0, 3, "the restart is the third attempt");
    // ... a 429, a 429 and a cut is not, and the error says so.
    mock.push([
        Reply::error(429, "slow down", "rate_limit_exceeded"),
        Reply::error(429, "slow down", "rate_limit_exceeded"),
        cut(vec![text_chunk("void")], After::End),
    ]);
    let items = collect(&d, &request("x")).await;
    let e = last_error(&items);
    assert!(
        e.message.contains("ended without [DONE]") && e.message.contains("(after 3 attempts)"),
        "{e}"
    );
    assert!(!e.retryable);
    let before = mock.requests().len();
    mock.push((0..3).map(|_| cut(vec![text_chunk("void")], After::Drop)));
    let items = collect(&d, &request("x")).await;
    assert_eq!(restarts(&items).len(), 2);
    assert!(last_error(&items).message.contains("(after 3 attempts)"));
    assert_eq!(mock.requests().len(), before + 3);

    // `restart_streams = false`: a cut is the answer, at once.
    let strict = driver_with(
        &mock,
        json!({"http": {"retry": {"restart_streams": false}}}),
    );
    let before = mock.requests().len();
    mock.push([cut(vec![text_chunk("a")], After::End)]);
    let items = collect(&strict, &request("x")).await;
    assert!(last_error(&items).message.contains("ended without [DONE]"));
    assert!(restarts(&items).is_empty());
    assert_eq!(mock.requests().len(), before + 1);
    // Still retried before its first byte.
    mock.push([
        Reply::error(503, "warming up", "x"),
        Reply::sse_text(&["ok"]),
    ]);
    let items = collect(&strict, &request("x")).await;
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(mock.requests().len(), before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_idle_timeouts_and_unreachable_servers() {
    let mock = MockLlm::start();
    let d = driver_with(
        &mock,
        json!({"http": {"request_timeout_ms": 300, "stream_idle_timeout_ms": 200, "retry": {"max_retries": 0}}}),
    );
    mock.push([Reply::Hang]);
    let e = d.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("timed out"), "{e}");

    mock.push([Reply::Sse {
        events: vec![text_chunk("then silence")],
        delay_ms: 0,
        after: After::Hang,
    }]);
    let items = collect(&d, &request("x")).await;
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("idle for more than 200 ms"), "{e}");

    // Nothing listens on port 9 of 127.0.0.1: connection refused, retried, then reported.
    let closed = registry()
        .get("openai")
        .unwrap()
        .new_driver(Some(&json!({"base_url": "http://127.0.0.1:9/v1", "http": {"retry": {"max_retries": 1, "initial_backoff_ms": 5}}})))
        .unwrap();
    let e = closed.prompt_async(&request("x")).await.unwrap_err();
    assert!(
        e.message.contains("cannot connect") && e.message.contains("after 2 attempts"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_the_upstream_request() {
    let mock = MockLlm::start();
    let d = driver(&mock);
    let events: Vec<String> = (0..200).map(|i| text_chunk(&format!("t{i} "))).collect();
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
        let mock = MockLlm::start();
        mock.push([
            Reply::tool_calls(&[(
                "call_1",
                "TextTools_word_count",
                r#"{"text":"how many words here"}"#,
            )]),
            Reply::text("There are 4 words."),
        ]);
        let task = PromptTask::new(driver(&mock), "count: how many words here")
            .tool(remote().text_tools())
            .event_bus(std::sync::Arc::new(EventBus::new()));
        let out = if path == "sync" {
            tokio::task::block_in_place(|| task.run())
        } else {
            task.async_run().await
        }
        .unwrap();
        assert_eq!(out.text, "There are 4 words.");
        assert_eq!(out.usage.input_tokens, 22);
        let second = &mock.requests()[1].body;
        let roles: Vec<&str> = second["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "tool"]);
        assert_eq!(second["messages"][2]["content"], "4");
        let _ = Role::Tool;
    }
}

/// A PromptTask whose first stream is cut in the middle of a tool call: the driver restarts it,
/// the task publishes a `PromptRetryEvent` between the void chunks and the new ones, the tool
/// runs once (after the whole second answer), and the output is right, on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_stream_reaches_listeners_as_a_prompt_retry_event_on_both_paths() {
    use plugin_api::wire::{Event, EventKind};
    for path in ["sync", "async"] {
        let mock = MockLlm::start();
        let call = |args: &str| tool_chunk(0, Some("call_0"), Some("TextTools_word_count"), args);
        mock.push([
            Reply::Sse {
                events: vec![text_chunk("void "), call("{\"text\": \"a b")],
                delay_ms: 0,
                after: After::Drop,
            },
            Reply::Sse {
                events: vec![
                    call(r#"{"text": "a b c"}"#),
                    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                        .to_string(),
                    "[DONE]".into(),
                ],
                delay_ms: 0,
                after: After::End,
            },
            Reply::sse_text(&["three ", "words"]),
        ]);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Event>::new()));
        let bus = std::sync::Arc::new(EventBus::new());
        let s = seen.clone();
        let _guard = bus.add_listener(host::EventListener::on_event(
            "all",
            move |e: Event| -> host::events::HandlerResult {
                s.lock().unwrap().push(e);
                Ok(None)
            },
        ));
        let task = PromptTask::new(driver(&mock), "count")
            .tool(remote().text_tools())
            .stream(true)
            .event_bus(bus);
        let out = if path == "sync" {
            tokio::task::block_in_place(|| task.run())
        } else {
            task.async_run().await
        }
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(out.text, "three words", "{path}");
        let events = seen.lock().unwrap().clone();
        let names: Vec<&str> = events.iter().map(|e| e.kind.type_name()).collect();
        let retry = names.iter().position(|n| *n == "PromptRetryEvent").unwrap();
        assert_eq!(
            names.iter().filter(|n| **n == "PromptRetryEvent").count(),
            1
        );
        assert_eq!(
            &names[..retry + 1],
            [
                "StartTaskEvent",
                "StartPromptEvent",
                "TextChunkEvent",
                "ActionChunkEvent",
                "PromptRetryEvent"
            ],
            "{path}"
        );
        assert_eq!(names[retry + 1], "ActionChunkEvent", "{names:?}");
        assert_eq!(names[retry + 2], "FinishPromptEvent", "{names:?}");
        let EventKind::PromptRetry { attempt, reason } = &events[retry].kind else {
            unreachable!()
        };
        assert_eq!(*attempt, 2);
        assert!(
            reason.contains("mid-stream") || reason.contains("tool call #0"),
            "{reason}"
        );
        // The tool ran once, on the whole arguments.
        let subtasks: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::FinishActionsSubtask { .. }))
            .collect();
        assert_eq!(subtasks.len(), 1, "{path}");
        let reqs = mock.requests();
        assert_eq!(reqs.len(), 3, "{path}");
        assert_eq!(reqs[2].body["messages"][2]["content"], "3", "{path}");
    }
}

/// Tool-call arguments that are not JSON go back to the model as an error result, and it gets
/// another turn: the same on the whole-response path and the streamed one, sync and async.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tool_arguments_are_sent_back_to_the_model_on_every_path() {
    for (stream, path) in [
        (false, "sync"),
        (false, "async"),
        (true, "sync"),
        (true, "async"),
    ] {
        let mock = MockLlm::start();
        let bad = r#"{"text": "unterminated"#;
        if stream {
            mock.push([Reply::Sse {
                events: vec![
                    tool_chunk(0, Some("call_0"), Some("TextTools_word_count"), bad),
                    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                        .to_string(),
                    "[DONE]".into(),
                ],
                delay_ms: 1,
                after: After::End,
            }]);
            mock.push([Reply::sse_text(&["fixed ", "it"])]);
        } else {
            mock.push([
                Reply::tool_calls(&[("call_0", "TextTools_word_count", bad)]),
                Reply::text("fixed it"),
            ]);
        }
        let task = PromptTask::new(driver(&mock), "count")
            .tool(remote().text_tools())
            .stream(stream)
            .event_bus(std::sync::Arc::new(EventBus::new()));
        let out = if path == "sync" {
            tokio::task::block_in_place(|| task.run())
        } else {
            task.async_run().await
        }
        .unwrap_or_else(|e| panic!("stream={stream} {path}: {e}"));
        assert_eq!(out.text, "fixed it", "stream={stream} {path}");
        let second = &mock.requests()[1].body;
        let result = &second["messages"][2];
        assert_eq!(result["role"], "tool");
        assert!(
            result["content"]
                .as_str()
                .unwrap()
                .contains("are not valid JSON"),
            "stream={stream} {path}: {result}"
        );
        // The model sees its own malformed text again, unchanged.
        assert_eq!(
            second["messages"][1]["tool_calls"][0]["function"]["arguments"],
            bad
        );
    }
}

/// The whole-request timeout firing in the middle of a stream is a timeout (not a "dropped
/// connection"), and `retry-after-ms` is honoured before `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_mid_stream_is_a_timeout_and_retry_after_ms_is_honoured() {
    let mock = MockLlm::start();
    let d = driver_with(
        &mock,
        json!({"http": {"request_timeout_ms": 400, "stream_idle_timeout_ms": 5000, "retry": {"max_retries": 0}}}),
    );
    mock.push([Reply::Sse {
        events: (0..20).map(|i| text_chunk(&format!("t{i} "))).collect(),
        delay_ms: 100,
        after: After::End,
    }]);
    let items = collect(&d, &request("x")).await;
    assert!(items.iter().any(Result::is_ok), "some text came first");
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("timed out mid-stream"), "{e}");

    // Retry-After alone (100 s) would exceed the policy's longest wait and fail at once; the
    // millisecond header says 150 ms.
    let d = driver(&mock);
    mock.push([
        Reply::error(429, "slow down", "rate_limit_exceeded")
            .header("Retry-After", "100")
            .header("retry-after-ms", "150"),
        Reply::text("after 150 ms"),
    ]);
    let r = d.prompt_async(&request("x")).await.unwrap();
    assert_eq!(r.message.content, "after 150 ms");
}

/// A 200 answer to a stream that is JSON (a gateway's error) says so, and a connect error names
/// the URL once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_to_a_stream_and_connect_errors_read_well() {
    let mock = MockLlm::start();
    let d = driver_with(&mock, json!({"http": {"retry": {"max_retries": 0}}}));
    mock.push([Reply::Json {
        status: 200,
        body: json!({"error": {"message": "model is loading"}}),
        headers: Vec::new(),
    }]);
    let items = collect(&d, &request("x")).await;
    let e = items.last().unwrap().as_ref().unwrap_err();
    assert!(
        e.message.contains("expected an event stream")
            && e.message.contains("application/json")
            && e.message.contains("model is loading"),
        "{e}"
    );
    let closed = registry()
        .get("openai")
        .unwrap()
        .new_driver(Some(
            &json!({"base_url": "http://127.0.0.1:9/v1", "http": {"retry": {"max_retries": 0}}}),
        ))
        .unwrap();
    let e = closed.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(
        e.message.matches("127.0.0.1:9").count(),
        1,
        "the URL once: {e}"
    );
}

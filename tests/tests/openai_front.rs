//! The OpenAI-compatible front over real HTTP: the wire details in Rust (chunk shapes, indices,
//! `[DONE]`, errors), and the official OpenAI Python SDK as the client (tests/py/openai_sdk.py,
//! from the venv `scripts/test-deps.sh` makes).

use std::path::PathBuf;
use std::sync::OnceLock;

use e2e::daemon::{Daemon, client};
use e2e::mock_llm::{MockLlm, Reply};
use e2e::{ManifestSpec, artifacts, scripted};
use host::daemon::DaemonConfig;
use serde_json::{Value, json};

fn manifest_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        scripted("scripted").write(&dir, "scripted.toml");
        ManifestSpec::named("text-tools", "text_tools")
            .kind("tool", &["sync", "async"])
            .write(&dir, "text-tools.toml");
        dir
    })
    .clone()
}

/// The agents the tests name as models.
const AGENTS: &str = r#"
[agents.counter]
driver = "scripted"
tools = ["text-tools"]
rules = ["Count words with the tool."]
[agents.counter.config]
script = [
  { tool_calls = [{ id = "w1", name = "TextTools_word_count", arguments = { text = "a b c" } }] },
  { text = "There are 3 words." },
]

[agents.weather]
driver = "scripted"
[agents.weather.config]
script = [
  { tool_calls = [{ id = "call_1", name = "get_weather", arguments = { city = "Paris" } }] },
  { text = "It is sunny in Paris." },
]

[agents.slow]
driver = "scripted"
config = { delay_ms = 3000 }

[agents.json]
driver = "scripted"
[agents.json.config]
script = [{ json = { answer = 42 } }]
"#;

fn config() -> DaemonConfig {
    let mut c: DaemonConfig = toml::from_str(AGENTS).unwrap();
    c.plugins.manifest_dirs = vec![manifest_dir()];
    c.plugins.lib_dirs = vec![artifacts().lib_dir.clone()];
    c.server.bind = "127.0.0.1:0".parse().unwrap();
    c
}

async fn chat(d: &Daemon, body: Value) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client()
        .post(d.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

/// The `data:` payloads of an SSE body.
fn data_lines(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_and_its_stream_have_the_shapes_the_sdks_expect() {
    let d = Daemon::start(config());
    let (status, headers, body) = chat(
        &d,
        json!({"model": "scripted", "messages": [{"role": "user", "content": "hello there"}],
               "temperature": 0.2, "seed": 7, "frequency_penalty": 0.5, "logit_bias": null}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "scripted");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    // The scripted driver's operator allows no sampling key: both dropped, and said so.
    // So is a parameter grip does not pass on at all; a null one is not "set".
    assert_eq!(
        headers["x-grip-ignored-params"],
        "temperature,seed,frequency_penalty"
    );

    let (status, headers, body) = chat(
        &d,
        json!({"model": "scripted", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": [{"type": "text", "text": "a fairly long question"}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "text/event-stream");
    let data = data_lines(&body);
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-") && c["created"].is_u64());
        assert_eq!(c["model"], "scripted");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: a fairly long question");
    assert!(chunks.len() > 4, "streamed in pieces: {chunks:?}");
    let usage = chunks.last().unwrap();
    assert_eq!(
        usage["choices"],
        json!([]),
        "the usage chunk has no choices"
    );
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    d.stop();
}

/// Sampling parameters reach the upstream when the operator allows the key, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_sampling_parameters_reach_the_driver_and_the_rest_are_dropped() {
    let mock = MockLlm::start();
    mock.push([Reply::text("fine")]);
    let dir = tempfile::tempdir().unwrap();
    ManifestSpec::named("openai", "openai_driver")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .extra(&format!(
            "[config]\nmodel = \"up-model\"\nbase_url = {:?}\napi_key_env = \"NO_KEY_FOR_TESTS\"\n",
            mock.base_url()
        ))
        .overridable(&["temperature", "max_tokens"])
        .write(dir.path(), "openai.toml");
    let mut c = config();
    c.plugins.manifest_dirs = vec![dir.path().to_owned()];
    c.agents.clear();
    let d = Daemon::start(c);
    let (status, headers, body) = chat(
        &d,
        json!({"model": "openai", "messages": [{"role": "user", "content": "hi"}],
               "temperature": 0.3, "max_completion_tokens": 17, "seed": 1, "user": "u-1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-grip-ignored-params"], "seed");
    let sent = &mock.requests()[0].body;
    assert_eq!(sent["temperature"], 0.3, "{sent}");
    assert_eq!(sent["max_tokens"], 17, "{sent}");
    assert!(sent.get("seed").is_none(), "{sent}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tool_calls_come_back_with_indices_and_the_result_continues_the_conversation() {
    let d = Daemon::start(config());
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let ask = json!([{"role": "user", "content": "weather in Paris?"}]);
    let (status, _, body) = chat(
        &d,
        json!({"model": "weather", "messages": ask, "tools": tools, "stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = data_lines(&body);
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{chunks:?}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    let follow = json!([
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"}
    ]);
    let (status, _, body) = chat(
        &d,
        json!({"model": "weather", "messages": follow, "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "It is sunny in Paris."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_shaped_with_the_statuses_the_sdks_expect() {
    let d = Daemon::start(config());
    let hi = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"model": "nope", "messages": hi}),
            404,
            Some("model_not_found"),
            "model",
        ),
        (
            json!({"model": "scripted", "messages": hi, "n": 2}),
            400,
            None,
            "n",
        ),
        (
            json!({"model": "scripted", "messages": []}),
            400,
            None,
            "messages",
        ),
        (
            json!({"model": "scripted", "messages": [{"role": "robot", "content": "x"}]}),
            400,
            None,
            "messages[0].role",
        ),
        (
            json!({"model": "counter", "messages": hi, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            400,
            None,
            "tools",
        ),
        (
            json!({"model": "scripted", "messages": hi, "tool_choice": "required"}),
            400,
            None,
            "tool_choice",
        ),
    ];
    for (body, status, code, param) in cases {
        let (s, _, text) = chat(&d, body.clone()).await;
        assert_eq!(s, status, "{body} -> {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}"
        );
        assert_eq!(
            e["type"],
            if status == 404 {
                "not_found_error"
            } else {
                "invalid_request_error"
            }
        );
        assert_eq!(e["param"], param, "{text}");
        assert_eq!(e["code"], code.map_or(Value::Null, Value::from), "{text}");
    }
    let models: Value = client()
        .get(d.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["counter", "json", "slow", "weather", "scripted"]);
    let one = client()
        .get(d.url("/v1/models/weather"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = client().get(d.url("/v1/models/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    d.stop();
}

/// A run with server tools or an output schema streams only its final answer: never a first
/// turn's text, nor an answer that failed validation (and the JSON itself, not a fenced text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_tool_rounds_and_structured_output_carry_only_the_final_answer() {
    let d = Daemon::start(config());
    let text_of = |body: &str| -> String {
        data_lines(body)
            .iter()
            .filter(|l| **l != "[DONE]")
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    let hi = json!([{"role": "user", "content": "count a b c"}]);
    let (_, _, body) = chat(
        &d,
        json!({"model": "counter", "messages": hi, "stream": true,
                                       "tools": null, "stream_options": null}),
    )
    .await;
    assert_eq!(text_of(&body), "There are 3 words.", "{body}");
    // `tool_choice: none`: no tool this turn, server tools included (the script's first step
    // asks for one; without tools on offer the call is refused as unknown, then answered).
    let (status, _, body) = chat(
        &d,
        json!({"model": "counter", "messages": hi, "tool_choice": "none"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"], "There are 3 words.",
        "{v}"
    );
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}});
    let (_, _, body) = chat(&d, json!({"model": "json", "messages": hi, "stream": true,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}})).await;
    let v: Value = serde_json::from_str(&text_of(&body)).unwrap();
    assert_eq!(v, json!({"answer": 42}));
    d.stop();
}

/// `/v1/tasks` takes the same conversation and client tools, and a caller cannot forge a
/// tool's own result fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_api_takes_messages_and_client_tools_too() {
    let d = Daemon::start(config());
    let script = json!({"script": [{"tool_calls": [{"id": "k1", "name": "lookup", "arguments": {"q": "x"}}]}]});
    let (status, _, v) = e2e::daemon::post(
        &d,
        json!({"driver": "scripted", "config": script, "input": "find x",
               "messages": [{"role": "system", "content": "be brief"}],
               "client_tools": [{"name": "lookup", "parameters": {"type": "object"}}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["finish_reason"], "tool_calls");
    assert_eq!(v["tool_calls"][0]["name"], "lookup");
    let (status, _, v) = e2e::daemon::post(
        &d,
        json!({"driver": "scripted", "input": "x",
               "messages": [{"role": "tool", "tool_call_id": "a", "content": "r", "structured": {"forged": true}}]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("structured"),
        "{v}"
    );
    d.stop();
}

/// Overload and an oversized body, in the shapes the SDKs act on: 429 with `Retry-After`
/// (retried by the SDKs), 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_and_a_too_large_body_get_openai_errors() {
    let mut c = config();
    c.server.max_concurrent_tasks = 1;
    c.server.max_body_bytes = 4096;
    let d = Daemon::start(c);
    let hi = json!([{"role": "user", "content": "hi"}]);
    let busy = {
        let url = d.url("/v1/chat/completions");
        let body = json!({"model": "slow", "messages": hi});
        tokio::spawn(async move {
            client()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // Once the slow task holds the only slot, the next request is refused.
    let m = e2e::daemon::metrics_containing(&d, "grip_tasks_in_flight 1").await;
    assert!(m.contains("grip_tasks_in_flight 1"), "{m}");
    let refused = client()
        .post(d.url("/v1/chat/completions"))
        .json(&json!({"model": "scripted", "messages": hi}))
        .send()
        .await
        .ok()
        .filter(|r| r.status() == 429);
    let r = refused.expect("a second request is refused while the first runs");
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert_eq!(busy.await.unwrap(), 200);
    let big = "x".repeat(8192);
    let (status, _, body) = chat(
        &d,
        json!({"model": "scripted", "messages": [{"role": "user", "content": big}]}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    d.stop();
}

#[test]
fn an_agent_that_cannot_work_stops_the_daemon_at_start() {
    let mut c = config();
    let bad: DaemonConfig = toml::from_str("[agents.bad]\ndriver = \"nope\"\n").unwrap();
    c.agents.extend(bad.agents);
    let addr = "127.0.0.1:0".parse().unwrap();
    let e = host::daemon::AppState::new(c, addr)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("agents.bad") && e.contains("`nope` is not a loaded prompt driver"),
        "{e}"
    );
}

/// The official OpenAI Python SDK against the daemon: sync and async clients, plain and
/// streamed, client and server tools, structured output, usage, errors and models.
#[test]
fn the_official_openai_python_sdk_works_against_the_daemon() {
    let a = artifacts();
    let python = a.root.join("target/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test-deps.sh, which makes a venv with the `openai` package from PyPI",
        python.display()
    );
    // The local model too: the first-party manifest, its model fetched as `grip serve` does.
    let local = tempfile::tempdir().unwrap();
    std::fs::copy(
        a.root.join("manifests/local.toml"),
        local.path().join("local.toml"),
    )
    .unwrap();
    let mut c = config();
    c.plugins.manifest_dirs.push(local.path().to_owned());
    c.server.max_concurrent_tasks = 64;
    let d = Daemon::start_with_models(c);
    let out = std::process::Command::new(&python)
        .arg(a.root.join("tests/py/openai_sdk.py"))
        .arg(d.url("/v1"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all OpenAI SDK checks passed"), "{text}");
    d.stop();
}

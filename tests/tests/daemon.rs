//! The daemon over real HTTP on 127.0.0.1, with real plugins and a real local upstream.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use e2e::daemon::{Daemon, client, metrics_containing, post, sse};
use e2e::mock_llm::{After, MockLlm, Reply, text_chunk};
use e2e::{ManifestSpec, artifacts, scripted};
use host::daemon::{AppState, DaemonConfig};
use serde_json::{Value, json};

fn manifest_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        scripted("scripted").write(&dir, "scripted.toml");
        ManifestSpec::named("mock-sync", "mock_sync_driver")
            .kind("prompt_driver", &["sync"])
            .write(&dir, "mock-sync.toml");
        ManifestSpec::named("text-tools", "text_tools")
            .kind("tool", &["sync", "async"])
            .write(&dir, "text-tools.toml");
        ManifestSpec::named("openai", "openai_driver")
            .kind("prompt_driver", &["sync", "async", "stream"])
            .extra("[config]\nmodel = \"test-model\"\napi_key_env = \"NO_KEY_FOR_TESTS\"\n")
            // The operator lets requests pick the upstream (the mock's random port).
            .overridable(&["base_url", "model"])
            .write(&dir, "openai.toml");
        ManifestSpec::named("jsonl", "jsonl_listener")
            .kind("event_listener", &["sync", "async"])
            .write(&dir, "jsonl.toml");
        std::fs::write(dir.join("broken.toml"), "id = 'broken'\n").unwrap();
        dir
    })
    .clone()
}

fn config() -> DaemonConfig {
    let mut c = DaemonConfig::default();
    c.plugins.manifest_dirs = vec![manifest_dir()];
    c.plugins.lib_dirs = vec![artifacts().lib_dir.clone()];
    c.server.bind = "127.0.0.1:0".parse().unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_as_json_and_the_path_follows_the_driver_capability() {
    let d = Daemon::start(config());
    let (status, headers, v) =
        post(&d, json!({"driver": "scripted", "input": "hello daemon"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["x-grip-path"], "async");
    assert_eq!(v["output"], "echo: hello daemon");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["task_id"].as_str().unwrap().len(), 32);

    let (status, headers, v) = post(&d, json!({"driver": "mock-sync", "input": "sync only"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["x-grip-path"], "sync");
    assert_eq!(v["path"], "sync");

    // A tool round trip with an output schema.
    let script = json!({"script": [
        {"tool_calls": [{"name": "TextTools_word_count", "arguments": {"text": "a b c"}}]},
        {"json": {"words": 3}}
    ]});
    let (status, _, v) = post(
        &d,
        json!({"driver": "scripted", "config": script, "input": "count", "tools": ["text-tools"],
               "output_schema": {"type": "object", "required": ["words"]}, "max_subtasks": 4}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["json"], json!({"words": 3}));
    assert_eq!(v["subtasks"], 1);

    let r: Value = client()
        .get(d.url("/v1/plugins"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = r["plugins"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|p| p["id"] == "scripted" && p["status"] == "loaded")
    );
    assert!(
        rows.iter()
            .any(|p| p["status"] == "refused" && p["reason"].as_str().unwrap().contains("library"))
    );

    let metrics = client()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("grip_tasks_total{outcome=\"ok\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("grip_upstream_duration_seconds_count 4"),
        "{metrics}"
    );
    assert!(metrics.contains("grip_tasks_in_flight 0"), "{metrics}");
    assert!(metrics.contains("grip_events_published_total"), "{metrics}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_events_arrive_in_order_as_they_happen_and_requests_do_not_mix() {
    let d = Daemon::start(config());
    let request = |input: &str| {
        client()
            .post(d.url("/v1/tasks"))
            .json(
                &json!({"driver": "scripted", "input": input, "stream": true,
                           "config": {"delay_ms": 150, "chunk_chars": 6}}),
            )
            .send()
    };
    let (a, b) = tokio::join!(request("first request"), request("second request"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.headers()["content-type"], "text/event-stream");
    let (ea, eb) = tokio::join!(sse(a), sse(b));
    for (events, input) in [(&ea, "first request"), (&eb, "second request")] {
        let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names.first(), Some(&"StartTaskEvent"));
        assert_eq!(names.last(), Some(&"FinishTaskEvent"));
        let text: String = events
            .iter()
            .filter(|e| e.0 == "TextChunkEvent")
            .map(|e| e.1["token"].as_str().unwrap())
            .collect();
        assert_eq!(text, format!("echo: {input}"));
        let task_ids: std::collections::HashSet<&str> = events
            .iter()
            .map(|e| e.1["task_id"].as_str().unwrap())
            .collect();
        assert_eq!(task_ids.len(), 1, "one task per stream");
        assert_eq!(events[0].1["input"], input);
        // Chunks are sent as they are produced, not buffered to the end.
        let first_chunk = events.iter().find(|e| e.0 == "TextChunkEvent").unwrap().2;
        let finish = events.last().unwrap().2;
        assert!(finish.duration_since(first_chunk) >= Duration::from_millis(300));
    }
    assert_ne!(ea[0].1["task_id"], eb[0].1["task_id"]);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_specific_json_errors() {
    let d = Daemon::start(config());
    let cases = [
        (
            json!({"driver": "scripted"}),
            400,
            "field `input`: must not be empty",
        ),
        (
            json!({"driver": "scripted", "input": "x", "colour": 1}),
            400,
            "unknown field `colour`",
        ),
        (
            json!({"driver": "scripted", "input": "x", "max_subtasks": "lots"}),
            400,
            "field `max_subtasks`",
        ),
        (
            json!({"driver": "scripted", "input": "x", "max_subtasks": 999}),
            400,
            "more than this server allows (50)",
        ),
        (
            json!({"driver": "scripted", "input": "x", "config": {"chunk_chars": "big"}}),
            400,
            "field `config`",
        ),
        (
            json!({"driver": "nope", "input": "x"}),
            404,
            "driver: no loaded prompt_driver `nope` (loaded prompt_drivers: ",
        ),
        (
            json!({"driver": "scripted", "input": "x", "tools": ["nope"]}),
            404,
            "tools: no loaded tool `nope` (loaded tools: text-tools)",
        ),
        (
            json!({"driver": "text-tools", "input": "x"}),
            422,
            "is not a prompt driver",
        ),
        (
            json!({"driver": "scripted", "input": "x", "tools": ["scripted"]}),
            422,
            "is not a tool",
        ),
        (
            json!({"driver": "mock-sync", "input": "x", "stream": true}),
            422,
            "lacks the `stream` capability",
        ),
        (json!({"input": "x"}), 400, "field `driver`: required"),
    ];
    for (body, status, needle) in cases {
        let (s, _, v) = post(&d, body.clone()).await;
        assert_eq!(s, status, "{body} -> {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body} -> {msg}");
        assert!(v["error"]["type"].is_string());
    }
    let r = client()
        .post(d.url("/v1/tasks"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed request body"),
        "{v}"
    );

    let big = "x".repeat(2 << 20);
    let r = client()
        .post(d.url("/v1/tasks"))
        .json(&json!({"driver": "scripted", "input": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "payload_too_large");

    let r = client().get(d.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_every_route_but_healthz() {
    // Set by cargo for the tests (.cargo/config.toml): no test changes its own environment.
    assert_eq!(std::env::var("E2E_DAEMON_TOKEN").as_deref(), Ok("t0ken"));
    let mut c = config();
    c.server.auth_token_env = Some("E2E_DAEMON_TOKEN".into());
    let d = Daemon::start(c);
    assert_eq!(
        client()
            .get(d.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = client().get(d.url("/v1/plugins")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing `Authorization: Bearer")
    );
    let r = client()
        .get(d.url("/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(d.url("/v1/tasks"))
        .bearer_auth("t0ken")
        .json(&json!({"driver": "scripted", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    d.stop();

    // No token on a non-loopback address: refused at start.
    let e = AppState::new(config(), "0.0.0.0:8080".parse().unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .contains("refusing to listen on 0.0.0.0:8080 without authentication"),
        "{e}"
    );
    let mut c = config();
    c.server.auth_token_env = Some("E2E_UNSET_TOKEN_VAR".into());
    let e = AppState::new(c, "127.0.0.1:8080".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("`E2E_UNSET_TOKEN_VAR`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_retry_after_and_timeouts_are_504() {
    let mut c = config();
    c.server.max_concurrent_tasks = 1;
    c.server.task_timeout_ms = 600;
    let d = Daemon::start(c);
    let slow = post(
        &d,
        json!({"driver": "scripted", "input": "slow", "config": {"delay_ms": 300}}),
    );
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post(&d, json!({"driver": "scripted", "input": "second"})).await
    };
    let ((s1, _, _), (s2, h2, v2)) = tokio::join!(slow, second);
    assert_eq!(s1, 200);
    assert_eq!(s2, 429, "{v2}");
    assert_eq!(h2["retry-after"], "1");
    assert_eq!(v2["error"]["type"], "overloaded");

    let (s, _, v) = post(
        &d,
        json!({"driver": "scripted", "input": "forever", "config": {"delay_ms": 5000}}),
    )
    .await;
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"]["type"], "task_timeout");
    let metrics = client()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"rejected\"} 1"), "{metrics}");
    assert!(metrics.contains("outcome=\"timeout\"} 1"), "{metrics}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_and_a_client_disconnect_cancels_the_upstream_call() {
    let mock = MockLlm::start();
    let d = Daemon::start(config());
    mock.push([Reply::error(
        401,
        "Incorrect API key provided",
        "invalid_api_key",
    )]);
    let (s, _, v) = post(
        &d,
        json!({"driver": "openai", "input": "x", "config": {"base_url": mock.base_url()}}),
    )
    .await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["error"]["type"], "driver_error");
    // The request chose the URL, so what that upstream said is not echoed to it.
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("auth error") && msg.contains("withheld"),
        "{v}"
    );
    assert!(!msg.contains("Incorrect API key"), "{v}");

    // A slow stream; the client reads one event and leaves.
    let events: Vec<String> = (0..100).map(|i| text_chunk(&format!("t{i} "))).collect();
    mock.push([Reply::Sse {
        events,
        delay_ms: 30,
        after: After::End,
    }]);
    let body = json!({"driver": "openai", "input": "long", "stream": true, "config": {"base_url": mock.base_url()}});
    e2e::daemon::leave_after_first_chunk(&d, &body).await;
    for _ in 0..150 {
        if mock.abandoned() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mock.abandoned(),
        1,
        "the upstream saw its client (the plugin) go away"
    );
    let metrics = client()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"cancelled\"} 1"), "{metrics}");
    assert!(metrics.contains("grip_tasks_in_flight 0"), "{metrics}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_listener_plugins_receive_every_request_and_are_flushed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.jsonl");
    let mut c = config();
    let table: toml::Table =
        toml::from_str(&format!("path = {:?}", file.display().to_string())).unwrap();
    c.listeners = vec![host::daemon::config::GlobalListener {
        plugin: "jsonl".into(),
        config: Some(table),
        batch_size: 1000,
    }];
    let d = Daemon::start(c);
    let (a, b) = tokio::join!(
        post(&d, json!({"driver": "scripted", "input": "one"})),
        post(&d, json!({"driver": "mock-sync", "input": "two"}))
    );
    assert_eq!((a.0, b.0), (200, 200));
    d.stop();
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "four events from each request");
    let tasks: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(tasks.len(), 2);
}

#[test]
fn sigterm_lets_the_in_flight_task_finish_then_exits_0() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("grip.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\nshutdown_grace_ms = 10000\n[plugins]\nmanifest_dirs = [{:?}]\nlib_dirs = [{:?}]\n",
            manifest_dir().display().to_string(),
            a.lib_dir.display().to_string()
        ),
    )
    .unwrap();
    let (mut child, base) = e2e::daemon::spawn_serve(&cfg);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{base}/v1/tasks");
    let in_flight = rt.spawn({
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&json!({"driver": "scripted", "input": "finish me", "config": {"delay_ms": 700}}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    std::thread::sleep(Duration::from_millis(250));
    e2e::procs::sigterm(&child);
    let (status, v) = rt.block_on(in_flight).unwrap();
    assert_eq!(
        (status, v["output"].as_str()),
        (200, Some("echo: finish me"))
    );
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    // And nothing listens any more.
    let after = rt.block_on(reqwest::Client::new().get(format!("{base}/healthz")).send());
    assert!(after.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_on_a_plain_request_cancels_its_task() {
    let d = Daemon::start(config());
    let r = client()
        .post(d.url("/v1/tasks"))
        .timeout(Duration::from_millis(300))
        .json(&json!({"driver": "scripted", "input": "slow", "config": {"delay_ms": 5000}}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    let metrics = metrics_containing(&d, "outcome=\"cancelled\"} 1").await;
    assert!(metrics.contains("outcome=\"cancelled\"} 1"), "{metrics}");
    assert!(metrics.contains("grip_tasks_in_flight 0"), "{metrics}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streamed_finish_event_carries_what_the_json_response_carries() {
    let d = Daemon::start(config());
    let script = json!({"script": [
        {"tool_calls": [{"name": "TextTools_word_count", "arguments": {"text": "a b c"}}]},
        {"json": {"words": 3}}
    ]});
    let r = client()
        .post(d.url("/v1/tasks"))
        .json(&json!({"driver": "scripted", "config": script, "input": "count", "stream": true,
                       "tools": ["text-tools"], "output_schema": {"type": "object", "required": ["words"]}}))
        .send()
        .await
        .unwrap();
    let events = sse(r).await;
    let (name, data, _) = events.last().unwrap();
    assert_eq!(name, "FinishTaskEvent");
    assert_eq!(data["json"], json!({"words": 3}), "{data}");
    assert_eq!(data["subtasks"], 1, "{data}");
    assert!(
        data["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{data}"
    );
    assert_eq!(data["output"], "{\"words\":3}", "{data}");
    d.stop();
}

/// A stream the upstream cuts is restarted by the driver; the SSE client gets a
/// `PromptRetryEvent` (its reason withheld: this request chose the URL) and can take the text
/// from the chunks after it, which match the final output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_upstream_stream_reaches_sse_clients_as_a_prompt_retry_event() {
    let mock = MockLlm::start();
    let d = Daemon::start(config());
    mock.push([Reply::Sse {
        events: vec![text_chunk("void "), text_chunk("text ")],
        delay_ms: 0,
        after: After::End,
    }]);
    let r = client()
        .post(d.url("/v1/tasks"))
        .json(
            &json!({"driver": "openai", "input": "again", "stream": true,
                       "config": {"base_url": mock.base_url()}}),
        )
        .send()
        .await
        .unwrap();
    let events = sse(r).await;
    let names: Vec<&str> = events.iter().map(|(n, _, _)| n.as_str()).collect();
    let retry = names
        .iter()
        .position(|n| *n == "PromptRetryEvent")
        .unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(
        &names[..retry],
        [
            "StartTaskEvent",
            "StartPromptEvent",
            "TextChunkEvent",
            "TextChunkEvent"
        ]
    );
    let data = &events[retry].1;
    assert_eq!(data["attempt"], 2, "{data}");
    assert!(
        data["reason"].as_str().unwrap().contains("withheld"),
        "{data}"
    );
    let text: String = events[retry..]
        .iter()
        .filter(|(n, _, _)| n == "TextChunkEvent")
        .map(|(_, d, _)| d["token"].as_str().unwrap())
        .collect();
    assert_eq!(text, "echo: again");
    let (name, finish, _) = events.last().unwrap();
    assert_eq!(name, "FinishTaskEvent");
    assert_eq!(finish["output"], "echo: again", "{finish}");
    assert_eq!(mock.requests().len(), 2);
    let metrics = metrics_containing(&d, "grip_prompt_retries_total 1").await;
    assert!(metrics.contains("grip_prompt_retries_total 1"), "{metrics}");
    d.stop();
}

//! OpenTelemetry from the host: the GenAI spans and metrics of real tasks (a real OpenAI-wire
//! upstream on 127.0.0.1, the real calculator plugin), exported by `grip run` and `grip serve`
//! to a real OTLP receiver (HTTP/protobuf and gRPC, decoded with the official protobuf
//! definitions), and `grip run --trace`.

use std::path::Path;
use std::process::Command;

use e2e::artifacts;
use e2e::mock_llm::{After, MockLlm, Reply, text_chunk, tool_chunk, usage_chunk};
use e2e::otlp::{Receiver, Span};
use serde_json::{Value, json};

const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const ERROR: i32 = 2;

/// An `openai` driver manifest pointed at `mock`, and the calculator, in `dir`.
fn manifests(dir: &Path, mock: &MockLlm) {
    std::fs::write(
        dir.join("openai.toml"),
        format!(
            r#"id = "openai"
provider = "openai"
[library]
name = "openai_driver"
[config]
base_url = "{}"
model = "gpt-test"
api_key_env = "GRIP_TEST_NO_SUCH_KEY"
max_tokens = 64
temperature = 0.5
[config.http.retry]
max_retries = 2
initial_backoff_ms = 10
[overrides]
allow = ["model"]
"#,
            mock.base_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("calculator.toml"),
        "id = \"calculator\"\n[library]\nname = \"calculator\"\n",
    )
    .unwrap();
}

/// A tool round trip: a good call and a failing one, then the answer.
fn tool_round_trip(mock: &MockLlm) {
    mock.push([
        Reply::tool_calls(&[
            ("c1", "Calculator_calculate", r#"{"expression": "2+3"}"#),
            ("c2", "Calculator_calculate", r#"{"expression": "1/"}"#),
        ]),
        Reply::text("five"),
    ]);
}

fn grip_run(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = artifacts().grip_command();
    cmd.args(["run", "--driver", "openai", "--tool", "calculator", "-q"])
        .args(["--no-default-manifests", "--manifests"])
        .arg(dir)
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env("GRIP_LOG", "warn");
    cmd
}

fn ok(mut cmd: Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "grip failed: {stderr}");
    (stdout, stderr)
}

fn named<'a>(spans: &'a [Span], prefix: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .collect()
}

/// The spans of one trace: a task with two prompts and two tool calls.
fn one_task(spans: &[Span]) -> bool {
    named(spans, "invoke_agent").len() == 1
        && named(spans, "chat").len() >= 2
        && named(spans, "execute_tool").len() == 2
}

/// A `traceparent` header's trace id and parent id.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn check_tool_round_trip(spans: &[Span], path: &str, mock: &MockLlm, upstream_from: usize) {
    let task = named(spans, "invoke_agent")[0];
    assert_eq!(task.name, "invoke_agent openai");
    assert_eq!((task.kind, task.service.as_str()), (INTERNAL, "grip-test"));
    assert_eq!(task.attr("gen_ai.operation.name"), "invoke_agent");
    assert_eq!(task.attr("gen_ai.provider.name"), "openai");
    assert_eq!(task.attr("grip.path"), path);
    assert_eq!(
        task.attr("gen_ai.usage.input_tokens"),
        22,
        "both prompts' usage"
    );
    assert!(task.attr("grip.task.id").is_string());
    for s in spans {
        assert_eq!(s.trace_id, task.trace_id, "one trace: {}", s.name);
        if s.span_id != task.span_id {
            assert_eq!(s.parent_span_id, task.span_id, "{} under the task", s.name);
        }
        // Content is the operator's to opt into: none by default.
        for key in [
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.tool.call.arguments",
            "gen_ai.tool.call.result",
            "gen_ai.tool.definitions",
        ] {
            assert!(!s.attributes.contains_key(key), "{key} on {}", s.name);
        }
    }

    let chats = named(spans, "chat");
    assert_eq!(chats.len(), 2);
    for c in &chats {
        assert_eq!((c.name.as_str(), c.kind), ("chat gpt-test", CLIENT));
        assert_eq!(c.attr("gen_ai.operation.name"), "chat");
        assert_eq!(c.attr("gen_ai.request.model"), "gpt-test");
        assert_eq!(c.attr("gen_ai.request.max_tokens"), 64);
        assert_eq!(c.attr("gen_ai.request.temperature"), 0.5);
        assert_eq!(c.attr("gen_ai.response.id"), "chatcmpl-test");
        assert_eq!(c.attr("gen_ai.response.model"), "test-model");
        assert_eq!(c.attr("gen_ai.usage.input_tokens"), 11);
        assert_eq!(c.attr("gen_ai.usage.output_tokens"), 5);
        assert_eq!(c.attr("server.address"), "127.0.0.1");
        assert_eq!(c.attr("grip.path"), path);
        assert_eq!(c.attr("grip.attempt"), 1);
        assert_eq!(c.attr("grip.isolation"), "in_process");
    }
    let reasons: Vec<&Value> = chats
        .iter()
        .map(|c| c.attr("gen_ai.response.finish_reasons"))
        .collect();
    assert!(reasons.contains(&&json!(["tool_calls"])), "{reasons:?}");
    assert!(reasons.contains(&&json!(["stop"])), "{reasons:?}");

    let tools = named(spans, "execute_tool");
    let by_call = |id: &str| {
        *tools
            .iter()
            .find(|t| t.attr("gen_ai.tool.call.id") == id)
            .unwrap()
    };
    let good = by_call("c1");
    assert_eq!(good.name, "execute_tool Calculator_calculate");
    assert_eq!(good.attr("gen_ai.tool.name"), "Calculator_calculate");
    assert_eq!(good.attr("gen_ai.operation.name"), "execute_tool");
    assert_eq!(good.attr("grip.plugin.id"), "calculator");
    assert_eq!(good.attr("error.type"), &Value::Null);
    assert_ne!(good.status_code, ERROR);
    let bad = by_call("c2");
    assert!(bad.attr("error.type").is_string(), "{bad:?}");
    assert_eq!(bad.status_code, ERROR);

    // Each upstream request carried its prompt span as the parent.
    let sent: Vec<(String, String)> = mock.requests()[upstream_from..]
        .iter()
        .map(|r| ids(r.headers["traceparent"].to_str().unwrap()))
        .collect();
    assert_eq!(sent.len(), 2);
    for (trace, parent) in &sent {
        assert_eq!(trace, &task.trace_id);
        assert!(chats.iter().any(|c| &c.span_id == parent), "{parent}");
    }
}

/// `grip run` on both paths, exporting over HTTP/protobuf from the standard variables: the
/// spans of a tool round trip with a failed tool, linked and attributed, no content, the
/// upstream requests carrying the trace, and both GenAI histograms.
#[test]
fn grip_run_exports_a_tool_round_trip_over_http_on_both_paths() {
    let mock = MockLlm::start();
    let dir = tempfile::tempdir().unwrap();
    manifests(dir.path(), &mock);
    let otlp = Receiver::start();
    for path in ["sync", "async"] {
        otlp.clear();
        tool_round_trip(&mock);
        let from = mock.requests().len();
        let mut cmd = grip_run(dir.path(), &["--path", path, "--no-stream", "add 2 and 3"]);
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.http)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_SERVICE_NAME", "grip-test");
        let (stdout, _) = ok(cmd);
        assert_eq!(stdout.trim(), "five");
        // Exported before grip exits: the last batch is flushed at shutdown.
        let spans = otlp.spans();
        assert!(one_task(&spans), "{spans:#?}");
        assert!(spans.iter().all(|s| s.via == "http"));
        check_tool_round_trip(&spans, path, &mock, from);

        let points = otlp.points();
        let duration: Vec<_> = points
            .iter()
            .filter(|p| p.metric == "gen_ai.client.operation.duration")
            .collect();
        assert_eq!(
            duration.iter().map(|p| p.count).sum::<u64>(),
            2,
            "{points:#?}"
        );
        assert_eq!(duration[0].unit, "s");
        assert_eq!(duration[0].attributes["gen_ai.provider.name"], "openai");
        assert_eq!(duration[0].attributes["gen_ai.request.model"], "gpt-test");
        let tokens = |kind: &str| {
            points
                .iter()
                .filter(|p| {
                    p.metric == "gen_ai.client.token.usage"
                        && p.attributes["gen_ai.token.type"] == kind
                })
                .map(|p| p.sum)
                .sum::<f64>()
        };
        assert_eq!((tokens("input"), tokens("output")), (22.0, 10.0));
    }
}

/// `grip serve` exporting over gRPC (from `[telemetry]`, content capture on): a streamed task
/// whose first attempt is cut (two `chat` spans, the first failed), a tool round trip with a
/// failed tool, the caller's `traceparent` continued, content on the spans; the OpenAI front
/// continues a caller's trace too.
#[test]
fn the_daemon_exports_over_grpc_continues_the_callers_trace_and_shows_retries() {
    let mock = MockLlm::start();
    let dir = tempfile::tempdir().unwrap();
    manifests(dir.path(), &mock);
    let otlp = Receiver::start();
    let cfg = dir.path().join("grip.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[plugins]\nmanifest_dirs = [{:?}]\nlib_dirs = [{:?}]\n\
             [telemetry]\nendpoint = {:?}\nprotocol = \"grpc\"\nservice_name = \"grip-test\"\n\
             capture_content = true\nmetrics_interval_ms = 200\n",
            dir.path().display().to_string(),
            artifacts().lib_dir.display().to_string(),
            otlp.grpc
        ),
    )
    .unwrap();
    let (child, base) = e2e::daemon::spawn_serve(&cfg);
    let mut child = KillOnDrop(child);

    let finish = |reason: &str| {
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}).to_string()
    };
    mock.push([
        Reply::Sse {
            events: vec![text_chunk("void ")],
            delay_ms: 0,
            after: After::Drop,
        },
        Reply::Sse {
            events: vec![
                tool_chunk(
                    0,
                    Some("c1"),
                    Some("Calculator_calculate"),
                    r#"{"expression":"6*7"}"#,
                ),
                tool_chunk(
                    1,
                    Some("c2"),
                    Some("Calculator_calculate"),
                    r#"{"expression":"1/"}"#,
                ),
                finish("tool_calls"),
                usage_chunk(9, 3),
                "[DONE]".into(),
            ],
            delay_ms: 0,
            after: After::End,
        },
        Reply::sse_text(&["forty", "-two"]),
    ]);
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/v1/tasks"))
            .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
            .json(&json!({"driver": "openai", "input": "what is 6*7?",
                          "tools": ["calculator"], "stream": true}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(body.contains("forty"), "{body}");

    let spans = otlp.wait_spans("the task's spans", |s| {
        named(s, "invoke_agent").len() == 1
            && named(s, "chat").len() == 3
            && named(s, "execute_tool").len() == 2
    });
    assert!(spans.iter().all(|s| s.via == "grpc"));
    let task = named(&spans, "invoke_agent")[0];
    assert_eq!(
        (task.trace_id.as_str(), task.parent_span_id.as_str()),
        (caller_trace, caller_span)
    );
    assert_eq!(task.attr("grip.path"), "async");
    let chats = named(&spans, "chat");
    assert!(
        chats
            .iter()
            .all(|c| c.trace_id == caller_trace && c.parent_span_id == task.span_id)
    );
    assert!(chats.iter().all(|c| c.attr("grip.stream") == true));
    let attempts: Vec<(i64, i32)> = chats
        .iter()
        .map(|c| {
            (
                c.attr("grip.attempt")
                    .as_i64()
                    .unwrap_or_else(|| panic!("{c:#?}")),
                c.status_code,
            )
        })
        .collect();
    assert!(
        attempts.contains(&(1, ERROR)),
        "the cut attempt: {attempts:?}"
    );
    assert!(
        attempts.iter().filter(|(_, s)| *s != ERROR).count() == 2,
        "{attempts:?}"
    );
    let cut = chats.iter().find(|c| c.status_code == ERROR).unwrap();
    assert_eq!(cut.attr("error.type"), "stream_cut");
    assert!(chats.iter().any(|c| c.attr("grip.attempt") == 2));

    // Content capture is on: messages, tool definitions, arguments and results.
    let first = chats.iter().find(|c| c.attr("grip.attempt") == 2).unwrap();
    let input: Value =
        serde_json::from_str(first.attr("gen_ai.input.messages").as_str().unwrap()).unwrap();
    assert_eq!(input[0]["role"], "user");
    assert_eq!(input[0]["parts"][0]["content"], "what is 6*7?");
    assert!(
        first
            .attr("gen_ai.tool.definitions")
            .as_str()
            .unwrap()
            .contains("Calculator_calculate")
    );
    let last = chats
        .iter()
        .find(|c| c.attr("gen_ai.response.finish_reasons") == &json!(["stop"]))
        .unwrap();
    let output: Value =
        serde_json::from_str(last.attr("gen_ai.output.messages").as_str().unwrap()).unwrap();
    assert_eq!(output[0]["parts"][0]["content"], "forty-two");
    let tools = named(&spans, "execute_tool");
    let good = tools
        .iter()
        .find(|t| t.attr("gen_ai.tool.call.id") == "c1")
        .unwrap();
    assert_eq!(
        good.attr("gen_ai.tool.call.arguments"),
        r#"{"expression":"6*7"}"#
    );
    assert_eq!(good.attr("gen_ai.tool.call.result"), "42");
    let bad = tools
        .iter()
        .find(|t| t.attr("gen_ai.tool.call.id") == "c2")
        .unwrap();
    assert_eq!(bad.status_code, ERROR);

    // Every upstream request continued the caller's trace.
    for r in mock.requests() {
        let (trace, _) = ids(r.headers["traceparent"].to_str().unwrap());
        assert_eq!(trace, caller_trace);
    }

    // Metrics over gRPC: the cut attempt counts with its error type.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !otlp.points().iter().any(|p| {
        p.metric == "gen_ai.client.operation.duration"
            && p.attributes.get("error.type") == Some(&json!("stream_cut"))
    }) {
        assert!(std::time::Instant::now() < deadline, "{:#?}", otlp.points());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // A task whose client gives up: its spans end as cancelled.
    otlp.clear();
    mock.push([Reply::Hang]);
    let gone = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/v1/tasks"))
            .timeout(std::time::Duration::from_millis(500))
            .json(&json!({"driver": "openai", "input": "never answered"}))
            .send()
            .await
    });
    assert!(gone.is_err(), "the client gave up");
    let spans = otlp.wait_spans("the cancelled task's spans", |s| {
        named(s, "invoke_agent").len() == 1 && named(s, "chat").len() == 1
    });
    for s in named(&spans, "invoke_agent")
        .into_iter()
        .chain(named(&spans, "chat"))
    {
        assert_eq!(
            (s.attr("error.type"), s.status_code),
            (&json!("cancelled"), ERROR),
            "{s:?}"
        );
    }

    // The OpenAI front continues a caller's trace the same way, even one its caller marked
    // "not sampled" (the operator's backend sees every task); a malformed traceparent starts
    // a new trace.
    otlp.clear();
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    rt.block_on(async {
        for tp in [
            format!("00-{other_trace}-b7ad6b7169203331-00"),
            "garbage".into(),
        ] {
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .header("traceparent", tp)
                .json(&json!({"model": "openai",
                              "messages": [{"role": "user", "content": "hello"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    let spans = otlp.wait_spans("the front's spans", |s| named(s, "invoke_agent").len() == 2);
    let traces: Vec<&str> = named(&spans, "invoke_agent")
        .iter()
        .map(|t| t.trace_id.as_str())
        .collect();
    assert!(traces.contains(&other_trace), "{traces:?}");
    assert!(
        traces
            .iter()
            .any(|t| *t != other_trace && *t != caller_trace)
    );

    e2e::procs::sigterm(&child.0);
    assert!(child.0.wait().unwrap().success());
}

/// A child that a failed assertion does not leave running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `grip run --trace` prints the span tree without any collector; without telemetry no
/// `traceparent` goes upstream; a collector that is away costs the task nothing.
#[test]
fn grip_run_trace_prints_the_tree_and_a_missing_collector_is_harmless() {
    let mock = MockLlm::start();
    let dir = tempfile::tempdir().unwrap();
    manifests(dir.path(), &mock);

    tool_round_trip(&mock);
    let (stdout, stderr) = ok(grip_run(
        dir.path(),
        &["--trace", "--no-stream", "add 2 and 3"],
    ));
    assert_eq!(stdout.trim(), "five");
    let tree: Vec<&str> = stderr.lines().skip_while(|l| *l != "trace:").collect();
    assert!(tree.len() >= 5, "{stderr}");
    assert!(tree[1].starts_with("  invoke_agent openai"), "{stderr}");
    assert!(
        tree.iter().any(|l| l.starts_with("    chat gpt-test")),
        "{stderr}"
    );
    assert!(
        tree.iter()
            .any(|l| l.starts_with("    execute_tool Calculator_calculate") && l.contains("ERROR")),
        "{stderr}"
    );

    tool_round_trip(&mock);
    let from = mock.requests().len();
    ok(grip_run(dir.path(), &["--no-stream", "add 2 and 3"]));
    assert!(
        mock.requests()[from..]
            .iter()
            .all(|r| r.headers.get("traceparent").is_none())
    );

    // Nothing listens on this port: the exports fail, the task does not.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    tool_round_trip(&mock);
    let mut cmd = grip_run(dir.path(), &["--no-stream", "add 2 and 3"]);
    cmd.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    );
    let (stdout, _) = ok(cmd);
    assert_eq!(stdout.trim(), "five");
}

/// On the sync path too, a stream the driver cuts and restarts is two `chat` spans: the first
/// failed, the second the answer.
#[test]
fn a_restarted_stream_on_the_sync_path_is_one_chat_span_per_attempt() {
    let mock = MockLlm::start();
    let dir = tempfile::tempdir().unwrap();
    manifests(dir.path(), &mock);
    let otlp = Receiver::start();
    mock.push([
        Reply::Sse {
            events: vec![text_chunk("void ")],
            delay_ms: 0,
            after: After::Drop,
        },
        Reply::sse_text(&["whole"]),
    ]);
    let mut cmd = grip_run(dir.path(), &["--path", "sync", "hello"]);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.http)
        .env("OTEL_SERVICE_NAME", "grip-test");
    let (stdout, _) = ok(cmd);
    assert_eq!(stdout.trim(), "whole");
    let spans = otlp.spans();
    let chats = named(&spans, "chat");
    let mut seen: Vec<(i64, i32, &Value)> = chats
        .iter()
        .map(|c| {
            (
                c.attr("grip.attempt").as_i64().unwrap(),
                c.status_code,
                c.attr("error.type"),
            )
        })
        .collect();
    seen.sort_by_key(|s| s.0);
    assert_eq!(seen.len(), 2, "{spans:#?}");
    assert_eq!(
        (seen[0].0, seen[0].1, seen[0].2),
        (1, ERROR, &json!("stream_cut"))
    );
    assert_eq!((seen[1].0, seen[1].2), (2, &Value::Null));
    assert!(chats.iter().all(|c| c.attr("grip.path") == "sync"));
    let task = named(&spans, "invoke_agent")[0];
    assert!(chats.iter().all(|c| c.parent_span_id == task.span_id));
}

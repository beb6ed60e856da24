//! MCP both ways, against real servers and clients from the registries (installed by
//! `scripts/test-deps.sh`): the reference time server (PyPI) and "everything" server (npm), a
//! probe server on the official Python SDK that misbehaves on request, rmcp's own server (grip's
//! `grip mcp serve`), and the official Python SDK's client.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::daemon::{Daemon, post};
use e2e::mcp::{
    alive, everything_server, http_manifest, probe_manifest, python, stdio_manifest, time_server,
    wait_for_file, wait_for_port,
};
use e2e::nats::Proc;
use e2e::procs::spawn_line;
use e2e::{ManifestSpec, artifacts, scripted};
use host::daemon::DaemonConfig;
use host::{Registry, ToolHandle};
use plugin_api::ErrorKind;
use plugin_api::wire::{ToolInvocation, ToolOutput, WIRE_VERSION};
use serde_json::{Value, json};

fn registry(dir: &Path) -> Registry {
    Registry::load_dirs(&[dir.to_owned()], &artifacts().options())
}

fn tool(r: &Registry, id: &str) -> ToolHandle {
    r.get(id)
        .unwrap_or_else(|| panic!("`{id}` not loaded: {:?}", r.refused()))
        .new_tool(None)
        .unwrap_or_else(|e| panic!("new_tool({id}): {e}"))
}

fn invocation(activity: &str, input: Value) -> ToolInvocation {
    ToolInvocation {
        schema_version: WIRE_VERSION,
        activity: activity.into(),
        input,
        call_id: "c1".into(),
    }
}

async fn call(t: &ToolHandle, activity: &str, input: Value) -> Result<ToolOutput, host::CallError> {
    t.call_async(&invocation(activity, input)).await
}

/// The sync path's call, from a blocking thread.
async fn call_sync(t: &ToolHandle, activity: &str, input: Value) -> ToolOutput {
    let (t, inv) = (t.clone(), invocation(activity, input));
    tokio::task::spawn_blocking(move || t.call(&inv))
        .await
        .unwrap()
        .unwrap()
}

fn names(t: &ToolHandle) -> Vec<String> {
    t.spec().activities.iter().map(|a| a.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_time_server_is_a_tool_with_its_schemas_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    stdio_manifest(
        dir.path(),
        "time",
        &time_server(),
        &["--local-timezone", "UTC"],
        "",
    );
    let r = registry(dir.path());
    let t = tool(&r, "time");
    assert_eq!(t.spec().name, "Time");
    assert_eq!(names(&t), ["get_current_time", "convert_time"]);
    let schema = &t.spec().activities[0].parameters;
    assert_eq!(schema["required"], json!(["timezone"]), "{schema}");

    let out = call(&t, "get_current_time", json!({"timezone": "Asia/Tokyo"}))
        .await
        .unwrap();
    assert!(!out.is_error, "{out:?}");
    assert!(out.content.contains("Asia/Tokyo"), "{}", out.content);
    let out = call_sync(
        &t,
        "convert_time",
        json!({"source_timezone": "UTC", "time": "12:00",
                                                  "target_timezone": "Asia/Tokyo"}),
    )
    .await;
    assert!(out.content.contains("21:00"), "{}", out.content);
    // The server's own error is a result the model reads, not a failure of the task.
    let out = call(&t, "get_current_time", json!({"timezone": "Not/AZone"}))
        .await
        .unwrap();
    assert!(
        out.is_error && out.content.contains("Invalid timezone"),
        "{out:?}"
    );
    let rows = r.rows();
    let row = rows.iter().find(|row| row.id == "time").unwrap();
    assert_eq!(row.version.as_deref(), Some("2026.10.19"));
    assert!(row.pid.is_some_and(alive));
    assert_eq!(
        row.functions,
        ["Time_get_current_time", "Time_convert_time"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_everything_server_gives_structured_results_and_the_allowlist_and_cap_hold() {
    let dir = tempfile::tempdir().unwrap();
    let everything = everything_server();
    stdio_manifest(dir.path(), "everything", &everything, &[], "");
    stdio_manifest(
        dir.path(),
        "few",
        &everything,
        &[],
        "tools = [\"echo\", \"get-sum\", \"no-such-tool\"]\ntool_name = \"Few\"",
    );
    stdio_manifest(dir.path(), "capped", &everything, &[], "max_tools = 2");
    let r = registry(dir.path());
    let t = tool(&r, "everything");
    assert!(names(&t).len() > 5, "{:?}", names(&t));
    let out = call(&t, "get-sum", json!({"a": 2, "b": 40})).await.unwrap();
    assert!(out.content.contains("42"), "{out:?}");
    let out = call(
        &t,
        "get-structured-content",
        json!({"location": "New York"}),
    )
    .await
    .unwrap();
    let structured = out.structured.expect("structured content");
    assert!(structured.get("temperature").is_some(), "{structured}");
    let out = call_sync(&t, "echo", json!({"message": "over stdio"})).await;
    assert!(out.content.contains("over stdio"), "{out:?}");

    assert_eq!(names(&tool(&r, "few")), ["echo", "get-sum"]);
    assert_eq!(tool(&r, "few").spec().name, "Few");
    assert_eq!(names(&tool(&r, "capped")).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_server_sees_only_the_environment_it_is_given() {
    let (dir, probe) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // cargo sets CARGO_PKG_NAME for the test process: grip's environment, not the server's.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok());
    probe_manifest(dir.path(), "probe", probe.path(), "");
    probe_manifest(
        dir.path(),
        "probe2",
        probe.path(),
        "inherit_env = [\"CARGO_PKG_NAME\"]",
    );
    let r = registry(dir.path());
    let t = tool(&r, "probe");
    let env = |t: ToolHandle, name: &'static str| async move {
        call(&t, "env", json!({"name": name}))
            .await
            .unwrap()
            .content
    };
    assert_eq!(env(t.clone(), "CARGO_PKG_NAME").await, "<unset>");
    assert_eq!(
        env(t.clone(), "PROBE_DIR").await,
        probe.path().display().to_string()
    );
    assert_ne!(env(t.clone(), "PATH").await, "<unset>");
    assert_eq!(env(tool(&r, "probe2"), "CARGO_PKG_NAME").await, "e2e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_times_out_and_the_server_is_told_to_cancel_it() {
    let (dir, probe) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    probe_manifest(dir.path(), "probe", probe.path(), "call_timeout_secs = 1.5");
    let r = registry(dir.path());
    let t = tool(&r, "probe");
    let began = Instant::now();
    let e = call(&t, "sleep", json!({"seconds": 30})).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("call_timeout_secs"), "{e}");
    assert!(began.elapsed() < Duration::from_secs(10));
    let cancelled = wait_for_file(&probe.path().join("cancelled"), 10);
    assert!(
        cancelled.is_some_and(|c| c.starts_with("30")),
        "the server saw no cancellation"
    );

    // A task that goes away (its future dropped) cancels its call too.
    let _ = std::fs::remove_file(probe.path().join("started"));
    let pending = tokio::spawn({
        let t = t.clone();
        async move { call(&t, "sleep", json!({"seconds": 20})).await }
    });
    assert!(wait_for_file(&probe.path().join("started"), 10).is_some());
    pending.abort();
    let cancelled = wait_for_file_with(&probe.path().join("cancelled"), "20", 10);
    assert!(
        cancelled,
        "the server saw no cancellation of the dropped call"
    );
    // The server is still up and answers.
    let out = call(&t, "add", json!({"a": 1, "b": 2})).await.unwrap();
    assert_eq!(out.content, "3");
}

fn wait_for_file_with(path: &Path, needle: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_fails_its_calls_in_flight_and_is_restarted() {
    let (dir, probe) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    probe_manifest(dir.path(), "probe", probe.path(), "");
    let r = registry(dir.path());
    let t = tool(&r, "probe");
    let first = r.get("probe").unwrap().child_pid().unwrap();
    let slow = tokio::spawn({
        let t = t.clone();
        async move { call(&t, "sleep", json!({"seconds": 20})).await }
    });
    assert!(wait_for_file(&probe.path().join("started"), 10).is_some());
    let e = call(&t, "crash", json!({})).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Upstream);
    assert!(e.to_string().contains("went away"), "{e}");
    assert!(e.to_string().contains("probe: crashing on request"), "{e}");
    let e = slow.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("went away during `sleep`"), "{e}");
    // The next call waits for the restart and is answered by a new process.
    let out = call(&t, "add", json!({"a": 20, "b": 22})).await.unwrap();
    assert_eq!(out.content, "42");
    assert_eq!(out.structured, Some(json!({"result": 42})));
    let plugin = r.get("probe").unwrap();
    assert_eq!(plugin.child_restarts(), Some(1));
    assert_ne!(plugin.child_pid(), Some(first));
    assert!(!alive(first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tool_list_reaches_the_next_task() {
    let (dir, probe) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    probe_manifest(dir.path(), "probe", probe.path(), "");
    let r = registry(dir.path());
    let t = tool(&r, "probe");
    assert!(!names(&t).contains(&"late".to_owned()));
    let out = call(&t, "grow", json!({"name": "late"})).await.unwrap();
    assert_eq!(out.content, "added late");
    let deadline = Instant::now() + Duration::from_secs(10);
    let grown = loop {
        let t = tool(&r, "probe");
        if names(&t).contains(&"late".to_owned()) {
            break t;
        }
        assert!(Instant::now() < deadline, "the new tool never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        call(&grown, "late", json!({})).await.unwrap().content,
        "I am late"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_ends_the_servers_whole_process_tree() {
    let (dir, probe) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    probe_manifest(dir.path(), "probe", probe.path(), "");
    let r = registry(dir.path());
    let t = tool(&r, "probe");
    let server = r.get("probe").unwrap().child_pid().unwrap();
    let out = call(&t, "spawn_child", json!({})).await.unwrap();
    let grandchild: u32 = out.content.trim().parse().unwrap();
    assert!(alive(server) && alive(grandchild));
    tokio::task::spawn_blocking(move || drop(r)).await.unwrap();
    assert!(!alive(server), "the server outlived the shutdown");
    assert!(
        !alive(grandchild),
        "the server's child outlived the shutdown"
    );
    let e = call(&t, "add", json!({"a": 1, "b": 1})).await.unwrap_err();
    assert!(e.to_string().contains("shut down"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_start_says_why_and_bad_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    stdio_manifest(dir.path(), "nope", Path::new("no-such-mcp-server"), &[], "");
    stdio_manifest(
        dir.path(),
        "mute",
        Path::new("/bin/sh"),
        &["-c", "echo mute: will not speak >&2; sleep 30"],
        "init_timeout_secs = 1",
    );
    std::fs::write(
        dir.path().join("both.toml"),
        "id = \"both\"\n[library]\nname = \"x\"\n[mcp]\ncommand = \"x\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cfg.toml"),
        "id = \"cfg\"\n[mcp]\ncommand = \"x\"\n[config]\na = 1\n",
    )
    .unwrap();
    let r = registry(dir.path());
    let e = r.get("nope").unwrap().new_tool(None).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot start the MCP server `no-such-mcp-server`"),
        "{e}"
    );
    let began = Instant::now();
    let e = r.get("mute").unwrap().new_tool(None).unwrap_err();
    assert!(
        e.to_string()
            .contains("did not answer `initialize` within 1 s"),
        "{e}"
    );
    assert!(e.to_string().contains("mute: will not speak"), "{e}");
    assert!(began.elapsed() < Duration::from_secs(10));
    let refused: Vec<String> = r.refused().iter().map(|x| x.error.to_string()).collect();
    assert!(
        refused.iter().any(|m| m.contains("not both")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|m| m.contains("`[config]` is not used by an `[mcp]` manifest")),
        "{refused:?}"
    );
}

/// `grip mcp serve --http` on a port of its own: its `/mcp` URL, and the process.
fn grip_mcp_http(manifests: &Path, tools: &[&str], token: Option<&str>) -> (String, Proc) {
    grip_mcp_http_at("127.0.0.1:0", manifests, tools, token)
}

fn grip_mcp_http_at(
    addr: &str,
    manifests: &Path,
    tools: &[&str],
    token: Option<&str>,
) -> (String, Proc) {
    let mut cmd = artifacts().grip_command();
    cmd.args(["mcp", "serve", "--no-default-manifests", "--manifests"])
        .arg(manifests)
        .args(["--http", addr]);
    for t in tools {
        cmd.args(["--tool", t]);
    }
    if let Some(token) = token {
        cmd.env("MCP_TEST_TOKEN", token)
            .args(["--auth-token-env", "MCP_TEST_TOKEN"]);
    }
    let (child, url) = spawn_line(cmd, "MCP server on ");
    (url, Proc(child))
}

/// The tool plugins `grip mcp serve` offers in these tests: the calculator, and the file
/// manager with its root in `root`.
fn served_tools(dir: &Path, root: &Path) {
    let manifests = artifacts().root.join("manifests");
    std::fs::copy(
        manifests.join("calculator.toml"),
        dir.join("calculator.toml"),
    )
    .unwrap();
    let fm = std::fs::read_to_string(manifests.join("file-manager.toml")).unwrap();
    let fm = fm.replace(
        "root = \"workspace\"",
        &format!("root = {:?}", root.display().to_string()),
    );
    std::fs::write(dir.join("file-manager.toml"), fm).unwrap();
}

/// Runs the official Python client with `spec`; its JSON report.
fn python_client(spec: Value) -> Value {
    let out = std::process::Command::new(python())
        .arg(artifacts().root.join("tests/py/mcp_client_check.py"))
        .arg(spec.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check_python_report(report: &Value, root: &Path) {
    let tools = report["tools"].as_array().unwrap();
    let calc = tools
        .iter()
        .find(|t| t["name"] == "Calculator_calculate")
        .unwrap();
    assert_eq!(calc["inputSchema"]["type"], "object", "{calc}");
    assert!(
        tools.iter().any(|t| t["name"] == "FileManager_write"),
        "{tools:?}"
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results[0]["content"][0]["text"], "42", "{results:?}");
    assert_eq!(results[0]["isError"], false);
    // Arguments failing the activity's schema: an MCP tool error, not a protocol error.
    assert_eq!(results[1]["isError"], true, "{results:?}");
    assert!(
        results[1]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("invalid arguments")
    );
    assert_eq!(results[2]["isError"], false, "{results:?}");
    assert_eq!(
        std::fs::read_to_string(root.join("note.txt")).unwrap(),
        "from python"
    );
    assert_eq!(
        results[3]["isError"], true,
        "a path outside the root: {results:?}"
    );
}

fn python_calls() -> Value {
    json!([
        ["Calculator_calculate", {"expression": "6*7"}],
        ["Calculator_calculate", {"expression": 5}],
        ["FileManager_write", {"path": "note.txt", "content": "from python"}],
        ["FileManager_read", {"path": "../outside.txt"}],
    ])
}

#[test]
fn grip_mcp_serve_works_for_the_official_python_client_over_stdio_and_http() {
    let (dir, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    served_tools(dir.path(), root.path());
    let a = artifacts();
    let grip = a.grip().display().to_string();
    let manifests = dir.path().display().to_string();
    let report = python_client(json!({
        "stdio": [grip, "mcp", "serve", "--no-default-manifests", "--manifests", manifests,
                  "--tool", "calculator", "--tool", "file-manager"],
        "env": {"GRIP_LIB_PATH": a.lib_dir.display().to_string(), "PATH": std::env::var("PATH").unwrap()},
        "calls": python_calls(),
    }));
    check_python_report(&report, root.path());

    std::fs::remove_file(root.path().join("note.txt")).unwrap();
    let (url, _server) = grip_mcp_http(dir.path(), &["calculator", "file-manager"], None);
    let report = python_client(json!({"url": url, "calls": python_calls()}));
    check_python_report(&report, root.path());
}

#[test]
fn grip_serves_an_mcp_servers_tools_again_and_passes_a_clients_cancellation_on() {
    // The Python client -> `grip mcp serve --tool probe` -> grip's `[mcp]` client -> the probe.
    let (dir, probe) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    probe_manifest(dir.path(), "probe", probe.path(), "");
    let a = artifacts();
    let report = python_client(json!({
        "stdio": [a.grip().display().to_string(), "mcp", "serve", "--no-default-manifests",
                  "--manifests", dir.path().display().to_string(), "--tool", "probe"],
        "env": {"PATH": std::env::var("PATH").unwrap()},
        "calls": [["Probe_add", {"a": 1, "b": 2}]],
        "abandon": ["Probe_sleep", {"seconds": 30}, 2],
    }));
    let result = &report["results"][0];
    assert_eq!(result["content"][0]["text"], "3", "{report}");
    assert_eq!(
        result["structuredContent"],
        json!({"result": 3}),
        "{report}"
    );
    assert_eq!(report["abandoned"], true);
    let cancelled = wait_for_file(&probe.path().join("cancelled"), 10);
    assert!(
        cancelled.is_some_and(|c| c.starts_with("30")),
        "the cancellation did not reach the server behind grip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_servers_are_tools_and_grip_serves_grip() {
    let (dir, root, probe) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    served_tools(&served, root.path());
    // grip's own server (rmcp), with a bearer token: a request without it is refused.
    let (url, _grip) = grip_mcp_http(&served, &["calculator"], Some("s3cret"));
    let status = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    // With the token: a browser page (Origin) and a rebound name (Host) are refused too.
    for (header, value) in [("origin", "http://evil.example"), ("host", "evil.example")] {
        let status = reqwest::Client::new()
            .post(&url)
            .bearer_auth("s3cret")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header(header, value)
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403, "{header}: {value}");
    }
    let clients = dir.path().join("clients");
    std::fs::create_dir(&clients).unwrap();
    http_manifest(
        &clients,
        "remote-calc",
        &url,
        "headers = { Authorization = \"Bearer s3cret\" }",
    );
    http_manifest(&clients, "no-token", &url, "");
    // The Python SDK's server over streamable HTTP.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(python());
    cmd.arg(e2e::mcp::probe_script())
        .args(["--http", &port.to_string()])
        .env("PROBE_DIR", probe.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _py = Proc(cmd.spawn().unwrap());
    wait_for_port(port, Duration::from_secs(30));
    http_manifest(
        &clients,
        "py-http",
        &format!("http://127.0.0.1:{port}/mcp"),
        "",
    );

    let r = registry(&clients);
    let calc = tool(&r, "remote-calc");
    assert_eq!(names(&calc), ["Calculator_calculate"]);
    let out = call(
        &calc,
        "Calculator_calculate",
        json!({"expression": "2**10"}),
    )
    .await
    .unwrap();
    assert_eq!(out.content, "1024");
    let out = call_sync(&calc, "Calculator_calculate", json!({"expression": "1/0"})).await;
    assert!(out.is_error, "{out:?}");
    let e = r.get("no-token").unwrap().new_tool(None).unwrap_err();
    assert!(e.to_string().contains("initialize"), "{e}");
    let py = tool(&r, "py-http");
    let out = call(&py, "add", json!({"a": 5, "b": 6})).await.unwrap();
    assert_eq!(out.content, "11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_server_that_goes_away_and_comes_back_is_reconnected() {
    let (dir, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    served_tools(&served, root.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (url, server) = grip_mcp_http_at(&addr, &served, &["calculator"], None);
    let clients = dir.path().join("clients");
    std::fs::create_dir(&clients).unwrap();
    http_manifest(&clients, "remote", &url, "call_timeout_secs = 3");
    let r = registry(&clients);
    let t = tool(&r, "remote");
    let expr = json!({"expression": "6*7"});
    assert_eq!(
        call(&t, "Calculator_calculate", expr.clone())
            .await
            .unwrap()
            .content,
        "42"
    );
    drop(server);
    let e = call(&t, "Calculator_calculate", expr.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Upstream, "{e}");
    let (_url, _server) = grip_mcp_http_at(&addr, &served, &["calculator"], None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call(&t, "Calculator_calculate", expr.clone()).await {
            Ok(out) => {
                assert_eq!(out.content, "42");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn scripted_call(function: &str, arguments: Value, answer: &str) -> Value {
    json!({"script": [
        {"tool_calls": [{"name": function, "arguments": arguments}]},
        {"text": answer}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_task_calls_an_mcp_tool_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    scripted("scripted").write(dir.path(), "scripted.toml");
    ManifestSpec::named("mock-sync", "mock_sync_driver")
        .kind("prompt_driver", &["sync"])
        .overridable(&["script"])
        .write(dir.path(), "mock-sync.toml");
    stdio_manifest(dir.path(), "time", &time_server(), &[], "");
    let mut config = DaemonConfig::default();
    config.plugins.manifest_dirs = vec![dir.path().to_owned()];
    config.plugins.lib_dirs = vec![artifacts().lib_dir.clone()];
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    let d = Daemon::start(config);
    for (driver, path) in [("scripted", "async"), ("mock-sync", "sync")] {
        let script = scripted_call(
            "Time_convert_time",
            json!({"source_timezone": "UTC", "time": "08:30", "target_timezone": "Asia/Kolkata"}),
            "done",
        );
        let (status, _, v) = post(
            &d,
            json!({"driver": driver, "config": script, "input": "what time", "tools": ["time"]}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["path"], path, "{v}");
        assert_eq!(v["output"], "done");
        assert_eq!(v["subtasks"], 1);
    }
    // A request cannot change how the server is started.
    let (status, _, v) = post(
        &d,
        json!({"driver": "scripted", "input": "x", "tools": ["time"],
               "tool_config": {"time": {"command": "/bin/sh"}}}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    d.stop();
}

#[test]
fn grip_run_uses_an_mcp_tool_and_logs_its_stderr_under_the_plugin_id() {
    let (dir, probe) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    scripted("scripted").write(dir.path(), "scripted.toml");
    probe_manifest(dir.path(), "probe", probe.path(), "");
    for path in ["sync", "async"] {
        let script = scripted_call("Probe_add", json!({"a": 2, "b": 3}), "five");
        let out = artifacts()
            .grip_command()
            .env("GRIP_LOG", "grip::mcp=info,warn")
            .args([
                "run", "sum", "--driver", "scripted", "--tool", "probe", "--quiet", "--json",
            ])
            .args(["--path", path, "--no-default-manifests", "--manifests"])
            .arg(dir.path())
            .arg("--config")
            .arg(script.to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["text"], "five", "{v}");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("probe: started pid") && l.contains("plugin=probe")),
            "{stderr}"
        );
    }
}

//! Process isolation: real plugin libraries in real child processes (`grip plugin-host`), taken
//! down in each way a native plugin can die, through the real loader and the real daemon.

use std::path::PathBuf;
use std::time::Duration;

use e2e::daemon::{Daemon, client, get_json, post, sse};
use e2e::{ManifestSpec, artifacts, first_party_registry, scripted};
use futures::StreamExt;
use host::Plugin;
use host::isolation::{Isolation, IsolationPolicy};
use host::loader::LoaderOptions;
use host::registry::Registry;
use plugin_api::ErrorKind;
use plugin_api::wire::{Message, PromptRequest, ToolInvocation, WIRE_VERSION};
use serde_json::{Value, json};

/// Loads one manifest into a registry of its own (so each test's plugin has its own child).
fn load(spec: &ManifestSpec) -> Plugin {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = spec.write(&dir, "plugin.toml");
    let mut r = Registry::new();
    let id = r
        .add_manifest(&path, &artifacts().options())
        .unwrap_or_else(|e| panic!("{e}"));
    r.get(&id).unwrap().clone()
}

fn crashy(process: &str) -> ManifestSpec {
    ManifestSpec::named("crashy", "crashy")
        .kind("tool", &["sync", "async"])
        .isolated(process)
}

fn invocation(activity: &str, input: Value) -> ToolInvocation {
    ToolInvocation {
        schema_version: WIRE_VERSION,
        activity: activity.into(),
        input,
        call_id: "t".into(),
    }
}

fn echo(tool: &host::plugin::ToolHandle, text: &str) -> String {
    tool.call(&invocation("echo", json!({ "text": text })))
        .unwrap_or_else(|e| panic!("{e}"))
        .content
}

#[test]
fn each_fault_fails_only_its_call_and_the_restarted_child_answers_the_next() {
    // (activity, async?, what the error must say, its kind)
    let faults = [
        ("segfault", false, "SIGSEGV", ErrorKind::Internal),
        ("abort", true, "SIGABRT", ErrorKind::Internal),
        ("exit", false, "exited with code 7", ErrorKind::Internal),
        (
            "overflow",
            false,
            "overflowed its stack",
            ErrorKind::Internal,
        ),
        ("alloc", false, "memory allocation", ErrorKind::Internal),
        (
            "hang",
            false,
            "ran past its deadline of 2s",
            ErrorKind::Timeout,
        ),
        (
            "block_poll",
            true,
            "ran past its deadline of 2s",
            ErrorKind::Timeout,
        ),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (activity, in_async, says, kind) in faults {
        let plugin = load(&crashy("call_timeout_secs = 2\naddress_space_mb = 3072"));
        assert_eq!(plugin.isolation(), Isolation::Process);
        let first_pid = plugin.child_pid().expect("a running child");
        let tool = plugin.new_tool(None).unwrap();
        assert_eq!(echo(&tool, "before"), "before");

        let inv = invocation(activity, json!({}));
        let e = if in_async {
            rt.block_on(tool.call_async(&inv)).unwrap_err()
        } else {
            tool.call(&inv).unwrap_err()
        };
        let text = e.to_string();
        assert!(text.contains("plugin `crashy`"), "{activity}: {text}");
        assert!(text.contains(says), "{activity}: {text}");
        assert_eq!(e.kind, kind, "{activity}: {text}");

        // The same handle works again: the child is restarted and the instance made anew.
        assert_eq!(echo(&tool, "after"), "after", "{activity}");
        let pid = plugin.child_pid().expect("a restarted child");
        assert_ne!(pid, first_pid, "{activity}");
        assert_eq!(plugin.child_restarts(), Some(1), "{activity}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_the_calls_in_flight_on_that_plugin_and_no_other() {
    let a = load(&crashy(""));
    let b = load(&crashy(""));
    let (ta, tb) = (a.new_tool(None).unwrap(), b.new_tool(None).unwrap());
    let sleep = invocation("sleep", json!({"ms": 1500}));
    let (ta2, tb2, s1, s2) = (ta.clone(), tb.clone(), sleep.clone(), sleep.clone());
    let in_flight_a = tokio::spawn(async move { ta2.call_async(&s1).await });
    let in_flight_b = tokio::spawn(async move { tb2.call_async(&s2).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let e = ta
        .call_async(&invocation("segfault", json!({})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("SIGSEGV"), "{e}");
    let e = in_flight_a.await.unwrap().unwrap_err();
    assert!(
        e.to_string().contains("died with this call in flight"),
        "{e}"
    );
    assert!(e.to_string().contains("SIGSEGV"), "{e}");
    assert_eq!(in_flight_b.await.unwrap().unwrap().content, "slept");
    assert_eq!(b.child_restarts(), Some(0));
}

#[test]
fn a_crash_loop_marks_the_plugin_failed_instead_of_restarting_it_forever() {
    let plugin = load(&crashy(""));
    let tool = plugin.new_tool(None).unwrap();
    let segfault = invocation("segfault", json!({}));
    for _ in 0..host::isolation::MAX_DEATHS {
        let e = tool.call(&segfault).unwrap_err();
        assert!(e.to_string().contains("SIGSEGV"), "{e}");
    }
    let e = tool
        .call(&invocation("echo", json!({"text": "x"})))
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("is marked failed"), "{text}");
    assert!(text.contains("died 5 times within 60 s"), "{text}");
    assert!(text.contains("SIGSEGV"), "{text}");
    assert_eq!(plugin.child_pid(), None);
}

#[test]
fn a_plugin_that_prints_to_stdout_cannot_forge_protocol_messages() {
    let plugin = load(&crashy(""));
    let tool = plugin.new_tool(None).unwrap();
    let out = tool.call(&invocation("print", json!({}))).unwrap();
    assert_eq!(out.content, "printed");
    assert_eq!(echo(&tool, "still fine"), "still fine");
    assert_eq!(plugin.child_restarts(), Some(0));
}

#[test]
fn a_panic_abort_build_is_accepted_in_its_own_process_and_refused_in_ours() {
    let a = artifacts();
    let spec = ManifestSpec::at("abort-plugin", &a.abort_plugin).kind("tool", &["sync"]);
    let dir = tempfile::tempdir().unwrap();
    let path = spec.write(dir.path(), "abort.toml");
    let e = Registry::new()
        .add_manifest(&path, &a.options())
        .unwrap_err()
        .to_string();
    assert!(e.contains("panic = \"abort\""), "{e}");
    assert!(e.contains("isolation = \"process\""), "{e}");

    let plugin = load(&spec.isolated(""));
    let out = plugin
        .new_tool(None)
        .unwrap()
        .call(&invocation("nothing", json!({})))
        .unwrap();
    assert!(!out.is_error);
}

#[test]
fn a_library_the_loader_refuses_is_refused_by_the_child_with_the_same_reason() {
    let spec = ManifestSpec::named("not-crashy", "crashy")
        .kind("tool", &["sync", "async"])
        .isolated("");
    let dir = tempfile::tempdir().unwrap();
    let path = spec.write(dir.path(), "m.toml");
    let e = Registry::new()
        .add_manifest(&path, &artifacts().options())
        .unwrap_err()
        .to_string();
    assert!(e.contains("in its own process"), "{e}");
    assert!(
        e.contains("the library's id is `crashy` but the manifest says `not-crashy`"),
        "{e}"
    );
}

/// The first-party plugins, every one in a child of its own.
fn isolated_first_party() -> Registry {
    let a = artifacts();
    let options = LoaderOptions {
        isolation: IsolationPolicy {
            force: Some(Isolation::Process),
            ..Default::default()
        },
        ..a.options()
    };
    Registry::load_dirs(&[a.root.join("manifests")], &options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capability_gives_the_same_results_isolated_as_in_process() {
    let (local, isolated) = (first_party_registry(), isolated_first_party());
    assert!(isolated.refused().is_empty(), "{:?}", isolated.refused());
    let request = PromptRequest::new(vec![Message::user("the same in both modes")]);
    let mut answers = Vec::new();
    for r in [&local, &isolated] {
        let driver = r
            .get("scripted")
            .unwrap()
            .new_driver(Some(&json!({"chunk_chars": 3})))
            .unwrap();
        let (d, rq) = (driver.clone(), request.clone());
        let sync = tokio::task::spawn_blocking(move || d.prompt(&rq).unwrap())
            .await
            .unwrap();
        let asynchronous = driver.prompt_async(&request).await.unwrap();
        let deltas: Vec<Value> = driver
            .stream(&request)
            .unwrap()
            .map(|d| serde_json::to_value(d.unwrap()).unwrap())
            .collect()
            .await;
        let calc = r.get("calculator").unwrap().new_tool(None).unwrap();
        let activity = calc.spec().activities[0].name.clone();
        let inv = invocation(&activity, json!({"expression": "6 * 7"}));
        let (c, inv2) = (calc.clone(), inv.clone());
        let tool_sync = tokio::task::spawn_blocking(move || c.call(&inv2).unwrap())
            .await
            .unwrap();
        let tool_async = calc.call_async(&inv).await.unwrap();
        answers.push(json!({
            "sync": serde_json::to_value(sync).unwrap(),
            "async": serde_json::to_value(asynchronous).unwrap(),
            "stream": deltas,
            "spec": serde_json::to_value(calc.spec()).unwrap(),
            "tool_sync": serde_json::to_value(tool_sync).unwrap(),
            "tool_async": serde_json::to_value(tool_async).unwrap(),
        }));
    }
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0]["stream"].as_array().unwrap().len() > 2);
    assert!(
        answers[0]["tool_sync"]["content"]
            .as_str()
            .unwrap()
            .contains("42")
    );

    // A listener: the same lines in the file, sync and async.
    let mut files = Vec::new();
    for r in [&local, &isolated] {
        let path: PathBuf = tempfile::tempdir().unwrap().keep().join("events.jsonl");
        let l = r
            .get("jsonl")
            .unwrap()
            .new_listener(Some(&json!({"path": path})))
            .unwrap();
        let events = vec![plugin_api::wire::Event::new(
            "task",
            "run",
            plugin_api::wire::EventKind::StartTask { input: "in".into() },
        )];
        let (l2, e2) = (l.clone(), events.clone());
        tokio::task::spawn_blocking(move || {
            l2.publish(&e2).unwrap();
            l2.flush().unwrap();
        })
        .await
        .unwrap();
        l.publish_async(&events).await.unwrap();
        l.flush_async().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("id");
                o.remove("timestamp_ms");
                v
            })
            .collect();
        files.push(lines);
    }
    assert_eq!(files[0].len(), 2);
    assert_eq!(files[0], files[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_async_call_cancels_it_in_the_child() {
    let plugin = load(&crashy("call_timeout_secs = 1"));
    let tool = plugin.new_tool(None).unwrap();
    // Dropped long before its deadline: had it stayed in flight, the deadline would kill the
    // child at 1 s and the next call would run on a restarted one.
    let sleep = invocation("sleep", json!({"ms": 3000}));
    let call = tool.call_async(&sleep);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        tool.call_async(&invocation("echo", json!({"text": "alive"})))
            .await
            .unwrap()
            .content,
        "alive"
    );
    assert_eq!(plugin.child_restarts(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_daemon_each_fault_fails_its_call_and_nothing_else() {
    // A daemon each: a plugin whose child dies 5 times within 60 s is marked failed.
    for (activity, says) in [
        ("segfault", "SIGSEGV"),
        ("abort", "SIGABRT"),
        ("exit", "exited with code 7"),
        ("overflow", "overflowed its stack"),
        ("alloc", "memory allocation"),
        ("block_poll", "ran past its deadline of 1s"),
    ] {
        fault_through_the_daemon(activity, says).await;
    }
}

async fn fault_through_the_daemon(activity: &str, says: &str) {
    let dir = tempfile::tempdir().unwrap().keep();
    scripted("scripted").write(&dir, "scripted.toml");
    // Not isolated by its manifest: by the operator's config.
    ManifestSpec::named("crashy", "crashy")
        .kind("tool", &["sync", "async"])
        .extra("\n[process]\ncall_timeout_secs = 1\naddress_space_mb = 3072\n")
        .write(&dir, "crashy.toml");
    let mut c = host::daemon::DaemonConfig::default();
    c.plugins.manifest_dirs = vec![dir];
    c.plugins.lib_dirs = vec![artifacts().lib_dir.clone()];
    c.plugins
        .isolation_by_id
        .insert("crashy".into(), Isolation::Process);
    c.server.bind = "127.0.0.1:0".parse().unwrap();
    let d = Daemon::start(c);

    let task = |activity: &str| {
        let body = json!({"driver": "scripted", "input": "go", "tools": ["crashy"], "stream": true,
            "config": {"script": [
                {"tool_calls": [{"name": format!("Crashy_{activity}"), "arguments": {"text": "hi"}}]},
                {"text": "done"}]}});
        client().post(d.url("/v1/tasks")).json(&body).send()
    };
    let slow = post(
        &d,
        json!({"driver": "scripted", "input": "meanwhile", "config": {"delay_ms": 400}}),
    );
    let (crashed, other) = tokio::join!(async { sse(task(activity).await.unwrap()).await }, slow);
    let results: Vec<_> = crashed
        .iter()
        .filter(|e| e.0 == "FinishActionsSubtaskEvent")
        .collect();
    assert_eq!(results.len(), 1, "{crashed:?}");
    let result = results[0].1.to_string();
    assert!(result.contains("plugin `crashy`"), "{activity}: {result}");
    assert!(result.contains(says), "{activity}: {result}");
    assert_eq!(crashed.last().unwrap().0, "FinishTaskEvent");
    assert_eq!(other.0, 200, "{}", other.2);
    assert_eq!(other.2["output"], "echo: meanwhile");

    let health = client().get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let next = sse(task("echo").await.unwrap()).await;
    let result = next
        .iter()
        .find(|e| e.0 == "FinishActionsSubtaskEvent")
        .map(|e| e.1.to_string())
        .unwrap();
    assert!(result.contains("\"hi\""), "{result}");
    assert!(!result.contains("is_error\":true"), "{result}");

    let plugins = get_json(&d, "/v1/plugins").await;
    let row = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "crashy")
        .cloned()
        .unwrap();
    assert_eq!(row["isolation"], "process", "{row}");
    assert!(row["pid"].as_u64().is_some(), "{row}");
    let _ = d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_sync_call_that_outlives_its_task_is_counted_until_it_returns() {
    let dir = tempfile::tempdir().unwrap().keep();
    ManifestSpec::named("mock-sync", "mock_sync_driver")
        .kind("prompt_driver", &["sync"])
        .overridable(&["script"])
        .write(&dir, "mock-sync.toml");
    ManifestSpec::named("crashy", "crashy")
        .kind("tool", &["sync", "async"])
        .write(&dir, "crashy.toml");
    let mut c = host::daemon::DaemonConfig::default();
    c.plugins.manifest_dirs = vec![dir];
    c.plugins.lib_dirs = vec![artifacts().lib_dir.clone()];
    c.server.bind = "127.0.0.1:0".parse().unwrap();
    c.server.task_timeout_ms = 300;
    let d = Daemon::start(c);
    let (status, headers, v) = post(
        &d,
        json!({"driver": "mock-sync", "input": "go", "tools": ["crashy"],
            "config": {"script": [
                {"tool_calls": [{"name": "Crashy_sleep", "arguments": {"ms": 1500}}]},
                {"text": "done"}]}}),
    )
    .await;
    assert_eq!(headers["x-grip-path"], "sync");
    assert_eq!(status, 504, "{v}");
    let m = e2e::daemon::metrics_containing(&d, "grip_sync_threads_stuck 1").await;
    assert!(m.contains("grip_sync_threads_stuck 1"), "{m}");
    // The call returns at 1.5 s: its slot is free again.
    let m = e2e::daemon::metrics_containing(&d, "grip_sync_threads_stuck 0").await;
    assert!(m.contains("grip_sync_threads_stuck 0"), "{m}");
}

#[test]
fn a_child_outlives_the_thread_that_started_it() {
    // PR_SET_PDEATHSIG follows the forking thread: a child forked by a short-lived thread (a
    // blocking-pool thread restarting it) must not die with that thread.
    let plugin = std::thread::spawn(|| load(&crashy(""))).join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let tool = plugin.new_tool(None).unwrap();
    assert_eq!(echo(&tool, "alive"), "alive");
    assert_eq!(plugin.child_restarts(), Some(0));
}

#[test]
fn a_crash_is_seen_even_when_a_process_the_plugin_started_outlives_it() {
    let plugin = load(&crashy(""));
    let tool = plugin.new_tool(None).unwrap();
    let e = tool
        .call(&invocation("spawn_then_segfault", json!({})))
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("SIGSEGV"), "{text}");
    // Its death was seen while the `sleep` it started still runs (holding what it inherited),
    // not when that ends.
    let pid: u32 = text
        .split("spawned pid ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the grandchild's pid in {text}"));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "{text}"
    );
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the grandchild the fixture started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    assert_eq!(echo(&tool, "after"), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_that_blocks_its_poll_still_gets_the_child_killed_at_the_deadline() {
    let plugin = load(&crashy("call_timeout_secs = 1"));
    let tool = plugin.new_tool(None).unwrap();
    let first = plugin.child_pid().unwrap();
    let block = invocation("block_poll", json!({}));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), tool.call_async(&block))
            .await
            .is_err()
    );
    // Cancelled, but it cannot be dropped inside the child: it stays under its deadline.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(plugin.child_pid(), None, "the stuck child was killed");
    let out = tool
        .call_async(&invocation("echo", json!({"text": "fresh"})))
        .await
        .unwrap();
    assert_eq!(out.content, "fresh");
    assert_ne!(plugin.child_pid(), Some(first));
}

#[test]
fn the_process_limits_of_the_manifest_bind_the_child() {
    let plugin = load(&crashy("open_files = 64\ncpu_secs = 1"));
    let tool = plugin.new_tool(None).unwrap();
    let open: usize = tool
        .call(&invocation("open_files", json!({})))
        .unwrap()
        .content
        .parse()
        .unwrap();
    assert!(open < 64, "{open} files open under RLIMIT_NOFILE = 64");
    // The child's CPU time ends at 1 s: the kernel sends SIGXCPU.
    let e = tool.call(&invocation("spin", json!({}))).unwrap_err();
    assert!(e.to_string().contains("SIGXCPU"), "{e}");
    assert_eq!(echo(&tool, "after"), "after");
}

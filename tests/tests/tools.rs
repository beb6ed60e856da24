//! The first-party tools through the loaded plugins, on both paths, with their edge cases.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use e2e::first_party_registry;
use host::{EventBus, PromptTask, Registry, ToolHandle};
use plugin_api::wire::{EventKind, ToolInvocation, ToolOutput};
use serde_json::{Value, json};

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let r = first_party_registry();
        assert!(r.refused().is_empty(), "{:?}", r.refused());
        r
    })
}

fn tool(id: &str, config: Option<Value>) -> ToolHandle {
    registry()
        .get(id)
        .unwrap()
        .new_tool(config.as_ref())
        .unwrap()
}

/// Calls on both paths and checks they agree.
async fn call(t: &ToolHandle, activity: &str, input: Value) -> ToolOutput {
    let inv = ToolInvocation {
        schema_version: 1,
        activity: activity.into(),
        input,
        call_id: "c".into(),
    };
    let sync = tokio::task::block_in_place(|| t.call(&inv)).unwrap();
    let asy = t.call_async(&inv).await.unwrap();
    assert_eq!(sync.is_error, asy.is_error, "{sync:?} vs {asy:?}");
    if !(activity == "now" || activity == "write" || activity == "append" || activity == "delete") {
        assert_eq!(sync.content, asy.content);
    }
    asy
}

async fn calc(t: &ToolHandle, expr: &str) -> ToolOutput {
    call(t, "calculate", json!({"expression": expr})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calculator_evaluates_and_says_what_is_wrong_and_where() {
    let t = tool("calculator", None);
    assert_eq!(
        t.spec().activities[0].parameters["properties"]["expression"]["maxLength"],
        1000
    );
    assert!(t.spec().activities[0].description.contains("sqrt"));
    for (expr, want) in [
        ("(2 + 3) * sqrt(16) / 2", "10"),
        ("2 ** 10 - 1e3", "24"),
        ("-2 ** 2", "-4"),
        ("17 // 5 + 17 % 5", "5"),
        ("round(pi, 4)", "3.1416"),
        ("max(1, 2, 3) >= 3", "true"),
        ("atan2(1, 1) * 4", &std::f64::consts::PI.to_string()),
    ] {
        let out = calc(&t, expr).await;
        assert!(!out.is_error, "{expr}: {}", out.content);
        assert_eq!(out.content, want, "{expr}");
    }
    for (expr, want) in [
        ("(1 + 2))", "unexpected ')' at column 8"),
        ("10 / (5 - 5)", "division by zero at column 4"),
        ("nope(3)", "unknown function `nope` at column 1"),
        (
            "9 ** 9 ** 9",
            "the result is too large (overflow) at column 3",
        ),
    ] {
        let out = calc(&t, expr).await;
        assert!(out.is_error, "{expr}");
        assert_eq!(out.content, want);
    }
    let deep = format!("{}1{}", "(".repeat(300), ")".repeat(300));
    assert!(
        calc(&t, &deep)
            .await
            .content
            .contains("nesting deeper than 64 levels")
    );
    let long = "1+".repeat(2000) + "1";
    assert!(calc(&t, &long).await.content.contains("the limit is 1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_task_uses_the_calculator_through_the_scripted_driver() {
    let script = json!({"script": [
        {"tool_calls": [{"name": "Calculator_calculate", "arguments": {"expression": "1234 * 5678"}}]},
        {"text": "1234 times 5678 is 7006652."}
    ]});
    let driver = registry()
        .get("scripted")
        .unwrap()
        .new_driver(Some(&script))
        .unwrap();
    for path in ["sync", "async"] {
        let bus = Arc::new(EventBus::new());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let _g = bus.add_listener(host::EventListener::on_event("r", move |e| {
            s.lock().unwrap().push(e);
            Ok(None)
        }));
        let task = PromptTask::new(driver.clone(), "What is 1234 * 5678?")
            .tool(tool("calculator", None))
            .event_bus(bus);
        let out = if path == "sync" {
            tokio::task::block_in_place(|| task.run())
        } else {
            task.async_run().await
        }
        .unwrap();
        assert_eq!(out.text, "1234 times 5678 is 7006652.");
        let result = seen
            .lock()
            .unwrap()
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::FinishActionsSubtask { results, .. } => Some(results[0].content.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(result, "7006652", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datetime_handles_zones_arithmetic_parsing_and_formatting() {
    let t = tool("datetime", None);
    // Results are structured: the model reads the JSON text, the host gets the value.
    let v = |o: &ToolOutput| -> Value {
        let text: Value =
            serde_json::from_str(&o.content).unwrap_or_else(|_| panic!("{}", o.content));
        assert_eq!(o.structured.as_ref(), Some(&text), "{o:?}");
        text
    };

    let now = call(&t, "now", json!({"timezone": "Asia/Tokyo"})).await;
    assert!(!now.is_error, "{}", now.content);
    assert_eq!(v(&now)["timezone"], "Asia/Tokyo");
    assert!(v(&now)["rfc3339"].as_str().unwrap().ends_with("+09:00"));

    let bad = call(&t, "now", json!({"timezone": "Mars/Olympus_Mons"})).await;
    assert!(
        bad.is_error
            && bad
                .content
                .contains("unknown time zone `Mars/Olympus_Mons`"),
        "{}",
        bad.content
    );

    let added = call(
        &t,
        "add",
        json!({"datetime": "2024-03-30T12:00:00[Europe/Paris]", "duration": "1 day 2 hours"}),
    )
    .await;
    // Across the DST change: a calendar day later, wall clock kept.
    assert_eq!(
        v(&added)["datetime"],
        "2024-03-31T14:00:00+02:00[Europe/Paris]"
    );
    let back = call(
        &t,
        "add",
        json!({"datetime": "2024-01-01", "duration": "2 weeks ago"}),
    )
    .await;
    assert_eq!(v(&back)["datetime"], "2023-12-18T00:00:00+00:00[UTC]");
    let bad = call(
        &t,
        "add",
        json!({"datetime": "2024-01-01", "duration": "a while"}),
    )
    .await;
    assert!(
        bad.is_error && bad.content.contains("cannot read `a while` as a duration"),
        "{}",
        bad.content
    );

    let diff = call(
        &t,
        "difference",
        json!({"start": "2024-01-01T00:00:00Z", "end": "2024-03-01T12:00:00Z"}),
    )
    .await;
    assert_eq!(v(&diff)["total_seconds"], 5_227_200.0);
    assert_eq!(v(&diff)["span"], "2mo 12h");

    let parsed = call(
        &t,
        "parse",
        json!({"text": "24/11/2026 09:30", "format": "%d/%m/%Y %H:%M", "timezone": "America/New_York"}),
    )
    .await;
    assert_eq!(
        v(&parsed)["datetime"],
        "2026-11-24T09:30:00-05:00[America/New_York]"
    );
    let bad = call(
        &t,
        "parse",
        json!({"text": "yesterday-ish", "format": "%Y-%m-%d"}),
    )
    .await;
    assert!(
        bad.is_error && bad.content.contains("does not match the format `%Y-%m-%d`"),
        "{}",
        bad.content
    );
    let bad = call(&t, "parse", json!({"text": "not a date"})).await;
    assert!(
        bad.is_error && bad.content.contains("cannot read `not a date`"),
        "{}",
        bad.content
    );

    let formatted = call(
        &t,
        "format",
        json!({"datetime": "2026-11-24T08:00:00Z", "format": "%A %d %B %Y %H:%M %Z", "timezone": "Europe/Paris"}),
    )
    .await;
    assert_eq!(
        v(&formatted)["formatted"],
        "Tuesday 24 November 2026 09:00 CET"
    );
    let bad = call(
        &t,
        "format",
        json!({"datetime": "2026-11-24", "format": "%Y-%"}),
    )
    .await;
    assert!(
        bad.is_error && bad.content.contains("bad format `%Y-%`"),
        "{}",
        bad.content
    );
}

fn fm(root: &Path, extra: Value) -> ToolHandle {
    let mut config = json!({"root": root});
    host::plugin::merge_config(&mut config, &extra);
    tool("file-manager", Some(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_manager_stays_inside_its_root_and_writes_atomically() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("root");
    let t = fm(&root, json!({"max_read_bytes": 64, "max_write_bytes": 32}));
    assert!(root.is_dir(), "the root is created");

    let w = call(
        &t,
        "write",
        json!({"path": "notes/today.txt", "content": "hello"}),
    )
    .await;
    assert!(!w.is_error, "{}", w.content);
    assert_eq!(
        call(&t, "read", json!({"path": "notes/today.txt"}))
            .await
            .content,
        "hello"
    );
    let a = call(
        &t,
        "append",
        json!({"path": "notes/today.txt", "content": " world"}),
    )
    .await;
    assert!(!a.is_error, "{}", a.content);
    // Appended on both paths: "hello" + " world" twice.
    assert_eq!(
        std::fs::read_to_string(root.join("notes/today.txt")).unwrap(),
        "hello world world"
    );
    let listing: Value =
        serde_json::from_str(&call(&t, "list", json!({"path": "notes"})).await.content).unwrap();
    assert_eq!(listing["entries"][0]["name"], "today.txt");
    assert_eq!(
        listing["entries"].as_array().unwrap().len(),
        1,
        "no temporary files left behind: {listing}"
    );

    std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.join("link-out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("dir-out")).unwrap();
    std::fs::write(root.join("inside.txt"), "fine").unwrap();
    std::os::unix::fs::symlink(root.join("inside.txt"), root.join("link-in")).unwrap();
    for (activity, path, needle) in [
        ("read", "../secret.txt", "leaves the root directory"),
        ("read", "notes/../../x", "leaves the root directory"),
        ("read", "/etc/passwd", "is absolute"),
        ("read", "link-out", "resolves outside the root directory"),
        (
            "read",
            "dir-out/secret.txt",
            "resolves outside the root directory",
        ),
        (
            "write",
            "dir-out/new.txt",
            "resolves outside the root directory",
        ),
        ("list", "dir-out", "resolves outside the root directory"),
        ("read", "notes", "is a directory"),
        ("read", "missing.txt", "cannot read `missing.txt`"),
    ] {
        let mut input = json!({"path": path});
        if activity == "write" {
            input["content"] = json!("x");
        }
        let out = call(&t, activity, input).await;
        assert!(
            out.is_error && out.content.contains(needle),
            "{activity} {path}: {}",
            out.content
        );
    }
    assert!(!outside.path().join("new.txt").exists());
    assert_eq!(
        call(&t, "read", json!({"path": "link-in"})).await.content,
        "fine"
    );

    let big = "x".repeat(33);
    let out = call(&t, "write", json!({"path": "big.txt", "content": big})).await;
    assert!(
        out.is_error && out.content.contains("the write limit is 32 bytes"),
        "{}",
        out.content
    );
    let out = call(
        &t,
        "append",
        json!({"path": "notes/today.txt", "content": "0123456789abcdef"}),
    )
    .await;
    assert!(
        out.is_error && out.content.contains("the limit is 32 bytes"),
        "{}",
        out.content
    );
    std::fs::write(root.join("large.txt"), "y".repeat(100)).unwrap();
    let out = call(&t, "read", json!({"path": "large.txt"})).await;
    assert!(
        out.is_error && out.content.contains("the read limit is 64 bytes"),
        "{}",
        out.content
    );

    // Deleting a link removes the link, never its target.
    let inv = ToolInvocation {
        schema_version: 1,
        activity: "delete".into(),
        input: json!({"path": "link-out"}),
        call_id: "c".into(),
    };
    assert!(!t.call_async(&inv).await.unwrap().is_error);
    assert!(outside.path().join("secret.txt").exists());
    let out = call(&t, "delete", json!({"path": "notes"})).await;
    assert!(out.is_error && out.content.contains("only files are deleted"));

    let locked = fm(&root, json!({"allow_delete": false}));
    let out = call(&locked, "delete", json!({"path": "inside.txt"})).await;
    assert!(out.is_error && out.content.contains("deleting is disabled"));
}

/// Attacks on the root from inside it: a hard link made beforehand to a file outside (no path
/// check can see where it leads), and a FIFO that would block a reading thread forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_manager_refuses_hard_links_and_special_files_without_blocking() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("root");
    let t = fm(&root, json!({}));
    std::fs::hard_link(&secret, root.join("linked.txt")).unwrap();
    let fifo = root.join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo");

    let started = std::time::Instant::now();
    for (activity, path, needle) in [
        ("read", "linked.txt", "has 2 hard links"),
        ("append", "linked.txt", "has 2 hard links"),
        ("write", "linked.txt", "has 2 hard links"),
        ("read", "pipe", "is not a regular file"),
        ("append", "pipe", "is not a regular file"),
        ("write", "pipe", "is not a regular file"),
    ] {
        let mut input = json!({"path": path});
        if activity != "read" {
            input["content"] = json!("pwned");
        }
        let out = call(&t, activity, input).await;
        assert!(
            out.is_error && out.content.contains(needle),
            "{activity} {path}: {}",
            out.content
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "nothing blocked on the FIFO"
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret");
    let listing: Value = serde_json::from_str(&call(&t, "list", json!({})).await.content).unwrap();
    let pipe = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "pipe")
        .unwrap();
    assert_eq!(pipe["type"], "special");
}

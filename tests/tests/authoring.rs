//! Third-party authoring, end to end: crates written by `grip plugins new` in a temporary
//! directory, built out of tree (their own target directory, plugin-api by path), tested with
//! the in-process harness, checked by `grip plugins check` and used by the host; `plugins check`
//! on broken plugins; and the frozen generation-1 plugin, built against plugin-api 1.0.0 as
//! released, loading in the current host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use e2e::{ManifestSpec, artifacts, panicky};
use host::{EventBus, EventListener, LoaderOptions, PromptTask, Registry};
use plugin_api::wire::{Message, PromptRequest};
use serde_json::json;

/// The target directory for the template crates: not the workspace's own, but kept between
/// runs so only the first build compiles the dependencies.
fn out_of_tree_target() -> PathBuf {
    artifacts().lib_dir.parent().unwrap().join("out-of-tree")
}

/// The generation-1 fixture's own target directory: two plugin-api versions never share one
/// (a shared one has been seen to reuse the wrong plugin-api rlib).
fn gen1_target() -> PathBuf {
    artifacts().lib_dir.parent().unwrap().join("compat-gen1")
}

fn out_of_tree_libs() -> PathBuf {
    out_of_tree_target().join("debug")
}

fn cargo(dir: &Path, args: &[&str]) -> Output {
    cargo_in(dir, &out_of_tree_target(), args)
}

fn cargo_in(dir: &Path, target: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .arg("--target-dir")
        .arg(target)
        .current_dir(dir)
        // Whatever the outer cargo set for this test binary must not leak into the build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn grip(args: &[&str]) -> Output {
    artifacts()
        .grip_command()
        .args(args)
        .env("GRIP_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Writes a crate with `grip plugins new`, pinned to the workspace's dependency versions (so the
/// out-of-tree build reuses what it compiled before), then tests and builds it.
fn new_plugin(parent: &Path, name: &str, kind: &str) -> PathBuf {
    let dir = parent.join(name);
    let api = artifacts().root.join("plugin-api");
    let out = grip(&[
        "plugins",
        "new",
        name,
        "--kind",
        kind,
        "--dir",
        dir.to_str().unwrap(),
        "--plugin-api",
        api.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("wrote"), "{}", stdout(&out));
    std::fs::copy(artifacts().root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let test = cargo(&dir, &["test", "--quiet"]);
    let report = String::from_utf8_lossy(&test.stdout).into_owned();
    assert!(
        report.contains("1 passed"),
        "the template's own test ran: {report}"
    );
    cargo(&dir, &["build", "--quiet"]);
    dir
}

fn check(manifest: &Path, extra: &[&str]) -> (bool, String) {
    check_in(manifest, &out_of_tree_libs(), extra)
}

fn check_in(manifest: &Path, libs: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "plugins",
        "check",
        manifest.to_str().unwrap(),
        "--lib-dir",
        libs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = grip(&args);
    (out.status.success(), stdout(&out))
}

fn registry(manifest_dirs: &[PathBuf]) -> Registry {
    registry_in(manifest_dirs, &out_of_tree_libs())
}

fn registry_in(manifest_dirs: &[PathBuf], libs: &Path) -> Registry {
    let a = artifacts();
    let options = LoaderOptions {
        lib_dirs: vec![libs.to_owned(), a.lib_dir.clone()],
        require_hash: false,
        ..Default::default()
    };
    let r = Registry::load_dirs(manifest_dirs, &options);
    assert!(r.refused().is_empty(), "{:?}", r.refused());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_plugins_built_out_of_tree_are_checked_and_used_by_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let tool = new_plugin(tmp.path(), "hello-tool", "tool");
    let driver = new_plugin(tmp.path(), "echo-driver", "driver");
    let listener = new_plugin(tmp.path(), "log-listener", "listener");

    for (dir, name, expected) in [
        (&tool, "hello-tool", 2),
        (&driver, "echo-driver", 3),
        (&listener, "log-listener", 2),
    ] {
        let (ok, report) = check(&dir.join(format!("manifests/{name}.toml")), &["--strict"]);
        assert!(ok, "{report}");
        assert_eq!(
            report
                .lines()
                .filter(|l| l.trim_start().starts_with("ok "))
                .count(),
            expected,
            "one line per declared capability:\n{report}"
        );
    }
    let (_, report) = check(&tool.join("manifests/hello-tool.toml"), &[]);
    assert!(
        report.contains(r#"greet({"name":"test"})"#) && report.contains("Hello, test!"),
        "{report}"
    );

    // The host uses them: the scripted driver calls the new tool; the new driver streams; the
    // new listener receives the events.
    let a = artifacts();
    let dirs = vec![
        tool.join("manifests"),
        driver.join("manifests"),
        listener.join("manifests"),
        a.root.join("manifests"),
    ];
    let r = registry(&dirs);
    let script = json!({"script": [
        {"tool_calls": [{"name": "HelloTool_greet", "arguments": {"name": "Ada"}}]},
        {"text": "greeted"}
    ]});
    let bus = Arc::new(EventBus::new());
    let _guard = bus.add_listener(EventListener::new("log").driver(
        r.get("log-listener").unwrap().new_listener(None).unwrap(),
        4,
    ));
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&results);
    let _recorder = bus.add_listener(EventListener::on_event(
        "results",
        move |e: plugin_api::wire::Event| -> host::events::HandlerResult {
            if let plugin_api::wire::EventKind::FinishActionsSubtask { results, .. } = &e.kind {
                seen.lock()
                    .unwrap()
                    .extend(results.iter().map(|m| m.content.clone()));
            }
            Ok(None)
        },
    ));
    let out = PromptTask::new(
        r.get("scripted")
            .unwrap()
            .new_driver(Some(&script))
            .unwrap(),
        "greet Ada",
    )
    .tool(r.get("hello-tool").unwrap().new_tool(None).unwrap())
    .event_bus(Arc::clone(&bus))
    .async_run()
    .await
    .unwrap();
    assert_eq!(out.text, "greeted");
    assert_eq!(out.subtasks, 1);
    assert_eq!(*results.lock().unwrap(), ["Hello, Ada!"]);

    let d = r.get("echo-driver").unwrap().new_driver(None).unwrap();
    let streamed = PromptTask::new(d.clone(), "hi there")
        .stream(true)
        .event_bus(Arc::new(EventBus::new()))
        .async_run()
        .await
        .unwrap();
    assert_eq!(streamed.text, "You said: hi there");
    let sync = tokio::task::block_in_place(|| {
        PromptTask::new(d, "sync path")
            .event_bus(Arc::new(EventBus::new()))
            .run()
    })
    .unwrap();
    assert_eq!(sync.text, "You said: sync path");

    // And through the binary, with the manifests where a user would keep them.
    let libs = out_of_tree_libs();
    let out = grip(&[
        "run",
        "--manifests",
        a.root.join("manifests").to_str().unwrap(),
        "--manifests",
        driver.join("manifests").to_str().unwrap(),
        "--manifests",
        listener.join("manifests").to_str().unwrap(),
        "--lib-dir",
        libs.to_str().unwrap(),
        "--driver",
        "echo-driver",
        "--listener",
        "log-listener",
        "from the CLI",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("You said: from the CLI"),
        "{}",
        stdout(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[log-listener] StartTaskEvent") && stderr.contains("events so far"),
        "{stderr}"
    );
    // The tool, called by the scripted driver, from the binary (`--json` shows the subtask).
    let out = grip(&[
        "run",
        "--manifests",
        a.root.join("manifests").to_str().unwrap(),
        "--manifests",
        tool.join("manifests").to_str().unwrap(),
        "--lib-dir",
        libs.to_str().unwrap(),
        "--driver",
        "scripted",
        "--tool",
        "hello-tool",
        "--config",
        &script.to_string(),
        "--json",
        "greet Ada",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["text"], "greeted", "{report}");
    assert_eq!(report["subtasks"], 1, "{report}");

    // A name that cannot be a crate, and a directory already in use, are refused.
    let bad = grip(&[
        "plugins",
        "new",
        "Bad_Name",
        "--dir",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid plugin name"));
    let taken = grip(&[
        "plugins",
        "new",
        "hello-tool",
        "--dir",
        tool.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already exists and is not empty"));
}

#[test]
fn plugins_check_fails_broken_plugins_and_says_which_entry_point() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = a.lib_dir.to_str().unwrap().to_owned();
    let run = |manifest: &Path, extra: &[&str]| {
        let mut args = vec![
            "plugins",
            "check",
            manifest.to_str().unwrap(),
            "--lib-dir",
            &lib_dir,
        ];
        args.extend_from_slice(extra);
        let out = grip(&args);
        (out.status.success(), stdout(&out))
    };

    // Panics in every entry point: each one is a failure line, and the exit status is 1.
    let m = panicky().write(dir.path(), "panicky.toml");
    let (ok, report) = run(&m, &[]);
    assert!(!ok, "{report}");
    for what in [
        "prompt_driver sync prompt",
        "prompt_driver async prompt",
        "prompt_driver stream",
        "tool sync call",
        "event_listener sync publish",
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what}: {report}"));
        assert!(line.contains("FAIL") && line.contains("panic"), "{line}");
    }

    // Malformed JSON from a plugin without the SDK's guards.
    let m = ManifestSpec::named("raw", "raw_plugin")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .write(dir.path(), "raw.toml");
    let (ok, report) = run(&m, &[]);
    assert!(!ok, "{report}");
    assert!(report.contains("malformed JSON"), "{report}");

    // An ordinary error (no server listening) is a warning, and a failure with --strict.
    let m = ManifestSpec::named("openai", "openai_driver")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .extra("[config]\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:9/v1\"\nhttp = { retry = { max_retries = 0 } }\n")
        .write(dir.path(), "openai.toml");
    let (ok, report) = run(&m, &[]);
    assert!(ok, "{report}");
    assert!(
        report.contains("warn") && report.contains("cannot connect"),
        "{report}"
    );
    let (ok, _) = run(&m, &["--strict"]);
    assert!(!ok);

    // No answer in time.
    let m = ManifestSpec::named("slow", "slow_tool")
        .kind("tool", &["async"])
        .write(dir.path(), "slow.toml");
    let (ok, report) = run(&m, &["--timeout", "0.3", "--input", r#"{"ms": 5000}"#]);
    assert!(!ok, "{report}");
    assert!(report.contains("no answer within 0.3 s"), "{report}");

    // Refused at load: one line saying why, and nothing is called.
    let m = ManifestSpec::named("generation-three", "generation_three")
        .kind("prompt_driver", &["sync"])
        .write(dir.path(), "g2.toml");
    let (ok, report) = run(&m, &[]);
    assert!(!ok);
    assert_eq!(report.lines().count(), 1, "{report}");
    assert!(
        report.starts_with("refused:") && report.contains("generation"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_plugin_api_1_0_0_loads_and_works_in_this_host() {
    let a = artifacts();
    let compat = a.root.join("tests/compat");
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("xzf")
        .arg(compat.join("plugin-api-1.0.0.crate"))
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success(), "unpack plugin-api 1.0.0");
    let src = tmp.path().join("gen1-plugin");
    std::fs::create_dir_all(src.join("src")).unwrap();
    std::fs::create_dir_all(src.join("manifests")).unwrap();
    for f in [
        "Cargo.toml",
        "Cargo.lock",
        "manifests/gen1.toml",
        "src/lib.rs",
    ] {
        std::fs::copy(compat.join("gen1-plugin").join(f), src.join(f)).unwrap();
    }
    // --locked: the fixture's dependency versions are frozen too.
    cargo_in(&src, &gen1_target(), &["build", "--quiet", "--locked"]);
    let libs = gen1_target().join("debug");

    let (ok, report) = check_in(&src.join("manifests/gen1.toml"), &libs, &["--strict"]);
    assert!(ok, "{report}");
    assert_eq!(
        report.lines().filter(|l| l.contains(" ok ")).count(),
        7,
        "{report}"
    );

    let r = registry_in(&[src.join("manifests")], &libs);
    let p = r.get("gen1").unwrap();
    assert_eq!(
        p.info().sdk_version,
        "1.0.0",
        "built with the released plugin-api"
    );
    assert_ne!(
        p.info().sdk_version,
        plugin_api::sdk::SDK_VERSION,
        "and loaded by a host built with a newer one"
    );
    let d = p.new_driver(None).unwrap();
    let req = PromptRequest::new(vec![Message::user("hello")]);
    assert_eq!(
        d.prompt_async(&req).await.unwrap().message.content,
        "gen1 says hello"
    );
    let out = PromptTask::new(d, "streamed")
        .stream(true)
        .tool(p.new_tool(None).unwrap())
        .event_bus(Arc::new(EventBus::new()))
        .async_run()
        .await
        .unwrap();
    assert_eq!(out.text, "gen1 says streamed");
    let listener = p.new_listener(None).unwrap();
    let event = |kind| plugin_api::wire::Event::new("t", "r", kind);
    let start = event(plugin_api::wire::EventKind::StartTask { input: "x".into() });
    // A type newer than its SDK (1.2's PromptRetryEvent) is left out of its batches: a 1.0
    // SDK would refuse the whole batch.
    let retry = event(plugin_api::wire::EventKind::PromptRetry {
        attempt: 2,
        reason: "cut".into(),
    });
    assert!(!p.knows_event(&retry.kind));
    // Nor 1.4's TaskRetryEvent (a queued task's second run).
    let task_retry = event(plugin_api::wire::EventKind::TaskRetry {
        attempt: 2,
        reason: "worker gone".into(),
    });
    assert!(!p.knows_event(&task_retry.kind));
    listener
        .publish_async(&[start.clone(), retry.clone(), task_retry.clone()])
        .await
        .unwrap();
    tokio::task::block_in_place(|| listener.publish(std::slice::from_ref(&retry))).unwrap();
    let bus = Arc::new(EventBus::new());
    let _l = bus.add_listener(host::EventListener::new("gen1").driver(listener, 1));
    bus.apublish_event(&start).await;
    bus.apublish_event(&retry).await;
    bus.apublish_event(&task_retry).await;
    assert_eq!(bus.listener_failures(), 0);
}

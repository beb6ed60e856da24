//! The `grip` binary: `plugins list`, `plugins check`, `plugins hash` and `prompt`.

use std::process::Output;

use e2e::{ManifestSpec, artifacts, scripted};

fn grip(args: &[&str]) -> Output {
    let a = artifacts();
    a.grip_command()
        .args(args)
        .current_dir(&a.root)
        .output()
        .expect("run grip")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn plugins_check_exits_0_for_a_good_plugin_and_1_with_the_reason_for_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = scripted("scripted").write(dir.path(), "good.toml");
    let out = grip(&["plugins", "check", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).starts_with("ok: plugin `scripted` 0.1.0 (prompt_driver[sync,async,stream])"),
        "{}",
        stdout(&out)
    );

    let bad = ManifestSpec::at("abort-plugin", &artifacts().abort_plugin)
        .kind("tool", &["sync"])
        .write(dir.path(), "bad.toml");
    let out = grip(&["plugins", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("refused: plugin `abort-plugin`"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("panic = \"abort\""),
        "{}",
        stdout(&out)
    );
}

#[test]
fn plugins_list_shows_loaded_and_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    scripted("scripted").write(dir.path(), "a.toml");
    std::fs::write(dir.path().join("b.toml"), "id = 'broken'\n").unwrap();
    let out = grip(&[
        "plugins",
        "list",
        "--no-default-manifests",
        "--manifests",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("scripted") && text.contains("loaded"),
        "{text}"
    );
    assert!(
        text.contains("refused") && text.contains("missing `[library]`"),
        "{text}"
    );

    let out = grip(&[
        "plugins",
        "list",
        "--json",
        "--no-default-manifests",
        "--manifests",
        dir.path().to_str().unwrap(),
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["status"], "loaded");
    assert_eq!(rows[0]["capabilities"], "prompt_driver[sync,async,stream]");
}

#[test]
fn plugins_hash_prints_the_sha256_the_loader_checks() {
    let a = artifacts();
    let lib = a.lib("text_tools");
    let out = grip(&["plugins", "hash", lib.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        host::loader::sha256_file(&lib).unwrap()
    );
}

#[test]
fn run_executes_a_prompt_task_on_either_path_with_tools() {
    for path in ["auto", "async", "sync"] {
        let out = grip(&[
            "run",
            "--driver",
            "scripted",
            "--path",
            path,
            "Hello plugins",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout(&out).contains("echo: Hello plugins\n"),
            "{}",
            stdout(&out)
        );
        let footer = String::from_utf8_lossy(&out.stderr).into_owned();
        let expected = if path == "sync" {
            "sync path"
        } else {
            "async path"
        };
        assert!(footer.contains(expected), "{footer}");
    }
    let script = r#"{"script":[{"tool_calls":[{"name":"TextTools_word_count","arguments":{"text":"a b c"}}]},{"text":"3 words"}]}"#;
    let out = grip(&[
        "run",
        "--driver",
        "scripted",
        "--tool",
        "text-tools",
        "--config",
        script,
        "--json",
        "count",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["text"].as_str(), v["subtasks"].as_u64()),
        (Some("3 words"), Some(1))
    );
    // The console listener plugin shows the run as it happens.
    let out = grip(&[
        "run",
        "--driver",
        "scripted",
        "--tool",
        "text-tools",
        "--config",
        script,
        "count",
    ]);
    let text = stdout(&out);
    assert!(
        text.contains("→ TextTools_word_count({\"text\":\"a b c\"})\n← 3\n3 words"),
        "{text}"
    );
    assert!(text.contains("■ done"), "{text}");

    let out = grip(&["run", "--driver", "nope", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no loaded prompt_driver `nope`"), "{err}");
    assert!(
        !err.contains("text-tools"),
        "only drivers are listed: {err}"
    );
    let out = grip(&["run", "--driver", "scripted", "--tool", "nope", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no loaded tool `nope` (loaded tools: ") && err.contains("text-tools"),
        "{err}"
    );
    let out = grip(&[
        "run",
        "--driver",
        "scripted",
        "--output-schema",
        "{not json",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--output-schema must be JSON"));
}

/// `plugins check` makes a driver the way every front does, with its model prepared: the
/// default driver checks out (it once failed with "`model_path` is not set").
#[test]
fn plugins_check_passes_for_the_default_local_driver() {
    let manifest = artifacts().root.join("manifests/local.toml");
    let out = grip(&["plugins", "check", manifest.to_str().unwrap(), "--strict"]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok   prompt_driver sync prompt"), "{text}");
    assert!(text.contains("ok   prompt_driver async prompt"), "{text}");
    assert!(!text.contains("model_path"), "{text}");
}

/// A stream the upstream cuts is restarted, and the console says where the void text ends.
#[test]
fn the_console_marks_the_text_of_a_restarted_stream_as_void() {
    let mock = e2e::mock_llm::MockLlm::start();
    mock.push([e2e::mock_llm::Reply::Sse {
        events: vec![e2e::mock_llm::text_chunk("void text")],
        delay_ms: 0,
        after: e2e::mock_llm::After::End,
    }]);
    let config = serde_json::json!({"base_url": mock.base_url(),
        "http": {"retry": {"initial_backoff_ms": 5}}})
    .to_string();
    let out = grip(&["run", "--driver", "openai", "--config", &config, "again"]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "void text\n↻ attempt 2, the text above is void: the stream from http://127.0.0.1:"
        ) && text.contains("ended without [DONE]\necho: again"),
        "{text}"
    );
}

/// A failed run says what failed once; logs to a pipe carry no colour codes, and every line of
/// the run names its task.
#[test]
fn a_failed_run_prints_its_error_once_and_logs_are_plain_text_with_the_task_id() {
    let a = artifacts();
    let out = a
        .grip_command()
        .args([
            "run",
            "--driver",
            "scripted",
            "--config",
            r#"{"script": [{"error": "the upstream is on fire", "kind": "upstream"}]}"#,
            "x",
        ])
        .current_dir(&a.root)
        .env("GRIP_LOG", "debug")
        .output()
        .expect("run grip");
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let shown: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("the upstream is on fire") && !l.contains("DEBUG"))
        .collect();
    assert_eq!(shown.len(), 1, "{all}");
    assert!(!all.contains('\u{1b}'), "no ANSI escapes in a pipe: {all}");
    let run_lines: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("task failed"))
        .collect();
    assert!(
        run_lines.iter().all(|l| l.contains("task_id=")),
        "{run_lines:?}"
    );
}

#[test]
fn isolation_process_runs_every_plugin_in_a_child_whose_logs_reach_the_host() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    e2e::panicky().write(dir.path(), "panicky.toml");
    let manifests = dir.path().to_str().unwrap();
    let out = grip(&[
        "plugins",
        "list",
        "--isolation",
        "process",
        "--no-default-manifests",
        "--manifests",
        manifests,
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ISOLATION"), "{text}");
    assert!(text.contains("process pid "), "{text}");

    let out = a
        .grip_command()
        .args(["run", "--isolation", "process", "--no-default-manifests"])
        .args(["--manifests", manifests])
        .args(["--driver", "panicky", "--path", "sync", "--no-stream"])
        .args(["--config", r#"{"on_word": true}"#, "hello"])
        .current_dir(&a.root)
        .env("GRIP_LOG", "info")
        .output()
        .expect("run grip");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}{err}", stdout(&out));
    assert_eq!(stdout(&out).trim(), "calm");
    let logged: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("panicky got a sync prompt"))
        .collect();
    assert_eq!(logged.len(), 1, "{err}");
    assert!(
        logged[0].contains("plugin") && logged[0].contains("panicky"),
        "{err}"
    );
    assert!(
        !logged[0].contains("{\""),
        "re-emitted, not the child's JSON: {err}"
    );
}

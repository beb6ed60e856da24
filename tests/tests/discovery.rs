//! The CLI as a plugin author meets it: a plugin registered once is found by every command,
//! `--manifests` adds to the defaults, a missing plugin says where grip looked, listeners add
//! to the console trace, every kind is configurable per run, and `plugins check` calls every
//! activity.

use std::path::Path;
use std::process::Output;

use e2e::artifacts;

/// `grip` with its own user config directory `config` and cwd `cwd` (outside the checkout,
/// unless a test wants it).
fn grip_in(cwd: &Path, config: &Path, args: &[&str]) -> Output {
    artifacts()
        .grip_command()
        .args(args)
        .current_dir(cwd)
        .env("GRIP_CONFIG_DIR", config)
        .output()
        .expect("run grip")
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A manifest directory of its own with one manifest that names no kinds and no capabilities.
fn own_plugin_dir(parent: &Path) -> std::path::PathBuf {
    let dir = parent.join("mine");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("shout.toml"),
        "id = \"shouty\"\n[library]\nname = \"text_tools\"\n",
    )
    .unwrap();
    dir
}

#[test]
fn a_registered_directory_is_found_by_every_later_command_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, elsewhere) = (tmp.path().join("config"), tmp.path().join("elsewhere"));
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mine = own_plugin_dir(tmp.path());

    let o = grip_in(
        &elsewhere,
        &config,
        &["plugins", "add", mine.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(config.join("plugins.toml").is_file());
    let again = grip_in(
        &elsewhere,
        &config,
        &["plugins", "add", mine.to_str().unwrap()],
    );
    assert!(
        out(&again).contains("already registered"),
        "{}",
        out(&again)
    );

    // From a directory that is not the checkout: the registered directory first, then grip's
    // own manifests (from the source tree this grip was built from).
    let o = grip_in(&elsewhere, &config, &["plugins", "dirs"]);
    let dirs = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = dirs.lines().collect();
    assert_eq!(
        lines[0],
        mine.canonicalize().unwrap().to_str().unwrap(),
        "{dirs}"
    );
    assert!(lines.iter().any(|l| l.ends_with("manifests")), "{dirs}");

    // Its library was id-checked as `text-tools`: the manifest says `shouty`, so it is refused
    // with the reason, while the first-party plugins load as usual.
    let o = grip_in(&elsewhere, &config, &["plugins", "list"]);
    let text = out(&o);
    assert!(
        text.contains("shouty") && text.contains("refused"),
        "{text}"
    );
    assert!(text.contains("the library's id is `text-tools`"), "{text}");

    // A correct manifest of a plugin of one's own, with no kinds or capabilities: found by
    // `grip run` with no --manifests at all, next to the first-party driver.
    std::fs::write(
        mine.join("shout.toml"),
        "id = \"text-tools\"\n[library]\nname = \"text_tools\"\n",
    )
    .unwrap();
    let script = r#"{"script":[{"tool_calls":[{"name":"TextTools_uppercase","arguments":{"text":"abc"}}]},{"text":"done"}]}"#;
    let o = grip_in(
        &elsewhere,
        &config,
        &[
            "run",
            "--driver",
            "scripted",
            "--tool",
            "text-tools",
            "--config",
            script,
            "--json",
            "go",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["text"], "done", "{v}");

    let o = grip_in(
        &elsewhere,
        &config,
        &["plugins", "remove", mine.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = grip_in(&elsewhere, &config, &["plugins", "dirs"]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("mine"),
        "{}",
        out(&o)
    );
}

#[test]
fn a_missing_driver_says_where_grip_looked_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = grip_in(
        tmp.path(),
        &tmp.path().join("config"),
        &[
            "run",
            "--no-default-manifests",
            "--manifests",
            empty.to_str().unwrap(),
            "hi",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let text = out(&o);
    assert!(text.contains("no loaded prompt_driver `local`"), "{text}");
    assert!(
        text.contains(&format!("searched: {}", empty.display())),
        "{text}"
    );
    assert!(text.contains("grip plugins add DIR"), "{text}");
}

#[test]
fn listeners_add_to_the_console_trace_and_quiet_leaves_only_the_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run.jsonl");
    let listener_config = format!("jsonl={}", serde_json::json!({"path": log}));
    let config = tmp.path().join("config");
    let o = grip_in(
        tmp.path(),
        &config,
        &[
            "run",
            "--driver",
            "scripted",
            "--listener",
            "jsonl",
            "--listener-config",
            &listener_config,
            "Hello",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    // The console trace (its task line) and the JSONL file both saw the run.
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(stdout.contains("echo: Hello"), "{stdout}");
    assert!(stdout.lines().count() > 1, "no console trace: {stdout}");
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.contains("StartTaskEvent") && lines.contains("FinishTaskEvent"),
        "{lines}"
    );

    let o = grip_in(
        tmp.path(),
        &config,
        &["run", "--driver", "scripted", "-q", "Hello"],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "echo: Hello\n",
        "{}",
        out(&o)
    );

    let o = grip_in(
        tmp.path(),
        &config,
        &[
            "run",
            "--driver",
            "scripted",
            "--listener-config",
            "jsonl={}",
            "Hello",
        ],
    );
    assert!(
        out(&o).contains("`jsonl` is not a listener of this run"),
        "{}",
        out(&o)
    );
}

#[test]
fn a_tool_is_configured_per_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sandbox");
    let script = r#"{"script":[{"tool_calls":[{"name":"FileManager_write","arguments":{"path":"a.txt","content":"hi"}}]},{"text":"ok"}]}"#;
    let tool_config = format!("file-manager={}", serde_json::json!({"root": root}));
    let o = grip_in(
        tmp.path(),
        &tmp.path().join("config"),
        &[
            "run",
            "--driver",
            "scripted",
            "--tool",
            "file-manager",
            "--tool-config",
            &tool_config,
            "--config",
            script,
            "-q",
            "go",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(std::fs::read_to_string(root.join("a.txt")).unwrap(), "hi");
    let o = grip_in(
        tmp.path(),
        &tmp.path().join("config"),
        &[
            "run",
            "--driver",
            "scripted",
            "--tool-config",
            "file-manager={}",
            "go",
        ],
    );
    assert!(
        out(&o).contains("`file-manager` is not one of the task's `tools`"),
        "{}",
        out(&o)
    );
}

#[test]
fn plugins_check_calls_every_activity_and_strict_fails_on_an_error_result() {
    let a = artifacts();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let manifest = a.root.join("manifests/datetime.toml");
    let o = grip_in(
        &a.root,
        &config,
        &["plugins", "check", manifest.to_str().unwrap()],
    );
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    for activity in ["now", "add", "difference", "parse", "format"] {
        for mode in ["sync", "async"] {
            assert!(
                text.contains(&format!("tool {mode} call {activity}(")),
                "{activity} {mode}: {text}"
            );
        }
    }
    // The calculator's made-up expression ("test") is valid input but an unknown name: an
    // error result, a warning, and with --strict a failure.
    let manifest = a.root.join("manifests/calculator.toml");
    let o = grip_in(
        &a.root,
        &config,
        &["plugins", "check", manifest.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("error result"), "{}", out(&o));
    let o = grip_in(
        &a.root,
        &config,
        &["plugins", "check", "--strict", manifest.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let o = grip_in(
        &a.root,
        &config,
        &[
            "plugins",
            "check",
            "--strict",
            "--activity",
            "calculate",
            "--input",
            r#"{"expression": "6*7"}"#,
            manifest.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("\"42\""), "{}", out(&o));
}

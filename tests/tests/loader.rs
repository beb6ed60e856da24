//! The loader against real libraries: every way a plugin can be refused, and calls across the
//! boundary in each mode, panics included.

use e2e::{ManifestSpec, artifacts, first_party_registry, panicky, scripted};
use futures::StreamExt;
use host::error::ErrorKind;
use host::{LoadError, LoaderOptions, Registry};
use plugin_api::wire::{Message, PromptRequest, StreamDelta, ToolInvocation};

fn request(text: &str) -> PromptRequest {
    PromptRequest::new(vec![Message::user(text)])
}

fn refusal(spec: &ManifestSpec, options: &LoaderOptions) -> LoadError {
    let dir = tempfile::tempdir().unwrap();
    let path = spec.write(dir.path(), "plugin.toml");
    let mut registry = Registry::new();
    let err = registry.add_manifest(&path, options).unwrap_err();
    assert_eq!(registry.refused().len(), 1);
    assert_eq!(registry.plugins().count(), 0);
    err
}

fn one_line(e: &LoadError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "refusal must be one line: {s}");
    s
}

#[test]
fn first_party_manifests_all_load() {
    let registry = first_party_registry();
    assert!(registry.refused().is_empty(), "{:?}", registry.refused());
    let ids: Vec<&str> = registry.plugins().map(|p| p.id()).collect();
    assert!(
        ids.contains(&"scripted") && ids.contains(&"text-tools"),
        "{ids:?}"
    );
}

#[test]
fn several_plugins_of_the_same_root_type_load_side_by_side() {
    // abi_stable's RootModule::load_from_file would return the first library for every path.
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    scripted("scripted").write(dir.path(), "a.toml");
    ManifestSpec::named("text-tools", "text_tools")
        .kind("tool", &["sync", "async"])
        .write(dir.path(), "b.toml");
    panicky()
        .extra("[config]\non_word = true\n")
        .write(dir.path(), "c.toml");
    let registry = Registry::load_dirs(&[dir.path().to_owned()], &a.options());
    assert!(registry.refused().is_empty(), "{:?}", registry.refused());

    let scripted = registry.get("scripted").unwrap().new_driver(None).unwrap();
    let panicky = registry.get("panicky").unwrap().new_driver(None).unwrap();
    assert_eq!(
        scripted.prompt(&request("hi")).unwrap().message.content,
        "echo: hi"
    );
    assert_eq!(
        panicky.prompt(&request("hi")).unwrap().message.content,
        "calm"
    );
    let tool = registry.get("text-tools").unwrap().new_tool(None).unwrap();
    assert_eq!(tool.spec().name, "TextTools");
    assert_ne!(
        registry.get("scripted").unwrap().library(),
        registry.get("panicky").unwrap().library()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_async_and_stream_calls_cross_the_boundary() {
    let registry = first_party_registry();
    let plugin = registry.get("scripted").unwrap();
    let script = serde_json::json!({
        "chunk_chars": 3,
        "delay_ms": 2,
        "script": [
            {"tool_calls": [{"name": "TextTools_word_count", "arguments": {"text": "a b c"}}]},
            {"text": "There are 3 words."}
        ]
    });
    let driver = plugin.new_driver(Some(&script)).unwrap();

    // Step 0: a tool call, on all three paths.
    let sync = tokio::task::block_in_place(|| driver.prompt(&request("count"))).unwrap();
    assert_eq!(sync.message.tool_calls.len(), 1);
    assert_eq!(sync.message.tool_calls[0].name, "TextTools_word_count");
    let async_ = driver.prompt_async(&request("count")).await.unwrap();
    assert_eq!(async_, sync);

    let deltas: Vec<StreamDelta> = driver
        .stream(&request("count"))
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    let args: String = deltas
        .iter()
        .filter_map(|d| match d {
            StreamDelta::ToolCall { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&args).unwrap(),
        serde_json::json!({"text": "a b c"})
    );

    // Step 1 (after the assistant turn): text, streamed in 3-character chunks.
    let mut stack = request("count").messages;
    stack.push(sync.message.clone());
    stack.push(Message::tool_result("call_0_0", "3", false));
    let req = PromptRequest::new(stack);
    let mut text = String::new();
    let mut chunks = 0;
    let mut stream = driver.stream(&req).unwrap();
    while let Some(delta) = stream.next().await {
        if let StreamDelta::Text { text: t } = delta.unwrap() {
            assert!(t.chars().count() <= 3);
            text.push_str(&t);
            chunks += 1;
        }
    }
    assert_eq!(text, "There are 3 words.");
    assert_eq!(chunks, 6);

    // The sync path can iterate a stream too (blocking).
    let blocking: Vec<_> =
        tokio::task::block_in_place(|| driver.stream(&req).unwrap().blocking_iter().collect());
    assert!(blocking.iter().all(Result::is_ok));

    // Tools, both modes.
    let tool = registry.get("text-tools").unwrap().new_tool(None).unwrap();
    let inv = ToolInvocation {
        schema_version: 1,
        activity: "word_count".into(),
        input: serde_json::json!({"text": "one two three four"}),
        call_id: "c1".into(),
    };
    assert_eq!(
        tokio::task::block_in_place(|| tool.call(&inv))
            .unwrap()
            .content,
        "4"
    );
    assert_eq!(tool.call_async(&inv).await.unwrap().content, "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_become_errors_naming_the_plugin_and_the_host_goes_on() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    panicky().write(dir.path(), "panicky.toml");
    scripted("scripted").write(dir.path(), "scripted.toml");
    let registry = Registry::load_dirs(&[dir.path().to_owned()], &a.options());
    let plugin = registry.get("panicky").unwrap();
    let driver = plugin.new_driver(None).unwrap();

    let e = tokio::task::block_in_place(|| driver.prompt(&request("x"))).unwrap_err();
    assert_eq!(
        (e.plugin.as_str(), e.kind),
        ("panicky", ErrorKind::Panic),
        "{e}"
    );
    assert!(e.message.contains("sync prompt exploded"), "{e}");
    assert!(
        e.message.contains("panicky/src/lib.rs"),
        "location expected: {e}"
    );

    let e = driver.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Panic, "{e}");
    assert!(e.message.contains("future exploded after an await"), "{e}");

    let items: Vec<_> = driver.stream(&request("x")).unwrap().collect().await;
    assert_eq!(
        items.len(),
        2,
        "one chunk, then the panic, then the end: {items:?}"
    );
    assert!(items[0].is_ok());
    let e = items[1].as_ref().unwrap_err();
    assert!(e.message.contains("stream exploded at item 1"), "{e}");

    let tool = plugin.new_tool(None).unwrap();
    let inv = ToolInvocation {
        schema_version: 1,
        activity: "boom".into(),
        input: serde_json::json!({}),
        call_id: "c".into(),
    };
    let e = tokio::task::block_in_place(|| tool.call(&inv)).unwrap_err();
    assert!(e.message.contains("tool call exploded"), "{e}");
    let e = tool.call_async(&inv).await.unwrap_err();
    assert!(e.message.contains("async tool call exploded"), "{e}");

    let listener = plugin.new_listener(None).unwrap();
    let event = plugin_api::wire::Event::new(
        "t",
        "r",
        plugin_api::wire::EventKind::TextChunk { token: "x".into() },
    );
    let e =
        tokio::task::block_in_place(|| listener.publish(std::slice::from_ref(&event))).unwrap_err();
    assert!(e.message.contains("listener exploded"), "{e}");
    let e = listener.publish_async(&[event]).await.unwrap_err();
    assert!(e.message.contains("async listener exploded"), "{e}");

    // The same plugin still answers when it is not asked to panic, and so do the others.
    let calm = plugin
        .new_driver(Some(&serde_json::json!({"on_word": true})))
        .unwrap();
    assert_eq!(
        calm.prompt_async(&request("hi"))
            .await
            .unwrap()
            .message
            .content,
        "calm"
    );
    let scripted = registry.get("scripted").unwrap().new_driver(None).unwrap();
    assert_eq!(
        scripted
            .prompt_async(&request("still here"))
            .await
            .unwrap()
            .message
            .content,
        "echo: still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unguarded_panics_from_a_raw_plugin_are_errors() {
    let a = artifacts();
    let spec = ManifestSpec::named("raw", "raw_plugin")
        .kind("prompt_driver", &["sync", "async", "stream"]);
    let dir = tempfile::tempdir().unwrap();
    let path = spec.write(dir.path(), "raw.toml");
    let mut registry = Registry::new();
    registry.add_manifest(&path, &a.options()).unwrap();
    let driver = registry.get("raw").unwrap().new_driver(None).unwrap();

    let e = tokio::task::block_in_place(|| driver.prompt(&request("x"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().starts_with("plugin `raw` prompt: "), "{e}");
    assert!(e.message.contains("malformed JSON"), "{e}");

    let e = driver.prompt_async(&request("x")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Panic, "{e}");

    let items: Vec<_> = driver.stream(&request("x")).unwrap().collect().await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(
        items[0]
            .as_ref()
            .unwrap_err()
            .message
            .contains("malformed JSON")
    );
    assert_eq!(items[1].as_ref().unwrap_err().kind, ErrorKind::Panic);

    let e = registry.get("raw").unwrap().new_tool(None).unwrap_err();
    assert!(e.to_string().contains("is not a tool"), "{e}");
}

#[test]
fn a_plugin_built_with_panic_abort_is_refused_before_it_runs() {
    let a = artifacts();
    let spec = ManifestSpec::at("abort-plugin", &a.abort_plugin).kind("tool", &["sync"]);
    let e = refusal(&spec, &a.options());
    let s = one_line(&e);
    assert!(matches!(e, LoadError::Refused { .. }), "{s}");
    assert!(s.contains("panic = \"abort\""), "{s}");
}

#[test]
fn a_library_with_an_incompatible_abi_is_refused_in_one_line() {
    let a = artifacts();
    let spec = ManifestSpec::named("incompatible", "incompatible_abi").kind("tool", &["sync"]);
    let e = refusal(&spec, &a.options());
    let s = one_line(&e);
    assert!(matches!(e, LoadError::IncompatibleAbi { .. }), "{s}");
    assert!(
        s.ends_with("incompatible ABI: in PluginModV1: mismatched package: expected plugin-api, found incompatible-abi"),
        "{s}"
    );
}

#[test]
fn a_plugin_for_a_newer_abi_generation_is_refused_in_one_line() {
    let a = artifacts();
    let spec = ManifestSpec::named("gen3", "generation_three").kind("tool", &["sync"]);
    let e = refusal(&spec, &a.options());
    let s = one_line(&e);
    assert!(
        s.contains("ABI generation 3, newer than this host knows (2, 1)"),
        "{s}"
    );
}

#[test]
fn a_missing_library_names_where_it_looked() {
    let a = artifacts();
    let e = refusal(
        &scripted("scripted").named_library("no_such_plugin"),
        &a.options(),
    );
    let s = one_line(&e);
    assert!(matches!(e, LoadError::LibraryNotFound { .. }), "{s}");
    assert!(
        s.contains("libno_such_plugin.so") && s.contains(&a.lib_dir.display().to_string()),
        "{s}"
    );

    let e = refusal(
        &ManifestSpec::at("scripted", std::path::Path::new("/nonexistent/libx.so"))
            .kind("tool", &["sync"]),
        &a.options(),
    );
    assert!(
        one_line(&e).contains("/nonexistent/libx.so does not exist"),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, "definitely not ELF").unwrap();
    let e = refusal(
        &ManifestSpec::at("fake", &fake).kind("tool", &["sync"]),
        &a.options(),
    );
    let s = one_line(&e);
    assert!(matches!(e, LoadError::Open { .. }), "{s}");
}

#[test]
fn sha256_is_enforced_when_pinned_and_required_on_demand() {
    let a = artifacts();
    let lib = a.lib("scripted_driver");
    let good = host::loader::sha256_file(&lib).unwrap();

    let mut spec = scripted("scripted");
    spec.sha256 = Some(good.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = spec.write(dir.path(), "ok.toml");
    let strict = LoaderOptions {
        require_hash: true,
        ..a.options()
    };
    Registry::new().add_manifest(&path, &strict).unwrap();

    spec.sha256 = Some("0".repeat(64));
    let e = refusal(&spec, &a.options());
    let s = one_line(&e);
    assert!(matches!(e, LoadError::HashMismatch { .. }), "{s}");
    assert!(s.contains(&good), "{s}");

    let e = refusal(&scripted("scripted"), &strict);
    assert!(matches!(e, LoadError::HashRequired { .. }), "{e}");
}

#[test]
fn manifest_errors_name_the_file_line_and_field() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "malformed.toml",
            "id = \"x\"\nkinds = [\"tool\"\n",
            3,
            "invalid array",
        ),
        (
            "unknown.toml",
            "id = \"x\"\nkinds = [\"tool\"]\nflavour = 1\n[library]\nname = \"x\"\n[capabilities]\ntool = [\"sync\"]\n",
            3,
            "unknown field `flavour`",
        ),
        (
            "wrongtype.toml",
            "id = \"x\"\nkinds = [\"tool\"]\n[library]\nname = 7\n[capabilities]\ntool = [\"sync\"]\n",
            4,
            "invalid type",
        ),
    ];
    for (file, text, line, needle) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let e = Registry::new()
            .add_manifest(&path, &a.options())
            .unwrap_err();
        let LoadError::Manifest(m) = &e else {
            panic!("{e}")
        };
        assert_eq!(m.line, Some(line), "{e}");
        let s = one_line(&e);
        assert!(s.starts_with(&format!("{}:{line}:", path.display())), "{s}");
        assert!(s.contains(needle), "{s}");
    }
}

#[test]
fn disagreements_between_manifest_and_library_are_refused() {
    let a = artifacts();
    // The library implements sync+async+stream; the manifest claims less.
    let e = refusal(
        &ManifestSpec::named("scripted", "scripted_driver").kind("prompt_driver", &["sync"]),
        &a.options(),
    );
    let s = one_line(&e);
    assert!(
        s.contains("capabilities disagree: manifest declares prompt_driver[sync], library implements prompt_driver[sync,async,stream]"),
        "{s}"
    );
    // Wrong id.
    let e = refusal(&scripted("not-scripted"), &a.options());
    assert!(
        one_line(&e)
            .contains("the library's id is `scripted` but the manifest says `not-scripted`"),
        "{e}"
    );
}

#[test]
fn duplicate_ids_are_refused_and_one_bad_plugin_never_stops_the_others() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    scripted("scripted").write(dir.path(), "1-scripted.toml");
    scripted("scripted").write(dir.path(), "2-scripted-again.toml");
    std::fs::write(dir.path().join("3-broken.toml"), "this is = = not toml").unwrap();
    ManifestSpec::named("missing", "nope")
        .kind("tool", &["sync"])
        .write(dir.path(), "4-missing.toml");
    ManifestSpec::at("abort-plugin", &a.abort_plugin)
        .kind("tool", &["sync"])
        .write(dir.path(), "5-abort.toml");
    ManifestSpec::named("text-tools", "text_tools")
        .kind("tool", &["sync", "async"])
        .write(dir.path(), "6-text-tools.toml");

    let registry = Registry::load_dirs(&[dir.path().to_owned()], &a.options());
    let mut loaded: Vec<&str> = registry.plugins().map(|p| p.id()).collect();
    loaded.sort();
    assert_eq!(loaded, ["scripted", "text-tools"]);
    assert_eq!(registry.refused().len(), 4);
    let dup = &registry.refused()[0];
    assert!(
        matches!(dup.error, LoadError::DuplicateId { .. }),
        "{}",
        dup.error
    );
    assert!(
        dup.error.to_string().contains("1-scripted.toml"),
        "{}",
        dup.error
    );
    let rows = registry.rows();
    assert_eq!(rows.iter().filter(|r| r.status == "refused").count(), 4);
}

#[test]
fn undeclared_modes_are_refused_by_the_host_without_calling_the_plugin() {
    let registry = first_party_registry();
    let tool = registry.get("text-tools").unwrap();
    let e = tool.new_driver(None).unwrap_err();
    assert!(e.to_string().contains("is not a prompt_driver"), "{e}");
    let e = registry
        .get("scripted")
        .unwrap()
        .new_driver(Some(&serde_json::json!({"chunk_chars": "lots"})))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(
        e.message.contains("chunk_chars") || e.message.contains("invalid type"),
        "{e}"
    );
}

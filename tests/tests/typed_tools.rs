//! A tool written on the typed layer (tests/plugins/units), loaded by the real loader from a
//! manifest that states only its id and library: derived schemas, dispatch by type, the mode
//! from the registration, structured results, and the host's checks, on both paths.

use std::sync::{Arc, Mutex};

use e2e::{artifacts, scripted};
use host::{EventBus, EventListener, PromptTask, Registry};
use plugin_api::wire::{EventKind, Message};
use serde_json::{Value, json};

fn registry() -> Registry {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("units.toml"),
        "id = \"units\"\n[library]\nname = \"units\"\n",
    )
    .unwrap();
    scripted("scripted").write(dir.path(), "scripted.toml");
    let r = Registry::load_dirs(&[dir.path().to_owned()], &a.options());
    assert!(r.refused().is_empty(), "{:?}", r.refused());
    r
}

#[test]
fn kinds_capabilities_version_and_description_come_from_the_library() {
    let r = registry();
    let p = r.get("units").unwrap();
    assert_eq!(p.kinds(), [host::manifest::Kind::Tool]);
    // Typed tools run on both paths, whatever their activities implement.
    assert_eq!(
        host::manifest::describe_capabilities(p.capabilities()),
        "tool[sync,async]"
    );
    assert_eq!(p.info().version, "0.1.0");
    assert!(
        p.info().description.starts_with("Converts lengths"),
        "{:?}",
        p.info()
    );
}

#[test]
fn the_schema_is_derived_from_the_input_types() {
    let r = registry();
    let tool = r.get("units").unwrap().new_tool(None).unwrap();
    let spec = tool.spec();
    let names: Vec<&str> = spec.activities.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["convert_length", "convert_temperature"]);
    let length = &spec.activities[0];
    assert_eq!(length.description, "Converts a length between units.");
    let p = &length.parameters;
    assert_eq!(p["type"], "object");
    assert_eq!(p["additionalProperties"], false);
    assert_eq!(p["properties"]["value"]["minimum"], 0.0);
    assert_eq!(
        p["properties"]["value"]["description"],
        "The length to convert"
    );
    let units = p["properties"]["from"]["enum"].as_array().unwrap();
    assert!(units.contains(&json!("kilometre")), "{p}");
    let mut required: Vec<&str> = p["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["from", "to", "value"]);
    assert!(
        p.get("$defs").is_none() && p.get("$schema").is_none(),
        "inlined: {p}"
    );
}

/// The results the model was sent, from the task's FinishActionsSubtaskEvent.
fn results_of(seen: &Mutex<Vec<Message>>) -> Vec<Message> {
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_calls_sync_and_async_activities_on_both_paths_with_structured_results() {
    let r = registry();
    let script = json!({"script": [
        {"tool_calls": [
            {"id": "a", "name": "Units_convert_length",
             "arguments": {"value": 5, "from": "kilometre", "to": "mile"}},
            {"id": "b", "name": "Units_convert_temperature",
             "arguments": {"value": 100, "from": "celsius", "to": "fahrenheit"}},
            {"id": "c", "name": "Units_convert_temperature",
             "arguments": {"value": -500, "from": "celsius", "to": "kelvin"}},
            {"id": "d", "name": "Units_convert_length",
             "arguments": {"value": 1, "from": "parsec", "to": "metre"}}
        ]},
        {"text": "done"}
    ]});
    for path in ["sync", "async"] {
        let driver = r
            .get("scripted")
            .unwrap()
            .new_driver(Some(&script))
            .unwrap();
        let tool = r.get("units").unwrap().new_tool(None).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bus = Arc::new(EventBus::new());
        let sink = Arc::clone(&seen);
        let _guard = bus.add_listener(EventListener::on_event("results", move |e| {
            if let EventKind::FinishActionsSubtask { results, .. } = &e.kind {
                sink.lock().unwrap().extend(results.iter().cloned());
            }
            Ok(None)
        }));
        let task = PromptTask::new(driver, "convert").tool(tool).event_bus(bus);
        let out = if path == "sync" {
            tokio::task::block_in_place(|| task.run())
        } else {
            task.async_run().await
        }
        .unwrap();
        assert_eq!(out.text, "done");
        let results = results_of(&seen);
        assert_eq!(results.len(), 4, "{path}: {results:?}");
        let miles = results[0].structured.as_ref().unwrap();
        assert!(
            (miles["value"].as_f64().unwrap() - 3.106_856).abs() < 1e-5,
            "{miles}"
        );
        assert_eq!(miles["unit"], "mile");
        assert_eq!(
            serde_json::from_str::<Value>(&results[0].content).unwrap(),
            *miles,
            "the model reads the same value as text"
        );
        // The async-only activity answers on the sync path too (driven to completion).
        assert_eq!(
            results[1].structured.as_ref().unwrap()["value"],
            212.0,
            "{path}"
        );
        assert!(results[2].is_error && results[2].content.contains("below absolute zero"));
        // An enum value the schema does not list never reaches the plugin: the host refuses it.
        assert!(results[3].is_error, "{:?}", results[3]);
        assert!(
            results[3]
                .content
                .contains("invalid arguments for `Units_convert_length`"),
            "{}",
            results[3].content
        );
    }
}

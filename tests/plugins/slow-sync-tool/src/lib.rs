//! A sync-only tool that sleeps (blocking its thread) and reports when it ran, so tests
//! can see whether calls overlapped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plugin_api::prelude::*;

/// The tool.
pub struct Slow;

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

impl Tool for Slow {
    type Config = NoConfig;
    const SYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Slow)
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec::new("SlowSync", "Sleeps").activity(
            "sleep",
            "Sleeps for `ms` milliseconds",
            serde_json::json!({"type": "object", "properties": {"ms": {"type": "integer", "minimum": 0}}, "required": ["ms"]}),
        )
    }

    fn call(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        let ms = call.input["ms"].as_u64().unwrap_or(0);
        let start = now_us();
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ToolOutput::ok(
            serde_json::json!({"start_us": start, "end_us": now_us()}).to_string(),
        ))
    }
}

plugin_api::export_plugin! {
    id: "slow-sync",
    tool: Slow,
}

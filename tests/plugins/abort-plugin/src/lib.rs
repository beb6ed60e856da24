//! A well-formed tool plugin that the test harness builds with `-C panic=abort`: the host must
//! refuse it before any of its code can run.

use plugin_api::prelude::*;

/// A tool that does nothing.
pub struct Nothing;

impl Tool for Nothing {
    type Config = NoConfig;
    const SYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Nothing)
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec::new("Nothing", "Does nothing").activity(
            "nothing",
            "Does nothing",
            serde_json::json!({"type": "object"}),
        )
    }

    fn call(&self, _: ToolInvocation) -> Result<ToolOutput, PluginError> {
        Ok(ToolOutput::ok(""))
    }
}

plugin_api::export_plugin! {
    id: "abort-plugin",
    tool: Nothing,
}

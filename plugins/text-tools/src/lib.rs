//! A small tool with three activities on text, sync and async.

use plugin_api::prelude::*;
use serde_json::json;

/// The tool.
pub struct TextTools;

fn text_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": { "text": { "type": "string", "description": "The text to work on" } },
        "required": ["text"],
        "additionalProperties": false
    })
}

impl TextTools {
    fn run(&self, call: &ToolInvocation) -> Result<ToolOutput, PluginError> {
        let Some(text) = call.input.get("text").and_then(|t| t.as_str()) else {
            return Ok(ToolOutput::error("`text` must be a string"));
        };
        Ok(match call.activity.as_str() {
            "word_count" => ToolOutput::ok(text.split_whitespace().count().to_string()),
            "reverse" => ToolOutput::ok(text.chars().rev().collect::<String>()),
            "uppercase" => ToolOutput::ok(text.to_uppercase()),
            other => ToolOutput::error(format!("unknown activity `{other}`")),
        })
    }
}

impl Tool for TextTools {
    type Config = NoConfig;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(TextTools)
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec::new("TextTools", "Simple operations on a piece of text")
            .activity("word_count", "Counts the words of a text", text_schema())
            .activity(
                "reverse",
                "Reverses a text character by character",
                text_schema(),
            )
            .activity("uppercase", "Returns the text in upper case", text_schema())
    }

    fn call(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        self.run(&call)
    }

    async fn call_async(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        self.run(&call)
    }
}

plugin_api::export_plugin! {
    id: "text-tools",
    description: "Word count, reverse and upper-case",
    tool: TextTools,
}

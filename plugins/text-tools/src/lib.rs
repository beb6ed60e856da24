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

#[cfg(test)]
mod tests {
    use plugin_api::serde_json::json;
    use plugin_api::testing;

    use super::TextTools;

    #[test]
    fn every_activity_on_both_entry_points() {
        let tool = testing::tool::<TextTools>(json!(null)).unwrap();
        let spec = tool.spec().unwrap();
        assert_eq!(spec.activities.len(), 3);
        let out = tool.call("word_count", json!({"text": "a b c"})).unwrap();
        assert_eq!((out.content.as_str(), out.is_error), ("3", false));
        let out = testing::block_on(tool.call_async("reverse", json!({"text": "abc"}))).unwrap();
        assert_eq!(out.content, "cba");
        let out = tool.call("uppercase", json!({"text": 5})).unwrap();
        assert!(
            out.is_error,
            "a bad input is a result for the model, not a failure"
        );
        let out = tool.call("nope", json!({"text": "x"})).unwrap();
        assert!(out.content.contains("unknown activity"));
    }
}

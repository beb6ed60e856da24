//! A small tool with three activities on text: the smallest example of typed activities.

use plugin_api::prelude::*;

/// The tool.
pub struct TextTools;

/// Counts the words of a text.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WordCount {
    /// The text to work on
    pub text: String,
}

impl Activity<TextTools> for WordCount {
    const NAME: &'static str = "word_count";
    type Output = String;

    fn run(self, _: &TextTools) -> Result<String, PluginError> {
        Ok(self.text.split_whitespace().count().to_string())
    }
}

/// Reverses a text character by character.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reverse {
    /// The text to work on
    pub text: String,
}

impl Activity<TextTools> for Reverse {
    const NAME: &'static str = "reverse";
    type Output = String;

    fn run(self, _: &TextTools) -> Result<String, PluginError> {
        Ok(self.text.chars().rev().collect())
    }
}

/// Returns the text in upper case.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Uppercase {
    /// The text to work on
    pub text: String,
}

impl Activity<TextTools> for Uppercase {
    const NAME: &'static str = "uppercase";
    type Output = String;

    fn run(self, _: &TextTools) -> Result<String, PluginError> {
        Ok(self.text.to_uppercase())
    }
}

impl TypedTool for TextTools {
    type Config = NoConfig;
    const NAME: &'static str = "TextTools";
    const DESCRIPTION: &'static str = "Simple operations on a piece of text";

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(TextTools)
    }

    fn activities(set: &mut Activities<Self>) {
        set.add::<WordCount>().add::<Reverse>().add::<Uppercase>();
    }
}

plugin_api::export_plugin! {
    tool: TextTools,
    id: "text-tools",
    description: "Word count, reverse and upper-case",
}

#[cfg(test)]
mod tests {
    use plugin_api::prelude::*;
    use plugin_api::testing;

    use super::TextTools;

    #[test]
    fn every_activity_on_both_entry_points() {
        let tool = testing::typed_tool::<TextTools>(json!(null)).unwrap();
        let spec = tool.spec().unwrap();
        assert_eq!(spec.activities.len(), 3);
        assert_eq!(
            spec.activities[0].description,
            "Counts the words of a text."
        );
        let out = tool.call("word_count", json!({"text": "a b c"})).unwrap();
        assert_eq!((out.content.as_str(), out.is_error), ("3", false));
        let out = testing::block_on(tool.call_async("reverse", json!({"text": "abc"}))).unwrap();
        assert_eq!(out.content, "cba");
    }

    #[test]
    fn the_harness_refuses_what_the_host_refuses() {
        let tool = testing::typed_tool::<TextTools>(json!(null)).unwrap();
        let e = tool.call("uppercase", json!({"text": 5})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(
            e.message
                .contains("invalid arguments for `uppercase`: at `/text`"),
            "{e}"
        );
        let e = tool.call("nope", json!({"text": "x"})).unwrap_err();
        assert!(e.message.contains("no activity `nope`"), "{e}");
        // Past the host's check, the SDK's own decoding still refuses it.
        let e = tool
            .call_unchecked("uppercase", json!({"text": 5}))
            .unwrap_err();
        assert!(e.message.contains("input of `uppercase`"), "{e}");
    }
}

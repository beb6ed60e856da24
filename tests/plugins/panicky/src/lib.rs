//! A plugin that panics on purpose, in every place a panic can happen: a sync call, inside a
//! future (after a real await on the plugin runtime), inside a stream, in a tool call and in a
//! listener. Some calls succeed, so tests can check the plugin keeps working after a panic.

use std::time::Duration;

use plugin_api::futures::{StreamExt, stream};
use plugin_api::prelude::*;
use serde_json::Value;

/// What to do, from the config.
pub struct Panicky {
    /// Panic only when the last user message is "panic"; answer otherwise.
    on_word: bool,
}

fn wants_panic(on_word: bool, request: &PromptRequest) -> bool {
    !on_word
        || request
            .messages
            .last()
            .is_some_and(|m| m.content == "panic")
}

fn config_flag(config: &Value) -> bool {
    config
        .get("on_word")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

impl PromptDriver for Panicky {
    type Config = Value;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Value) -> Result<Self, PluginError> {
        Ok(Panicky {
            on_word: config_flag(&config),
        })
    }

    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        plugin_api::tracing::info!(
            messages = request.messages.len(),
            "panicky got a sync prompt"
        );
        if wants_panic(self.on_word, &request) {
            panic!("sync prompt exploded");
        }
        Ok(PromptResponse::text("calm", Usage::default()))
    }

    async fn prompt_async(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        plugin_api::tokio::time::sleep(Duration::from_millis(5)).await;
        if wants_panic(self.on_word, &request) {
            panic!("future exploded after an await");
        }
        Ok(PromptResponse::text("calm", Usage::default()))
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let explode = wants_panic(self.on_word, &request);
        Ok(stream::iter(0..3)
            .then(move |i| async move {
                plugin_api::tokio::time::sleep(Duration::from_millis(1)).await;
                if explode && i == 1 {
                    panic!("stream exploded at item {i}");
                }
                Ok(StreamDelta::Text {
                    text: format!("chunk{i} "),
                })
            })
            .boxed())
    }
}

impl Tool for Panicky {
    type Config = Value;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(config: Value) -> Result<Self, PluginError> {
        Ok(Panicky {
            on_word: config_flag(&config),
        })
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec::new("Panicky", "Panics").activity(
            "boom",
            "Panics",
            serde_json::json!({"type": "object"}),
        )
    }

    fn call(&self, _: ToolInvocation) -> Result<ToolOutput, PluginError> {
        panic!("tool call exploded");
    }

    async fn call_async(&self, _: ToolInvocation) -> Result<ToolOutput, PluginError> {
        panic!("async tool call exploded");
    }
}

impl EventListenerDriver for Panicky {
    type Config = Value;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(config: Value) -> Result<Self, PluginError> {
        Ok(Panicky {
            on_word: config_flag(&config),
        })
    }

    fn publish(&self, _: Vec<Event>) -> Result<(), PluginError> {
        panic!("listener exploded");
    }

    async fn publish_async(&self, _: Vec<Event>) -> Result<(), PluginError> {
        panic!("async listener exploded");
    }
}

plugin_api::export_plugin! {
    id: "panicky",
    description: "Panics on purpose",
    driver: Panicky,
    tool: Panicky,
    listener: Panicky,
}

//! Frozen: a plugin written against plugin-api 1.0.0 (ABI generation 1). Never edit.

use std::sync::atomic::{AtomicU64, Ordering};

use plugin_api::futures::StreamExt;
use plugin_api::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Config {
    #[serde(default)]
    greeting: String,
}

pub struct Driver {
    greeting: String,
}

impl Driver {
    fn answer(&self, request: &PromptRequest) -> String {
        let last = request.messages.last().map(|m| m.content.as_str()).unwrap_or("");
        format!("{} {last}", self.greeting)
    }
}

impl PromptDriver for Driver {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        Ok(Driver { greeting: config.greeting })
    }

    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        Ok(PromptResponse::text(self.answer(&request), Usage { input_tokens: 1, output_tokens: 2 }))
    }

    async fn prompt_async(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        plugin_api::tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        self.prompt(request)
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let pieces: Vec<String> = self.answer(&request).split_inclusive(' ').map(str::to_owned).collect();
        Ok(plugin_api::futures::stream::iter(pieces)
            .map(|text| Ok(StreamDelta::Text { text }))
            .chain(plugin_api::futures::stream::iter([Ok(StreamDelta::Finish { reason: "stop".into() })]))
            .boxed())
    }
}

pub struct Counter;

impl Tool for Counter {
    type Config = NoConfig;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Counter)
    }

    fn spec(&self) -> ToolSpec {
        ToolSpec::new("Gen1", "A generation-1 tool").activity(
            "length",
            "Counts the characters of a text",
            serde_json::json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
        )
    }

    fn call(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        let text = call.input["text"].as_str().unwrap_or("");
        Ok(ToolOutput::ok(text.chars().count().to_string()))
    }

    async fn call_async(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        self.call(call)
    }
}

pub struct Listener {
    seen: AtomicU64,
}

impl EventListenerDriver for Listener {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(_: Config) -> Result<Self, PluginError> {
        Ok(Listener { seen: AtomicU64::new(0) })
    }

    fn publish(&self, events: Vec<Event>) -> Result<(), PluginError> {
        self.seen.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn publish_async(&self, events: Vec<Event>) -> Result<(), PluginError> {
        self.publish(events)
    }
}

plugin_api::export_plugin! {
    id: "gen1",
    description: "Built against plugin-api 1.0.0",
    driver: Driver,
    tool: Counter,
    listener: Listener,
}

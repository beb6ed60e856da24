//! The smallest useful driver and listener, for measuring what the plugin boundary costs: the
//! driver answers "ok" at once and streams `n` one-word text deltas (`n` from the last user
//! message); the listener drops what it gets.

use plugin_api::futures::{StreamExt, stream};
use plugin_api::prelude::*;

/// The driver.
pub struct Noop;

fn answer() -> PromptResponse {
    PromptResponse::text(
        "ok",
        Usage {
            input_tokens: 1,
            output_tokens: 1,
        },
    )
}

impl PromptDriver for Noop {
    type Config = NoConfig;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Noop)
    }

    fn prompt(&self, _: PromptRequest) -> Result<PromptResponse, PluginError> {
        Ok(answer())
    }

    async fn prompt_async(&self, _: PromptRequest) -> Result<PromptResponse, PluginError> {
        Ok(answer())
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let n: usize = request
            .messages
            .last()
            .and_then(|m| m.content.parse().ok())
            .unwrap_or(1);
        Ok(stream::iter((0..n).map(|_| Ok(StreamDelta::Text { text: "ok".into() }))).boxed())
    }
}

/// A listener driver that drops what it gets.
pub struct Sink;

impl EventListenerDriver for Sink {
    type Config = NoConfig;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Sink)
    }

    fn publish(&self, events: Vec<Event>) -> Result<(), PluginError> {
        std::hint::black_box(events);
        Ok(())
    }

    async fn publish_async(&self, events: Vec<Event>) -> Result<(), PluginError> {
        std::hint::black_box(events);
        Ok(())
    }
}

plugin_api::export_plugin! {
    id: "bench",
    driver: Noop,
    listener: Sink,
}

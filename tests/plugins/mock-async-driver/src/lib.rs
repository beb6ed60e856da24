//! An async-only scripted driver (the spec's `mock_async_prompt_driver`): async and stream,
//! no blocking call.

use plugin_api::prelude::*;
use scripted_core::{Config, Scripted};

/// Async and stream only.
pub struct MockAsync(Scripted);

impl PromptDriver for MockAsync {
    type Config = Config;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        Scripted::new(config).map(Self)
    }

    async fn prompt_async(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        self.0.prompt_async(request).await
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        self.0.stream(request)
    }
}

plugin_api::export_plugin! {
    id: "mock-async",
    description: "Async-only scripted driver",
    driver: MockAsync,
}

//! The `scripted` prompt driver plugin: answers from a script, or echoes, with sync, async and
//! stream modes. See [`scripted_core`] for the script format.

use plugin_api::prelude::*;
use scripted_core::{Config, Scripted};

/// The plugin's driver: every mode of [`Scripted`].
pub struct ScriptedDriver(Scripted);

impl PromptDriver for ScriptedDriver {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        Scripted::new(config).map(Self)
    }

    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        self.0.prompt(request)
    }

    async fn prompt_async(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        self.0.prompt_async(request).await
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        self.0.stream(request)
    }
}

plugin_api::export_plugin! {
    id: "scripted",
    description: "Answers from a script (or echoes): for tests, demos and benchmarks",
    driver: ScriptedDriver,
}

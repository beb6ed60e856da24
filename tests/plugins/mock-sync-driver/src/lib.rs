//! A sync-only scripted driver (the spec's sync mock): no async, no stream.

use plugin_api::prelude::*;
use scripted_core::{Config, Scripted};

/// Sync-only.
pub struct MockSync(Scripted);

impl PromptDriver for MockSync {
    type Config = Config;
    const SYNC: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        Scripted::new(config).map(Self)
    }

    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        self.0.prompt(request)
    }
}

plugin_api::export_plugin! {
    id: "mock-sync",
    description: "Sync-only scripted driver",
    driver: MockSync,
}

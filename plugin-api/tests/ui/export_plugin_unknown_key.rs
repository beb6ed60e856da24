// A misspelt key of export_plugin! is a compile error that names it and lists the keys.
use plugin_api::prelude::*;

struct Echo;

impl PromptDriver for Echo {
    type Config = NoConfig;
    const SYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Echo)
    }
}

plugin_api::export_plugin! {
    driver: Echo,
    descripton: "typo",
}

fn main() {}

// An activity registered as async (`add_async`) must implement `AsyncActivity`.
use plugin_api::prelude::*;

struct Units;

/// Converts metres to feet.
#[derive(Deserialize, JsonSchema)]
struct ToFeet {
    metres: f64,
}

impl Activity<Units> for ToFeet {
    const NAME: &'static str = "to_feet";
    type Output = String;

    fn run(self, _: &Units) -> Result<String, PluginError> {
        Ok((self.metres * 3.28084).to_string())
    }
}

impl TypedTool for Units {
    type Config = NoConfig;
    const NAME: &'static str = "Units";
    const DESCRIPTION: &'static str = "Units";

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Units)
    }

    fn activities(set: &mut Activities<Self>) {
        set.add_async::<ToFeet>();
    }
}

fn main() {}

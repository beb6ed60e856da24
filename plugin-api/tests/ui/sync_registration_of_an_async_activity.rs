// An activity registered for the sync path (`add`) must implement the sync `Activity`: one
// that only has an async body does not compile, instead of failing when a task calls it.
use plugin_api::prelude::*;

struct Weather;

/// Fetches the weather.
#[derive(Deserialize, JsonSchema)]
struct Fetch {
    city: String,
}

impl AsyncActivity<Weather> for Fetch {
    const NAME: &'static str = "fetch";
    type Output = String;

    async fn run(self, _: &Weather) -> Result<String, PluginError> {
        Ok(self.city)
    }
}

impl TypedTool for Weather {
    type Config = NoConfig;
    const NAME: &'static str = "Weather";
    const DESCRIPTION: &'static str = "Weather";

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Weather)
    }

    fn activities(set: &mut Activities<Self>) {
        set.add::<Fetch>();
    }
}

fn main() {}

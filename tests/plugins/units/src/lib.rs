//! A two-activity tool with typed inputs: the unit converter an author wrote by hand against
//! plugin-api 1.x (144 lines), on the typed layer. One async activity, to show the mode
//! follows from the registration.

use plugin_api::prelude::*;

/// The tool.
pub struct Units;

/// A unit of length.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    Millimetre,
    Metre,
    Kilometre,
    Inch,
    Foot,
    Mile,
}

impl Length {
    fn metres(self) -> f64 {
        match self {
            Length::Millimetre => 0.001,
            Length::Metre => 1.0,
            Length::Kilometre => 1000.0,
            Length::Inch => 0.0254,
            Length::Foot => 0.3048,
            Length::Mile => 1609.344,
        }
    }
}

/// A temperature scale.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    Celsius,
    Fahrenheit,
    Kelvin,
}

/// A converted value, for the model and for programs.
#[derive(Debug, Serialize)]
pub struct Converted {
    pub value: f64,
    pub unit: String,
}

/// Converts a length between units.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvertLength {
    /// The length to convert
    #[schemars(range(min = 0.0))]
    pub value: f64,
    pub from: Length,
    pub to: Length,
}

impl Activity<Units> for ConvertLength {
    const NAME: &'static str = "convert_length";
    type Output = Json<Converted>;

    fn run(self, _: &Units) -> Result<Json<Converted>, PluginError> {
        let value = self.value * self.from.metres() / self.to.metres();
        Ok(Json(Converted {
            value,
            unit: format!("{:?}", self.to).to_lowercase(),
        }))
    }
}

/// Converts a temperature between scales.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvertTemperature {
    /// The temperature to convert
    pub value: f64,
    pub from: Scale,
    pub to: Scale,
}

impl AsyncActivity<Units> for ConvertTemperature {
    const NAME: &'static str = "convert_temperature";
    type Output = Json<Converted>;

    async fn run(self, _: &Units) -> Result<Json<Converted>, PluginError> {
        let kelvin = match self.from {
            Scale::Celsius => self.value + 273.15,
            Scale::Fahrenheit => (self.value - 32.0) * 5.0 / 9.0 + 273.15,
            Scale::Kelvin => self.value,
        };
        if kelvin < 0.0 {
            return Err(PluginError::invalid_input("below absolute zero"));
        }
        let value = match self.to {
            Scale::Celsius => kelvin - 273.15,
            Scale::Fahrenheit => (kelvin - 273.15) * 9.0 / 5.0 + 32.0,
            Scale::Kelvin => kelvin,
        };
        Ok(Json(Converted {
            value,
            unit: format!("{:?}", self.to).to_lowercase(),
        }))
    }
}

impl TypedTool for Units {
    type Config = NoConfig;
    const NAME: &'static str = "Units";
    const DESCRIPTION: &'static str = "Converts lengths and temperatures exactly";

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Units)
    }

    fn activities(set: &mut Activities<Self>) {
        set.add::<ConvertLength>().add_async::<ConvertTemperature>();
    }
}

plugin_api::export_plugin! { tool: Units }

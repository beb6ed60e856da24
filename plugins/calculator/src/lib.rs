//! The Calculator tool: evaluates one arithmetic expression with a recursive-descent parser.
//!
//! Numbers (`42`, `3.14`, `1e-3`), `+ - * / % // **`, unary minus and plus, parentheses,
//! comparisons (`== != < <= > >=`, giving `true`/`false`), functions and constants (see
//! [`FUNCTIONS`] and [`CONSTANTS`]). Precedence follows Python: `**` binds tighter than unary
//! minus on its left (`-2**2 == -4`) and is right-associative.
//!
//! Errors say what and where (`unexpected ')' at column 7`, `division by zero at column 3`).
//! Limits keep every input cheap: at most [`MAX_LEN`] characters and [`MAX_DEPTH`] levels of
//! nesting; results that overflow are errors, not infinities.

mod eval;

pub use eval::{CONSTANTS, FUNCTIONS, MAX_DEPTH, MAX_LEN, evaluate};

use plugin_api::prelude::*;

/// The tool.
pub struct Calculator;

/// Evaluates one arithmetic expression. Operators: + - * / // % ** (power), unary minus,
/// parentheses, comparisons == != < <= > >=. Functions: sqrt, abs, round, floor, ceil, trunc,
/// min, max, exp, ln, log, log10, log2, sin, cos, tan, asin, acos, atan, atan2, hypot, pow.
/// Constants: pi, e, tau. Numbers may be integers, decimals or scientific (1e-3).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Calculate {
    /// e.g. "(2 + 3) * sqrt(16) / 2"
    #[schemars(length(min = 1, max = MAX_LEN))]
    pub expression: String,
}

impl Activity<Calculator> for Calculate {
    const NAME: &'static str = "calculate";
    type Output = ToolOutput;

    fn run(self, _: &Calculator) -> Result<ToolOutput, PluginError> {
        // A bad expression is the model's to fix: an error result, not a tool failure.
        Ok(match evaluate(&self.expression) {
            Ok(v) => ToolOutput::ok(v.to_string()),
            Err(e) => ToolOutput::error(e.to_string()),
        })
    }
}

impl TypedTool for Calculator {
    type Config = NoConfig;
    const NAME: &'static str = "Calculator";
    const DESCRIPTION: &'static str =
        "Evaluates arithmetic exactly; use it for any calculation instead of doing it in your head";

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Calculator)
    }

    fn activities(set: &mut Activities<Self>) {
        set.add::<Calculate>();
    }
}

plugin_api::export_plugin! {
    tool: Calculator,
    description: "Evaluates arithmetic expressions with a real parser",
}

#[cfg(test)]
mod tests {
    use plugin_api::testing;

    use super::*;

    #[test]
    fn the_description_names_every_function_and_constant() {
        let tool = testing::typed_tool::<Calculator>(json!(null)).unwrap();
        let spec = tool.spec().unwrap();
        let description = &spec.activities[0].description;
        for name in FUNCTIONS
            .iter()
            .map(|f| f.0)
            .chain(CONSTANTS.iter().map(|c| c.0))
        {
            assert!(
                description.contains(name),
                "`{name}` is missing from {description}"
            );
        }
    }

    #[test]
    fn the_schema_and_the_host_check_bound_the_expression() {
        let tool = testing::typed_tool::<Calculator>(json!(null)).unwrap();
        let params = &tool.spec().unwrap().activities[0].parameters;
        assert_eq!(params["properties"]["expression"]["maxLength"], MAX_LEN);
        assert_eq!(params["additionalProperties"], false);
        let too_long = "1+".repeat(MAX_LEN);
        let e = tool
            .call("calculate", json!({"expression": too_long}))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
        let e = tool.call("calculate", json!({"expr": "1"})).unwrap_err();
        assert!(e.message.contains("expression"), "{e}");
    }

    #[test]
    fn both_paths_answer_and_a_bad_expression_is_an_error_result() {
        let tool = testing::typed_tool::<Calculator>(json!(null)).unwrap();
        assert_eq!(
            tool.call("calculate", json!({"expression": "2**10"}))
                .unwrap()
                .content,
            "1024"
        );
        let out = testing::block_on(tool.call_async("calculate", json!({"expression": "1/0"})));
        let out = out.unwrap();
        assert!(
            out.is_error && out.content.contains("division by zero"),
            "{out:?}"
        );
    }
}

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
use serde_json::json;

/// The tool.
pub struct Calculator;

impl Calculator {
    fn run(&self, call: &ToolInvocation) -> ToolOutput {
        if call.activity != "calculate" {
            return ToolOutput::error(format!(
                "unknown activity `{}`; the only one is `calculate`",
                call.activity
            ));
        }
        let Some(expr) = call.input.get("expression").and_then(|e| e.as_str()) else {
            return ToolOutput::error("`expression` must be a string");
        };
        match evaluate(expr) {
            Ok(v) => ToolOutput::ok(v.to_string()),
            Err(e) => ToolOutput::error(e.to_string()),
        }
    }
}

impl Tool for Calculator {
    type Config = NoConfig;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(_: NoConfig) -> Result<Self, PluginError> {
        Ok(Calculator)
    }

    fn spec(&self) -> ToolSpec {
        let functions: Vec<&str> = FUNCTIONS.iter().map(|(name, _)| *name).collect();
        let constants: Vec<&str> = CONSTANTS.iter().map(|(name, _)| *name).collect();
        ToolSpec::new(
            "Calculator",
            "Evaluates arithmetic exactly; use it for any calculation instead of doing it in your head",
        )
        .activity(
            "calculate",
            format!(
                "Evaluates one arithmetic expression. Operators: + - * / // % ** (power), unary minus, \
                 parentheses, comparisons == != < <= > >=. Functions: {}. Constants: {}. \
                 Numbers may be integers, decimals or scientific (1e-3).",
                functions.join(", "),
                constants.join(", ")
            ),
            json!({
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "e.g. \"(2 + 3) * sqrt(16) / 2\"",
                        "minLength": 1,
                        "maxLength": MAX_LEN
                    }
                },
                "required": ["expression"],
                "additionalProperties": false
            }),
        )
    }

    fn call(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        Ok(self.run(&call))
    }

    async fn call_async(&self, call: ToolInvocation) -> Result<ToolOutput, PluginError> {
        Ok(self.run(&call))
    }
}

plugin_api::export_plugin! {
    id: "calculator",
    description: "Evaluates arithmetic expressions with a real parser",
    tool: Calculator,
}

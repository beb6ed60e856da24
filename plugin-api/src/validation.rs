//! The check of a tool call's arguments against its activity's JSON Schema (feature
//! `validation`). The host runs it before it calls a tool; the [`testing`](crate::testing)
//! harness runs the same code, so a plugin's tests see what the host would send.

use serde_json::Value;

/// A compiled activity schema.
pub type Validator = jsonschema::Validator;

/// Compiles an activity's input schema.
///
/// # Errors
/// The schema is not a valid JSON Schema; the message says why.
pub fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
}

/// Checks `arguments` for `function`; the error is the message the model is sent.
///
/// # Errors
/// Every violation, each with its JSON pointer.
pub fn check_arguments(
    validator: &Validator,
    function: &str,
    arguments: &Value,
) -> Result<(), String> {
    let errors: Vec<String> = validator
        .iter_errors(arguments)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "invalid arguments for `{function}`: {}",
            errors.join("; ")
        ))
    }
}

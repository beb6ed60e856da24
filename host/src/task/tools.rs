//! Tool dispatch: the functions a task offers the model (`<Tool>_<activity>`), each call
//! checked (a known function, JSON arguments, the activity's schema) before a tool sees it, and
//! run in the path's mode, bridged by capability (see [`crate::bridge`]). Whatever goes wrong
//! goes back to the model as an error result, and the loop goes on.

use std::collections::HashMap;
use std::sync::Arc;

use plugin_api::wire::{FunctionSpec, Message, ToolCall, ToolInvocation, ToolOutput, WIRE_VERSION};
use serde_json::Value;

use super::{ActionsSubtask, TaskError};
use tracing::Instrument;

use crate::bridge::{on_async_path, on_sync_path};
use crate::error::CallError;
use crate::manifest::{Kind, Mode};
use crate::plugin::ToolHandle;
use crate::telemetry::genai;

/// One function on offer: which tool, which activity, the schema its arguments must satisfy.
struct Function {
    tool: usize,
    activity: String,
    validator: Arc<jsonschema::Validator>,
}

/// A task's tools and the functions they offer, built once per task.
pub(crate) struct ToolSet {
    tools: Vec<ToolHandle>,
    functions: HashMap<String, Function>,
    specs: Vec<FunctionSpec>,
}

impl ToolSet {
    /// The functions of `tools`, in tool then activity order.
    ///
    /// # Errors
    /// [`TaskError::Tool`] when two tools offer the same function name.
    pub(crate) fn new(tools: &[ToolHandle]) -> Result<Self, TaskError> {
        let mut functions = HashMap::new();
        let mut specs = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            let spec = tool.spec();
            for a in &spec.activities {
                let name = format!("{}_{}", spec.name, a.name);
                let Some(validator) = tool.validator(&a.name) else {
                    continue; // every activity has one, compiled when the tool was made
                };
                let f = Function {
                    tool: i,
                    activity: a.name.clone(),
                    validator: Arc::clone(validator),
                };
                if functions.insert(name.clone(), f).is_some() {
                    return Err(TaskError::Tool {
                        tool: tool.plugin().id().to_owned(),
                        message: format!("two tools offer the function `{name}`"),
                    });
                }
                specs.push(FunctionSpec {
                    name,
                    description: a.description.clone(),
                    parameters: a.parameters.clone(),
                });
            }
        }
        Ok(Self {
            tools: tools.to_vec(),
            functions,
            specs,
        })
    }

    /// What the model is offered.
    pub(crate) fn specs(&self) -> &[FunctionSpec] {
        &self.specs
    }

    /// Runs the calls one after the other (the sync path); results in call order.
    pub(crate) fn run_sync(&self, subtask: &ActionsSubtask) -> Vec<Message> {
        subtask
            .calls
            .iter()
            .map(|call| {
                let span = self.span(call);
                let _in = span.enter();
                let (msg, error) = match self.check(call) {
                    Err(refused) => refused,
                    Ok((i, inv)) => {
                        let tool = &self.tools[i];
                        let sync = tool.plugin().can(Kind::Tool, Mode::Sync);
                        tool_message(
                            call,
                            on_sync_path(sync, || tool.call(&inv), || tool.call_async(&inv)),
                        )
                    }
                };
                genai::finish_tool(&span, &msg, error);
                msg
            })
            .collect()
    }

    /// The call's tool and invocation, or the message refusing it and its `error.type`.
    #[allow(clippy::result_large_err)] // the refusal is the message sent back, made once per call
    fn check(
        &self,
        call: &ToolCall,
    ) -> Result<(usize, ToolInvocation), (Message, Option<&'static str>)> {
        check_call(&self.functions, call).map_err(|msg| {
            let kind = if self.functions.contains_key(&call.name) {
                "invalid_arguments"
            } else {
                "unknown_tool"
            };
            (msg, Some(kind))
        })
    }

    /// The `execute_tool` span of `call` (disabled while telemetry is off).
    fn span(&self, call: &ToolCall) -> tracing::Span {
        if !crate::telemetry::enabled() {
            return tracing::Span::none();
        }
        let tool = self
            .functions
            .get(&call.name)
            .map(|f| self.tools[f.tool].plugin());
        genai::tool_span(call, tool)
    }

    /// Runs the calls concurrently (the async path); results in call order.
    pub(crate) async fn run_async(&self, subtask: &ActionsSubtask) -> Vec<Message> {
        futures::future::join_all(subtask.calls.iter().map(|call| self.call_async(call))).await
    }

    /// Runs one call on the async path (a task's, or an MCP client's through `grip mcp
    /// serve`): checked, then run in the tool's mode. Dropping the future cancels the call.
    pub(crate) async fn call_async(&self, call: &ToolCall) -> Message {
        let span = self.span(call);
        let (msg, error) = match self.check(call) {
            Err(refused) => refused,
            Ok((i, inv)) => {
                let tool = self.tools[i].clone();
                let has_async = tool.plugin().can(Kind::Tool, Mode::Async);
                let (t, i) = (tool.clone(), inv.clone());
                let out = on_async_path(has_async, || tool.call_async(&inv), move || t.call(&i))
                    .instrument(span.clone())
                    .await;
                tool_message(call, out)
            }
        };
        genai::finish_tool(&span, &msg, error);
        msg
    }
}

/// An error result for `call`, sent back to the model.
pub(crate) fn error_result(call: &ToolCall, message: String) -> Message {
    Message::tool_result(call.id.clone(), message, true)
}

/// Resolves a call to its tool and checks its arguments; an error is the tool message to send
/// back to the model.
fn check_call(
    functions: &HashMap<String, Function>,
    call: &ToolCall,
) -> Result<(usize, ToolInvocation), Message> {
    let Some(f) = functions.get(&call.name) else {
        let mut known: Vec<&str> = functions.keys().map(String::as_str).collect();
        known.sort_unstable();
        let message = if known.is_empty() {
            format!(
                "unknown tool `{}`: this task offers no tools; answer without them",
                call.name
            )
        } else {
            format!(
                "unknown tool `{}`; the tools on offer: {}",
                call.name,
                known.join(", ")
            )
        };
        return Err(error_result(call, message));
    };
    // A driver passes arguments that are not JSON on as a JSON string.
    if let Value::String(raw) = &call.arguments
        && let Err(e) = serde_json::from_str::<Value>(raw)
    {
        return Err(error_result(
            call,
            format!(
                "the arguments for `{}` are not valid JSON ({e}); send a JSON object",
                call.name
            ),
        ));
    }
    if let Err(message) =
        plugin_api::validation::check_arguments(&f.validator, &call.name, &call.arguments)
    {
        return Err(error_result(call, message));
    }
    Ok((
        f.tool,
        ToolInvocation {
            schema_version: WIRE_VERSION,
            activity: f.activity.clone(),
            input: call.arguments.clone(),
            call_id: call.id.clone(),
        },
    ))
}

/// The message for the model, and the span's `error.type` when the call failed.
fn tool_message(
    call: &ToolCall,
    out: Result<ToolOutput, CallError>,
) -> (Message, Option<&'static str>) {
    match out {
        Ok(o) => {
            let error = o.is_error.then_some("tool_error");
            (Message::from_tool_output(call.id.clone(), o), error)
        }
        Err(e) => (
            error_result(call, e.to_string()),
            Some(genai::call_error_type(&e)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn functions() -> HashMap<String, Function> {
        let schema = json!({"type": "object", "properties": {"text": {"type": "string"}},
                            "required": ["text"]});
        let validator = Arc::new(jsonschema::validator_for(&schema).unwrap());
        ["T_count", "T_upper"]
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let f = Function {
                    tool: i,
                    activity: name[2..].to_owned(),
                    validator: Arc::clone(&validator),
                };
                (name.to_owned(), f)
            })
            .collect()
    }

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "c1".into(),
            name: name.into(),
            arguments,
        }
    }

    fn refused(name: &str, arguments: Value, fs: &HashMap<String, Function>) -> String {
        let m = check_call(fs, &call(name, arguments)).unwrap_err();
        assert!(m.is_error);
        assert_eq!(m.tool_call_id.as_deref(), Some("c1"));
        m.content
    }

    #[test]
    fn a_good_call_becomes_an_invocation_of_its_tool_and_activity() {
        let (tool, inv) = check_call(&functions(), &call("T_upper", json!({"text": "a"}))).unwrap();
        assert_eq!(
            (tool, inv.activity.as_str(), inv.call_id.as_str()),
            (1, "upper", "c1")
        );
        assert_eq!(inv.input, json!({"text": "a"}));
    }

    #[test]
    fn unknown_tools_list_what_is_on_offer() {
        let fs = functions();
        assert_eq!(
            refused("T_nope", json!({}), &fs),
            "unknown tool `T_nope`; the tools on offer: T_count, T_upper"
        );
        assert_eq!(
            refused("T_nope", json!({}), &HashMap::new()),
            "unknown tool `T_nope`: this task offers no tools; answer without them"
        );
    }

    #[test]
    fn arguments_that_are_not_json_or_fail_the_schema_go_back_to_the_model() {
        let fs = functions();
        let text = refused("T_count", Value::String("{\"text\":".into()), &fs);
        assert!(
            text.starts_with("the arguments for `T_count` are not valid JSON"),
            "{text}"
        );
        let text = refused("T_count", json!({"text": 3}), &fs);
        assert!(
            text.starts_with("invalid arguments for `T_count`: at `/text`"),
            "{text}"
        );
        let text = refused("T_count", json!({}), &fs);
        assert!(text.contains("\"text\" is a required property"), "{text}");
    }
}

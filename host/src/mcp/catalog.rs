//! The one translation between MCP and grip: a server's tools to a [`ToolSpec`] (and back, for
//! `grip mcp serve`), a `tools/call` result to a [`ToolOutput`] (and back).

use std::collections::HashMap;
use std::sync::Arc;

use plugin_api::wire::{Activity, ToolOutput, ToolSpec, WIRE_VERSION};
use rmcp::model::{CallToolResult, ContentBlock, Tool};
use serde_json::Value;

use super::McpSettings;

/// The longest function name the model APIs take (OpenAI: `^[a-zA-Z0-9_-]{1,64}$`).
const MAX_FUNCTION_NAME: usize = 64;

/// Whether `s` can be a tool name: a short function-name-safe word.
pub fn is_function_name(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `my-time` -> `MyTime`: the tool name a manifest id gives when `tool_name` is not set.
pub fn tool_name_from_id(id: &str) -> String {
    let mut name = String::new();
    for part in id.split(['-', '_', '.']).filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.push(first.to_ascii_uppercase());
            name.extend(chars);
        }
    }
    name.truncate(40);
    if name.is_empty() { "Mcp".into() } else { name }
}

/// An MCP tool name as an activity name: characters a function name cannot hold become `_`.
fn activity_name(mcp_name: &str) -> String {
    mcp_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A server's tools as grip sees them: the spec offered to tasks, and which MCP tool each
/// activity calls.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The tool's spec (activities in the server's order).
    pub spec: Arc<ToolSpec>,
    /// Activity name -> the server's tool name.
    pub mcp_names: HashMap<String, String>,
    /// Why some of the server's tools are not offered (one line each).
    pub left_out: Vec<String>,
}

impl Catalog {
    /// The catalog of `tools` under `settings`: the allowlist, then the cap, each activity's
    /// function name checked, each schema compiled (a tool whose schema does not compile is
    /// left out, not the whole server).
    pub fn new(settings: &McpSettings, description: String, tools: &[Tool]) -> Self {
        let mut activities = Vec::new();
        let mut mcp_names = HashMap::new();
        let mut left_out = Vec::new();
        if let Some(allow) = &settings.allow {
            for name in allow {
                if !tools.iter().any(|t| t.name == name.as_str()) {
                    left_out.push(format!(
                        "`{name}` is allowed but the server has no such tool"
                    ));
                }
            }
        }
        for tool in tools {
            let name = tool.name.as_ref();
            if settings
                .allow
                .as_ref()
                .is_some_and(|a| !a.iter().any(|n| n == name))
            {
                continue;
            }
            if activities.len() == settings.max_tools {
                left_out.push(format!(
                    "`{name}`: over `max_tools` ({})",
                    settings.max_tools
                ));
                continue;
            }
            let activity = activity_name(name);
            if settings.tool_name.len() + 1 + activity.len() > MAX_FUNCTION_NAME {
                left_out.push(format!(
                    "`{name}`: `{}_{activity}` is longer than {MAX_FUNCTION_NAME} characters",
                    settings.tool_name
                ));
                continue;
            }
            if mcp_names.contains_key(&activity) {
                left_out.push(format!("`{name}`: its name `{activity}` is another tool's"));
                continue;
            }
            let parameters = Value::Object((*tool.input_schema).clone());
            if let Err(e) = jsonschema::validator_for(&parameters) {
                left_out.push(format!(
                    "`{name}`: its input schema is not valid JSON Schema ({e})"
                ));
                continue;
            }
            let description = tool
                .description
                .as_deref()
                .or(tool.title.as_deref())
                .unwrap_or_default()
                .to_owned();
            mcp_names.insert(activity.clone(), name.to_owned());
            activities.push(Activity {
                name: activity,
                description,
                parameters,
            });
        }
        Self {
            spec: Arc::new(ToolSpec {
                schema_version: WIRE_VERSION,
                name: settings.tool_name.clone(),
                description,
                activities,
            }),
            mcp_names,
            left_out,
        }
    }
}

/// A `tools/call` result as a tool output: the text blocks joined, other blocks described, the
/// structured content kept (and used as the text when there is no text).
pub fn to_output(result: CallToolResult) -> ToolOutput {
    let mut parts: Vec<String> = result.content.iter().map(describe_block).collect();
    parts.retain(|p| !p.is_empty());
    let mut content = parts.join("\n");
    if content.is_empty()
        && let Some(s) = &result.structured_content
    {
        content = s.to_string();
    }
    ToolOutput {
        schema_version: WIRE_VERSION,
        content,
        is_error: result.is_error.unwrap_or(false),
        structured: result.structured_content,
    }
}

/// One content block as text for the model.
fn describe_block(block: &ContentBlock) -> String {
    if let Some(t) = block.as_text() {
        return t.text.clone();
    }
    // The other kinds read through their wire JSON, which the protocol fixes.
    let v = serde_json::to_value(block).unwrap_or(Value::Null);
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    match v.get("type").and_then(Value::as_str) {
        Some("image" | "audio") => format!(
            "[{} content, {}, {} bytes of base64]",
            field("type"),
            field("mimeType"),
            v.get("data").and_then(Value::as_str).map_or(0, str::len)
        ),
        Some("resource") => {
            let r = v.get("resource").cloned().unwrap_or(Value::Null);
            match r.get("text").and_then(Value::as_str) {
                Some(text) => text.to_owned(),
                None => format!(
                    "[resource {}]",
                    r.get("uri").and_then(Value::as_str).unwrap_or("?")
                ),
            }
        }
        Some("resource_link") => format!("[resource link {}]", field("uri")),
        _ => v.to_string(),
    }
}

/// A grip activity as an MCP tool named `function` (for `grip mcp serve`).
pub fn to_mcp_tool(function: &str, activity: &Activity) -> Tool {
    let schema = match &activity.parameters {
        Value::Object(o) => o.clone(),
        // MCP requires an object schema; an activity without one takes any object.
        _ => serde_json::Map::from_iter([("type".to_owned(), Value::from("object"))]),
    };
    Tool::new(
        function.to_owned(),
        activity.description.clone(),
        Arc::new(schema),
    )
}

/// A tool output as a `tools/call` result.
pub fn to_mcp_result(output: ToolOutput) -> CallToolResult {
    let content = vec![ContentBlock::text(output.content)];
    let mut result = if output.is_error {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    };
    result.structured_content = output.structured;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::Transport;
    use serde_json::json;

    fn settings(allow: Option<Vec<&str>>, max_tools: usize) -> McpSettings {
        McpSettings {
            transport: Transport::Http {
                url: "http://x".into(),
                headers: Default::default(),
            },
            allow: allow.map(|a| a.into_iter().map(str::to_owned).collect()),
            max_tools,
            tool_name: "Srv".into(),
            init_timeout: std::time::Duration::from_secs(1),
            call_timeout: std::time::Duration::from_secs(1),
        }
    }

    fn tool(name: &str, schema: Value) -> Tool {
        let Value::Object(o) = schema else { panic!() };
        Tool::new(name.to_owned(), format!("does {name}"), Arc::new(o))
    }

    #[test]
    fn ids_become_tool_names() {
        assert_eq!(tool_name_from_id("my-time"), "MyTime");
        assert_eq!(tool_name_from_id("everything"), "Everything");
        assert_eq!(tool_name_from_id("a.b_c"), "ABC");
    }

    #[test]
    fn the_allowlist_the_cap_names_and_schemas_decide_what_is_offered() {
        let obj = json!({"type": "object"});
        let tools = [
            tool("get.time", obj.clone()),
            tool("get/time", obj.clone()),
            tool("bad", json!({"type": 7})),
            tool("echo", obj.clone()),
            tool(&"x".repeat(70), obj.clone()),
        ];
        let c = Catalog::new(&settings(None, 64), "d".into(), &tools);
        let names: Vec<&str> = c.spec.activities.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["get_time", "echo"]);
        assert_eq!(c.mcp_names["get_time"], "get.time");
        assert_eq!(c.left_out.len(), 3, "{:?}", c.left_out);
        let c = Catalog::new(
            &settings(Some(vec!["echo", "nope"]), 64),
            "d".into(),
            &tools,
        );
        assert_eq!(c.spec.activities.len(), 1);
        assert!(
            c.left_out[0].contains("`nope` is allowed"),
            "{:?}",
            c.left_out
        );
        let c = Catalog::new(&settings(None, 1), "d".into(), &tools);
        assert_eq!(c.spec.activities.len(), 1);
        assert!(c.left_out.iter().any(|l| l.contains("max_tools")));
    }

    #[test]
    fn results_keep_text_structure_and_errors() {
        let mut r = CallToolResult::error(vec![ContentBlock::text("a"), ContentBlock::text("b")]);
        r.structured_content = Some(json!({"n": 1}));
        let o = to_output(r);
        assert_eq!((o.content.as_str(), o.is_error), ("a\nb", true));
        assert_eq!(o.structured, Some(json!({"n": 1})));
        let mut r = CallToolResult::success(vec![]);
        r.structured_content = Some(json!({"n": 2}));
        assert_eq!(to_output(r).content, "{\"n\":2}");
        let back = to_mcp_result(ToolOutput::ok("x"));
        assert_eq!(back.is_error, Some(false));
    }
}

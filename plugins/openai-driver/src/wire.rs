//! The OpenAI chat-completions wire format: request bodies, responses and stream chunks.

use std::collections::BTreeMap;

use plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Config;

fn message(m: &Message) -> Value {
    match m.role {
        Role::System => json!({"role": "system", "content": m.content}),
        Role::User => json!({"role": "user", "content": m.content}),
        Role::Assistant => {
            let mut v = json!({"role": "assistant", "content": m.content});
            if !m.tool_calls.is_empty() {
                if m.content.is_empty() {
                    v["content"] = Value::Null;
                }
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let arguments = match &c.arguments {
                            Value::String(raw) => raw.clone(),
                            other => other.to_string(),
                        };
                        json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}})
                    })
                    .collect();
            }
            v
        }
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.clone().unwrap_or_default(),
            "content": m.content,
        }),
    }
}

/// The request body for `request`.
pub fn request_body(config: &Config, request: &PromptRequest, stream: bool) -> Value {
    let mut body = json!({
        "model": config.model,
        "messages": request.messages.iter().map(message).collect::<Vec<_>>(),
    });
    if let Some(t) = config.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = config.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|f| json!({"type": "function", "function": {"name": f.name, "description": f.description, "parameters": f.parameters}}))
            .collect();
        if let Some(choice) = &config.tool_choice {
            body["tool_choice"] = choice.clone();
        }
        if let Some(p) = config.parallel_tool_calls {
            body["parallel_tool_calls"] = json!(p);
        }
    }
    if let (Some(schema), true) = (&request.output_schema, config.structured_output) {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": false}
        });
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    for (k, v) in &config.extra_body {
        body[k] = v.clone();
    }
    body
}

#[derive(Debug, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<OaUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<OaMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OaMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<OaToolCall>,
}

#[derive(Debug, Deserialize)]
struct OaToolCall {
    #[serde(default)]
    id: String,
    function: OaFunction,
}

#[derive(Debug, Deserialize)]
struct OaFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct OaUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<OaUsage> for Usage {
    fn from(u: OaUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

/// Tool-call arguments: JSON if they parse, else the raw text as a JSON string.
fn arguments(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// Converts a complete response.
///
/// # Errors
/// A response with no choice.
pub fn into_response(resp: ChatResponse, url: &str) -> Result<PromptResponse, PluginError> {
    let choice = resp
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| PluginError::upstream(format!("response from {url} has no choices")))?;
    let m = choice.message.ok_or_else(|| {
        PluginError::upstream(format!(
            "response from {url} has a choice without a message"
        ))
    })?;
    let mut message = Message::assistant(m.content.unwrap_or_default());
    let mut finish_reason = choice.finish_reason;
    if let Some(refusal) = m.refusal {
        message.content = refusal;
        finish_reason = Some("refusal".into());
    }
    message.tool_calls = m
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: if c.id.is_empty() {
                format!("call_{i}")
            } else {
                c.id
            },
            name: c.function.name,
            arguments: arguments(&c.function.arguments),
        })
        .collect();
    Ok(PromptResponse {
        schema_version: plugin_api::wire::WIRE_VERSION,
        message,
        usage: resp.usage.map(Usage::from).unwrap_or_default(),
        finish_reason,
    })
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<OaUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ChunkToolCall>,
}

#[derive(Debug, Deserialize)]
struct ChunkToolCall {
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<ChunkFunction>,
}

#[derive(Debug, Deserialize)]
struct ChunkFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Tracks a stream so that its end can be judged: `[DONE]` seen, tool calls still open.
#[derive(Default)]
pub struct StreamState {
    done: bool,
    finished: bool,
    tool_names: BTreeMap<u32, String>,
}

impl driver_http::SseDecoder for StreamState {
    fn on_event(
        &mut self,
        event: &driver_http::SseEvent,
        url: &str,
    ) -> Result<Vec<StreamDelta>, PluginError> {
        let data = event.data.as_str();
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            PluginError::upstream(format!(
                "malformed stream chunk from {url} ({e}): {}",
                driver_http::snippet(data, 200)
            ))
        })?;
        if let Some(err) = chunk.error {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| err.to_string());
            return Err(PluginError::upstream(format!(
                "error in the stream from {url}: {msg}"
            )));
        }
        let mut out = Vec::new();
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push(StreamDelta::Text { text });
                }
                if let Some(text) = delta.refusal.filter(|t| !t.is_empty()) {
                    out.push(StreamDelta::Text { text });
                }
                for c in delta.tool_calls {
                    let (name, args) = match c.function {
                        Some(f) => (f.name, f.arguments.unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    if let Some(n) = &name {
                        self.tool_names.insert(c.index, n.clone());
                    }
                    out.push(StreamDelta::ToolCall {
                        index: c.index,
                        id: c.id,
                        name,
                        arguments: args,
                    });
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                out.push(StreamDelta::Finish { reason });
            }
        }
        if let Some(u) = chunk.usage {
            out.push(StreamDelta::Usage { usage: u.into() });
        }
        Ok(out)
    }

    fn done(&self) -> bool {
        self.done
    }

    fn truncated(&self, url: &str) -> PluginError {
        let mut e = match (self.finished, self.tool_names.iter().next_back()) {
            (false, Some((i, name))) => PluginError::upstream(format!(
                "the stream from {url} ended in the middle of tool call #{i} (`{name}`), without [DONE]"
            )),
            _ => PluginError::upstream(format!("the stream from {url} ended without [DONE]")),
        };
        e.retryable = false;
        e
    }
}

//! The Messages API wire format: request bodies, responses and the SSE event sequence.

use std::collections::BTreeMap;

use plugin_api::prelude::*;
use plugin_api::wire::finish_reason;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Config;

/// # Errors
/// A `tool_choice` the API would refuse.
pub fn check_tool_choice(choice: Option<&Value>) -> Result<(), PluginError> {
    match choice {
        None => Ok(()),
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "any" | "none") => Ok(()),
        Some(Value::Object(o)) if o.get("type").is_some_and(Value::is_string) => Ok(()),
        Some(other) => Err(PluginError::config(format!(
            "`tool_choice` must be \"auto\", \"any\", \"none\" or a table with a `type`, got {other}"
        ))),
    }
}

/// The forced tool that carries a structured answer.
#[derive(Debug, Clone)]
pub struct OutputTool {
    name: String,
    /// The schema was not an object, so the tool's input is `{"value": <answer>}`.
    wrapped: bool,
}

impl OutputTool {
    /// The answer's text from the tool's input.
    fn answer(&self, input: &Value) -> String {
        let value = if self.wrapped {
            input.get("value").unwrap_or(&Value::Null)
        } else {
            input
        };
        value.to_string()
    }
}

/// A request body and what is needed to read its answer.
pub struct Plan {
    pub body: Value,
    output: Option<OutputTool>,
}

/// Builds the turns: consecutive blocks of one side go into one message.
#[derive(Default)]
struct Turns(Vec<(&'static str, Vec<Value>)>);

impl Turns {
    fn push(&mut self, role: &'static str, block: Value) {
        match self.0.last_mut() {
            Some((r, blocks)) if *r == role => blocks.push(block),
            _ => self.0.push((role, vec![block])),
        }
    }

    fn into_json(self) -> Value {
        self.0
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect()
    }
}

/// A tool call's input as the API wants it: an object. Arguments a model sent as unparseable
/// text (kept as a JSON string by the drivers) are parsed if they can be, else wrapped.
fn tool_input(arguments: &Value) -> Value {
    match arguments {
        Value::Object(_) => arguments.clone(),
        Value::String(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({"value": raw}),
        },
        Value::Null => json!({}),
        other => json!({"value": other}),
    }
}

fn tool_choice(choice: &Value) -> Value {
    match choice {
        Value::String(s) => json!({"type": s}),
        other => other.clone(),
    }
}

impl Plan {
    /// The request body for `request`.
    pub fn new(config: &Config, request: &PromptRequest, stream: bool) -> Self {
        let mut system = Vec::new();
        let mut turns = Turns::default();
        for m in &request.messages {
            match m.role {
                Role::System => {
                    if !m.content.is_empty() {
                        system.push(m.content.as_str());
                    }
                }
                Role::User => {
                    if !m.content.is_empty() {
                        turns.push("user", json!({"type": "text", "text": m.content}));
                    }
                }
                Role::Assistant => {
                    // The API refuses empty text blocks.
                    if !m.content.is_empty() {
                        turns.push("assistant", json!({"type": "text", "text": m.content}));
                    }
                    for c in &m.tool_calls {
                        turns.push(
                            "assistant",
                            json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}),
                        );
                    }
                }
                Role::Tool => {
                    let mut block = json!({
                        "type": "tool_result",
                        "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                        "content": m.content,
                    });
                    if m.is_error {
                        block["is_error"] = json!(true);
                    }
                    turns.push("user", block);
                }
            }
        }
        let mut body = json!({
            "model": config.model,
            "max_tokens": config.max_tokens,
            "messages": turns.into_json(),
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if let Some(t) = config.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = config.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(k) = config.top_k {
            body["top_k"] = json!(k);
        }
        if !config.stop_sequences.is_empty() {
            body["stop_sequences"] = json!(config.stop_sequences);
        }
        let mut tools: Vec<Value> = request
            .tools
            .iter()
            .map(|f| json!({"name": f.name, "description": f.description, "input_schema": f.parameters}))
            .collect();
        let mut choice = config.tool_choice.as_ref().map(tool_choice);
        let output = match (&request.output_schema, config.structured_output) {
            (Some(schema), true) => {
                let wrapped = schema.get("type").and_then(Value::as_str) != Some("object");
                let input_schema = if wrapped {
                    json!({"type": "object", "properties": {"value": schema}, "required": ["value"]})
                } else {
                    schema.clone()
                };
                tools.push(json!({
                    "name": config.output_tool,
                    "description": "Give your final answer by calling this tool: its input is the answer.",
                    "input_schema": input_schema,
                }));
                // With no other tool the answer tool is forced; with others the model must call
                // some tool each turn, and ends by calling the answer tool.
                choice = Some(if request.tools.is_empty() {
                    json!({"type": "tool", "name": config.output_tool})
                } else {
                    json!({"type": "any"})
                });
                Some(OutputTool {
                    name: config.output_tool.clone(),
                    wrapped,
                })
            }
            _ => None,
        };
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
            if let Some(p) = config.parallel_tool_calls {
                let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
                if c["type"] != "none" {
                    c["disable_parallel_tool_use"] = json!(!p);
                }
            }
            if let Some(c) = choice {
                body["tool_choice"] = c;
            }
        }
        if stream {
            body["stream"] = json!(true);
        }
        for (k, v) in &config.extra_body {
            body[k] = v.clone();
        }
        Plan { body, output }
    }

    /// Converts a complete response.
    ///
    /// # Errors
    /// A response without `content` (missing or null): a server that answered `{}` gave no
    /// answer, and an empty 200 answer would hide that.
    pub fn into_response(
        self,
        resp: MessagesResponse,
        url: &str,
    ) -> Result<PromptResponse, PluginError> {
        let Some(content) = resp.content else {
            return Err(PluginError::upstream(format!(
                "response from {url} has no `content`"
            )));
        };
        let mut message = Message::assistant(String::new());
        let mut answer = None;
        for block in content {
            match block {
                Block::Text { text } => message.content.push_str(&text),
                Block::ToolUse { id, name, input } => match &self.output {
                    Some(out) if out.name == name => answer = Some(out.answer(&input)),
                    _ => message.tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments: input,
                    }),
                },
                Block::Other => {}
            }
        }
        let mut reason = resp.stop_reason.as_deref().map(stop_reason);
        // The answer tool is how the model finishes: unless it also asked for real tools, its
        // input is the answer and the turn is over.
        if let (Some(text), true) = (answer, message.tool_calls.is_empty()) {
            message.content = text;
            reason = Some(finish_reason::STOP.to_owned());
        }
        Ok(PromptResponse {
            schema_version: plugin_api::wire::WIRE_VERSION,
            message,
            usage: resp.usage.map(|u| u.totals()).unwrap_or_default(),
            finish_reason: reason,
            id: driver_http::nonempty_str(resp.id),
            model: driver_http::nonempty_str(resp.model),
        })
    }

    /// A stream decoder for this request's answer.
    pub fn decoder(&self) -> StreamDecoder {
        StreamDecoder {
            output: self.output.clone(),
            ..StreamDecoder::default()
        }
    }
}

/// The shared name of an Anthropic stop reason.
fn stop_reason(reason: &str) -> String {
    match reason {
        "end_turn" | "stop_sequence" => finish_reason::STOP,
        "max_tokens" | "model_context_window_exceeded" => finish_reason::LENGTH,
        "tool_use" => finish_reason::TOOL_CALLS,
        "refusal" => finish_reason::REFUSAL,
        other => other,
    }
    .to_owned()
}

#[derive(Debug, Deserialize)]
pub struct MessagesResponse {
    #[serde(default)]
    content: Option<Vec<Block>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnUsage>,
    /// Only for telemetry: whatever type a server sends here must not fail the answer.
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default, deserialize_with = "driver_http::null_as_default")]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default, deserialize_with = "driver_http::null_as_default")]
        input: Value,
    },
    /// Thinking, server tools, citations ...: not part of the shared message.
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct AnUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl AnUsage {
    /// Input tokens including cache writes and reads (the API counts those apart), if given.
    fn input(&self) -> Option<u64> {
        let parts = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        parts
            .iter()
            .any(Option::is_some)
            .then(|| parts.iter().flatten().sum())
    }

    fn totals(self) -> Usage {
        Usage {
            input_tokens: self.input().unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
        }
    }
}

/// What an open content block is.
#[derive(Clone)]
enum OpenBlock {
    Text,
    /// A tool call, with its position among the answer's calls.
    Tool {
        ordinal: u32,
        name: String,
    },
    /// The answer tool; a wrapped answer is buffered until the block ends.
    Answer {
        buffer: String,
    },
    /// Thinking and other blocks the shared message has no place for.
    Ignored,
}

/// Decodes the SSE event sequence: `message_start`, `content_block_start` / `_delta` / `_stop`,
/// `message_delta`, `message_stop`, with `ping` and `error` anywhere.
#[derive(Default, Clone)]
pub struct StreamDecoder {
    output: Option<OutputTool>,
    open: BTreeMap<u64, OpenBlock>,
    tool_calls: u32,
    answered: bool,
    stopped: bool,
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Deserialize)]
struct StreamEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default)]
    content_block: Option<Value>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    usage: Option<AnUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<AnUsage>,
}

fn str_field<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or_default()
}

impl StreamDecoder {
    fn usage(&self) -> StreamDelta {
        StreamDelta::Usage {
            usage: Usage {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
            },
        }
    }

    fn index(ev: &StreamEvent, url: &str) -> Result<u64, PluginError> {
        ev.index.ok_or_else(|| {
            PluginError::upstream(format!("`{}` event from {url} has no index", ev.kind))
        })
    }
}

impl driver_http::SseDecoder for StreamDecoder {
    fn on_event(
        &mut self,
        event: &driver_http::SseEvent,
        url: &str,
    ) -> Result<Vec<StreamDelta>, PluginError> {
        let ev: StreamEvent = serde_json::from_str(&event.data).map_err(|e| {
            PluginError::upstream(format!(
                "malformed stream event from {url} ({e}): {}",
                driver_http::snippet(&event.data, 200)
            ))
        })?;
        let mut out = Vec::new();
        match ev.kind.as_str() {
            "message_start" => {
                if let Some(u) = ev.message.and_then(|m| m.usage) {
                    self.input_tokens = u.input().unwrap_or(0);
                    self.output_tokens = u.output_tokens.unwrap_or(0);
                    out.push(self.usage());
                }
            }
            "content_block_start" => {
                let index = Self::index(&ev, url)?;
                let block = ev.content_block.unwrap_or_default();
                let open = match str_field(&block, "type") {
                    "text" => {
                        let text = str_field(&block, "text");
                        if !text.is_empty() {
                            out.push(StreamDelta::Text { text: text.into() });
                        }
                        OpenBlock::Text
                    }
                    "tool_use" => {
                        let name = str_field(&block, "name").to_owned();
                        if self.output.as_ref().is_some_and(|o| o.name == name) {
                            self.answered = true;
                            OpenBlock::Answer {
                                buffer: String::new(),
                            }
                        } else {
                            let ordinal = self.tool_calls;
                            self.tool_calls += 1;
                            out.push(StreamDelta::ToolCall {
                                index: ordinal,
                                id: Some(str_field(&block, "id").to_owned()),
                                name: Some(name.clone()),
                                arguments: String::new(),
                            });
                            OpenBlock::Tool { ordinal, name }
                        }
                    }
                    _ => OpenBlock::Ignored,
                };
                self.open.insert(index, open);
            }
            "content_block_delta" => {
                let index = Self::index(&ev, url)?;
                let delta = ev.delta.unwrap_or_default();
                let wrapped = self.output.as_ref().is_some_and(|o| o.wrapped);
                let Some(block) = self.open.get_mut(&index) else {
                    return Err(PluginError::upstream(format!(
                        "the stream from {url} sent a delta for content block #{index}, which is not open"
                    )));
                };
                match (block, str_field(&delta, "type")) {
                    (OpenBlock::Text, "text_delta") => {
                        let text = str_field(&delta, "text");
                        if !text.is_empty() {
                            out.push(StreamDelta::Text { text: text.into() });
                        }
                    }
                    (OpenBlock::Tool { ordinal, .. }, "input_json_delta") => {
                        out.push(StreamDelta::ToolCall {
                            index: *ordinal,
                            id: None,
                            name: None,
                            arguments: str_field(&delta, "partial_json").into(),
                        });
                    }
                    (OpenBlock::Answer { buffer }, "input_json_delta") => {
                        let part = str_field(&delta, "partial_json");
                        if wrapped {
                            buffer.push_str(part);
                        } else if !part.is_empty() {
                            // The answer is the tool's input: its JSON text streams as text.
                            out.push(StreamDelta::Text { text: part.into() });
                        }
                    }
                    // Thinking, signatures, citations: nothing the shared stream carries.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = Self::index(&ev, url)?;
                if let Some(OpenBlock::Answer { buffer }) = self.open.remove(&index)
                    && let Some(out_tool) = self.output.as_ref().filter(|o| o.wrapped)
                {
                    let input: Value = serde_json::from_str(&buffer).map_err(|e| {
                        PluginError::upstream(format!(
                            "the structured answer from {url} is not JSON ({e}): {}",
                            driver_http::snippet(&buffer, 200)
                        ))
                    })?;
                    out.push(StreamDelta::Text {
                        text: out_tool.answer(&input),
                    });
                }
            }
            "message_delta" => {
                if let Some(reason) = ev
                    .delta
                    .as_ref()
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    let reason = if reason == "tool_use" && self.answered && self.tool_calls == 0 {
                        finish_reason::STOP.to_owned()
                    } else {
                        stop_reason(reason)
                    };
                    out.push(StreamDelta::Finish { reason });
                }
                if let Some(u) = ev.usage {
                    // Counts here are cumulative; input tokens only appear in newer versions.
                    if let Some(input) = u.input() {
                        self.input_tokens = input;
                    }
                    if let Some(output) = u.output_tokens {
                        self.output_tokens = output;
                    }
                    out.push(self.usage());
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let err = ev.error.unwrap_or_default();
                let kind = str_field(&err, "type");
                let mut e = PluginError::upstream(format!(
                    "error in the stream from {url}: {}: {}",
                    if kind.is_empty() { "error" } else { kind },
                    str_field(&err, "message")
                ));
                if kind == "overloaded_error" {
                    e.kind = ErrorKind::Upstream;
                    e.retryable = true;
                } else if kind == "rate_limit_error" {
                    e.kind = ErrorKind::RateLimited;
                    e.retryable = true;
                }
                return Err(e);
            }
            // `ping`, and event types added after this driver was written.
            _ => {}
        }
        Ok(out)
    }

    fn done(&self) -> bool {
        self.stopped
    }

    fn truncated(&self, url: &str) -> PluginError {
        let open_tool = self.open.values().find_map(|b| match b {
            OpenBlock::Tool { ordinal, name } => Some((*ordinal, name.as_str())),
            _ => None,
        });
        // A cut stream is worth another attempt: the driver restarts it within the budget.
        match open_tool {
            Some((i, name)) => PluginError::upstream(format!(
                "the stream from {url} ended in the middle of tool call #{i} (`{name}`), without message_stop"
            )),
            None => {
                PluginError::upstream(format!("the stream from {url} ended without message_stop"))
            }
        }
        .retryable()
    }
}

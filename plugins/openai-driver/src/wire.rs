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
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<OaUsage>,
    /// Only for telemetry: whatever type a server sends here must not fail the answer.
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
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
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
    tool_calls: Vec<OaToolCall>,
}

#[derive(Debug, Deserialize)]
struct OaToolCall {
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
    id: String,
    function: OaFunction,
}

#[derive(Debug, Deserialize)]
struct OaFunction {
    name: String,
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
    arguments: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct OaUsage {
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
    prompt_tokens: u64,
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
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
    if m.content.is_none() && m.tool_calls.is_empty() && m.refusal.is_none() {
        return Err(PluginError::upstream(format!(
            "response from {url} has a message with no content, tool calls or refusal"
        )));
    }
    let mut message = Message::assistant(m.content.unwrap_or_default());
    let mut finish_reason = choice.finish_reason.filter(|r| !r.is_empty());
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
        id: driver_http::nonempty_str(resp.id),
        model: driver_http::nonempty_str(resp.model),
    })
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
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
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
    tool_calls: Vec<ChunkToolCall>,
}

#[derive(Debug, Deserialize)]
struct ChunkToolCall {
    /// Some servers leave it out (or send null) when there is one call.
    #[serde(default, deserialize_with = "driver_http::null_as_default")]
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
#[derive(Default, Clone)]
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
                    // Servers send "" for an absent name or id in continuation deltas.
                    let (name, args) = match c.function {
                        Some(f) => (
                            f.name.filter(|n| !n.is_empty()),
                            f.arguments.unwrap_or_default(),
                        ),
                        None => (None, String::new()),
                    };
                    if let Some(n) = &name {
                        self.tool_names.insert(c.index, n.clone());
                    }
                    out.push(StreamDelta::ToolCall {
                        index: c.index,
                        id: c.id.filter(|i| !i.is_empty()),
                        name,
                        arguments: args,
                    });
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
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
        // A cut stream is worth another attempt: the driver restarts it within the budget.
        e.retryable = true;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driver_http::SseDecoder;

    fn text_answer() -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "system_fingerprint": "fp", "service_tier": "default",
            "choices": [{
                "index": 0, "logprobs": null, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Paris.", "refusal": null,
                            "tool_calls": [], "annotations": [], "audio": null, "function_call": null}
            }],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                      "prompt_tokens_details": {"cached_tokens": 0}}
        })
    }

    fn tool_answer() -> Value {
        json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{
                "index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "refusal": null,
                            "tool_calls": [{"id": "call_a", "type": "function",
                                            "function": {"name": "T_f", "arguments": "{\"x\":1}"}}]}
            }],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}
        })
    }

    /// The answer, as the host sees it (message and finish reason; usage may differ).
    fn answer(v: &Value) -> Result<(Message, Option<String>), String> {
        let parsed: ChatResponse = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let r = into_response(parsed, "http://upstream").map_err(|e| e.message)?;
        Ok((r.message, r.finish_reason))
    }

    /// Sets the value at `path` (object keys, or array indices) to null, or removes it.
    fn edit(v: &Value, path: &[&str], remove: bool) -> Value {
        let mut out = v.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut cur = &mut out;
        for p in parents {
            cur = match p.parse::<usize>() {
                Ok(i) => &mut cur[i],
                Err(_) => &mut cur[*p],
            };
        }
        if let Value::Object(m) = cur {
            if remove {
                m.remove(*last);
            } else {
                m.insert((*last).to_owned(), Value::Null);
            }
        }
        out
    }

    /// Every optional field, null or missing, gives the same answer; unknown fields are ignored.
    #[test]
    fn optional_fields_null_or_missing_give_the_same_answer() {
        let optional: &[&[&str]] = &[
            &["id"],
            &["object"],
            &["created"],
            &["model"],
            &["system_fingerprint"],
            &["service_tier"],
            &["usage"],
            &["usage", "prompt_tokens"],
            &["usage", "completion_tokens"],
            &["usage", "total_tokens"],
            &["choices", "0", "index"],
            &["choices", "0", "logprobs"],
            &["choices", "0", "message", "role"],
            &["choices", "0", "message", "refusal"],
            &["choices", "0", "message", "tool_calls"],
            &["choices", "0", "message", "annotations"],
            &["choices", "0", "message", "audio"],
            &["choices", "0", "message", "function_call"],
        ];
        for base in [text_answer(), tool_answer()] {
            let want = answer(&base).unwrap();
            for path in optional {
                if path.last() == Some(&"tool_calls") && !want.0.tool_calls.is_empty() {
                    continue; // not optional in an answer that is tool calls
                }
                for remove in [false, true] {
                    let v = edit(&base, path, remove);
                    assert_eq!(answer(&v), Ok(want.clone()), "{path:?} remove={remove}");
                }
            }
            let mut extra = base.clone();
            extra["new_top_level"] = json!({"a": 1});
            extra["choices"][0]["message"]["reasoning_content"] = json!("thoughts");
            extra["choices"][0]["new_field"] = json!([1, 2]);
            assert_eq!(answer(&extra), Ok(want.clone()));
        }
        // In a tool-call answer, the content may be null or missing, and the call's type too.
        let want = answer(&tool_answer()).unwrap();
        for path in [
            &["choices", "0", "message", "content"][..],
            &["choices", "0", "message", "tool_calls", "0", "type"],
        ] {
            for remove in [false, true] {
                assert_eq!(
                    answer(&edit(&tool_answer(), path, remove)),
                    Ok(want.clone())
                );
            }
        }
    }

    #[test]
    fn a_reply_with_no_usable_content_is_an_error() {
        for v in [
            json!({}),
            json!({"choices": null}),
            json!({"choices": []}),
            json!({"choices": [{"message": null}]}),
            json!({"choices": [{"message": {"content": null, "tool_calls": null}}]}),
        ] {
            let e = answer(&v).unwrap_err();
            assert!(e.contains("http://upstream"), "{v} -> {e}");
        }
        // An empty string is an answer (the model said nothing), not a broken reply.
        let v = json!({"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]});
        assert_eq!(answer(&v).unwrap().0.content, "");
    }

    #[test]
    fn stream_chunks_with_nulls_and_empty_strings() {
        let mut s = StreamState::default();
        let ev = |data: Value| driver_http::SseEvent {
            event: String::new(),
            data: data.to_string(),
        };
        let deltas = |s: &mut StreamState, v: Value| s.on_event(&ev(v), "http://u").unwrap();
        let d = deltas(
            &mut s,
            json!({"choices": [{"index": 0, "logprobs": null, "finish_reason": null,
                   "delta": {"role": null, "content": "hi", "refusal": null, "tool_calls": null}}],
                   "usage": null, "error": null}),
        );
        assert!(
            matches!(&d[..], [StreamDelta::Text { text }] if text == "hi"),
            "{d:?}"
        );
        let d = deltas(
            &mut s,
            json!({"choices": [{"delta": {"tool_calls": [{"index": null, "id": "c1",
                   "function": {"name": "T_f", "arguments": "{"}}]}, "finish_reason": ""}]}),
        );
        assert!(
            matches!(&d[..], [StreamDelta::ToolCall { index: 0, id: Some(id), name: Some(n), .. }] if id == "c1" && n == "T_f"),
            "{d:?}"
        );
        let d = deltas(
            &mut s,
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "", "type": "",
                   "function": {"name": "", "arguments": "}"}}]}}]}),
        );
        assert!(
            matches!(&d[..], [StreamDelta::ToolCall { id: None, name: None, arguments, .. }] if arguments == "}"),
            "{d:?}"
        );
        let d = deltas(
            &mut s,
            json!({"choices": null, "usage": {"prompt_tokens": null, "completion_tokens": 3}}),
        );
        assert!(matches!(&d[..], [StreamDelta::Usage { .. }]), "{d:?}");
    }
}

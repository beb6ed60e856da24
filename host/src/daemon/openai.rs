//! The OpenAI-compatible front: `POST /v1/chat/completions`, `GET /v1/models` and
//! `GET /v1/models/{id}`, so that every client, SDK and UI that speaks the chat-completions wire
//! format can use grip's drivers, tools and listeners.
//!
//! A request becomes a [`TaskSpec`] like a `/v1/tasks` body and runs the same way (auth, limits,
//! timeouts, cancellation on disconnect, listeners, metrics). `model` names an agent of the
//! daemon config (`[agents.<name>]`: a driver with the operator's config, server tools, rules)
//! or a loaded prompt driver. The messages become the prompt stack. The request's `tools` are
//! **client tools**: offered to the model, and a call of one ends the task and is returned
//! (`finish_reason: "tool_calls"`) for the client to run; an agent's tools are **server tools**,
//! run by grip in the task's tool loop. A request does not mix the two.
//!
//! Sampling parameters (`temperature`, `top_p`, `max_tokens` / `max_completion_tokens`, `stop`,
//! `seed`) are passed to the driver as config overrides when the operator allows that key for
//! the driver (the same allowlist as `/v1/tasks`); the others, and every other parameter a
//! request sets, are dropped and named in the `x-grip-ignored-params` header.
//! `response_format` becomes the task's output schema.
//! Errors are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`) with the status
//! codes the SDKs' retry logic expects.

// A request's parsing fails with the response to send, built once per request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plugin_api::wire::{EventKind, FunctionSpec, Message, ToolCall, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::tasks::{self, Ended, Started};
use crate::manifest::Kind;
use crate::spec::{Policy, SpecError, SpecMessage, TaskSpec};
use crate::task::{StopReason, TaskError, TaskOutput};

/// An OpenAI-shaped error response.
fn error(
    status: StatusCode,
    message: impl Into<String>,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let kind = match status.as_u16() {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    };
    let body =
        json!({"error": {"message": message.into(), "type": kind, "param": param, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn invalid(message: impl Into<String>, param: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message, Some(param), None)
}

fn model_not_found(model: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "The model `{model}` does not exist: GET /v1/models lists the agents and drivers of this server"
        ),
        Some("model"),
        Some("model_not_found"),
    )
}

/// `null` as the default: clients send `"tools": null`, `"stream": null`, `"tool_calls": null`.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default, deserialize_with = "nullable")]
    tools: Vec<ChatTool>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    seed: Option<Value>,
    /// Accepted for the SDKs' sake; grip's own logs carry the task id instead.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    /// Every other parameter (`frequency_penalty`, `logit_bias`, ...): not passed on, and named
    /// in `x-grip-ignored-params` when set.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default, deserialize_with = "nullable")]
    tool_calls: Vec<ChatToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// A message's content: a string, or text parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatToolCall {
    id: String,
    function: ChatFunctionCall,
}

#[derive(Debug, Deserialize)]
struct ChatFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct ChatTool {
    #[serde(rename = "type")]
    kind: String,
    function: ChatFunction,
}

#[derive(Debug, Deserialize)]
struct ChatFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

fn text_of(content: Option<Content>, at: usize) -> Result<String, Response> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(invalid(
                        format!(
                            "messages[{at}]: content parts of type `{}` are not supported (text only)",
                            p.kind
                        ),
                        &format!("messages[{at}].content"),
                    ));
                }
                out.push_str(p.text.as_deref().unwrap_or_default());
            }
            Ok(out)
        }
    }
}

/// The messages as grip's prompt stack: the input (the last message, when the user's) and the
/// history before it.
fn prompt_stack(messages: Vec<ChatMessage>) -> Result<(String, Vec<SpecMessage>), Response> {
    if messages.is_empty() {
        return Err(invalid("`messages` must not be empty", "messages"));
    }
    let mut stack = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let text = text_of(m.content, i)?;
        let message = match m.role.as_str() {
            "system" | "developer" => Message::system(text),
            "user" => Message::user(text),
            "assistant" => {
                let mut a = Message::assistant(text);
                a.tool_calls = m
                    .tool_calls
                    .into_iter()
                    .map(|c| ToolCall {
                        id: c.id,
                        name: c.function.name,
                        // The model's JSON text; kept as a string when it is not JSON.
                        arguments: serde_json::from_str(&c.function.arguments)
                            .unwrap_or(Value::String(c.function.arguments)),
                    })
                    .collect();
                a
            }
            "tool" => {
                let Some(id) = m.tool_call_id else {
                    return Err(invalid(
                        format!("messages[{i}]: a `tool` message needs `tool_call_id`"),
                        &format!("messages[{i}].tool_call_id"),
                    ));
                };
                Message::tool_result(id, text, false)
            }
            other => {
                return Err(invalid(
                    format!("messages[{i}]: unknown role `{other}`"),
                    &format!("messages[{i}].role"),
                ));
            }
        };
        stack.push(message);
    }
    let last_is_user = stack
        .last()
        .is_some_and(|m| m.role == plugin_api::wire::Role::User);
    let input = match stack.pop() {
        Some(m) if last_is_user && !m.content.trim().is_empty() => m.content,
        Some(m) => {
            stack.push(m);
            String::new()
        }
        None => String::new(),
    };
    let stack = stack
        .into_iter()
        .map(|m| SpecMessage {
            role: m.role,
            content: m.content,
            tool_calls: m.tool_calls,
            tool_call_id: m.tool_call_id,
        })
        .collect();
    Ok((input, stack))
}

fn client_tools(tools: Vec<ChatTool>) -> Result<Vec<FunctionSpec>, Response> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind != "function" {
                return Err(invalid(
                    format!("tools[{i}]: only `function` tools are supported"),
                    &format!("tools[{i}].type"),
                ));
            }
            Ok(FunctionSpec {
                name: t.function.name,
                description: t.function.description.unwrap_or_default(),
                parameters: t
                    .function
                    .parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
        })
        .collect()
}

fn output_schema(format: Option<Value>) -> Result<Option<Value>, Response> {
    let Some(f) = format else { return Ok(None) };
    match f.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => match f.pointer("/json_schema/schema") {
            Some(s) if s.is_object() => Ok(Some(s.clone())),
            _ => Err(invalid(
                "response_format.json_schema.schema must be a JSON Schema object",
                "response_format",
            )),
        },
        Some(other) => Err(invalid(
            format!(
                "response_format type `{other}` is not supported (text, json_object, json_schema)"
            ),
            "response_format",
        )),
    }
}

/// The request's sampling parameters the operator lets requests set for `plugin`, as config
/// overrides, and the names of those dropped.
fn sampling_overrides(
    state: &AppState,
    plugin: &crate::plugin::Plugin,
    req: &ChatRequest,
) -> (Option<Value>, Vec<&'static str>) {
    let max_tokens = req
        .max_completion_tokens
        .as_ref()
        .or(req.max_tokens.as_ref());
    let given = [
        ("temperature", req.temperature.as_ref()),
        ("top_p", req.top_p.as_ref()),
        ("max_tokens", max_tokens),
        ("stop", req.stop.as_ref()),
        ("seed", req.seed.as_ref()),
    ];
    let allow = state.overridable(plugin).map(|(a, _)| a.to_vec());
    let mut config = serde_json::Map::new();
    let mut ignored = Vec::new();
    for (key, value) in given {
        let Some(v) = value.filter(|v| !v.is_null()) else {
            continue;
        };
        let single = json!({key: v});
        let allowed = match &allow {
            None => true,
            Some(a) => crate::overrides::refused_key(a, &single).is_none(),
        };
        if allowed {
            config.insert(key.to_owned(), v.clone());
        } else {
            ignored.push(key);
        }
    }
    (
        (!config.is_empty()).then_some(Value::Object(config)),
        ignored,
    )
}

/// What `model` names: an agent's spec, or a driver's.
fn spec_for_model(state: &AppState, model: &str) -> Option<TaskSpec> {
    if let Some(agent) = state.config.agents.get(model) {
        return Some(TaskSpec {
            driver: Some(agent.driver.clone()),
            tools: agent.tools.clone(),
            rules: agent.rules.clone(),
            operator_config: agent
                .config
                .as_ref()
                .and_then(|c| serde_json::to_value(c).ok()),
            ..TaskSpec::default()
        });
    }
    let p = state.registry.get(model)?;
    p.is(Kind::PromptDriver).then(|| TaskSpec {
        driver: Some(model.to_owned()),
        ..TaskSpec::default()
    })
}

/// A request made into a task spec, with what its response needs.
struct Prepared {
    spec: TaskSpec,
    /// Parameters dropped (not allowed for the driver).
    ignored: Vec<String>,
    /// The client asked for a stream.
    stream: bool,
    /// Text deltas may go out as they come: the run is one prompt (no server tools, no
    /// output-schema retries), so what streams is the answer.
    live: bool,
}

/// The request as a task spec.
fn to_spec(state: &AppState, req: ChatRequest) -> Result<Prepared, Response> {
    if req.n.is_some_and(|n| n != 1) {
        return Err(invalid(
            "`n` other than 1 is not supported: send one request per choice",
            "n",
        ));
    }
    let Some(mut spec) = spec_for_model(state, &req.model) else {
        return Err(model_not_found(&req.model));
    };
    let offer_client_tools = match req.tool_choice.as_ref() {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) if s == "auto" => true,
        Some(Value::String(s)) if s == "none" => false,
        Some(_) => {
            return Err(invalid(
                "tool_choice: only \"auto\" and \"none\" are supported (grip's drivers cannot force a call)",
                "tool_choice",
            ));
        }
    };
    if !offer_client_tools {
        // `none`: no tool at all this turn, the agent's server tools included.
        spec.tools.clear();
    }
    if !req.tools.is_empty() && !spec.tools.is_empty() {
        return Err(invalid(
            format!(
                "model `{}` is an agent with server tools; it takes no client `tools`",
                req.model
            ),
            "tools",
        ));
    }
    let driver = spec.driver.clone().unwrap_or_default();
    let (config, dropped) = match state.registry.get(&driver) {
        Some(p) => sampling_overrides(state, p, &req),
        None => (None, Vec::new()),
    };
    let mut ignored: Vec<String> = dropped.into_iter().map(str::to_owned).collect();
    ignored.extend(
        req.other
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k.clone()),
    );
    let (input, history) = prompt_stack(req.messages)?;
    // A driver that cannot stream still answers a streaming client: in one content chunk.
    let can_stream = state
        .registry
        .get(&driver)
        .is_some_and(|p| p.can(Kind::PromptDriver, crate::manifest::Mode::Stream));
    spec.config = config;
    spec.input = input;
    spec.messages = history;
    spec.stream = req.stream && can_stream;
    spec.output_schema = output_schema(req.response_format)?;
    if offer_client_tools {
        spec.client_tools = client_tools(req.tools)?;
    }
    let live = spec.stream && spec.tools.is_empty() && spec.output_schema.is_none();
    Ok(Prepared {
        spec,
        ignored,
        stream: req.stream,
        live,
    })
}

fn spec_error(state: &AppState, e: &SpecError) -> Response {
    let (status, _) = tasks::spec_error_status(state, e);
    let param = match e {
        SpecError::Invalid { field, .. } => Some(field.as_str()),
        SpecError::NotFound { field, .. } | SpecError::NotCapable { field, .. } => Some(*field),
        _ => None,
    };
    error(status, e.to_string(), param, None)
}

fn task_error(e: &TaskError, withhold: bool) -> Response {
    let (status, _) = tasks::task_error_status(e);
    error(status, tasks::task_error_message(e, withhold), None, None)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// A tool call in the wire format (arguments as JSON text).
fn tool_call_json(c: &ToolCall, index: Option<usize>) -> Value {
    let arguments = match &c.arguments {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut v = json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}});
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}

fn finish_reason(out: &TaskOutput) -> &str {
    if !out.tool_calls.is_empty() {
        return "tool_calls";
    }
    match out.finish_reason.as_deref() {
        Some(r @ ("length" | "content_filter")) => r,
        _ => "stop",
    }
}

/// The answer's content: the validated JSON itself when there is an output schema (the model's
/// text may have it in a fence), else the text.
fn content(out: &TaskOutput) -> String {
    match &out.json {
        Some(v) => v.to_string(),
        None => out.text.clone(),
    }
}

fn completion(id: &str, model: &str, out: &TaskOutput) -> Value {
    let mut message = json!({"role": "assistant", "content": content(out), "refusal": null});
    if !out.tool_calls.is_empty() {
        let calls: Vec<Value> = out
            .tool_calls
            .iter()
            .map(|c| tool_call_json(c, None))
            .collect();
        message["tool_calls"] = json!(calls);
        if out.text.is_empty() {
            message["content"] = Value::Null;
        }
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(out), "logprobs": null}],
        "usage": usage_json(out.usage),
        "system_fingerprint": null,
    })
}

fn with_headers(mut r: Response, started: (&str, &str), ignored: &[String]) -> Response {
    let h = r.headers_mut();
    h.insert(
        "x-grip-path",
        HeaderValue::from_str(started.1).unwrap_or(HeaderValue::from_static("?")),
    );
    if let Ok(v) = HeaderValue::from_str(started.0) {
        h.insert("x-grip-task-id", v);
    }
    if !ignored.is_empty()
        && let Ok(v) = HeaderValue::from_str(&ignored.join(","))
    {
        h.insert("x-grip-ignored-params", v);
    }
    r
}

pub(super) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                None,
                None,
            );
        }
        Err(e) => return invalid(e.body_text(), "body"),
    };
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid(format!("malformed request body: {e}"), "body"),
    };
    let model = req.model.clone();
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let Prepared {
        mut spec,
        ignored,
        stream,
        live,
    } = match to_spec(&state, req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    super::tasks::continue_trace(&mut spec, &headers);
    let Ok(permit) = Arc::clone(&state.task_permits).try_acquire_owned() else {
        // As `/v1/tasks` answers, in the OpenAI shape.
        state.metrics.outcome("rejected");
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "this server runs as many tasks at once as it may; retry later",
            None,
            Some("overloaded"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, tasks::RETRY_AFTER_SECS);
        return r;
    };
    let built = match tasks::build(&state, spec).await {
        Ok(b) => b,
        Err(e) => return spec_error(&state, &e),
    };
    let mut started = tasks::start(&state, built, permit, stream, tasks::Hooks::default());
    let id = format!("chatcmpl-{}", started.task_id);
    match started.relay.take() {
        Some(rx) => {
            let chunks = Chunks {
                id,
                model,
                created: now(),
                include_usage,
                live,
            };
            stream_response(started, rx, chunks, &ignored)
        }
        None => json_response(started, &id, &model, &ignored).await,
    }
}

async fn json_response(started: Started, id: &str, model: &str, ignored: &[String]) -> Response {
    let ended = started.join.await;
    drop(started.client);
    let r = match ended {
        Ok(Ended::Done(Ok(out))) => axum::Json(completion(id, model, &out)).into_response(),
        Ok(Ended::Done(Err(e))) => task_error(&e, started.withhold),
        Ok(Ended::Stopped(reason)) => task_error(&TaskError::Stopped(reason), started.withhold),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the task failed: {e}"),
            None,
            None,
        ),
    };
    with_headers(r, (&started.task_id, started.path), ignored)
}

/// `chat.completion.chunk` frames, ending with `data: [DONE]`.
struct Chunks {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    live: bool,
}

impl Chunks {
    fn frame(v: &Value) -> Bytes {
        Bytes::from(format!("data: {v}\n\n"))
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        Self::frame(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        }))
    }

    fn usage(&self, u: Usage) -> Bytes {
        Self::frame(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": null, "choices": [], "usage": usage_json(u),
        }))
    }

    /// An error mid-stream: the SDKs raise it as an API error.
    fn error(message: &str) -> Bytes {
        Self::frame(
            &json!({"error": {"message": message, "type": "api_error", "param": null, "code": null}}),
        )
    }
}

/// The task's answer as chunks. Live runs send text deltas as they come; others (server tools,
/// an output schema, a driver that cannot stream) send the final answer in one chunk, so the
/// client never gets a first turn's text or an answer that failed validation.
fn stream_response(
    started: Started,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<plugin_api::wire::Event>,
    chunks: Chunks,
    ignored: &[String],
) -> Response {
    let Started {
        task_id,
        path,
        withhold,
        join,
        client,
        ..
    } = started;
    let body = tasks::async_stream_body(move |tx| async move {
        let _client = client;
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(b)).await.is_ok() }
        };
        if !send(chunks.chunk(json!({"role": "assistant", "content": ""}), None)).await {
            return;
        }
        let mut sent_text = false;
        while let Some(event) = rx.recv().await {
            match &event.kind {
                EventKind::TextChunk { token } if chunks.live => {
                    sent_text = true;
                    if !send(chunks.chunk(json!({"content": token}), None)).await {
                        return;
                    }
                }
                // Text already sent cannot be taken back: a restarted stream voids the answer.
                EventKind::PromptRetry { .. } if sent_text => {
                    let _ = send(Chunks::error(
                        "the upstream stream was cut and restarted after text was sent; the text so far is void: retry the request",
                    ))
                    .await;
                    return;
                }
                EventKind::FinishTask { .. } => break,
                _ => {}
            }
        }
        let ended = join.await;
        let out = match ended {
            Ok(Ended::Done(Ok(out))) => out,
            Ok(Ended::Done(Err(e))) => {
                let _ = send(Chunks::error(&tasks::task_error_message(&e, withhold))).await;
                return;
            }
            Ok(Ended::Stopped(StopReason::ClientGone)) => return,
            Ok(Ended::Stopped(reason)) => {
                let e = TaskError::Stopped(reason);
                let _ = send(Chunks::error(&tasks::task_error_message(&e, withhold))).await;
                return;
            }
            Err(e) => {
                let _ = send(Chunks::error(&format!("the task failed: {e}"))).await;
                return;
            }
        };
        let text = content(&out);
        if !sent_text
            && !text.is_empty()
            && !send(chunks.chunk(json!({"content": text}), None)).await
        {
            return;
        }
        if !out.tool_calls.is_empty() {
            let calls: Vec<Value> = out
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| tool_call_json(c, Some(i)))
                .collect();
            if !send(chunks.chunk(json!({"tool_calls": calls}), None)).await {
                return;
            }
        }
        if !send(chunks.chunk(json!({}), Some(finish_reason(&out)))).await {
            return;
        }
        if chunks.include_usage && !send(chunks.usage(out.usage)).await {
            return;
        }
        let _ = send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let r = tasks::event_stream(body);
    with_headers(r, (&task_id, path), ignored)
}

fn model_json(id: &str, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by})
}

/// Every name `model` may take: the agents, then the loaded prompt drivers.
fn models(state: &AppState) -> Vec<Value> {
    let mut out: Vec<Value> = state
        .config
        .agents
        .keys()
        .map(|name| model_json(name, "grip-agent"))
        .collect();
    out.extend(
        state
            .registry
            .of_kind(Kind::PromptDriver)
            .filter(|p| !state.config.agents.contains_key(p.id()))
            .map(|p| model_json(p.id(), "grip-driver")),
    );
    out
}

pub(super) async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": models(&state)})).into_response()
}

pub(super) async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    match models(&state).into_iter().find(|m| m["id"] == id.as_str()) {
        Some(m) => axum::Json(m).into_response(),
        None => model_not_found(&id),
    }
}

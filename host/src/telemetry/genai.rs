//! The GenAI spans and metrics of a task, made by the host for every plugin:
//!
//! ```text
//! invoke_agent <driver>                  INTERNAL  one per run (run() or async_run())
//!   chat <model>                         CLIENT    one per prompt attempt: a restarted stream
//!                                                  ends one and starts the next (grip.attempt)
//!   execute_tool <Tool_activity>         INTERNAL  one per tool call, refused calls included
//! ```
//!
//! Metrics: `gen_ai.client.operation.duration` (s) per chat attempt and
//! `gen_ai.client.token.usage` ({token}, by `gen_ai.token.type`) per answer, with the
//! conventional attributes and bucket boundaries.
//!
//! Every function here returns at once when telemetry is off ([`super::enabled`]).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use opentelemetry::metrics::Histogram;
use opentelemetry::trace::Status;
use opentelemetry::{Array, KeyValue, StringValue, Value as OtelValue};
use plugin_api::wire::{EventKind, Message, PromptRequest, PromptResponse, Role, ToolCall, Usage};
use serde_json::{Value, json};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{TARGET, capture_content, enabled};
use crate::error::CallError;
use crate::plugin::Plugin;
use crate::task::{TaskError, TaskOutput};

/// What the spans say of a driver instance: from its manifest and its merged config, read
/// once when the instance is made (and only while telemetry is on).
#[derive(Debug, Clone, Default)]
pub struct DriverInfo {
    /// `grip.plugin.id`: the driver's plugin id.
    pub plugin: String,
    /// `gen_ai.provider.name`: the manifest's `provider`, else the plugin id.
    pub provider: String,
    /// `gen_ai.request.model`: the config's `model`, else the model file's name.
    pub model: Option<String>,
    /// `gen_ai.request.max_tokens`.
    pub max_tokens: Option<i64>,
    /// `gen_ai.request.temperature`.
    pub temperature: Option<f64>,
    /// `server.address` and `server.port`, from the config's `base_url`.
    pub server: Option<(String, i64)>,
    /// `grip.isolation`.
    pub isolation: &'static str,
}

impl DriverInfo {
    /// The info of `plugin`'s instance with `config`; empty when telemetry is off.
    pub(crate) fn new(plugin: &Plugin, config: &Value) -> Self {
        if !enabled() {
            return Self::default();
        }
        let manifest = plugin.manifest();
        let file_stem = |v: Option<&Value>| {
            v.and_then(Value::as_str).and_then(|p| {
                std::path::Path::new(p)
                    .file_stem()
                    .map(|s| bounded(&s.to_string_lossy()))
            })
        };
        let model = config
            .get("model")
            .and_then(Value::as_str)
            .map(bounded)
            .or_else(|| file_stem(config.get("model_path")))
            .or_else(|| file_stem(manifest.model_source.as_ref().and_then(|s| s.get("file"))));
        let server = config
            .get("base_url")
            .and_then(Value::as_str)
            .and_then(|u| reqwest::Url::parse(u).ok())
            .and_then(|u| {
                Some((
                    u.host_str()?.to_owned(),
                    i64::from(u.port_or_known_default()?),
                ))
            });
        Self {
            plugin: plugin.id().to_owned(),
            provider: manifest
                .provider
                .clone()
                .unwrap_or_else(|| plugin.id().to_owned()),
            model,
            max_tokens: config.get("max_tokens").and_then(Value::as_i64),
            temperature: config.get("temperature").and_then(Value::as_f64),
            server,
            isolation: plugin.isolation().as_str(),
        }
    }
}

/// What a task span is made from.
#[derive(Debug)]
pub(crate) struct TaskInfo<'a> {
    pub task_id: &'a str,
    pub driver: &'a DriverInfo,
    pub conversation: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub path: &'static str,
}

/// The `invoke_agent` span of one run. Ended by [`TaskSpan::finish`]; dropped unfinished (the
/// run's future was dropped: a timeout, a client gone), it ends as `cancelled`.
pub(crate) struct TaskSpan {
    span: Span,
    finished: bool,
}

impl TaskSpan {
    /// A child of the caller's `traceparent` when it gave a valid one, else of the current
    /// span.
    pub(crate) fn start(t: &TaskInfo<'_>) -> Self {
        let mut out = Self {
            span: Span::none(),
            finished: true,
        };
        if !enabled() {
            return out;
        }
        out.span = tracing::info_span!(
            target: TARGET,
            "invoke_agent",
            otel.name = %format!("invoke_agent {}", t.driver.plugin),
            otel.kind = "internal",
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %t.driver.plugin,
            gen_ai.provider.name = %t.driver.provider,
            grip.task.id = t.task_id,
            grip.plugin.id = %t.driver.plugin,
            grip.path = t.path,
            grip.isolation = t.driver.isolation,
        );
        if let Some(m) = &t.driver.model {
            out.span.set_attribute("gen_ai.request.model", m.clone());
        }
        if let Some(c) = t.conversation {
            out.span
                .set_attribute("gen_ai.conversation.id", c.to_owned());
        }
        if let Some(cx) = t.traceparent.and_then(super::propagation::context_of) {
            let _ = out.span.set_parent(cx);
        }
        out.finished = false;
        out
    }

    /// The span, for the run to be instrumented with.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The run's usage, or its error.
    pub(crate) fn finish(mut self, result: &Result<TaskOutput, TaskError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        match result {
            Ok(out) => set_usage(&self.span, out.usage),
            Err(e) => set_error(&self.span, &task_error_type(e), &e.to_string()),
        }
    }
}

impl Drop for TaskSpan {
    fn drop(&mut self) {
        if !self.finished {
            set_error(&self.span, CANCELLED, "the run was stopped before it ended");
        }
    }
}

/// The `error.type` of work dropped before it ended.
const CANCELLED: &str = "cancelled";

/// At most this many attempt spans per prompt: a driver that restarts without end cannot make
/// the host record without end.
const MAX_ATTEMPT_SPANS: u32 = 32;

/// The `chat` spans of one prompt: one per attempt, siblings under the task span. `None`
/// while telemetry is off: nothing is cloned or looked up.
pub(crate) struct Chat(Option<Box<Attempts>>);

struct Attempts {
    parent: Span,
    span: Span,
    info: Arc<DriverInfo>,
    attempt: u32,
    /// Attempt spans made so far.
    spans: u32,
    started: Instant,
    path: &'static str,
    stream: bool,
    /// With content capture: the request's messages and tool definitions, as the
    /// conventions' JSON, put on every attempt's span.
    content: Option<(String, Option<String>)>,
    finished: bool,
}

impl Chat {
    /// The first attempt's span, started now, and its `traceparent` put on `req` for the
    /// upstream. Nothing at all while telemetry is off.
    pub(crate) fn start(
        info: &Arc<DriverInfo>,
        req: &mut PromptRequest,
        path: &'static str,
        stream: bool,
    ) -> Self {
        if !enabled() {
            return Self(None);
        }
        let content = capture_content().then(|| {
            let defs: Vec<Value> = req
                .tools
                .iter()
                .map(|f| {
                    json!({"type": "function", "name": f.name,
                                "description": f.description, "parameters": f.parameters})
                })
                .collect();
            let defs = (!defs.is_empty()).then(|| Value::Array(defs).to_string());
            (messages_json(&req.messages), defs)
        });
        let mut a = Attempts {
            parent: Span::current(),
            span: Span::none(),
            info: Arc::clone(info),
            attempt: 1,
            spans: 1,
            started: Instant::now(),
            path,
            stream,
            content,
            finished: false,
        };
        a.span = a.attempt_span();
        // Every attempt the driver makes sends this one: the upstream's spans hang under the
        // first attempt's (the driver restarts on its own, without asking the host).
        req.traceparent = super::traceparent_of(&a.span);
        Self(Some(Box::new(a)))
    }

    /// A stream event on its way to the listeners: a `PromptRetry` ends this attempt.
    pub(crate) fn on_event(&mut self, event: &EventKind) {
        if let (Some(a), EventKind::PromptRetry { attempt, reason }) = (&mut self.0, event) {
            a.restart(*attempt, reason);
        }
    }

    /// The last attempt ended with `result`.
    pub(crate) fn finish(self, result: &Result<PromptResponse, TaskError>) {
        if let Some(mut a) = self.0 {
            a.finish(result);
        }
    }
}

impl Attempts {
    /// What the span and the duration metric say of every attempt.
    fn attributes(&self) -> Vec<KeyValue> {
        let i = &self.info;
        let mut a = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", i.provider.clone()),
        ];
        if let Some(m) = &i.model {
            a.push(KeyValue::new("gen_ai.request.model", m.clone()));
        }
        if let Some((host, port)) = &i.server {
            a.push(KeyValue::new("server.address", host.clone()));
            a.push(KeyValue::new("server.port", *port));
        }
        a
    }

    fn attempt_span(&self) -> Span {
        let i = &self.info;
        let name = match &i.model {
            Some(m) => format!("chat {m}"),
            None => "chat".to_owned(),
        };
        let span = tracing::info_span!(
            target: TARGET,
            parent: &self.parent,
            "chat",
            otel.name = %name,
            otel.kind = "client",
            grip.plugin.id = %i.plugin,
            grip.path = self.path,
            grip.isolation = i.isolation,
            grip.stream = self.stream,
        );
        for kv in self.attributes() {
            span.set_attribute(kv.key, kv.value);
        }
        // As an integer: tracing-opentelemetry records a u32 field as text.
        span.set_attribute("grip.attempt", i64::from(self.attempt));
        if let Some(n) = i.max_tokens {
            span.set_attribute("gen_ai.request.max_tokens", n);
        }
        if let Some(t) = i.temperature {
            span.set_attribute("gen_ai.request.temperature", t);
        }
        if let Some((messages, tools)) = &self.content {
            span.set_attribute("gen_ai.input.messages", messages.clone());
            if let Some(t) = tools {
                span.set_attribute("gen_ai.tool.definitions", t.clone());
            }
        }
        span
    }

    /// The driver restarted its stream: this attempt failed with `reason`, the next begins.
    fn restart(&mut self, attempt: u32, reason: &str) {
        let error_type = reason_type(reason);
        set_error(&self.span, error_type, reason);
        self.record_duration(Some(error_type), None);
        self.attempt = attempt.max(self.attempt.saturating_add(1));
        self.started = Instant::now();
        if self.spans < MAX_ATTEMPT_SPANS {
            self.spans += 1;
            self.span = self.attempt_span(); // the failed attempt's span ends here
        } else {
            self.span
                .set_attribute("grip.attempt", i64::from(self.attempt));
        }
    }

    fn finish(&mut self, result: &Result<PromptResponse, TaskError>) {
        self.finished = true;
        match result {
            Ok(r) => {
                let s = &self.span;
                if let Some(id) = &r.id {
                    s.set_attribute("gen_ai.response.id", bounded(id));
                }
                if let Some(m) = &r.model {
                    s.set_attribute("gen_ai.response.model", bounded(m));
                }
                if let Some(f) = &r.finish_reason {
                    let reasons = Array::String(vec![StringValue::from(bounded(f))]);
                    s.set_attribute("gen_ai.response.finish_reasons", OtelValue::Array(reasons));
                }
                set_usage(s, r.usage);
                if capture_content() {
                    let mut out = message_json(&r.message);
                    out["finish_reason"] = json!(r.finish_reason.as_deref().unwrap_or("stop"));
                    s.set_attribute(
                        "gen_ai.output.messages",
                        Value::Array(vec![out]).to_string(),
                    );
                }
                self.record_duration(None, r.model.as_deref());
                self.record_tokens(r);
            }
            Err(e) => {
                let t = task_error_type(e);
                set_error(&self.span, &t, &e.to_string());
                self.record_duration(Some(&t), None);
            }
        }
    }

    fn record_duration(&self, error_type: Option<&str>, response_model: Option<&str>) {
        let Some(m) = INSTRUMENTS.get() else { return };
        let mut a = self.attributes();
        if let Some(model) = response_model {
            a.push(KeyValue::new("gen_ai.response.model", bounded(model)));
        }
        if let Some(t) = error_type {
            a.push(KeyValue::new("error.type", t.to_owned()));
        }
        m.duration.record(self.started.elapsed().as_secs_f64(), &a);
    }

    fn record_tokens(&self, r: &PromptResponse) {
        let Some(m) = INSTRUMENTS.get() else { return };
        let mut a = self.attributes();
        if let Some(model) = &r.model {
            a.push(KeyValue::new("gen_ai.response.model", bounded(model)));
        }
        for (kind, n) in [
            ("input", r.usage.input_tokens),
            ("output", r.usage.output_tokens),
        ] {
            if n > 0 {
                let mut a = a.clone();
                a.push(KeyValue::new("gen_ai.token.type", kind));
                m.tokens.record(n, &a);
            }
        }
    }
}

impl Drop for Attempts {
    fn drop(&mut self) {
        if !self.finished {
            set_error(
                &self.span,
                CANCELLED,
                "the prompt was stopped before it ended",
            );
            self.record_duration(Some(CANCELLED), None);
        }
    }
}

/// The `execute_tool` span of one call, started now (a child of the current span).
pub(crate) fn tool_span(call: &ToolCall, tool: Option<&Plugin>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = bounded(&call.name);
    let span = tracing::info_span!(
        target: TARGET,
        "execute_tool",
        otel.name = %format!("execute_tool {name}"),
        otel.kind = "internal",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %name,
        gen_ai.tool.call.id = %bounded(&call.id),
        gen_ai.tool.type = "extension",
    );
    if let Some(p) = tool {
        span.set_attribute("grip.plugin.id", p.id().to_owned());
        span.set_attribute("grip.isolation", p.isolation().as_str());
    }
    if capture_content() {
        span.set_attribute("gen_ai.tool.call.arguments", call.arguments.to_string());
    }
    span
}

/// Ends a tool span with the message going back to the model and, when the call failed,
/// what kind of failure (`unknown_tool`, `invalid_arguments`, a plugin error kind, or
/// `tool_error` for a result the tool marked as an error).
pub(crate) fn finish_tool(span: &Span, result: &Message, error_type: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    // The message is what the tool or the host said back to the model: content, like the
    // result, so only its type goes on the span unless content is captured.
    let capture = capture_content();
    if let Some(t) = error_type {
        set_error(span, t, if capture { &result.content } else { t });
    }
    if capture {
        span.set_attribute("gen_ai.tool.call.result", result.content.clone());
    }
}

/// The `error.type` of a failed plugin call.
pub(crate) fn call_error_type(e: &CallError) -> &'static str {
    e.kind.as_str()
}

fn set_usage(span: &Span, usage: Usage) {
    span.set_attribute("gen_ai.usage.input_tokens", saturating(usage.input_tokens));
    span.set_attribute(
        "gen_ai.usage.output_tokens",
        saturating(usage.output_tokens),
    );
}

/// A string the model or a caller chose, cut to a length a backend stores without complaint
/// (span names and metric attributes must stay small).
fn bounded(s: &str) -> String {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn set_error(span: &Span, error_type: &str, message: &str) {
    span.set_attribute("error.type", error_type.to_owned());
    span.set_status(Status::error(message.to_owned()));
}

fn task_error_type(e: &TaskError) -> String {
    match e {
        TaskError::Driver(c) => call_error_type(c).to_owned(),
        TaskError::MissingCapability { .. } => "missing_capability".into(),
        TaskError::Publish(_) => "publish".into(),
        TaskError::MaxSubtasks { .. } => "max_subtasks".into(),
        TaskError::InvalidOutputSchema(_) => "invalid_output_schema".into(),
        TaskError::Stream { .. } => "stream".into(),
        TaskError::Tool { .. } => "tool".into(),
        TaskError::Stopped(_) => "stopped".into(),
        TaskError::AsyncRunnerOnSyncPath { .. } => "async_runner_on_sync_path".into(),
        TaskError::Internal(_) => "_OTHER".into(),
    }
}

/// A restart's reason is free text from the driver; its error kind, when it starts with one.
fn reason_type(reason: &str) -> &'static str {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("timeout") || lower.contains("timed out") {
        "timeout"
    } else {
        "stream_cut"
    }
}

/// Messages in the conventions' JSON form: role and parts.
fn messages_json(messages: &[Message]) -> String {
    Value::Array(messages.iter().map(message_json).collect()).to_string()
}

fn message_json(m: &Message) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut parts = Vec::new();
    if m.role == Role::Tool {
        parts.push(json!({"type": "tool_call_response",
                          "id": m.tool_call_id, "response": m.content}));
    } else if !m.content.is_empty() {
        parts.push(json!({"type": "text", "content": m.content}));
    }
    for c in &m.tool_calls {
        parts.push(json!({"type": "tool_call", "id": c.id, "name": c.name,
                          "arguments": c.arguments}));
    }
    json!({"role": role, "parts": parts})
}

struct Instruments {
    duration: Histogram<f64>,
    tokens: Histogram<u64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// The two GenAI client histograms, on the global meter provider (set just before).
pub(super) fn init_metrics() {
    let meter = opentelemetry::global::meter("grip");
    let _ = INSTRUMENTS.set(Instruments {
        duration: meter
            .f64_histogram("gen_ai.client.operation.duration")
            .with_unit("s")
            .with_description("GenAI operation duration")
            .with_boundaries(vec![
                0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
                81.92,
            ])
            .build(),
        tokens: meter
            .u64_histogram("gen_ai.client.token.usage")
            .with_unit("{token}")
            .with_description("Number of input and output tokens used")
            .with_boundaries(vec![
                1.0,
                4.0,
                16.0,
                64.0,
                256.0,
                1024.0,
                4096.0,
                16384.0,
                65536.0,
                262_144.0,
                1_048_576.0,
                4_194_304.0,
                16_777_216.0,
                67_108_864.0,
            ])
            .build(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_take_the_conventions_parts_form() {
        let mut a = Message::assistant("");
        a.tool_calls.push(ToolCall {
            id: "c1".into(),
            name: "Calculator_calculate".into(),
            arguments: json!({"expression": "1+1"}),
        });
        let v: Value = serde_json::from_str(&messages_json(&[
            Message::user("hi"),
            a,
            Message::tool_result("c1", "2", false),
        ]))
        .unwrap_or_default();
        assert_eq!(
            v[0],
            json!({"role": "user", "parts": [{"type": "text", "content": "hi"}]})
        );
        assert_eq!(v[1]["parts"][0]["type"], "tool_call");
        assert_eq!(v[1]["parts"][0]["arguments"]["expression"], "1+1");
        assert_eq!(
            v[2]["parts"][0],
            json!({"type": "tool_call_response", "id": "c1", "response": "2"})
        );
    }
}

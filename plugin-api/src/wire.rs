//! Payloads that cross the boundary as JSON.
//!
//! Requests, responses and events change more often than the ABI does, so they travel as JSON
//! rather than as `#[repr(C)]` structs. Every top-level payload carries a `schema_version`;
//! unknown fields are ignored on input, so a newer host can add fields without breaking older
//! plugins and the other way round.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The wire schema version this crate writes.
pub const WIRE_VERSION: u32 = 1;

fn wire_version() -> u32 {
    WIRE_VERSION
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions and rules.
    System,
    /// The person (or program) asking.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// One message of a prompt stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text (may be empty for an assistant message made only of tool calls).
    #[serde(default)]
    pub content: String,
    /// Tool calls requested by the assistant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a `tool` message: whether the result is an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
    /// For a `tool` message: the tool's structured result, when it gave one
    /// ([`ToolOutput::structured`]). Drivers send the model `content`; this is for hosts,
    /// listeners and clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<Value>,
}

impl Message {
    /// A message with only text.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
            structured: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::text(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::text(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::text(Role::Assistant, content)
    }

    /// The result of tool call `call_id`.
    pub fn tool_result(
        call_id: impl Into<String>,
        content: impl Into<String>,
        is_error: bool,
    ) -> Self {
        Self {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
            is_error,
            structured: None,
        }
    }

    /// The result of tool call `call_id`, from the tool's output.
    pub fn from_tool_output(call_id: impl Into<String>, output: ToolOutput) -> Self {
        let mut m = Self::tool_result(call_id, output.content, output.is_error);
        m.structured = output.structured;
        m
    }
}

/// A call of a tool function requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Id given by the model (or the driver), echoed back in the result.
    pub id: String,
    /// Function name as offered in [`PromptRequest::tools`].
    pub name: String,
    /// Arguments as a JSON value (drivers parse the model's JSON text).
    #[serde(default)]
    pub arguments: Value,
}

/// A function offered to the model: one activity of one tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// Name the model uses to call it.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments object.
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
}

fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// What a driver is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRequest {
    /// Wire schema version.
    #[serde(default = "wire_version")]
    pub schema_version: u32,
    /// The prompt stack, oldest first.
    pub messages: Vec<Message>,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<FunctionSpec>,
    /// JSON Schema the final answer must satisfy, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// Id of the task making the request (for logs and correlation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The W3C `traceparent` of the host's span for this prompt (since 1.5.0), when the host
    /// exports traces: a driver that calls an upstream sends it as the `traceparent` header,
    /// so the upstream's spans join the task's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl PromptRequest {
    /// A request with the given messages and nothing else.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            schema_version: WIRE_VERSION,
            messages,
            tools: Vec::new(),
            output_schema: None,
            task_id: None,
            traceparent: None,
        }
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub output_tokens: u64,
}

impl Usage {
    /// Adds another usage to this one.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// A driver's complete answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptResponse {
    /// Wire schema version.
    #[serde(default = "wire_version")]
    pub schema_version: u32,
    /// The assistant message (text and/or tool calls).
    pub message: Message,
    /// Token usage, if the driver knows it.
    #[serde(default)]
    pub usage: Usage,
    /// Why generation stopped: one of the [`finish_reason`] names, whatever the vendor calls
    /// it (drivers translate), or a vendor's own name when none fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The upstream's id of this response, when it gave one (since 1.5.0; the host's
    /// `gen_ai.response.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The model that answered, as the upstream named it (since 1.5.0;
    /// `gen_ai.response.model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The shared names of why generation stopped. Drivers translate their vendor's names into
/// these (Anthropic's `end_turn` is [`STOP`](finish_reason::STOP), `max_tokens` is
/// [`LENGTH`](finish_reason::LENGTH), `tool_use` is [`TOOL_CALLS`](finish_reason::TOOL_CALLS)),
/// so hosts and listeners never need to know which vendor answered.
pub mod finish_reason {
    /// The model finished its answer, or hit a stop sequence.
    pub const STOP: &str = "stop";
    /// The token limit cut the answer short.
    pub const LENGTH: &str = "length";
    /// The model asked for tool calls.
    pub const TOOL_CALLS: &str = "tool_calls";
    /// The model declined to answer; the text says why.
    pub const REFUSAL: &str = "refusal";
    /// The provider's content filter removed or stopped the answer.
    pub const CONTENT_FILTER: &str = "content_filter";
}

impl PromptResponse {
    /// A plain text answer.
    pub fn text(text: impl Into<String>, usage: Usage) -> Self {
        Self {
            schema_version: WIRE_VERSION,
            message: Message::assistant(text),
            usage,
            finish_reason: Some("stop".into()),
            id: None,
            model: None,
        }
    }
}

/// One item of a driver's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamDelta {
    /// More text.
    Text {
        /// The new text.
        text: String,
    },
    /// Part of a tool call; parts with the same `index` belong to one call.
    ToolCall {
        /// Which call this part belongs to. Calls are ordered by index; indices need not be
        /// contiguous (a vendor's content-block index works), they only have to be distinct
        /// per call. The first part of a call should carry its `id` and `name`.
        index: u32,
        /// Call id (usually only on the first part).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Function name (usually only on the first part).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// A piece of the JSON arguments text.
        #[serde(default)]
        arguments: String,
    },
    /// Token usage so far: a snapshot of the totals for this response, not an increment.
    /// A later `Usage` replaces an earlier one, so a driver whose vendor reports input and
    /// output tokens at different times (Anthropic: `message_start`, then `message_delta`)
    /// sends the combined totals each time, and nothing is counted twice.
    Usage {
        /// The counts.
        usage: Usage,
    },
    /// Why generation stopped.
    Finish {
        /// One of the [`finish_reason`] names.
        reason: String,
    },
    /// The attempt so far failed (the stream was cut, say) and the driver is trying again:
    /// everything this stream delivered before is void, and the deltas that follow are a
    /// whole new answer. Since plugin-api 1.2; the host publishes it as `PromptRetryEvent`.
    Restart {
        /// The attempt that starts now (2 for the first retry).
        attempt: u32,
        /// Why the previous attempt failed.
        reason: String,
    },
}

/// A tool's description, with one JSON Schema per activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Wire schema version.
    #[serde(default = "wire_version")]
    pub schema_version: u32,
    /// Tool name (`Calculator`).
    pub name: String,
    /// What the tool is for.
    #[serde(default)]
    pub description: String,
    /// What it can do.
    pub activities: Vec<Activity>,
}

/// One thing a tool can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Activity name (`calculate`).
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the input object.
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
}

/// A request to run one activity of a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInvocation {
    /// Wire schema version.
    #[serde(default = "wire_version")]
    pub schema_version: u32,
    /// The activity to run.
    pub activity: String,
    /// Its input, already checked against the activity's schema by the host.
    #[serde(default)]
    pub input: Value,
    /// The model's call id.
    #[serde(default)]
    pub call_id: String,
}

/// What a tool activity returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// Wire schema version.
    #[serde(default = "wire_version")]
    pub schema_version: u32,
    /// The result, shown to the model.
    pub content: String,
    /// Whether the content describes a failure the model should know of.
    #[serde(default)]
    pub is_error: bool,
    /// The result as structured data, when the tool has it; `content` is then its JSON text.
    /// Older hosts ignore it and read `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<Value>,
}

impl ToolOutput {
    /// A successful result.
    pub fn ok(content: impl Into<String>) -> Self {
        Self {
            schema_version: WIRE_VERSION,
            content: content.into(),
            is_error: false,
            structured: None,
        }
    }

    /// A failure to show the model.
    pub fn error(content: impl Into<String>) -> Self {
        Self {
            schema_version: WIRE_VERSION,
            content: content.into(),
            is_error: true,
            structured: None,
        }
    }

    /// A structured result: the model reads its compact JSON text.
    pub fn json(value: Value) -> Self {
        Self {
            schema_version: WIRE_VERSION,
            content: value.to_string(),
            is_error: false,
            structured: Some(value),
        }
    }
}

/// An event published on an event bus, with identity so it can be routed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wire schema version.
    #[serde(default = "wire_version")]
    pub schema_version: u32,
    /// Unique id of this event.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Task that produced it.
    #[serde(default)]
    pub task_id: String,
    /// Run (one `run()`/`async_run()` call) that produced it.
    #[serde(default)]
    pub run_id: String,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub meta: serde_json::Map<String, Value>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The event types; serialised with a `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum EventKind {
    /// A task began.
    #[serde(rename = "StartTaskEvent")]
    StartTask {
        /// The task's input.
        input: String,
    },
    /// A task ended, successfully or not.
    #[serde(rename = "FinishTaskEvent")]
    FinishTask {
        /// The output, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// The error, on failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Total token usage.
        #[serde(default)]
        usage: Usage,
    },
    /// A driver is about to be called.
    #[serde(rename = "StartPromptEvent")]
    StartPrompt {
        /// The prompt stack sent.
        messages: Vec<Message>,
        /// The driver's plugin id.
        driver: String,
    },
    /// A driver call ended.
    #[serde(rename = "FinishPromptEvent")]
    FinishPrompt {
        /// Text of the answer (empty on error).
        #[serde(default)]
        output: String,
        /// Token usage of this call.
        #[serde(default)]
        usage: Usage,
        /// The error, on failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A piece of streamed text.
    #[serde(rename = "TextChunkEvent")]
    TextChunk {
        /// The text.
        token: String,
    },
    /// A piece of a streamed tool call.
    #[serde(rename = "ActionChunkEvent")]
    ActionChunk {
        /// Index of the call.
        index: u32,
        /// Call id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        /// Function name, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Piece of the arguments text.
        #[serde(default)]
        partial_input: String,
    },
    /// The driver's stream failed mid-way and is being sent again: discard the
    /// `TextChunkEvent`s and `ActionChunkEvent`s since this prompt's `StartPromptEvent`; the
    /// chunks that follow are a whole new answer. Since plugin-api 1.2 (listener plugins built
    /// on an older one are not sent it).
    #[serde(rename = "PromptRetryEvent")]
    PromptRetry {
        /// The attempt that starts now (2 for the first retry).
        attempt: u32,
        /// Why the previous attempt failed.
        reason: String,
    },
    /// The task is being run again, by another worker, because the one running it stopped
    /// before it ended (at-least-once execution on a queue): discard every event of the task
    /// received before this one; a whole new run follows, from its `StartTaskEvent`. Since
    /// plugin-api 1.4 (listener plugins built on an older one are not sent it).
    #[serde(rename = "TaskRetryEvent")]
    TaskRetry {
        /// The attempt that starts now (2 for the first retry).
        attempt: u32,
        /// Why the previous attempt did not end.
        reason: String,
    },
    /// Tool calls are about to run.
    #[serde(rename = "StartActionsSubtaskEvent")]
    StartActionsSubtask {
        /// Subtask id.
        subtask_id: String,
        /// The calls.
        calls: Vec<ToolCall>,
    },
    /// Tool calls ran.
    #[serde(rename = "FinishActionsSubtaskEvent")]
    FinishActionsSubtask {
        /// Subtask id.
        subtask_id: String,
        /// One result message per call, in call order.
        results: Vec<Message>,
    },
    /// An event type this plugin-api version does not know (a newer host's): skip it.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// The `type` name (`TextChunkEvent`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::StartTask { .. } => "StartTaskEvent",
            EventKind::FinishTask { .. } => "FinishTaskEvent",
            EventKind::StartPrompt { .. } => "StartPromptEvent",
            EventKind::FinishPrompt { .. } => "FinishPromptEvent",
            EventKind::TextChunk { .. } => "TextChunkEvent",
            EventKind::ActionChunk { .. } => "ActionChunkEvent",
            EventKind::StartActionsSubtask { .. } => "StartActionsSubtaskEvent",
            EventKind::FinishActionsSubtask { .. } => "FinishActionsSubtaskEvent",
            EventKind::PromptRetry { .. } => "PromptRetryEvent",
            EventKind::TaskRetry { .. } => "TaskRetryEvent",
            EventKind::Unknown => "Unknown",
        }
    }
}

impl Event {
    /// A new event with a fresh id and the current time.
    pub fn new(task_id: impl Into<String>, run_id: impl Into<String>, kind: EventKind) -> Self {
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            schema_version: WIRE_VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            timestamp_ms,
            task_id: task_id.into(),
            run_id: run_id.into(),
            meta: serde_json::Map::new(),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_version_defaults() {
        let json = r#"{"messages":[{"role":"user","content":"hi","future":1}],"brand_new":true}"#;
        let req: PromptRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.schema_version, WIRE_VERSION);
        assert_eq!(req.messages[0].content, "hi");
    }

    #[test]
    fn events_serialise_with_a_type_field() {
        let e = Event::new("t", "r", EventKind::TextChunk { token: "x".into() });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "TextChunkEvent");
        assert_eq!(v["token"], "x");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn stream_deltas_round_trip() {
        let d = StreamDelta::ToolCall {
            index: 1,
            id: Some("c1".into()),
            name: None,
            arguments: "{\"a\"".into(),
        };
        let s = serde_json::to_string(&d).unwrap();
        assert!(s.contains("\"type\":\"tool_call\""));
        assert_eq!(serde_json::from_str::<StreamDelta>(&s).unwrap(), d);
    }

    #[test]
    fn an_event_type_from_a_newer_host_is_unknown_not_an_error() {
        let json = r#"{"id":"e","timestamp_ms":1,"type":"SomeFutureEvent","extra":1}"#;
        let e: Event = serde_json::from_str(json).unwrap();
        assert_eq!(e.kind, EventKind::Unknown);
        let retry = Event::new(
            "t",
            "r",
            EventKind::PromptRetry {
                attempt: 2,
                reason: "cut".into(),
            },
        );
        let v = serde_json::to_value(&retry).unwrap();
        assert_eq!(v["type"], "PromptRetryEvent");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), retry);
    }
}

/// The head of an HTTP request a generation-2 plugin sends through the host (see
/// [`crate::abi_v2::HostServicesV2::http`]); the body travels beside it as bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestHead {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The absolute http(s) URL.
    pub url: String,
    /// Header names and values, in order (a name may repeat).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Whole exchange, from sending to the body's last byte; none: the host's default.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// TCP (and TLS) connect timeout; none: the host's default.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
}

/// The head of the host's HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponseHead {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

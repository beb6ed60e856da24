//! PromptTask: prompt -> tool calls -> actions subtask -> prompt again -> output-schema
//! validation, on a sync path (`run()`) and an async path (`async_run()`).
//!
//! # One loop, two drivers
//!
//! The loop's decisions live in [`Machine`], which does no I/O and serialises: given a driver
//! response, a set of tool results or a validation outcome, it says what to do next.
//! `try_run()` drives it with blocking calls, `async_try_run()` with awaits; neither makes a
//! decision of its own. The parts: [`machine`] (the decisions), [`stream`] (deltas into a
//! response), [`tools`] (function dispatch), [`memory`], [`run`] (one run, and stopping it).
//!
//! # Sync and async
//!
//! The crate's one rule (see the [crate docs](crate)): `run()` needs a driver with the `sync`
//! capability (and `stream` if the task streams), sync handlers on its bus and sync custom
//! runners; `async_run()` needs the `async` capability. Each refuses up front, before anything
//! is published. Tools are bridged by capability: on the async path the calls of one subtask
//! run concurrently (async tools awaited together, sync-only tools on blocking threads), and
//! results are kept in call order.
//!
//! # Events, in order
//!
//! ```text
//! StartTaskEvent
//!   ( StartPromptEvent
//!       ( (TextChunkEvent | ActionChunkEvent)* PromptRetryEvent )*  -- a cut stream sent again:
//!                                                 -- the chunks before it are void
//!       (TextChunkEvent | ActionChunkEvent)*      -- when streaming
//!     FinishPromptEvent                           -- with usage; with the error if the call failed
//!     [ StartActionsSubtaskEvent FinishActionsSubtaskEvent ]   -- when the model called tools
//!   )+
//! FinishTaskEvent                                 -- always; with the output, or the error
//! ```
//!
//! Every event carries the task id and the id of the run. A run refused before it starts
//! (missing capability, async-only listener on the sync path) publishes nothing.
//!
//! # Stopping a task from outside
//!
//! A runner that gives up on a task (its client went away, it ran too long, the host is shutting
//! down) calls [`TaskStopper::stop`]: the run's `FinishTaskEvent` goes out at once with a
//! [`TaskError::Stopped`] error, and nothing of that run is published after it. On the async
//! path the runner drops the run's future first (which cancels the driver call); on the sync
//! path the blocking thread sees the stop between two steps (or two stream deltas) and returns.

use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use plugin_api::wire::{
    Event, EventKind, FunctionSpec, Message, PromptRequest, PromptResponse, ToolCall, Usage,
};
use serde_json::Value;

use crate::events::EventBus;
use crate::manifest::{Kind, Mode};
use crate::plugin::{Driver, ToolHandle};

mod async_path;
mod error;
pub mod machine;
mod memory;
mod run;
mod stream;
mod sync_path;
pub(crate) mod tools;

pub use error::{StopReason, TaskError};
pub use machine::{Awaiting, Machine, MachineConfig, Next};
pub use memory::ConversationMemory;
pub use run::{RunContext, TaskStopper};
use tools::{ToolSet, error_result};

/// The default bound on subtasks (tool rounds plus output-schema retries).
pub const DEFAULT_MAX_SUBTASKS: usize = 20;

/// What a successful task produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskOutput {
    /// The final text (for `reflect_on_tool_use = false`, the tool results).
    pub text: String,
    /// The output parsed as JSON, when the task has an output schema.
    pub json: Option<Value>,
    /// Token usage over every driver call of the run.
    pub usage: Usage,
    /// Subtasks run (tool rounds and output-schema retries).
    pub subtasks: usize,
    /// Calls of client functions the model made in its last turn: the caller runs them (see
    /// [`PromptTask::client_functions`]); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Why the last driver response stopped, in the shared names
    /// ([`plugin_api::wire::finish_reason`]), when the driver said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// The tool calls of one assistant turn.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActionsSubtask {
    /// Subtask id.
    pub id: String,
    /// The calls, in the model's order.
    pub calls: Vec<ToolCall>,
}

/// Result of an output-schema validation subtask: the parsed JSON, or the errors.
pub type ValidationResult = Result<Value, Vec<String>>;

/// Custom sync actions runner.
pub type ActionsRunner = Arc<dyn Fn(&PromptTask, &ActionsSubtask) -> Vec<Message> + Send + Sync>;
/// Custom async actions runner.
pub type AsyncActionsRunner =
    Arc<dyn Fn(PromptTask, ActionsSubtask) -> BoxFuture<'static, Vec<Message>> + Send + Sync>;
/// Custom sync output-schema validation runner.
pub type ValidationRunner = Arc<dyn Fn(&PromptTask, &str) -> ValidationResult + Send + Sync>;
/// Custom async output-schema validation runner.
pub type AsyncValidationRunner =
    Arc<dyn Fn(PromptTask, String) -> BoxFuture<'static, ValidationResult> + Send + Sync>;

/// The subtask runners. `None` means the default; under `async_run()` the default sync runner
/// maps to its async twin, and a custom sync runner runs on a blocking thread.
#[derive(Clone, Default)]
pub struct SubtaskRunners {
    /// Runs the tool calls of a subtask on the sync path.
    pub actions: Option<ActionsRunner>,
    /// Runs them on the async path.
    pub async_actions: Option<AsyncActionsRunner>,
    /// Validates the output on the sync path.
    pub output_schema: Option<ValidationRunner>,
    /// Validates it on the async path.
    pub async_output_schema: Option<AsyncValidationRunner>,
}

/// A prompt task. Cheap to clone; a clone shares the driver, tools and memory.
#[derive(Clone)]
pub struct PromptTask {
    id: String,
    driver: Driver,
    input: String,
    tools: Vec<ToolHandle>,
    /// Built from `tools` on first use, once for every run and subtask of the task.
    tool_set: Arc<OnceLock<Result<Arc<ToolSet>, TaskError>>>,
    output_schema: Option<Value>,
    /// Compiled from `output_schema` on first use.
    validator: Arc<OnceLock<Result<Arc<jsonschema::Validator>, TaskError>>>,
    max_subtasks: usize,
    reflect_on_tool_use: bool,
    rules: Vec<String>,
    memory: Option<Arc<ConversationMemory>>,
    /// Messages of the conversation so far, between the memory and the input.
    history: Vec<Message>,
    /// Functions offered to the model that the caller runs.
    client_functions: Vec<FunctionSpec>,
    event_bus: Option<Arc<EventBus>>,
    stream: bool,
    runners: SubtaskRunners,
    /// The run in progress, for [`TaskStopper`].
    current: Arc<Mutex<Option<RunContext>>>,
    /// Where its telemetry spans belong: the caller's trace and conversation.
    trace: TraceContext,
}

/// What a task's spans are attached to (see [`crate::telemetry`]).
#[derive(Debug, Clone, Default)]
struct TraceContext {
    /// The caller's W3C `traceparent`, continued by the task's span.
    traceparent: Option<String>,
    /// `gen_ai.conversation.id`.
    conversation_id: Option<String>,
}

impl std::fmt::Debug for PromptTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTask")
            .field("id", &self.id)
            .field("driver", &self.driver.plugin().id())
            .field("input", &self.input)
            .field(
                "tools",
                &self
                    .tools
                    .iter()
                    .map(|t| t.plugin().id())
                    .collect::<Vec<_>>(),
            )
            .field("max_subtasks", &self.max_subtasks)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl PromptTask {
    /// A task asking `driver` about `input`.
    pub fn new(driver: Driver, input: impl Into<String>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            driver,
            input: input.into(),
            tools: Vec::new(),
            tool_set: Arc::default(),
            output_schema: None,
            validator: Arc::default(),
            max_subtasks: DEFAULT_MAX_SUBTASKS,
            reflect_on_tool_use: true,
            rules: Vec::new(),
            memory: None,
            history: Vec::new(),
            client_functions: Vec::new(),
            event_bus: None,
            stream: false,
            runners: SubtaskRunners::default(),
            current: Arc::default(),
            trace: TraceContext::default(),
        }
    }

    /// Continues the caller's trace: the task's span is a child of this W3C `traceparent`
    /// (one that is not well formed is ignored and a new trace starts).
    pub fn traceparent(mut self, traceparent: Option<String>) -> Self {
        // Checked where it is used (`context_of`), so a task built while telemetry is off
        // does not parse it.
        self.trace.traceparent = traceparent;
        self
    }

    /// The conversation the task belongs to, for its spans (`gen_ai.conversation.id`).
    pub fn conversation_id(mut self, id: Option<String>) -> Self {
        self.trace.conversation_id = id;
        self
    }

    /// The `chat` spans of one prompt on `path` (the first one's trace context on `req`).
    fn chat(&self, req: &mut PromptRequest, path: &'static str) -> crate::telemetry::genai::Chat {
        crate::telemetry::genai::Chat::start(self.driver.gen_ai(), req, path, self.stream)
    }

    /// The `invoke_agent` span of a run on `path` (disabled while telemetry is off).
    fn task_span(&self, path: &'static str) -> crate::telemetry::genai::TaskSpan {
        crate::telemetry::genai::TaskSpan::start(&crate::telemetry::genai::TaskInfo {
            task_id: &self.id,
            driver: self.driver.gen_ai(),
            conversation: self.trace.conversation_id.as_deref(),
            traceparent: self.trace.traceparent.as_deref(),
            path,
        })
    }

    /// Sets the task id (default: a fresh one).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Offers a tool to the model.
    pub fn tool(mut self, tool: ToolHandle) -> Self {
        self.tools.push(tool);
        self.tool_set = Arc::default();
        self
    }

    /// Offers tools to the model.
    pub fn tools(mut self, tools: impl IntoIterator<Item = ToolHandle>) -> Self {
        self.tools.extend(tools);
        self.tool_set = Arc::default();
        self
    }

    /// Requires the final answer to be JSON satisfying `schema`.
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self.validator = Arc::default();
        self
    }

    /// [`PromptTask::output_schema`] with the schema already compiled (by
    /// [`machine::compile_schema`]), so it is not compiled again.
    pub fn output_schema_compiled(
        mut self,
        schema: Value,
        validator: Arc<jsonschema::Validator>,
    ) -> Self {
        self.output_schema = Some(schema);
        self.validator = Arc::new(OnceLock::from(Ok(validator)));
        self
    }

    /// Bounds tool rounds plus output-schema retries (default 20).
    pub fn max_subtasks(mut self, n: usize) -> Self {
        self.max_subtasks = n;
        self
    }

    /// With `false`, the tool results of the first actions subtask are the output, without
    /// prompting the model again (default `true`).
    pub fn reflect_on_tool_use(mut self, reflect: bool) -> Self {
        self.reflect_on_tool_use = reflect;
        self
    }

    /// Adds a rule to the system prompt.
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rules.push(rule.into());
        self
    }

    /// The conversation so far (system, user, assistant and tool messages, oldest first), sent
    /// after the rules and the memory and before the input. With a history, an empty input adds
    /// no user message: the history's last message is what the model answers (a tool result,
    /// say).
    pub fn history(mut self, messages: Vec<Message>) -> Self {
        self.history = messages;
        self
    }

    /// Offers functions the caller runs itself: when the model calls one, the run ends with the
    /// calls in [`TaskOutput::tool_calls`] and finish reason `tool_calls`, instead of running
    /// them. Their names must not be those of the task's tools' functions.
    pub fn client_functions(mut self, functions: Vec<FunctionSpec>) -> Self {
        self.client_functions = functions;
        self
    }

    /// Shares a conversation memory.
    pub fn memory(mut self, memory: Arc<ConversationMemory>) -> Self {
        self.memory = Some(memory);
        self
    }

    /// Publishes to this bus instead of the global one.
    pub fn event_bus(mut self, bus: Arc<EventBus>) -> Self {
        self.event_bus = Some(bus);
        self
    }

    /// Streams from the driver, publishing chunk events (needs the `stream` capability).
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Replaces the subtask runners.
    pub fn subtask_runners(mut self, runners: SubtaskRunners) -> Self {
        self.runners = runners;
        self
    }

    /// Whether the task streams from its driver.
    pub fn is_streaming(&self) -> bool {
        self.stream
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The input.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The driver.
    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// The bus events go to.
    pub fn bus(&self) -> Arc<EventBus> {
        self.event_bus.clone().unwrap_or_else(EventBus::global)
    }

    /// A handle that can stop this task's run from outside.
    pub fn stopper(&self) -> TaskStopper {
        TaskStopper::new(self.id.clone(), Arc::clone(&self.current))
    }

    fn new_context(&self) -> RunContext {
        let ctx = RunContext::new(self.bus());
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.clone());
        ctx
    }

    fn event(&self, ctx: &RunContext, kind: EventKind) -> Event {
        Event::new(self.id.clone(), ctx.run_id.clone(), kind)
    }

    /// The path's capabilities: the driver's mode (and `stream`), and on the sync path a sync
    /// form of each custom runner.
    fn require(&self, mode: Mode, path: &'static str) -> Result<(), TaskError> {
        let plugin = self.driver.plugin();
        let mut needed = vec![mode];
        if self.stream {
            needed.push(Mode::Stream);
        }
        for m in needed {
            if !plugin.can(Kind::PromptDriver, m) {
                return Err(TaskError::MissingCapability {
                    plugin: plugin.id().to_owned(),
                    capability: m.as_str(),
                    path,
                });
            }
        }
        if mode == Mode::Sync {
            let r = &self.runners;
            if r.async_actions.is_some() && r.actions.is_none() {
                return Err(TaskError::AsyncRunnerOnSyncPath { runner: "actions" });
            }
            if r.async_output_schema.is_some() && r.output_schema.is_none() {
                return Err(TaskError::AsyncRunnerOnSyncPath {
                    runner: "output_schema",
                });
            }
        }
        Ok(())
    }

    /// The task's tools and their functions, built once.
    fn tool_set(&self) -> Result<Arc<ToolSet>, TaskError> {
        self.tool_set
            .get_or_init(|| ToolSet::new(&self.tools).map(Arc::new))
            .clone()
    }

    /// The output schema compiled once (`None` without one).
    fn validator(&self) -> Result<Option<Arc<jsonschema::Validator>>, TaskError> {
        let Some(schema) = &self.output_schema else {
            return Ok(None);
        };
        self.validator
            .get_or_init(|| machine::compile_schema(schema))
            .clone()
            .map(Some)
    }

    /// A machine for a new run: the opening prompt stack is the rules, the memory and the input.
    fn machine(&self) -> Result<Machine, TaskError> {
        let tools = self.tool_set()?;
        let validator = self.validator()?;
        let mut messages = Vec::new();
        if !self.rules.is_empty() {
            let rules: Vec<String> = self.rules.iter().map(|r| format!("- {r}")).collect();
            messages.push(Message::system(format!("Rules:\n{}", rules.join("\n"))));
        }
        if let Some(m) = &self.memory {
            messages.extend(m.messages());
        }
        messages.extend(self.history.iter().cloned());
        if self.history.is_empty() || !self.input.is_empty() {
            messages.push(Message::user(self.input.clone()));
        }
        let mut functions = tools.specs().to_vec();
        if let Some(f) = self
            .client_functions
            .iter()
            .find(|c| functions.iter().any(|s| s.name == c.name))
        {
            return Err(TaskError::Tool {
                tool: "client".to_owned(),
                message: format!("the client function `{}` is also a tool's function", f.name),
            });
        }
        functions.extend(self.client_functions.iter().cloned());
        let config = MachineConfig {
            task_id: self.id.clone(),
            functions,
            output_schema: self.output_schema.clone(),
            max_subtasks: self.max_subtasks,
            reflect_on_tool_use: self.reflect_on_tool_use,
            client_functions: self
                .client_functions
                .iter()
                .map(|f| f.name.clone())
                .collect(),
        };
        match validator {
            Some(v) => Ok(Machine::with_compiled_schema(config, messages, v)),
            None => Machine::new(config, messages),
        }
    }

    /// The finish event of a run that ended with `result`.
    fn finish_kind(result: &Result<TaskOutput, TaskError>) -> EventKind {
        match result {
            Ok(out) => EventKind::FinishTask {
                output: Some(out.text.clone()),
                error: None,
                usage: out.usage,
            },
            Err(e) => EventKind::FinishTask {
                output: None,
                error: Some(e.to_string()),
                usage: Usage::default(),
            },
        }
    }

    /// Remembers a successful run in the conversation memory, if the task has one.
    fn remember(&self, result: &Result<TaskOutput, TaskError>) {
        if let (Some(m), Ok(out)) = (&self.memory, result) {
            m.add(&self.input, &out.text);
        }
    }
}

fn start_prompt(driver: &Driver, req: &PromptRequest) -> EventKind {
    EventKind::StartPrompt {
        messages: req.messages.clone(),
        driver: driver.plugin().id().to_owned(),
    }
}

fn finish_prompt(result: &Result<PromptResponse, TaskError>) -> EventKind {
    match result {
        Ok(r) => EventKind::FinishPrompt {
            output: r.message.content.clone(),
            usage: r.usage,
            error: None,
        },
        Err(e) => EventKind::FinishPrompt {
            output: String::new(),
            usage: Usage::default(),
            error: Some(e.to_string()),
        },
    }
}

fn start_actions(sub: &ActionsSubtask) -> EventKind {
    EventKind::StartActionsSubtask {
        subtask_id: sub.id.clone(),
        calls: sub.calls.clone(),
    }
}

fn finish_actions(sub: &ActionsSubtask, results: &[Message]) -> EventKind {
    EventKind::FinishActionsSubtask {
        subtask_id: sub.id.clone(),
        results: results.to_vec(),
    }
}

/// Every call of `subtask` failed with `e`.
fn all_failed(subtask: &ActionsSubtask, e: &TaskError) -> Vec<Message> {
    subtask
        .calls
        .iter()
        .map(|c| error_result(c, e.to_string()))
        .collect()
}

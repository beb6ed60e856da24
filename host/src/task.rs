//! PromptTask: prompt -> tool calls -> actions subtask -> prompt again -> output-schema
//! validation, on a sync path (`run()`) and an async path (`async_run()`).
//!
//! # One loop, two drivers
//!
//! The loop's decisions live in [`Machine`], which does no I/O: given a driver response, a set
//! of tool results or a validation outcome, it says what to do next. `try_run()` drives it with
//! blocking calls, `async_try_run()` with awaits; neither makes a decision of its own.
//!
//! # Sync and async
//!
//! `run()` needs a driver with the `sync` capability (and `stream` if the task streams), and an
//! event bus whose listeners all have sync handlers; `async_run()` needs the `async` capability.
//! Each refuses up front with [`TaskError::MissingCapability`] or [`TaskError::Publish`] rather
//! than failing half-way. Tools are called in whatever mode they have: on the async path the
//! calls of one subtask run concurrently (async tools awaited together, sync-only tools on
//! blocking threads), and results are kept in call order.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use futures::future::BoxFuture;
use plugin_api::wire::{
    Event, EventKind, FunctionSpec, Message, PromptRequest, PromptResponse, Role, StreamDelta,
    ToolCall, ToolInvocation, Usage, WIRE_VERSION,
};
use serde_json::Value;

use crate::error::CallError;
use crate::events::{EventBus, PublishError, run_blocking};
use crate::manifest::{Kind, Mode};
use crate::plugin::{Driver, ToolHandle};

/// The default bound on subtasks (tool rounds plus output-schema retries).
pub const DEFAULT_MAX_SUBTASKS: usize = 20;

/// Why a task failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The driver cannot run on the requested path.
    #[error("prompt driver `{plugin}` lacks the `{capability}` capability needed by {path}")]
    MissingCapability {
        /// Driver plugin id.
        plugin: String,
        /// `sync`, `async` or `stream`.
        capability: &'static str,
        /// `run()` or `async_run()`.
        path: &'static str,
    },
    /// The sync path met an async-only listener.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The driver call failed.
    #[error(transparent)]
    Driver(#[from] CallError),
    /// The loop ran more subtasks than allowed.
    #[error(
        "exceeded max_subtasks ({limit}): the model kept calling tools or kept failing the output schema"
    )]
    MaxSubtasks {
        /// The limit.
        limit: usize,
        /// The last output-schema errors, if that is why.
        last_errors: Vec<String>,
    },
    /// The task's output schema is not a valid JSON Schema.
    #[error("invalid output schema: {0}")]
    InvalidOutputSchema(String),
    /// The driver's stream could not be assembled into a response.
    #[error("prompt driver `{plugin}` stream: {message}")]
    Stream {
        /// Driver plugin id.
        plugin: String,
        /// What was wrong.
        message: String,
    },
    /// A tool's activity schema is not a valid JSON Schema, or two tools share a function name.
    #[error("tool `{tool}`: {message}")]
    Tool {
        /// Tool plugin id.
        tool: String,
        /// What was wrong.
        message: String,
    },
    /// The runner stopped the task before it ended (see [`TaskStopper`]).
    #[error("task stopped: {0}")]
    Stopped(StopReason),
}

/// Why a runner stopped a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The caller went away (an HTTP client disconnected).
    ClientGone,
    /// The task ran longer than it may.
    TimedOut {
        /// The limit, in milliseconds.
        after_ms: u64,
    },
    /// The host shut down before the task ended.
    Shutdown,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::ClientGone => f.write_str("cancelled: the client went away"),
            StopReason::TimedOut { after_ms } => write!(f, "timed out after {after_ms} ms"),
            StopReason::Shutdown => {
                f.write_str("abandoned: the host shut down before the task ended")
            }
        }
    }
}

/// What a successful task produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskOutput {
    /// The final text (for `reflect_on_tool_use = false`, the tool results).
    pub text: String,
    /// The output parsed as JSON, when the task has an output schema.
    pub json: Option<Value>,
    /// Token usage over every driver call of the run.
    pub usage: Usage,
    /// Subtasks run (tool rounds and output-schema retries).
    pub subtasks: usize,
}

/// The tool calls of one assistant turn.
#[derive(Debug, Clone)]
pub struct ActionsSubtask {
    /// Subtask id.
    pub id: String,
    /// The calls, in the model's order.
    pub calls: Vec<ToolCall>,
}

/// Conversation memory shared by tasks: earlier runs' inputs and outputs.
#[derive(Debug, Default)]
pub struct ConversationMemory {
    max_runs: Option<usize>,
    runs: Mutex<Vec<(String, String)>>,
}

impl ConversationMemory {
    /// A memory keeping the last `max_runs` runs (all if `None`).
    pub fn new(max_runs: Option<usize>) -> Self {
        Self {
            max_runs,
            runs: Mutex::new(Vec::new()),
        }
    }

    /// The remembered turns as user/assistant messages.
    pub fn messages(&self) -> Vec<Message> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.iter()
            .flat_map(|(i, o)| [Message::user(i.clone()), Message::assistant(o.clone())])
            .collect()
    }

    /// Remembers a run.
    pub fn add(&self, input: &str, output: &str) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.push((input.to_owned(), output.to_owned()));
        if let Some(max) = self.max_runs
            && runs.len() > max
        {
            let excess = runs.len() - max;
            runs.drain(..excess);
        }
    }

    /// Number of remembered runs.
    pub fn len(&self) -> usize {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// One run's identity and bus.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Unique per `run()` / `async_run()` call.
    pub run_id: String,
    /// Where this run's events go.
    pub bus: Arc<EventBus>,
    state: Arc<RunState>,
}

/// Whether a run's finish event has gone out, and whether a runner stopped it.
#[derive(Debug, Default)]
struct RunState {
    finished: AtomicBool,
    stopped: OnceLock<StopReason>,
}

impl RunContext {
    /// Claims the run's one finish event: true for the first caller only.
    fn claim_finish(&self) -> bool {
        !self.state.finished.swap(true, Ordering::AcqRel)
    }

    fn is_finished(&self) -> bool {
        self.state.finished.load(Ordering::Acquire)
    }

    /// The sync path's check between two steps.
    fn check_stopped(&self) -> Result<(), TaskError> {
        match self.state.stopped.get() {
            Some(r) => Err(TaskError::Stopped(*r)),
            None => Ok(()),
        }
    }
}

/// Ends a task's run from outside it (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskStopper {
    task_id: String,
    current: Arc<Mutex<Option<RunContext>>>,
}

impl TaskStopper {
    /// Publishes the current run's `FinishTaskEvent` with a [`TaskError::Stopped`] error and
    /// flushes the listener drivers, unless the run already finished (or never started).
    /// Returns whether it published. Nothing of that run is published afterwards.
    pub async fn stop(&self, reason: StopReason) -> bool {
        let ctx = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(ctx) = ctx else {
            return false;
        };
        let _ = ctx.state.stopped.set(reason);
        if !ctx.claim_finish() {
            return false;
        }
        let kind = EventKind::FinishTask {
            output: None,
            error: Some(TaskError::Stopped(reason).to_string()),
            usage: Usage::default(),
        };
        let e = Event::new(self.task_id.clone(), ctx.run_id.clone(), kind);
        ctx.bus.apublish_event(&e).await;
        ctx.bus.aflush().await;
        true
    }
}

struct ToolFunction {
    tool: ToolHandle,
    activity: String,
    validator: Arc<jsonschema::Validator>,
}

/// A prompt task. Cheap to clone; a clone shares the driver, tools and memory.
#[derive(Clone)]
pub struct PromptTask {
    id: String,
    driver: Driver,
    input: String,
    tools: Vec<ToolHandle>,
    output_schema: Option<Value>,
    max_subtasks: usize,
    reflect_on_tool_use: bool,
    rules: Vec<String>,
    memory: Option<Arc<ConversationMemory>>,
    event_bus: Option<Arc<EventBus>>,
    stream: bool,
    runners: SubtaskRunners,
    /// The run in progress, for [`TaskStopper`].
    current: Arc<Mutex<Option<RunContext>>>,
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
            output_schema: None,
            max_subtasks: DEFAULT_MAX_SUBTASKS,
            reflect_on_tool_use: true,
            rules: Vec::new(),
            memory: None,
            event_bus: None,
            stream: false,
            runners: SubtaskRunners::default(),
            current: Arc::default(),
        }
    }

    /// Sets the task id (default: a fresh one).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Offers a tool to the model.
    pub fn tool(mut self, tool: ToolHandle) -> Self {
        self.tools.push(tool);
        self
    }

    /// Offers tools to the model.
    pub fn tools(mut self, tools: impl IntoIterator<Item = ToolHandle>) -> Self {
        self.tools.extend(tools);
        self
    }

    /// Requires the final answer to be JSON satisfying `schema`.
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
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
        TaskStopper {
            task_id: self.id.clone(),
            current: Arc::clone(&self.current),
        }
    }

    fn new_context(&self) -> RunContext {
        let ctx = RunContext {
            run_id: uuid::Uuid::new_v4().simple().to_string(),
            bus: self.bus(),
            state: Arc::default(),
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.clone());
        ctx
    }

    fn event(&self, ctx: &RunContext, kind: EventKind) -> Event {
        Event::new(self.id.clone(), ctx.run_id.clone(), kind)
    }

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
        Ok(())
    }

    fn functions(&self) -> Result<HashMap<String, ToolFunction>, TaskError> {
        let mut out = HashMap::new();
        for tool in &self.tools {
            let spec = tool.spec();
            for a in &spec.activities {
                let name = format!("{}_{}", spec.name, a.name);
                let Some(validator) = tool.validator(&a.name) else {
                    continue; // every activity has one, compiled when the tool was made
                };
                let f = ToolFunction {
                    tool: tool.clone(),
                    activity: a.name.clone(),
                    validator: Arc::clone(validator),
                };
                if out.insert(name.clone(), f).is_some() {
                    return Err(TaskError::Tool {
                        tool: tool.plugin().id().to_owned(),
                        message: format!("two tools offer the function `{name}`"),
                    });
                }
            }
        }
        Ok(out)
    }

    fn function_specs(&self) -> Vec<FunctionSpec> {
        self.tools
            .iter()
            .flat_map(|t| {
                let spec = t.spec();
                spec.activities.iter().map(move |a| FunctionSpec {
                    name: format!("{}_{}", spec.name, a.name),
                    description: a.description.clone(),
                    parameters: a.parameters.clone(),
                })
            })
            .collect()
    }

    fn machine(&self) -> Result<Machine, TaskError> {
        let output_validator = match &self.output_schema {
            Some(s) => {
                Some(Arc::new(jsonschema::validator_for(s).map_err(|e| {
                    TaskError::InvalidOutputSchema(e.to_string())
                })?))
            }
            None => None,
        };
        let mut messages = Vec::new();
        if !self.rules.is_empty() {
            let rules: Vec<String> = self.rules.iter().map(|r| format!("- {r}")).collect();
            messages.push(Message::system(format!("Rules:\n{}", rules.join("\n"))));
        }
        if let Some(m) = &self.memory {
            messages.extend(m.messages());
        }
        messages.push(Message::user(self.input.clone()));
        Ok(Machine {
            task_id: self.id.clone(),
            messages,
            functions: self.function_specs(),
            output_schema: self.output_schema.clone(),
            output_validator,
            max_subtasks: self.max_subtasks,
            reflect: self.reflect_on_tool_use,
            subtasks: 0,
            usage: Usage::default(),
        })
    }

    // ---------------------------------------------------------------- sync path

    /// Runs the task on the sync path: `before_run`, `try_run`, `after_run`.
    ///
    /// # Errors
    /// A [`TaskError`]; the finish event carries it too.
    pub fn run(&self) -> Result<TaskOutput, TaskError> {
        self.require(Mode::Sync, "run()")?;
        let ctx = self.new_context();
        ctx.bus.check_sync()?;
        self.before_run(&ctx)?;
        let result = self.try_run(&ctx);
        self.after_run(&ctx, &result)?;
        result
    }

    /// Publishes the start event.
    ///
    /// # Errors
    /// When the bus has an async-only listener.
    pub fn before_run(&self, ctx: &RunContext) -> Result<(), TaskError> {
        let e = self.event(
            ctx,
            EventKind::StartTask {
                input: self.input.clone(),
            },
        );
        Ok(ctx.bus.publish_event(&e)?)
    }

    /// Publishes the finish event (with the output or the error), remembers the run, and
    /// flushes the listener drivers.
    ///
    /// # Errors
    /// When the bus has an async-only listener.
    pub fn after_run(
        &self,
        ctx: &RunContext,
        result: &Result<TaskOutput, TaskError>,
    ) -> Result<(), TaskError> {
        if !ctx.claim_finish() {
            return Ok(()); // a runner stopped the run and published its finish
        }
        let e = self.event(ctx, self.finish_kind(result));
        let published = ctx.bus.publish_event(&e);
        ctx.bus.flush();
        Ok(published?)
    }

    fn finish_kind(&self, result: &Result<TaskOutput, TaskError>) -> EventKind {
        match result {
            Ok(out) => {
                if let Some(m) = &self.memory {
                    m.add(&self.input, &out.text);
                }
                EventKind::FinishTask {
                    output: Some(out.text.clone()),
                    error: None,
                    usage: out.usage,
                }
            }
            Err(e) => EventKind::FinishTask {
                output: None,
                error: Some(e.to_string()),
                usage: Usage::default(),
            },
        }
    }

    /// The loop, driven with blocking calls.
    ///
    /// # Errors
    /// A [`TaskError`].
    pub fn try_run(&self, ctx: &RunContext) -> Result<TaskOutput, TaskError> {
        let mut m = self.machine()?;
        let mut next = m.start();
        loop {
            ctx.check_stopped()?;
            next = match next {
                Next::Prompt(req) => m.on_response(self.prompt_sync(ctx, &req)?),
                Next::Actions(sub) => {
                    self.publish(ctx, start_actions(&sub))?;
                    let results = match &self.runners.actions {
                        Some(r) => r(self, &sub),
                        None => self.default_run_actions_subtasks(&sub),
                    };
                    self.publish(ctx, finish_actions(&sub, &results))?;
                    m.on_actions(results)
                }
                Next::Validate(text) => {
                    let v = match &self.runners.output_schema {
                        Some(r) => r(self, &text),
                        None => m.validate(&text),
                    };
                    m.on_validation(text, v)
                }
                Next::Done(out) => return Ok(out),
                Next::Fail(e) => return Err(e),
            };
        }
    }

    fn publish(&self, ctx: &RunContext, kind: EventKind) -> Result<(), TaskError> {
        if ctx.is_finished() {
            return Ok(()); // stopped from outside: the run's events have ended
        }
        Ok(ctx.bus.publish_event(&self.event(ctx, kind))?)
    }

    fn prompt_sync(
        &self,
        ctx: &RunContext,
        req: &PromptRequest,
    ) -> Result<PromptResponse, TaskError> {
        self.publish(ctx, start_prompt(&self.driver, req))?;
        let result = if self.stream {
            self.driver
                .stream(req)
                .map_err(TaskError::from)
                .and_then(|s| {
                    let mut agg = StreamAggregator::new(self.driver.plugin().id());
                    for delta in s.blocking_iter() {
                        ctx.check_stopped()?;
                        if let Some(chunk) = agg.push(delta?) {
                            self.publish(ctx, chunk)?;
                        }
                    }
                    agg.finish()
                })
        } else {
            self.driver.prompt(req).map_err(TaskError::from)
        };
        self.publish(ctx, finish_prompt(&result))?;
        result
    }

    /// Runs the tool calls of a subtask one after the other (the default sync runner).
    pub fn default_run_actions_subtasks(&self, subtask: &ActionsSubtask) -> Vec<Message> {
        let functions = match self.functions() {
            Ok(f) => f,
            Err(e) => {
                return subtask
                    .calls
                    .iter()
                    .map(|c| error_result(c, e.to_string()))
                    .collect();
            }
        };
        subtask
            .calls
            .iter()
            .map(|call| match prepare(&functions, call) {
                Err(msg) => msg,
                Ok((f, inv)) => {
                    let out = if f.tool.plugin().can(Kind::Tool, Mode::Sync) {
                        f.tool.call(&inv)
                    } else {
                        futures::executor::block_on(f.tool.call_async(&inv))
                    };
                    tool_message(call, out)
                }
            })
            .collect()
    }

    /// Validates output text against the output schema (the default sync runner).
    pub fn default_run_output_schema_validation_subtasks(&self, text: &str) -> ValidationResult {
        match self.machine() {
            Ok(m) => m.validate(text),
            Err(e) => Err(vec![e.to_string()]),
        }
    }

    // ---------------------------------------------------------------- async path

    /// Runs the task on the async path: `async_before_run`, `async_try_run`, `async_after_run`.
    ///
    /// # Errors
    /// A [`TaskError`]; the finish event carries it too.
    pub async fn async_run(&self) -> Result<TaskOutput, TaskError> {
        self.require(Mode::Async, "async_run()")?;
        let ctx = self.new_context();
        self.async_before_run(&ctx).await;
        let result = self.async_try_run(&ctx).await;
        self.async_after_run(&ctx, &result).await;
        result
    }

    /// Publishes the start event.
    pub async fn async_before_run(&self, ctx: &RunContext) {
        let e = self.event(
            ctx,
            EventKind::StartTask {
                input: self.input.clone(),
            },
        );
        ctx.bus.apublish_event(&e).await;
    }

    /// Publishes the finish event, remembers the run, and flushes the listener drivers.
    pub async fn async_after_run(&self, ctx: &RunContext, result: &Result<TaskOutput, TaskError>) {
        if !ctx.claim_finish() {
            return;
        }
        let e = self.event(ctx, self.finish_kind(result));
        ctx.bus.apublish_event(&e).await;
        ctx.bus.aflush().await;
    }

    /// The loop, driven with awaits.
    ///
    /// # Errors
    /// A [`TaskError`].
    pub async fn async_try_run(&self, ctx: &RunContext) -> Result<TaskOutput, TaskError> {
        let mut m = self.machine()?;
        let mut next = m.start();
        loop {
            ctx.check_stopped()?;
            next = match next {
                Next::Prompt(req) => m.on_response(self.prompt_async(ctx, &req).await?),
                Next::Actions(sub) => {
                    self.apublish(ctx, start_actions(&sub)).await;
                    let results = match (&self.runners.async_actions, &self.runners.actions) {
                        (Some(r), _) => r(self.clone(), sub.clone()).await,
                        (None, Some(r)) => {
                            let (r, task, s) = (Arc::clone(r), self.clone(), sub.clone());
                            run_blocking(move || r(&task, &s)).await
                        }
                        (None, None) => self.async_default_run_actions_subtasks(&sub).await,
                    };
                    self.apublish(ctx, finish_actions(&sub, &results)).await;
                    m.on_actions(results)
                }
                Next::Validate(text) => {
                    let v = match (
                        &self.runners.async_output_schema,
                        &self.runners.output_schema,
                    ) {
                        (Some(r), _) => r(self.clone(), text.clone()).await,
                        (None, Some(r)) => {
                            let (r, task, t) = (Arc::clone(r), self.clone(), text.clone());
                            run_blocking(move || r(&task, &t)).await
                        }
                        (None, None) => {
                            self.async_default_run_output_schema_validation_subtasks(&text)
                                .await
                        }
                    };
                    m.on_validation(text, v)
                }
                Next::Done(out) => return Ok(out),
                Next::Fail(e) => return Err(e),
            };
        }
    }

    async fn apublish(&self, ctx: &RunContext, kind: EventKind) {
        if ctx.is_finished() {
            return;
        }
        ctx.bus.apublish_event(&self.event(ctx, kind)).await;
    }

    async fn prompt_async(
        &self,
        ctx: &RunContext,
        req: &PromptRequest,
    ) -> Result<PromptResponse, TaskError> {
        self.apublish(ctx, start_prompt(&self.driver, req)).await;
        let result = if self.stream {
            match self.driver.stream(req) {
                Err(e) => Err(e.into()),
                Ok(mut s) => {
                    let mut agg = StreamAggregator::new(self.driver.plugin().id());
                    let mut failed = None;
                    while let Some(delta) = s.next().await {
                        match delta {
                            Ok(d) => {
                                if let Some(chunk) = agg.push(d) {
                                    self.apublish(ctx, chunk).await;
                                }
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    match failed {
                        Some(e) => Err(e.into()),
                        None => agg.finish(),
                    }
                }
            }
        } else {
            self.driver.prompt_async(req).await.map_err(TaskError::from)
        };
        self.apublish(ctx, finish_prompt(&result)).await;
        result
    }

    /// Runs the tool calls of a subtask concurrently (the default async runner): async tools
    /// awaited together, sync-only tools on blocking threads; results in call order.
    pub async fn async_default_run_actions_subtasks(
        &self,
        subtask: &ActionsSubtask,
    ) -> Vec<Message> {
        let functions = match self.functions() {
            Ok(f) => f,
            Err(e) => {
                return subtask
                    .calls
                    .iter()
                    .map(|c| error_result(c, e.to_string()))
                    .collect();
            }
        };
        let calls = subtask.calls.iter().map(|call| {
            let prepared = prepare(&functions, call).map(|(f, inv)| (f.tool.clone(), inv));
            async move {
                match prepared {
                    Err(msg) => msg,
                    Ok((tool, inv)) => {
                        let out = if tool.plugin().can(Kind::Tool, Mode::Async) {
                            tool.call_async(&inv).await
                        } else {
                            run_blocking(move || tool.call(&inv)).await
                        };
                        tool_message(call, out)
                    }
                }
            }
        });
        futures::future::join_all(calls).await
    }

    /// Validates output text against the output schema (the default async runner; validation
    /// is CPU-only, so it runs in place).
    pub async fn async_default_run_output_schema_validation_subtasks(
        &self,
        text: &str,
    ) -> ValidationResult {
        self.default_run_output_schema_validation_subtasks(text)
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

fn error_result(call: &ToolCall, message: String) -> Message {
    Message::tool_result(call.id.clone(), message, true)
}

/// Resolves a call to its tool and checks its arguments; an error is the tool message to send
/// back to the model.
fn prepare<'a>(
    functions: &'a HashMap<String, ToolFunction>,
    call: &ToolCall,
) -> Result<(&'a ToolFunction, ToolInvocation), Message> {
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
    let errors: Vec<String> = f
        .validator
        .iter_errors(&call.arguments)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect();
    if !errors.is_empty() {
        return Err(error_result(
            call,
            format!(
                "invalid arguments for `{}`: {}",
                call.name,
                errors.join("; ")
            ),
        ));
    }
    Ok((
        f,
        ToolInvocation {
            schema_version: WIRE_VERSION,
            activity: f.activity.clone(),
            input: call.arguments.clone(),
            call_id: call.id.clone(),
        },
    ))
}

fn tool_message(call: &ToolCall, out: Result<plugin_api::wire::ToolOutput, CallError>) -> Message {
    match out {
        Ok(o) => Message::tool_result(call.id.clone(), o.content, o.is_error),
        Err(e) => error_result(call, e.to_string()),
    }
}

/// What to do next.
enum Next {
    Prompt(PromptRequest),
    Actions(ActionsSubtask),
    Validate(String),
    Done(TaskOutput),
    Fail(TaskError),
}

/// The loop's state and decisions. No I/O.
struct Machine {
    task_id: String,
    messages: Vec<Message>,
    functions: Vec<FunctionSpec>,
    output_schema: Option<Value>,
    output_validator: Option<Arc<jsonschema::Validator>>,
    max_subtasks: usize,
    reflect: bool,
    subtasks: usize,
    usage: Usage,
}

impl Machine {
    fn start(&mut self) -> Next {
        Next::Prompt(self.request())
    }

    fn request(&self) -> PromptRequest {
        PromptRequest {
            schema_version: WIRE_VERSION,
            messages: self.messages.clone(),
            tools: self.functions.clone(),
            output_schema: self.output_schema.clone(),
            task_id: Some(self.task_id.clone()),
        }
    }

    fn done(&self, text: String, json: Option<Value>) -> Next {
        Next::Done(TaskOutput {
            text,
            json,
            usage: self.usage,
            subtasks: self.subtasks,
        })
    }

    /// Counts a subtask; `Some(fail)` when over the limit.
    fn next_subtask(&mut self, last_errors: Vec<String>) -> Option<Next> {
        self.subtasks += 1;
        (self.subtasks > self.max_subtasks).then_some(Next::Fail(TaskError::MaxSubtasks {
            limit: self.max_subtasks,
            last_errors,
        }))
    }

    fn on_response(&mut self, resp: PromptResponse) -> Next {
        self.usage.add(resp.usage);
        let mut message = resp.message;
        message.role = Role::Assistant;
        let calls = message.tool_calls.clone();
        let text = message.content.clone();
        self.messages.push(message);
        if !calls.is_empty() {
            if let Some(fail) = self.next_subtask(Vec::new()) {
                return fail;
            }
            return Next::Actions(ActionsSubtask {
                id: format!("{}-{}", self.task_id, self.subtasks),
                calls,
            });
        }
        if self.output_schema.is_some() {
            return Next::Validate(text);
        }
        self.done(text, None)
    }

    fn on_actions(&mut self, results: Vec<Message>) -> Next {
        let joined = results
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        self.messages.extend(results);
        if self.reflect {
            Next::Prompt(self.request())
        } else {
            self.done(joined, None)
        }
    }

    fn validate(&self, text: &str) -> ValidationResult {
        let Some(v) = &self.output_validator else {
            return Ok(Value::Null);
        };
        let value: Value = serde_json::from_str(strip_fences(text))
            .map_err(|e| vec![format!("not valid JSON: {e}")])?;
        let errors: Vec<String> = v
            .iter_errors(&value)
            .map(|e| format!("at `{}`: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(errors)
        }
    }

    fn on_validation(&mut self, text: String, result: ValidationResult) -> Next {
        match result {
            Ok(json) => self.done(text, Some(json)),
            Err(errors) => {
                if let Some(fail) = self.next_subtask(errors.clone()) {
                    return fail;
                }
                self.messages.push(Message::user(format!(
                    "Your answer must be JSON that satisfies the output schema. Fix these errors and answer again \
                     with the JSON only:\n- {}",
                    errors.join("\n- ")
                )));
                Next::Prompt(self.request())
            }
        }
    }
}

/// The text inside a ```json fence, if the model wrapped its answer in one.
fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(t)
}

/// Assembles stream deltas into a response, and turns each into its chunk event.
struct StreamAggregator {
    plugin: String,
    text: String,
    /// Tool-call parts by index: ordered, and indices need not be contiguous.
    calls: std::collections::BTreeMap<u32, (Option<String>, Option<String>, String)>,
    usage: Usage,
    finish: Option<String>,
}

impl StreamAggregator {
    fn new(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
            text: String::new(),
            calls: Default::default(),
            usage: Usage::default(),
            finish: None,
        }
    }

    fn push(&mut self, delta: StreamDelta) -> Option<EventKind> {
        match delta {
            StreamDelta::Text { text } => {
                self.text.push_str(&text);
                Some(EventKind::TextChunk { token: text })
            }
            StreamDelta::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                let slot = self.calls.entry(index).or_default();
                if id.is_some() {
                    slot.0 = id.clone();
                }
                if name.is_some() {
                    slot.1 = name.clone();
                }
                slot.2.push_str(&arguments);
                Some(EventKind::ActionChunk {
                    index,
                    tag: id,
                    name,
                    partial_input: arguments,
                })
            }
            StreamDelta::Usage { usage } => {
                self.usage = usage;
                None
            }
            StreamDelta::Finish { reason } => {
                self.finish = Some(reason);
                None
            }
            // The failed attempt's text, calls and usage are void; listeners are told so.
            StreamDelta::Restart { attempt, reason } => {
                *self = Self::new(&self.plugin);
                Some(EventKind::PromptRetry { attempt, reason })
            }
        }
    }

    fn finish(self) -> Result<PromptResponse, TaskError> {
        let mut message = Message::assistant(self.text);
        for (i, (id, name, args)) in self.calls.into_values().enumerate() {
            let Some(name) = name else {
                return Err(TaskError::Stream {
                    plugin: self.plugin,
                    message: format!("tool call #{i} has no name"),
                });
            };
            // Arguments that are not JSON travel as a JSON string, as drivers do for a whole
            // response: the tool dispatch sends the problem back to the model for another turn.
            let arguments = if args.trim().is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_str(&args).unwrap_or(Value::String(args))
            };
            message.tool_calls.push(ToolCall {
                id: id.unwrap_or_else(|| format!("call_{i}")),
                name,
                arguments,
            });
        }
        Ok(PromptResponse {
            schema_version: WIRE_VERSION,
            message,
            usage: self.usage,
            finish_reason: self.finish,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_stripped() {
        assert_eq!(strip_fences("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_fences(" {\"a\":1} "), "{\"a\":1}");
    }

    #[test]
    fn stream_aggregation_assembles_interleaved_tool_calls() {
        let mut agg = StreamAggregator::new("p");
        let deltas = [
            StreamDelta::Text { text: "Hi".into() },
            StreamDelta::ToolCall {
                index: 1,
                id: Some("b".into()),
                name: Some("B".into()),
                arguments: "{\"y\":".into(),
            },
            StreamDelta::ToolCall {
                index: 0,
                id: Some("a".into()),
                name: Some("A".into()),
                arguments: "{\"x\"".into(),
            },
            StreamDelta::ToolCall {
                index: 0,
                id: None,
                name: None,
                arguments: ":1}".into(),
            },
            StreamDelta::ToolCall {
                index: 1,
                id: None,
                name: None,
                arguments: "2}".into(),
            },
            StreamDelta::Usage {
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                },
            },
        ];
        let events: Vec<_> = deltas.into_iter().filter_map(|d| agg.push(d)).collect();
        assert_eq!(events.len(), 5);
        let r = agg.finish().unwrap();
        assert_eq!(r.message.content, "Hi");
        assert_eq!(
            r.message.tool_calls[0].arguments,
            serde_json::json!({"x": 1})
        );
        assert_eq!(
            r.message.tool_calls[1].arguments,
            serde_json::json!({"y": 2})
        );
        assert_eq!(r.usage.output_tokens, 4);
    }

    #[test]
    fn sparse_tool_call_indices_and_usage_snapshots() {
        // Anthropic numbers content blocks: text at 0, tools at 1 and 3.
        let mut agg = StreamAggregator::new("p");
        for d in [
            StreamDelta::Usage {
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 1,
                },
            },
            StreamDelta::ToolCall {
                index: 3,
                id: Some("t3".into()),
                name: Some("B".into()),
                arguments: String::new(),
            },
            StreamDelta::ToolCall {
                index: 1,
                id: Some("t1".into()),
                name: Some("A".into()),
                arguments: "{}".into(),
            },
            StreamDelta::Usage {
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 7,
                },
            },
        ] {
            agg.push(d);
        }
        let r = agg.finish().unwrap();
        let ids: Vec<&str> = r.message.tool_calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["t1", "t3"]);
        assert_eq!(r.message.tool_calls[1].arguments, serde_json::json!({}));
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (10, 7));
    }

    #[test]
    fn malformed_tool_call_arguments_travel_as_a_string_for_the_model_to_fix() {
        let mut agg = StreamAggregator::new("p");
        agg.push(StreamDelta::ToolCall {
            index: 0,
            id: None,
            name: Some("A".into()),
            arguments: "{\"x\":".into(),
        });
        let r = agg.finish().unwrap();
        assert_eq!(
            r.message.tool_calls[0].arguments,
            Value::String("{\"x\":".into())
        );
    }
}

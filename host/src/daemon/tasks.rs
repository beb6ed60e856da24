//! `POST /v1/tasks`: the request built into its task (by [`TaskSpec`], the one path), run on
//! its path until it ends or is stopped, and answered as JSON or as a stream of SSE events
//! that ends with the task's `FinishTaskEvent`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use plugin_api::wire::{Event, EventKind};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{AppState, api_error};
use crate::conversation::{ConversationError, Conversations};
use crate::error::{CallError, ErrorKind};
use crate::events::{EventBus, EventListener, HandlerResult};
use crate::results::{Claim, Recorder, TaskRecord, TaskState, wait_ended};
use crate::spec::{BuiltTask, SpecError, TaskSpec};
use crate::task::{PromptTask, StopReason, TaskError, TaskOutput};

/// How a task run ended, as the spawned future reports it.
pub(crate) enum Ended {
    /// The task ran to its end (its own finish event went out).
    Done(Result<TaskOutput, TaskError>),
    /// The daemon stopped it (its finish event went out with the reason).
    Stopped(StopReason),
}

/// The text that replaces a driver error when the request chose the URL: what the upstream
/// said may be an internal service's reply, and the caller may not read it.
const WITHHELD: &str = "the upstream's reply is withheld because this request chose the URL";

/// The status and grip error type of a task that failed.
pub(super) fn task_error_status(e: &TaskError) -> (StatusCode, &'static str) {
    match e {
        TaskError::Driver(CallError {
            kind: ErrorKind::Timeout,
            ..
        }) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        TaskError::Driver(_) | TaskError::Stream { .. } => {
            (StatusCode::BAD_GATEWAY, "driver_error")
        }
        TaskError::MaxSubtasks { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "max_subtasks_exceeded")
        }
        TaskError::MissingCapability { .. } | TaskError::AsyncRunnerOnSyncPath { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "missing_capability")
        }
        // The tools asked for cannot be offered together (two offer one function name).
        TaskError::Tool { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_tools"),
        TaskError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        TaskError::InvalidOutputSchema(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        TaskError::Stopped(StopReason::TimedOut { .. }) => {
            (StatusCode::GATEWAY_TIMEOUT, "task_timeout")
        }
        TaskError::Stopped(StopReason::Shutdown) => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// What a failed task's error says to the caller (the upstream's words withheld when the
/// request chose the URL).
pub(super) fn task_error_message(e: &TaskError, withhold: bool) -> String {
    match e {
        TaskError::Driver(c) if withhold => format!(
            "prompt driver `{}` {} failed ({} error): {WITHHELD}",
            c.plugin, c.operation, c.kind
        ),
        TaskError::Stream { plugin, .. } if withhold => {
            format!("prompt driver `{plugin}` stream failed: {WITHHELD}")
        }
        _ => e.to_string(),
    }
}

fn task_error_body(e: &TaskError, task_id: &str, withhold: bool) -> (StatusCode, Value) {
    let (status, kind) = task_error_status(e);
    (
        status,
        error_body(kind, &task_error_message(e, withhold), task_id),
    )
}

/// An error's JSON body, naming the task.
pub(crate) fn error_body(kind: &str, message: &str, task_id: &str) -> Value {
    json!({"error": {"type": kind, "message": message, "param": null, "code": null},
           "task_id": task_id})
}

/// The request's body as a [`TaskSpec`].
#[allow(clippy::result_large_err)] // a Response is the error here, built once per request
pub(crate) fn parse_spec(body: &Bytes) -> Result<TaskSpec, Response> {
    let bad = |msg: String| api_error(StatusCode::BAD_REQUEST, "invalid_request", msg);
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path == "?" || e.inner().is_syntax() || e.inner().is_eof() {
            bad(format!("malformed request body: {}", e.inner()))
        } else {
            bad(format!("field `{path}`: {}", e.inner()))
        }
    })
}

/// Builds `spec` into its task by the one path every front uses; on the blocking pool when a
/// plugin is process-isolated or an MCP server: making its instances is a round trip to its
/// child (a restart, at worst, bounded by the call deadline), or a wait for a server that is
/// starting (bounded by its `init_timeout_secs`), which must not hold an async worker. In process it is
/// a few FFI calls, made in place. Errors are the front's to render.
pub(crate) async fn build(state: &Arc<AppState>, spec: TaskSpec) -> Result<BuiltTask, SpecError> {
    if !state.any_isolated {
        return spec.build(&state.registry, &state.host, &**state);
    }
    let st = Arc::clone(state);
    tokio::task::spawn_blocking(move || spec.build(&st.registry, &st.host, &*st))
        .await
        .unwrap_or_else(|e| {
            Err(SpecError::Internal(format!(
                "building the task failed: {e}"
            )))
        })
}

/// The status and grip error type of a spec error, counting plugin failures.
pub(crate) fn spec_error_status(state: &AppState, e: &SpecError) -> (StatusCode, &'static str) {
    match e {
        SpecError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        SpecError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        SpecError::NotCapable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "missing_capability"),
        SpecError::DriverConfig(c) => {
            state.metrics.plugin_error(&c.plugin);
            (StatusCode::BAD_REQUEST, "invalid_request")
        }
        SpecError::Tool(c) => {
            state.metrics.plugin_error(&c.plugin);
            (StatusCode::BAD_GATEWAY, "plugin_error")
        }
        SpecError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// A sync listener feeding the metrics (events, upstream latency) and, for a streaming
/// request, the SSE relay. Sync, so it serves both paths.
fn request_listener(
    state: &Arc<AppState>,
    relay: Option<mpsc::UnboundedSender<Event>>,
) -> EventListener {
    let state = Arc::clone(state);
    let prompt_started = std::sync::Mutex::new(None::<Instant>);
    EventListener::on_event("daemon", move |e: Event| -> HandlerResult {
        state.metrics.events.inc();
        match &e.kind {
            EventKind::StartPrompt { .. } => {
                *prompt_started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            EventKind::FinishPrompt { .. } => {
                if let Some(t) = prompt_started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    state
                        .metrics
                        .upstream_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            EventKind::PromptRetry { .. } => {
                state.metrics.prompt_retries.inc();
            }
            _ => {}
        }
        if let Some(tx) = &relay {
            // The client may be gone; the task then gets stopped, nothing to do here.
            let _ = tx.send(e);
        }
        Ok(None)
    })
}

/// One SSE frame; with `withhold`, driver error text in finish events is replaced, and with
/// `output`, the finish event also carries what the JSON response would (`json`, `subtasks`).
/// The event with the upstream's words replaced by [`WITHHELD`], for a request that chose the
/// URL; `None` when the event carries none.
fn withheld(kind: &EventKind) -> Option<EventKind> {
    let error = Some(WITHHELD.to_owned());
    match kind {
        EventKind::FinishPrompt {
            error: Some(_),
            output,
            usage,
        } => Some(EventKind::FinishPrompt {
            output: output.clone(),
            usage: *usage,
            error,
        }),
        EventKind::FinishTask {
            error: Some(e),
            output,
            usage,
        } if !e.starts_with("task stopped:") => Some(EventKind::FinishTask {
            output: output.clone(),
            usage: *usage,
            error,
        }),
        EventKind::PromptRetry { attempt, .. } => Some(EventKind::PromptRetry {
            attempt: *attempt,
            reason: WITHHELD.to_owned(),
        }),
        _ => None,
    }
}

pub(crate) fn sse_frame(event: &Event, withhold: bool, output: Option<&TaskOutput>) -> Bytes {
    let redacted;
    let event = match withheld(&event.kind).filter(|_| withhold) {
        Some(kind) => {
            redacted = Event {
                kind,
                ..event.clone()
            };
            &redacted
        }
        None => event,
    };
    let data = match output {
        None => serde_json::to_string(event),
        Some(out) => serde_json::to_value(event).map(|mut v| {
            v["json"] = out.json.clone().unwrap_or(Value::Null);
            v["subtasks"] = json!(out.subtasks);
            v["tool_calls"] = json!(out.tool_calls);
            v["finish_reason"] = json!(out.finish_reason);
            v.to_string()
        }),
    }
    .unwrap_or_else(|_| "{}".into());
    Bytes::from(format!(
        "event: {}\ndata: {data}\n\n",
        event.kind.type_name()
    ))
}

/// The `Retry-After` of a refused task, in seconds (the SDKs honour it).
pub(crate) const RETRY_AFTER_SECS: HeaderValue = HeaderValue::from_static("1");

pub(crate) fn overloaded(state: &AppState) -> Response {
    state.metrics.outcome("rejected");
    let mut r = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "overloaded",
        format!(
            "{} tasks are running, the most this server runs at once; retry later",
            state.config.server.max_concurrent_tasks
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, RETRY_AFTER_SECS);
    r
}

pub(super) async fn run_task(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let mut spec = match request_spec(&state, body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    continue_trace(&mut spec, &headers);
    if let Some(front) = &state.queue {
        return super::queued::submit(&state, front, spec).await;
    }
    // The permit first: building may wait on a plugin's child, and a burst must not park a
    // blocking thread each while it does.
    let Ok(permit) = Arc::clone(&state.task_permits).try_acquire_owned() else {
        return overloaded(&state);
    };
    run_here(&state, spec, permit).await
}

/// The request's `traceparent` header, when well formed, is the trace the task continues (a
/// malformed one is ignored, as W3C trace context has it).
pub(crate) fn continue_trace(spec: &mut TaskSpec, headers: &HeaderMap) {
    if let Some(tp) = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|t| crate::telemetry::is_valid_traceparent(t))
    {
        spec.traceparent = Some(tp.to_owned());
    }
}

/// The request's body as a spec, or the response refusing it.
#[allow(clippy::result_large_err)] // a Response is the error here, built once per request
fn request_spec(
    state: &AppState,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<TaskSpec, Response> {
    match body {
        Ok(b) => parse_spec(&b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "request body is larger than {} bytes",
                state.config.server.max_body_bytes
            ),
        )),
        Err(e) => Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            e.body_text(),
        )),
    }
}

/// Runs `spec` in this daemon: its id claimed (a resubmitted id gets the first task's result),
/// its conversation held for it, then built and started, answered as the caller asked.
async fn run_here(
    state: &Arc<AppState>,
    mut spec: TaskSpec,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    // Before the id or the conversation is used as a key: they are the caller's.
    if let Err(e) = spec.check_fields(&**state) {
        return api_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
    }
    let wait = spec.wait.unwrap_or(true);
    // Only a task the caller will look for again is recorded: one given an id, or not waited
    // for. The rest cost no copy of their result.
    let recorded = spec.id.is_some() || !wait;
    let task_id = spec.id.get_or_insert_with(new_task_id).clone();
    let record = match recorded.then(|| state.results.claim(&task_id)) {
        Some(Claim::New(r)) => Some(r),
        Some(Claim::Existing(rx)) => return resubmitted(state, &task_id, rx, wait).await,
        None => None,
    };
    let (built, conversation) = match prepare(state, spec, 1).await {
        Ok(p) => p,
        Err(refusal) => return refuse(record, refusal),
    };
    let streaming = built.task.is_streaming() && wait;
    let hooks = Hooks {
        conversation,
        record,
        ..Hooks::default()
    };
    let mut started = start(state, built, permit, streaming, hooks);
    if !wait {
        let Started { join, client, .. } = started;
        // The task outlives this response: its "client" is the record now.
        tokio::spawn(async move {
            let _client = client;
            let _ = join.await;
        });
        return accepted(&task_id, TaskState::Running);
    }
    match started.relay.take() {
        Some(rx) => sse_response(started, rx),
        None => json_response(started).await,
    }
}

/// Holds the spec's conversation for this `attempt` of the task (its earlier turns go into
/// the spec) and builds the task: the task and its hold, or the status and body refusing it
/// (the conversation given back). The one way a daemon or a worker readies a task.
pub(crate) async fn prepare(
    state: &Arc<AppState>,
    mut spec: TaskSpec,
    attempt: u32,
) -> Result<(BuiltTask, Option<ConversationTurn>), (StatusCode, Value)> {
    let task_id = spec.id.clone().unwrap_or_default();
    let conversation = match &spec.conversation_id {
        Some(c) => match state.conversations.begin(c, &task_id, attempt).await {
            Ok(turns) => {
                spec.earlier_turns = turns;
                Some(ConversationTurn::new(
                    state,
                    c,
                    &task_id,
                    attempt,
                    &spec.input,
                ))
            }
            Err(e) => return Err(conversation_error_body(&e, &task_id)),
        },
        None => None,
    };
    match build(state, spec).await {
        Ok(built) => Ok((built, conversation)),
        Err(e) => {
            if let Some(c) = conversation {
                c.release(None).await;
            }
            let (status, kind) = spec_error_status(state, &e);
            Err((status, error_body(kind, &e.to_string(), &task_id)))
        }
    }
}

/// A fresh task id.
pub fn new_task_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Records a task refused before it started, and answers with that.
fn refuse(record: Option<Recorder>, (status, body): (StatusCode, Value)) -> Response {
    if let Some(r) = record {
        r.finish(status.as_u16(), body.clone());
    }
    (status, axum::Json(body)).into_response()
}

/// `202 Accepted`: the task runs; its result is at `GET /v1/tasks/{id}`.
pub(crate) fn accepted(task_id: &str, state: TaskState) -> Response {
    let mut r = (
        StatusCode::ACCEPTED,
        axum::Json(json!({"task_id": task_id, "state": state})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/tasks/{task_id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(task_id) {
        r.headers_mut().insert("x-grip-task-id", v);
    }
    r
}

/// A submission whose id is taken: never a second run. The first task's result once it has
/// ended (as JSON, even to a streaming request: its events went to the first caller), or 202.
async fn resubmitted(
    state: &AppState,
    task_id: &str,
    rx: tokio::sync::watch::Receiver<TaskRecord>,
    wait: bool,
) -> Response {
    let record = if wait {
        let timeout = Duration::from_millis(state.config.server.task_timeout_ms);
        wait_ended(rx, timeout).await
    } else {
        rx.borrow().clone()
    };
    record_response(task_id, &record)
}

/// A task's record as the response: its stored response once ended, else 202 and its state.
pub(crate) fn record_response(task_id: &str, record: &TaskRecord) -> Response {
    let (status, body) = record.answer(task_id);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let path = match body["path"].as_str() {
        Some("sync") => Some(HeaderValue::from_static("sync")),
        Some("async") => Some(HeaderValue::from_static("async")),
        _ => None,
    };
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(task_id) {
        r.headers_mut().insert("x-grip-task-id", v);
    }
    if let Some(p) = path {
        r.headers_mut().insert("x-grip-path", p);
    }
    // Which worker ran it, on which delivery (a queue's records say).
    if let Some(w) = record
        .worker
        .as_deref()
        .and_then(|w| HeaderValue::from_str(w).ok())
    {
        r.headers_mut().insert("x-grip-worker", w);
    }
    if record.run() > 0 {
        r.headers_mut()
            .insert("x-grip-attempt", HeaderValue::from(record.run()));
    }
    r
}

/// `GET /v1/tasks/{id}`: the task's record (done, running, queued), from this daemon's memory or
/// the queue's store.
pub(super) async fn get_task(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    // No key outside the names a task may have is looked up (nor echoed back at length).
    if !crate::spec::is_valid_id(&id) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a task id is 1 to 64 characters of A-Z a-z 0-9 _ -",
        );
    }
    let record = match &state.queue {
        Some(front) => match front.record(&id).await {
            Ok(r) => r,
            Err(e) => return super::queued::unavailable(&e),
        },
        None => state.results.get(&id),
    };
    match record {
        Some(r) => record_response(&id, &r),
        None => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no task `{id}` is known here (records are kept for a while after a task ends)"
            ),
        ),
    }
}

/// The status and body of a conversation that cannot be continued now.
pub(crate) fn conversation_error_body(e: &ConversationError, task_id: &str) -> (StatusCode, Value) {
    let (status, kind) = match e {
        ConversationError::Busy { .. } => (StatusCode::CONFLICT, "conversation_busy"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "conversation_store"),
    };
    (status, error_body(kind, &e.to_string(), task_id))
}

/// A task's hold on its conversation, given back when it ends, with its turn if it succeeded.
/// Dropped unreleased (the run panicked, or the request went away while its task was being
/// built), it gives the conversation back without a turn, at once rather than when the lease
/// runs out.
pub(crate) struct ConversationTurn {
    hold: Option<Hold>,
}

struct Hold {
    store: Arc<Conversations>,
    conversation: String,
    task: String,
    attempt: u32,
    input: String,
}

impl Hold {
    async fn end(self, answer: Option<&str>) {
        let turn = answer.map(|a| (self.input.as_str(), a));
        let ended = self
            .store
            .end(&self.conversation, &self.task, self.attempt, turn)
            .await;
        if let Err(e) = ended {
            tracing::error!(conversation = %self.conversation, "the task's turn is lost: {e}");
        }
    }
}

impl ConversationTurn {
    fn new(state: &AppState, conversation: &str, task: &str, attempt: u32, input: &str) -> Self {
        let hold = Hold {
            store: Arc::clone(&state.conversations),
            conversation: conversation.to_owned(),
            task: task.to_owned(),
            attempt,
            input: input.to_owned(),
        };
        Self { hold: Some(hold) }
    }

    /// Gives the conversation back: with the answer as its new turn, unless the task failed
    /// or ended asking its caller to run tools (no answer to remember).
    pub(crate) async fn release(mut self, ended: Option<&Ended>) {
        let answer = match ended {
            Some(Ended::Done(Ok(out))) if out.tool_calls.is_empty() => Some(out.text.as_str()),
            _ => None,
        };
        if let Some(hold) = self.hold.take() {
            hold.end(answer).await;
        }
    }
}

impl Drop for ConversationTurn {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(hold.end(None));
        }
    }
}

/// What a front adds around a task's run.
#[derive(Default)]
pub(crate) struct Hooks {
    /// Published on the task's bus before it starts (a retried task's `TaskRetryEvent`).
    pub(crate) first_event: Option<EventKind>,
    /// The conversation the task holds, given back when it ends.
    pub(crate) conversation: Option<ConversationTurn>,
    /// Where this daemon keeps the task's result for `GET /v1/tasks/{id}`.
    pub(crate) record: Option<Recorder>,
}

/// A task spawned on the daemon's tracker, and what its response needs.
pub(crate) struct Started {
    pub(crate) task_id: String,
    pub(crate) path: &'static str,
    pub(crate) withhold: bool,
    pub(crate) join: tokio::task::JoinHandle<Ended>,
    /// Dropped with the response (or the handler, when the client goes away first): the task
    /// then stops with "the client went away".
    pub(crate) client: oneshot::Sender<()>,
    /// The task's events, for an SSE response.
    pub(crate) relay: Option<mpsc::UnboundedReceiver<Event>>,
}

/// Adds the request's listeners (metrics and the SSE relay, then the global ones) and spawns
/// the task, which holds its permit until it ends.
pub(crate) fn start(
    state: &Arc<AppState>,
    built: BuiltTask,
    permit: tokio::sync::OwnedSemaphorePermit,
    relay: bool,
    hooks: Hooks,
) -> Started {
    let BuiltTask {
        task,
        use_async,
        driver_id,
        withhold,
    } = built;
    // Unbounded on purpose: a task never waits for its client (a waiting task would hold its
    // permit and its upstream connection). What it queues is bounded by the task's own output
    // and timeout; the body behind it is a small bounded channel.
    let (relay_tx, relay) = if relay {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let bus = Arc::new(EventBus::new());
    let mut guards = vec![bus.add_listener(request_listener(state, relay_tx))];
    guards.extend(
        state
            .global_listeners
            .iter()
            .map(|l| bus.add_listener(l.clone())),
    );
    let task = task.event_bus(Arc::clone(&bus));
    let task_id = task.id().to_owned();
    let path = if use_async { "async" } else { "sync" };
    let span = tracing::info_span!("task", task_id = %task_id, driver = %driver_id, path);
    let (client, client_rx) = oneshot::channel::<()>();
    let st = Arc::clone(state);
    let (id, first_bus) = (task_id.clone(), Arc::clone(&bus));
    let run = async move {
        let _permit = permit;
        let _guards = guards;
        if let Some(kind) = hooks.first_event {
            first_bus
                .apublish_event(&Event::new(id.clone(), "", kind))
                .await;
        }
        let ended = run_to_end(st, task, use_async, client_rx).await;
        // Before the run's end is told: a caller that got its answer may at once send the
        // conversation's next task.
        if let Some(c) = hooks.conversation {
            c.release(Some(&ended)).await;
        }
        if let Some(r) = hooks.record {
            let (status, body) = ended_outcome(&ended, &id, path, withhold);
            r.finish(status.as_u16(), body);
        }
        ended
    };
    Started {
        task_id,
        path,
        withhold,
        join: state.tasks.spawn(run.instrument(span)),
        client,
        relay,
    }
}

/// The task's events as SSE, its `FinishTaskEvent` last (sent once the run has ended and its
/// listeners flushed, with the result the JSON response would carry).
fn sse_response(started: Started, mut rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let Started {
        task_id,
        path,
        withhold,
        join,
        client,
        ..
    } = started;
    let body = async_stream_body(move |tx| async move {
        let _client = client;
        while let Some(event) = rx.recv().await {
            if matches!(event.kind, EventKind::FinishTask { .. }) {
                let ended = join.await;
                let output = match &ended {
                    Ok(Ended::Done(Ok(out))) => Some(out),
                    _ => None,
                };
                let _ = tx.send(Ok(sse_frame(&event, withhold, output))).await;
                return;
            }
            if tx
                .send(Ok(sse_frame(&event, withhold, None)))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = join.await;
    });
    let mut r = event_stream(body);
    let h = r.headers_mut();
    h.insert("x-grip-path", HeaderValue::from_static(path));
    h.insert(
        "x-grip-task-id",
        HeaderValue::from_str(&task_id).unwrap_or(HeaderValue::from_static("?")),
    );
    r
}

/// The task's result as JSON, once it has ended.
async fn json_response(started: Started) -> Response {
    let ended = started.join.await;
    drop(started.client);
    let (status, body) = outcome(&ended, &started.task_id, started.path, started.withhold);
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert("x-grip-path", HeaderValue::from_static(started.path));
    r
}

/// The status and JSON body that answer a task which ended so: the one rendering of a result,
/// for the JSON response, the daemon's record of it and a queue worker's.
pub(crate) fn outcome(
    ended: &Result<Ended, tokio::task::JoinError>,
    task_id: &str,
    path: &str,
    withhold: bool,
) -> (StatusCode, Value) {
    match ended {
        Ok(ended) => ended_outcome(ended, task_id, path, withhold),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body("internal", &format!("the task failed: {e}"), task_id),
        ),
    }
}

/// [`outcome`] of a run that ended.
pub(crate) fn ended_outcome(
    ended: &Ended,
    task_id: &str,
    path: &str,
    withhold: bool,
) -> (StatusCode, Value) {
    match ended {
        Ended::Done(Ok(out)) => (
            StatusCode::OK,
            json!({
                "task_id": task_id,
                "output": out.text,
                "json": out.json,
                "usage": out.usage,
                "subtasks": out.subtasks,
                "tool_calls": out.tool_calls,
                "finish_reason": out.finish_reason,
                "path": path,
            }),
        ),
        Ended::Done(Err(e)) => task_error_body(e, task_id, withhold),
        Ended::Stopped(reason) => task_error_body(&TaskError::Stopped(*reason), task_id, withhold),
    }
}

/// Runs `task` on its path until it ends, or until its client goes away, its time is up or the
/// host shuts down: then the work is dropped (a sync-path thread is left to stop at its next
/// step) and the task's finish event goes out with the reason.
async fn run_to_end(
    state: Arc<AppState>,
    task: PromptTask,
    use_async: bool,
    client_gone: oneshot::Receiver<()>,
) -> Ended {
    let timeout = Duration::from_millis(state.config.server.task_timeout_ms);
    let stopper = task.stopper();
    let mut shutdown = state.shutdown.subscribe();
    let tracker = Tracker::new(Arc::clone(&state));
    let started = Instant::now();
    tracing::info!("task started");
    let thread = Arc::new(SyncThread::default());
    let work = async {
        if use_async {
            task.async_run().await
        } else {
            let blocking = Arc::clone(&state.blocking_permits).acquire_owned().await;
            let (task, thread, st) = (task.clone(), Arc::clone(&thread), Arc::clone(&state));
            tokio::task::spawn_blocking(move || {
                let _blocking = blocking;
                thread.started();
                // Counted back however `run` ends, a panic included.
                let _returned = Returned(thread, st);
                task.run()
            })
            .await
            .unwrap_or_else(|join| {
                Err(TaskError::Internal(format!(
                    "the task thread failed: {join}"
                )))
            })
        }
    };
    let stop = async {
        tokio::select! {
            // Coarse: a task timeout is armed for every task and almost never fires.
            () = super::coarse_timer::sleep(timeout) => StopReason::TimedOut {
                after_ms: timeout.as_millis() as u64,
            },
            _ = client_gone => StopReason::ClientGone,
            _ = shutdown.wait_for(|s| *s) => StopReason::Shutdown,
        }
    };
    let outcome = tokio::select! {
        r = work => Ok(r),
        reason = stop => Err(reason),
    };
    let ended = match outcome {
        Ok(r) => Ended::Done(r),
        Err(reason) => {
            // The work future is dropped by now: nothing else publishes for this run. Its sync
            // thread, if any, may still be inside a plugin call that nothing can interrupt.
            thread.abandoned(&state);
            stopper.stop(reason).await;
            Ended::Stopped(reason)
        }
    };
    tracker.finish(&ended, started);
    ended
}

/// Whether a task's sync-path thread is running, has returned, or was left behind by its task
/// (timed out, cancelled) while still inside a plugin call: that thread keeps its blocking slot
/// until the call returns, and `grip_sync_threads_stuck` counts it meanwhile. Only process
/// isolation (`isolation = "process"`) can end such a call.
#[derive(Default)]
struct SyncThread(std::sync::atomic::AtomicU8);

impl SyncThread {
    const RUNNING: u8 = 1;
    const RETURNED: u8 = 2;
    const ABANDONED: u8 = 3;

    fn started(&self) {
        self.0
            .store(Self::RUNNING, std::sync::atomic::Ordering::Release);
    }

    fn returned(&self, state: &AppState) {
        use std::sync::atomic::Ordering::AcqRel;
        if self.0.swap(Self::RETURNED, AcqRel) == Self::ABANDONED {
            state.metrics.sync_threads_stuck.dec();
            tracing::info!("a sync-path thread left behind by its task returned; its slot is free");
        }
    }

    fn abandoned(&self, state: &AppState) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let was = self
            .0
            .compare_exchange(Self::RUNNING, Self::ABANDONED, AcqRel, Acquire);
        if was.is_ok() {
            let stuck = state.metrics.sync_threads_stuck.inc() + 1;
            tracing::warn!(
                stuck,
                of = state.config.server.blocking_threads,
                "the task ended with its sync-path thread still inside a plugin call; the thread keeps its slot until the call returns"
            );
        }
    }
}

/// Marks a task's sync-path thread returned when dropped.
struct Returned(Arc<SyncThread>, Arc<AppState>);

impl Drop for Returned {
    fn drop(&mut self) {
        self.0.returned(&self.1);
    }
}

/// Keeps the in-flight gauge right and records each task's outcome (a run dropped before it
/// ended, as when the runtime goes away, counts as cancelled).
struct Tracker {
    state: Arc<AppState>,
    finished: bool,
}

impl Tracker {
    fn new(state: Arc<AppState>) -> Self {
        state.metrics.in_flight.inc();
        Self {
            state,
            finished: false,
        }
    }

    fn finish(mut self, ended: &Ended, started: Instant) {
        self.finished = true;
        let m = &self.state.metrics;
        // Out of flight before the outcome shows: a scrape never sees the outcome counted
        // while the task still looks in flight.
        m.in_flight.dec();
        m.task_seconds.observe(started.elapsed().as_secs_f64());
        match ended {
            Ended::Done(Ok(_)) => {
                m.outcome("ok");
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "task finished"
                );
            }
            Ended::Done(Err(e)) => {
                m.outcome("error");
                if let TaskError::Driver(c) = e {
                    m.plugin_error(&c.plugin);
                }
                tracing::warn!("task failed: {e}");
            }
            Ended::Stopped(reason) => {
                m.outcome(match reason {
                    StopReason::ClientGone => "cancelled",
                    StopReason::TimedOut { .. } => "timeout",
                    _ => "abandoned",
                });
                if *reason == StopReason::Shutdown {
                    self.state.abandoned.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!("task {reason}");
            }
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.finished {
            self.state.metrics.in_flight.dec();
            self.state.metrics.outcome("cancelled");
        }
    }
}

/// A `text/event-stream` response of `body`, not to be cached.
pub(crate) fn event_stream(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A response body fed by a producer future through a small channel (backpressure: the
/// producer waits while the client is slow).
pub(crate) fn async_stream_body<F, Fut>(f: F) -> Body
where
    F: FnOnce(mpsc::Sender<Result<Bytes, Infallible>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let producer = f(tx);
    let produced = futures::stream::once(producer).filter_map(|()| async { None });
    let stream = futures::stream::select(tokio_stream_from(rx), produced);
    Body::from_stream(stream)
}

fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

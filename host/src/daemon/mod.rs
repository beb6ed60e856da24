//! The host as a long-lived HTTP service.
//!
//! - `POST /v1/tasks`: run a PromptTask; JSON, or `text/event-stream` with one SSE event per
//!   task event (event name = event type, data = the event's JSON) when `"stream": true`.
//! - `GET /v1/plugins`: every manifest found, loaded or refused, with capabilities and reasons.
//! - `GET /healthz` (no auth) and `GET /metrics`.
//!
//! Each request gets its own event bus (global listener plugins are added to every one), so
//! concurrent requests never see each other's events. The path is chosen per driver: async when
//! it has the capability, else the sync path on a bounded pool of blocking threads; the
//! `x-grip-path` header says which ran. A client that goes away cancels its task (and with it
//! the upstream request) on the async path; a sync-path task cannot be interrupted and runs to
//! its end or its timeout, its result discarded.
//!
//! Errors are `{"error": {"type", "message"}}` with fitting statuses: 400 malformed or invalid
//! request (the message names the field), 401 auth, 404 unknown plugin, 413 body too large, 422
//! a plugin lacking a needed capability, 429 overload (with `Retry-After`), 502/504 upstream
//! failures and timeouts.

pub mod config;
pub mod metrics;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use plugin_api::wire::{Event, EventKind};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

pub use config::DaemonConfig;
use metrics::Metrics;

use crate::error::{CallError, ErrorKind};
use crate::events::{EventBus, EventListener, HandlerResult};
use crate::manifest::{Kind, Mode};
use crate::registry::Registry;
use crate::task::{PromptTask, TaskError, TaskOutput};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Refused to run with this configuration.
    #[error("{0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything the handlers share.
pub struct AppState {
    config: DaemonConfig,
    registry: Registry,
    token: Option<String>,
    task_permits: Arc<Semaphore>,
    blocking_permits: Arc<Semaphore>,
    metrics: Metrics,
    global_listeners: Vec<EventListener>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// Loads the plugins and the global listeners, and checks the security settings against
    /// the address the server will listen on.
    ///
    /// # Errors
    /// [`DaemonError::Config`] when the token variable is missing, or a non-loopback address
    /// has no token, or a global listener cannot be made.
    pub fn new(config: DaemonConfig, addr: SocketAddr) -> Result<Self, DaemonError> {
        let token = match &config.server.auth_token_env {
            Some(var) => match std::env::var(var) {
                Ok(t) if !t.trim().is_empty() => Some(t),
                _ => {
                    return Err(DaemonError::Config(format!(
                        "server.auth_token_env names `{var}`, but that environment variable is not set"
                    )));
                }
            },
            None => None,
        };
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(DaemonError::Config(format!(
                "refusing to listen on {addr} without authentication: set server.auth_token_env (or bind 127.0.0.1)"
            )));
        }
        let registry = Registry::load_dirs(&config.plugins.manifest_dirs, &config.loader_options());
        let mut global_listeners = Vec::new();
        for l in &config.listeners {
            let plugin = registry.get(&l.plugin).ok_or_else(|| {
                DaemonError::Config(format!(
                    "listeners: plugin `{}` is not loaded (see GET /v1/plugins)",
                    l.plugin
                ))
            })?;
            let overrides = match &l.config {
                Some(t) => {
                    Some(serde_json::to_value(t).map_err(|e| DaemonError::Config(e.to_string()))?)
                }
                None => None,
            };
            let handle = plugin
                .new_listener(overrides.as_ref())
                .map_err(|e| DaemonError::Config(format!("listeners: {e}")))?;
            global_listeners.push(
                EventListener::new(format!("global:{}", l.plugin)).driver(handle, l.batch_size),
            );
        }
        Ok(Self {
            task_permits: Arc::new(Semaphore::new(config.server.max_concurrent_tasks.max(1))),
            blocking_permits: Arc::new(Semaphore::new(config.server.blocking_threads.max(1))),
            metrics: Metrics::default(),
            registry,
            token,
            global_listeners,
            config,
        })
    }

    /// Fetches the model files the loaded drivers need (see [`crate::models`]); a failure is
    /// logged and leaves that driver's tasks failing with the reason.
    pub async fn prepare_models(&self) {
        let cache = crate::models::cache_dir();
        for p in self.registry.of_kind(Kind::PromptDriver) {
            match crate::models::prepare(p, &cache, false).await {
                Ok(Some(path)) => {
                    tracing::info!(plugin = p.id(), path = %path.display(), "model ready")
                }
                Ok(None) => {}
                Err(e) => tracing::error!(plugin = p.id(), "model unavailable: {e}"),
            }
        }
    }

    /// The loaded plugins.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Flushes the global listener drivers (at shutdown).
    pub async fn flush_listeners(&self) {
        let bus = Arc::new(EventBus::new());
        let _guards: Vec<_> = self
            .global_listeners
            .iter()
            .map(|l| bus.add_listener(l.clone()))
            .collect();
        bus.aflush().await;
    }
}

/// The router for `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_body_bytes;
    let protected = Router::new()
        .route("/v1/tasks", post(run_task))
        .route("/v1/plugins", get(list_plugins))
        .route("/metrics", get(render_metrics))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish for up to the grace
/// period, and flushes the global listeners.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(Arc::clone(&state));
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections; waiting for in-flight tasks");
        let _ = signalled_tx.send(());
    });
    let deadline = async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            futures::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r?,
        () = deadline => tracing::warn!("shutdown grace period of {} ms is over; abandoning in-flight tasks", grace.as_millis()),
    }
    state.flush_listeners().await;
    tracing::info!("listeners flushed; bye");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn api_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"type": kind, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => {
            let mut r = api_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "wrong bearer token",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        None => {
            let mut r = api_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing `Authorization: Bearer <token>` header",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

async fn list_plugins(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"plugins": state.registry.rows()})).into_response()
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The body of `POST /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequest {
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    config: Option<Value>,
    input: String,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    output_schema: Option<Value>,
    #[serde(default)]
    max_subtasks: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    rules: Vec<String>,
}

/// Aborts the spawned task when the response (or the handler future) is dropped: the client
/// went away.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a task run ended, as the spawned future reports it.
enum Ended {
    Done(Result<TaskOutput, TaskError>),
    TimedOut,
}

fn task_error_response(e: &TaskError, task_id: &str) -> Response {
    let (status, kind) = match e {
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
        TaskError::MissingCapability { .. } | TaskError::Tool { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "missing_capability")
        }
        TaskError::InvalidOutputSchema(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let body = json!({"error": {"type": kind, "message": e.to_string()}, "task_id": task_id});
    (status, axum::Json(body)).into_response()
}

#[allow(clippy::result_large_err)] // a Response is the error here, built once per request
fn prepare(state: &AppState, body: &Bytes) -> Result<(PromptTask, bool, String), Response> {
    let bad = |msg: String| api_error(StatusCode::BAD_REQUEST, "invalid_request", msg);
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: TaskRequest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path == "?" || e.inner().is_syntax() || e.inner().is_eof() {
            bad(format!("malformed request body: {}", e.inner()))
        } else {
            bad(format!("field `{path}`: {}", e.inner()))
        }
    })?;
    if req.input.trim().is_empty() {
        return Err(bad("field `input`: must not be empty".into()));
    }
    if let Some(n) = req.max_subtasks
        && n > state.config.server.max_subtasks_cap
    {
        return Err(bad(format!(
            "field `max_subtasks`: {n} is more than this server allows ({})",
            state.config.server.max_subtasks_cap
        )));
    }
    if req.config.as_ref().is_some_and(|c| !c.is_object()) {
        return Err(bad(
            "field `config`: must be an object of driver config overrides".into(),
        ));
    }
    let driver_id = req
        .driver
        .clone()
        .or_else(|| state.config.defaults.driver.clone())
        .ok_or_else(|| {
            bad("field `driver`: required (this server has no default driver)".into())
        })?;
    let find = |id: &str, field: &str| {
        state.registry.get(id).ok_or_else(|| {
            let loaded: Vec<&str> = state.registry.plugins().map(|p| p.id()).collect();
            api_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "{field}: no loaded plugin `{id}` (loaded: {})",
                    loaded.join(", ")
                ),
            )
        })
    };
    let unprocessable =
        |msg: String| api_error(StatusCode::UNPROCESSABLE_ENTITY, "missing_capability", msg);
    let plugin = find(&driver_id, "driver")?;
    if !plugin.is(Kind::PromptDriver) {
        return Err(unprocessable(format!(
            "driver: plugin `{driver_id}` is not a prompt driver"
        )));
    }
    if req.stream && !plugin.can(Kind::PromptDriver, Mode::Stream) {
        return Err(unprocessable(format!(
            "stream: prompt driver `{driver_id}` lacks the `stream` capability"
        )));
    }
    let use_async = plugin.can(Kind::PromptDriver, Mode::Async);
    let driver = plugin.new_driver(req.config.as_ref()).map_err(|e| {
        state.metrics.plugin_error(&driver_id);
        bad(format!("field `config`: {e}"))
    })?;
    let mut task = PromptTask::new(driver, req.input).stream(req.stream);
    for id in &req.tools {
        let p = find(id, "tools")?;
        if !p.is(Kind::Tool) {
            return Err(unprocessable(format!("tools: plugin `{id}` is not a tool")));
        }
        task = task.tool(p.new_tool(None).map_err(|e| {
            state.metrics.plugin_error(id);
            api_error(StatusCode::BAD_GATEWAY, "plugin_error", e.to_string())
        })?);
    }
    if let Some(s) = req.output_schema {
        task = task.output_schema(s);
    }
    if let Some(n) = req.max_subtasks {
        task = task.max_subtasks(n);
    }
    for r in req.rules {
        task = task.rule(r);
    }
    Ok((task, use_async, driver_id))
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
            _ => {}
        }
        if let Some(tx) = &relay {
            // The client may be gone; the task then gets cancelled, nothing to do here.
            let _ = tx.send(e);
        }
        Ok(None)
    })
}

fn sse_frame(event: &Event) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!(
        "event: {}\ndata: {data}\n\n",
        event.kind.type_name()
    ))
}

async fn run_task(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body is larger than {} bytes",
                    state.config.server.max_body_bytes
                ),
            );
        }
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()),
    };
    let (task, use_async, driver_id) = match prepare(&state, &body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(permit) = Arc::clone(&state.task_permits).try_acquire_owned() else {
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
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };

    let streaming = task.is_streaming();
    let (relay_tx, relay_rx) = if streaming {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let bus = Arc::new(EventBus::new());
    let mut guards = vec![bus.add_listener(request_listener(&state, relay_tx))];
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
    let timeout = Duration::from_millis(state.config.server.task_timeout_ms);

    let st = Arc::clone(&state);
    let run = async move {
        let _permit = permit;
        let _guards = guards;
        let mut tracker = Tracker::new(Arc::clone(&st));
        let started = Instant::now();
        tracing::info!("task started");
        let ended = if use_async {
            match tokio::time::timeout(timeout, task.async_run()).await {
                Ok(r) => Ended::Done(r),
                Err(_) => Ended::TimedOut,
            }
        } else {
            let blocking = Arc::clone(&st.blocking_permits).acquire_owned().await;
            let handle = tokio::task::spawn_blocking(move || {
                let _blocking = blocking;
                task.run()
            });
            match tokio::time::timeout(timeout, handle).await {
                Ok(Ok(r)) => Ended::Done(r),
                Ok(Err(join)) => Ended::Done(Err(TaskError::Stream {
                    plugin: "host".into(),
                    message: format!("the task thread failed: {join}"),
                })),
                Err(_) => Ended::TimedOut,
            }
        };
        tracker.finished = true;
        st.metrics
            .task_seconds
            .observe(started.elapsed().as_secs_f64());
        match &ended {
            Ended::Done(Ok(_)) => {
                st.metrics.outcome("ok");
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "task finished"
                );
            }
            Ended::Done(Err(e)) => {
                st.metrics.outcome("error");
                if let TaskError::Driver(c) = e {
                    st.metrics.plugin_error(&c.plugin);
                }
                tracing::warn!("task failed: {e}");
            }
            Ended::TimedOut => {
                st.metrics.outcome("timeout");
                tracing::warn!("task timed out after {} ms", timeout.as_millis());
            }
        }
        ended
    };
    let join = tokio::spawn(run.instrument(span));
    let abort = AbortOnDrop(join.abort_handle());

    let path_header = HeaderValue::from_static(path);
    if let Some(mut rx) = relay_rx {
        let stream_task_id = task_id.clone();
        let body = async_stream_body(move |tx| async move {
            let _abort = abort;
            while let Some(event) = rx.recv().await {
                if tx.send(Ok(sse_frame(&event))).await.is_err() {
                    return;
                }
            }
            let ended = join.await;
            let error = match ended {
                Ok(Ended::Done(_)) => None,
                Ok(Ended::TimedOut) => Some((
                    "task_timeout",
                    format!("the task ran longer than {} ms", timeout.as_millis()),
                )),
                Err(e) => Some(("internal", format!("the task failed: {e}"))),
            };
            if let Some((kind, message)) = error {
                let data =
                    json!({"error": {"type": kind, "message": message}, "task_id": stream_task_id});
                let _ = tx
                    .send(Ok(Bytes::from(format!("event: error\ndata: {data}\n\n"))))
                    .await;
            }
        });
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-grip-path", path_header);
        h.insert(
            "x-grip-task-id",
            HeaderValue::from_str(&task_id).unwrap_or(HeaderValue::from_static("?")),
        );
        return r;
    }

    let _abort = abort;
    let mut r = match join.await {
        Ok(Ended::Done(Ok(out))) => axum::Json(json!({
            "task_id": task_id,
            "output": out.text,
            "json": out.json,
            "usage": out.usage,
            "subtasks": out.subtasks,
            "path": path,
        }))
        .into_response(),
        Ok(Ended::Done(Err(e))) => task_error_response(&e, &task_id),
        Ok(Ended::TimedOut) => api_error(
            StatusCode::GATEWAY_TIMEOUT,
            "task_timeout",
            format!("the task ran longer than {} ms", timeout.as_millis()),
        ),
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the task failed: {e}"),
        ),
    };
    r.headers_mut().insert("x-grip-path", path_header);
    r
}

/// Keeps the in-flight gauge right, and counts a task dropped before it ended (its client
/// went away) as cancelled.
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
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.state.metrics.in_flight.dec();
        if !self.finished {
            self.state.metrics.outcome("cancelled");
            tracing::info!("client went away: task cancelled");
        }
    }
}

/// A response body fed by a producer future through a small channel (backpressure: the
/// producer waits while the client is slow).
fn async_stream_body<F, Fut>(f: F) -> Body
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

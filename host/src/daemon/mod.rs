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
//! the upstream request) on the async path; a sync-path task stops at its next step (a driver
//! call in progress on a blocking thread cannot be interrupted).
//!
//! Every task that started ends with its `FinishTaskEvent`, to every listener and to an SSE
//! client still connected: with the output, or the error, including "cancelled: the client went
//! away", "timed out after N ms" and "abandoned: the host shut down" (see
//! [`crate::task::TaskStopper`]).
//!
//! What a request may do is bounded by the operator: see [`guard`] (Host, Origin, Content-Type),
//! [`crate::overrides`] (the config keys a request may change) and the README's security model.
//!
//! Errors are `{"error": {"type", "message"}}` with fitting statuses: 400 malformed or invalid
//! request (the message names the field), 401 auth, 404 unknown plugin, 413 body too large, 422
//! a plugin lacking a needed capability, 429 overload (with `Retry-After`), 502/504 upstream
//! failures and timeouts.

pub mod config;
mod conn;
pub mod guard;
pub mod metrics;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use plugin_api::wire::{Event, EventKind};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::DaemonConfig;
use metrics::Metrics;

use crate::error::{CallError, ErrorKind};
use crate::events::{EventBus, EventListener, HandlerResult};
use crate::manifest::Kind;
use crate::models::HostConfig;
use crate::plugin::Plugin;
use crate::registry::Registry;
use crate::spec::{BuiltTask, Policy, SpecError, TaskSpec};
use crate::task::{PromptTask, StopReason, TaskError, TaskOutput};
use guard::GuardPolicy;

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
    /// Config the host resolved for plugins (fetched models' paths).
    host: HostConfig,
    global_listeners: Vec<EventListener>,
    guard: GuardPolicy,
    /// Set at the end of the shutdown grace: every task still running stops.
    shutdown: watch::Sender<bool>,
    /// The running tasks, awaited at shutdown.
    tasks: TaskTracker,
    /// Tasks stopped because the host shut down.
    abandoned: AtomicUsize,
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Tasks still running at the end of the shutdown grace, stopped with an error.
    pub abandoned: usize,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// Loads the plugins (reading the token from the environment), then
    /// [`AppState::from_parts`]. Model files are not fetched: see [`AppState::prepare_models`].
    ///
    /// # Errors
    /// [`DaemonError::Config`] when the token variable is missing, or as for `from_parts`.
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
        let registry = Registry::load_dirs(&config.plugins.manifest_dirs, &config.loader_options());
        Self::from_parts(config, registry, token, addr)
    }

    /// The state from its parts, with no I/O: a registry loaded by the caller, the bearer
    /// token (if any) and the address the server will listen on, which the security settings
    /// are checked against. For tests of the router in-process, too.
    ///
    /// # Errors
    /// [`DaemonError::Config`] when a non-loopback address has no token, or a global listener
    /// cannot be made.
    pub fn from_parts(
        config: DaemonConfig,
        registry: Registry,
        token: Option<String>,
        addr: SocketAddr,
    ) -> Result<Self, DaemonError> {
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(DaemonError::Config(format!(
                "refusing to listen on {addr} without authentication: set server.auth_token_env (or bind 127.0.0.1)"
            )));
        }
        let global_listeners = global_listeners(&registry, &config)?;
        warn_about_sensitive_overrides(&registry, &config);
        let guard = GuardPolicy::new(
            addr.ip().is_loopback(),
            &config.server.allowed_hosts,
            &config.server.allowed_origins,
        );
        Ok(Self {
            guard,
            shutdown: watch::Sender::new(false),
            tasks: TaskTracker::new(),
            abandoned: AtomicUsize::new(0),
            task_permits: Arc::new(Semaphore::new(config.server.max_concurrent_tasks.max(1))),
            blocking_permits: Arc::new(Semaphore::new(config.server.blocking_threads.max(1))),
            metrics: Metrics::default(),
            registry,
            host: HostConfig::default(),
            token,
            global_listeners,
            config,
        })
    }

    /// Fetches the model files the loaded drivers need (see [`crate::models`]); a failure is
    /// logged and leaves that driver's tasks failing with the reason.
    pub async fn prepare_models(&mut self) {
        let cache = crate::models::cache_dir();
        for p in self.registry.of_kind(Kind::PromptDriver) {
            match self.host.prepare(p, &cache, false).await {
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

/// What a request may do: the daemon config's limits and override lists.
impl Policy for AppState {
    fn default_driver(&self) -> Option<&str> {
        self.config.defaults.driver.as_deref()
    }

    fn max_subtasks_cap(&self) -> Option<usize> {
        Some(self.config.server.max_subtasks_cap)
    }

    fn max_tools(&self) -> usize {
        MAX_TOOLS
    }

    /// The daemon config's list for the plugin, else the manifest's.
    fn overridable<'a>(&'a self, plugin: &'a Plugin) -> Option<(&'a [String], String)> {
        Some(match self.config.plugins.overrides.get(plugin.id()) {
            Some(keys) => (
                keys.as_slice(),
                format!("`[plugins.overrides] {}` in the daemon config", plugin.id()),
            ),
            None => (
                plugin.manifest().overridable.as_slice(),
                format!(
                    "`[overrides] allow` in {}",
                    plugin.manifest().path.display()
                ),
            ),
        })
    }
}

/// The `[[listeners]]` of the config, each a listener driver added to every request's bus.
fn global_listeners(
    registry: &Registry,
    config: &DaemonConfig,
) -> Result<Vec<EventListener>, DaemonError> {
    let mut out = Vec::new();
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
        out.push(EventListener::new(format!("global:{}", l.plugin)).driver(handle, l.batch_size));
    }
    Ok(out)
}

/// Logs a warning for each allowed override that names a URL, a secret, a file or a resource
/// size: the operator may mean it, but should know.
fn warn_about_sensitive_overrides(registry: &Registry, config: &DaemonConfig) {
    for p in registry.plugins() {
        let keys = config
            .plugins
            .overrides
            .get(p.id())
            .unwrap_or(&p.manifest().overridable);
        for k in keys.iter().filter(|k| crate::overrides::is_sensitive(k)) {
            tracing::warn!(
                plugin = p.id(),
                "requests may override `{k}`: a caller can then choose a URL, a secret's name, a file or a resource size"
            );
        }
    }
    for id in config.plugins.overrides.keys() {
        if registry.get(id).is_none() {
            tracing::warn!("[plugins.overrides] names `{id}`, which is not loaded");
        }
    }
}

/// The router for `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_body_bytes;
    let protected = Router::new()
        .route("/v1/tasks", post(run_task))
        .route("/v1/plugins", get(list_plugins))
        .route("/metrics", get(render_metrics));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            guard::guard,
        ))
        .with_state(state)
}

/// Serves until `shutdown` resolves; then lets in-flight tasks finish for up to the grace
/// period, stops the ones still running (each publishes its `FinishTaskEvent` with the error),
/// lets open responses end, and flushes the global listeners. Idle and half-open connections
/// do not hold the shutdown up: only tasks do.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Served, DaemonError> {
    let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
    let header_timeout = Duration::from_millis(state.config.server.header_timeout_ms.max(1));
    let app = router(Arc::clone(&state));
    let connections = conn::accept_until(listener, app, header_timeout, shutdown).await;
    tracing::info!("shutdown requested: no new connections; waiting for in-flight tasks");
    state.tasks.close();
    if tokio::time::timeout(grace, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown grace period of {} ms is over; stopping {} in-flight task(s)",
            grace.as_millis(),
            state.tasks.len()
        );
        state.shutdown.send_replace(true);
        // Stopping is prompt (a dropped future, or a thread left behind); this bounds a
        // listener that hangs while taking the finish events.
        let _ = tokio::time::timeout(STOP_WAIT, state.tasks.wait()).await;
    }
    // The tasks are done; their responses (an SSE stream's last event) still have to go out.
    let _ = tokio::time::timeout(STOP_WAIT, connections.shutdown()).await;
    state.flush_listeners().await;
    let abandoned = state.abandoned.load(Ordering::Relaxed) + state.tasks.len();
    if abandoned > 0 {
        tracing::warn!("{abandoned} task(s) abandoned at shutdown");
    }
    tracing::info!("listeners flushed; bye");
    Ok(Served { abandoned })
}

/// How long shutdown waits for stopped tasks to end, and then for their responses to go out.
const STOP_WAIT: Duration = Duration::from_secs(2);

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

async fn list_plugins(State(state): State<Arc<AppState>>) -> Response {
    let mut rows = state.registry.rows();
    for row in &mut rows {
        if let Some(keys) = state.config.plugins.overrides.get(&row.id) {
            row.overridable.clone_from(keys);
        }
    }
    axum::Json(json!({"plugins": rows})).into_response()
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

/// How a task run ended, as the spawned future reports it.
enum Ended {
    /// The task ran to its end (its own finish event went out).
    Done(Result<TaskOutput, TaskError>),
    /// The daemon stopped it (its finish event went out with the reason).
    Stopped(StopReason),
}

/// The text that replaces a driver error when the request chose the URL: what the upstream
/// said may be an internal service's reply, and the caller may not read it.
const WITHHELD: &str = "the upstream's reply is withheld because this request chose the URL";

fn task_error_response(e: &TaskError, task_id: &str, withhold: bool) -> Response {
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
        TaskError::Stopped(StopReason::TimedOut { .. }) => {
            (StatusCode::GATEWAY_TIMEOUT, "task_timeout")
        }
        TaskError::Stopped(StopReason::Shutdown) => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let message = match e {
        TaskError::Driver(c) if withhold => format!(
            "prompt driver `{}` {} failed ({} error): {WITHHELD}",
            c.plugin, c.operation, c.kind
        ),
        TaskError::Stream { plugin, .. } if withhold => {
            format!("prompt driver `{plugin}` stream failed: {WITHHELD}")
        }
        _ => e.to_string(),
    };
    let body = json!({"error": {"type": kind, "message": message}, "task_id": task_id});
    (status, axum::Json(body)).into_response()
}

/// The most tools one request may name: each is an instance made (and its schemas compiled)
/// per request, so the count is bounded like the body is.
const MAX_TOOLS: usize = 64;

/// The request's body as a [`TaskSpec`], built into its task by the one path every front uses.
#[allow(clippy::result_large_err)] // a Response is the error here, built once per request
fn prepare(state: &AppState, body: &Bytes) -> Result<BuiltTask, Response> {
    let bad = |msg: String| api_error(StatusCode::BAD_REQUEST, "invalid_request", msg);
    let de = &mut serde_json::Deserializer::from_slice(body);
    let spec: TaskSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path == "?" || e.inner().is_syntax() || e.inner().is_eof() {
            bad(format!("malformed request body: {}", e.inner()))
        } else {
            bad(format!("field `{path}`: {}", e.inner()))
        }
    })?;
    spec.build(&state.registry, &state.host, state)
        .map_err(|e| spec_error_response(state, &e))
}

fn spec_error_response(state: &AppState, e: &SpecError) -> Response {
    let (status, kind) = match e {
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
    };
    api_error(status, kind, e.to_string())
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

fn sse_frame(event: &Event, withhold: bool, output: Option<&TaskOutput>) -> Bytes {
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
            v.to_string()
        }),
    }
    .unwrap_or_else(|_| "{}".into());
    Bytes::from(format!(
        "event: {}\ndata: {data}\n\n",
        event.kind.type_name()
    ))
}

fn overloaded(state: &AppState) -> Response {
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
    r
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
    let prepared = match prepare(&state, &body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(permit) = Arc::clone(&state.task_permits).try_acquire_owned() else {
        return overloaded(&state);
    };
    let BuiltTask {
        task,
        use_async,
        driver_id,
        withhold,
    } = prepared;

    let (relay_tx, relay_rx) = if task.is_streaming() {
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
    // Dropped with the response (or the handler, when the client goes away first).
    let (client_tx, client_rx) = oneshot::channel::<()>();
    let st = Arc::clone(&state);
    let run = async move {
        let _permit = permit;
        let _guards = guards;
        run_to_end(st, task, use_async, client_rx).await
    };
    let join = state.tasks.spawn(run.instrument(span));

    let path_header = HeaderValue::from_static(path);
    if let Some(mut rx) = relay_rx {
        let body = async_stream_body(move |tx| async move {
            let _client = client_tx;
            while let Some(event) = rx.recv().await {
                if matches!(event.kind, EventKind::FinishTask { .. }) {
                    // The last event: sent once the run has ended (its listeners flushed), with
                    // the result the JSON response would carry.
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

    let ended = join.await;
    drop(client_tx);
    let mut r = match ended {
        Ok(Ended::Done(Ok(out))) => axum::Json(json!({
            "task_id": task_id,
            "output": out.text,
            "json": out.json,
            "usage": out.usage,
            "subtasks": out.subtasks,
            "path": path,
        }))
        .into_response(),
        Ok(Ended::Done(Err(e))) => task_error_response(&e, &task_id, withhold),
        Ok(Ended::Stopped(reason)) => {
            task_error_response(&TaskError::Stopped(reason), &task_id, withhold)
        }
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the task failed: {e}"),
        ),
    };
    r.headers_mut().insert("x-grip-path", path_header);
    r
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
    let work = async {
        if use_async {
            task.async_run().await
        } else {
            let blocking = Arc::clone(&state.blocking_permits).acquire_owned().await;
            let task = task.clone();
            tokio::task::spawn_blocking(move || {
                let _blocking = blocking;
                task.run()
            })
            .await
            .unwrap_or_else(|join| {
                Err(TaskError::Stream {
                    plugin: "host".into(),
                    message: format!("the task thread failed: {join}"),
                })
            })
        }
    };
    let stop = async {
        tokio::select! {
            () = tokio::time::sleep(timeout) => StopReason::TimedOut {
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
            // The work future is dropped by now: nothing else publishes for this run.
            stopper.stop(reason).await;
            Ended::Stopped(reason)
        }
    };
    tracker.finish(&ended, started);
    ended
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

//! The host as a long-lived HTTP service.
//!
//! - `POST /v1/tasks`: run a PromptTask; JSON, or `text/event-stream` with one SSE event per
//!   task event (event name = event type, data = the event's JSON) when `"stream": true`.
//! - `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{id}`: the
//!   OpenAI-compatible front (see [`openai`]), the same tasks in the chat-completions wire format.
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

mod coarse_timer;
pub mod config;
mod conn;
pub mod guard;
pub mod metrics;
mod openai;
mod queued;
pub(crate) mod tasks;
pub use tasks::new_task_id;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

pub use config::DaemonConfig;
use metrics::Metrics;

use crate::conversation::Conversations;
use crate::events::{EventBus, EventListener};
use crate::manifest::Kind;
use crate::models::HostConfig;
use crate::plugin::Plugin;
use crate::queue::Queue;
use crate::registry::Registry;
use crate::results::LocalResults;
use crate::spec::Policy;
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
    pub(crate) config: DaemonConfig,
    registry: Registry,
    token: Option<String>,
    pub(crate) task_permits: Arc<Semaphore>,
    blocking_permits: Arc<Semaphore>,
    metrics: Metrics,
    /// Config the host resolved for plugins (fetched models' paths).
    host: HostConfig,
    global_listeners: Vec<EventListener>,
    guard: GuardPolicy,
    /// Set at the end of the shutdown grace: every task still running stops.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Recent tasks' records, for `GET /v1/tasks/{id}` (a single daemon's).
    results: Arc<LocalResults>,
    /// The conversations tasks continue: this process's, or the cluster's.
    pub(crate) conversations: Arc<Conversations>,
    /// Set on a front of a queue (`grip serve --nats`): tasks are queued, not run here.
    queue: Option<Queue>,
    /// The running tasks, awaited at shutdown.
    tasks: TaskTracker,
    /// Tasks stopped because the host shut down.
    abandoned: AtomicUsize,
    /// Some plugin runs in a child process: building a task may wait on it.
    any_isolated: bool,
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

/// How long a task may hold its conversation: past its timeout, and past the time its queue
/// takes to give it to another worker, so only a task that is gone loses its hold.
fn conversation_lease(config: &DaemonConfig) -> Duration {
    Duration::from_millis(config.server.task_timeout_ms + 2 * config.queue.ack_wait_ms)
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
        check_agents(&registry, &config)?;
        warn_about_sensitive_overrides(&registry, &config);
        let guard = GuardPolicy::new(
            addr.ip().is_loopback(),
            &config.server.allowed_hosts,
            &config.server.allowed_origins,
        );
        let any_isolated = registry
            .plugins()
            .any(|p| p.isolation() == crate::isolation::Isolation::Process);
        let lease = conversation_lease(&config);
        Ok(Self {
            results: Arc::new(LocalResults::new(
                config.server.results_kept,
                Duration::from_secs(config.server.result_ttl_s),
            )),
            conversations: Arc::new(Conversations::local(config.conversations.clone(), lease)),
            queue: None,
            any_isolated,
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

    /// Makes this daemon a front of `queue`: `POST /v1/tasks` queues tasks for the workers and
    /// `GET /v1/tasks/{id}` reads the cluster's records. For a worker, the conversations become
    /// the cluster's.
    pub fn use_queue(&mut self, queue: Queue) {
        let lease = conversation_lease(&self.config);
        self.conversations =
            Arc::new(queue.conversations(self.config.conversations.clone(), lease));
        self.queue = Some(queue);
    }

    /// The daemon's configuration.
    pub fn config(&self) -> &DaemonConfig {
        &self.config
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

/// Each `[agents.<name>]` names a loaded driver and loaded tools, within the per-task bound, and
/// a config that is JSON: an agent that cannot work is the operator's error, found at start.
fn check_agents(registry: &Registry, config: &DaemonConfig) -> Result<(), DaemonError> {
    for (name, a) in &config.agents {
        let bad = |why: String| DaemonError::Config(format!("agents.{name}: {why}"));
        if !registry
            .get(&a.driver)
            .is_some_and(|p| p.is(Kind::PromptDriver))
        {
            return Err(bad(format!("`{}` is not a loaded prompt driver", a.driver)));
        }
        if let Some(t) = a
            .tools
            .iter()
            .find(|t| !registry.get(t).is_some_and(|p| p.is(Kind::Tool)))
        {
            return Err(bad(format!("`{t}` is not a loaded tool")));
        }
        if a.tools.len() > MAX_TOOLS {
            return Err(bad(format!(
                "{} tools; a task may use at most {MAX_TOOLS}",
                a.tools.len()
            )));
        }
        if let Some(c) = &a.config {
            serde_json::to_value(c).map_err(|e| bad(format!("config: {e}")))?;
        }
    }
    Ok(())
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
        .route("/v1/tasks", post(tasks::run_task))
        .route("/v1/tasks/{id}", get(tasks::get_task))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{*id}", get(openai::get_model))
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

/// Serves a worker's own port (`grip worker --metrics ADDR`) until `shutdown`: `GET /healthz`
/// and `GET /metrics` (its tasks' counters), behind the daemon's guard and connection timeouts.
pub async fn serve_ops(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let header_timeout = Duration::from_millis(state.config.server.header_timeout_ms.max(1));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            guard::guard,
        ))
        .with_state(state);
    let connections = conn::accept_until(listener, app, header_timeout, shutdown).await;
    let _ = tokio::time::timeout(STOP_WAIT, connections.shutdown()).await;
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

pub(super) fn api_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    // `param` and `code` too: the OpenAI SDKs read that shape, and the other fronts lose nothing.
    let body =
        json!({"error": {"type": kind, "message": message.into(), "param": null, "code": null}});
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

/// The most tools one request may name: each is an instance made (and its schemas compiled)
/// per request, so the count is bounded like the body is.
const MAX_TOOLS: usize = 64;

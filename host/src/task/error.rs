//! How a task fails, and why a runner stopped one.

use crate::error::CallError;
use crate::events::PublishError;

#[allow(unused_imports)] // for the docs
use super::TaskStopper;

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
    /// `run()` met a custom subtask runner that has only an async form.
    #[error(
        "the task's custom {runner} runner is async-only and cannot run on the sync path (run()); use async_run(), or set a sync runner too"
    )]
    AsyncRunnerOnSyncPath {
        /// `actions` or `output_schema`.
        runner: &'static str,
    },
    /// A fault of the host itself (a task thread that died, the loop driven out of order).
    #[error("internal error: {0}")]
    Internal(String),
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

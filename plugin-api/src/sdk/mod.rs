//! The safe API a plugin author implements.
//!
//! A plugin is a `cdylib` crate that implements one or more of [`PromptDriver`], a tool (a
//! [`TypedTool`] of typed [`activity`] types, or a wire-level [`Tool`] for tools whose activities
//! are known only at run time) and
//! [`EventListenerDriver`] and names them in [`export_plugin!`](crate::export_plugin). The macro
//! generates the root module and every FFI adapter; the author never writes `extern`, `unsafe`
//! or an abi_stable type.
//!
//! # Sync, async and stream
//!
//! A [`TypedTool`]'s modes follow from how each activity is registered (see [`activity`]): every
//! typed tool runs on both paths, and registering an activity for a mode it does not implement
//! is a compile error.
//!
//! Drivers, listeners and wire-level tools have a blocking method and an async twin (drivers also have
//! a stream). Implement the ones you support and declare them with the `SYNC` / `ASYNC` /
//! `STREAM` constants: the host reads the declaration (the manifest need not repeat it), and
//! never calls a mode that is not declared. An undeclared mode keeps its default body, which
//! returns [`ErrorKind::Unsupported`]; a declared mode left with its default body is reported by
//! `grip plugins check`, which calls every declared mode.
//!
//! Async methods run on the host's threads, inside this plugin's own tokio runtime (entered on
//! every poll), so `tokio::time`, `tokio::net` and reqwest work as usual. Blocking work inside an
//! async method belongs in [`spawn_blocking`].
//!
//! # Panics
//!
//! Every entry point is wrapped: a panic in a call, in a future's poll, in a stream's poll or in
//! a drop becomes an [`ErrorKind::Panic`] error naming the panic's message and location. The
//! plugin must be built with `panic = "unwind"` (the default); the host refuses plugins built
//! with `panic = "abort"`, because those could not be guarded.

pub mod activity;
#[doc(hidden)]
pub mod ffi;
pub mod http;
mod logging;
mod panic;
mod runtime;

use std::future::Future;

use futures::stream::BoxStream;
use serde::de::DeserializeOwned;

use crate::abi::{ErrorKindFfi, PluginErrorFfi};
use crate::wire::{
    Event, PromptRequest, PromptResponse, StreamDelta, ToolInvocation, ToolOutput, ToolSpec,
};

pub use activity::{Activities, Activity, AsyncActivity, IntoToolOutput, Json, TypedTool};
pub use runtime::{block_on, spawn_blocking};

/// The version of this crate (plugin-api), as reported by each plugin built with it.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The kind of a [`PluginError`]; the host matches on it (e.g. to decide on retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Anything else.
    Other,
    /// The request or its arguments were invalid.
    InvalidInput,
    /// The mode or operation is not implemented by this plugin.
    Unsupported,
    /// The plugin panicked; the message says where.
    Panic,
    /// An upstream service failed.
    Upstream,
    /// Something took too long.
    Timeout,
    /// Credentials missing or rejected.
    Auth,
    /// An upstream rate limit.
    RateLimited,
    /// The plugin's configuration is invalid.
    Config,
    /// The operation was cancelled.
    Cancelled,
    /// A bug or broken invariant in the plugin.
    Internal,
    /// Something named does not exist.
    NotFound,
    /// A kind from a newer plugin-api this one does not know.
    Unknown(u32),
}

impl ErrorKind {
    /// The stable number of this kind on the wire.
    pub fn code(self) -> u32 {
        match self {
            ErrorKind::Other => 0,
            ErrorKind::InvalidInput => 1,
            ErrorKind::Unsupported => 2,
            ErrorKind::Panic => 3,
            ErrorKind::Upstream => 4,
            ErrorKind::Timeout => 5,
            ErrorKind::Auth => 6,
            ErrorKind::RateLimited => 7,
            ErrorKind::Config => 8,
            ErrorKind::Cancelled => 9,
            ErrorKind::Internal => 10,
            ErrorKind::NotFound => 11,
            ErrorKind::Unknown(n) => n,
        }
    }

    /// The kind with wire number `code`.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => ErrorKind::Other,
            1 => ErrorKind::InvalidInput,
            2 => ErrorKind::Unsupported,
            3 => ErrorKind::Panic,
            4 => ErrorKind::Upstream,
            5 => ErrorKind::Timeout,
            6 => ErrorKind::Auth,
            7 => ErrorKind::RateLimited,
            8 => ErrorKind::Config,
            9 => ErrorKind::Cancelled,
            10 => ErrorKind::Internal,
            11 => ErrorKind::NotFound,
            n => ErrorKind::Unknown(n),
        }
    }

    /// A short lowercase name (`invalid_input`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Other => "other",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Panic => "panic",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Auth => "auth",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Config => "config",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error returned by a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Whether retrying the same call may succeed.
    pub retryable: bool,
    /// What happened, for a person.
    pub message: String,
}

impl PluginError {
    /// A non-retryable error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            retryable: false,
            message: message.into(),
        }
    }

    /// Marks the error as retryable.
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// [`ErrorKind::Config`].
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// [`ErrorKind::Upstream`].
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Upstream, message)
    }

    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Converts to the ABI value.
    pub fn into_ffi(self) -> PluginErrorFfi {
        PluginErrorFfi {
            kind: ErrorKindFfi(self.kind.code()),
            retryable: self.retryable,
            message: self.message.into(),
        }
    }

    /// Converts from the ABI value.
    pub fn from_ffi(e: PluginErrorFfi) -> Self {
        Self {
            kind: ErrorKind::from_code(e.kind.0),
            retryable: e.retryable,
            message: e.message.into_string(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error: {}", self.kind, self.message)?;
        if self.retryable {
            f.write_str(" (retryable)")?;
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {}

/// A config type for plugins that take no configuration; accepts (and ignores) any object.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct NoConfig {}

/// A driver's stream of deltas.
pub type DeltaStream = BoxStream<'static, Result<StreamDelta, PluginError>>;

/// A prompt driver: turns a prompt stack into an assistant message.
///
/// Required: [`PromptDriver::new`] and the methods of every mode you declare. The host calls
/// `prompt` from `run()`, `prompt_async` from `async_run()`, and `stream` when the task
/// streams (on either path); it never calls a mode whose constant is `false`.
///
/// An async driver that streams, with a typed config:
///
/// ```
/// use plugin_api::futures::StreamExt;
/// use plugin_api::prelude::*;
///
/// #[derive(serde::Deserialize)]
/// struct Config {
///     #[serde(default)]
///     words: Vec<String>,
/// }
///
/// struct Words(Vec<String>);
///
/// impl PromptDriver for Words {
///     type Config = Config;
///     const ASYNC: bool = true;
///     const STREAM: bool = true;
///
///     fn new(config: Config) -> Result<Self, PluginError> {
///         if config.words.is_empty() {
///             return Err(PluginError::config("`words` must not be empty"));
///         }
///         Ok(Words(config.words))
///     }
///
///     async fn prompt_async(&self, _: PromptRequest) -> Result<PromptResponse, PluginError> {
///         // Runs in the plugin's own tokio runtime: timers and sockets work.
///         plugin_api::tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         Ok(PromptResponse::text(self.0.join(" "), Usage::default()))
///     }
///
///     fn stream(&self, _: PromptRequest) -> Result<DeltaStream, PluginError> {
///         let deltas: Vec<Result<StreamDelta, PluginError>> = self
///             .0
///             .iter()
///             .map(|w| Ok(StreamDelta::Text { text: format!("{w} ") }))
///             .chain([Ok(StreamDelta::Finish { reason: "stop".into() })])
///             .collect();
///         Ok(plugin_api::futures::stream::iter(deltas).boxed())
///     }
/// }
///
/// let driver = Words::new(Config { words: vec!["a".into(), "b".into()] }).unwrap();
/// let request = PromptRequest::new(vec![Message::user("hi")]);
/// let answer = plugin_api::block_on(driver.prompt_async(request.clone())).unwrap();
/// assert_eq!(answer.message.content, "a b");
/// let deltas: Vec<_> = plugin_api::futures::executor::block_on_stream(driver.stream(request).unwrap()).collect();
/// assert_eq!(deltas.len(), 3);
/// ```
pub trait PromptDriver: Sized + Send + Sync + 'static {
    /// Typed configuration, deserialised from the manifest's `[config]` table merged with the
    /// task's overrides. Use [`NoConfig`] for none.
    type Config: DeserializeOwned;
    /// Implements [`PromptDriver::prompt`].
    const SYNC: bool = false;
    /// Implements [`PromptDriver::prompt_async`].
    const ASYNC: bool = false;
    /// Implements [`PromptDriver::stream`].
    const STREAM: bool = false;

    /// Makes a driver from its configuration.
    ///
    /// # Errors
    /// An [`ErrorKind::Config`] error when the configuration cannot be used.
    fn new(config: Self::Config) -> Result<Self, PluginError>;

    /// Answers a request, blocking the calling thread.
    ///
    /// # Errors
    /// Whatever went wrong; [`ErrorKind::Unsupported`] unless overridden.
    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        let _ = request;
        Err(PluginError::unsupported("this driver has no sync prompt"))
    }

    /// Answers a request as a future.
    fn prompt_async(
        &self,
        request: PromptRequest,
    ) -> impl Future<Output = Result<PromptResponse, PluginError>> + Send {
        let _ = request;
        async { Err(PluginError::unsupported("this driver has no async prompt")) }
    }

    /// Answers a request as a stream of deltas.
    ///
    /// # Errors
    /// When the stream cannot be opened; [`ErrorKind::Unsupported`] unless overridden.
    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let _ = request;
        Err(PluginError::unsupported("this driver has no stream"))
    }
}

/// A tool written against the wire types: it describes its activities itself and dispatches
/// on [`ToolInvocation::activity`]. Export it with `tool:` in
/// [`export_plugin!`](crate::export_plugin).
///
/// Most tools are better written as a [`TypedTool`] of typed activities. This trait is for tools
/// whose activities are only known at run time (a proxy for another tool protocol, a tool
/// generated from a config file) and for tests of the host.
pub trait Tool: Sized + Send + Sync + 'static {
    /// Typed configuration; use [`NoConfig`] for none.
    type Config: DeserializeOwned;
    /// Implements [`Tool::call`].
    const SYNC: bool = false;
    /// Implements [`Tool::call_async`].
    const ASYNC: bool = false;

    /// Makes a tool from its configuration.
    ///
    /// # Errors
    /// An [`ErrorKind::Config`] error when the configuration cannot be used.
    fn new(config: Self::Config) -> Result<Self, PluginError>;

    /// The tool's name, description and activities.
    fn spec(&self) -> ToolSpec;

    /// Runs one activity, blocking the calling thread.
    ///
    /// A failure the model should see (bad argument, division by zero) is best returned as
    /// `Ok(ToolOutput::error(..))`; an `Err` is for failures of the tool itself.
    ///
    /// # Errors
    /// Failures of the tool itself; [`ErrorKind::Unsupported`] unless overridden.
    fn call(&self, invocation: ToolInvocation) -> Result<ToolOutput, PluginError> {
        let _ = invocation;
        Err(PluginError::unsupported("this tool has no sync call"))
    }

    /// Runs one activity as a future.
    fn call_async(
        &self,
        invocation: ToolInvocation,
    ) -> impl Future<Output = Result<ToolOutput, PluginError>> + Send {
        let _ = invocation;
        async { Err(PluginError::unsupported("this tool has no async call")) }
    }
}

/// An event listener driver: receives batches of events (to a file, a webhook, a console ...).
///
/// The host batches events per listener (the manifest or the task sets the batch size), calls
/// `publish` on the sync path and `publish_async` on the async one, and `flush` at the end of
/// each task. An error or a panic here is logged and counted by the host; it never fails the
/// task.
///
/// ```
/// use std::sync::Mutex;
/// use plugin_api::prelude::*;
///
/// struct Collect(Mutex<Vec<String>>);
///
/// impl EventListenerDriver for Collect {
///     type Config = NoConfig;
///     const SYNC: bool = true;
///
///     fn new(_: NoConfig) -> Result<Self, PluginError> {
///         Ok(Collect(Mutex::new(Vec::new())))
///     }
///
///     fn publish(&self, events: Vec<Event>) -> Result<(), PluginError> {
///         let mut seen = self.0.lock().map_err(|_| PluginError::internal("poisoned"))?;
///         seen.extend(events.iter().map(|e| e.kind.type_name().to_owned()));
///         Ok(())
///     }
/// }
///
/// let l = Collect::new(NoConfig {}).unwrap();
/// let e = Event::new("task", "run", EventKind::TextChunk { token: "hi".into() });
/// l.publish(vec![e]).unwrap();
/// assert_eq!(*l.0.lock().unwrap(), ["TextChunkEvent"]);
/// ```
pub trait EventListenerDriver: Sized + Send + Sync + 'static {
    /// Typed configuration; use [`NoConfig`] for none.
    type Config: DeserializeOwned;
    /// Implements [`EventListenerDriver::publish`].
    const SYNC: bool = false;
    /// Implements [`EventListenerDriver::publish_async`].
    const ASYNC: bool = false;

    /// Makes a listener driver from its configuration.
    ///
    /// # Errors
    /// An [`ErrorKind::Config`] error when the configuration cannot be used.
    fn new(config: Self::Config) -> Result<Self, PluginError>;

    /// Receives a batch of events, blocking the calling thread.
    ///
    /// # Errors
    /// When the batch could not be delivered; [`ErrorKind::Unsupported`] unless overridden.
    fn publish(&self, events: Vec<Event>) -> Result<(), PluginError> {
        let _ = events;
        Err(PluginError::unsupported(
            "this listener has no sync publish",
        ))
    }

    /// Receives a batch of events as a future.
    fn publish_async(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), PluginError>> + Send {
        let _ = events;
        async {
            Err(PluginError::unsupported(
                "this listener has no async publish",
            ))
        }
    }

    /// Writes out anything buffered (called at task end and at shutdown).
    ///
    /// # Errors
    /// When buffered events could not be written.
    fn flush(&self) -> Result<(), PluginError> {
        Ok(())
    }

    /// Async twin of [`EventListenerDriver::flush`].
    fn flush_async(&self) -> impl Future<Output = Result<(), PluginError>> + Send {
        async { Ok(()) }
    }
}

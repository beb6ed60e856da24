//! Run a plugin's entry points in-process, in its own crate's tests (feature `testing`).
//!
//! Each harness builds the plugin the way the host does (config as JSON, through the FFI
//! adapters [`export_plugin!`](crate::export_plugin) generates) and calls the same entry points
//! the host calls: requests are encoded to JSON, panics are caught and become
//! [`ErrorKind::Panic`] errors, and a mode the plugin does not declare is refused as the host
//! would refuse it. What it does not do is load a shared library; `grip plugins check` does that
//! with the built `.so` and its manifest.
//!
//! ```toml
//! [dev-dependencies]
//! plugin-api = { version = "1.2", features = ["testing"] }
//! ```
//!
//! ```
//! use plugin_api::prelude::*;
//! use plugin_api::testing;
//!
//! struct Echo;
//!
//! impl PromptDriver for Echo {
//!     type Config = NoConfig;
//!     const SYNC: bool = true;
//!
//!     fn new(_: NoConfig) -> Result<Self, PluginError> {
//!         Ok(Echo)
//!     }
//!
//!     fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
//!         let last = request.messages.last().map(|m| m.content.clone()).unwrap_or_default();
//!         Ok(PromptResponse::text(format!("echo: {last}"), Usage::default()))
//!     }
//! }
//!
//! let driver = testing::driver::<Echo>(serde_json::json!({})).unwrap();
//! let answer = driver.prompt(&testing::request("hi")).unwrap();
//! assert_eq!(answer.message.content, "echo: hi");
//! // Echo declares no ASYNC: the harness refuses the call, as the host would.
//! let refused = testing::block_on(driver.prompt_async(&testing::request("hi"))).unwrap_err();
//! assert_eq!(refused.kind, ErrorKind::Unsupported);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use abi_stable::std_types::{RNone, ROption, RResult, RSome, RString};
use async_ffi::{ContextExt as _, FfiPoll};
use futures::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{
    Capabilities, DeltaStreamBox, JsonResult, ListenerBox, PluginErrorFfi, PromptDriverBox,
    ToolBox, UnitResult,
};
use crate::sdk::ffi;
use crate::wire::{
    Event, EventKind, Message, PromptRequest, PromptResponse, StreamDelta, ToolInvocation,
    ToolOutput, ToolSpec,
};
use crate::{ErrorKind, EventListenerDriver, PluginError, PromptDriver, Tool};

/// Runs a future to completion on the current thread (the plugin's async code still runs in
/// the plugin's own runtime, entered on every poll, as under the host).
pub fn block_on<F: Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

/// A request with one user message.
pub fn request(text: &str) -> PromptRequest {
    PromptRequest::new(vec![Message::user(text)])
}

/// An event of the kind the host publishes when a task starts.
pub fn event(input: &str) -> Event {
    Event::new(
        "test-task",
        "test-run",
        EventKind::StartTask {
            input: input.to_owned(),
        },
    )
}

fn config_json(config: &serde_json::Value) -> String {
    match config {
        // The host sends `{}` for a plugin with no config.
        serde_json::Value::Null => "{}".to_owned(),
        other => other.to_string(),
    }
}

fn result<T>(r: RResult<T, PluginErrorFfi>) -> Result<T, PluginError> {
    r.into_result().map_err(PluginError::from_ffi)
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<RString, PluginError> {
    serde_json::to_string(value)
        .map(RString::from)
        .map_err(|e| PluginError::internal(format!("cannot encode the {what}: {e}")))
}

/// Decodes what the plugin sent, as the host does: garbage is an error naming what it was.
fn decode<T: DeserializeOwned>(what: &str, r: JsonResult) -> Result<T, PluginError> {
    let json = result(r)?;
    serde_json::from_str(json.as_str()).map_err(|e| {
        PluginError::internal(format!(
            "the plugin returned a malformed {what} ({e}): {json}"
        ))
    })
}

fn require(caps: Capabilities, needed: Capabilities, what: &str) -> Result<(), PluginError> {
    if caps.contains(needed) {
        Ok(())
    } else {
        Err(PluginError::unsupported(format!(
            "{what} is not declared by the plugin (set the matching SYNC/ASYNC/STREAM const); \
             the host would refuse this call"
        )))
    }
}

/// A plugin instance under test: the FFI object the host would hold, and the capabilities the
/// plugin declares.
pub struct UnderTest<B> {
    inner: B,
    caps: Capabilities,
}

impl<B> std::fmt::Debug for UnderTest<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnderTest")
            .field("caps", &self.caps)
            .finish()
    }
}

/// A prompt driver under test.
pub type TestDriver = UnderTest<PromptDriverBox>;
/// A tool under test.
pub type TestTool = UnderTest<ToolBox>;
/// An event listener driver under test.
pub type TestListener = UnderTest<ListenerBox>;

/// Makes driver `D` from its config (JSON, as in the manifest's `[config]`).
///
/// # Errors
/// A config that does not deserialize, or the driver's own `new` error.
pub fn driver<D: PromptDriver>(config: serde_json::Value) -> Result<TestDriver, PluginError> {
    let json = config_json(&config);
    let inner = result(ffi::new_driver::<D>(json.as_str().into()))?;
    Ok(TestDriver {
        inner,
        caps: ffi::driver_caps::<D>(),
    })
}

impl TestDriver {
    /// The sync entry point.
    ///
    /// # Errors
    /// The driver's error, a caught panic, or an undeclared mode.
    pub fn prompt(&self, request: &PromptRequest) -> Result<PromptResponse, PluginError> {
        require(self.caps, Capabilities::DRIVER_SYNC, "prompt (SYNC)")?;
        let req = encode("prompt request", request)?;
        decode("prompt response", self.inner.prompt(req.as_str().into()))
    }

    /// The async entry point.
    ///
    /// # Errors
    /// The driver's error, a caught panic, or an undeclared mode.
    pub async fn prompt_async(
        &self,
        request: &PromptRequest,
    ) -> Result<PromptResponse, PluginError> {
        require(
            self.caps,
            Capabilities::DRIVER_ASYNC,
            "prompt_async (ASYNC)",
        )?;
        let req = encode("prompt request", request)?;
        decode("prompt response", self.inner.prompt_async(req).await)
    }

    /// The stream entry point: each delta as the host would receive it.
    ///
    /// # Errors
    /// The driver's error opening the stream, or an undeclared mode; errors in the stream are
    /// its items.
    pub fn stream(&self, request: &PromptRequest) -> Result<TestStream, PluginError> {
        require(self.caps, Capabilities::DRIVER_STREAM, "stream (STREAM)")?;
        let req = encode("prompt request", request)?;
        let inner = result(self.inner.stream(req))?;
        Ok(TestStream {
            inner: Some(Box::new(inner)),
        })
    }

    /// Streams `request` to the end and returns the text (of the last attempt, when the driver
    /// restarted the stream), or the first error.
    ///
    /// # Errors
    /// The first error, from opening or from the stream.
    pub async fn stream_text(&self, request: &PromptRequest) -> Result<String, PluginError> {
        use futures::StreamExt as _;
        let mut stream = self.stream(request)?;
        let mut text = String::new();
        while let Some(delta) = stream.next().await {
            match delta? {
                StreamDelta::Text { text: t } => text.push_str(&t),
                StreamDelta::Restart { .. } => text.clear(),
                _ => {}
            }
        }
        Ok(text)
    }
}

/// A driver's stream under test: a [`Stream`] of deltas.
pub struct TestStream {
    // Boxed: the FFI object is not `Unpin`, a box is.
    inner: Option<Box<DeltaStreamBox>>,
}

impl std::fmt::Debug for TestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStream")
            .field("open", &self.inner.is_some())
            .finish()
    }
}

impl Stream for TestStream {
    type Item = Result<StreamDelta, PluginError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled: FfiPoll<ROption<JsonResult>> = cx.with_ffi_context(|fcx| inner.poll_next(fcx));
        match polled {
            FfiPoll::Pending => Poll::Pending,
            FfiPoll::Ready(RNone) => {
                this.inner = None;
                Poll::Ready(None)
            }
            FfiPoll::Ready(RSome(item)) => Poll::Ready(Some(decode("stream delta", item))),
            FfiPoll::Panicked => {
                this.inner = None;
                Poll::Ready(Some(Err(PluginError::new(
                    ErrorKind::Panic,
                    "the stream panicked outside the SDK's guard",
                ))))
            }
        }
    }
}

/// Makes tool `T` from its config (JSON; `null` for none).
///
/// # Errors
/// A config that does not deserialize, or the tool's own `new` error.
pub fn tool<T: Tool>(config: serde_json::Value) -> Result<TestTool, PluginError> {
    let json = config_json(&config);
    let inner = result(ffi::new_tool::<T>(json.as_str().into()))?;
    Ok(TestTool {
        inner,
        caps: ffi::tool_caps::<T>(),
    })
}

fn invocation(activity: &str, input: serde_json::Value) -> ToolInvocation {
    ToolInvocation {
        schema_version: crate::wire::WIRE_VERSION,
        activity: activity.to_owned(),
        input,
        call_id: "test-call".to_owned(),
    }
}

impl TestTool {
    /// The tool's spec, as the host reads it.
    ///
    /// # Errors
    /// A caught panic or a malformed spec.
    pub fn spec(&self) -> Result<ToolSpec, PluginError> {
        decode("tool spec", self.inner.spec())
    }

    /// The sync entry point. The host checks `input` against the activity's schema before it
    /// calls a tool; this harness does not, so a test can see what the tool does with bad input.
    ///
    /// # Errors
    /// The tool's error, a caught panic, or an undeclared mode.
    pub fn call(
        &self,
        activity: &str,
        input: serde_json::Value,
    ) -> Result<ToolOutput, PluginError> {
        require(self.caps, Capabilities::TOOL_SYNC, "call (SYNC)")?;
        let inv = encode("tool invocation", &invocation(activity, input))?;
        decode("tool output", self.inner.call(inv.as_str().into()))
    }

    /// The async entry point.
    ///
    /// # Errors
    /// The tool's error, a caught panic, or an undeclared mode.
    pub async fn call_async(
        &self,
        activity: &str,
        input: serde_json::Value,
    ) -> Result<ToolOutput, PluginError> {
        require(self.caps, Capabilities::TOOL_ASYNC, "call_async (ASYNC)")?;
        let inv = encode("tool invocation", &invocation(activity, input))?;
        decode("tool output", self.inner.call_async(inv).await)
    }
}

/// Makes listener `L` from its config (JSON; `null` for none).
///
/// # Errors
/// A config that does not deserialize, or the listener's own `new` error.
pub fn listener<L: EventListenerDriver>(
    config: serde_json::Value,
) -> Result<TestListener, PluginError> {
    let json = config_json(&config);
    let inner = result(ffi::new_listener::<L>(json.as_str().into()))?;
    Ok(TestListener {
        inner,
        caps: ffi::listener_caps::<L>(),
    })
}

fn unit(r: UnitResult) -> Result<(), PluginError> {
    result(r)
}

impl TestListener {
    /// The sync entry point: one batch.
    ///
    /// # Errors
    /// The listener's error, a caught panic, or an undeclared mode.
    pub fn publish(&self, events: &[Event]) -> Result<(), PluginError> {
        require(self.caps, Capabilities::LISTENER_SYNC, "publish (SYNC)")?;
        let batch = encode("event batch", &events)?;
        unit(self.inner.publish(batch.as_str().into()))
    }

    /// The async entry point: one batch.
    ///
    /// # Errors
    /// The listener's error, a caught panic, or an undeclared mode.
    pub async fn publish_async(&self, events: &[Event]) -> Result<(), PluginError> {
        require(
            self.caps,
            Capabilities::LISTENER_ASYNC,
            "publish_async (ASYNC)",
        )?;
        let batch = encode("event batch", &events)?;
        unit(self.inner.publish_async(batch).await)
    }

    /// Flushes (sync), as the host does at the end of a task.
    ///
    /// # Errors
    /// The listener's error, a caught panic, or an undeclared mode.
    pub fn flush(&self) -> Result<(), PluginError> {
        require(self.caps, Capabilities::LISTENER_SYNC, "flush (SYNC)")?;
        unit(self.inner.flush())
    }

    /// Flushes (async).
    ///
    /// # Errors
    /// The listener's error, a caught panic, or an undeclared mode.
    pub async fn flush_async(&self) -> Result<(), PluginError> {
        require(
            self.caps,
            Capabilities::LISTENER_ASYNC,
            "flush_async (ASYNC)",
        )?;
        unit(self.inner.flush_async().await)
    }
}

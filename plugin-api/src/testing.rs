//! Run a plugin's entry points in-process, in its own crate's tests (feature `testing`).
//!
//! Each harness builds the plugin the way the host does (config as JSON, through the FFI
//! adapters [`export_plugin!`](crate::export_plugin) generates) and calls the same entry points
//! the host calls: requests are encoded to JSON, a tool's input is checked against its
//! activity's schema with the host's own check ([`crate::validation`]), panics are caught and
//! become [`ErrorKind::Panic`] errors, and a mode the plugin does not declare is refused as the
//! host would refuse it. [`TestTool::instance`] (and its driver and listener twins) give the
//! plugin's own value, to look at its state. What the harness does not do is load a shared
//! library; `grip plugins check` does that with the built `.so` and its manifest.
//!
//! ```toml
//! [dev-dependencies]
//! plugin-api = { version = "1.3", features = ["testing"] }
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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
use crate::validation::{self, Validator};
use crate::wire::{
    Event, EventKind, Message, PromptRequest, PromptResponse, StreamDelta, ToolInvocation,
    ToolOutput, ToolSpec,
};
use crate::{ErrorKind, EventListenerDriver, PluginError, PromptDriver, Tool, TypedTool};

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

/// A prompt driver under test: the FFI object the host would hold, and the driver itself.
pub struct TestDriver<D> {
    instance: Arc<D>,
    inner: PromptDriverBox,
    caps: Capabilities,
}

/// A tool under test, with its activities' compiled schemas.
pub struct TestTool<T> {
    instance: Arc<T>,
    inner: ToolBox,
    caps: Capabilities,
    validators: HashMap<String, Validator>,
}

/// An event listener driver under test.
pub struct TestListener<L> {
    instance: Arc<L>,
    inner: ListenerBox,
    caps: Capabilities,
}

macro_rules! debug_and_instance {
    ($($ty:ident),*) => {$(
        impl<P> std::fmt::Debug for $ty<P> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty)).field("caps", &self.caps).finish()
            }
        }

        impl<P> $ty<P> {
            /// The plugin's own value, as built from the config.
            pub fn instance(&self) -> &P {
                &self.instance
            }
        }
    )*};
}

debug_and_instance!(TestDriver, TestTool, TestListener);

/// Makes driver `D` from its config (JSON, as in the manifest's `[config]`).
///
/// # Errors
/// A config that does not deserialize, or the driver's own `new` error.
pub fn driver<D: PromptDriver>(config: serde_json::Value) -> Result<TestDriver<D>, PluginError> {
    let json = config_json(&config);
    let (instance, inner) = result(ffi::new_driver_parts::<D>(json.as_str().into()))?;
    Ok(TestDriver {
        instance,
        inner,
        caps: ffi::driver_caps::<D>(),
    })
}

impl<D> TestDriver<D> {
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

/// Makes typed tool `T` from its config (JSON; `null` for none).
///
/// # Errors
/// A config that does not deserialize, the tool's own `new` error, or an activity whose
/// schema does not compile.
pub fn typed_tool<T: TypedTool>(config: serde_json::Value) -> Result<TestTool<T>, PluginError> {
    let json = config_json(&config);
    let (instance, inner) = result(ffi::new_typed_tool_parts::<T>(json.as_str().into()))?;
    TestTool::new(instance, inner, ffi::typed_tool_caps::<T>())
}

/// Makes wire-level tool `T` from its config (JSON; `null` for none).
///
/// # Errors
/// As [`typed_tool`].
pub fn tool<T: Tool>(config: serde_json::Value) -> Result<TestTool<T>, PluginError> {
    let json = config_json(&config);
    let (instance, inner) = result(ffi::new_tool_parts::<T>(json.as_str().into()))?;
    TestTool::new(instance, inner, ffi::tool_caps::<T>())
}

fn invocation(activity: &str, input: serde_json::Value) -> ToolInvocation {
    ToolInvocation {
        schema_version: crate::wire::WIRE_VERSION,
        activity: activity.to_owned(),
        input,
        call_id: "test-call".to_owned(),
    }
}

impl<T> TestTool<T> {
    fn new(instance: Arc<T>, inner: ToolBox, caps: Capabilities) -> Result<Self, PluginError> {
        let spec: ToolSpec = decode("tool spec", inner.spec())?;
        let mut validators = HashMap::new();
        for a in &spec.activities {
            let v = validation::compile(&a.parameters).map_err(|e| {
                PluginError::internal(format!(
                    "the schema of activity `{}` does not compile ({e}); the host would refuse the tool",
                    a.name
                ))
            })?;
            validators.insert(a.name.clone(), v);
        }
        Ok(Self {
            instance,
            inner,
            caps,
            validators,
        })
    }

    /// The tool's spec, as the host reads it.
    ///
    /// # Errors
    /// A caught panic or a malformed spec.
    pub fn spec(&self) -> Result<ToolSpec, PluginError> {
        decode("tool spec", self.inner.spec())
    }

    /// Checks `input` as the host does before it calls the tool: an unknown activity or input
    /// that breaks the schema is an [`ErrorKind::InvalidInput`] error with the message the
    /// model would get.
    fn check(&self, activity: &str, input: &serde_json::Value) -> Result<(), PluginError> {
        let Some(v) = self.validators.get(activity) else {
            let mut known: Vec<&str> = self.validators.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(PluginError::invalid_input(format!(
                "the tool has no activity `{activity}` (it has: {})",
                known.join(", ")
            )));
        };
        validation::check_arguments(v, activity, input).map_err(PluginError::invalid_input)
    }

    /// The sync entry point, after the host's check of `input`.
    ///
    /// # Errors
    /// Input the host would refuse, the tool's error, a caught panic, or an undeclared mode.
    pub fn call(
        &self,
        activity: &str,
        input: serde_json::Value,
    ) -> Result<ToolOutput, PluginError> {
        require(self.caps, Capabilities::TOOL_SYNC, "call (SYNC)")?;
        self.check(activity, &input)?;
        self.call_unchecked(activity, input)
    }

    /// The sync entry point without the host's check, to see what the tool does with input
    /// the host would never send.
    ///
    /// # Errors
    /// The tool's error, a caught panic, or an undeclared mode.
    pub fn call_unchecked(
        &self,
        activity: &str,
        input: serde_json::Value,
    ) -> Result<ToolOutput, PluginError> {
        require(self.caps, Capabilities::TOOL_SYNC, "call (SYNC)")?;
        let inv = encode("tool invocation", &invocation(activity, input))?;
        decode("tool output", self.inner.call(inv.as_str().into()))
    }

    /// The async entry point, after the host's check of `input`.
    ///
    /// # Errors
    /// Input the host would refuse, the tool's error, a caught panic, or an undeclared mode.
    pub async fn call_async(
        &self,
        activity: &str,
        input: serde_json::Value,
    ) -> Result<ToolOutput, PluginError> {
        require(self.caps, Capabilities::TOOL_ASYNC, "call_async (ASYNC)")?;
        self.check(activity, &input)?;
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
) -> Result<TestListener<L>, PluginError> {
    let json = config_json(&config);
    let (instance, inner) = result(ffi::new_listener_parts::<L>(json.as_str().into()))?;
    Ok(TestListener {
        instance,
        inner,
        caps: ffi::listener_caps::<L>(),
    })
}

fn unit(r: UnitResult) -> Result<(), PluginError> {
    result(r)
}

impl<L> TestListener<L> {
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

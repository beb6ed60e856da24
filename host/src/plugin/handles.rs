//! Safe handles to a plugin's instances: a driver, its streams, a tool, a listener. Each checks
//! the declared capability, encodes the call's wire JSON, calls the instance through
//! [`Raw`] (in process or in a child, the same), and decodes the answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use plugin_api::wire::{
    Event, PromptRequest, PromptResponse, StreamDelta, ToolInvocation, ToolOutput, ToolSpec,
};

use super::{Plugin, Raw, RawStream, decode, encode};
use crate::error::CallError;
use crate::isolation::protocol::Method;
use crate::manifest::{Kind, Mode};

/// A prompt driver instance. Cheap to clone; usable from many tasks at once.
#[derive(Clone)]
pub struct Driver {
    pub(super) plugin: Plugin,
    pub(super) inner: Raw,
    /// What its telemetry spans say of it (empty while telemetry is off).
    pub(super) gen_ai: Arc<crate::telemetry::genai::DriverInfo>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("plugin", &self.plugin.id())
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// The plugin it came from.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// What its telemetry spans say of it: provider, model, sampling settings, server.
    pub fn gen_ai(&self) -> &Arc<crate::telemetry::genai::DriverInfo> {
        &self.gen_ai
    }

    /// Blocking prompt.
    ///
    /// # Errors
    /// When the driver lacks the sync capability or the call fails.
    pub fn prompt(&self, request: &PromptRequest) -> Result<PromptResponse, CallError> {
        let id = self.plugin.id();
        self.plugin
            .require(Kind::PromptDriver, Mode::Sync, "prompt")?;
        let req = encode(id, "prompt", request)?;
        let out = self.inner.call_blocking(id, Method::Prompt, &req)?;
        decode(id, "prompt", &out)
    }

    /// Async prompt. Dropping the future cancels the plugin's work.
    ///
    /// # Errors
    /// When the driver lacks the async capability or the call fails.
    pub async fn prompt_async(&self, request: &PromptRequest) -> Result<PromptResponse, CallError> {
        let id = self.plugin.id();
        self.plugin
            .require(Kind::PromptDriver, Mode::Async, "prompt_async")?;
        let req = encode(id, "prompt_async", request)?;
        let out = self.inner.call(id, Method::PromptAsync, req).await?;
        decode(id, "prompt_async", &out)
    }

    /// Opens a stream of deltas. Poll it from async code, or iterate it with
    /// [`DriverStream::blocking_iter`] on the sync path. Dropping it cancels it.
    ///
    /// # Errors
    /// When the driver lacks the stream capability or refuses the request.
    pub fn stream(&self, request: &PromptRequest) -> Result<DriverStream, CallError> {
        let id = self.plugin.id();
        self.plugin
            .require(Kind::PromptDriver, Mode::Stream, "stream")?;
        let req = encode(id, "stream", request)?;
        let inner = self.inner.stream(id, req)?;
        Ok(DriverStream {
            plugin: self.plugin.clone(),
            inner,
        })
    }
}

/// A stream of [`StreamDelta`]s from a driver plugin.
pub struct DriverStream {
    pub(super) plugin: Plugin,
    pub(super) inner: RawStream,
}

impl std::fmt::Debug for DriverStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverStream")
            .field("plugin", &self.plugin.id())
            .finish_non_exhaustive()
    }
}

impl DriverStream {
    /// Iterates the stream, blocking the calling thread for each item.
    pub fn blocking_iter(self) -> impl Iterator<Item = Result<StreamDelta, CallError>> {
        futures::executor::block_on_stream(self)
    }
}

impl Stream for DriverStream {
    type Item = Result<StreamDelta, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let id = this.plugin.id();
        this.inner
            .poll_item(id, cx)
            .map(|item| item.map(|r| r.and_then(|json| decode(id, "stream", &json))))
    }
}

/// A tool instance with its spec. Cheap to clone.
#[derive(Clone)]
pub struct ToolHandle {
    pub(super) plugin: Plugin,
    pub(super) spec: Arc<ToolSpec>,
    pub(super) validators: super::Validators,
    pub(super) inner: Raw,
}

impl std::fmt::Debug for ToolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolHandle")
            .field("plugin", &self.plugin.id())
            .finish_non_exhaustive()
    }
}

impl ToolHandle {
    /// The plugin it came from.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The tool's spec, read once at creation.
    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    /// The compiled JSON Schema of an activity's input.
    pub fn validator(&self, activity: &str) -> Option<&Arc<jsonschema::Validator>> {
        self.validators.get(activity)
    }

    /// Blocking call.
    ///
    /// # Errors
    /// When the tool lacks the sync capability or the call fails.
    pub fn call(&self, invocation: &ToolInvocation) -> Result<ToolOutput, CallError> {
        let id = self.plugin.id();
        self.plugin.require(Kind::Tool, Mode::Sync, "call")?;
        let inv = encode(id, "call", invocation)?;
        let out = self.inner.call_blocking(id, Method::Call, &inv)?;
        decode(id, "call", &out)
    }

    /// Async call.
    ///
    /// # Errors
    /// When the tool lacks the async capability or the call fails.
    pub async fn call_async(&self, invocation: &ToolInvocation) -> Result<ToolOutput, CallError> {
        let id = self.plugin.id();
        self.plugin.require(Kind::Tool, Mode::Async, "call_async")?;
        let inv = encode(id, "call_async", invocation)?;
        let out = self.inner.call(id, Method::CallAsync, inv).await?;
        decode(id, "call_async", &out)
    }
}

/// An event listener driver instance. Cheap to clone.
#[derive(Clone)]
pub struct ListenerHandle {
    pub(super) plugin: Plugin,
    pub(super) inner: Raw,
}

impl std::fmt::Debug for ListenerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerHandle")
            .field("plugin", &self.plugin.id())
            .finish_non_exhaustive()
    }
}

impl ListenerHandle {
    /// The plugin it came from.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The batch as JSON, without the event types the plugin's SDK cannot parse (see
    /// [`Plugin::knows_event`]); `None` when nothing is left to send.
    fn batch(
        &self,
        operation: &'static str,
        events: &[Event],
    ) -> Result<Option<String>, CallError> {
        let id = self.plugin.id();
        if events.iter().all(|e| self.plugin.knows_event(&e.kind)) {
            return encode(id, operation, &events).map(Some);
        }
        let known: Vec<&Event> = events
            .iter()
            .filter(|e| self.plugin.knows_event(&e.kind))
            .collect();
        if known.is_empty() {
            return Ok(None);
        }
        encode(id, operation, &known).map(Some)
    }

    /// Blocking publish of a batch.
    ///
    /// # Errors
    /// When the listener lacks the sync capability or fails.
    pub fn publish(&self, events: &[Event]) -> Result<(), CallError> {
        let id = self.plugin.id();
        self.plugin
            .require(Kind::EventListener, Mode::Sync, "publish")?;
        match self.batch("publish", events)? {
            Some(batch) => self
                .inner
                .call_blocking(id, Method::Publish, &batch)
                .map(drop),
            None => Ok(()),
        }
    }

    /// Async publish of a batch.
    ///
    /// # Errors
    /// When the listener lacks the async capability or fails.
    pub async fn publish_async(&self, events: &[Event]) -> Result<(), CallError> {
        let id = self.plugin.id();
        self.plugin
            .require(Kind::EventListener, Mode::Async, "publish_async")?;
        match self.batch("publish_async", events)? {
            Some(batch) => self
                .inner
                .call(id, Method::PublishAsync, batch)
                .await
                .map(drop),
            None => Ok(()),
        }
    }

    /// Blocking flush.
    ///
    /// # Errors
    /// When the listener fails to flush.
    pub fn flush(&self) -> Result<(), CallError> {
        let id = self.plugin.id();
        self.plugin
            .require(Kind::EventListener, Mode::Sync, "flush")?;
        self.inner.call_blocking(id, Method::Flush, "").map(drop)
    }

    /// Async flush.
    ///
    /// # Errors
    /// When the listener fails to flush.
    pub async fn flush_async(&self) -> Result<(), CallError> {
        let id = self.plugin.id();
        self.plugin
            .require(Kind::EventListener, Mode::Async, "flush_async")?;
        self.inner
            .call(id, Method::FlushAsync, String::new())
            .await
            .map(drop)
    }
}

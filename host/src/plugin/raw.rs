//! An instance as the boundary sees it: wire JSON in, wire JSON out, whether the plugin runs in
//! this process (an ABI box) or in a supervised child (see [`crate::isolation`]).
//!
//! The typed handles in the parent module encode and decode around this, and the child's server
//! calls the same layer on its side, so both modes run one piece of calling code.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{FutureExt, Stream};
use plugin_api::ErrorKind;
use plugin_api::abi::{DeltaStreamBox, ListenerBox, PluginErrorFfi, PromptDriverBox, ToolBox};
use plugin_api::abi_stable::std_types::{RNone, RResult, RSome, RString};
use plugin_api::async_ffi::{ContextExt, FfiPoll};

use super::to_call_error;
use crate::error::CallError;
use crate::isolation::protocol::Method;
use crate::isolation::{RemoteInstance, RemoteStream};
use crate::mcp::client::McpClient;

/// One instance of a driver, tool or listener.
#[derive(Clone)]
pub(crate) enum Raw {
    Driver(Arc<PromptDriverBox>),
    Tool(Arc<ToolBox>),
    Listener(Arc<ListenerBox>),
    Remote(Arc<RemoteInstance>),
    /// A tool backed by an MCP server.
    Mcp(Arc<McpClient>),
}

impl Method {
    /// The operation's name in errors, as the typed handles spell it.
    pub(crate) fn op(self) -> &'static str {
        match self {
            Method::Prompt => "prompt",
            Method::PromptAsync => "prompt_async",
            Method::Stream => "stream",
            Method::Call => "call",
            Method::CallAsync => "call_async",
            Method::Publish => "publish",
            Method::PublishAsync => "publish_async",
            Method::Flush => "flush",
            Method::FlushAsync => "flush_async",
        }
    }
}

fn unit(r: RResult<(), PluginErrorFfi>) -> RResult<RString, PluginErrorFfi> {
    r.map(|()| RString::new())
}

fn wrong(plugin: &str, method: Method) -> CallError {
    CallError::host(
        plugin,
        method.op(),
        ErrorKind::Internal,
        "called on an instance of another kind",
    )
}

impl Raw {
    /// A blocking method (`prompt`, `call`, `publish`, `flush`).
    pub(crate) fn call_blocking(
        &self,
        plugin: &str,
        method: Method,
        body: &str,
    ) -> Result<String, CallError> {
        let op = method.op();
        let out = match (self, method) {
            (Raw::Remote(r), _) => return r.call_blocking(method, body),
            (Raw::Mcp(c), Method::Call) => return c.call_blocking(method.op(), body),
            (Raw::Driver(d), Method::Prompt) => d.prompt(body.into()),
            (Raw::Tool(t), Method::Call) => t.call(body.into()),
            (Raw::Listener(l), Method::Publish) => unit(l.publish(body.into())),
            (Raw::Listener(l), Method::Flush) => unit(l.flush()),
            _ => return Err(wrong(plugin, method)),
        };
        to_call_error(plugin, op, out).map(RString::into_string)
    }

    /// An async method (`prompt_async`, `call_async`, `publish_async`, `flush_async`).
    pub(crate) async fn call(
        &self,
        plugin: &str,
        method: Method,
        body: String,
    ) -> Result<String, CallError> {
        let fut = match (self, method) {
            (Raw::Remote(r), _) => return r.call(method, body).await,
            (Raw::Mcp(c), Method::CallAsync) => return c.call(method.op(), &body).await,
            (Raw::Driver(d), Method::PromptAsync) => d.prompt_async(body.into()),
            (Raw::Tool(t), Method::CallAsync) => t.call_async(body.into()),
            (Raw::Listener(l), Method::PublishAsync) => {
                return guarded(plugin, method.op(), l.publish_async(body.into()))
                    .await
                    .map(|()| String::new());
            }
            (Raw::Listener(l), Method::FlushAsync) => {
                return guarded(plugin, method.op(), l.flush_async())
                    .await
                    .map(|()| String::new());
            }
            _ => return Err(wrong(plugin, method)),
        };
        guarded(plugin, method.op(), fut)
            .await
            .map(RString::into_string)
    }

    /// Opens a driver's stream.
    pub(crate) fn stream(&self, plugin: &str, body: String) -> Result<RawStream, CallError> {
        match self {
            Raw::Remote(r) => r.stream(body).map(RawStream::Remote),
            Raw::Driver(d) => to_call_error(plugin, "stream", d.stream(body.into()))
                .map(|s| RawStream::Local(Some(Box::new(s)))),
            _ => Err(wrong(plugin, Method::Stream)),
        }
    }
}

/// Awaits a plugin future, turning a poll that panicked through the boundary into an error.
pub(crate) async fn guarded<T>(
    plugin: &str,
    op: &'static str,
    fut: impl std::future::Future<Output = RResult<T, PluginErrorFfi>>,
) -> Result<T, CallError> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => to_call_error(plugin, op, r),
        Err(_) => Err(CallError::host(
            plugin,
            op,
            ErrorKind::Panic,
            "the plugin's future panicked (no message: it was not guarded by the plugin SDK)",
        )),
    }
}

/// A driver's stream of wire JSON items. Dropping it cancels it.
pub(crate) enum RawStream {
    // Boxed because abi_stable's trait objects are not `Unpin`; `None` once ended.
    Local(Option<Box<DeltaStreamBox>>),
    Remote(RemoteStream),
}

impl RawStream {
    /// The next item; `plugin` names the plugin in errors.
    pub(crate) fn poll_item(
        &mut self,
        plugin: &str,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<String, CallError>>> {
        let slot = match self {
            RawStream::Remote(r) => return Pin::new(r).poll_next(cx),
            RawStream::Local(slot) => slot,
        };
        let Some(inner) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            cx.with_ffi_context(|fcx| inner.poll_next(fcx))
        }));
        match polled {
            Ok(FfiPoll::Pending) => Poll::Pending,
            Ok(FfiPoll::Ready(RNone)) => {
                *slot = None;
                Poll::Ready(None)
            }
            Ok(FfiPoll::Ready(RSome(item))) => Poll::Ready(Some(
                to_call_error(plugin, "stream", item).map(RString::into_string),
            )),
            Ok(FfiPoll::Panicked) | Err(_) => {
                *slot = None;
                Poll::Ready(Some(Err(CallError::host(
                    plugin,
                    "stream",
                    ErrorKind::Panic,
                    "the plugin's stream panicked (no message: it was not guarded by the plugin SDK)",
                ))))
            }
        }
    }
}

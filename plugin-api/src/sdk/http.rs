//! HTTP through the host (ABI generation 2): the request runs on the host's client and runtime,
//! so a remote driver's upstream call costs what it would cost the host itself (no hand-off to
//! the plugin's own runtime and back), and every plugin shares the host's connection pool.
//!
//! [`available`] says whether the host that loaded the plugin offers it: a generation-2 host
//! always does; a plugin called outside any host (its own unit tests) has none and should fall
//! back to a client of its own.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use abi_stable::std_types::{RNone, RSome, RVec};
use async_ffi::{ContextExt, FfiPoll};
use futures::Stream;

use super::PluginError;
use crate::abi_v2::{HttpBodyBox, HttpRequestFfi, HttpResult};
use crate::wire::{HttpRequestHead, HttpResponseHead};

type HttpFn = extern "C" fn(u64, HttpRequestFfi) -> async_ffi::FfiFuture<HttpResult>;

static HOST_HTTP: OnceLock<(u64, HttpFn)> = OnceLock::new();

/// Stores the host's HTTP service (called by the SDK's init).
pub(crate) fn install(handle: u64, http: HttpFn) {
    let _ = HOST_HTTP.set((handle, http));
}

/// Whether the host offers HTTP (a generation-2 host that has initialised this plugin).
pub fn available() -> bool {
    HOST_HTTP.get().is_some()
}

/// A request to send through the host.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, URL, headers and timeouts.
    pub head: HttpRequestHead,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request of `method` to `url`, no headers, no body, the host's timeouts.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            head: HttpRequestHead {
                method: method.to_owned(),
                url: url.to_owned(),
                headers: Vec::new(),
                timeout_ms: None,
                connect_timeout_ms: None,
            },
            body: Vec::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.head.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the whole-exchange timeout.
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.head.timeout_ms = Some(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.head.connect_timeout_ms = Some(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

/// The host's response: status and headers at once, the body as a stream of chunks.
pub struct Response {
    /// Status and headers.
    pub head: HttpResponseHead,
    body: Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, chunk by chunk.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// The whole body.
    ///
    /// # Errors
    /// The transport error or timeout that ended the body early.
    pub async fn bytes(self) -> Result<Vec<u8>, PluginError> {
        use futures::StreamExt;
        let mut body = self.body;
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

/// A response body from the host. Dropping it cancels the rest of the exchange.
pub struct Body(Option<Box<HttpBodyBox>>);

impl Stream for Body {
    type Item = Result<Vec<u8>, PluginError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        match cx.with_ffi_context(|fcx| inner.poll_chunk(fcx)) {
            FfiPoll::Pending => Poll::Pending,
            FfiPoll::Ready(RSome(chunk)) => Poll::Ready(Some(
                chunk
                    .into_result()
                    .map(RVec::into_vec)
                    .map_err(PluginError::from_ffi),
            )),
            FfiPoll::Ready(RNone) => {
                self.0 = None;
                Poll::Ready(None)
            }
            FfiPoll::Panicked => {
                self.0 = None;
                Poll::Ready(Some(Err(PluginError::internal(
                    "the host's HTTP body panicked",
                ))))
            }
        }
    }
}

/// Sends `request` through the host; resolves once the response head has arrived (any status).
///
/// # Errors
/// `Unsupported` when the host offers no HTTP (see [`available`]); otherwise the host's error:
/// `Timeout`, `Upstream` (connection or protocol, retryable) or `InvalidInput`.
pub async fn send(request: Request) -> Result<Response, PluginError> {
    let Some(&(handle, http)) = HOST_HTTP.get() else {
        return Err(PluginError::unsupported(
            "the host offers no HTTP service (ABI generation 2)",
        ));
    };
    let head = serde_json::to_string(&request.head)
        .map_err(|e| PluginError::internal(format!("cannot encode the request head: {e}")))?;
    let fut = http(
        handle,
        HttpRequestFfi {
            head: head.into(),
            body: request.body.into(),
        },
    );
    let resp = fut.await.into_result().map_err(PluginError::from_ffi)?;
    let head: HttpResponseHead = serde_json::from_str(resp.head.as_str()).map_err(|e| {
        PluginError::internal(format!("the host sent a malformed response head: {e}"))
    })?;
    Ok(Response {
        head,
        body: Body(Some(Box::new(resp.body))),
    })
}

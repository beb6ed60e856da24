//! What the host offers the plugins it loads: a log sink (every generation) and, from ABI
//! generation 2, an HTTP client on the host's own runtime.
//!
//! The HTTP service is why generation 2 exists: a remote driver's request, its connection and
//! its body run on the host's reactor, polled by the host worker that polls the plugin's future,
//! so an upstream call costs the host what a hand-written proxy's call costs it (see
//! BENCHMARKS.md, "Host cost"). All plugins share one connection pool per connect timeout.
//!
//! Called from a thread with no host runtime (a plugin's own runtime thread, a plain thread on
//! the sync path), the exchange runs on the background runtime instead and its body is relayed
//! through a channel; dropping the future or the body cancels it either way.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use plugin_api::abi::{HostServicesV1, LogLevel, PluginErrorFfi};
use plugin_api::abi_stable::std_types::{RNone, ROption, RResult, RSome, RStr, RVec};
use plugin_api::abi_v2::{
    HostServicesV2, HttpBodyFfi, HttpBodyFfi_TO, HttpRequestFfi, HttpResponseFfi, HttpResult,
};
use plugin_api::async_ffi::{FfiContext, FfiFuture, FfiPoll, FutureExt as _};
use plugin_api::wire::{HttpRequestHead, HttpResponseHead};
use plugin_api::{ErrorKind, PluginError};

/// Names of loaded plugins, indexed by the handle given to each in its host services.
static HANDLES: RwLock<Vec<String>> = RwLock::new(Vec::new());

fn register(id: &str) -> u64 {
    let mut handles = HANDLES.write().unwrap_or_else(|e| e.into_inner());
    handles.push(id.to_owned());
    (handles.len() - 1) as u64
}

/// Generation-1 services for plugin `id`.
pub(crate) fn v1_for(id: &str) -> HostServicesV1 {
    HostServicesV1 {
        handle: register(id),
        log: host_log,
    }
}

/// Generation-2 services for plugin `id`.
pub(crate) fn v2_for(id: &str) -> HostServicesV2 {
    HostServicesV2 {
        handle: register(id),
        log: host_log,
        max_log_level: max_log_level(),
        http: host_http,
    }
}

/// The most verbose level this process's subscriber records (fixed when the plugin is loaded).
fn max_log_level() -> LogLevel {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => LogLevel::TRACE,
        LevelFilter::DEBUG => LogLevel::DEBUG,
        LevelFilter::INFO => LogLevel::INFO,
        LevelFilter::WARN => LogLevel::WARN,
        LevelFilter::ERROR => LogLevel::ERROR,
        _ => LogLevel(0),
    }
}

extern "C" fn host_log(handle: u64, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
    // A panic must not unwind into the plugin's frame.
    let _ = std::panic::catch_unwind(|| {
        let handles = HANDLES.read().unwrap_or_else(|e| e.into_inner());
        let plugin = handles
            .get(handle as usize)
            .map(String::as_str)
            .unwrap_or("?");
        let (target, message) = (target.as_str(), message.as_str());
        match level {
            LogLevel::ERROR => {
                tracing::error!(target: "plugin", plugin, plugin_target = target, "{message}")
            }
            LogLevel::WARN => {
                tracing::warn!(target: "plugin", plugin, plugin_target = target, "{message}")
            }
            LogLevel::INFO => {
                tracing::info!(target: "plugin", plugin, plugin_target = target, "{message}")
            }
            LogLevel::DEBUG => {
                tracing::debug!(target: "plugin", plugin, plugin_target = target, "{message}")
            }
            _ => tracing::trace!(target: "plugin", plugin, plugin_target = target, "{message}"),
        }
    });
}

/// Requests sent through the HTTP service since start (for tests and `/metrics`).
pub fn http_requests_sent() -> u64 {
    SENT.load(std::sync::atomic::Ordering::Relaxed)
}

static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The connect timeout when a request names none.
const DEFAULT_CONNECT: Duration = Duration::from_secs(10);

/// How many distinct connect timeouts get a client (and pool) of their own.
const MAX_CLIENTS: usize = 16;

/// One client per connect timeout: reqwest sets that per client, everything else per request.
/// Each thread remembers the last one it used, so the usual request takes no lock.
fn client(connect: Duration) -> Result<reqwest::Client, PluginError> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(Duration, reqwest::Client)>> =
            const { std::cell::RefCell::new(None) };
    }
    if let Some(c) = LAST.with_borrow(|l| {
        l.as_ref()
            .filter(|(d, _)| *d == connect)
            .map(|(_, c)| c.clone())
    }) {
        return Ok(c);
    }
    let c = shared_client(connect)?;
    LAST.with_borrow_mut(|l| *l = Some((connect, c.clone())));
    Ok(c)
}

fn shared_client(connect: Duration) -> Result<reqwest::Client, PluginError> {
    static CLIENTS: Mutex<BTreeMap<Duration, reqwest::Client>> = Mutex::new(BTreeMap::new());
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get(&connect) {
        return Ok(c.clone());
    }
    crate::tls::install_provider();
    let c = reqwest::Client::builder()
        .connect_timeout(connect)
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| PluginError::internal(format!("cannot build the HTTP client: {e}")))?;
    while clients.len() >= MAX_CLIENTS {
        clients.pop_first();
    }
    clients.insert(connect, c.clone());
    Ok(c)
}

extern "C" fn host_http(_handle: u64, request: HttpRequestFfi) -> FfiFuture<HttpResult> {
    async move {
        match exchange(request).await {
            Ok((head, body)) => RResult::ROk(HttpResponseFfi {
                head: head.into(),
                body: HttpBodyFfi_TO::from_value(
                    body,
                    plugin_api::abi_stable::sabi_trait::TD_Opaque,
                ),
            }),
            Err(e) => RResult::RErr(e.into_ffi()),
        }
    }
    .into_ffi()
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Vec<u8>, PluginError>> + Send>>;

/// Sends the request: inline on the caller's runtime when it is in one, else on the
/// background runtime.
async fn exchange(request: HttpRequestFfi) -> Result<(String, Body), PluginError> {
    let head: HttpRequestHead = serde_json::from_str(request.head.as_str()).map_err(|e| {
        PluginError::new(
            ErrorKind::InvalidInput,
            format!("malformed HTTP request head: {e}"),
        )
    })?;
    let builder = build(&head, request.body.into_vec())?;
    SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if tokio::runtime::Handle::try_current().is_ok() {
        let (head, chunks) = send(builder).await?;
        return Ok((head, Body::Inline(chunks)));
    }
    let rt = crate::isolation::background_runtime().map_err(PluginError::internal)?;
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let (chunk_tx, chunk_rx) = tokio::sync::mpsc::channel(8);
    let task = rt.spawn(async move {
        match send(builder).await {
            Err(e) => {
                let _ = head_tx.send(Err(e));
            }
            Ok((head, mut chunks)) => {
                if head_tx.send(Ok(head)).is_err() {
                    return;
                }
                while let Some(chunk) = chunks.next().await {
                    if chunk_tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let guard = AbortOnDrop(task);
    let head = head_rx
        .await
        .map_err(|_| PluginError::internal("the HTTP exchange was dropped"))??;
    Ok((
        head,
        Body::Relayed {
            rx: chunk_rx,
            _task: guard,
        },
    ))
}

fn build(head: &HttpRequestHead, body: Vec<u8>) -> Result<reqwest::RequestBuilder, PluginError> {
    let bad = |what: String| PluginError::new(ErrorKind::InvalidInput, what);
    let method = reqwest::Method::from_bytes(head.method.as_bytes())
        .map_err(|_| bad(format!("invalid HTTP method {:?}", head.method)))?;
    let url = reqwest::Url::parse(&head.url)
        .map_err(|e| bad(format!("invalid URL {:?}: {e}", head.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!("not an http(s) URL: {:?}", head.url)));
    }
    let connect = head
        .connect_timeout_ms
        .map_or(DEFAULT_CONNECT, Duration::from_millis);
    let mut rb = client(connect)?.request(method, url).body(body);
    for (k, v) in &head.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| bad(format!("invalid header name `{k}`: {e}")))?;
        let value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|e| bad(format!("invalid value for header `{k}`: {e}")))?;
        rb = rb.header(name, value);
    }
    if let Some(ms) = head.timeout_ms {
        rb = rb.timeout(Duration::from_millis(ms));
    }
    Ok(rb)
}

async fn send(rb: reqwest::RequestBuilder) -> Result<(String, Chunks), PluginError> {
    let resp = rb.send().await.map_err(|e| transport_error(&e))?;
    let head = HttpResponseHead {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
    };
    let head = serde_json::to_string(&head).map_err(|e| PluginError::internal(e.to_string()))?;
    let chunks = resp
        .bytes_stream()
        .map(|c| c.map(|b| b.to_vec()).map_err(|e| transport_error(&e)));
    Ok((head, Box::pin(chunks)))
}

/// A reqwest error as the service reports it: `Timeout`, or `Upstream` saying whether the
/// connection could not be made, with the causes (never headers: keys cannot leak here).
fn transport_error(e: &reqwest::Error) -> PluginError {
    if e.is_timeout() {
        return PluginError::new(ErrorKind::Timeout, "timed out").retryable();
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut causes = Vec::new();
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let detail = if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    };
    PluginError::upstream(format!("{what}: {detail}")).retryable()
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body handed to the plugin.
enum Body {
    Inline(Chunks),
    Relayed {
        rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, PluginError>>,
        _task: AbortOnDrop,
    },
}

impl Body {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Vec<u8>, PluginError>>> {
        match self {
            Body::Inline(s) => s.as_mut().poll_next(cx),
            Body::Relayed { rx, .. } => rx.poll_recv(cx),
        }
    }
}

impl HttpBodyFfi for Body {
    fn poll_chunk(
        &mut self,
        cx: &mut FfiContext<'_>,
    ) -> FfiPoll<ROption<RResult<RVec<u8>, PluginErrorFfi>>> {
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cx.with_context(|cx| self.poll(cx))
        }));
        match polled {
            Ok(Poll::Pending) => FfiPoll::Pending,
            Ok(Poll::Ready(None)) => FfiPoll::Ready(RNone),
            Ok(Poll::Ready(Some(Ok(chunk)))) => FfiPoll::Ready(RSome(RResult::ROk(chunk.into()))),
            Ok(Poll::Ready(Some(Err(e)))) => FfiPoll::Ready(RSome(RResult::RErr(e.into_ffi()))),
            Err(_) => FfiPoll::Panicked,
        }
    }
}

//! Shared HTTP plumbing for remote prompt-driver plugins (OpenAI-compatible, Anthropic, ...):
//! one client setup, one retry loop, one error classification, one SSE reader. Each driver
//! keeps only its own wire format.
//!
//! Everything here runs inside the plugin's tokio runtime (the SDK enters it on every poll),
//! so back-off waits are timers, never blocked threads. Requests themselves go through the
//! host's HTTP service when the host offers one (see [`transport`]).

use std::collections::BTreeMap;
use std::time::Duration;

use plugin_api::{DeltaStream, ErrorKind, PluginError};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

mod stream;
pub mod transport;
pub use stream::{SseDecoder, SseEvent, decode_stream, sse_events};
pub use transport::{Request, Response, Transport};

/// See [`HttpConfig::client`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientChoice {
    /// The host's HTTP service, when there is one.
    #[default]
    Host,
    /// The plugin's own client.
    Own,
}

/// Timeouts, retries and extra headers, shared by every remote driver's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// TCP connect timeout.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Whole request, first byte to last (streams included).
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Longest silence allowed between two chunks of a stream.
    #[serde(default = "defaults::stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Which client sends requests: `"host"` (the default: the host's HTTP service when the
    /// host offers one, ABI generation 2) or `"own"` (a client of the plugin's own, on its own
    /// runtime, as in generation 1).
    #[serde(default)]
    pub client: ClientChoice,
    /// Extra HTTP headers (gateways and proxies need them).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: defaults::connect_timeout_ms(),
            request_timeout_ms: defaults::request_timeout_ms(),
            stream_idle_timeout_ms: defaults::stream_idle_timeout_ms(),
            retry: RetryPolicy::default(),
            client: ClientChoice::default(),
            headers: BTreeMap::new(),
        }
    }
}

/// Exponential back-off with jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// First back-off.
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest back-off, and the longest `Retry-After` honoured (longer ones fail at once).
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Whether a stream cut before its end is sent again (the consumer is told to discard what
    /// it got). Off for consumers that cannot take output back once shown.
    #[serde(default = "defaults::restart_streams")]
    pub restart_streams: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: defaults::max_retries(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            restart_streams: defaults::restart_streams(),
        }
    }
}

mod defaults {
    pub fn connect_timeout_ms() -> u64 {
        10_000
    }
    pub fn request_timeout_ms() -> u64 {
        600_000
    }
    pub fn stream_idle_timeout_ms() -> u64 {
        60_000
    }
    pub fn max_retries() -> u32 {
        2
    }
    pub fn initial_backoff_ms() -> u64 {
        500
    }
    pub fn max_backoff_ms() -> u64 {
        30_000
    }
    pub fn restart_streams() -> bool {
        true
    }
}

impl HttpConfig {
    /// The sizes that bound how long one task may hold a connection and a slot, checked when a
    /// driver is made: a day-long timeout or a thousand retries is a mistake (or an attack).
    ///
    /// # Errors
    /// A config error naming the key and its range.
    pub fn check(&self) -> Result<(), PluginError> {
        const HOUR_MS: u64 = 3_600_000;
        let ranges: [(&str, u64, u64, u64); 6] = [
            (
                "http.connect_timeout_ms",
                self.connect_timeout_ms,
                1,
                300_000,
            ),
            (
                "http.request_timeout_ms",
                self.request_timeout_ms,
                1,
                HOUR_MS,
            ),
            (
                "http.stream_idle_timeout_ms",
                self.stream_idle_timeout_ms,
                1,
                HOUR_MS,
            ),
            (
                "http.retry.max_retries",
                u64::from(self.retry.max_retries),
                0,
                10,
            ),
            (
                "http.retry.initial_backoff_ms",
                self.retry.initial_backoff_ms,
                0,
                300_000,
            ),
            (
                "http.retry.max_backoff_ms",
                self.retry.max_backoff_ms,
                0,
                300_000,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(PluginError::config(format!(
                    "`{key}` = {value} is out of range: {min} to {max}"
                )));
            }
        }
        for (k, v) in &self.headers {
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| {
                PluginError::config(format!("headers: invalid header name `{k}`: {e}"))
            })?;
            HeaderValue::from_str(v).map_err(|e| {
                PluginError::config(format!("headers: invalid value for `{k}`: {e}"))
            })?;
        }
        Ok(())
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based): `initial * 2^retry`, capped, with jitter
    /// in [50%, 100%].
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << retry.min(20))
            .min(self.max_backoff_ms);
        let jittered = rand::rng().random_range(base / 2..=base.max(1));
        Duration::from_millis(jittered)
    }
}

/// The plugin's own client for `config` (used only where no host offers HTTP): one per distinct
/// connect timeout in the process, shared by every driver instance that asks for it, so
/// instances made per task reuse connections and TLS setup. Headers go on each request.
///
/// # Errors
/// A client that cannot be built.
pub fn client(config: &HttpConfig) -> Result<reqwest::Client, PluginError> {
    let key = config.connect_timeout_ms;
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let c = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .build()
        .map_err(|e| PluginError::config(format!("cannot build the HTTP client: {e}")))?;
    // Bounded: where an operator lets requests set timeouts, each request could bring a new
    // one. An evicted one costs a client build the next time it is asked for, nothing more.
    while clients.len() >= MAX_CACHED_CLIENTS {
        clients.pop_first();
    }
    clients.insert(key, c.clone());
    Ok(c)
}

/// How many distinct clients [`client`] keeps.
const MAX_CACHED_CLIENTS: usize = 32;

static CLIENTS: std::sync::LazyLock<std::sync::Mutex<BTreeMap<u64, reqwest::Client>>> =
    std::sync::LazyLock::new(Default::default);

/// A JSON POST of `body` to `url` with `http`'s headers and timeouts.
pub fn json_post(url: &str, body: &serde_json::Value, http: &HttpConfig) -> Request {
    let mut rb = Request::new("POST", url)
        .header("content-type", "application/json")
        .timeout(Duration::from_millis(http.request_timeout_ms))
        .connect_timeout(Duration::from_millis(http.connect_timeout_ms))
        .body(serde_json::to_vec(body).unwrap_or_default());
    for (k, v) in &http.headers {
        rb = rb.header(k.clone(), v.clone());
    }
    rb
}

/// A response's informational string (its id, the model that answered), whatever the server
/// sent: a non-string or empty value is none.
pub fn nonempty_str(v: Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// The W3C `traceparent` of the host's prompt span on `rb`, when the host sent one, so the
/// upstream's own spans join the task's trace.
pub fn with_traceparent(rb: Request, traceparent: Option<&str>) -> Request {
    match traceparent {
        Some(tp) => rb.header("traceparent", tp),
        None => rb,
    }
}

/// For `#[serde(default, deserialize_with = "driver_http::null_as_default")]`: a field that a
/// server sends as an explicit `null` (many OpenAI-compatible servers do, for every absent
/// field) reads as its default, like a missing one.
///
/// # Errors
/// When the value is neither null nor a `T`.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// How a driver classifies a failed HTTP response.
pub trait Classify {
    /// Whether a 429 response means the quota is exhausted (never worth retrying).
    fn quota_exhausted(&self, body: &str) -> bool {
        body.contains("insufficient_quota")
    }

    /// Extra status codes to treat as "overloaded, retry" (Anthropic's 529 is already a 5xx).
    fn retryable_status(&self, status: StatusCode) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
    }

    /// The human part of an error body: the upstream's `error.message` if it has one.
    fn error_message(&self, body: &str) -> String {
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let message = parsed.as_ref().and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/message"))
                .or_else(|| v.get("error").filter(|e| e.is_string()))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        });
        snippet(&message.unwrap_or_else(|| body.to_owned()), 300)
    }
}

/// The default classification.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassify;

impl Classify for DefaultClassify {}

/// At most `max` characters of `text`, whitespace collapsed.
pub fn snippet(text: &str, max: usize) -> String {
    let collapsed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max {
        collapsed
    } else {
        let cut: String = collapsed.chars().take(max).collect();
        format!("{cut}...")
    }
}

/// How long the server asked us to wait: `retry-after-ms` (milliseconds, sent by OpenAI and
/// some gateways) when present, else `Retry-After` (seconds or an HTTP date).
fn retry_after(resp: &Response) -> Option<Duration> {
    let ms = resp
        .header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0);
    if let Some(ms) = ms {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = resp.header("retry-after")?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// `429 Too Many Requests`; statuses without a standard reason get a known vendor name
/// (`529 Overloaded`) or just the number.
pub fn status_text(status: StatusCode) -> String {
    match (status.canonical_reason(), status.as_u16()) {
        (Some(reason), code) => format!("{code} {reason}"),
        (None, 529) => "529 Overloaded".to_owned(),
        (None, code) => code.to_string(),
    }
}

fn status_kind(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        400 | 422 => ErrorKind::InvalidInput,
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        _ => ErrorKind::Upstream,
    }
}

pub(crate) fn send_error(e: &reqwest::Error, url: &str) -> PluginError {
    let what = if e.is_timeout() {
        return PluginError::new(ErrorKind::Timeout, format!("request to {url} timed out"))
            .retryable();
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The causes, without reqwest's own line (it repeats the URL); never headers, so the key
    // cannot leak here.
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
    PluginError::upstream(format!("{what} ({url}): {detail}")).retryable()
}

/// Adds "(no API key was sent: set VAR)" to an auth error when the key variable is unset, so a
/// 401 says what to do. The key itself never appears.
pub fn with_key_hint(mut e: PluginError, key_env: &str) -> PluginError {
    let unset = std::env::var(key_env).map_or(true, |v| v.trim().is_empty());
    if e.kind == ErrorKind::Auth && unset {
        e.message
            .push_str(&format!(" (no API key was sent: set {key_env})"));
    }
    e
}

/// Sends a request with retries: connect errors, timeouts before a response, 429 (unless the
/// quota is exhausted) and 5xx are retried with back-off, honouring `Retry-After`; anything else
/// fails at once with the status and a snippet of the upstream's error.
///
/// `build` makes a fresh request for each attempt. Only the response head is awaited here; a
/// stream cut later is restarted by [`Endpoint::stream`] within the same budget.
///
/// # Errors
/// The last attempt's error, saying how many attempts were made.
pub async fn send_with_retry(
    transport: &Transport,
    build: impl Fn() -> Request,
    url: &str,
    policy: &RetryPolicy,
    classify: &impl Classify,
) -> Result<Response, PluginError> {
    send_counting(transport, &build, url, policy, classify, &mut 0).await
}

/// [`send_with_retry`] with the count of retries already spent on this call (a restarted
/// stream's), advanced by each retry made here.
pub(crate) async fn send_counting(
    transport: &Transport,
    build: &impl Fn() -> Request,
    url: &str,
    policy: &RetryPolicy,
    classify: &impl Classify,
    retries: &mut u32,
) -> Result<Response, PluginError> {
    loop {
        let (error, wait) = match transport.send(build(), url).await {
            Ok(resp) if resp.status().is_success() => return Ok(resp),
            Ok(resp) => {
                let status = resp.status();
                let after = retry_after(&resp);
                let body = resp.text(url).await.unwrap_or_default();
                let mut e = PluginError::new(
                    status_kind(status),
                    format!(
                        "HTTP {} from {url}: {}",
                        status_text(status),
                        classify.error_message(&body)
                    ),
                );
                let quota =
                    status == StatusCode::TOO_MANY_REQUESTS && classify.quota_exhausted(&body);
                if quota {
                    e.message.push_str(" (quota exhausted: not retried)");
                }
                e.retryable = classify.retryable_status(status) && !quota;
                (e, after)
            }
            Err(err) => (err, None),
        };
        if !error.retryable || *retries >= policy.max_retries {
            return Err(exhausted(error, *retries + 1));
        }
        let backoff = policy.backoff(*retries);
        let wait = match wait {
            Some(after) if after > Duration::from_millis(policy.max_backoff_ms) => {
                let mut error = error;
                error.message.push_str(&format!(
                    " (Retry-After {}s exceeds the retry policy)",
                    after.as_secs()
                ));
                return Err(error);
            }
            // The server said when; that beats our own guess.
            Some(after) => after,
            None => backoff,
        };
        // URL, attempt, wait and the error's text: headers (the key among them) are never logged.
        plugin_api::tracing::warn!(
            url,
            attempt = *retries + 1,
            wait_ms = wait.as_millis() as u64,
            error = %error.message,
            "retrying"
        );
        tokio::time::sleep(wait).await;
        *retries += 1;
    }
}

/// The final error of a call that made `attempts` attempts: it says so, and is no longer
/// retryable (the retries it deserved have been made).
pub(crate) fn exhausted(mut error: PluginError, attempts: u32) -> PluginError {
    if attempts > 1 {
        error
            .message
            .push_str(&format!(" (after {attempts} attempts)"));
        error.retryable = false;
    }
    error
}

/// Reads a JSON response body, naming the upstream on malformed JSON.
///
/// # Errors
/// Transport errors and malformed JSON, each with a snippet of what came.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    resp: Response,
    url: &str,
) -> Result<T, PluginError> {
    let text = resp.text(url).await?;
    serde_json::from_str(&text).map_err(|e| {
        PluginError::upstream(format!(
            "malformed JSON from {url} ({e}): {}",
            snippet(&text, 200)
        ))
    })
}

/// What every remote driver holds: the endpoint URL, the shared client, the HTTP settings and
/// the name of the API-key variable. Each driver adds only its own headers and wire format.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The full URL requests are posted to.
    pub url: String,
    /// Where requests go (the host's HTTP service, or a client of the plugin's own).
    pub transport: Transport,
    /// Timeouts, retries, extra headers.
    pub http: HttpConfig,
    /// The environment variable holding the API key.
    pub key_env: String,
}

impl Endpoint {
    /// `base_url` + `path`, checked, with the client for `http`.
    ///
    /// # Errors
    /// A base URL that is not http(s), or a client that cannot be built.
    pub fn new(
        base_url: &str,
        path: &str,
        http: &HttpConfig,
        key_env: &str,
    ) -> Result<Self, PluginError> {
        http.check()?;
        let base = base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(PluginError::config(format!(
                "`base_url` must start with http:// or https://, got {base:?}"
            )));
        }
        Ok(Self {
            url: format!("{base}{path}"),
            transport: Transport::for_config(http)?,
            http: http.clone(),
            key_env: key_env.to_owned(),
        })
    }

    /// A POST of `body` as JSON, with the configured headers and timeouts.
    pub fn post(&self, body: &serde_json::Value) -> Request {
        json_post(&self.url, body, &self.http)
    }

    /// The API key, read at each request so a rotated key is picked up; `None` when the
    /// variable is unset or empty (local servers need no key, and a 401 then says what to set).
    pub fn api_key(&self) -> Option<String> {
        std::env::var(&self.key_env)
            .ok()
            .filter(|k| !k.trim().is_empty())
    }

    /// Sends with retries (see [`send_with_retry`]); an auth error says which variable to set
    /// when no key was sent.
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn send(
        &self,
        build: impl Fn() -> Request,
        classify: &impl Classify,
    ) -> Result<Response, PluginError> {
        send_with_retry(
            &self.transport,
            build,
            &self.url,
            &self.http.retry,
            classify,
        )
        .await
        .map_err(|e| with_key_hint(e, &self.key_env))
    }

    /// A lazily sent streaming request, decoded by `decoder`, each event awaited with the idle
    /// timeout, restarted after a cut within the retry budget (see [`stream::restarting`]).
    pub fn stream<D: SseDecoder>(
        &self,
        build: impl Fn() -> Request + Send + Sync + 'static,
        classify: impl Classify + Send + Sync + 'static,
        decoder: D,
    ) -> DeltaStream {
        stream::restarting(self.clone(), build, classify, decoder)
    }
}

/// Checks that a required string setting is not blank.
///
/// # Errors
/// A config error naming the field.
pub fn require_nonempty(field: &str, value: &str) -> Result<(), PluginError> {
    if value.trim().is_empty() {
        Err(PluginError::config(format!("`{field}` must not be empty")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_cache_is_bounded_whatever_timeouts_requests_bring() {
        for i in 0..MAX_CACHED_CLIENTS * 3 {
            let config = HttpConfig {
                connect_timeout_ms: 1000 + i as u64,
                ..HttpConfig::default()
            };
            assert!(client(&config).is_ok());
        }
        let cached = CLIENTS.lock().map(|c| c.len()).unwrap_or(usize::MAX);
        assert!(cached <= MAX_CACHED_CLIENTS, "{cached}");
    }
}

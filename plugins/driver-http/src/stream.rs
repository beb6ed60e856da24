//! Streamed responses: the SSE reader, the wire formats' decoder hook, and the restart loop
//! that retries a stream cut before its end marker within the request's retry budget.

use std::time::Duration;

use crate::{Classify, Endpoint, Request, Response, exhausted, send_counting, with_key_hint};
use eventsource_stream::Eventsource;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use plugin_api::wire::StreamDelta;
use plugin_api::{DeltaStream, ErrorKind, PluginError};

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (empty for the default).
    pub event: String,
    /// The `data:` field.
    pub data: String,
}

/// The response body as server-sent events, each awaited with the idle timeout. The stream
/// ends when the body ends; a transport error or a silence longer than `idle` is a last item
/// error.
pub fn sse_events(
    resp: Response,
    url: &str,
    idle: Duration,
) -> impl Stream<Item = Result<SseEvent, PluginError>> + Send + use<> {
    let url = url.to_owned();
    let events = Box::pin(resp.chunks().eventsource());
    futures::stream::unfold(Some(events), move |state| {
        let url = url.clone();
        async move {
            let mut events = state?;
            match tokio::time::timeout(idle, events.next()).await {
                Err(_) => Some((
                    Err(PluginError::new(
                        ErrorKind::Timeout,
                        format!(
                            "stream from {url} was idle for more than {} ms",
                            idle.as_millis()
                        ),
                    )
                    .retryable()),
                    None,
                )),
                Ok(None) => None,
                Ok(Some(Ok(ev))) => Some((
                    Ok(SseEvent {
                        event: ev.event,
                        data: ev.data,
                    }),
                    Some(events),
                )),
                Ok(Some(Err(e))) => Some((Err(mid_stream_error(&e, &url)), None)),
            }
        }
    })
}

/// A 200 answer to a streaming request that is not `text/event-stream` (a JSON error body, a
/// proxy's HTML page) is reported as what it is, not as a stream that ended early.
pub(crate) async fn expect_event_stream(
    resp: Response,
    url: &str,
    classify: &impl Classify,
) -> Result<Response, PluginError> {
    let content_type = resp.header("content-type").unwrap_or("").to_owned();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.is_empty() || essence.eq_ignore_ascii_case("text/event-stream") {
        return Ok(resp);
    }
    let body = resp.text(url).await.unwrap_or_default();
    Err(PluginError::upstream(format!(
        "expected an event stream from {url}, got `{content_type}`: {}",
        classify.error_message(&body)
    )))
}

/// A failure while a stream was being read: a timeout (the whole-request timeout firing
/// mid-stream; the transport classified it) is a timeout, anything else a dropped connection.
fn mid_stream_error(
    e: &eventsource_stream::EventStreamError<PluginError>,
    url: &str,
) -> PluginError {
    match e {
        eventsource_stream::EventStreamError::Transport(t) if t.kind == ErrorKind::Timeout => {
            PluginError::new(
                ErrorKind::Timeout,
                format!("the request to {url} timed out mid-stream"),
            )
            .retryable()
        }
        eventsource_stream::EventStreamError::Transport(t) => PluginError::upstream(format!(
            "the connection to {url} dropped mid-stream: {}",
            t.message
        ))
        .retryable(),
        other => PluginError::upstream(format!(
            "the connection to {url} dropped mid-stream: {other}"
        ))
        .retryable(),
    }
}

/// A wire format's stream decoder: turns server-sent events into deltas and knows when the
/// stream has properly ended.
///
/// A stream restarted after a cut gets a clone of the decoder the driver passed in (so pass
/// a fresh one), never the state of the failed attempt.
pub trait SseDecoder: Clone + Send + 'static {
    /// Handles one event; an error ends the stream with that error.
    ///
    /// # Errors
    /// Malformed events and errors the upstream reports in the stream.
    fn on_event(&mut self, event: &SseEvent, url: &str) -> Result<Vec<StreamDelta>, PluginError>;

    /// Whether the end-of-stream marker has been seen (no more events are read after it).
    fn done(&self) -> bool;

    /// The error for a body that ended before the end-of-stream marker (it should say what was
    /// in progress, e.g. which tool call was cut off). Mark it retryable: the stream is then
    /// restarted within the retry budget.
    fn truncated(&self, url: &str) -> PluginError;
}

/// Decodes `events` with `decoder` until its end marker; a body that ends early, a transport
/// error or a decoding error is the last item.
pub fn decode_stream<D: SseDecoder>(
    events: impl Stream<Item = Result<SseEvent, PluginError>> + Send + 'static,
    url: String,
    decoder: D,
) -> impl Stream<Item = Result<StreamDelta, PluginError>> + Send + 'static {
    let events = Box::pin(events);
    futures::stream::unfold(Some((events, decoder)), move |state| {
        let url = url.clone();
        async move {
            let (mut events, mut decoder) = state?;
            loop {
                if decoder.done() {
                    return None;
                }
                match events.next().await {
                    None => return Some((vec![Err(decoder.truncated(&url))], None)),
                    Some(Err(e)) => return Some((vec![Err(e)], None)),
                    Some(Ok(ev)) => match decoder.on_event(&ev, &url) {
                        Err(e) => return Some((vec![Err(e)], None)),
                        Ok(deltas) if deltas.is_empty() => continue,
                        Ok(deltas) => {
                            return Some((
                                deltas.into_iter().map(Ok).collect(),
                                Some((events, decoder)),
                            ));
                        }
                    },
                }
            }
        }
    })
    .flat_map(futures::stream::iter)
}

/// A streamed request across its attempts. `retries` counts every retry made for it, before a
/// response (429, 5xx, connect errors) and after a cut alike: one budget, one back-off.
struct Attempts<B, C, D> {
    endpoint: Endpoint,
    build: B,
    classify: C,
    /// The pristine decoder; each attempt decodes with a clone.
    decoder: D,
    retries: u32,
    /// The back-off to wait before the next attempt is sent.
    wait: Option<Duration>,
    current: Option<BoxStream<'static, Result<StreamDelta, PluginError>>>,
}

impl<B, C, D> Attempts<B, C, D>
where
    B: Fn() -> Request + Send + Sync + 'static,
    C: Classify + Send + Sync + 'static,
    D: SseDecoder,
{
    /// Sends the request (with its own retries before a response) and starts decoding.
    async fn open(
        &mut self,
    ) -> Result<BoxStream<'static, Result<StreamDelta, PluginError>>, PluginError> {
        if let Some(wait) = self.wait.take() {
            tokio::time::sleep(wait).await;
        }
        let ep = &self.endpoint;
        let resp = send_counting(
            &ep.transport,
            &self.build,
            &ep.url,
            &ep.http.retry,
            &self.classify,
            &mut self.retries,
        )
        .await
        .map_err(|e| with_key_hint(e, &ep.key_env))?;
        let resp: Response = expect_event_stream(resp, &ep.url, &self.classify).await?;
        let idle = Duration::from_millis(ep.http.stream_idle_timeout_ms);
        Ok(decode_stream(
            sse_events(resp, &ep.url, idle),
            ep.url.clone(),
            self.decoder.clone(),
        )
        .boxed())
    }

    /// After a failed attempt: a `Restart` delta when the budget allows another, else the error.
    fn restart(&mut self, error: PluginError) -> Result<StreamDelta, PluginError> {
        let policy = &self.endpoint.http.retry;
        if !error.retryable || !policy.restart_streams || self.retries >= policy.max_retries {
            return Err(exhausted(error, self.retries + 1));
        }
        let wait = policy.backoff(self.retries);
        self.retries += 1;
        self.wait = Some(wait);
        plugin_api::tracing::warn!(
            url = %self.endpoint.url,
            attempt = self.retries + 1,
            wait_ms = wait.as_millis() as u64,
            error = %error.message,
            "restarting the stream"
        );
        Ok(StreamDelta::Restart {
            attempt: self.retries + 1,
            reason: error.message,
        })
    }
}

/// The deltas of a streamed request, sent lazily on the first poll (so `stream()` returns at
/// once and the caller's runtime drives the I/O). A stream that fails mid-way with a retryable
/// error (cut before its end marker, dropped, idle, timed out) is sent again after a back-off,
/// within the retry budget: a [`StreamDelta::Restart`] tells the consumer to discard what the
/// failed attempt delivered. Tools only run after a whole response, so nothing is repeated but
/// the model's output.
pub(crate) fn restarting<B, C, D>(
    endpoint: Endpoint,
    build: B,
    classify: C,
    decoder: D,
) -> DeltaStream
where
    B: Fn() -> Request + Send + Sync + 'static,
    C: Classify + Send + Sync + 'static,
    D: SseDecoder,
{
    let attempts = Attempts {
        endpoint,
        build,
        classify,
        decoder,
        retries: 0,
        wait: None,
        current: None,
    };
    futures::stream::unfold(Some(attempts), |state| async move {
        let mut st = state?;
        let mut current = match st.current.take() {
            Some(c) => c,
            None => match st.open().await {
                Ok(c) => c,
                Err(e) => return Some((Err(e), None)),
            },
        };
        match current.next().await {
            None => None,
            Some(Ok(delta)) => {
                st.current = Some(current);
                Some((Ok(delta), Some(st)))
            }
            Some(Err(e)) => match st.restart(e) {
                Ok(restart) => Some((Ok(restart), Some(st))),
                Err(e) => Some((Err(e), None)),
            },
        }
    })
    .boxed()
}

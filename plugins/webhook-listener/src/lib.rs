//! An event listener driver that POSTs batches of events (a JSON array) to a URL.
//!
//! ```toml
//! [config]
//! url = "https://example.com/hooks/grip"   # required
//! batch_size = 50          # events per POST
//! max_delay_ms = 1000      # a partial batch is sent after this long
//! queue_size = 10000       # events waiting to be sent; beyond it new events are dropped
//! flush_timeout_ms = 10000 # the longest a flush waits for the queue to drain
//! [config.http]            # timeouts, retries (with back-off, Retry-After) and extra headers
//! retry = { max_retries = 3 }
//! headers = { "Authorization" = "Bearer ..." }
//! ```
//!
//! Publishing never waits for the network: events go into a bounded queue that a background
//! task drains. A dead or slow endpoint therefore never blocks a task nor grows memory without
//! bound; events that do not fit are dropped and counted, and the next flush reports how many
//! were lost (dropped from a full queue, or given up on after the retries).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use driver_http::{DefaultClassify, HttpConfig, send_with_retry};
use plugin_api::prelude::*;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

/// Configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    url: String,
    #[serde(default = "d_batch")]
    batch_size: usize,
    #[serde(default = "d_delay")]
    max_delay_ms: u64,
    #[serde(default = "d_queue")]
    queue_size: usize,
    #[serde(default = "d_flush")]
    flush_timeout_ms: u64,
    #[serde(default)]
    http: HttpConfig,
}

fn d_batch() -> usize {
    50
}
fn d_delay() -> u64 {
    1000
}
fn d_queue() -> usize {
    10_000
}
fn d_flush() -> u64 {
    10_000
}

enum Msg {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct Counters {
    /// Dropped because the queue was full.
    dropped: AtomicU64,
    /// Given up on after the retries.
    failed: AtomicU64,
    /// Delivered.
    sent: AtomicU64,
    /// Lost events already reported by a flush.
    reported: AtomicU64,
}

/// The listener driver.
pub struct Webhook {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    flush_timeout: Duration,
    url: String,
}

async fn worker(
    mut rx: mpsc::Receiver<Msg>,
    config: Config,
    transport: driver_http::Transport,
    counters: Arc<Counters>,
) {
    let delay = Duration::from_millis(config.max_delay_ms);
    let mut batch: Vec<Event> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let msg = if batch.is_empty() {
            match rx.recv().await {
                Some(m) => Some(m),
                None => break,
            }
        } else {
            match tokio::time::timeout(delay, rx.recv()).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => None,
                Err(_) => None, // the delay ran out: send what we have
            }
        };
        let closed = msg.is_none() && rx.is_closed();
        match msg {
            Some(Msg::Event(e)) => {
                batch.push(*e);
                if batch.len() < config.batch_size {
                    continue;
                }
            }
            Some(Msg::Flush(done)) => waiting.push(done),
            None => {}
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let body = serde_json::Value::Array(
                batch
                    .drain(..)
                    .filter_map(|e| serde_json::to_value(e).ok())
                    .collect(),
            );
            let url = config.url.as_str();
            let result = send_with_retry(
                &transport,
                || driver_http::json_post(url, &body, &config.http),
                url,
                &config.http.retry,
                &DefaultClassify,
            )
            .await;
            match result {
                Ok(_) => {
                    counters.sent.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    counters.failed.fetch_add(n, Ordering::Relaxed);
                    plugin_api::tracing::warn!("webhook: {n} events lost: {e}");
                }
            }
        }
        for w in waiting.drain(..) {
            let _ = w.send(());
        }
        if closed {
            break;
        }
    }
}

impl Webhook {
    fn enqueue(&self, events: Vec<Event>) {
        let mut dropped = 0;
        for e in events {
            if self.tx.try_send(Msg::Event(Box::new(e))).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            let total = self.counters.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            plugin_api::tracing::warn!(
                "webhook {}: queue full, dropped {dropped} events ({total} in all)",
                self.url
            );
        }
    }

    async fn drain(&self) -> Result<(), PluginError> {
        let (done_tx, done_rx) = oneshot::channel();
        let wait = async {
            self.tx
                .send(Msg::Flush(done_tx))
                .await
                .map_err(|_| PluginError::internal("the webhook worker has stopped"))?;
            done_rx
                .await
                .map_err(|_| PluginError::internal("the webhook worker has stopped"))
        };
        tokio::time::timeout(self.flush_timeout, wait).await.map_err(|_| {
            PluginError::new(
                ErrorKind::Timeout,
                format!(
                    "webhook {}: flush gave up after {} ms (endpoint slow or down); events stay queued",
                    self.url,
                    self.flush_timeout.as_millis()
                ),
            )
        })??;
        let lost = self.counters.dropped.load(Ordering::Relaxed)
            + self.counters.failed.load(Ordering::Relaxed);
        let before = self.counters.reported.swap(lost, Ordering::Relaxed);
        if lost > before {
            return Err(PluginError::upstream(format!(
                "webhook {}: {} events lost since the last flush ({} dropped from a full queue, {} failed after retries in all)",
                self.url,
                lost - before,
                self.counters.dropped.load(Ordering::Relaxed),
                self.counters.failed.load(Ordering::Relaxed)
            )));
        }
        Ok(())
    }
}

impl EventListenerDriver for Webhook {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(PluginError::config(format!(
                "`url` must be http:// or https://, got {:?}",
                config.url
            )));
        }
        if config.batch_size == 0 || config.queue_size == 0 {
            return Err(PluginError::config(
                "`batch_size` and `queue_size` must be at least 1",
            ));
        }
        config.http.check()?;
        let transport = driver_http::Transport::for_config(&config.http)?;
        let (tx, rx) = mpsc::channel(config.queue_size);
        let counters = Arc::new(Counters::default());
        let url = config.url.clone();
        let flush_timeout = Duration::from_millis(config.flush_timeout_ms);
        // `new` runs inside the plugin's runtime (the SDK enters it), so the worker lives there.
        tokio::spawn(worker(rx, config, transport, Arc::clone(&counters)));
        Ok(Self {
            tx,
            counters,
            flush_timeout,
            url,
        })
    }

    fn publish(&self, events: Vec<Event>) -> Result<(), PluginError> {
        self.enqueue(events);
        Ok(())
    }

    async fn publish_async(&self, events: Vec<Event>) -> Result<(), PluginError> {
        self.enqueue(events);
        Ok(())
    }

    fn flush(&self) -> Result<(), PluginError> {
        block_on(self.drain())
    }

    async fn flush_async(&self) -> Result<(), PluginError> {
        self.drain().await
    }
}

plugin_api::export_plugin! {
    id: "webhook",
    description: "POSTs batches of events to a URL, with retries and a bounded queue",
    listener: Webhook,
}

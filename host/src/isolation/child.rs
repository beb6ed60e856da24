//! The child side of process isolation: `grip plugin-host <manifest> --library <file>` loads one
//! library with the loader's checks and serves its instances to the host over stdin/stdout.
//!
//! The protocol owns the process's original stdout; fd 1 is pointed at stderr before the library
//! is loaded, so a plugin that prints cannot corrupt it. Its logs go to stderr as JSON lines,
//! which the host re-emits under the plugin's id.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use plugin_api::ErrorKind;
use tokio::io::AsyncBufReadExt;

use super::protocol::{FromChild, Method, ToChild, WireError, line};
use crate::error::CallError;
use crate::plugin::{Plugin, Raw};

type Out = std::sync::mpsc::Sender<String>;

fn send(out: &Out, message: &FromChild) {
    let _ = out.send(line(message));
}

/// This process's stdout, moved to a new descriptor for a protocol, with fd 1 pointed at stderr:
/// whatever a plugin prints goes to the log instead of into the protocol. Call it before other
/// threads start writing.
///
/// # Errors
/// When the descriptors cannot be moved.
#[allow(unsafe_code)] // fcntl/dup2: std has no safe way to move a standard descriptor.
pub(crate) fn take_stdout() -> Result<std::fs::File, String> {
    // SAFETY: dup/dup2 on this process's own standard descriptors.
    unsafe {
        // Close-on-exec: a process the plugin starts must not hold the protocol pipe open (the
        // host watches it, and this process's exit, to learn that the plugin died).
        let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            return Err("cannot set up its protocol pipe".into());
        }
        Ok(std::fs::File::from_raw_fd(fd))
    }
}

/// Serves the library `library` of the manifest at `manifest` until the host closes stdin.
pub fn serve(manifest: &Path, library: &Path) -> ExitCode {
    let proto = match take_stdout() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("plugin-host: {e}");
            return ExitCode::from(70);
        }
    };
    let (out, rx) = std::sync::mpsc::channel::<String>();
    let writer = std::thread::spawn(move || write_lines(proto, &rx));
    let plugin = match crate::loader::open_in_child(manifest, library) {
        Ok(p) => p,
        Err(e) => {
            send(
                &out,
                &FromChild::Refused {
                    message: e.to_string(),
                },
            );
            drop(out);
            let _ = writer.join();
            return ExitCode::from(3);
        }
    };
    send(
        &out,
        &FromChild::Ready {
            info: plugin.info().into(),
        },
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("plugin-host")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugin-host: cannot start its runtime: {e}");
            return ExitCode::from(70);
        }
    };
    rt.block_on(serve_calls(plugin, out));
    // The host has gone; calls still running (a stuck one holds a sender) have no one to answer.
    std::process::exit(0)
}

/// Writes queued lines, flushing when the queue is empty.
fn write_lines(file: std::fs::File, rx: &std::sync::mpsc::Receiver<String>) {
    let mut w = std::io::BufWriter::new(file);
    while let Ok(l) = rx.recv() {
        let mut ok = w.write_all(l.as_bytes()).is_ok();
        while let Ok(more) = rx.try_recv() {
            ok &= w.write_all(more.as_bytes()).is_ok();
        }
        if !ok || w.flush().is_err() {
            return;
        }
    }
}

/// The instances and the cancellable calls of one child.
#[derive(Default)]
struct Served {
    instances: Mutex<HashMap<u64, Raw>>,
    calls: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    next_instance: std::sync::atomic::AtomicU64,
}

async fn serve_calls(plugin: Plugin, out: Out) {
    let served = Arc::new(Served::default());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        match serde_json::from_str::<ToChild>(&l) {
            Ok(m) => dispatch(&plugin, &served, &out, m),
            Err(e) => tracing::error!("plugin-host: a message it cannot read ({e}): {l:.120}"),
        }
    }
}

fn wire<T>(r: Result<T, CallError>) -> Result<T, WireError> {
    r.map_err(WireError::from)
}

fn dispatch(plugin: &Plugin, served: &Arc<Served>, out: &Out, message: ToChild) {
    let (plugin, served, out) = (plugin.clone(), Arc::clone(served), out.clone());
    match message {
        ToChild::New { call, kind, config } => {
            tokio::task::spawn_blocking(move || {
                let reply = match plugin.instance_with(kind, "new", config) {
                    Ok((raw, spec)) => {
                        let instance = served
                            .next_instance
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        lock(&served.instances).insert(instance, raw);
                        FromChild::Created {
                            call,
                            instance,
                            spec,
                        }
                    }
                    Err(e) => FromChild::Done {
                        call,
                        result: Err(e.into()),
                    },
                };
                send(&out, &reply);
            });
        }
        ToChild::Call {
            call,
            instance,
            method,
            body,
        } => {
            let Some(raw) = lock(&served.instances).get(&instance).cloned() else {
                let e = CallError::host(
                    plugin.id(),
                    method.op(),
                    ErrorKind::NotFound,
                    "no such instance",
                );
                return send(
                    &out,
                    &FromChild::Done {
                        call,
                        result: Err(e.into()),
                    },
                );
            };
            if method.is_blocking() {
                tokio::task::spawn_blocking(move || {
                    let result = wire(raw.call_blocking(plugin.id(), method, &body));
                    send(&out, &FromChild::Done { call, result });
                });
                return;
            }
            let calls = Arc::clone(&served);
            // Held across the spawn, so a call that ends at once removes an entry that exists.
            let mut running = lock(&served.calls);
            let task = tokio::spawn(async move {
                // Sends `End` however the task ends, aborted included: the host keeps a
                // cancelled call under its deadline until then.
                let _ended = Ended(call, out.clone());
                if method == Method::Stream {
                    stream(&plugin, &raw, call, body, &out).await;
                } else {
                    let result = wire(raw.call(plugin.id(), method, body).await);
                    send(&out, &FromChild::Done { call, result });
                }
                lock(&calls.calls).remove(&call);
            });
            running.insert(call, task.abort_handle());
        }
        ToChild::Cancel { call } => {
            if let Some(task) = lock(&served.calls).remove(&call) {
                task.abort();
            }
        }
        ToChild::Release { instance } => drop(lock(&served.instances).remove(&instance)),
    }
}

/// Tells the host a call is over when dropped.
struct Ended(u64, Out);

impl Drop for Ended {
    fn drop(&mut self) {
        send(&self.1, &FromChild::End { call: self.0 });
    }
}

async fn stream(plugin: &Plugin, raw: &Raw, call: u64, body: String, out: &Out) {
    let id = plugin.id();
    let mut s = match raw.stream(id, body) {
        Ok(s) => s,
        Err(e) => {
            return send(
                out,
                &FromChild::Done {
                    call,
                    result: Err(e.into()),
                },
            );
        }
    };
    send(
        out,
        &FromChild::Done {
            call,
            result: Ok(String::new()),
        },
    );
    while let Some(item) = std::future::poll_fn(|cx| s.poll_item(id, cx)).await {
        send(
            out,
            &FromChild::Item {
                call,
                item: wire(item),
            },
        );
    }
    send(out, &FromChild::End { call });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

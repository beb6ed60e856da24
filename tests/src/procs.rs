//! Processes for the benchmarks: the mock LLM server and the daemon each in a process of their
//! own (so their CPU is not the client's), and what /proc says about a process.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::artifacts;

/// Spawns `cmd` with piped stdio and returns it with its address: the first stdout line when
/// `marker` is empty, else the word after `marker` in the first stderr line that has it (the rest
/// of stderr is drained on a thread, so the child never blocks on a full pipe).
///
/// # Panics
/// When the process cannot start, or exits before printing its address.
pub fn spawn_line(mut cmd: Command, marker: &str) -> (Child, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut line = String::new();
    if marker.is_empty() {
        let out = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("read stdout");
        return (child, line.trim().to_owned());
    }
    let mut err = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    while !line.contains(marker) {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("read stderr") > 0,
            "process exited early"
        );
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let addr = line
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    (child, addr)
}

/// The mock LLM server (`mock-openai`) with `args` (`anthropic`, a latency in ms), and its
/// base URL. It serves until its stdin closes.
pub fn start_mock(args: &[&str]) -> (Child, String) {
    let mut cmd = Command::new(artifacts().lib_dir.join("mock-openai"));
    cmd.args(args);
    spawn_line(cmd, "")
}

/// `grip serve` with a config written to `dir/grip.toml`: bind 127.0.0.1:0, up to 20,000
/// concurrent tasks, manifests from `dir/manifests`, the built plugins, plus `extra_server`
/// lines for the `[server]` table. Returns it and its address.
pub fn start_daemon(dir: &Path, extra_server: &str) -> (Child, String) {
    start_daemon_with(dir, extra_server, "")
}

/// [`start_daemon`] with `tail` appended to the config (e.g. `[[listeners]]` tables).
pub fn start_daemon_with(dir: &Path, extra_server: &str, tail: &str) -> (Child, String) {
    let a = artifacts();
    let cfg = dir.join("grip.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\nmax_concurrent_tasks = 20000\n{extra_server}\
             [plugins]\nmanifest_dirs = [\"manifests\"]\nlib_dirs = [{:?}]\n{tail}",
            a.lib_dir.display().to_string()
        ),
    )
    .expect("write grip.toml");
    let mut serve = Command::new(a.grip());
    serve.arg("serve").arg("--config").arg(&cfg);
    spawn_line(serve, "listening on ")
}

/// Sends SIGTERM to `child` (a graceful shutdown of `grip serve`).
pub fn sigterm(child: &Child) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM)
    };
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); `None` is this process.
pub fn status_kib(pid: Option<u32>, field: &str) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The same field in MiB.
pub fn status_mib(pid: Option<u32>, field: &str) -> f64 {
    status_kib(pid, field) as f64 / 1024.0
}

/// CPU time (user + system) of process `pid`; `None` is this process, read precisely.
pub fn cpu_time(pid: Option<u32>) -> Duration {
    match pid {
        None => {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            #[allow(unsafe_code)]
            // SAFETY: clock_gettime writes into the timespec we own.
            unsafe {
                libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts)
            };
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        }
        Some(pid) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            #[allow(unsafe_code)]
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            Duration::from_micros(ticks * 1_000_000 / hz)
        }
    }
}

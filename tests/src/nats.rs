//! A real `nats-server -js` for the queue tests, on a free port of 127.0.0.1 with a store
//! directory of its own (so it can be restarted with its streams intact), and a grip cluster
//! around it: `grip worker`s and `grip serve --nats` fronts as processes of their own, sharing
//! one config file.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ManifestSpec, artifacts, procs, scripted};

/// A running NATS server with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    store: tempfile::TempDir,
}

/// The `nats-server` binary: on PATH, or where Debian's package puts it.
///
/// # Panics
/// When it is not installed, naming the package.
pub fn server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d: PathBuf| d.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server is not installed: the queue tests need a real NATS server; install \
                 the Debian package `nats-server` (apt-get install nats-server), as \
                 scripts/test-deps.sh does"
            )
        })
}

impl NatsServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let store = tempfile::tempdir().expect("store dir");
        let child = spawn(port, store.path());
        Self {
            child,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            store,
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn(self.port, self.store.path());
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, store: &Path) -> Child {
    let mut child = Command::new(server_binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nats-server");
    let mut err = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !line.contains("Server is ready") {
        line.clear();
        let n = err.read_line(&mut line).expect("read nats-server's log");
        assert!(n > 0, "nats-server exited before it was ready");
        assert!(Instant::now() < deadline, "nats-server not ready in 20 s");
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child
}

/// A process killed when dropped (a failing test leaves no worker behind).
#[derive(Debug)]
pub struct Proc(pub Child);

impl Proc {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, and waits for it to exit.
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.0.wait();
    }

    /// Freezes it (SIGSTOP) until [`Proc::resume`]: alive, connected, and silent.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    #[allow(unsafe_code)]
    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.id()).expect("a pid");
        // SAFETY: kill(2) on our own child's pid, which is not reaped while `self` lives.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill({pid}, {sig})");
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A NATS server, and the config that workers and fronts share.
#[derive(Debug)]
pub struct Cluster {
    /// The server.
    pub nats: NatsServer,
    /// The config file.
    pub config: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A server, and a config whose `[queue]` has `queue` (TOML lines) besides the URL. The
    /// plugins: the scripted driver (the default) and the crashy tool, in process.
    pub fn new(queue: &str) -> Self {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifests dir");
        scripted("scripted").write(&manifests, "scripted.toml");
        ManifestSpec::named("crashy", "crashy")
            .kind("tool", &["sync", "async"])
            .write(&manifests, "crashy.toml");
        let config = dir.path().join("grip.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nbind = \"127.0.0.1:0\"\nshutdown_grace_ms = 2000\n\
                 [plugins]\nmanifest_dirs = [\"manifests\"]\nlib_dirs = [{:?}]\n\
                 [defaults]\ndriver = \"scripted\"\n\
                 [queue]\nurl = {:?}\n{queue}\n",
                artifacts().lib_dir.display().to_string(),
                nats.url
            ),
        )
        .expect("write grip.toml");
        Self { nats, config, dir }
    }

    /// `grip worker --name <name>`, once it is ready.
    pub fn worker(&self, name: &str) -> Proc {
        let mut cmd = self.worker_command(name);
        cmd.arg("--config").arg(&self.config);
        let (child, _) = procs::spawn_line(cmd, "ready on ");
        Proc(child)
    }

    /// `grip worker --name <name> --metrics 127.0.0.1:0`, once it serves: it and the base URL
    /// of its metrics port.
    pub fn worker_with_metrics(&self, name: &str) -> (Proc, String) {
        let mut cmd = self.worker_command(name);
        cmd.args(["--metrics", "127.0.0.1:0", "--config"])
            .arg(&self.config);
        let (child, addr) = procs::spawn_line(cmd, "worker metrics on ");
        (Proc(child), addr)
    }

    fn worker_command(&self, name: &str) -> Command {
        let mut cmd = artifacts().grip_command();
        cmd.args(["worker", "--name", name])
            .current_dir(self.dir.path());
        cmd
    }

    /// `grip serve` (a front of the queue), once it listens: it and its base URL.
    pub fn front(&self) -> (Proc, String) {
        let mut cmd = artifacts().grip_command();
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path());
        let (child, addr) = procs::spawn_line(cmd, "listening on ");
        (Proc(child), addr)
    }
}

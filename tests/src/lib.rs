//! Helpers for the end-to-end tests: build the real plugin libraries with cargo (once per test
//! process), find them by path, and write manifests for them.
//!
//! The plugins are built into the same target directory and profile as the tests themselves,
//! with the same feature resolution, so their dependencies are compiled once. The `abort-plugin` fixture is built with
//! `cargo rustc -- -C panic=abort` and copied aside, so no other build can overwrite it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use host::{LoaderOptions, Registry};

pub mod daemon;
pub mod load;
pub mod mcp;
pub mod mock_llm;
pub mod nats;
pub mod otlp;
pub mod procs;
pub mod remote;

/// Where the built artifacts are.
#[derive(Debug)]
pub struct Artifacts {
    /// The profile directory (`target/debug`): plugins and the `grip` binary.
    pub lib_dir: PathBuf,
    /// The abort-strategy fixture, copied aside.
    pub abort_plugin: PathBuf,
    /// The workspace root.
    pub root: PathBuf,
}

impl Artifacts {
    /// The path of library `name` (`scripted_driver`).
    pub fn lib(&self, name: &str) -> PathBuf {
        self.lib_dir.join(host::loader::library_file_name(name))
    }

    /// The `grip` binary.
    pub fn grip(&self) -> PathBuf {
        self.lib_dir
            .join(format!("grip{}", std::env::consts::EXE_SUFFIX))
    }

    /// A command running `grip` that finds the built plugins, with a user config directory of
    /// this test process's own (so directories registered on the machine running the tests
    /// never leak in, and `grip plugins add` in a test never writes to the real one).
    pub fn grip_command(&self) -> std::process::Command {
        static CONFIG: OnceLock<tempfile::TempDir> = OnceLock::new();
        let config = CONFIG.get_or_init(|| tempfile::tempdir().expect("temp config dir"));
        let mut cmd = std::process::Command::new(self.grip());
        cmd.env("GRIP_LIB_PATH", &self.lib_dir)
            .env("GRIP_CONFIG_DIR", config.path())
            .env_remove("GRIP_NO_DEFAULT_MANIFESTS");
        cmd
    }

    /// Loader options that find the built plugins.
    pub fn options(&self) -> LoaderOptions {
        LoaderOptions {
            lib_dirs: vec![self.lib_dir.clone()],
            require_hash: false,
            plugin_host: Some(self.grip()),
            isolation: host::isolation::IsolationPolicy {
                force: isolation_from_env(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// `GRIP_TEST_ISOLATION=process` runs every plugin the tests load in a child of its own, so a
/// test file can be run again in process mode (`.ci/run` does so for the task, tool and
/// listener tests).
fn isolation_from_env() -> Option<host::isolation::Isolation> {
    match std::env::var("GRIP_TEST_ISOLATION").ok()?.as_str() {
        "process" => Some(host::isolation::Isolation::Process),
        "in_process" | "" => None,
        other => panic!("GRIP_TEST_ISOLATION={other:?}: expected `process` or `in_process`"),
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(mut cmd: Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds every plugin the tests need, once per process, and says where they are.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        // The test binary lives in <target>/<profile>/deps.
        let exe = std::env::current_exe().expect("current exe");
        let lib_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary is in <target>/<profile>/deps")
            .to_owned();
        let target_dir = lib_dir
            .parent()
            .expect("profile dir has a parent")
            .to_owned();
        let release = lib_dir.file_name().is_some_and(|n| n == "release");

        // The same package and target selection as `cargo test --workspace` (`--tests` turns
        // on dev-dependency features the same way), so every dependency it compiled is reused
        // as is, llama.cpp included; only the plugins' cdylibs and the binaries are linked.
        let mut build = cargo();
        build
            .arg("build")
            .arg("--target-dir")
            .arg(&target_dir)
            .args(["--workspace", "--lib", "--bins", "--tests"]);
        if release {
            build.arg("--release");
        }
        run(build);

        let mut abort = cargo();
        abort
            .args(["rustc", "-p", "abort-plugin", "--lib", "--target-dir"])
            .arg(&target_dir);
        if release {
            abort.arg("--release");
        }
        abort.args(["--", "-C", "panic=abort"]);
        run(abort);
        let fixtures = lib_dir.join("grip-fixtures");
        std::fs::create_dir_all(&fixtures).expect("create fixtures dir");
        let abort_plugin = fixtures.join(host::loader::library_file_name("abort_plugin"));
        std::fs::copy(
            lib_dir.join(host::loader::library_file_name("abort_plugin")),
            &abort_plugin,
        )
        .expect("copy abort plugin");

        Artifacts {
            lib_dir,
            abort_plugin,
            root: workspace_root(),
        }
    })
}

/// A manifest to write in a test.
#[derive(Debug, Clone)]
pub struct ManifestSpec {
    /// Plugin id.
    pub id: String,
    /// `kinds = [...]` entries.
    pub kinds: Vec<&'static str>,
    /// `library.path` (absolute) or `library.name`.
    pub library: String,
    /// Whether `library` is a name.
    pub by_name: bool,
    /// `library.sha256`.
    pub sha256: Option<String>,
    /// `[capabilities]` lines (`prompt_driver = ["sync"]`).
    pub capabilities: Vec<String>,
    /// Extra TOML appended (e.g. a `[config]` table).
    pub extra: String,
    /// `[overrides] allow`: the config keys a daemon request may change.
    pub overridable: Vec<String>,
    /// Top-level keys, before any table (`isolation = "process"`).
    pub top: String,
}

impl ManifestSpec {
    /// A manifest for library `name` found in the library path.
    pub fn named(id: &str, name: &str) -> Self {
        Self {
            id: id.into(),
            kinds: Vec::new(),
            library: name.into(),
            by_name: true,
            sha256: None,
            capabilities: Vec::new(),
            extra: String::new(),
            overridable: Vec::new(),
            top: String::new(),
        }
    }

    /// A manifest for the library at `path`.
    pub fn at(id: &str, path: &Path) -> Self {
        Self {
            by_name: false,
            library: path.display().to_string(),
            ..Self::named(id, "")
        }
    }

    /// Adds a kind with its modes.
    pub fn kind(mut self, kind: &'static str, modes: &[&str]) -> Self {
        self.kinds.push(kind);
        let modes: Vec<String> = modes.iter().map(|m| format!("{m:?}")).collect();
        self.capabilities
            .push(format!("{kind} = [{}]", modes.join(", ")));
        self
    }

    /// Appends TOML (e.g. a `[config]` table).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    /// Lets daemon requests override these config keys (`[overrides] allow`).
    pub fn overridable(mut self, keys: &[&str]) -> Self {
        self.overridable
            .extend(keys.iter().map(|k| (*k).to_owned()));
        self
    }

    /// Runs the plugin in a child process of its own, with `[process]` settings (TOML lines).
    pub fn isolated(mut self, process: &str) -> Self {
        self.top.push_str("isolation = \"process\"\n");
        self.extra.push_str(&format!("\n[process]\n{process}\n"));
        self
    }

    /// Points the manifest at library `name` in the library path.
    pub fn named_library(mut self, name: &str) -> Self {
        self.library = name.into();
        self.by_name = true;
        self
    }

    /// The manifest text.
    pub fn render(&self) -> String {
        let kinds: Vec<String> = self.kinds.iter().map(|k| format!("{k:?}")).collect();
        let mut s = format!(
            "id = {:?}\nkinds = [{}]\n\n[library]\n",
            self.id,
            kinds.join(", ")
        );
        s.insert_str(0, &self.top);
        if self.by_name {
            s.push_str(&format!("name = {:?}\n", self.library));
        } else {
            s.push_str(&format!("path = {:?}\n", self.library));
        }
        if let Some(h) = &self.sha256 {
            s.push_str(&format!("sha256 = {h:?}\n"));
        }
        s.push_str("\n[capabilities]\n");
        for c in &self.capabilities {
            s.push_str(c);
            s.push('\n');
        }
        s.push_str(&self.extra);
        if !self.overridable.is_empty() {
            let keys: Vec<String> = self.overridable.iter().map(|k| format!("{k:?}")).collect();
            s.push_str(&format!("\n[overrides]\nallow = [{}]\n", keys.join(", ")));
        }
        s
    }

    /// Writes the manifest as `<dir>/<file>` and returns its path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.render()).expect("write manifest");
        path
    }
}

/// The scripted driver's manifest; daemon requests may give its script and pacing, as with the
/// first-party manifest.
pub fn scripted(id: &str) -> ManifestSpec {
    ManifestSpec::named(id, "scripted_driver")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .overridable(&["script", "chunk_chars", "delay_ms", "echo_prefix"])
}

/// The panicky fixture's manifest.
pub fn panicky() -> ManifestSpec {
    ManifestSpec::named("panicky", "panicky")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .kind("tool", &["sync", "async"])
        .kind("event_listener", &["sync", "async"])
}

/// A registry with the first-party manifests of the repository.
pub fn first_party_registry() -> Registry {
    let a = artifacts();
    Registry::load_dirs(&[a.root.join("manifests")], &a.options())
}

/// Serves `app` on 127.0.0.1 with a port of its own, on its own thread and runtime (so it
/// outlives any test's runtime), until the process ends; returns its address.
pub fn serve_router(app: axum::Router) -> std::net::SocketAddr {
    serve_listener(|listener| async move { axum::serve(listener, app).await.expect("serve") })
}

/// Runs `serve` on a listener bound to 127.0.0.1 with a port of its own, on its own thread and
/// runtime, until the process ends; returns the listener's address.
pub fn serve_listener<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            tx.send(listener.local_addr().expect("local address"))
                .expect("send address");
            serve(listener).await;
        });
    });
    rx.recv().expect("server address")
}

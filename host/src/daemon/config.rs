//! The daemon's configuration file.
//!
//! ```toml
//! [server]
//! bind = "127.0.0.1:8080"          # loopback by default
//! auth_token_env = "GRIP_TOKEN"     # bearer token; required to bind a non-loopback address
//! max_body_bytes = 1048576
//! max_concurrent_tasks = 64         # beyond it: 429 with Retry-After, never a queue
//! task_timeout_ms = 300000
//! max_subtasks_cap = 50             # a request may not ask for more
//! blocking_threads = 16             # bounded pool for sync-only drivers
//! shutdown_grace_ms = 30000         # in-flight tasks get this long after SIGTERM/SIGINT
//! header_timeout_ms = 10000         # to send a request's headers, from connecting or from the
//!                                   # previous response (slow clients, idle keep-alive)
//! allowed_origins = []              # web origins that may call the daemon (CORS); others: 403
//! allowed_hosts = []                # Host names accepted besides loopback ones (DNS rebinding)
//! results_kept = 10000              # ended tasks' records kept for GET /v1/tasks/{id}
//! result_ttl_s = 3600               # ... for this long after submission
//!
//! [plugins]
//! manifest_dirs = ["manifests"]     # relative to this file
//! lib_dirs = []                     # searched before $GRIP_LIB_PATH and the grip executable's dir
//! require_hash = false
//!
//! [plugins.overrides]               # config keys a request may change, per plugin; replaces
//! openai = ["model", "temperature"] # the manifest's `[overrides] allow` (see host::overrides)
//!
//! [defaults]
//! driver = "scripted"               # used when a request names none
//!
//! [[listeners]]                     # listener plugins that receive every request's events
//! plugin = "jsonl"
//! config = { path = "events.jsonl" }
//! batch_size = 10
//!
//! [agents.helper]                   # a model name of the OpenAI-compatible front
//! driver = "openai"                 # (POST /v1/chat/completions, GET /v1/models)
//! config = { model = "gpt-4o-mini" }   # the operator's: not limited by the allowlist
//! tools = ["calculator"]            # server tools: run by grip, the client gets the answer
//! rules = ["Answer in one sentence."]
//!
//! [conversations]                   # tasks with a `conversation_id` (see host::conversation)
//! max_turns = 50                    # oldest turns dropped beyond these
//! max_bytes = 262144
//! ttl_s = 86400                     # forgotten when untouched this long
//! max_conversations = 10000         # in a single daemon's memory
//!
//! [queue]                           # grip serve --nats / grip worker (see host::queue)
//! url = "nats://127.0.0.1:4222"     # or --nats URL
//! concurrency = 4                   # tasks per worker
//! max_pending = 10000               # queued or running; beyond: 429
//! ack_wait_ms = 30000               # silence after which a worker's task goes to another
//! max_attempts = 3                  # deliveries before a task is dead-lettered
//! result_ttl_s = 86400              # records kept in the results bucket
//! wait_timeout_ms = 600000          # a waiting POST then answers 202 with the id
//! # stream, subject_prefix, consumer, results_bucket, conversations_bucket, dead_letter_stream
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::loader::LoaderOptions;
use crate::manifest::ManifestError;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where plugins come from.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Defaults for requests.
    #[serde(default)]
    pub defaults: Defaults,
    /// Listener plugins that receive every request's events.
    #[serde(default)]
    pub listeners: Vec<GlobalListener>,
    /// Named agents: model names of the OpenAI-compatible front.
    #[serde(default)]
    pub agents: std::collections::BTreeMap<String, Agent>,
    /// The NATS queue of `grip serve --nats` and `grip worker`.
    #[serde(default)]
    pub queue: crate::queue::QueueConfig,
    /// Bounds of conversation memory.
    #[serde(default)]
    pub conversations: crate::conversation::ConversationConfig,
    /// OpenTelemetry export (see [`crate::telemetry`]).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// `[agents.<name>]`: a driver with the operator's config, tools and rules, named as a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Prompt driver plugin id.
    pub driver: String,
    /// The driver's config overrides (the operator's own; requests still may change only the
    /// allowed keys on top).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Tool plugin ids, run by grip (server tools).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Rules for the system prompt.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "d::bind")]
    pub bind: SocketAddr,
    /// Environment variable holding the bearer token.
    #[serde(default)]
    pub auth_token_env: Option<String>,
    /// Largest request body accepted.
    #[serde(default = "d::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Tasks running at once; more are refused with 429.
    #[serde(default = "d::max_concurrent_tasks")]
    pub max_concurrent_tasks: usize,
    /// Longest a task may run.
    #[serde(default = "d::task_timeout_ms")]
    pub task_timeout_ms: u64,
    /// Largest `max_subtasks` a request may ask for.
    #[serde(default = "d::max_subtasks_cap")]
    pub max_subtasks_cap: usize,
    /// Threads for tasks on the sync path.
    #[serde(default = "d::blocking_threads")]
    pub blocking_threads: usize,
    /// How long in-flight tasks get after a shutdown signal.
    #[serde(default = "d::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// How long a connection may take to send a request's headers, counted from its opening or
    /// from the previous response; this also closes idle keep-alive connections.
    #[serde(default = "d::header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Web origins (`https://app.example`) allowed to call the daemon from a browser.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Host names accepted in the `Host` header besides loopback addresses and `localhost`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Ended tasks' records kept for `GET /v1/tasks/{id}` (a single daemon; a queue keeps its
    /// records in NATS).
    #[serde(default = "d::results_kept")]
    pub results_kept: usize,
    /// How long a record is kept after its task was submitted.
    #[serde(default = "d::result_ttl_s")]
    pub result_ttl_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: d::bind(),
            auth_token_env: None,
            max_body_bytes: d::max_body_bytes(),
            max_concurrent_tasks: d::max_concurrent_tasks(),
            task_timeout_ms: d::task_timeout_ms(),
            max_subtasks_cap: d::max_subtasks_cap(),
            blocking_threads: d::blocking_threads(),
            shutdown_grace_ms: d::shutdown_grace_ms(),
            header_timeout_ms: d::header_timeout_ms(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            results_kept: d::results_kept(),
            result_ttl_s: d::result_ttl_s(),
        }
    }
}

mod d {
    use std::net::SocketAddr;

    pub fn bind() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn max_body_bytes() -> usize {
        1 << 20
    }
    pub fn max_concurrent_tasks() -> usize {
        64
    }
    pub fn task_timeout_ms() -> u64 {
        300_000
    }
    pub fn max_subtasks_cap() -> usize {
        50
    }
    pub fn blocking_threads() -> usize {
        16
    }
    pub fn shutdown_grace_ms() -> u64 {
        30_000
    }
    pub fn header_timeout_ms() -> u64 {
        10_000
    }
    pub fn results_kept() -> usize {
        10_000
    }
    pub fn result_ttl_s() -> u64 {
        3600
    }
    pub fn manifest_dirs() -> Vec<std::path::PathBuf> {
        vec!["manifests".into()]
    }
    pub fn batch_size() -> usize {
        10
    }
}

/// `[plugins]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Manifest directories.
    #[serde(default = "d::manifest_dirs")]
    pub manifest_dirs: Vec<PathBuf>,
    /// Library directories.
    #[serde(default)]
    pub lib_dirs: Vec<PathBuf>,
    /// Refuse manifests without a sha256.
    #[serde(default)]
    pub require_hash: bool,
    /// Per plugin id: the config keys a request may override (replaces the manifest's list).
    #[serde(default)]
    pub overrides: std::collections::BTreeMap<String, Vec<String>>,
    /// Run every plugin this way, whatever its manifest says (`"process"` or `"in_process"`).
    #[serde(default)]
    pub isolation: Option<crate::isolation::Isolation>,
    /// Per plugin id: how it runs (wins over `isolation` and the manifest).
    #[serde(default)]
    pub isolation_by_id: std::collections::BTreeMap<String, crate::isolation::Isolation>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            manifest_dirs: d::manifest_dirs(),
            lib_dirs: Vec::new(),
            require_hash: false,
            overrides: Default::default(),
            isolation: None,
            isolation_by_id: Default::default(),
        }
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Driver used when a request names none.
    #[serde(default)]
    pub driver: Option<String>,
}

/// `[[listeners]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalListener {
    /// Listener plugin id.
    pub plugin: String,
    /// Config overrides.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Events per batch.
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
}

impl DaemonConfig {
    /// Reads a config file; relative directories in it are resolved against its directory.
    ///
    /// # Errors
    /// A [`ManifestError`]-style error naming the file, line and field.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let err = |line, column, message| ManifestError {
            path: path.to_owned(),
            line,
            column,
            message,
        };
        let src = std::fs::read_to_string(path)
            .map_err(|e| err(None, None, format!("cannot read config: {e}")))?;
        let mut config: DaemonConfig = toml::from_str(&src).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| {
                    let before = &src[..s.start.min(src.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before
                        .rfind('\n')
                        .map_or(before.len(), |nl| before.len() - nl - 1)
                        + 1;
                    (Some(line), Some(col))
                })
                .unwrap_or((None, None));
            err(
                line,
                col,
                e.message().lines().collect::<Vec<_>>().join(", "),
            )
        })?;
        for (id, keys) in &config.plugins.overrides {
            crate::overrides::validate_keys(keys)
                .map_err(|m| err(None, None, format!("field `plugins.overrides.{id}`: {m}")))?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for dir in config
            .plugins
            .manifest_dirs
            .iter_mut()
            .chain(config.plugins.lib_dirs.iter_mut())
        {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        Ok(config)
    }

    /// Loader options: the configured library dirs, then the defaults.
    pub fn loader_options(&self) -> LoaderOptions {
        let mut lib_dirs = self.plugins.lib_dirs.clone();
        lib_dirs.extend(LoaderOptions::default_lib_dirs());
        LoaderOptions {
            lib_dirs,
            require_hash: self.plugins.require_hash,
            isolation: crate::isolation::IsolationPolicy {
                force: self.plugins.isolation,
                by_plugin: self.plugins.isolation_by_id.clone(),
            },
            call_timeout: Some(std::time::Duration::from_millis(
                self.server.task_timeout_ms,
            )),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_config_file_loads_with_its_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../grip.toml");
        let loaded = DaemonConfig::load(&path);
        assert!(loaded.is_ok(), "{loaded:?}");
        if let Ok(c) = loaded {
            let d = crate::queue::QueueConfig::default();
            assert_eq!(
                (c.queue.concurrency, c.queue.max_attempts, &c.queue.stream),
                (d.concurrency, d.max_attempts, &d.stream)
            );
            assert_eq!(c.conversations.max_turns, 50);
        }
    }
}

//! Process isolation: a plugin that runs in a supervised child process instead of the host's.
//!
//! A manifest's `isolation = "process"` (or the operator's `[plugins] isolation`, or
//! `grip run --isolation process`) makes the loader start `grip plugin-host`, which loads the
//! library with the same checks as in-process loading (sha256 before dlopen, generation, layout;
//! only a `panic = "abort"` build is accepted, since its panic now ends only the child) and
//! serves it over its stdin/stdout ([`protocol`]). To the rest of the host the plugin is the same
//! [`crate::Plugin`]: its handles send wire JSON to the child instead of into an ABI box.
//!
//! What each mode survives:
//!
//! | fault in the plugin                         | in process              | process           |
//! |---------------------------------------------|-------------------------|-------------------|
//! | panic (SDK-built, `panic = "unwind"`)       | error for that call     | error for that call |
//! | segfault, `abort()`, C assertion, `exit()`  | the host dies           | calls in flight on it fail; child restarted |
//! | stack overflow, allocation failure          | the host dies           | same, and `[process]` limits bound it |
//! | sync call that never returns                | task times out; the thread stays stuck | killed at the call deadline, restarted |
//! | future that blocks inside `poll`            | a host worker freezes   | killed at the call deadline, restarted |
//!
//! The supervisor ([`supervisor`]) restarts a dead child on the next call with a back-off and
//! gives up after [`supervisor::MAX_DEATHS`] deaths in [`supervisor::DEATH_WINDOW`]: the plugin
//! is then marked failed and every call says why.

mod child;
pub(crate) mod protocol;
mod spawn;
pub(crate) mod supervisor;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use child::serve as serve_child;
pub(crate) use child::take_stdout;
pub use supervisor::{DEATH_WINDOW, MAX_DEATHS};
pub(crate) use supervisor::{
    RemoteInstance, RemoteStream, Supervisor, lock, runtime as background_runtime,
};

/// Where a plugin's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Isolation {
    /// Loaded into the host process: fastest; a crash in it ends the host.
    #[default]
    InProcess,
    /// In a supervised child process: a crash ends only the child, which is restarted.
    Process,
}

impl Isolation {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::InProcess => "in_process",
            Isolation::Process => "process",
        }
    }
}

/// The operator's choice, over the manifests': one mode for every plugin, or one per plugin id.
#[derive(Debug, Clone, Default)]
pub struct IsolationPolicy {
    /// Every plugin runs this way (`[plugins] isolation`, `--isolation`).
    pub force: Option<Isolation>,
    /// Per plugin id (`[plugins.isolation_by_id]`); wins over `force`.
    pub by_plugin: BTreeMap<String, Isolation>,
}

impl IsolationPolicy {
    /// The mode for plugin `id` whose manifest asks for `declared`.
    pub fn mode_for(&self, id: &str, declared: Isolation) -> Isolation {
        self.by_plugin
            .get(id)
            .copied()
            .or(self.force)
            .unwrap_or(declared)
    }
}

/// A manifest's `[process]` table: how its child is run when process-isolated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSettings {
    /// Seconds one call may take before the child is killed and restarted (default: the
    /// daemon's `server.task_timeout_ms`, else 300).
    #[serde(default)]
    pub call_timeout_secs: Option<u64>,
    /// Address-space limit of the child, in MiB (`RLIMIT_AS`).
    #[serde(default)]
    pub address_space_mb: Option<u64>,
    /// CPU-time limit of the child, in seconds (`RLIMIT_CPU`).
    #[serde(default)]
    pub cpu_secs: Option<u64>,
    /// Open-file limit of the child (`RLIMIT_NOFILE`).
    #[serde(default)]
    pub open_files: Option<u64>,
}

impl ProcessSettings {
    /// The deadline of one call; `default` when the manifest sets none (the operator's task
    /// timeout), else 300 s.
    pub fn call_timeout(&self, default: Option<Duration>) -> Duration {
        self.call_timeout_secs
            .map(Duration::from_secs)
            .or(default)
            .unwrap_or(Duration::from_secs(300))
            .max(Duration::from_millis(100))
    }
}

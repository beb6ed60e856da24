//! Every plugin the host knows of: the loaded ones by id, and the refused ones with reasons.
//!
//! Loading is all-or-nothing per plugin and independent across plugins: one bad manifest or
//! library is recorded as refused and never stops the others from loading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::LoadError;
use crate::loader::LoaderOptions;
use crate::manifest::{Kind, describe_capabilities, manifests_in};
use crate::plugin::Plugin;

/// A manifest whose plugin was not loaded.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The manifest file.
    pub manifest: PathBuf,
    /// The plugin id, when the manifest got far enough to have one.
    pub id: Option<String>,
    /// Why.
    pub error: LoadError,
}

/// Loaded and refused plugins.
#[derive(Debug, Default)]
pub struct Registry {
    plugins: BTreeMap<String, Plugin>,
    refused: Vec<Refusal>,
}

/// One row of `plugins list`, loaded or refused.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRow {
    /// Plugin id (`?` when the manifest has none).
    pub id: String,
    /// Kinds, e.g. `prompt_driver`.
    pub kinds: Vec<Kind>,
    /// Library version, when loaded.
    pub version: Option<String>,
    /// Capabilities, as the manifest spells them.
    pub capabilities: String,
    /// Manifest path.
    pub manifest: PathBuf,
    /// Library path, when resolved.
    pub library: Option<PathBuf>,
    /// `loaded` or `refused`; an MCP server not up: `idle`, `starting`, `down` or `stopped`.
    pub status: &'static str,
    /// Why it was refused.
    pub reason: Option<String>,
    /// The config keys a daemon request may override.
    pub overridable: Vec<String>,
    /// `in_process` or `process` (when loaded).
    pub isolation: Option<crate::isolation::Isolation>,
    /// The pid of a process-isolated plugin's child (or its stdio MCP server's).
    pub pid: Option<u32>,
    /// An MCP server's transport, and its name and version when it is up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp: Option<String>,
    /// The functions an MCP server's tool offers (`<Tool>_<activity>`), when it is up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every `*.toml` manifest in each of `dirs`.
    pub fn load_dirs(dirs: &[PathBuf], options: &LoaderOptions) -> Self {
        let mut registry = Self::new();
        for dir in dirs {
            registry.add_dir(dir, options);
        }
        registry
    }

    /// Loads every `*.toml` manifest in `dir`; an unreadable directory is recorded as a refusal.
    pub fn add_dir(&mut self, dir: &Path, options: &LoaderOptions) {
        match manifests_in(dir) {
            Ok(paths) => {
                for path in paths {
                    // A refusal is recorded; go on with the others.
                    let _ = self.add_manifest(&path, options);
                }
            }
            Err(e) => self.refused.push(Refusal {
                manifest: dir.to_owned(),
                id: None,
                error: LoadError::Manifest(crate::manifest::ManifestError {
                    path: dir.to_owned(),
                    line: None,
                    column: None,
                    message: format!("cannot read manifest directory: {e}"),
                }),
            }),
        }
    }

    /// Loads one manifest. Returns the id of the loaded plugin, or the refusal.
    ///
    /// # Errors
    /// The [`LoadError`] that made the plugin refused (it is also recorded).
    pub fn add_manifest(
        &mut self,
        path: &Path,
        options: &LoaderOptions,
    ) -> Result<String, LoadError> {
        // Refuse a duplicate before loading its library: no reason to run its constructors.
        let manifest = match crate::manifest::Manifest::load(path) {
            Ok(m) => m,
            Err(e) => return Err(self.refuse(path, None, e.into())),
        };
        if let Some(first) = self.plugins.get(&manifest.id) {
            let error = LoadError::DuplicateId {
                id: manifest.id.clone(),
                manifest: path.to_owned(),
                first: first.manifest().path.clone(),
            };
            return Err(self.refuse(path, Some(manifest.id.clone()), error));
        }
        let id = manifest.id.clone();
        match crate::loader::load(manifest, options) {
            Ok(plugin) => {
                tracing::info!(plugin = %id, library = %plugin.library().display(), "loaded plugin");
                self.plugins.insert(id.clone(), plugin);
                Ok(id)
            }
            Err(e) => Err(self.refuse(path, Some(id), e)),
        }
    }

    fn refuse(&mut self, path: &Path, id: Option<String>, error: LoadError) -> LoadError {
        tracing::warn!("{error}");
        self.refused.push(Refusal {
            manifest: path.to_owned(),
            id,
            error: error.clone(),
        });
        error
    }

    /// A loaded plugin by id.
    pub fn get(&self, id: &str) -> Option<&Plugin> {
        self.plugins.get(id)
    }

    /// Loaded plugins, by id.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.values()
    }

    /// Loaded plugins of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Plugin> {
        self.plugins.values().filter(move |p| p.is(kind))
    }

    /// Refused manifests, in the order they were tried.
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }

    /// One row per manifest, loaded first (by id), then refused. An MCP server's row says what
    /// it offers when it is up (see [`Registry::connect_mcp`]), else why not; nothing waits.
    pub fn rows(&self) -> Vec<PluginRow> {
        let mut rows: Vec<PluginRow> = self.plugins.values().map(|p| self.row(p)).collect();
        rows.extend(self.refused.iter().map(|r| PluginRow {
            id: r.id.clone().unwrap_or_else(|| "?".into()),
            kinds: Vec::new(),
            version: None,
            capabilities: String::new(),
            manifest: r.manifest.clone(),
            library: None,
            status: "refused",
            reason: Some(r.error.to_string()),
            overridable: Vec::new(),
            isolation: None,
            pid: None,
            mcp: None,
            functions: Vec::new(),
        }));
        rows
    }

    /// The row of a loaded plugin; an MCP server's shows what it offers, or why it is not up.
    fn row(&self, p: &Plugin) -> PluginRow {
        let mut row = PluginRow {
            id: p.id().to_owned(),
            kinds: p.kinds(),
            version: Some(p.info().version.clone()),
            capabilities: describe_capabilities(p.capabilities()),
            manifest: p.manifest().path.clone(),
            library: Some(p.library().to_owned()),
            status: "loaded",
            reason: None,
            overridable: p.manifest().overridable.clone(),
            isolation: Some(p.isolation()),
            pid: p.child_pid(),
            mcp: None,
            functions: Vec::new(),
        };
        if let Some(client) = p.mcp() {
            row.library = None;
            let mut what = client.settings().describe();
            match client.status() {
                Ok(session) => {
                    what = format!("{what} ({})", session.server);
                    row.version = Some(session.version.clone());
                    row.pid = session.pid;
                    let catalog = session.catalog();
                    row.functions = catalog
                        .spec
                        .activities
                        .iter()
                        .map(|a| format!("{}_{}", catalog.spec.name, a.name))
                        .collect();
                }
                Err((status, why)) => {
                    row.status = status;
                    row.reason = Some(why);
                }
            }
            row.mcp = Some(what);
        }
        row
    }

    /// Starts every MCP server now, without waiting (the daemon and workers: the first task
    /// then finds them up).
    pub fn start_mcp(&self) {
        for client in self.plugins.values().filter_map(Plugin::mcp) {
            client.start();
        }
    }

    /// Starts every MCP server and waits until each is up or has failed (`plugins list`).
    pub fn connect_mcp(&self) {
        self.start_mcp();
        for client in self.plugins.values().filter_map(Plugin::mcp) {
            let _ = client.connect_blocking(); // a failure is the row's reason
        }
    }

    /// Ends every MCP server (stdin closed, SIGTERM, SIGKILL to its process group).
    pub fn shutdown(&self) {
        // All told first, then waited for: the servers end in parallel.
        for client in self.plugins.values().filter_map(Plugin::mcp) {
            client.begin_shutdown();
        }
        for client in self.plugins.values().filter_map(Plugin::mcp) {
            client.wait_stopped();
        }
    }
}

/// A registry's MCP servers end with it; a server is never left running after its host.
impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

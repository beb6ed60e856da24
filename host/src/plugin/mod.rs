//! A loaded plugin and safe handles to its instances.
//!
//! Handles check the declared capability before every call (an undeclared mode is an error
//! naming the plugin and the mode, never a call into the plugin), convert JSON both ways, and
//! turn every failure into a [`CallError`] naming the plugin. A future or stream poll that
//! panics despite the SDK's guards (a plugin not built with our SDK) is caught here too.

mod handles;
mod raw;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugin_api::abi::{
    Capabilities, ListenerBox, PluginErrorFfi, PluginInfoFfi, PluginModV1Ref, PromptDriverBox,
    ToolBox,
};
use plugin_api::abi_stable::std_types::{RResult, RStr};
use plugin_api::abi_v2::PluginModV2Ref;
use plugin_api::wire::{EventKind, ToolSpec};
use plugin_api::{ErrorKind, PluginError};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use handles::{Driver, DriverStream, ListenerHandle, ToolHandle};
pub(crate) use raw::{Raw, RawStream};

use crate::error::CallError;
use crate::isolation::{Isolation, Supervisor};
use crate::manifest::{Kind, Manifest, Mode, capability};
use crate::mcp::client::McpClient;

/// What a plugin says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Plugin id.
    pub id: String,
    /// Plugin crate version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// ABI generation.
    pub abi_generation: u32,
    /// Wire schema version it speaks.
    pub wire_version: u32,
    /// plugin-api version it was built with.
    pub sdk_version: String,
    /// What it implements.
    #[serde(skip)]
    pub capabilities: Capabilities,
    /// Built with `panic = "unwind"`.
    pub panic_unwind: bool,
}

/// A loaded, checked plugin. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    manifest: Arc<Manifest>,
    info: PluginInfo,
    library: PathBuf,
    backend: Backend,
    /// Tool specs already parsed, with their compiled validators (see [`Plugin::new_tool`]).
    tool_specs: std::sync::Mutex<Vec<CompiledSpec>>,
}

/// The activities' argument validators, by activity name.
type Validators = Arc<std::collections::HashMap<String, Arc<jsonschema::Validator>>>;

/// A tool spec as its instance sent it, parsed, with its validators compiled.
struct CompiledSpec {
    json: String,
    spec: Arc<ToolSpec>,
    validators: Validators,
}

/// How many distinct specs of one tool plugin are kept (overrides can change a spec).
const MAX_COMPILED_SPECS: usize = 8;

/// A plugin loaded into this process: its root module's entry points, which are the same in
/// every ABI generation (only `init` and the host services it takes differ).
#[derive(Clone, Copy)]
pub(crate) struct LocalModule {
    pub(crate) info: extern "C" fn() -> PluginInfoFfi,
    new_driver: extern "C" fn(RStr<'_>) -> RResult<PromptDriverBox, PluginErrorFfi>,
    new_tool: extern "C" fn(RStr<'_>) -> RResult<ToolBox, PluginErrorFfi>,
    new_listener: extern "C" fn(RStr<'_>) -> RResult<ListenerBox, PluginErrorFfi>,
}

impl LocalModule {
    pub(crate) fn from_v1(m: PluginModV1Ref) -> Self {
        Self {
            info: m.info(),
            new_driver: m.new_driver(),
            new_tool: m.new_tool(),
            new_listener: m.new_listener(),
        }
    }

    pub(crate) fn from_v2(m: PluginModV2Ref) -> Self {
        Self {
            info: m.info(),
            new_driver: m.new_driver(),
            new_tool: m.new_tool(),
            new_listener: m.new_listener(),
        }
    }
}

/// Where the plugin's code runs.
pub(crate) enum Backend {
    /// Loaded into this process.
    Local(LocalModule),
    /// In a supervised child process.
    Process(Arc<Supervisor>),
    /// An MCP server.
    Mcp(Arc<McpClient>),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.inner.info.id)
            .field("library", &self.inner.library)
            .finish()
    }
}

/// Whether a plugin-api version (`1.2.0`) is at least `major.minor`; an unreadable one is not.
fn sdk_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version.split('.').map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(ma)), Some(Ok(mi))) => (ma, mi) >= (major, minor),
        _ => false,
    }
}

/// Merges `overrides` into `base`: objects recursively, anything else replaced.
pub fn merge_config(base: &mut serde_json::Value, overrides: &serde_json::Value) {
    match (base, overrides) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge_config(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

pub(crate) fn to_call_error<T>(
    plugin: &str,
    op: &'static str,
    r: RResult<T, plugin_api::abi::PluginErrorFfi>,
) -> Result<T, CallError> {
    r.into_result()
        .map_err(|e| CallError::from_plugin(plugin, op, PluginError::from_ffi(e)))
}

fn decode<T: DeserializeOwned>(plugin: &str, op: &'static str, json: &str) -> Result<T, CallError> {
    serde_json::from_str(json).map_err(|e| {
        let snippet: String = json.chars().take(120).collect();
        CallError::host(
            plugin,
            op,
            ErrorKind::InvalidInput,
            format!("returned malformed JSON ({e}): {snippet}"),
        )
    })
}

/// A tool instance of an MCP server: the server's current tool list (the server is started,
/// or waited for, here) and calls sent to it.
fn mcp_instance(
    plugin: &str,
    op: &'static str,
    client: &Arc<McpClient>,
) -> Result<(Raw, Option<String>), CallError> {
    let session = client
        .connect_blocking()
        .map_err(|why| CallError::host(plugin, op, ErrorKind::Upstream, why))?;
    let spec = encode(plugin, op, &*session.catalog().spec)?;
    Ok((Raw::Mcp(Arc::clone(client)), Some(spec)))
}

fn encode<T: Serialize>(plugin: &str, op: &'static str, value: &T) -> Result<String, CallError> {
    serde_json::to_string(value).map_err(|e| {
        CallError::host(
            plugin,
            op,
            ErrorKind::Internal,
            format!("cannot encode request: {e}"),
        )
    })
}

impl Plugin {
    pub(crate) fn new(
        manifest: Arc<Manifest>,
        info: PluginInfo,
        library: PathBuf,
        backend: Backend,
    ) -> Self {
        Self {
            inner: Arc::new(PluginInner {
                manifest,
                info,
                library,
                backend,
                tool_specs: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// How it is isolated from the host.
    pub fn isolation(&self) -> Isolation {
        match self.inner.backend {
            Backend::Local(_) => Isolation::InProcess,
            Backend::Process(_) | Backend::Mcp(_) => Isolation::Process,
        }
    }

    /// The pid of its child process, when process-isolated and running.
    pub fn child_pid(&self) -> Option<u32> {
        match &self.inner.backend {
            Backend::Local(_) => None,
            Backend::Process(s) => s.pid(),
            Backend::Mcp(c) => c.session().and_then(|s| s.pid),
        }
    }

    /// How many times its child was restarted, when process-isolated.
    pub fn child_restarts(&self) -> Option<u64> {
        match &self.inner.backend {
            Backend::Local(_) => None,
            Backend::Process(s) => Some(s.restarts()),
            Backend::Mcp(c) => Some(c.restarts()),
        }
    }

    /// The MCP client, when the plugin is an MCP server.
    pub fn mcp(&self) -> Option<&Arc<McpClient>> {
        match &self.inner.backend {
            Backend::Mcp(c) => Some(c),
            _ => None,
        }
    }

    /// A new instance of `kind`, with a tool's spec JSON.
    fn instance(
        &self,
        kind: Kind,
        op: &'static str,
        overrides: Option<&serde_json::Value>,
    ) -> Result<(Raw, Option<String>), CallError> {
        self.require_kind(kind, op)?;
        self.instance_with(kind, op, self.config_json(overrides))
    }

    /// A new instance of `kind` from its final config JSON (the child of a process-isolated
    /// plugin is handed the config the host merged).
    pub(crate) fn instance_with(
        &self,
        kind: Kind,
        op: &'static str,
        config: String,
    ) -> Result<(Raw, Option<String>), CallError> {
        let id = self.id();
        let module = match &self.inner.backend {
            Backend::Process(s) => return s.new_instance(kind, op, config),
            Backend::Mcp(c) => return mcp_instance(id, op, c),
            Backend::Local(m) => m,
        };
        let c = config.as_str().into();
        Ok(match kind {
            Kind::PromptDriver => {
                let d = to_call_error(id, op, (module.new_driver)(c))?;
                (Raw::Driver(Arc::new(d)), None)
            }
            Kind::Tool => {
                let t = to_call_error(id, op, (module.new_tool)(c))?;
                let spec = to_call_error(id, "spec", t.spec())?.into_string();
                (Raw::Tool(Arc::new(t)), Some(spec))
            }
            Kind::EventListener => {
                let l = to_call_error(id, op, (module.new_listener)(c))?;
                (Raw::Listener(Arc::new(l)), None)
            }
        })
    }

    /// Plugin id.
    pub fn id(&self) -> &str {
        &self.inner.info.id
    }

    /// What the library says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }

    /// Whether the plugin's SDK can parse an event of this kind. An older SDK fails a whole
    /// batch on a type it does not know, so event types added since its plugin-api version are
    /// left out of what a listener plugin is sent.
    pub fn knows_event(&self, kind: &EventKind) -> bool {
        match kind {
            EventKind::PromptRetry { .. } => sdk_at_least(&self.inner.info.sdk_version, (1, 2)),
            EventKind::TaskRetry { .. } => sdk_at_least(&self.inner.info.sdk_version, (1, 4)),
            _ => true,
        }
    }

    /// The manifest it was loaded from.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The library file.
    pub fn library(&self) -> &Path {
        &self.inner.library
    }

    /// Its capabilities (manifest and library agree; checked at load).
    pub fn capabilities(&self) -> Capabilities {
        self.inner.info.capabilities
    }

    /// Whether it provides `kind` in `mode`.
    pub fn can(&self, kind: Kind, mode: Mode) -> bool {
        self.capabilities().contains(capability(kind, mode))
    }

    /// Whether it provides `kind` at all.
    pub fn is(&self, kind: Kind) -> bool {
        self.kinds().contains(&kind)
    }

    /// The kinds it provides, as its library reports them (the manifest agrees; checked at
    /// load).
    pub fn kinds(&self) -> Vec<Kind> {
        crate::capability::kinds_of(self.capabilities())
    }

    fn config_json(&self, overrides: Option<&serde_json::Value>) -> String {
        self.merged_config(overrides).to_string()
    }

    /// The manifest's config with `overrides` merged over it.
    fn merged_config(&self, overrides: Option<&serde_json::Value>) -> serde_json::Value {
        let mut config = self.inner.manifest.config.clone();
        if let Some(o) = overrides {
            merge_config(&mut config, o);
        }
        config
    }

    fn require_kind(&self, kind: Kind, op: &'static str) -> Result<(), CallError> {
        if self.is(kind) {
            Ok(())
        } else {
            Err(CallError::host(
                self.id(),
                op,
                ErrorKind::Unsupported,
                format!("is not a {kind} (its kinds: {:?})", self.kinds()),
            ))
        }
    }

    /// Makes a prompt driver, with `overrides` merged over the manifest's config.
    ///
    /// # Errors
    /// When the plugin is not a driver or rejects the config.
    pub fn new_driver(&self, overrides: Option<&serde_json::Value>) -> Result<Driver, CallError> {
        self.require_kind(Kind::PromptDriver, "new_driver")?;
        let config = self.merged_config(overrides);
        let gen_ai = Arc::new(crate::telemetry::genai::DriverInfo::new(self, &config));
        let (inner, _) =
            self.instance_with(Kind::PromptDriver, "new_driver", config.to_string())?;
        Ok(Driver {
            plugin: self.clone(),
            inner,
            gen_ai,
        })
    }

    /// Makes a tool, with `overrides` merged over the manifest's config.
    ///
    /// # Errors
    /// When the plugin is not a tool, rejects the config, or returns a bad spec.
    pub fn new_tool(&self, overrides: Option<&serde_json::Value>) -> Result<ToolHandle, CallError> {
        let (inner, spec_json) = self.instance(Kind::Tool, "new_tool", overrides)?;
        let (spec, validators) = self.compiled_spec(spec_json.unwrap_or_default())?;
        Ok(ToolHandle {
            plugin: self.clone(),
            spec,
            validators,
            inner,
        })
    }

    /// The parsed spec and compiled validators for a tool instance's spec JSON. Daemons make a
    /// tool instance per task, and compiling its JSON Schemas was the largest part of that, so
    /// a spec seen before (byte for byte) reuses what was compiled for it.
    fn compiled_spec(&self, json: String) -> Result<(Arc<ToolSpec>, Validators), CallError> {
        let cache = &self.inner.tool_specs;
        if let Some(c) = crate::isolation::lock(cache)
            .iter()
            .find(|c| c.json == json)
        {
            return Ok((Arc::clone(&c.spec), Arc::clone(&c.validators)));
        }
        let spec: ToolSpec = decode(self.id(), "spec", &json)?;
        if spec.activities.is_empty() {
            return Err(CallError::host(
                self.id(),
                "spec",
                ErrorKind::InvalidInput,
                "tool spec has no activities",
            ));
        }
        // Every call's arguments are checked against these.
        let mut validators = std::collections::HashMap::new();
        for a in &spec.activities {
            let v = jsonschema::validator_for(&a.parameters).map_err(|e| {
                CallError::host(
                    self.id(),
                    "spec",
                    ErrorKind::InvalidInput,
                    format!("activity `{}` has an invalid JSON Schema: {e}", a.name),
                )
            })?;
            validators.insert(a.name.clone(), Arc::new(v));
        }
        let (spec, validators) = (Arc::new(spec), Arc::new(validators));
        let mut cache = crate::isolation::lock(cache);
        if cache.len() >= MAX_COMPILED_SPECS {
            cache.remove(0);
        }
        cache.push(CompiledSpec {
            json,
            spec: Arc::clone(&spec),
            validators: Arc::clone(&validators),
        });
        Ok((spec, validators))
    }

    /// Makes an event listener driver, with `overrides` merged over the manifest's config.
    ///
    /// # Errors
    /// When the plugin is not a listener or rejects the config.
    pub fn new_listener(
        &self,
        overrides: Option<&serde_json::Value>,
    ) -> Result<ListenerHandle, CallError> {
        let (inner, _) = self.instance(Kind::EventListener, "new_listener", overrides)?;
        Ok(ListenerHandle {
            plugin: self.clone(),
            inner,
        })
    }

    fn require(&self, kind: Kind, mode: Mode, op: &'static str) -> Result<(), CallError> {
        if self.can(kind, mode) {
            Ok(())
        } else {
            Err(CallError::host(
                self.id(),
                op,
                ErrorKind::Unsupported,
                format!(
                    "lacks the `{}` capability for a {kind} (it declares {})",
                    mode.as_str(),
                    crate::manifest::describe_capabilities(self.capabilities())
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sdk_at_least;

    #[test]
    fn sdk_versions_compare_by_major_and_minor() {
        assert!(sdk_at_least("1.2.0", (1, 2)));
        assert!(sdk_at_least("1.10.3", (1, 2)));
        assert!(sdk_at_least("2.0.0", (1, 2)));
        assert!(!sdk_at_least("1.1.9", (1, 2)));
        assert!(!sdk_at_least("1.0.0", (1, 2)));
        assert!(!sdk_at_least("garbage", (1, 2)));
    }
}

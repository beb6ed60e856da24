//! Loads one plugin from its manifest and shared library, refusing anything unsafe to run.
//!
//! The order of checks matters:
//!
//! 1. the manifest is valid;
//! 2. the library is found and, when the manifest pins a sha256, matches it (checked **before**
//!    `dlopen`, since opening a library runs its constructors);
//! 3. the library exports a grip root module of a generation this host knows;
//! 4. abi_stable's layout check passes (one line of the mismatch is reported, not the full dump);
//! 5. the plugin's own info agrees with the manifest (id, version, capabilities) and it was built
//!    with `panic = "unwind"`.
//!
//! Each library is loaded with `lib_header_from_path(..).init_root_module()`, never
//! `RootModule::load_from_file`, which caches one module per root-module type in a static and
//! would silently hand back the first plugin for every later path. Libraries are never unloaded
//! (abi_stable leaks them on purpose); loading the same path twice returns the same image.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugin_api::abi::{
    ABI_GENERATION_V1, Capabilities, PanicStrategy, PluginInfoFfi, PluginModV1Ref, ROOT_MODULE_NAME,
};
use plugin_api::abi_stable::library::{LibHeader, LibraryError, lib_header_from_path};
use plugin_api::abi_v2::{ABI_GENERATION_V2, PluginModV2Ref};
use plugin_api::wire::WIRE_VERSION;
use sha2::{Digest, Sha256};

use crate::capability::kinds_of;
use crate::error::LoadError;
use crate::isolation::supervisor::Launch;
use crate::isolation::{Isolation, IsolationPolicy, Supervisor};
use crate::manifest::{LibrarySource, Manifest, Source, describe_capabilities};
use crate::plugin::{Backend, LocalModule, Plugin, PluginInfo};

/// ABI generations this host can load, newest first.
pub const KNOWN_GENERATIONS: &[u32] = &[ABI_GENERATION_V2, ABI_GENERATION_V1];

/// How plugins are found and checked.
#[derive(Debug, Clone, Default)]
pub struct LoaderOptions {
    /// Directories searched, in order, for a manifest's `library.name`.
    pub lib_dirs: Vec<PathBuf>,
    /// Refuse manifests that pin no sha256.
    pub require_hash: bool,
    /// The operator's isolation choice over the manifests'.
    pub isolation: IsolationPolicy,
    /// The `grip` binary that runs process-isolated plugins (default: see [`plugin_host_program`]).
    pub plugin_host: Option<PathBuf>,
    /// The deadline of one call to a process-isolated plugin whose manifest sets none (the
    /// daemon passes its task timeout).
    pub call_timeout: Option<std::time::Duration>,
}

impl LoaderOptions {
    /// The default library path: `$GRIP_LIB_PATH` (colon-separated), then the directory of the
    /// running executable (where cargo puts the plugins it builds alongside the host).
    pub fn default_lib_dirs() -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("GRIP_LIB_PATH")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
        {
            // cargo puts examples and test binaries one level below the profile directory.
            let nested = dir
                .file_name()
                .is_some_and(|n| n == "examples" || n == "deps");
            if let (true, Some(profile)) = (nested, dir.parent()) {
                dirs.push(profile.to_owned());
            }
            dirs.push(dir);
        }
        dirs
    }

    /// The default library path, without `--require-hash`.
    pub fn from_env() -> Self {
        Self {
            lib_dirs: Self::default_lib_dirs(),
            ..Self::default()
        }
    }
}

/// The platform file name of library `name` (`libname.so` on Linux).
pub fn library_file_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Resolves the manifest's library to an existing file.
///
/// # Errors
/// [`LoadError::LibraryNotFound`] naming every place looked at.
pub fn resolve_library(manifest: &Manifest, options: &LoaderOptions) -> Result<PathBuf, LoadError> {
    let not_found = |detail: String| LoadError::LibraryNotFound {
        id: manifest.id.clone(),
        manifest: manifest.path.clone(),
        detail,
    };
    let library = match &manifest.source {
        Source::Library(l) => l,
        Source::Mcp(_) => {
            return Err(not_found(
                "it is an `[mcp]` manifest: its tool is an MCP server, not a library".into(),
            ));
        }
    };
    match library {
        LibrarySource::Path(p) => {
            let full = manifest.dir().join(p);
            if full.is_file() {
                Ok(full)
            } else {
                Err(not_found(format!(
                    "{} does not exist (library.path is relative to the manifest); build the plugin first",
                    full.display()
                )))
            }
        }
        LibrarySource::Name(name) => {
            let file = library_file_name(name);
            for dir in &options.lib_dirs {
                let candidate = dir.join(&file);
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
            let searched: Vec<String> = options
                .lib_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            Err(not_found(format!(
                "no {file} in [{}]; build the plugin (cargo build) or add its directory with --lib-dir / GRIP_LIB_PATH",
                searched.join(", ")
            )))
        }
    }
}

/// The sha256 of a file, as lower-case hex.
///
/// # Errors
/// When the file cannot be read.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Reduces abi_stable's multi-hundred-line layout report to one line: the type where the
/// first mismatch is, the mismatch, and its Expected/Found values.
pub fn summarize_abi_error(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let inside_type = lines
        .iter()
        .position(|l| l.contains("error(s)inside:"))
        .and_then(|i| lines[i..].iter().find_map(|l| l.strip_prefix("type:")));
    let mut summary = String::new();
    if let Some(i) = lines.iter().position(|l| l.starts_with("Error:")) {
        if let Some(t) = inside_type {
            summary.push_str(&format!("in {t}: "));
        }
        summary.push_str(lines[i].trim_start_matches("Error:").trim());
        let mut section = "";
        let (mut expected, mut found) = (Vec::new(), Vec::new());
        for l in &lines[i + 1..] {
            match *l {
                "Expected:" => section = "expected",
                "Found:" => section = "found",
                l if l.starts_with("Error:") || l.is_empty() && section == "found" => break,
                "" => {}
                l if section == "expected" => expected.push(l),
                l if section == "found" => found.push(l),
                _ => {}
            }
        }
        if !expected.is_empty() || !found.is_empty() {
            summary.push_str(&format!(
                ": expected {}, found {}",
                expected.join(" "),
                found.join(" ")
            ));
        }
    } else {
        summary = lines
            .iter()
            .filter(|l| !l.is_empty())
            .take(2)
            .copied()
            .collect::<Vec<_>>()
            .join("; ");
    }
    let mut one_line = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() > 400 {
        let mut cut = 400;
        while !one_line.is_char_boundary(cut) {
            cut -= 1;
        }
        one_line.truncate(cut);
        one_line.push_str(" ...");
    }
    one_line
}

fn library_error(id: &str, library: &Path, e: LibraryError) -> LoadError {
    match e {
        LibraryError::AbiInstability(report) => LoadError::IncompatibleAbi {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: summarize_abi_error(&report.to_string()),
        },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleAbi {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: format!("root module version {actual_version}, this host needs {expected_version}"),
        },
        LibraryError::InvalidAbiHeader(h) => LoadError::IncompatibleAbi {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: format!(
                "built with abi_stable {}.{}, which this host cannot load; rebuild against the current plugin-api",
                h.abi_major, h.abi_minor
            ),
        },
        LibraryError::GetSymbolError { .. } => LoadError::Open {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: "not a grip plugin (no abi_stable root module); did it call plugin_api::export_plugin!?".into(),
        },
        LibraryError::OpenError { err, .. } => LoadError::Open {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: err.to_string(),
        },
        other => LoadError::Open {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: other.to_string().lines().next().unwrap_or_default().to_owned(),
        },
    }
}

fn info_from_ffi(info: PluginInfoFfi) -> PluginInfo {
    PluginInfo {
        id: info.id.into_string(),
        version: info.version.into_string(),
        description: info.description.into_string(),
        abi_generation: info.abi_generation,
        wire_version: info.wire_version,
        sdk_version: info.sdk_version.into_string(),
        capabilities: info.capabilities,
        panic_unwind: info.panic_strategy == PanicStrategy::UNWIND,
    }
}

/// Loads the plugin a manifest describes, running every check.
///
/// # Errors
/// A [`LoadError`] saying which check failed, with the plugin id and the file.
pub fn load(manifest: Manifest, options: &LoaderOptions) -> Result<Plugin, LoadError> {
    if let Source::Mcp(settings) = &manifest.source {
        return Ok(load_mcp(Arc::clone(settings), manifest));
    }
    let library = resolve_library(&manifest, options)?;
    verify_hash(&manifest, &library, options)?;
    match options.isolation.mode_for(&manifest.id, manifest.isolation) {
        Isolation::InProcess => open(manifest, library, false),
        Isolation::Process => start_isolated(manifest, library, options),
    }
}

/// An `[mcp]` manifest's plugin: a tool whose server starts when the tool is first used (a
/// registered server costs a `grip run` that does not use it nothing).
fn load_mcp(settings: Arc<crate::mcp::McpSettings>, manifest: Manifest) -> Plugin {
    let info = PluginInfo {
        id: manifest.id.clone(),
        version: manifest.version.clone().unwrap_or_else(|| "-".into()),
        description: manifest.description.clone().unwrap_or_default(),
        abi_generation: 0,
        wire_version: WIRE_VERSION,
        sdk_version: "mcp".into(),
        capabilities: Capabilities::TOOL_SYNC | Capabilities::TOOL_ASYNC,
        panic_unwind: true,
    };
    let client = crate::mcp::client::McpClient::new(
        &manifest.id,
        (*settings).clone(),
        info.description.clone(),
    );
    let path = manifest.path.clone();
    Plugin::new(Arc::new(manifest), info, path, Backend::Mcp(client))
}

/// dlopens a checked library, checks what it says about itself, and runs its `init`.
/// `in_child`: this is a plugin's own child process, where a `panic = "abort"` build is fine.
fn open(manifest: Manifest, library: PathBuf, in_child: bool) -> Result<Plugin, LoadError> {
    let id = manifest.id.clone();
    let header = lib_header_from_path(&library).map_err(|e| library_error(&id, &library, e))?;
    let generation = check_generation(&id, &library, header)?;
    let lib_err = |e| library_error(&id, &library, e);
    // The newest generation first; the header's version says which one the library is.
    let (module, init): (LocalModule, Box<dyn FnOnce() -> _>) = if generation == ABI_GENERATION_V2 {
        let m = header
            .init_root_module::<PluginModV2Ref>()
            .map_err(lib_err)?;
        let services = crate::host_services::v2_for(&id);
        (
            LocalModule::from_v2(m),
            Box::new(move || (m.init())(services)),
        )
    } else {
        let m = header
            .init_root_module::<PluginModV1Ref>()
            .map_err(lib_err)?;
        let services = crate::host_services::v1_for(&id);
        (
            LocalModule::from_v1(m),
            Box::new(move || (m.init())(services)),
        )
    };

    let info = info_from_ffi((module.info)());
    let refuse = |reason: String| LoadError::Refused {
        id: id.clone(),
        library: library.clone(),
        reason,
    };
    check_info(&manifest, &info, generation, in_child).map_err(refuse)?;
    if let Err(e) = init().into_result() {
        let e = plugin_api::PluginError::from_ffi(e);
        return Err(refuse(format!("init failed: {e}")));
    }
    Ok(Plugin::new(
        Arc::new(manifest),
        info,
        library,
        Backend::Local(module),
    ))
}

/// In a plugin's child (`grip plugin-host`): the manifest read again, the library the host
/// resolved hashed again right before it is opened.
pub(crate) fn open_in_child(manifest: &Path, library: &Path) -> Result<Plugin, LoadError> {
    let manifest = Manifest::load(manifest)?;
    verify_hash(&manifest, library, &LoaderOptions::default())?;
    open(manifest, library.to_owned(), true)
}

/// Starts a process-isolated plugin's child; the plugin is loaded once its library is.
fn start_isolated(
    manifest: Manifest,
    library: PathBuf,
    options: &LoaderOptions,
) -> Result<Plugin, LoadError> {
    let launch = Launch {
        program: options
            .plugin_host
            .clone()
            .unwrap_or_else(plugin_host_program),
        manifest: manifest.path.clone(),
        library: library.clone(),
        settings: manifest.process.clone(),
        deadline: manifest.process.call_timeout(options.call_timeout),
    };
    let (sup, info) =
        Supervisor::start(&manifest.id, launch).map_err(|reason| LoadError::Refused {
            id: manifest.id.clone(),
            library: library.clone(),
            reason: format!("in its own process: {reason}"),
        })?;
    Ok(Plugin::new(
        Arc::new(manifest),
        info.into(),
        library,
        Backend::Process(sup),
    ))
}

/// The `grip` binary children are started from: `$GRIP_PLUGIN_HOST`, else this executable when
/// it is `grip`, else a `grip` next to it or one directory up (cargo's test binaries live in
/// `<profile>/deps`, next to nothing but the `grip` one level up).
pub fn plugin_host_program() -> PathBuf {
    if let Some(p) = std::env::var_os("GRIP_PLUGIN_HOST") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("grip"));
    if exe.file_stem().is_some_and(|s| s == "grip") {
        return exe;
    }
    let name = format!("grip{}", std::env::consts::EXE_SUFFIX);
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The library's sha256 against the manifest's pin, before a byte of it runs.
fn verify_hash(
    manifest: &Manifest,
    library: &Path,
    options: &LoaderOptions,
) -> Result<(), LoadError> {
    let id = &manifest.id;
    match &manifest.sha256 {
        Some(expected) => {
            let found = sha256_file(library).map_err(|e| LoadError::Open {
                id: id.to_owned(),
                library: library.to_owned(),
                detail: format!("cannot read: {e}"),
            })?;
            if &found != expected {
                return Err(LoadError::HashMismatch {
                    id: id.to_owned(),
                    manifest: manifest.path.clone(),
                    library: library.to_owned(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        None if options.require_hash => {
            return Err(LoadError::HashRequired {
                id: id.to_owned(),
                manifest: manifest.path.clone(),
                library: library.to_owned(),
            });
        }
        None => {}
    }
    Ok(())
}

/// The root module's name and ABI generation, read from its header before it is initialised.
fn check_generation(id: &str, library: &Path, header: &LibHeader) -> Result<u32, LoadError> {
    let consts = header.root_mod_consts();
    if consts.name().as_str() != ROOT_MODULE_NAME {
        return Err(LoadError::Open {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: format!(
                "not a grip plugin: its root module is `{}`, expected `{ROOT_MODULE_NAME}`",
                consts.name()
            ),
        });
    }
    let version = consts.version_strings();
    let major = version
        .version
        .as_str()
        .split('.')
        .next()
        .unwrap_or_default();
    let generation: Option<u32> = major.parse().ok();
    match generation {
        Some(g) if KNOWN_GENERATIONS.contains(&g) => Ok(g),
        Some(g) if KNOWN_GENERATIONS.iter().all(|k| g > *k) => Err(LoadError::IncompatibleAbi {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: format!(
                "built for ABI generation {g}, newer than this host knows ({}); upgrade the host",
                known_generations()
            ),
        }),
        _ => Err(LoadError::IncompatibleAbi {
            id: id.to_owned(),
            library: library.to_owned(),
            detail: format!(
                "unknown ABI generation `{major}` (this host knows {})",
                known_generations()
            ),
        }),
    }
}

/// What the library says about itself against what the manifest declares; `Err` is the reason
/// it is refused.
fn check_info(
    manifest: &Manifest,
    info: &PluginInfo,
    generation: u32,
    in_child: bool,
) -> Result<(), String> {
    if !info.panic_unwind && !in_child {
        return Err(
            "built with panic = \"abort\": a panic in it would end the host; build it with panic = \"unwind\" (the default), or run it with isolation = \"process\""
                .into(),
        );
    }
    if info.abi_generation != generation {
        return Err(format!(
            "its info claims ABI generation {} but its root module is generation {generation}",
            info.abi_generation
        ));
    }
    if info.id != manifest.id {
        return Err(format!(
            "the library's id is `{}` but the manifest says `{}`",
            info.id, manifest.id
        ));
    }
    if let Some(v) = &manifest.version
        && v != &info.version
    {
        return Err(format!(
            "the library's version is {} but the manifest says {v}",
            info.version
        ));
    }
    if let Some(declared) = manifest.capabilities
        && info.capabilities != declared
    {
        return Err(format!(
            "capabilities disagree: manifest declares {}, library implements {}",
            describe_capabilities(declared),
            describe_capabilities(info.capabilities)
        ));
    }
    let provided = kinds_of(info.capabilities);
    if provided.is_empty() {
        return Err(
            "the library declares no capability at all: name a driver, tool or listener \
                    in `export_plugin!`"
                .to_owned(),
        );
    }
    let mut declared = manifest.kinds.clone();
    declared.sort_unstable();
    if !declared.is_empty() && declared != provided {
        return Err(format!(
            "kinds disagree: manifest declares {:?}, library provides {:?}",
            manifest.kinds, provided
        ));
    }
    if info.wire_version < 1 {
        return Err(format!("unsupported wire version {}", info.wire_version));
    }
    if info.wire_version > WIRE_VERSION {
        tracing::debug!(plugin = %manifest.id, "plugin speaks wire version {}, host {WIRE_VERSION}", info.wire_version);
    }
    Ok(())
}

fn known_generations() -> String {
    KNOWN_GENERATIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the manifest at `path` and loads its plugin.
///
/// # Errors
/// A [`LoadError`], [`LoadError::Manifest`] included.
pub fn load_manifest(path: &Path, options: &LoaderOptions) -> Result<Plugin, LoadError> {
    load(Manifest::load(path)?, options)
}

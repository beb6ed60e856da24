//! The host's error types. Each message says what failed and where (file, plugin id, field).

use std::path::PathBuf;

pub use plugin_api::ErrorKind;
use plugin_api::PluginError;

use crate::manifest::ManifestError;

/// Why a plugin was not loaded. Each variant renders as one line.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The manifest is invalid.
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// The library file is not there.
    #[error("plugin `{id}` ({manifest}): library not found: {detail}")]
    LibraryNotFound {
        /// Plugin id.
        id: String,
        /// Manifest path.
        manifest: PathBuf,
        /// What was looked for, and where.
        detail: String,
    },
    /// `--require-hash` is on and the manifest pins no sha256.
    #[error(
        "plugin `{id}` ({manifest}): no `library.sha256` but hashes are required; pin it with `grip plugins hash {}`",
        library.display()
    )]
    HashRequired {
        /// Plugin id.
        id: String,
        /// Manifest path.
        manifest: PathBuf,
        /// Library path.
        library: PathBuf,
    },
    /// The library's sha256 differs from the manifest's.
    #[error("plugin `{id}` ({manifest}): sha256 mismatch for {}: manifest pins {expected}, file has {found}", library.display())]
    HashMismatch {
        /// Plugin id.
        id: String,
        /// Manifest path.
        manifest: PathBuf,
        /// Library path.
        library: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Actual hash.
        found: String,
    },
    /// The library could not be opened or is not a grip plugin.
    #[error("plugin `{id}` ({}): cannot load: {detail}", library.display())]
    Open {
        /// Plugin id.
        id: String,
        /// Library path.
        library: PathBuf,
        /// The loader's reason.
        detail: String,
    },
    /// The library was built against an ABI this host does not accept.
    #[error("plugin `{id}` ({}): incompatible ABI: {detail}", library.display())]
    IncompatibleAbi {
        /// Plugin id.
        id: String,
        /// Library path.
        library: PathBuf,
        /// Summary of the mismatch.
        detail: String,
    },
    /// The library's own description disagrees with the manifest, or it is unusable.
    #[error("plugin `{id}` ({}): refused: {reason}", library.display())]
    Refused {
        /// Plugin id.
        id: String,
        /// Library path.
        library: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another plugin with the same id is already loaded.
    #[error("plugin `{id}` ({manifest}): duplicate id, already loaded from {}", first.display())]
    DuplicateId {
        /// Plugin id.
        id: String,
        /// This manifest.
        manifest: PathBuf,
        /// The manifest loaded first.
        first: PathBuf,
    },
}

/// A call into a loaded plugin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin `{plugin}` {operation}: {kind} error: {message}{}", if *retryable { " (retryable)" } else { "" })]
pub struct CallError {
    /// Plugin id.
    pub plugin: String,
    /// What was called (`prompt`, `stream`, `call`, ...).
    pub operation: &'static str,
    /// The error kind.
    pub kind: ErrorKind,
    /// Whether a retry may succeed.
    pub retryable: bool,
    /// What went wrong.
    pub message: String,
}

impl CallError {
    /// Wraps a plugin's error with the plugin id and the operation.
    pub fn from_plugin(plugin: &str, operation: &'static str, e: PluginError) -> Self {
        Self {
            plugin: plugin.to_owned(),
            operation,
            kind: e.kind,
            retryable: e.retryable,
            message: e.message,
        }
    }

    /// An error raised by the host about a plugin call.
    pub fn host(
        plugin: &str,
        operation: &'static str,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            plugin: plugin.to_owned(),
            operation,
            kind,
            retryable: false,
            message: message.into(),
        }
    }
}

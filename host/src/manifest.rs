//! Plugin manifests: the TOML file that describes a plugin to the host.
//!
//! ```toml
//! id = "scripted"                      # unique; must equal the id compiled into the library
//! description = "Answers from a script" # optional
//! version = "0.1.0"                    # optional; when present must equal the library's
//! kinds = ["prompt_driver"]            # optional: prompt_driver, tool, event_listener
//!
//! # isolation = "process"              # run it in a supervised child (default "in_process")
//!
//! [library]
//! name = "scripted_driver"             # found as libscripted_driver.so in the library path
//! # path = "../target/release/libscripted_driver.so"   # or a path relative to this file
//! # sha256 = "..."                     # enforced when present
//!
//! [capabilities]                       # optional; when present, checked against the library
//! prompt_driver = ["sync", "async", "stream"]
//!
//! [config]                             # default configuration handed to the plugin
//! chunk_chars = 8
//!
//! [overrides]                          # config keys a daemon request may change (default: none)
//! allow = ["chunk_chars", "script"]    # dotted paths reach nested keys: "http.retry"
//!
//! # [process]                          # only used when process-isolated
//! # call_timeout_secs = 300            # a call running longer gets the child killed, restarted
//! # address_space_mb = 4096            # RLIMIT_AS of the child
//! # cpu_secs = 3600                    # RLIMIT_CPU of the child
//! # open_files = 256                   # RLIMIT_NOFILE of the child
//! ```
//!
//! The library reports its kinds and capabilities itself; `kinds` and `[capabilities]` are a
//! check (the operator's statement of what they expect to load), refused at load when the
//! library disagrees. Unknown fields are errors (a typo should not be silently ignored), and
//! every error names the file, the line and the column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugin_api::abi::Capabilities;
use serde::Deserialize;
use toml::Spanned;

use crate::isolation::{Isolation, ProcessSettings};
use crate::mcp::{McpSettings, RawMcp};

pub use crate::capability::{Kind, Mode, capability, describe_capabilities};

/// Where the plugin's code is: a shared library, or an MCP server (see [`crate::mcp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `[library]`.
    Library(LibrarySource),
    /// `[mcp]`: a tool backed by an MCP server.
    Mcp(Arc<McpSettings>),
}

/// Where the plugin's shared library is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySource {
    /// A path, resolved relative to the manifest's directory.
    Path(PathBuf),
    /// A library name (`scripted_driver`), looked up as `lib<name>.so` in the library path.
    Name(String),
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read from.
    pub path: PathBuf,
    /// Unique plugin id.
    pub id: String,
    /// Optional description.
    pub description: Option<String>,
    /// For a prompt driver: the `gen_ai.provider.name` of its spans (`openai`, `anthropic`,
    /// ...; default: the plugin id).
    pub provider: Option<String>,
    /// Optional version the library must report.
    pub version: Option<String>,
    /// Declared kinds (`kinds`, or the keys of `[capabilities]`); empty when neither is given.
    pub kinds: Vec<Kind>,
    /// The library, or the MCP server.
    pub source: Source,
    /// Pinned sha256 of the library (lower-case hex).
    pub sha256: Option<String>,
    /// Declared capabilities, when `[capabilities]` is given.
    pub capabilities: Option<Capabilities>,
    /// Default configuration for the plugin's instances.
    pub config: serde_json::Value,
    /// `[config.model_source]`: a model file the host fetches for the plugin (see
    /// [`crate::models`]); taken out of `config`, so the plugin never sees it.
    pub model_source: Option<serde_json::Value>,
    /// Config keys a daemon request may override (`[overrides] allow`); empty: none.
    pub overridable: Vec<String>,
    /// Where its code runs (`isolation`); the operator's choice may override it.
    pub isolation: Isolation,
    /// How its child is run when process-isolated (`[process]`).
    pub process: ProcessSettings,
}

/// A manifest that could not be read or is invalid.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}: {message}", path.display(), location(*line, *column))]
pub struct ManifestError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, naming the field.
    pub message: String,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    version: Option<Spanned<String>>,
    #[serde(default)]
    kinds: Option<Spanned<Vec<Kind>>>,
    #[serde(default)]
    library: Option<Spanned<RawLibrary>>,
    #[serde(default)]
    mcp: Option<Spanned<RawMcp>>,
    #[serde(default)]
    capabilities: Option<Spanned<BTreeMap<Kind, Spanned<Vec<Mode>>>>>,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    overrides: Option<RawOverrides>,
    #[serde(default)]
    isolation: Option<Isolation>,
    #[serde(default)]
    process: Option<ProcessSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverrides {
    allow: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLibrary {
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    sha256: Option<Spanned<String>>,
}

/// 1-based line and column of byte offset `offset` in `src`.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    ///
    /// # Errors
    /// A [`ManifestError`] naming the file, the line and the field.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let src = std::fs::read_to_string(path).map_err(|e| ManifestError {
            path: path.to_owned(),
            line: None,
            column: None,
            message: format!("cannot read manifest: {e}"),
        })?;
        Self::parse(path, &src)
    }

    /// Parses and validates manifest text; `path` is used for errors and relative paths.
    ///
    /// # Errors
    /// A [`ManifestError`] naming the file, the line and the field.
    pub fn parse(path: &Path, src: &str) -> Result<Self, ManifestError> {
        let at = Text { path, src };
        let raw: RawManifest = toml::from_str(src).map_err(|e| {
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            at.error(e.span(), message)
        })?;
        let id = check_id(&at, &raw.id)?;
        let kinds = match (&raw.kinds, &raw.capabilities) {
            (Some(kinds), _) => check_kinds(&at, kinds)?,
            (None, Some(caps)) => caps.get_ref().keys().copied().collect(),
            (None, None) => Vec::new(),
        };
        let capabilities = match &raw.capabilities {
            Some(caps) => Some(check_capabilities(&at, &kinds, caps)?),
            None => None,
        };
        let (source, sha256) = match (raw.library, raw.mcp) {
            (Some(library), None) => (
                Source::Library(check_library(&at, &library)?),
                check_sha256(&at, library.get_ref().sha256.as_ref())?,
            ),
            (None, Some(mcp)) => {
                check_mcp_manifest(
                    &at,
                    &kinds,
                    &raw.config,
                    raw.overrides.as_ref(),
                    raw.isolation,
                    raw.process.is_some(),
                )?;
                let span = mcp.span();
                let dir = path.parent().unwrap_or(Path::new("."));
                let settings = mcp
                    .into_inner()
                    .validate(&id, dir, &|k| std::env::var(k).ok())
                    .map_err(|m| at.error(Some(span), m))?;
                (Source::Mcp(Arc::new(settings)), None)
            }
            (Some(_), Some(mcp)) => {
                return Err(at.field(&mcp, "give either `[library]` or `[mcp]`, not both".into()));
            }
            (None, None) => {
                return Err(at.error(
                    None,
                    "missing `[library]` (a plugin's shared library) or `[mcp]` (an MCP server)"
                        .into(),
                ));
            }
        };
        let kinds = match &source {
            Source::Mcp(_) => vec![Kind::Tool],
            Source::Library(_) => kinds,
        };
        let version = match raw.version {
            Some(v) if v.get_ref().trim().is_empty() => {
                return Err(at.field(&v, "field `version`: must not be empty".into()));
            }
            v => v.map(Spanned::into_inner),
        };
        let mut config = serde_json::to_value(&raw.config).map_err(|e| {
            at.error(
                None,
                format!("field `config`: cannot be represented as JSON: {e}"),
            )
        })?;
        // The host's key, not the plugin's: the host fetches the model and passes its path.
        let model_source = config
            .as_object_mut()
            .and_then(|c| c.remove("model_source"));
        let overridable = match raw.overrides {
            None => Vec::new(),
            Some(o) => {
                crate::overrides::validate_keys(o.allow.get_ref())
                    .map_err(|m| at.field(&o.allow, format!("field `overrides.allow`: {m}")))?;
                o.allow.into_inner()
            }
        };
        Ok(Manifest {
            path: path.to_owned(),
            id,
            description: raw.description,
            provider: raw.provider.filter(|p| !p.trim().is_empty()),
            version,
            kinds,
            source,
            sha256,
            capabilities,
            config,
            model_source,
            overridable,
            isolation: raw.isolation.unwrap_or_default(),
            process: raw.process.unwrap_or_default(),
        })
    }

    /// The directory relative paths are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// The manifest text being parsed, for errors that point into it.
struct Text<'a> {
    path: &'a Path,
    src: &'a str,
}

impl Text<'_> {
    fn error(&self, span: Option<std::ops::Range<usize>>, message: String) -> ManifestError {
        let (line, column) = span.map_or((None, None), |s| {
            let (l, c) = line_col(self.src, s.start);
            (Some(l), Some(c))
        });
        ManifestError {
            path: self.path.to_owned(),
            line,
            column,
            message,
        }
    }

    /// An error at the value `at`.
    fn field<T>(&self, at: &Spanned<T>, message: String) -> ManifestError {
        self.error(Some(at.span()), message)
    }
}

fn check_id(at: &Text<'_>, raw: &Spanned<String>) -> Result<String, ManifestError> {
    let id = raw.get_ref().trim();
    let valid =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id.len() > 64 || !id.chars().all(valid) {
        return Err(at.field(
            raw,
            format!(
                "field `id`: {:?} is not a valid plugin id (1 to 64 of a-z, 0-9, '-', '_', '.')",
                raw.get_ref()
            ),
        ));
    }
    Ok(id.to_owned())
}

fn check_kinds(at: &Text<'_>, raw: &Spanned<Vec<Kind>>) -> Result<Vec<Kind>, ManifestError> {
    let kinds = raw.get_ref();
    if kinds.is_empty() {
        return Err(at.field(
            raw,
            "field `kinds`: at least one of prompt_driver, tool, event_listener is needed".into(),
        ));
    }
    for (i, k) in kinds.iter().enumerate() {
        if kinds[..i].contains(k) {
            return Err(at.field(raw, format!("field `kinds`: `{k}` is listed twice")));
        }
    }
    Ok(kinds.clone())
}

/// `[capabilities]`: one non-empty entry per declared kind, each mode valid for its kind.
fn check_capabilities(
    at: &Text<'_>,
    kinds: &[Kind],
    raw: &Spanned<BTreeMap<Kind, Spanned<Vec<Mode>>>>,
) -> Result<Capabilities, ManifestError> {
    let mut capabilities = Capabilities::NONE;
    for (kind, modes) in raw.get_ref() {
        if !kinds.contains(kind) {
            return Err(at.field(
                modes,
                format!("field `capabilities.{kind}`: `{kind}` is not in `kinds`"),
            ));
        }
        if modes.get_ref().is_empty() {
            return Err(at.field(
                modes,
                format!("field `capabilities.{kind}`: list at least one of sync, async, stream"),
            ));
        }
        for mode in modes.get_ref() {
            if !kind.modes().contains(mode) {
                return Err(at.field(
                    modes,
                    format!(
                        "field `capabilities.{kind}`: `{}` is not a mode of a {kind} (only prompt drivers stream)",
                        mode.as_str()
                    ),
                ));
            }
            capabilities = capabilities | capability(*kind, *mode);
        }
    }
    if let Some(kind) = kinds.iter().find(|k| !raw.get_ref().contains_key(k)) {
        return Err(at.field(
            raw,
            format!(
                "field `capabilities`: kind `{kind}` is declared but has no `{kind} = [...]` entry"
            ),
        ));
    }
    Ok(capabilities)
}

/// An `[mcp]` manifest has none of a library's tables: its server is configured in `[mcp]`,
/// runs out of process by nature, and is a tool.
fn check_mcp_manifest(
    at: &Text<'_>,
    kinds: &[Kind],
    config: &toml::Table,
    overrides: Option<&RawOverrides>,
    isolation: Option<Isolation>,
    process: bool,
) -> Result<(), ManifestError> {
    let refuse = |what: &str| {
        at.error(
            None,
            format!(
                "{what} is not used by an `[mcp]` manifest (the server is configured in `[mcp]`)"
            ),
        )
    };
    if kinds.iter().any(|k| *k != Kind::Tool) {
        return Err(at.error(
            None,
            "field `kinds`: an `[mcp]` manifest is a `tool`".into(),
        ));
    }
    if !config.is_empty() {
        return Err(refuse("`[config]`"));
    }
    if overrides.is_some() {
        return Err(refuse(
            "`[overrides]` (no request can change an MCP server)",
        ));
    }
    if isolation.is_some() || process {
        return Err(refuse(
            "`isolation` / `[process]` (an MCP server always runs on its own)",
        ));
    }
    Ok(())
}

/// `[library]`: exactly one of a non-empty `path` or a bare `name`.
fn check_library(at: &Text<'_>, raw: &Spanned<RawLibrary>) -> Result<LibrarySource, ManifestError> {
    let lib = raw.get_ref();
    match (&lib.path, &lib.name) {
        (Some(p), None) if !p.get_ref().trim().is_empty() => {
            Ok(LibrarySource::Path(PathBuf::from(p.get_ref())))
        }
        (None, Some(n)) if !n.get_ref().trim().is_empty() => {
            if n.get_ref().contains(['/', '\\']) {
                return Err(at.field(
                    n,
                    "field `library.name`: a name has no directory part; use `library.path` for a path".into(),
                ));
            }
            Ok(LibrarySource::Name(n.get_ref().clone()))
        }
        (Some(_), Some(n)) => Err(at.field(
            n,
            "field `library`: give either `path` or `name`, not both".into(),
        )),
        (Some(s), None) | (None, Some(s)) => {
            Err(at.field(s, "field `library`: the path or name is empty".into()))
        }
        (None, None) => Err(at.field(
            raw,
            "field `library`: give `path` (relative to the manifest) or `name` (e.g. \"my_plugin\")".into(),
        )),
    }
}

fn check_sha256(
    at: &Text<'_>,
    raw: Option<&Spanned<String>>,
) -> Result<Option<String>, ManifestError> {
    let Some(s) = raw else { return Ok(None) };
    let h = s.get_ref().trim().to_ascii_lowercase();
    if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(at.field(
            s,
            "field `library.sha256`: expected 64 hex digits (run `grip plugins hash <library>`)"
                .into(),
        ));
    }
    Ok(Some(h))
}

/// Every `*.toml` file directly in `dir`, sorted by name.
///
/// # Errors
/// When the directory cannot be read.
pub fn manifests_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("m/test.toml"), src)
    }

    const GOOD: &str = r#"
id = "scripted"
kinds = ["prompt_driver", "tool"]

[library]
name = "scripted_driver"

[capabilities]
prompt_driver = ["sync", "async", "stream"]
tool = ["async"]

[config]
chunk_chars = 3
nested = { a = 1 }
"#;

    #[test]
    fn a_good_manifest_parses() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.id, "scripted");
        assert_eq!(
            m.source,
            Source::Library(LibrarySource::Name("scripted_driver".into()))
        );
        let caps = m.capabilities.unwrap();
        assert_eq!(
            caps,
            Capabilities::DRIVER_SYNC
                | Capabilities::DRIVER_ASYNC
                | Capabilities::DRIVER_STREAM
                | Capabilities::TOOL_ASYNC
        );
        assert_eq!(m.config["nested"]["a"], 1);
        assert_eq!(
            describe_capabilities(caps),
            "prompt_driver[sync,async,stream] tool[async]"
        );
    }

    #[test]
    fn kinds_and_capabilities_may_be_left_to_the_library() {
        let m = parse("id = \"x\"\n[library]\nname = \"x\"\n").unwrap();
        assert!(m.kinds.is_empty() && m.capabilities.is_none());
        let only_caps = "id = \"x\"\n[library]\nname = \"x\"\n[capabilities]\ntool = [\"sync\"]\n";
        let m = parse(only_caps).unwrap();
        assert_eq!(m.kinds, [Kind::Tool]);
        assert_eq!(m.capabilities, Some(Capabilities::TOOL_SYNC));
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let e = parse("id = \"x\"\nkinds = [\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("m/test.toml:"), "{s}");
        assert!(e.line.is_some(), "{s}");
    }

    #[test]
    fn unknown_field_is_an_error_with_its_line() {
        let src = GOOD.replace("kinds =", "colour = \"red\"\nkinds =");
        let e = parse(&src).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn wrong_type_is_an_error_with_its_line() {
        let src = GOOD.replace("kinds = [\"prompt_driver\", \"tool\"]", "kinds = 3");
        let e = parse(&src).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn unknown_mode_and_kind_are_errors() {
        let e = parse(&GOOD.replace("[\"async\"]", "[\"fast\"]")).unwrap_err();
        assert!(e.message.contains("unknown variant `fast`"), "{e}");
        assert_eq!(e.line, Some(10), "{e}");
        let e = parse(&GOOD.replace("\"tool\"]", "\"toaster\"]")).unwrap_err();
        assert!(e.message.contains("unknown variant `toaster`"), "{e}");
    }

    #[test]
    fn capabilities_must_match_kinds() {
        let e = parse(&GOOD.replace("tool = [\"async\"]\n", "")).unwrap_err();
        assert!(
            e.message.contains("kind `tool` is declared but has no"),
            "{e}"
        );
        let e = parse(&GOOD.replace("tool = [\"async\"]", "tool = [\"stream\"]")).unwrap_err();
        assert!(e.message.contains("only prompt drivers stream"), "{e}");
        assert_eq!(e.line, Some(10));
    }

    #[test]
    fn library_needs_exactly_one_source_and_a_valid_hash() {
        let e = parse(&GOOD.replace("name = \"scripted_driver\"", "")).unwrap_err();
        assert!(e.message.contains("give `path`"), "{e}");
        let e = parse(&GOOD.replace("name = \"scripted_driver\"", "name = \"a\"\npath = \"b\""))
            .unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
        let e = parse(&GOOD.replace(
            "name = \"scripted_driver\"",
            "name = \"a\"\nsha256 = \"abc\"",
        ))
        .unwrap_err();
        assert!(e.message.contains("64 hex digits"), "{e}");
        assert_eq!(e.line, Some(7));
    }

    #[test]
    fn overrides_are_dotted_key_paths() {
        let m = parse(&format!(
            "{GOOD}\n[overrides]\nallow = [\"chunk_chars\", \"nested.a\"]\n"
        ))
        .unwrap();
        assert_eq!(m.overridable, ["chunk_chars", "nested.a"]);
        assert!(parse(GOOD).unwrap().overridable.is_empty());
        let e = parse(&format!("{GOOD}\n[overrides]\nallow = [\"a..b\"]\n")).unwrap_err();
        assert!(e.message.contains("field `overrides.allow`"), "{e}");
        assert_eq!(e.line, Some(17), "{e}");
        let e = parse(&format!("{GOOD}\n[overrides]\nallow = []\ndeny = []\n")).unwrap_err();
        assert!(e.message.contains("unknown field `deny`"), "{e}");
    }

    #[test]
    fn an_mcp_manifest_is_a_tool_without_a_library_s_tables() {
        let m = parse("id = \"my-time\"\n[mcp]\ncommand = \"srv\"\n").unwrap();
        assert_eq!(m.kinds, [Kind::Tool]);
        let Source::Mcp(settings) = &m.source else {
            panic!("an mcp source")
        };
        assert_eq!(settings.tool_name, "MyTime");
        assert_eq!(settings.describe(), "stdio: srv");
        for (top, tail, expected) in [
            ("", "[library]\nname = \"x\"\n", "not both"),
            ("", "[config]\na = 1\n", "`[config]`"),
            ("", "[overrides]\nallow = []\n", "`[overrides]`"),
            ("isolation = \"process\"\n", "", "`isolation`"),
            ("kinds = [\"prompt_driver\"]\n", "", "is a `tool`"),
            ("", "url = \"http://x\"\n", "not both"),
        ] {
            let src = format!("id = \"x\"\n{top}[mcp]\ncommand = \"a\"\n{tail}");
            let e = parse(&src).unwrap_err();
            assert!(e.message.contains(expected), "{src}: {e}");
        }
        let e = parse("id = \"x\"\n").unwrap_err();
        assert!(e.message.contains("missing `[library]`"), "{e}");
    }

    #[test]
    fn bad_ids_are_refused() {
        let e = parse(&GOOD.replace("id = \"scripted\"", "id = \"Has Spaces\"")).unwrap_err();
        assert!(e.message.contains("not a valid plugin id"), "{e}");
        assert_eq!(e.line, Some(2));
    }
}

//! `grip plugins new`: writes a ready plugin crate from a template, outside any workspace of
//! ours: Cargo.toml (cdylib, panic = "unwind", plugin-api with the `testing` harness for tests),
//! `src/lib.rs` with a working plugin of the chosen kind and its tests, the manifest, a README
//! with the next commands, and a `.gitignore`.

use std::path::{Path, PathBuf};

/// The kind of plugin to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// A tool with one activity, sync and async.
    Tool,
    /// A prompt driver with sync, async and stream.
    Driver,
    /// An event listener, sync and async.
    Listener,
}

/// Where the new crate gets `plugin-api` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginApiSource {
    /// A checkout's `plugin-api` directory.
    Path(PathBuf),
    /// A registry version requirement.
    Version(String),
}

impl PluginApiSource {
    /// The `plugin-api` crate of the source tree this host was built from, if it is still there;
    /// else the registry version of this host's plugin-api.
    pub fn default_for_this_host() -> Self {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
        match here.canonicalize() {
            Ok(p) if p.join("Cargo.toml").is_file() => PluginApiSource::Path(p),
            _ => PluginApiSource::Version(plugin_api_requirement()),
        }
    }

    /// Reads `--plugin-api`: a version requirement (`1.1`) or a path.
    pub fn parse(arg: &str) -> Self {
        let looks_like_version = arg
            .trim_start_matches(['=', '^', '~'])
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
            && !arg.is_empty()
            && !Path::new(arg).exists();
        if looks_like_version {
            PluginApiSource::Version(arg.to_owned())
        } else {
            let p = PathBuf::from(arg);
            PluginApiSource::Path(p.canonicalize().unwrap_or(p))
        }
    }

    fn toml(&self) -> String {
        match self {
            PluginApiSource::Path(p) => format!("path = {:?}", p.display().to_string()),
            PluginApiSource::Version(v) => format!("version = {v:?}"),
        }
    }
}

/// `major.minor` of the plugin-api this host was built with.
fn plugin_api_requirement() -> String {
    let v = plugin_api::sdk::SDK_VERSION;
    v.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

/// Checks a plugin name: it is the crate name and the plugin id.
///
/// # Errors
/// A name that is not lowercase ASCII letters, digits and `-`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name {name:?}: use lowercase letters, digits and `-`, starting with a letter (it becomes the crate name and the plugin id)"
        ))
    }
}

fn type_name(name: &str) -> String {
    name.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Writes the crate into `dir` (which must not exist, or be empty) and returns the files written.
///
/// # Errors
/// A bad name, a non-empty directory, or an I/O error, each saying which path.
pub fn write_plugin(
    name: &str,
    kind: TemplateKind,
    dir: &Path,
    plugin_api: &PluginApiSource,
) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "{} already exists and is not empty; choose another --dir",
                dir.display()
            ));
        }
    }
    let lib = name.replace('-', "_");
    let ty = type_name(name);
    let (source, kind_key, kind_human, modes, config, extra, run) = match kind {
        TemplateKind::Tool => (
            include_str!("../templates/tool.rs.tmpl"),
            "tool",
            "tool",
            r#""sync", "async""#,
            "",
            "schemars = \"1\"\nserde = { version = \"1\", features = [\"derive\"] }\n",
            format!(
                "grip plugins add manifests
grip run --lib-dir target/release \\\n  --driver scripted --tool {name} --config \\\n  '{{\"script\":[{{\"tool_calls\":[{{\"name\":\"{ty}_greet\",\"arguments\":{{\"name\":\"Ada\"}}}}]}},{{\"text\":\"done\"}}]}}' \"greet Ada\""
            ),
        ),
        TemplateKind::Driver => (
            include_str!("../templates/driver.rs.tmpl"),
            "prompt_driver",
            "prompt-driver",
            r#""sync", "async", "stream""#,
            "reply_prefix = \"You said: \"",
            "serde = { version = \"1\", features = [\"derive\"] }\n",
            format!(
                "grip plugins add manifests
grip run --lib-dir target/release --driver {name} \"Hello\""
            ),
        ),
        TemplateKind::Listener => (
            include_str!("../templates/listener.rs.tmpl"),
            "event_listener",
            "event-listener",
            r#""sync", "async""#,
            "prefix = \"[NAME]\"",
            "serde = { version = \"1\", features = [\"derive\"] }\n",
            format!(
                "grip plugins add manifests
grip run --lib-dir target/release --driver scripted --listener {name} \"Hello\""
            ),
        ),
    };
    let description = match kind {
        TemplateKind::Tool => "Greets people by name",
        TemplateKind::Driver => "Echoes the last user message",
        TemplateKind::Listener => "Prints one line per event",
    };
    let fill = |t: &str| {
        t.replace("__PLUGIN_API__", &plugin_api.toml())
            .replace("__EXTRA_DEPS__", extra)
            .replace("__DESCRIPTION__", description)
            .replace("__KIND_HUMAN__", kind_human)
            .replace("__KIND__", kind_key)
            .replace("__MODES__", modes)
            .replace("__CONFIG__", &config.replace("NAME", name))
            .replace("__RUN_EXAMPLE__", &run)
            .replace("__NAME__", name)
            .replace("__LIB__", &lib)
            .replace("__TYPE__", &ty)
    };
    let files = [
        (
            "Cargo.toml".to_owned(),
            fill(include_str!("../templates/Cargo.toml.tmpl")),
        ),
        ("src/lib.rs".to_owned(), fill(source)),
        // In a directory of its own: the host reads every `.toml` of a manifest directory.
        (
            format!("manifests/{name}.toml"),
            fill(include_str!("../templates/manifest.toml.tmpl")),
        ),
        (
            "README.md".to_owned(),
            fill(include_str!("../templates/README.md.tmpl")),
        ),
        (
            ".gitignore".to_owned(),
            include_str!("../templates/gitignore.tmpl").to_owned(),
        ),
    ];
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        assert!(check_name("my-tool2").is_ok());
        for bad in ["", "My", "1x", "a_b", "a-", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(type_name("my-cool-tool"), "MyCoolTool");
    }

    #[test]
    fn no_placeholder_is_left_and_a_full_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, sub) in [
            (TemplateKind::Tool, "t"),
            (TemplateKind::Driver, "d"),
            (TemplateKind::Listener, "l"),
        ] {
            let files = write_plugin(
                "x-y",
                kind,
                &dir.path().join(sub),
                &PluginApiSource::Version("1.3".into()),
            )
            .unwrap();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(!text.contains("__"), "{}: {text}", f.display());
            }
        }
        let e = write_plugin(
            "x",
            TemplateKind::Tool,
            &dir.path().join("t"),
            &PluginApiSource::Version("1".into()),
        )
        .unwrap_err();
        assert!(e.contains("already exists and is not empty"), "{e}");
    }
}

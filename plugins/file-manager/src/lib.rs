//! The FileManager tool: list, read, write, append and delete files under one root directory.
//!
//! ```toml
//! [config]
//! root = "workspace"          # required; created if missing
//! max_read_bytes = 1048576    # larger files are refused, not truncated
//! max_write_bytes = 1048576   # per write or append, and the largest file an append may make
//! allow_delete = true
//! ```
//!
//! Every path is relative to the root. It is refused if it is absolute, if `..` would leave the
//! root, or if it resolves outside the root through a symbolic link (the deepest existing part
//! of the path is canonicalised and must stay under the canonical root). Writes are atomic: the
//! content goes to a temporary file in the same directory, which is then renamed over the target.
//!
//! Only regular files with a single link are read, appended to or replaced: a hard link made
//! beforehand could name a file outside the root (no path check sees it), and a FIFO, socket or
//! device could block a thread forever or do something other than store bytes. Files are opened
//! with `O_NONBLOCK | O_NOFOLLOW` and checked again on the open handle, so a swap between the
//! check and the open gains nothing.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use plugin_api::prelude::*;

/// Configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    root: PathBuf,
    #[serde(default = "mib")]
    max_read_bytes: u64,
    #[serde(default = "mib")]
    max_write_bytes: u64,
    #[serde(default = "yes")]
    allow_delete: bool,
}

fn mib() -> u64 {
    1 << 20
}

fn yes() -> bool {
    true
}

/// The tool.
pub struct FileManager {
    root: PathBuf,
    config: Config,
}

type R<T> = Result<T, String>;

const MAX_LIST: usize = 1000;

/// Refuses anything but a regular file with one link (see the module docs).
fn check_regular(meta: &fs::Metadata, rel: &str) -> R<()> {
    if !meta.file_type().is_file() {
        return Err(format!(
            "`{rel}` is not a regular file (a FIFO, socket or device); only regular files are used"
        ));
    }
    if meta.nlink() > 1 {
        return Err(format!(
            "`{rel}` has {} hard links; a file linked from elsewhere is refused",
            meta.nlink()
        ));
    }
    Ok(())
}

/// Opens an existing file without blocking or following a last symbolic link, and checks the
/// open handle itself.
fn open_regular(path: &Path, rel: &str, opts: &mut fs::OpenOptions) -> R<fs::File> {
    let f = opts
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open `{rel}`: {e}"))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot open `{rel}`: {e}"))?;
    check_regular(&meta, rel)?;
    Ok(f)
}

impl FileManager {
    /// Resolves `rel` under the root, refusing every way out of it.
    fn resolve(&self, rel: &str) -> R<PathBuf> {
        let p = Path::new(rel.trim());
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(x) => parts.push(x),
                Component::CurDir => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        return Err(format!("`{rel}` leaves the root directory (`..`)"));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!(
                        "`{rel}` is absolute: give a path relative to the root directory"
                    ));
                }
            }
        }
        let joined: PathBuf = parts
            .iter()
            .fold(self.root.clone(), |acc, part| acc.join(part));
        // Canonicalise the deepest part that exists; the rest does not exist yet.
        let mut existing = joined.clone();
        let mut missing = Vec::new();
        while fs::symlink_metadata(&existing).is_err() {
            match existing.file_name() {
                Some(name) => missing.push(name.to_owned()),
                None => break,
            }
            if !existing.pop() {
                break;
            }
        }
        let canon = existing
            .canonicalize()
            .map_err(|e| format!("`{rel}` cannot be resolved: {e} (a broken symbolic link?)"))?;
        if !canon.starts_with(&self.root) {
            return Err(format!(
                "`{rel}` resolves outside the root directory (through a symbolic link)"
            ));
        }
        Ok(missing.iter().rev().fold(canon, |acc, m| acc.join(m)))
    }

    fn shown(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .map(|r| {
                if r.as_os_str().is_empty() {
                    ".".into()
                } else {
                    r.display().to_string()
                }
            })
            .unwrap_or_else(|_| p.display().to_string())
    }

    fn list(&self, rel: &str) -> R<String> {
        let dir = self.resolve(rel)?;
        let read = fs::read_dir(&dir).map_err(|e| format!("cannot list `{rel}`: {e}"))?;
        let mut entries: Vec<Value> = Vec::new();
        let mut total = 0;
        for entry in read.flatten() {
            total += 1;
            if entries.len() >= MAX_LIST {
                continue;
            }
            let meta = entry.metadata().ok();
            let kind = match entry.file_type() {
                Ok(t) if t.is_symlink() => "symlink",
                Ok(t) if t.is_dir() => "dir",
                Ok(t) if t.is_file() => "file",
                Ok(_) => "special",
                Err(_) => "unknown",
            };
            entries.push(json!({
                "name": entry.file_name().to_string_lossy(),
                "type": kind,
                "bytes": meta.map(|m| m.len()),
            }));
        }
        entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(json!({"path": self.shown(&dir), "entries": entries, "total": total, "truncated": total > MAX_LIST}).to_string())
    }

    fn read(&self, rel: &str) -> R<String> {
        let path = self.resolve(rel)?;
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("cannot read `{rel}`: {e}"))?;
        if meta.is_dir() {
            return Err(format!("`{rel}` is a directory: use `list`"));
        }
        check_regular(&meta, rel)?;
        let f = open_regular(&path, rel, fs::OpenOptions::new().read(true))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len > self.config.max_read_bytes {
            return Err(format!(
                "`{rel}` is {len} bytes; the read limit is {} bytes",
                self.config.max_read_bytes
            ));
        }
        let mut bytes = Vec::new();
        f.take(self.config.max_read_bytes)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read `{rel}`: {e}"))?;
        String::from_utf8(bytes).map_err(|_| format!("`{rel}` is not UTF-8 text"))
    }

    fn check_size(&self, content: &str) -> R<()> {
        if content.len() as u64 > self.config.max_write_bytes {
            return Err(format!(
                "the content is {} bytes; the write limit is {} bytes",
                content.len(),
                self.config.max_write_bytes
            ));
        }
        Ok(())
    }

    fn target_for_write(&self, rel: &str) -> R<PathBuf> {
        let path = self.resolve(rel)?;
        if path == self.root || path.is_dir() {
            return Err(format!("`{rel}` is a directory"));
        }
        if let Ok(meta) = fs::symlink_metadata(&path) {
            check_regular(&meta, rel)?;
        }
        let parent = path
            .parent()
            .ok_or_else(|| format!("`{rel}` has no parent directory"))?;
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create the directories of `{rel}`: {e}"))?;
        Ok(path)
    }

    fn write(&self, rel: &str, content: &str) -> R<String> {
        self.check_size(content)?;
        let path = self.target_for_write(rel)?;
        let parent = path.parent().unwrap_or(&self.root);
        let mut tmp = tempfile::NamedTempFile::new_in(parent)
            .map_err(|e| format!("cannot write `{rel}`: {e}"))?;
        tmp.write_all(content.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| format!("cannot write `{rel}`: {e}"))?;
        tmp.persist(&path)
            .map_err(|e| format!("cannot write `{rel}`: {}", e.error))?;
        Ok(format!(
            "wrote {} bytes to {}",
            content.len(),
            self.shown(&path)
        ))
    }

    fn append(&self, rel: &str, content: &str) -> R<String> {
        self.check_size(content)?;
        let path = self.target_for_write(rel)?;
        let mut f = if path.exists() {
            open_regular(&path, rel, fs::OpenOptions::new().append(true))?
        } else {
            fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot append to `{rel}`: {e}"))?
        };
        let current = f.metadata().map(|m| m.len()).unwrap_or(0);
        if current + content.len() as u64 > self.config.max_write_bytes {
            return Err(format!(
                "appending would make `{rel}` {} bytes; the limit is {} bytes",
                current + content.len() as u64,
                self.config.max_write_bytes
            ));
        }
        f.write_all(content.as_bytes())
            .map_err(|e| format!("cannot append to `{rel}`: {e}"))?;
        Ok(format!(
            "appended {} bytes to {}",
            content.len(),
            self.shown(&path)
        ))
    }

    fn delete(&self, rel: &str) -> R<String> {
        if !self.config.allow_delete {
            return Err("deleting is disabled in this tool's configuration".into());
        }
        // Delete the link itself, never what it points to: resolve the parent only.
        let p = Path::new(rel.trim());
        let name = p
            .file_name()
            .ok_or_else(|| format!("`{rel}` does not name a file"))?;
        let parent_rel = p
            .parent()
            .map(|x| x.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = self.resolve(&parent_rel)?.join(name);
        let meta =
            fs::symlink_metadata(&path).map_err(|e| format!("cannot delete `{rel}`: {e}"))?;
        if meta.is_dir() {
            return Err(format!("`{rel}` is a directory; only files are deleted"));
        }
        fs::remove_file(&path).map_err(|e| format!("cannot delete `{rel}`: {e}"))?;
        Ok(format!("deleted {}", self.shown(&path)))
    }
}

/// A result for the model: what was done, or what went wrong as an error result it can act on.
fn output(result: R<String>) -> Result<ToolOutput, PluginError> {
    Ok(match result {
        Ok(v) => ToolOutput::ok(v),
        Err(e) => ToolOutput::error(e),
    })
}

/// Lists a directory (default: the root).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct List {
    /// Relative to the root directory
    pub path: Option<String>,
}

impl Activity<FileManager> for List {
    const NAME: &'static str = "list";
    type Output = ToolOutput;

    fn run(self, fm: &FileManager) -> Result<ToolOutput, PluginError> {
        output(fm.list(self.path.as_deref().unwrap_or(".")))
    }
}

/// Reads a UTF-8 text file.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFile {
    /// Relative to the root directory
    pub path: String,
}

impl Activity<FileManager> for ReadFile {
    const NAME: &'static str = "read";
    type Output = ToolOutput;

    fn run(self, fm: &FileManager) -> Result<ToolOutput, PluginError> {
        output(fm.read(&self.path))
    }
}

/// Creates or replaces a file, atomically.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// Relative to the root directory
    pub path: String,
    /// The whole new content (at most `max_write_bytes`)
    pub content: String,
}

impl Activity<FileManager> for WriteFile {
    const NAME: &'static str = "write";
    type Output = ToolOutput;

    fn run(self, fm: &FileManager) -> Result<ToolOutput, PluginError> {
        output(fm.write(&self.path, &self.content))
    }
}

/// Appends text to a file, creating it if needed.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Append {
    /// Relative to the root directory
    pub path: String,
    /// The text to add at the end
    pub content: String,
}

impl Activity<FileManager> for Append {
    const NAME: &'static str = "append";
    type Output = ToolOutput;

    fn run(self, fm: &FileManager) -> Result<ToolOutput, PluginError> {
        output(fm.append(&self.path, &self.content))
    }
}

/// Deletes a file.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    /// Relative to the root directory
    pub path: String,
}

impl Activity<FileManager> for Delete {
    const NAME: &'static str = "delete";
    type Output = ToolOutput;

    fn run(self, fm: &FileManager) -> Result<ToolOutput, PluginError> {
        output(fm.delete(&self.path))
    }
}

impl TypedTool for FileManager {
    type Config = Config;
    const NAME: &'static str = "FileManager";
    const DESCRIPTION: &'static str =
        "Lists, reads, writes, appends to and deletes files in a sandboxed directory";

    fn new(config: Config) -> Result<Self, PluginError> {
        fs::create_dir_all(&config.root).map_err(|e| {
            PluginError::config(format!(
                "root `{}` cannot be created: {e}",
                config.root.display()
            ))
        })?;
        let root = config.root.canonicalize().map_err(|e| {
            PluginError::config(format!(
                "root `{}` cannot be used: {e}",
                config.root.display()
            ))
        })?;
        if !root.is_dir() {
            return Err(PluginError::config(format!(
                "root `{}` is not a directory",
                root.display()
            )));
        }
        Ok(Self { root, config })
    }

    fn activities(set: &mut Activities<Self>) {
        // Every activity touches the disk: on the async path they run on a blocking thread.
        set.add_blocking::<List>()
            .add_blocking::<ReadFile>()
            .add_blocking::<WriteFile>()
            .add_blocking::<Append>()
            .add_blocking::<Delete>();
    }
}

plugin_api::export_plugin! {
    tool: FileManager,
    id: "file-manager",
    description: "Files under one root directory: list, read, write (atomic), append, delete",
}

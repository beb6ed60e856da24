//! An event listener driver that appends each event as one JSON line to a file.
//!
//! A batch is encoded first and written with a single `write_all` under a lock on a file opened
//! in append mode, so lines from concurrent batches never interleave. A failed write is returned
//! as an error (the host logs it and goes on); it never panics.
//!
//! ```toml
//! [config]
//! path = "events.jsonl"   # created if missing; relative to the host's working directory
//! fsync = false           # sync the file to disk on every flush
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use plugin_api::prelude::*;
use serde::Deserialize;

/// Configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    path: PathBuf,
    #[serde(default)]
    fsync: bool,
}

/// The listener driver.
pub struct JsonlListener {
    path: PathBuf,
    fsync: bool,
    file: Arc<Mutex<File>>,
}

fn write_batch(
    file: &Mutex<File>,
    path: &std::path::Path,
    events: &[Event],
) -> Result<(), PluginError> {
    let mut buf = Vec::with_capacity(events.len() * 256);
    for e in events {
        serde_json::to_writer(&mut buf, e)
            .map_err(|err| PluginError::internal(format!("cannot encode event: {err}")))?;
        buf.push(b'\n');
    }
    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
    f.write_all(&buf).map_err(|e| {
        PluginError::upstream(format!("cannot write to {}: {e}", path.display())).retryable()
    })
}

impl EventListenerDriver for JsonlListener {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| {
                PluginError::config(format!(
                    "cannot open {} for appending: {e}",
                    config.path.display()
                ))
            })?;
        Ok(Self {
            path: config.path,
            fsync: config.fsync,
            file: Arc::new(Mutex::new(file)),
        })
    }

    fn publish(&self, events: Vec<Event>) -> Result<(), PluginError> {
        write_batch(&self.file, &self.path, &events)
    }

    async fn publish_async(&self, events: Vec<Event>) -> Result<(), PluginError> {
        let (file, path) = (Arc::clone(&self.file), self.path.clone());
        spawn_blocking(move || write_batch(&file, &path, &events)).await?
    }

    fn flush(&self) -> Result<(), PluginError> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.flush()
            .and_then(|()| if self.fsync { f.sync_data() } else { Ok(()) })
            .map_err(|e| {
                PluginError::upstream(format!("cannot flush {}: {e}", self.path.display()))
            })
    }

    async fn flush_async(&self) -> Result<(), PluginError> {
        let (file, path, fsync) = (Arc::clone(&self.file), self.path.clone(), self.fsync);
        spawn_blocking(move || {
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            f.flush()
                .and_then(|()| if fsync { f.sync_data() } else { Ok(()) })
                .map_err(|e| PluginError::upstream(format!("cannot flush {}: {e}", path.display())))
        })
        .await?
    }
}

plugin_api::export_plugin! {
    id: "jsonl",
    description: "Appends each event as one JSON line to a file",
    listener: JsonlListener,
}

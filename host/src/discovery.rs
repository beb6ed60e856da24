//! Where the CLI looks for manifests, so that a plugin is registered once, not on every command.
//!
//! In order (the first manifest of an id wins; a later one of the same id is refused as a
//! duplicate, and `grip plugins list` shows which):
//!
//! 1. the directories given with `--manifests` (repeatable);
//! 2. the directories registered with `grip plugins add DIR`, kept in
//!    `<config dir>/plugins.toml` (`$GRIP_CONFIG_DIR`, else `$XDG_CONFIG_HOME/grip`, else
//!    `~/.config/grip`);
//! 3. grip's own first-party manifests: `./manifests`, the `manifests` directory of the source
//!    tree this grip was built from, and `../share/grip/manifests` next to the executable, those
//!    that exist.
//!
//! `--no-default-manifests` (or `GRIP_NO_DEFAULT_MANIFESTS=1`) keeps only the first. The daemon
//! does not use this: its operator lists its directories in `grip.toml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file, in the config directory, that lists registered manifest directories.
pub const REGISTERED_FILE: &str = "plugins.toml";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registered {
    /// Absolute manifest directories, in the order they were added.
    #[serde(default)]
    manifest_dirs: Vec<PathBuf>,
}

/// grip's user config directory, when one can be named.
pub fn config_dir() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("GRIP_CONFIG_DIR")
        .or_else(|| from("XDG_CONFIG_HOME").map(|d| d.join("grip")))
        .or_else(|| from("HOME").map(|d| d.join(".config").join("grip")))
}

fn registered_file() -> Result<PathBuf, String> {
    config_dir()
        .map(|d| d.join(REGISTERED_FILE))
        .ok_or_else(|| "no config directory: set GRIP_CONFIG_DIR or HOME".to_owned())
}

fn read_registered(file: &Path) -> Result<Registered, String> {
    match std::fs::read_to_string(file) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registered::default()),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

fn write_registered(file: &Path, registered: &Registered) -> Result<(), String> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = toml::to_string(registered).map_err(|e| format!("cannot encode: {e}"))?;
    let body = format!("# Manifest directories registered with `grip plugins add`.\n{text}");
    std::fs::write(file, body).map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// The registered manifest directories.
///
/// # Errors
/// A registry file that cannot be read or parsed; the message names it.
pub fn registered_dirs() -> Result<Vec<PathBuf>, String> {
    match config_dir() {
        None => Ok(Vec::new()),
        Some(d) => Ok(read_registered(&d.join(REGISTERED_FILE))?.manifest_dirs),
    }
}

/// Registers `dir` (made absolute; it must be a directory). Returns the registry file and
/// whether the directory was new.
///
/// # Errors
/// `dir` is not a directory, or the registry file cannot be read or written.
pub fn add(dir: &Path) -> Result<(PathBuf, bool), String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let file = registered_file()?;
    let mut registered = read_registered(&file)?;
    if registered.manifest_dirs.contains(&dir) {
        return Ok((file, false));
    }
    registered.manifest_dirs.push(dir);
    write_registered(&file, &registered)?;
    Ok((file, true))
}

/// Unregisters `dir`. Returns the registry file and whether it was registered.
///
/// # Errors
/// The registry file cannot be read or written.
pub fn remove(dir: &Path) -> Result<(PathBuf, bool), String> {
    let file = registered_file()?;
    let mut registered = read_registered(&file)?;
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let before = registered.manifest_dirs.len();
    registered
        .manifest_dirs
        .retain(|d| d != &canonical && d != dir);
    let removed = registered.manifest_dirs.len() != before;
    if removed {
        write_registered(&file, &registered)?;
    }
    Ok((file, removed))
}

/// grip's own manifest directories that exist here.
pub fn first_party_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("manifests")];
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests"));
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        dirs.push(bin.join("../share/grip/manifests"));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// The directories to load, in order, each once (by canonical path): `explicit`, then, with
/// `defaults`, the registered and first-party ones.
///
/// # Errors
/// A registry file that cannot be read.
pub fn manifest_dirs(explicit: &[PathBuf], defaults: bool) -> Result<Vec<PathBuf>, String> {
    let mut all: Vec<PathBuf> = explicit.to_vec();
    if defaults {
        all.extend(registered_dirs()?);
        all.extend(first_party_dirs());
    }
    let mut seen = Vec::new();
    Ok(all
        .into_iter()
        .filter(|d| {
            let key = d.canonicalize().unwrap_or_else(|_| d.clone());
            let fresh = !seen.contains(&key);
            seen.push(key);
            fresh
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_file_round_trips_and_repeats_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join(REGISTERED_FILE);
        let dir = tmp.path().canonicalize().unwrap();
        let r = Registered {
            manifest_dirs: vec![dir.clone()],
        };
        write_registered(&file, &r).unwrap();
        assert_eq!(
            read_registered(&file).unwrap().manifest_dirs,
            std::slice::from_ref(&dir)
        );
        let twice = manifest_dirs(&[dir.clone(), tmp.path().join(".")], false).unwrap();
        assert_eq!(twice, [dir]);
        std::fs::write(&file, "manifest_dir = []\n").unwrap();
        let e = read_registered(&file).unwrap_err();
        assert!(e.contains(REGISTERED_FILE), "{e}");
    }
}

//! MCP servers for the tests, from the registries (`scripts/test-deps.sh` installs them): the
//! reference time server (PyPI), the reference "everything" server (npm), a probe server on the
//! official Python SDK (`tests/py/mcp_probe_server.py`), and manifests that make them tools.

use std::path::{Path, PathBuf};

use crate::artifacts;

/// A registry program the tests need, or a panic saying which package provides it.
fn installed(path: PathBuf, package: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-deps.sh, which installs {package}",
        path.display()
    );
    path
}

/// The venv's Python (with the `mcp` SDK).
pub fn python() -> PathBuf {
    installed(
        artifacts().root.join("target/venv/bin/python"),
        "the `mcp` package from PyPI into target/venv",
    )
}

/// The reference time server (`mcp-server-time` from PyPI).
pub fn time_server() -> PathBuf {
    installed(
        artifacts().root.join("target/venv/bin/mcp-server-time"),
        "the `mcp-server-time` package from PyPI into target/venv",
    )
}

/// The reference "everything" server (`@modelcontextprotocol/server-everything` from npm).
pub fn everything_server() -> PathBuf {
    installed(
        artifacts()
            .root
            .join("target/npm/node_modules/.bin/mcp-server-everything"),
        "`@modelcontextprotocol/server-everything` from npm into target/npm",
    )
}

/// The probe server's script.
pub fn probe_script() -> PathBuf {
    artifacts().root.join("tests/py/mcp_probe_server.py")
}

/// A TOML string literal.
fn lit(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Writes `<dir>/<id>.toml`: a tool backed by the stdio server `command args`, with `extra`
/// lines appended to its `[mcp]` table.
pub fn stdio_manifest(dir: &Path, id: &str, command: &Path, args: &[&str], extra: &str) -> PathBuf {
    let args: Vec<String> = args.iter().map(|a| lit(a)).collect();
    let text = format!(
        "id = {}\ndescription = \"test server {id}\"\n\n[mcp]\ncommand = {}\nargs = [{}]\n{extra}\n",
        lit(id),
        lit(&command.display().to_string()),
        args.join(", ")
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// Writes `<dir>/<id>.toml`: a tool backed by the streamable-HTTP server at `url`.
pub fn http_manifest(dir: &Path, id: &str, url: &str, extra: &str) -> PathBuf {
    let text = format!("id = {}\n\n[mcp]\nurl = {}\n{extra}\n", lit(id), lit(url));
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// Writes the probe server's manifest; its marker files go to `probe_dir`.
pub fn probe_manifest(dir: &Path, id: &str, probe_dir: &Path, extra: &str) -> PathBuf {
    let script = probe_script().display().to_string();
    stdio_manifest(
        dir,
        id,
        &python(),
        &[&script],
        &format!(
            "env = {{ PROBE_DIR = {} }}\n{extra}",
            lit(&probe_dir.display().to_string())
        ),
    )
}

/// Waits up to `secs` for `path` to exist; its text.
pub fn wait_for_file(path: &Path, secs: u64) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Some(text);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

/// Whether process `pid` is still alive (a zombie is not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for something to listen on 127.0.0.1:`port`.
///
/// # Panics
/// When nothing does.
pub fn wait_for_port(port: u16, timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

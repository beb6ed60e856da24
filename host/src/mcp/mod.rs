//! The Model Context Protocol, both ways, on the official SDK (`rmcp`).
//!
//! - [`client`]: a manifest with an `[mcp]` table instead of `[library]` is a tool plugin backed
//!   by an MCP server (a stdio child or a streamable-HTTP endpoint). Its tools are the plugin's
//!   activities, so the task loop, the daemon and both paths use it like any other tool.
//! - [`server`]: `grip mcp serve` offers chosen tool plugins' activities to any MCP client.
//! - [`catalog`]: the one translation between MCP's tools and results and grip's.
//!
//! ```toml
//! id = "time"
//! description = "The time in any time zone"
//!
//! [mcp]
//! command = "mcp-server-time"          # stdio: the server's program, found on PATH
//! args = ["--local-timezone", "UTC"]
//! # cwd = "."                          # relative to this manifest (default: its directory)
//! # env = { TZ = "UTC" }               # set for the server; "${VAR}" is read from grip's env
//! # inherit_env = ["HTTPS_PROXY"]      # grip's variables passed through (besides PATH, HOME, ...)
//! # url = "http://127.0.0.1:8000/mcp" # streamable HTTP instead of `command`
//! # headers = { Authorization = "Bearer ${MCP_TOKEN}" }
//! # tools = ["get_current_time"]       # only these of the server's tools (default: all)
//! # max_tools = 64                     # at most this many are offered to the model
//! # tool_name = "Time"                 # the grip tool name (default: from the id)
//! # init_timeout_secs = 30             # start-up and `initialize`
//! # call_timeout_secs = 60             # one tool call; the server is told to cancel it
//! ```

pub mod catalog;
pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Grip's variables a stdio server gets without asking: what a program needs to run at all.
/// Everything else (API keys among it) stays in the host unless `inherit_env` names it.
pub const BASE_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TERM", "TZ",
];

/// How grip reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A child process speaking JSON-RPC on its stdin and stdout.
    Stdio {
        /// The program (found on PATH, or a path relative to the manifest).
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its working directory.
        cwd: PathBuf,
        /// Its whole environment: [`BASE_ENV`], `inherit_env`, then `env`.
        env: BTreeMap<String, String>,
    },
    /// A streamable-HTTP endpoint.
    Http {
        /// The endpoint (`http://host:port/mcp`).
        url: String,
        /// Headers sent with every request, `${VAR}`s expanded.
        headers: BTreeMap<String, String>,
    },
}

/// A validated `[mcp]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSettings {
    /// Where the server is.
    pub transport: Transport,
    /// Only these of its tools, when given.
    pub allow: Option<Vec<String>>,
    /// At most this many tools are offered.
    pub max_tools: usize,
    /// The grip tool name: activities are offered as `<tool_name>_<activity>`.
    pub tool_name: String,
    /// Start-up and `initialize`.
    pub init_timeout: Duration,
    /// One tool call.
    pub call_timeout: Duration,
}

impl McpSettings {
    /// A one-line description (`stdio: mcp-server-time --local-timezone UTC`).
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Stdio { command, args, .. } => {
                let mut s = format!("stdio: {command}");
                for a in args {
                    s.push(' ');
                    s.push_str(a);
                }
                s
            }
            Transport::Http { url, .. } => format!("http: {url}"),
        }
    }
}

/// The `[mcp]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMcp {
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    inherit_env: Vec<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    tools: Option<Vec<String>>,
    #[serde(default = "default_max_tools")]
    max_tools: usize,
    #[serde(default)]
    tool_name: Option<String>,
    #[serde(default = "default_init_timeout")]
    init_timeout_secs: f64,
    #[serde(default = "default_call_timeout")]
    call_timeout_secs: f64,
}

fn default_max_tools() -> usize {
    64
}
fn default_init_timeout() -> f64 {
    30.0
}
fn default_call_timeout() -> f64 {
    60.0
}

impl RawMcp {
    /// Checks the table; `id` names the tool when `tool_name` is not given, `dir` is the
    /// manifest's directory, `host_env` reads grip's environment. An error names the field.
    pub(crate) fn validate(
        self,
        id: &str,
        dir: &Path,
        host_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<McpSettings, String> {
        let transport = match (self.command, self.url) {
            (Some(command), None) => {
                if command.trim().is_empty() {
                    return Err("field `mcp.command`: must not be empty".into());
                }
                // A relative path is the manifest's; a bare name is looked up on PATH.
                let command = if command.contains('/') && !Path::new(&command).is_absolute() {
                    dir.join(&command).display().to_string()
                } else {
                    command
                };
                let cwd = match &self.cwd {
                    Some(c) => dir.join(c),
                    None => dir.to_owned(),
                };
                let mut env = BTreeMap::new();
                for name in BASE_ENV
                    .iter()
                    .copied()
                    .chain(self.inherit_env.iter().map(String::as_str))
                {
                    if let Some(v) = host_env(name) {
                        env.insert(name.to_owned(), v);
                    }
                }
                for (k, v) in &self.env {
                    env.insert(
                        k.clone(),
                        expand(v, host_env).map_err(|e| format!("field `mcp.env.{k}`: {e}"))?,
                    );
                }
                Transport::Stdio {
                    command,
                    args: self.args,
                    cwd,
                    env,
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "field `mcp.url`: {url:?} is not an http:// or https:// URL"
                    ));
                }
                if !self.args.is_empty() || self.cwd.is_some() || !self.env.is_empty() {
                    return Err(
                        "field `mcp.url`: `args`, `cwd` and `env` belong to a stdio server (`command`)"
                            .into(),
                    );
                }
                let mut headers = BTreeMap::new();
                for (k, v) in &self.headers {
                    axum::http::HeaderName::try_from(k.as_str()).map_err(|e| {
                        format!("field `mcp.headers`: `{k}` is not a header name ({e})")
                    })?;
                    headers.insert(
                        k.clone(),
                        expand(v, host_env).map_err(|e| format!("field `mcp.headers.{k}`: {e}"))?,
                    );
                }
                for (k, v) in &headers {
                    axum::http::HeaderValue::try_from(v.as_str()).map_err(|e| {
                        format!("field `mcp.headers.{k}`: not a header value ({e})")
                    })?;
                }
                Transport::Http { url, headers }
            }
            (Some(_), Some(_)) => {
                return Err(
                    "field `mcp`: give either `command` (stdio) or `url` (HTTP), not both".into(),
                );
            }
            (None, None) => {
                return Err(
                    "field `mcp`: give `command` (a stdio server) or `url` (a streamable-HTTP server)"
                        .into(),
                );
            }
        };
        if self.max_tools == 0 {
            return Err("field `mcp.max_tools`: must be at least 1".into());
        }
        let seconds = |v: f64, field: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!(
                    "field `mcp.{field}`: must be a positive number of seconds"
                ))
            }
        };
        let tool_name = match self.tool_name {
            Some(n) if catalog::is_function_name(&n) => n,
            Some(n) => {
                return Err(format!(
                    "field `mcp.tool_name`: {n:?} must be 1 to 40 of A-Z, a-z, 0-9, '_', '-'"
                ));
            }
            None => catalog::tool_name_from_id(id),
        };
        Ok(McpSettings {
            transport,
            allow: self.tools,
            max_tools: self.max_tools,
            tool_name,
            init_timeout: seconds(self.init_timeout_secs, "init_timeout_secs")?,
            call_timeout: seconds(self.call_timeout_secs, "call_timeout_secs")?,
        })
    }
}

/// `value` with each `${VAR}` replaced by grip's variable; an unset one is an error (a header
/// or key silently sent empty would fail far from its cause).
fn expand(value: &str, host_env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in {value:?}"));
        };
        let name = &after[..end];
        match host_env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("the environment variable `{name}` is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PATH" => Some("/bin".into()),
            "SECRET" => Some("s3".into()),
            "TOKEN" => Some("t0k".into()),
            _ => None,
        }
    }

    fn parse(src: &str) -> Result<McpSettings, String> {
        let raw: RawMcp = toml::from_str(src).map_err(|e| e.to_string())?;
        raw.validate("my-time", Path::new("/m"), &env)
    }

    #[test]
    fn a_stdio_server_gets_only_the_base_environment_and_what_it_is_given() {
        let s =
            parse("command = \"srv\"\nargs = [\"-v\"]\nenv = { KEY = \"${TOKEN}x\" }\n").unwrap();
        assert_eq!(s.tool_name, "MyTime");
        let Transport::Stdio {
            command, cwd, env, ..
        } = s.transport
        else {
            panic!("stdio")
        };
        assert_eq!((command.as_str(), cwd.as_path()), ("srv", Path::new("/m")));
        assert_eq!(env.get("PATH").map(String::as_str), Some("/bin"));
        assert_eq!(env.get("KEY").map(String::as_str), Some("t0kx"));
        assert!(!env.contains_key("SECRET"), "{env:?}");
        let s = parse("command = \"srv\"\ninherit_env = [\"SECRET\"]\n").unwrap();
        let Transport::Stdio { env, .. } = s.transport else {
            panic!("stdio")
        };
        assert_eq!(env.get("SECRET").map(String::as_str), Some("s3"));
    }

    #[test]
    fn bad_tables_name_their_field() {
        for (src, expected) in [
            ("", "give `command`"),
            ("command = \"a\"\nurl = \"http://x\"\n", "not both"),
            ("url = \"ftp://x\"\n", "field `mcp.url`"),
            (
                "url = \"http://x\"\nheaders = { A = \"${NOPE}\" }\n",
                "`NOPE` is not set",
            ),
            (
                "command = \"a\"\ncall_timeout_secs = 0\n",
                "mcp.call_timeout_secs",
            ),
            ("command = \"a\"\nmax_tools = 0\n", "mcp.max_tools"),
            ("command = \"a\"\ntool_name = \"a b\"\n", "mcp.tool_name"),
            ("command = \"a\"\ncolour = 1\n", "unknown field `colour`"),
        ] {
            let e = parse(src).unwrap_err();
            assert!(e.contains(expected), "{src:?}: {e}");
        }
    }
}

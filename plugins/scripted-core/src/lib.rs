//! The logic of a prompt driver that answers from a script. The `scripted` plugin (sync, async
//! and stream) and the test mock drivers (sync-only, async-only) are thin wrappers around it.
//!
//! It holds no state between calls: the answer to a request is step `n` of the script, where
//! `n` is the number of assistant messages already in the prompt stack. So one scripted driver
//! can serve many concurrent tasks, and a tool round trip is a two-step script:
//!
//! ```toml
//! [config]
//! script = [
//!   { tool_calls = [{ name = "TextTools_word_count", arguments = { text = "a b c" } }] },
//!   { text = "There are 3 words." },
//! ]
//! ```
//!
//! Past the end of the script (or with no script) it echoes the last user message. A step can
//! also be `{ json = { ... } }` (text that is that JSON, for output schemas) or
//! `{ error = "message", kind = "upstream", retryable = true }`.

use std::time::Duration;

use plugin_api::futures::{StreamExt, stream};
use plugin_api::prelude::*;
use serde::Deserialize;

/// The driver's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The answers, one per step.
    #[serde(default)]
    script: Vec<Step>,
    /// Characters per streamed text chunk.
    #[serde(default = "default_chunk_chars")]
    chunk_chars: usize,
    /// Delay before each answer and each streamed chunk, in milliseconds.
    #[serde(default)]
    delay_ms: u64,
    /// Prefix of echoed answers.
    #[serde(default = "default_echo_prefix")]
    echo_prefix: String,
}

fn default_chunk_chars() -> usize {
    8
}

fn default_echo_prefix() -> String {
    "echo: ".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    json: Option<serde_json::Value>,
    #[serde(default)]
    tool_calls: Vec<ScriptedCall>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    retryable: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

/// The scripted driver. Its `PromptDriver` methods are the ones every wrapper delegates to.
pub struct Scripted {
    config: Config,
}

fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

impl Scripted {
    /// The answer to `request`: step `n` of the script, `n` being the assistant turns so far.
    ///
    /// # Errors
    /// The step's scripted error, if it is one.
    pub fn answer(&self, request: &PromptRequest) -> Result<PromptResponse, PluginError> {
        let step_index = request
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        let input_tokens: u64 = request
            .messages
            .iter()
            .map(|m| count_words(&m.content))
            .sum();
        let mut message = Message::assistant("");
        match self.config.script.get(step_index) {
            Some(step) => {
                if let Some(error) = &step.error {
                    let kind = match step.kind.as_deref() {
                        Some("upstream") => ErrorKind::Upstream,
                        Some("timeout") => ErrorKind::Timeout,
                        Some("rate_limited") => ErrorKind::RateLimited,
                        Some("auth") => ErrorKind::Auth,
                        Some("invalid_input") => ErrorKind::InvalidInput,
                        _ => ErrorKind::Other,
                    };
                    let mut e = PluginError::new(kind, error.clone());
                    e.retryable = step.retryable;
                    return Err(e);
                }
                message.content = match (&step.text, &step.json) {
                    (Some(t), _) => t.clone(),
                    (None, Some(j)) => j.to_string(),
                    (None, None) => String::new(),
                };
                message.tool_calls = step
                    .tool_calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ToolCall {
                        id: c
                            .id
                            .clone()
                            .unwrap_or_else(|| format!("call_{step_index}_{i}")),
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    })
                    .collect();
            }
            None => {
                let last_user = request
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .map(|m| m.content.as_str())
                    .unwrap_or_default();
                message.content = format!("{}{last_user}", self.config.echo_prefix);
            }
        }
        let finish = if message.tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        Ok(PromptResponse {
            schema_version: plugin_api::wire::WIRE_VERSION,
            usage: Usage {
                input_tokens,
                output_tokens: count_words(&message.content),
            },
            message,
            finish_reason: Some(finish.into()),
            id: None,
            model: None,
        })
    }

    /// The answer cut into stream deltas.
    pub fn deltas(&self, response: PromptResponse) -> Vec<StreamDelta> {
        let mut out = Vec::new();
        let chars: Vec<char> = response.message.content.chars().collect();
        for chunk in chars.chunks(self.config.chunk_chars.max(1)) {
            out.push(StreamDelta::Text {
                text: chunk.iter().collect(),
            });
        }
        for (i, call) in response.message.tool_calls.iter().enumerate() {
            let args = call.arguments.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            out.push(StreamDelta::ToolCall {
                index: i as u32,
                id: Some(call.id.clone()),
                name: Some(call.name.clone()),
                arguments: a.to_owned(),
            });
            out.push(StreamDelta::ToolCall {
                index: i as u32,
                id: None,
                name: None,
                arguments: b.to_owned(),
            });
        }
        out.push(StreamDelta::Usage {
            usage: response.usage,
        });
        if let Some(reason) = response.finish_reason {
            out.push(StreamDelta::Finish { reason });
        }
        out
    }
}

impl PromptDriver for Scripted {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        if config.chunk_chars == 0 {
            return Err(PluginError::config("chunk_chars must be at least 1"));
        }
        Ok(Self { config })
    }

    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        if self.config.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.config.delay_ms));
        }
        self.answer(&request)
    }

    async fn prompt_async(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        if self.config.delay_ms > 0 {
            plugin_api::tokio::time::sleep(Duration::from_millis(self.config.delay_ms)).await;
        }
        self.answer(&request)
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let deltas = self.deltas(self.answer(&request)?);
        let delay = Duration::from_millis(self.config.delay_ms);
        Ok(stream::iter(deltas)
            .then(move |d| async move {
                if !delay.is_zero() {
                    plugin_api::tokio::time::sleep(delay).await;
                }
                Ok(d)
            })
            .boxed())
    }
}

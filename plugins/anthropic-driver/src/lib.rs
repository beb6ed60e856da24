//! A prompt driver for Anthropic's Messages API, with sync, async and stream modes.
//!
//! ```toml
//! [config]
//! base_url = "https://api.anthropic.com"    # default; the driver posts to {base_url}/v1/messages
//! model = "claude-sonnet-4-5"               # required
//! api_key_env = "ANTHROPIC_API_KEY"         # default; the key itself is never logged
//! api_version = "2023-06-01"                # the anthropic-version header (default)
//! beta = ["..."]                            # anthropic-beta header values (optional)
//! max_tokens = 4096                         # required by the API; this is the default
//! temperature = 0.2                         # optional
//! top_p = 0.9                               # optional
//! top_k = 40                                # optional
//! stop_sequences = ["\n\nHuman:"]           # optional
//! tool_choice = "auto"                      # "auto" | "any" | "none" | {type = "tool", name = "..."}
//! parallel_tool_calls = true                # false sends disable_parallel_tool_use
//! structured_output = true                  # output schema through a forced tool (default)
//! output_tool = "structured_output"         # that tool's name
//! extra_body = { metadata = { user_id = "u-1" } }   # merged into every request body
//! [config.http]                             # timeouts, retries, extra headers (as for openai)
//! ```
//!
//! How the shared wire types map onto the Messages API:
//! - system messages are joined into the `system` field; consecutive messages of one side are
//!   merged into one turn (so several tool results travel as one user turn of `tool_result`
//!   blocks, as the API requires);
//! - an output schema is offered as a tool (`output_tool`) the model is forced to call; its
//!   input comes back as the answer's text (a schema that is not an object is wrapped as
//!   `{"value": ...}` on the way out and unwrapped on the way back);
//! - stop reasons are translated to the shared [`finish_reason`](plugin_api::wire::finish_reason)
//!   names; usage counts cache reads and writes as input tokens;
//! - in a stream, tool-call parts are numbered per call (0, 1, ...), and each `Usage` item is a
//!   snapshot of the totals (input from `message_start`, output from `message_delta`).

mod wire;

use std::sync::Arc;

use driver_http::Request;
use driver_http::{Classify, Endpoint, HttpConfig};
use plugin_api::prelude::*;
use serde::Deserialize;

/// The driver's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    model: String,
    #[serde(default = "default_key_env")]
    api_key_env: String,
    #[serde(default = "default_api_version")]
    api_version: String,
    #[serde(default)]
    beta: Vec<String>,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default = "yes")]
    structured_output: bool,
    #[serde(default = "default_output_tool")]
    output_tool: String,
    #[serde(default)]
    extra_body: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    http: HttpConfig,
}

fn default_base_url() -> String {
    "https://api.anthropic.com".into()
}

fn default_key_env() -> String {
    "ANTHROPIC_API_KEY".into()
}

fn default_api_version() -> String {
    "2023-06-01".into()
}

fn default_max_tokens() -> u32 {
    4096
}

fn default_output_tool() -> String {
    "structured_output".into()
}

fn yes() -> bool {
    true
}

/// Anthropic's error bodies: `{"type": "error", "error": {"type": "overloaded_error", "message":
/// "Overloaded"}}`. The error type is kept in the message, since it says more than the status.
struct AnthropicClassify;

impl Classify for AnthropicClassify {
    fn quota_exhausted(&self, _body: &str) -> bool {
        // Anthropic's 429 is always a rate limit; an exhausted balance is a 400.
        false
    }

    fn error_message(&self, body: &str) -> String {
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(e) => {
                let kind = e.get("type").and_then(|t| t.as_str()).unwrap_or("error");
                let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                driver_http::snippet(&format!("{kind}: {message}"), 300)
            }
            None => driver_http::DefaultClassify.error_message(body),
        }
    }
}

/// The driver. Cheap to clone: streams take a clone to send their request.
#[derive(Clone)]
pub struct AnthropicDriver {
    config: Arc<Config>,
    endpoint: Endpoint,
}

impl AnthropicDriver {
    /// One request: the body with the key, the vendor's headers and the host's trace context.
    fn build(&self, body: &serde_json::Value, traceparent: Option<&str>) -> Request {
        let mut rb = driver_http::with_traceparent(self.endpoint.post(body), traceparent)
            .header("anthropic-version", self.config.api_version.as_str());
        if !self.config.beta.is_empty() {
            rb = rb.header("anthropic-beta", self.config.beta.join(","));
        }
        if let Some(key) = self.endpoint.api_key() {
            rb = rb.header("x-api-key", key);
        }
        rb
    }
}

impl PromptDriver for AnthropicDriver {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        driver_http::require_nonempty("model", &config.model)?;
        driver_http::require_nonempty("output_tool", &config.output_tool)?;
        if config.max_tokens == 0 {
            return Err(PluginError::config("`max_tokens` must be at least 1"));
        }
        wire::check_tool_choice(config.tool_choice.as_ref())?;
        let endpoint = Endpoint::new(
            &config.base_url,
            "/v1/messages",
            &config.http,
            &config.api_key_env,
        )?;
        Ok(Self {
            config: Arc::new(config),
            endpoint,
        })
    }

    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        block_on(self.prompt_async(request))
    }

    async fn prompt_async(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        let plan = wire::Plan::new(&self.config, &request, false);
        let resp = self
            .endpoint
            .send(
                || self.build(&plan.body, request.traceparent.as_deref()),
                &AnthropicClassify,
            )
            .await?;
        let parsed: wire::MessagesResponse =
            driver_http::read_json(resp, &self.endpoint.url).await?;
        plan.into_response(parsed, &self.endpoint.url)
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let plan = wire::Plan::new(&self.config, &request, true);
        let decoder = plan.decoder();
        let r = self.clone();
        let traceparent = request.traceparent;
        Ok(self.endpoint.stream(
            move || r.build(&plan.body, traceparent.as_deref()),
            AnthropicClassify,
            decoder,
        ))
    }
}

plugin_api::export_plugin! {
    id: "anthropic",
    description: "Anthropic Messages API",
    driver: AnthropicDriver,
}

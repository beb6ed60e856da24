//! A prompt driver for any server speaking the OpenAI chat-completions wire format (OpenAI,
//! Ollama, vLLM, llama.cpp's server, LM Studio, gateways), with sync, async and stream modes.
//!
//! ```toml
//! [config]
//! base_url = "https://api.openai.com/v1"   # default
//! model = "gpt-4o-mini"                     # required
//! api_key_env = "OPENAI_API_KEY"            # default; the key itself is never logged
//! temperature = 0.2                          # optional
//! max_tokens = 512                           # optional
//! organization = "org-..."                   # optional
//! project = "proj_..."                       # optional
//! tool_choice = "auto"                       # optional, passed through
//! parallel_tool_calls = true                 # optional
//! structured_output = true                   # send the output schema as response_format
//! extra_body = { seed = 7 }                  # merged into every request body
//! [config.http]                              # timeouts, retries, extra headers
//! connect_timeout_ms = 10000
//! request_timeout_ms = 600000
//! stream_idle_timeout_ms = 60000
//! retry = { max_retries = 2, initial_backoff_ms = 500, max_backoff_ms = 30000, restart_streams = true }
//! headers = { "X-Gateway" = "..." }
//! ```
//!
//! One retry budget covers a call: 429s, 5xx and connect errors before a response, and a stream
//! cut before `[DONE]` (sent again with a `Restart` delta first; see `driver_http`).
//!
//! A refusal comes back as the assistant's text with `finish_reason = "refusal"`. Tool-call
//! arguments that are not valid JSON are passed on as a JSON string, so the host's schema check
//! sends the problem back to the model instead of failing the task.

mod wire;

use std::sync::Arc;

use driver_http::Request;
use driver_http::{DefaultClassify, Endpoint, HttpConfig};
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
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    organization: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default = "yes")]
    structured_output: bool,
    #[serde(default)]
    extra_body: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    http: HttpConfig,
}

fn default_base_url() -> String {
    "https://api.openai.com/v1".into()
}

fn default_key_env() -> String {
    "OPENAI_API_KEY".into()
}

fn yes() -> bool {
    true
}

/// The driver. Cheap to clone: streams take a clone to send their request.
#[derive(Clone)]
pub struct OpenAiDriver {
    config: Arc<Config>,
    endpoint: Endpoint,
}

impl OpenAiDriver {
    /// One request: the body with the key, the vendor's headers and the host's trace context.
    fn build(&self, body: &serde_json::Value, traceparent: Option<&str>) -> Request {
        let mut rb = driver_http::with_traceparent(self.endpoint.post(body), traceparent);
        if let Some(key) = self.endpoint.api_key() {
            rb = rb.header("authorization", format!("Bearer {key}"));
        }
        if let Some(org) = &self.config.organization {
            rb = rb.header("OpenAI-Organization", org.as_str());
        }
        if let Some(project) = &self.config.project {
            rb = rb.header("OpenAI-Project", project.as_str());
        }
        rb
    }
}

impl PromptDriver for OpenAiDriver {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        driver_http::require_nonempty("model", &config.model)?;
        let endpoint = Endpoint::new(
            &config.base_url,
            "/chat/completions",
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
        let body = wire::request_body(&self.config, &request, false);
        let resp = self
            .endpoint
            .send(
                || self.build(&body, request.traceparent.as_deref()),
                &DefaultClassify,
            )
            .await?;
        let parsed: wire::ChatResponse = driver_http::read_json(resp, &self.endpoint.url).await?;
        wire::into_response(parsed, &self.endpoint.url)
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let body = wire::request_body(&self.config, &request, true);
        let r = self.clone();
        let traceparent = request.traceparent;
        Ok(self.endpoint.stream(
            move || r.build(&body, traceparent.as_deref()),
            DefaultClassify,
            wire::StreamState::default(),
        ))
    }
}

plugin_api::export_plugin! {
    id: "openai",
    description: "Any server speaking the OpenAI chat-completions wire format",
    driver: OpenAiDriver,
}

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
//! retry = { max_retries = 2, initial_backoff_ms = 500, max_backoff_ms = 30000 }
//! headers = { "X-Gateway" = "..." }
//! ```
//!
//! A refusal comes back as the assistant's text with `finish_reason = "refusal"`. Tool-call
//! arguments that are not valid JSON are passed on as a JSON string, so the host's schema check
//! sends the problem back to the model instead of failing the task.

mod wire;

use std::time::Duration;

use driver_http::{DefaultClassify, HttpConfig, send_with_retry};
use plugin_api::prelude::*;
use reqwest::RequestBuilder;
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

/// The driver.
pub struct OpenAiDriver {
    config: Config,
    url: String,
    client: reqwest::Client,
}

impl OpenAiDriver {
    fn request(&self, body: &serde_json::Value) -> RequestBuilder {
        let mut rb = self
            .client
            .post(&self.url)
            .timeout(Duration::from_millis(self.config.http.request_timeout_ms))
            .json(body);
        // Read at each request, so a rotated key is picked up; an unset variable sends no key
        // (local servers need none) and a 401 then says which variable to set.
        if let Ok(key) = std::env::var(&self.config.api_key_env)
            && !key.trim().is_empty()
        {
            rb = rb.bearer_auth(key);
        }
        if let Some(org) = &self.config.organization {
            rb = rb.header("OpenAI-Organization", org);
        }
        if let Some(project) = &self.config.project {
            rb = rb.header("OpenAI-Project", project);
        }
        rb
    }

    async fn send(&self, body: &serde_json::Value) -> Result<reqwest::Response, PluginError> {
        send_with_retry(
            || self.request(body),
            &self.url,
            &self.config.http.retry,
            &DefaultClassify,
        )
        .await
        .map_err(|e| driver_http::with_key_hint(e, &self.config.api_key_env))
    }
}

impl PromptDriver for OpenAiDriver {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;
    const STREAM: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        if config.model.trim().is_empty() {
            return Err(PluginError::config("`model` must not be empty"));
        }
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(PluginError::config(format!(
                "`base_url` must start with http:// or https://, got {base:?}"
            )));
        }
        let url = format!("{base}/chat/completions");
        let client = driver_http::client(&config.http)?;
        Ok(Self {
            config,
            url,
            client,
        })
    }

    fn prompt(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        block_on(self.prompt_async(request))
    }

    async fn prompt_async(&self, request: PromptRequest) -> Result<PromptResponse, PluginError> {
        let body = wire::request_body(&self.config, &request, false);
        let resp = self.send(&body).await?;
        let parsed: wire::ChatResponse = driver_http::read_json(resp, &self.url).await?;
        wire::into_response(parsed, &self.url)
    }

    fn stream(&self, request: PromptRequest) -> Result<DeltaStream, PluginError> {
        let body = wire::request_body(&self.config, &request, true);
        let idle = Duration::from_millis(self.config.http.stream_idle_timeout_ms);
        let this = Self {
            config: self.config.clone(),
            url: self.url.clone(),
            client: self.client.clone(),
        };
        Ok(driver_http::lazy_stream(async move {
            let resp = this.send(&body).await?;
            Ok(driver_http::decode_stream(
                driver_http::sse_events(resp, &this.url, idle),
                this.url.clone(),
                wire::StreamState::default(),
            ))
        }))
    }
}

plugin_api::export_plugin! {
    id: "openai",
    description: "Any server speaking the OpenAI chat-completions wire format",
    driver: OpenAiDriver,
}

//! Shared set-up for the remote driver tests (OpenAI, Anthropic): a registry with the driver and
//! text-tools, the API key in the environment, drivers pointed at a mock server with fast retries.

use futures::StreamExt;
use host::{CallError, Driver, Registry};
use plugin_api::wire::{Message, PromptRequest, StreamDelta};
use serde_json::{Value, json};

use crate::mock_llm::MockLlm;
use crate::{ManifestSpec, artifacts};

/// A remote driver plugin under test.
#[derive(Debug)]
pub struct RemoteDriver {
    /// The plugin id.
    pub id: &'static str,
    /// The environment variable its key is read from.
    pub key_var: &'static str,
    /// The registry with the driver and `text-tools`.
    pub registry: Registry,
}

impl RemoteDriver {
    /// Loads driver `id` from `library` (every mode) and `text-tools`. `key_var` must hold
    /// `key`: cargo sets it for the tests (`.cargo/config.toml`), so no test changes its own
    /// environment while other threads read it.
    pub fn load(id: &'static str, library: &str, key_var: &'static str, key: &str) -> Self {
        assert_eq!(
            std::env::var(key_var).as_deref(),
            Ok(key),
            "{key_var} is set by .cargo/config.toml: run the tests with cargo from the workspace"
        );
        let dir = tempfile::tempdir().expect("tempdir").keep();
        ManifestSpec::named(id, library)
            .kind("prompt_driver", &["sync", "async", "stream"])
            .extra("[config]\nmodel = \"test-model\"\n")
            .write(&dir, "driver.toml");
        ManifestSpec::named("text-tools", "text_tools")
            .kind("tool", &["sync", "async"])
            .write(&dir, "tt.toml");
        let registry = Registry::load_dirs(&[dir], &artifacts().options());
        assert!(registry.refused().is_empty(), "{:?}", registry.refused());
        Self {
            id,
            key_var,
            registry,
        }
    }

    /// A driver with exactly this config over the manifest's.
    ///
    /// # Errors
    /// The plugin's refusal of the config.
    pub fn try_driver(&self, config: &Value) -> Result<Driver, CallError> {
        self.registry
            .get(self.id)
            .expect("driver loaded")
            .new_driver(Some(config))
    }

    /// A driver pointed at `mock`, with the key variable and fast retries, plus `extra`.
    pub fn driver_with(&self, mock: &MockLlm, extra: Value) -> Driver {
        let mut config = json!({
            "base_url": mock.base_url(),
            "api_key_env": self.key_var,
            "http": {"retry": {"max_retries": 2, "initial_backoff_ms": 5, "max_backoff_ms": 3000}}
        });
        host::plugin::merge_config(&mut config, &extra);
        self.try_driver(&config).expect("driver config accepted")
    }

    /// A text-tools instance.
    pub fn text_tools(&self) -> host::ToolHandle {
        self.registry
            .get("text-tools")
            .expect("text-tools loaded")
            .new_tool(None)
            .expect("text-tools instance")
    }
}

/// A system message and a user message.
pub fn request(text: &str) -> PromptRequest {
    PromptRequest::new(vec![Message::system("be nice"), Message::user(text)])
}

/// Every item of a driver's stream.
pub async fn collect(d: &Driver, req: &PromptRequest) -> Vec<Result<StreamDelta, CallError>> {
    d.stream(req).expect("stream opens").collect().await
}

/// The text of the stream's items: the last attempt's, when the driver restarted the stream.
pub fn streamed_text(items: &[Result<StreamDelta, CallError>]) -> String {
    let mut text = String::new();
    for item in items {
        match item {
            Ok(StreamDelta::Text { text: t }) => text.push_str(t),
            Ok(StreamDelta::Restart { .. }) => text.clear(),
            _ => {}
        }
    }
    text
}

/// The `(attempt, reason)` of each restart in the stream's items.
pub fn restarts(items: &[Result<StreamDelta, CallError>]) -> Vec<(u32, String)> {
    items
        .iter()
        .filter_map(|d| match d {
            Ok(StreamDelta::Restart { attempt, reason }) => Some((*attempt, reason.clone())),
            _ => None,
        })
        .collect()
}

/// The stream's last item, which must be an error.
pub fn last_error(items: &[Result<StreamDelta, CallError>]) -> &CallError {
    items
        .last()
        .expect("at least one item")
        .as_ref()
        .expect_err("the last item is an error")
}

//! A task as a front end asks for it, before it runs: [`TaskSpec`] is the one description that
//! `grip run`, the daemon's `POST /v1/tasks` (and later the queue worker and the
//! OpenAI-compatible front) fill in, and [`TaskSpec::build`] the one place that checks it and
//! turns it into a [`PromptTask`], the same way for every front.
//!
//! What a caller may do is the front's [`Policy`]: the CLI's operator is its caller and may
//! change any config key ([`Permissive`]); the daemon allows only what its operator listed.
//! Values the host resolved (a fetched model's path) come in as a [`HostConfig`], never by
//! changing the shared plugin.

use std::collections::BTreeMap;

use plugin_api::wire::{FunctionSpec, Message, Role, ToolCall};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CallError;
use crate::manifest::{Kind, Mode};
use crate::models::HostConfig;
use crate::plugin::Plugin;
use crate::registry::Registry;
use crate::task::PromptTask;
use crate::task::machine::compile_schema;

/// Which path a task runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathChoice {
    /// Async when the driver has it, else sync (the host's own choice; see the crate docs).
    #[default]
    Auto,
    /// `run()`: the driver must have `sync`.
    Sync,
    /// `async_run()`: the driver must have `async`.
    Async,
}

/// A task to run: the driver and its config overrides, the tools, rules, output schema, limits
/// and whether to stream. Its JSON form is the body of `POST /v1/tasks` (unknown fields are
/// refused: a misspelt field must not be silently ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The prompt driver's plugin id (`None`: the front's default).
    #[serde(default)]
    pub driver: Option<String>,
    /// Overrides of the driver's config (a JSON object), limited by the [`Policy`].
    #[serde(default)]
    pub config: Option<Value>,
    /// The prompt (may be empty when `messages` ends the conversation, e.g. with a tool result).
    #[serde(default)]
    pub input: String,
    /// The conversation before `input`: system, user, assistant (with tool calls) and tool
    /// messages, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<SpecMessage>,
    /// Functions the caller runs itself: a model call of one ends the task with the calls in
    /// the output's `tool_calls` (see [`PromptTask::client_functions`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_tools: Vec<FunctionSpec>,
    /// Tool plugin ids, each offered once.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Overrides of tools' configs, by tool id (each a JSON object, for a tool in `tools`),
    /// limited by the [`Policy`] exactly as `config` is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tool_config: BTreeMap<String, Value>,
    /// The JSON Schema the answer must satisfy.
    #[serde(default)]
    pub output_schema: Option<Value>,
    /// Bound on tool rounds plus validation retries (`None`: the task's default).
    #[serde(default)]
    pub max_subtasks: Option<usize>,
    /// Stream from the driver (it needs the `stream` capability).
    #[serde(default)]
    pub stream: bool,
    /// Rules for the system prompt.
    #[serde(default)]
    pub rules: Vec<String>,
    /// The task id the caller chose (`[A-Za-z0-9_-]`, at most 64): submitting it again returns
    /// the same task instead of running another (`None`: a fresh id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The conversation this task continues: its earlier turns come before `messages`, and its
    /// input and answer are added to them when it succeeds (see [`crate::conversation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// `false`: answer at once with the task id (202), the result is fetched later with
    /// `GET /v1/tasks/{id}`. Default `true`: answer when the task has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// The caller's W3C trace context, continued by the task's spans: a front sets it from
    /// the request's `traceparent` header (one that is not well formed is ignored); it travels
    /// with a queued task to its worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The conversation's earlier turns, loaded by the front from its store (never from the
    /// request), put before `messages`.
    #[serde(skip)]
    pub earlier_turns: Vec<Message>,
    /// The path; requests to the daemon cannot choose it (the daemon decides by capability).
    #[serde(skip)]
    pub path: PathChoice,
    /// The driver config the front's operator set for this kind of task (an agent's), under
    /// `config`. Not checked against the [`Policy`]: no request can set it.
    #[serde(skip)]
    pub operator_config: Option<Value>,
}

/// A message of a request's conversation: what a caller may say was said. Unlike the wire
/// [`Message`], it has no `structured` value and no error flag (a caller cannot forge a tool's
/// own result), and unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    #[serde(default)]
    pub content: String,
    /// For an assistant message: the tool calls it made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl From<&SpecMessage> for Message {
    fn from(m: &SpecMessage) -> Self {
        let mut out = Message::text(m.role, m.content.clone());
        out.tool_calls.clone_from(&m.tool_calls);
        out.tool_call_id.clone_from(&m.tool_call_id);
        out
    }
}

/// What a front lets its callers do.
pub trait Policy {
    /// The driver when a spec names none.
    fn default_driver(&self) -> Option<&str> {
        None
    }

    /// The largest `max_subtasks` a spec may ask for.
    fn max_subtasks_cap(&self) -> Option<usize> {
        None
    }

    /// The most tools a spec may name.
    fn max_tools(&self) -> usize {
        usize::MAX
    }

    /// The config keys a spec may override for `plugin` and where that list is set (for the
    /// error message); `None` allows every key.
    fn overridable<'a>(&'a self, plugin: &'a Plugin) -> Option<(&'a [String], String)> {
        let _ = plugin;
        None
    }
}

/// The policy of a front whose caller is its operator (`grip run`): every key may be set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Permissive;

impl Policy for Permissive {}

/// Why a spec cannot run. Each names the field at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A field's value is not acceptable.
    #[error("field `{field}`: {message}")]
    Invalid {
        /// The field (`input`, `config.model`, ...).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No plugin has that id.
    #[error("{field}: no loaded {kind} `{id}` (loaded {kind}s: {loaded})")]
    NotFound {
        /// `driver` or `tools`.
        field: &'static str,
        /// The id asked for.
        id: String,
        /// The kind asked for.
        kind: Kind,
        /// The ids of that kind that are loaded (`none` when there are none).
        loaded: String,
    },
    /// The plugin exists but cannot do what the spec asks.
    #[error("{field}: {message}")]
    NotCapable {
        /// `driver`, `stream` or `tools`.
        field: &'static str,
        /// What it lacks.
        message: String,
    },
    /// The driver refused its config.
    #[error("field `config`: {0}")]
    DriverConfig(CallError),
    /// A tool could not be made.
    #[error("{0}")]
    Tool(CallError),
    /// The host failed while building the task.
    #[error("{0}")]
    Internal(String),
}

/// A spec turned into a task, with what its runner needs to know.
#[derive(Debug)]
pub struct BuiltTask {
    /// The task (no bus yet: the runner adds its listeners).
    pub task: PromptTask,
    /// Whether to run it with `async_run()`.
    pub use_async: bool,
    /// The driver's plugin id.
    pub driver_id: String,
    /// The spec chose a URL (an allowed override): withhold upstream error text from its
    /// caller, who may not read what an internal service says.
    pub withhold: bool,
}

impl TaskSpec {
    /// Checks the spec against `registry` and `policy` and builds its task: every field is
    /// checked before any plugin instance is made, and the driver gets `host`'s layer under
    /// the spec's overrides.
    ///
    /// # Errors
    /// A [`SpecError`] naming the field.
    pub fn build(
        &self,
        registry: &Registry,
        host: &HostConfig,
        policy: &impl Policy,
    ) -> Result<BuiltTask, SpecError> {
        self.check_fields(policy)?;
        // Compiled once: the check here is the schema the task validates with.
        let schema = match &self.output_schema {
            Some(s) => Some((
                s.clone(),
                compile_schema(s).map_err(|e| invalid("output_schema", &e.to_string()))?,
            )),
            None => None,
        };
        let driver_id = self
            .driver
            .clone()
            .or_else(|| policy.default_driver().map(str::to_owned))
            .ok_or_else(|| invalid("driver", "required (this server has no default driver)"))?;
        let plugin = find(registry, &driver_id, Kind::PromptDriver, "driver")?;
        let use_async = self.choose_path(plugin)?;
        let withhold = match &self.config {
            Some(c) => {
                check_overrides(policy, plugin, c)?;
                crate::overrides::chooses_url(c)
            }
            None => false,
        };
        let tools = self
            .tools
            .iter()
            .map(|id| find(registry, id, Kind::Tool, "tools"))
            .collect::<Result<Vec<_>, _>>()?;
        for p in &tools {
            if let Some(c) = self.tool_config.get(p.id()) {
                check_overrides(policy, p, c).map_err(|e| e.under("tool_config", p.id()))?;
            }
        }
        let overrides = match (&self.operator_config, &self.config) {
            (Some(base), Some(c)) => {
                let mut merged = base.clone();
                crate::plugin::merge_config(&mut merged, c);
                Some(merged)
            }
            (base, c) => c.clone().or_else(|| base.clone()),
        };
        let driver = host
            .new_driver(plugin, overrides.as_ref())
            .map_err(SpecError::DriverConfig)?;
        let history = self
            .earlier_turns
            .iter()
            .cloned()
            .chain(self.messages.iter().map(Message::from))
            .collect();
        let mut task = PromptTask::new(driver, self.input.clone())
            .stream(self.stream)
            .history(history)
            .client_functions(self.client_tools.clone())
            .traceparent(self.traceparent.clone())
            .conversation_id(self.conversation_id.clone());
        if let Some(id) = &self.id {
            task = task.with_id(id.clone());
        }
        for p in tools {
            let overrides = self.tool_config.get(p.id());
            task = task.tool(p.new_tool(overrides).map_err(SpecError::Tool)?);
        }
        if let Some((s, validator)) = schema {
            task = task.output_schema_compiled(s, validator);
        }
        if let Some(n) = self.max_subtasks {
            task = task.max_subtasks(n);
        }
        for r in &self.rules {
            task = task.rule(r.clone());
        }
        Ok(BuiltTask {
            task,
            use_async,
            driver_id,
            withhold,
        })
    }

    /// The checks that need no plugin: a front that only queues the task (see
    /// [`crate::queue`]) makes them before it accepts it.
    ///
    /// # Errors
    /// A [`SpecError::Invalid`] naming the field.
    pub fn check_fields(&self, policy: &impl Policy) -> Result<(), SpecError> {
        if self.input.trim().is_empty() && self.messages.is_empty() {
            return Err(invalid("input", "must not be empty"));
        }
        for (field, value) in [("id", &self.id), ("conversation_id", &self.conversation_id)] {
            if let Some(v) = value
                && !is_valid_id(v)
            {
                return Err(invalid(
                    field,
                    "must be 1 to 64 characters, each a letter, a digit, `_` or `-`",
                ));
            }
        }
        if let Some(t) = &self.traceparent
            && !crate::telemetry::is_valid_traceparent(t)
        {
            return Err(invalid(
                "traceparent",
                "must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>",
            ));
        }
        if let Some(i) = self
            .messages
            .iter()
            .position(|m| m.role == Role::Tool && m.tool_call_id.is_none())
        {
            return Err(invalid(
                &format!("messages[{i}].tool_call_id"),
                "a tool message needs the id of the call it answers",
            ));
        }
        if !self.client_tools.is_empty() && !self.tools.is_empty() {
            return Err(invalid(
                "client_tools",
                "a task runs either its own tools or the caller's, not both",
            ));
        }
        if self.client_tools.len() > policy.max_tools() {
            return Err(invalid(
                "client_tools",
                &format!("a request may offer at most {} tools", policy.max_tools()),
            ));
        }
        for (i, f) in self.client_tools.iter().enumerate() {
            if f.name.is_empty() || self.client_tools[..i].iter().any(|g| g.name == f.name) {
                return Err(invalid(
                    "client_tools",
                    &format!("function names must be unique and non-empty (`{}`)", f.name),
                ));
            }
            if !f.parameters.is_object() {
                return Err(invalid(
                    &format!("client_tools.{}", f.name),
                    "parameters must be a JSON Schema object",
                ));
            }
        }
        if let (Some(n), Some(cap)) = (self.max_subtasks, policy.max_subtasks_cap())
            && n > cap
        {
            return Err(invalid(
                "max_subtasks",
                &format!("{n} is more than this server allows ({cap})"),
            ));
        }
        if self.config.as_ref().is_some_and(|c| !c.is_object()) {
            return Err(invalid(
                "config",
                "must be an object of driver config overrides",
            ));
        }
        if self.tools.len() > policy.max_tools() {
            return Err(invalid(
                "tools",
                &format!(
                    "{} tools; a request may use at most {}",
                    self.tools.len(),
                    policy.max_tools()
                ),
            ));
        }
        for (i, id) in self.tools.iter().enumerate() {
            if self.tools[..i].contains(id) {
                return Err(invalid("tools", &format!("`{id}` is listed twice")));
            }
        }
        for (id, c) in &self.tool_config {
            if !self.tools.contains(id) {
                return Err(invalid(
                    "tool_config",
                    &format!("`{id}` is not one of the task's `tools`"),
                ));
            }
            if !c.is_object() {
                return Err(invalid(
                    &format!("tool_config.{id}"),
                    "must be an object of tool config overrides",
                ));
            }
        }
        Ok(())
    }

    /// Whether the task runs async. A path chosen explicitly is checked by `run()` /
    /// `async_run()` themselves (the spec's strict rule, with its own error).
    fn choose_path(&self, plugin: &Plugin) -> Result<bool, SpecError> {
        if self.stream && !plugin.can(Kind::PromptDriver, Mode::Stream) {
            return Err(SpecError::NotCapable {
                field: "stream",
                message: format!(
                    "prompt driver `{}` lacks the `stream` capability",
                    plugin.id()
                ),
            });
        }
        Ok(match self.path {
            PathChoice::Auto => plugin.can(Kind::PromptDriver, Mode::Async),
            PathChoice::Sync => false,
            PathChoice::Async => true,
        })
    }
}

impl SpecError {
    /// The same error, its field moved under `outer.id` (`config.x` -> `tool_config.<id>.x`).
    fn under(self, outer: &str, id: &str) -> SpecError {
        match self {
            SpecError::Invalid { field, message } => SpecError::Invalid {
                field: format!(
                    "{outer}.{id}.{}",
                    field.strip_prefix("config.").unwrap_or(&field)
                ),
                message,
            },
            other => other,
        }
    }
}

/// Whether `id` may name a task or a conversation: it becomes part of a NATS subject and key,
/// so only characters that are plain in both.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn invalid(field: &str, message: &str) -> SpecError {
    SpecError::Invalid {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// The loaded plugin `id` of `kind`; the error lists the loaded plugins of that kind.
///
/// # Errors
/// [`SpecError::NotFound`] when no plugin has the id, [`SpecError::NotCapable`] when it is of
/// another kind.
pub fn find<'r>(
    registry: &'r Registry,
    id: &str,
    kind: Kind,
    field: &'static str,
) -> Result<&'r Plugin, SpecError> {
    match registry.get(id) {
        Some(p) if p.is(kind) => Ok(p),
        Some(_) => Err(SpecError::NotCapable {
            field,
            message: format!("plugin `{id}` is not a {}", kind_phrase(kind)),
        }),
        None => {
            let loaded: Vec<&str> = registry.of_kind(kind).map(|p| p.id()).collect();
            Err(SpecError::NotFound {
                field,
                id: id.to_owned(),
                kind,
                loaded: if loaded.is_empty() {
                    "none".to_owned()
                } else {
                    loaded.join(", ")
                },
            })
        }
    }
}

fn kind_phrase(kind: Kind) -> &'static str {
    match kind {
        Kind::PromptDriver => "prompt driver",
        Kind::Tool => "tool",
        Kind::EventListener => "event listener",
    }
}

/// The allowlist check of a spec's `config` (see [`crate::overrides`]).
fn check_overrides(policy: &impl Policy, plugin: &Plugin, config: &Value) -> Result<(), SpecError> {
    let Some((allow, source)) = policy.overridable(plugin) else {
        return Ok(());
    };
    let Some(key) = crate::overrides::refused_key(allow, config) else {
        return Ok(());
    };
    let allowed = if allow.is_empty() {
        "it allows none".to_owned()
    } else {
        format!("it allows {}", allow.join(", "))
    };
    Err(SpecError::Invalid {
        field: format!("config.{key}"),
        message: format!(
            "requests may not change `{key}` of plugin `{}` ({allowed}); the operator can allow it with {source}",
            plugin.id()
        ),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A queued task reaches its worker as this JSON: the caller's trace goes with it.
    #[test]
    fn a_callers_trace_travels_with_the_spec_and_a_malformed_one_is_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let spec: TaskSpec =
            serde_json::from_value(json!({"input": "hi", "traceparent": tp})).unwrap();
        let queued: TaskSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(queued.traceparent.as_deref(), Some(tp));
        assert!(spec.check_fields(&Permissive).is_ok());
        let bad = TaskSpec {
            input: "hi".into(),
            traceparent: Some("00-nope".into()),
            ..TaskSpec::default()
        };
        let e = bad.check_fields(&Permissive).unwrap_err().to_string();
        assert!(e.contains("traceparent"), "{e}");
    }
}

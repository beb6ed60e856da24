//! `grip plugins check`: after the loader accepts a plugin, call each declared capability once
//! with a small, valid input and judge what comes back.
//!
//! - **ok**: a well-formed answer.
//! - **warn**: the entry point answered with an ordinary error (no server, no key, a tool
//!   rejecting the made-up input): the plugin works, its environment may not. `--strict` makes
//!   these failures.
//! - **fail**: a panic, malformed JSON, a declared mode the plugin says it does not support,
//!   an internal error, or no answer within the time limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use plugin_api::ErrorKind;
use plugin_api::wire::{Event, EventKind, Message, PromptRequest, StreamDelta, ToolInvocation};
use serde_json::{Value, json};

use crate::error::CallError;
use crate::manifest::{Kind, Mode};
use crate::models::HostConfig;
use crate::plugin::Plugin;

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A well-formed answer; the text describes it.
    Ok(String),
    /// An ordinary error from a working entry point.
    Warn(String),
    /// A broken entry point.
    Fail(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// What was called (`prompt_driver sync prompt`).
    pub what: String,
    /// How it went.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// What to call the plugin with.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Config overrides (JSON object) for every kind.
    pub config: Option<Value>,
    /// Tool activity to call (default: the first).
    pub activity: Option<String>,
    /// Tool input (default: a minimal value made from the activity's schema).
    pub input: Option<Value>,
    /// Time limit per call.
    pub timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            config: None,
            activity: None,
            input: None,
            timeout: Duration::from_secs(60),
        }
    }
}

fn judge<T>(r: Result<T, CallError>, describe: impl FnOnce(T) -> String) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(describe(v)),
        Err(e) => {
            let broken = matches!(
                e.kind,
                ErrorKind::Panic | ErrorKind::Unsupported | ErrorKind::Internal
            ) || e.message.contains("malformed JSON");
            let text = format!("{} error: {}", e.kind.as_str(), e.message);
            if broken {
                Outcome::Fail(text)
            } else {
                Outcome::Warn(text)
            }
        }
    }
}

fn snippet(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// A minimal value that satisfies simple JSON Schemas: required properties only, the first
/// enum value, `const`, the minimum of numbers, empty arrays.
pub fn sample_input(schema: &Value) -> Value {
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(d) = schema.get("default") {
        return d.clone();
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts.iter().find_map(Value::as_str).unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "null",
    };
    match ty {
        "object" => {
            let mut out = serde_json::Map::new();
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for name in required {
                let prop = schema
                    .pointer(&format!("/properties/{name}"))
                    .cloned()
                    .unwrap_or(json!({}));
                out.insert(name.to_owned(), sample_input(&prop));
            }
            Value::Object(out)
        }
        "string" => {
            let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
            Value::String("test".repeat((min as usize).div_ceil(4).max(1)))
        }
        "integer" => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.0)),
        "boolean" => json!(true),
        "array" => json!([]),
        _ => Value::Null,
    }
}

async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, CallError>>,
) -> Result<Result<T, CallError>, String> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| format!("no answer within {} s", limit.as_secs_f64()))
}

struct Report {
    lines: Vec<CheckLine>,
    timeout: Duration,
}

impl Report {
    async fn run<T: Send + 'static>(
        &mut self,
        what: String,
        f: impl std::future::Future<Output = Result<T, CallError>>,
        describe: impl FnOnce(T) -> String,
    ) {
        let start = Instant::now();
        let outcome = match timed(self.timeout, f).await {
            Ok(r) => judge(r, describe),
            Err(t) => Outcome::Fail(t),
        };
        self.lines.push(CheckLine {
            what,
            outcome,
            elapsed: start.elapsed(),
        });
    }

    fn fail(&mut self, what: String, message: String) {
        self.lines.push(CheckLine {
            what,
            outcome: Outcome::Fail(message),
            elapsed: Duration::ZERO,
        });
    }
}

/// Sync calls run on a blocking thread, so the time limit can still fire.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(CallError::host(
            "check",
            "call",
            ErrorKind::Panic,
            format!("the call panicked in the host: {e}"),
        )),
    }
}

fn describe_response(r: plugin_api::wire::PromptResponse) -> String {
    if r.message.tool_calls.is_empty() {
        format!("answered {:?}", snippet(&r.message.content))
    } else {
        format!("asked for {} tool call(s)", r.message.tool_calls.len())
    }
}

/// Calls each capability `plugin` declares once and reports.
pub async fn exercise(
    plugin: &Plugin,
    host: &HostConfig,
    options: &CheckOptions,
) -> Vec<CheckLine> {
    let mut report = Report {
        lines: Vec::new(),
        timeout: options.timeout,
    };
    if plugin.is(Kind::PromptDriver) {
        check_driver(&mut report, plugin, host, options).await;
    }
    if plugin.is(Kind::Tool) {
        check_tool(&mut report, plugin, options).await;
    }
    if plugin.is(Kind::EventListener) {
        check_listener(&mut report, plugin, options).await;
    }
    report.lines
}

/// One prompt in each mode the driver declares.
async fn check_driver(
    report: &mut Report,
    plugin: &Plugin,
    host: &HostConfig,
    options: &CheckOptions,
) {
    let driver = match host.new_driver(plugin, options.config.as_ref()) {
        Ok(driver) => driver,
        Err(e) => return report.fail("prompt_driver new".into(), e.to_string()),
    };
    let request = PromptRequest::new(vec![Message::user("Say hello in one word.")]);
    if plugin.can(Kind::PromptDriver, Mode::Sync) {
        let (d, r) = (driver.clone(), request.clone());
        report
            .run(
                "prompt_driver sync prompt".into(),
                blocking(move || d.prompt(&r)),
                describe_response,
            )
            .await;
    }
    if plugin.can(Kind::PromptDriver, Mode::Async) {
        report
            .run(
                "prompt_driver async prompt".into(),
                driver.prompt_async(&request),
                describe_response,
            )
            .await;
    }
    if plugin.can(Kind::PromptDriver, Mode::Stream) {
        let collect = async {
            let mut s = driver.stream(&request)?;
            let (mut items, mut text) = (0usize, String::new());
            while let Some(item) = s.next().await {
                items += 1;
                if let StreamDelta::Text { text: t } = item? {
                    text.push_str(&t);
                }
            }
            Ok((items, text))
        };
        report
            .run("prompt_driver stream".into(), collect, |(items, text)| {
                format!("{items} deltas, text {:?}", snippet(&text))
            })
            .await;
    }
}

/// One call of the chosen activity (default: the first) in each mode the tool declares.
async fn check_tool(report: &mut Report, plugin: &Plugin, options: &CheckOptions) {
    let tool = match plugin.new_tool(options.config.as_ref()) {
        Ok(tool) => tool,
        Err(e) => return report.fail("tool new".into(), e.to_string()),
    };
    let spec = tool.spec().clone();
    let activity = match &options.activity {
        Some(a) => spec.activities.iter().find(|x| &x.name == a),
        None => spec.activities.first(),
    };
    match activity {
        None => report.fail(
            "tool spec".into(),
            match &options.activity {
                Some(a) => format!("`{}` has no activity `{a}`", spec.name),
                None => format!("`{}` has no activities", spec.name),
            },
        ),
        Some(activity) => {
            let input = options
                .input
                .clone()
                .unwrap_or_else(|| sample_input(&activity.parameters));
            let inv = ToolInvocation {
                schema_version: plugin_api::wire::WIRE_VERSION,
                activity: activity.name.clone(),
                input: input.clone(),
                call_id: "check".into(),
            };
            let describe = |o: plugin_api::wire::ToolOutput| {
                format!(
                    "{} {:?}",
                    if o.is_error {
                        "error result"
                    } else {
                        "returned"
                    },
                    snippet(&o.content)
                )
            };
            let label = |mode: &str| format!("tool {mode} call {}({input})", activity.name);
            if plugin.can(Kind::Tool, Mode::Sync) {
                let (t, i) = (tool.clone(), inv.clone());
                report
                    .run(label("sync"), blocking(move || t.call(&i)), describe)
                    .await;
            }
            if plugin.can(Kind::Tool, Mode::Async) {
                report
                    .run(label("async"), tool.call_async(&inv), describe)
                    .await;
            }
        }
    }
}

/// One event published and flushed in each mode the listener declares.
async fn check_listener(report: &mut Report, plugin: &Plugin, options: &CheckOptions) {
    let listener = match plugin.new_listener(options.config.as_ref()) {
        Ok(listener) => listener,
        Err(e) => return report.fail("event_listener new".into(), e.to_string()),
    };
    let events = Arc::new(vec![Event::new(
        "check-task",
        "check-run",
        EventKind::StartTask {
            input: "grip plugins check".into(),
        },
    )]);
    if plugin.can(Kind::EventListener, Mode::Sync) {
        let (l, e) = (listener.clone(), Arc::clone(&events));
        report
            .run(
                "event_listener sync publish + flush".into(),
                blocking(move || {
                    l.publish(&e)?;
                    l.flush()
                }),
                |()| "accepted 1 event".into(),
            )
            .await;
    }
    if plugin.can(Kind::EventListener, Mode::Async) {
        let run = async {
            listener.publish_async(&events).await?;
            listener.flush_async().await
        };
        report
            .run("event_listener async publish + flush".into(), run, |()| {
                "accepted 1 event".into()
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_inputs_satisfy_simple_schemas() {
        let schema = json!({"type": "object", "properties": {
            "text": {"type": "string", "minLength": 6},
            "n": {"type": "integer", "minimum": 3},
            "mode": {"enum": ["fast", "slow"]},
            "opt": {"type": "string"}
        }, "required": ["text", "n", "mode"]});
        assert_eq!(
            sample_input(&schema),
            json!({"text": "testtest", "n": 3, "mode": "fast"})
        );
    }
}

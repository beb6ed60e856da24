//! `grip plugins check`: after the loader accepts a plugin, call each declared capability once
//! (every activity of a tool) with a small input valid by its schema, and judge what comes back.
//!
//! - **ok**: a well-formed answer.
//! - **warn**: the entry point answered with an ordinary error (no server, no key), a tool gave an
//!   error result, or no valid input could be made from an activity's schema: the plugin works,
//!   its environment or the made-up input may not. `--strict` makes these failures.
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
    /// The only tool activity to call (default: every one).
    pub activity: Option<String>,
    /// Tool input (default: a small value made from each activity's schema).
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

/// A small value made to satisfy a JSON Schema: required properties only, `const`, the first
/// `enum` value or `default`, the first `anyOf` / `oneOf` branch, a non-null type first, the
/// bounds of strings, numbers and arrays. The caller checks it against the schema (what this
/// cannot satisfy, such as a `pattern`, is reported, not sent).
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
    if let Some(branch) = ["anyOf", "oneOf"]
        .iter()
        .find_map(|k| schema.get(*k).and_then(Value::as_array))
        .and_then(|b| b.iter().find(|s| s.get("type") != Some(&json!("null"))))
    {
        return sample_input(branch);
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "null",
    };
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
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
            let min = num("minLength").unwrap_or(0.0) as usize;
            let max = num("maxLength").map_or(usize::MAX, |m| m as usize);
            let len = min.max(4).min(max);
            Value::String("test".chars().cycle().take(len).collect())
        }
        "integer" => {
            let n = num("minimum")
                .or_else(|| num("exclusiveMinimum").map(|m| m.floor() + 1.0))
                .unwrap_or(1.0);
            json!(n.ceil() as i64)
        }
        "number" => json!(
            num("minimum")
                .or_else(|| num("exclusiveMinimum").map(|m| m + 1.0))
                .unwrap_or(1.0)
        ),
        "boolean" => json!(true),
        "array" => {
            let item = schema.get("items").map(sample_input).unwrap_or(Value::Null);
            let n = num("minItems").unwrap_or(0.0) as usize;
            Value::Array(vec![item; n])
        }
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

    fn warn(&mut self, what: String, message: String) {
        self.lines.push(CheckLine {
            what,
            outcome: Outcome::Warn(message),
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

/// Every activity (or the one asked for), called once in each mode the tool declares, with
/// input made from its schema and checked against it the way the host checks a model's call.
async fn check_tool(report: &mut Report, plugin: &Plugin, options: &CheckOptions) {
    let tool = match plugin.new_tool(options.config.as_ref()) {
        Ok(tool) => tool,
        Err(e) => return report.fail("tool new".into(), e.to_string()),
    };
    let spec = tool.spec().clone();
    let activities: Vec<_> = match &options.activity {
        Some(a) => spec.activities.iter().filter(|x| &x.name == a).collect(),
        None => spec.activities.iter().collect(),
    };
    if activities.is_empty() {
        let why = match &options.activity {
            Some(a) => format!("`{}` has no activity `{a}`", spec.name),
            None => format!("`{}` has no activities", spec.name),
        };
        return report.fail("tool spec".into(), why);
    }
    for activity in activities {
        let label = |mode: &str| format!("tool {mode} {}", activity.name);
        let input = match &options.input {
            Some(i) => i.clone(),
            None => sample_input(&activity.parameters),
        };
        if let Err(why) = plugin_api::validation::compile(&activity.parameters)
            .and_then(|v| plugin_api::validation::check_arguments(&v, &activity.name, &input))
        {
            let what = if options.input.is_some() {
                "the --input is refused"
            } else {
                "no valid input could be made from the schema (give one with --activity and --input)"
            };
            report.warn(label("input"), format!("{what}: {why}"));
            continue;
        }
        let inv = ToolInvocation {
            schema_version: plugin_api::wire::WIRE_VERSION,
            activity: activity.name.clone(),
            input: input.clone(),
            call_id: "check".into(),
        };
        let label = |mode: &str| format!("tool {mode} call {}({input})", activity.name);
        if plugin.can(Kind::Tool, Mode::Sync) {
            let (t, i) = (tool.clone(), inv.clone());
            let call = async move { blocking(move || t.call(&i)).await.and_then(tool_result) };
            report.run(label("sync"), call, describe_output).await;
        }
        if plugin.can(Kind::Tool, Mode::Async) {
            let call = async { tool.call_async(&inv).await.and_then(tool_result) };
            report.run(label("async"), call, describe_output).await;
        }
    }
}

/// An error result is the tool working as designed on input it did not like: a warning, which
/// `--strict` makes a failure.
fn tool_result(o: plugin_api::wire::ToolOutput) -> Result<plugin_api::wire::ToolOutput, CallError> {
    if o.is_error {
        Err(CallError::host(
            "check",
            "call",
            ErrorKind::InvalidInput,
            format!("error result {:?}", snippet(&o.content)),
        ))
    } else {
        Ok(o)
    }
}

fn describe_output(o: plugin_api::wire::ToolOutput) -> String {
    match o.structured {
        Some(_) => format!("returned structured {:?}", snippet(&o.content)),
        None => format!("returned {:?}", snippet(&o.content)),
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
            json!({"text": "testte", "n": 3, "mode": "fast"})
        );
    }

    #[test]
    fn sample_inputs_satisfy_the_schemas_schemars_derives() {
        let schema = json!({"type": "object", "properties": {
            "code": {"type": "string", "maxLength": 2},
            "when": {"type": ["string", "null"]},
            "unit": {"oneOf": [{"const": "m"}, {"const": "km"}]},
            "n": {"type": "integer", "exclusiveMinimum": 0},
            "xs": {"type": "array", "items": {"type": "number"}, "minItems": 2}
        }, "required": ["code", "when", "unit", "n", "xs"], "additionalProperties": false});
        let input = sample_input(&schema);
        assert_eq!(
            input,
            json!({"code": "te", "when": "test", "unit": "m", "n": 1, "xs": [1.0, 1.0]})
        );
        let v = plugin_api::validation::compile(&schema).unwrap();
        plugin_api::validation::check_arguments(&v, "f", &input).unwrap();
    }
}

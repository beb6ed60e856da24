//! An event listener driver that prints events for people: streamed text inline as it comes,
//! one short line for everything else. When a driver restarts a cut stream, a `↻ attempt N`
//! line says that the text printed before it is void.
//!
//! ```toml
//! [config]
//! output = "stdout"      # or "stderr"
//! text_only = false      # only the streamed text (and final answers when not streamed)
//! ```

use std::io::Write;
use std::sync::Mutex;

use plugin_api::prelude::*;
use serde::Deserialize;

/// Configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "stdout")]
    output: String,
    #[serde(default)]
    text_only: bool,
}

fn stdout() -> String {
    "stdout".into()
}

/// The listener driver.
pub struct Console {
    to_stderr: bool,
    text_only: bool,
    /// Whether the cursor is in the middle of streamed text.
    mid_line: Mutex<bool>,
}

fn short(s: &str, max: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > max {
        format!("{}...", one_line.chars().take(max).collect::<String>())
    } else {
        one_line
    }
}

impl Console {
    fn render(&self, events: &[Event], mid_line: &mut bool) -> String {
        let mut out = String::new();
        let line = |out: &mut String, mid: &mut bool, text: String| {
            if *mid {
                out.push('\n');
                *mid = false;
            }
            out.push_str(&text);
            out.push('\n');
        };
        for e in events {
            match &e.kind {
                EventKind::TextChunk { token } => {
                    out.push_str(token);
                    *mid_line = true;
                }
                // Printed text cannot be taken back: say that it is void, in text-only mode too
                // (a reader of the text must know where the answer starts again).
                EventKind::PromptRetry { attempt, reason } => line(
                    &mut out,
                    mid_line,
                    format!(
                        "↻ attempt {attempt}, the text above is void: {}",
                        short(reason, 160)
                    ),
                ),
                EventKind::TaskRetry { attempt, reason } => line(
                    &mut out,
                    mid_line,
                    format!(
                        "↻ task run {attempt}, everything above is void: {}",
                        short(reason, 160)
                    ),
                ),
                EventKind::FinishPrompt {
                    output,
                    error,
                    usage,
                } if !self.text_only => match error {
                    // The task's finish line that follows carries the error: say it once.
                    Some(_) => line(&mut out, mid_line, "✖ prompt failed".to_owned()),
                    None => {
                        if !*mid_line && !output.is_empty() {
                            line(&mut out, mid_line, output.clone());
                        }
                        line(
                            &mut out,
                            mid_line,
                            format!(
                                "  [{} in / {} out tokens]",
                                usage.input_tokens, usage.output_tokens
                            ),
                        );
                    }
                },
                EventKind::FinishPrompt {
                    output,
                    error: None,
                    ..
                } if !*mid_line && !output.is_empty() => {
                    line(&mut out, mid_line, output.clone());
                }
                _ if self.text_only => {}
                EventKind::StartTask { input } => {
                    line(&mut out, mid_line, format!("▶ {}", short(input, 120)))
                }
                EventKind::StartActionsSubtask { calls, .. } => {
                    for c in calls {
                        line(
                            &mut out,
                            mid_line,
                            format!("→ {}({})", c.name, short(&c.arguments.to_string(), 120)),
                        );
                    }
                }
                EventKind::FinishActionsSubtask { results, .. } => {
                    for r in results {
                        let mark = if r.is_error { "✖" } else { "←" };
                        line(
                            &mut out,
                            mid_line,
                            format!("{mark} {}", short(&r.content, 160)),
                        );
                    }
                }
                EventKind::FinishTask {
                    error: Some(err), ..
                } => line(
                    &mut out,
                    mid_line,
                    format!("■ task failed: {}", short(err, 200)),
                ),
                EventKind::FinishTask { usage, .. } => line(
                    &mut out,
                    mid_line,
                    format!(
                        "■ done [{} in / {} out tokens]",
                        usage.input_tokens, usage.output_tokens
                    ),
                ),
                _ => {}
            }
        }
        out
    }

    fn print(&self, events: &[Event]) -> Result<(), PluginError> {
        let mut mid = self.mid_line.lock().unwrap_or_else(|e| e.into_inner());
        let text = self.render(events, &mut mid);
        let result = if self.to_stderr {
            let mut h = std::io::stderr().lock();
            h.write_all(text.as_bytes()).and_then(|()| h.flush())
        } else {
            let mut h = std::io::stdout().lock();
            h.write_all(text.as_bytes()).and_then(|()| h.flush())
        };
        result.map_err(|e| PluginError::upstream(format!("cannot write to the console: {e}")))
    }
}

impl EventListenerDriver for Console {
    type Config = Config;
    const SYNC: bool = true;
    const ASYNC: bool = true;

    fn new(config: Config) -> Result<Self, PluginError> {
        let to_stderr = match config.output.as_str() {
            "stdout" => false,
            "stderr" => true,
            other => {
                return Err(PluginError::config(format!(
                    "`output` must be stdout or stderr, got {other:?}"
                )));
            }
        };
        Ok(Self {
            to_stderr,
            text_only: config.text_only,
            mid_line: Mutex::new(false),
        })
    }

    fn publish(&self, events: Vec<Event>) -> Result<(), PluginError> {
        self.print(&events)
    }

    async fn publish_async(&self, events: Vec<Event>) -> Result<(), PluginError> {
        self.print(&events)
    }
}

plugin_api::export_plugin! {
    id: "console",
    description: "Prints events for people: streamed text inline",
    listener: Console,
}

//! Stream aggregation: a driver's deltas assembled into one response, each turned into its
//! chunk event on the way; a `Restart` voids what came before it.

use plugin_api::wire::{
    EventKind, Message, PromptResponse, StreamDelta, ToolCall, Usage, WIRE_VERSION,
};
use serde_json::Value;

use super::TaskError;

/// Assembles stream deltas into a response, and turns each into its chunk event.
pub(crate) struct StreamAggregator {
    plugin: String,
    text: String,
    /// Tool-call parts by index: ordered, and indices need not be contiguous.
    calls: std::collections::BTreeMap<u32, (Option<String>, Option<String>, String)>,
    usage: Usage,
    finish: Option<String>,
}

impl StreamAggregator {
    pub(crate) fn new(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
            text: String::new(),
            calls: Default::default(),
            usage: Usage::default(),
            finish: None,
        }
    }

    pub(crate) fn push(&mut self, delta: StreamDelta) -> Option<EventKind> {
        match delta {
            StreamDelta::Text { text } => {
                self.text.push_str(&text);
                Some(EventKind::TextChunk { token: text })
            }
            StreamDelta::ToolCall {
                index,
                id,
                name,
                arguments,
            } => {
                let slot = self.calls.entry(index).or_default();
                if id.is_some() {
                    slot.0 = id.clone();
                }
                if name.is_some() {
                    slot.1 = name.clone();
                }
                slot.2.push_str(&arguments);
                Some(EventKind::ActionChunk {
                    index,
                    tag: id,
                    name,
                    partial_input: arguments,
                })
            }
            StreamDelta::Usage { usage } => {
                self.usage = usage;
                None
            }
            StreamDelta::Finish { reason } => {
                self.finish = Some(reason);
                None
            }
            // The failed attempt's text, calls and usage are void; listeners are told so.
            StreamDelta::Restart { attempt, reason } => {
                *self = Self::new(&self.plugin);
                Some(EventKind::PromptRetry { attempt, reason })
            }
        }
    }

    pub(crate) fn finish(self) -> Result<PromptResponse, TaskError> {
        let mut message = Message::assistant(self.text);
        for (i, (id, name, args)) in self.calls.into_values().enumerate() {
            let Some(name) = name else {
                return Err(TaskError::Stream {
                    plugin: self.plugin,
                    message: format!("tool call #{i} has no name"),
                });
            };
            // Arguments that are not JSON travel as a JSON string, as drivers do for a whole
            // response: the tool dispatch sends the problem back to the model for another turn.
            let arguments = if args.trim().is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_str(&args).unwrap_or(Value::String(args))
            };
            message.tool_calls.push(ToolCall {
                id: id.unwrap_or_else(|| format!("call_{i}")),
                name,
                arguments,
            });
        }
        Ok(PromptResponse {
            schema_version: WIRE_VERSION,
            message,
            usage: self.usage,
            finish_reason: self.finish,
            id: None,
            model: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_aggregation_assembles_interleaved_tool_calls() {
        let mut agg = StreamAggregator::new("p");
        let deltas = [
            StreamDelta::Text { text: "Hi".into() },
            StreamDelta::ToolCall {
                index: 1,
                id: Some("b".into()),
                name: Some("B".into()),
                arguments: "{\"y\":".into(),
            },
            StreamDelta::ToolCall {
                index: 0,
                id: Some("a".into()),
                name: Some("A".into()),
                arguments: "{\"x\"".into(),
            },
            StreamDelta::ToolCall {
                index: 0,
                id: None,
                name: None,
                arguments: ":1}".into(),
            },
            StreamDelta::ToolCall {
                index: 1,
                id: None,
                name: None,
                arguments: "2}".into(),
            },
            StreamDelta::Usage {
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                },
            },
        ];
        let events: Vec<_> = deltas.into_iter().filter_map(|d| agg.push(d)).collect();
        assert_eq!(events.len(), 5);
        let r = agg.finish().unwrap();
        assert_eq!(r.message.content, "Hi");
        assert_eq!(
            r.message.tool_calls[0].arguments,
            serde_json::json!({"x": 1})
        );
        assert_eq!(
            r.message.tool_calls[1].arguments,
            serde_json::json!({"y": 2})
        );
        assert_eq!(r.usage.output_tokens, 4);
    }

    #[test]
    fn sparse_tool_call_indices_and_usage_snapshots() {
        // Anthropic numbers content blocks: text at 0, tools at 1 and 3.
        let mut agg = StreamAggregator::new("p");
        for d in [
            StreamDelta::Usage {
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 1,
                },
            },
            StreamDelta::ToolCall {
                index: 3,
                id: Some("t3".into()),
                name: Some("B".into()),
                arguments: String::new(),
            },
            StreamDelta::ToolCall {
                index: 1,
                id: Some("t1".into()),
                name: Some("A".into()),
                arguments: "{}".into(),
            },
            StreamDelta::Usage {
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 7,
                },
            },
        ] {
            agg.push(d);
        }
        let r = agg.finish().unwrap();
        let ids: Vec<&str> = r.message.tool_calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["t1", "t3"]);
        assert_eq!(r.message.tool_calls[1].arguments, serde_json::json!({}));
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (10, 7));
    }

    #[test]
    fn malformed_tool_call_arguments_travel_as_a_string_for_the_model_to_fix() {
        let mut agg = StreamAggregator::new("p");
        agg.push(StreamDelta::ToolCall {
            index: 0,
            id: None,
            name: Some("A".into()),
            arguments: "{\"x\":".into(),
        });
        let r = agg.finish().unwrap();
        assert_eq!(
            r.message.tool_calls[0].arguments,
            Value::String("{\"x\":".into())
        );
    }

    #[test]
    fn a_restart_voids_what_came_before_and_becomes_a_prompt_retry_event() {
        let mut agg = StreamAggregator::new("p");
        agg.push(StreamDelta::Text {
            text: "void".into(),
        });
        agg.push(StreamDelta::ToolCall {
            index: 0,
            id: Some("x".into()),
            name: Some("A".into()),
            arguments: "{".into(),
        });
        let e = agg.push(StreamDelta::Restart {
            attempt: 2,
            reason: "cut".into(),
        });
        assert_eq!(
            e,
            Some(EventKind::PromptRetry {
                attempt: 2,
                reason: "cut".into()
            })
        );
        agg.push(StreamDelta::Text {
            text: "whole".into(),
        });
        let r = agg.finish().unwrap();
        assert_eq!(r.message.content, "whole");
        assert!(r.message.tool_calls.is_empty());
    }
}

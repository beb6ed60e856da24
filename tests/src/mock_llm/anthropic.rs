//! Replies in Anthropic's Messages wire format: message bodies, error bodies and the SSE event
//! sequence (`message_start`, `content_block_*`, `message_delta`, `message_stop`, `ping`,
//! `error`), each event a whole `event:` + `data:` frame.

use serde_json::{Value, json};

use super::{After, Reply, words};

/// A `message` body with content blocks.
pub fn message(content: Vec<Value>, stop_reason: &str) -> Value {
    json!({
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "test-model",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": 11, "cache_creation_input_tokens": 2,
                  "cache_read_input_tokens": 3, "output_tokens": 5}
    })
}

/// A reply with one text block.
pub fn text(text: &str) -> Reply {
    Reply::Json {
        status: 200,
        body: message(vec![json!({"type": "text", "text": text})], "end_turn"),
        headers: Vec::new(),
    }
}

/// A reply with `tool_use` blocks: `(id, name, input)`, after an optional text block.
pub fn tool_uses(preamble: &str, calls: &[(&str, &str, Value)]) -> Reply {
    let mut content = Vec::new();
    if !preamble.is_empty() {
        content.push(json!({"type": "text", "text": preamble}));
    }
    for (id, name, input) in calls {
        content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Reply::Json {
        status: 200,
        body: message(content, "tool_use"),
        headers: Vec::new(),
    }
}

/// An error status with an Anthropic error body.
pub fn error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::Json {
        status,
        body: json!({"type": "error", "error": {"type": kind, "message": message}}),
        headers: Vec::new(),
    }
}

/// One SSE frame.
pub fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}")
}

/// `message_start` with the input-token count (and one output token, as the API sends).
pub fn message_start(input_tokens: u64) -> String {
    event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_test", "type": "message",
            "role": "assistant", "content": [], "model": "test-model", "stop_reason": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
    )
}

/// Opens a text block.
pub fn text_start(index: u64) -> String {
    event(
        "content_block_start",
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
    )
}

/// More text in block `index`.
pub fn text_delta(index: u64, text: &str) -> String {
    event(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
    )
}

/// Opens a `tool_use` block.
pub fn tool_start(index: u64, id: &str, name: &str) -> String {
    event(
        "content_block_start",
        json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
    )
}

/// A piece of a tool's input JSON in block `index`.
pub fn json_delta(index: u64, partial: &str) -> String {
    event(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": partial}}),
    )
}

/// Closes block `index`.
pub fn block_stop(index: u64) -> String {
    event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    )
}

/// `message_delta` with the stop reason and the cumulative output-token count.
pub fn message_delta(stop_reason: &str, output_tokens: u64) -> String {
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}}),
    )
}

/// `message_stop`: the end of a proper stream.
pub fn message_stop() -> String {
    event("message_stop", json!({"type": "message_stop"}))
}

/// A keep-alive.
pub fn ping() -> String {
    event("ping", json!({"type": "ping"}))
}

/// An error event in the middle of a stream.
pub fn stream_error(kind: &str, message: &str) -> String {
    event(
        "error",
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// A whole streamed text answer in the given pieces: 9 input tokens, one output token a piece.
pub fn sse_text(pieces: &[&str]) -> Reply {
    let mut events = vec![message_start(9), text_start(0), ping()];
    events.extend(pieces.iter().map(|p| text_delta(0, p)));
    events.push(block_stop(0));
    events.push(message_delta("end_turn", pieces.len() as u64));
    events.push(message_stop());
    Reply::Sse {
        events,
        delay_ms: 0,
        after: After::End,
    }
}

/// The text of a message's content (a string, or the text of its text blocks).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// The first `tool_result` block of a message, if any.
fn tool_result(message: &Value) -> Option<&Value> {
    message["content"]
        .as_array()?
        .iter()
        .find(|b| b["type"] == "tool_result")
}

/// What the server answers when nothing is scripted.
pub(super) fn default_reply(json: &Value) -> Reply {
    let messages = json["messages"].as_array().cloned().unwrap_or_default();
    let user = messages
        .iter()
        .rev()
        .filter(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let answered = messages.iter().any(|m| tool_result(m).is_some());
    if let (Some(expr), false) = (user.strip_prefix("calc: "), answered) {
        return tool_uses(
            "",
            &[(
                "toolu_calc",
                "Calculator_calculate",
                json!({"expression": expr}),
            )],
        );
    }
    let text = match messages.last().and_then(tool_result) {
        Some(r) => format!("the result is {}", content_text(&r["content"])),
        None => format!("echo: {user}"),
    };
    if json["stream"] == true {
        sse_text(&words(&text))
    } else {
        self::text(&text)
    }
}

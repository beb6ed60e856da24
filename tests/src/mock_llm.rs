//! A real HTTP server on 127.0.0.1 speaking an LLM wire format (OpenAI chat completions or
//! Anthropic Messages), SSE included, with scripted replies and the same fault modes for both.
//! It records every request it receives.
//!
//! With no scripted reply queued it answers like a model would: "echo: <last user message>",
//! as JSON or, when the request asks for a stream, as SSE events in the format's own sequence. A
//! user message `calc: <expression>` gets a `Calculator_calculate` tool call first, then "the
//! result is <tool result>" (for load tests of the tool round trip).

pub mod anthropic;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

/// What happens after the scripted SSE events were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// The body ends normally.
    End,
    /// The connection stays open and silent.
    Hang,
    /// The connection is dropped.
    Drop,
}

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A JSON body with a status and extra headers.
    Json {
        /// HTTP status.
        status: u16,
        /// Body.
        body: Value,
        /// Extra headers (`Retry-After` ...).
        headers: Vec<(String, String)>,
    },
    /// A raw text body (for malformed JSON).
    Raw {
        /// HTTP status.
        status: u16,
        /// Body.
        body: String,
    },
    /// An SSE stream: each string is one event, sent `delay_ms` apart: either its `data` alone,
    /// or a whole frame starting with `event:`.
    Sse {
        /// Events, in order (include the format's end marker to end properly).
        events: Vec<String>,
        /// Delay before each event.
        delay_ms: u64,
        /// What happens after the last event.
        after: After,
    },
    /// Never answers.
    Hang,
}

impl Reply {
    /// A completion with text.
    pub fn text(text: &str) -> Self {
        Reply::Json {
            status: 200,
            body: completion(json!({"role": "assistant", "content": text}), "stop"),
            headers: Vec::new(),
        }
    }

    /// A completion with tool calls: `(id, name, arguments JSON text)`.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Self {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
        Reply::Json {
            status: 200,
            body: completion(
                json!({"role": "assistant", "content": null, "tool_calls": calls}),
                "tool_calls",
            ),
            headers: Vec::new(),
        }
    }

    /// An error status with an OpenAI-style error body.
    pub fn error(status: u16, message: &str, code: &str) -> Self {
        Reply::Json {
            status,
            body: json!({"error": {"message": message, "type": "error", "code": code}}),
            headers: Vec::new(),
        }
    }

    /// Adds a header to a JSON reply.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Reply::Json { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    /// A streamed text answer in the given pieces, with usage and `[DONE]`.
    pub fn sse_text(pieces: &[&str]) -> Self {
        let mut events: Vec<String> = pieces.iter().map(|p| text_chunk(p)).collect();
        events.push(
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string(),
        );
        events.push(usage_chunk(7, pieces.len() as u64));
        events.push("[DONE]".into());
        Reply::Sse {
            events,
            delay_ms: 0,
            after: After::End,
        }
    }
}

/// A `chat.completion` body.
pub fn completion(message: Value, finish_reason: &str) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    })
}

/// A stream chunk with text.
pub fn text_chunk(text: &str) -> String {
    json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        .to_string()
}

/// A stream chunk with part of a tool call.
pub fn tool_chunk(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> String {
    let mut call = json!({"index": index, "function": {"arguments": args}});
    if let Some(id) = id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    if let Some(name) = name {
        call["function"]["name"] = json!(name);
    }
    json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}]})
        .to_string()
}

/// The final usage chunk (no choices).
pub fn usage_chunk(prompt: u64, completion: u64) -> String {
    json!({"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}).to_string()
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its JSON body.
    pub body: Value,
}

/// The wire format a mock server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// OpenAI chat completions, on `/v1/chat/completions`.
    #[default]
    OpenAi,
    /// Anthropic Messages, on `/v1/messages`.
    Anthropic,
}

/// Faults injected into default (unscripted) replies, chosen per request by a seeded hash of
/// the request's number, so a run is reproducible: `rate_limit_pct` percent of requests get a
/// 429, and `truncate_pct` percent of the remaining streams are cut half-way (the connection
/// dropped or the body ended without its end marker, alternately).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Share of requests answered with 429, in percent.
    pub rate_limit_pct: u64,
    /// Share of streamed answers cut before their end, in percent.
    pub truncate_pct: u64,
    /// Seed of the choice.
    pub seed: u64,
}

impl Faults {
    /// Reads `rate_limit=20 truncate=10 seed=1` style arguments; `None` when none is given.
    pub fn from_args(args: &[String]) -> Option<Self> {
        let mut f = Faults::default();
        let mut any = false;
        for a in args {
            let Some((k, v)) = a.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().ok()?;
            match k {
                "rate_limit" => f.rate_limit_pct = v,
                "truncate" => f.truncate_pct = v,
                "seed" => f.seed = v,
                _ => continue,
            }
            any = true;
        }
        any.then_some(f)
    }

    /// splitmix64 of the request number: two independent draws in 0..100 and a coin.
    fn draw(&self, n: u64) -> (u64, u64, bool) {
        let mut z = self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % 100, (z >> 20) % 100, (z >> 40) & 1 == 1)
    }

    /// The reply with this request's fault, if it draws one.
    fn apply(&self, n: u64, wire: Wire, reply: Reply) -> Reply {
        let (a, b, drop) = self.draw(n);
        if a < self.rate_limit_pct {
            return match wire {
                Wire::OpenAi => Reply::error(429, "rate limited (injected)", "rate_limit_exceeded"),
                Wire::Anthropic => {
                    anthropic::error(429, "rate_limit_error", "rate limited (injected)")
                }
            };
        }
        match reply {
            Reply::Sse {
                mut events,
                delay_ms,
                ..
            } if b < self.truncate_pct => {
                events.truncate(events.len() / 2);
                let after = if drop { After::Drop } else { After::End };
                Reply::Sse {
                    events,
                    delay_ms,
                    after,
                }
            }
            other => other,
        }
    }
}

#[derive(Default)]
struct MockState {
    wire: Wire,
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    /// Response bodies dropped before they were fully sent (the client went away).
    abandoned: AtomicUsize,
    /// Handlers or bodies still running.
    in_flight: AtomicUsize,
    /// Latency added before every default reply.
    default_latency_ms: AtomicUsize,
    /// Faults injected into default replies, and how many requests were numbered for them.
    faults: Mutex<Option<Faults>>,
    requests_seen: std::sync::atomic::AtomicU64,
}

/// The mock server. It runs until the process ends.
#[derive(Clone)]
pub struct MockLlm {
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<MockState>,
}

impl std::fmt::Debug for MockLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlm").field("addr", &self.addr).finish()
    }
}

struct InFlight(Arc<MockState>, bool);

impl InFlight {
    fn new(state: &Arc<MockState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(state), false)
    }
}

impl InFlight {
    fn complete(&mut self) {
        self.1 = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.1 {
            self.0.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl MockLlm {
    /// Starts an OpenAI-speaking server (see [`MockLlm::start_with`]).
    pub fn start() -> Self {
        Self::start_with(Wire::OpenAi)
    }

    /// Starts an Anthropic-speaking server (see [`MockLlm::start_with`]).
    pub fn start_anthropic() -> Self {
        Self::start_with(Wire::Anthropic)
    }

    /// Starts a server speaking `wire` on 127.0.0.1 with a port of its own, on its own thread
    /// and runtime (so it outlives any test's runtime).
    pub fn start_with(wire: Wire) -> Self {
        let state = Arc::new(MockState {
            wire,
            ..MockState::default()
        });
        let path = match wire {
            Wire::OpenAi => "/v1/chat/completions",
            Wire::Anthropic => "/v1/messages",
        };
        let addr = crate::serve_router(
            Router::new()
                .route(path, post(handle))
                .with_state(Arc::clone(&state)),
        );
        Self { addr, state }
    }

    /// The base URL to configure a driver with: `http://127.0.0.1:PORT/v1` for OpenAI,
    /// `http://127.0.0.1:PORT` for Anthropic (its driver appends `/v1/messages`).
    pub fn base_url(&self) -> String {
        match self.state.wire {
            Wire::OpenAi => format!("http://{}/v1", self.addr),
            Wire::Anthropic => format!("http://{}", self.addr),
        }
    }

    /// Queues replies, used in order by the next requests.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.replies.lock().unwrap().extend(replies);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many responses were abandoned by the client before they completed.
    pub fn abandoned(&self) -> usize {
        self.state.abandoned.load(Ordering::SeqCst)
    }

    /// How many requests are being answered right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Adds latency to every default (unscripted) reply.
    pub fn set_default_latency(&self, ms: usize) {
        self.state.default_latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Injects `faults` into every default (unscripted) reply from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = Some(faults);
    }
}

fn last_user(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|ms| ms.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// What the OpenAI server answers when nothing is scripted.
fn openai_default(json: &Value) -> Reply {
    let user = last_user(json);
    let answered = json["messages"]
        .as_array()
        .is_some_and(|ms| ms.iter().any(|m| m["role"] == "tool"));
    // `calc: <expression>` asks for one Calculator round trip, for load tests.
    if let (Some(expr), false) = (user.strip_prefix("calc: "), answered) {
        let args = json!({"expression": expr}).to_string();
        return Reply::tool_calls(&[("call_calc", "Calculator_calculate", args.as_str())]);
    }
    let text = match json["messages"].as_array().and_then(|ms| ms.last()) {
        Some(m) if m["role"] == "tool" => {
            format!("the result is {}", m["content"].as_str().unwrap_or(""))
        }
        _ => format!("echo: {user}"),
    };
    if json["stream"] == true {
        Reply::sse_text(&words(&text))
    } else {
        Reply::text(&text)
    }
}

/// `text` in word-sized pieces (each keeps its trailing space).
pub fn words(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

async fn handle(State(state): State<Arc<MockState>>, headers: HeaderMap, body: String) -> Response {
    let mut guard = InFlight::new(&state);
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        headers,
        body: json.clone(),
    });
    let scripted = state.replies.lock().unwrap().pop_front();
    let reply = match scripted {
        Some(r) => r,
        None => {
            let latency = state.default_latency_ms.load(Ordering::SeqCst) as u64;
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            let reply = match state.wire {
                Wire::OpenAi => openai_default(&json),
                Wire::Anthropic => anthropic::default_reply(&json),
            };
            let n = state.requests_seen.fetch_add(1, Ordering::SeqCst);
            match *state.faults.lock().unwrap() {
                Some(f) => f.apply(n, state.wire, reply),
                None => reply,
            }
        }
    };
    match reply {
        Reply::Json {
            status,
            body,
            headers,
        } => {
            guard.complete();
            let mut b = Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .header("content-type", "application/json");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Body::from(body.to_string())).unwrap()
        }
        Reply::Raw { status, body } => {
            guard.complete();
            Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        }
        Reply::Hang => {
            futures::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Sse {
            events,
            delay_ms,
            after,
        } => {
            let body = futures::stream::unfold(
                (events.into_iter(), guard),
                move |(mut it, mut guard)| async move {
                    match it.next() {
                        Some(data) => {
                            if delay_ms > 0 {
                                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                            }
                            let frame = if data.starts_with("event:") {
                                format!("{data}\n\n")
                            } else {
                                format!("data: {data}\n\n")
                            };
                            Some((
                                Ok::<_, std::io::Error>(bytes::Bytes::from(frame)),
                                (it, guard),
                            ))
                        }
                        None => match after {
                            After::End => {
                                guard.complete();
                                None
                            }
                            After::Hang => {
                                futures::future::pending::<()>().await;
                                None
                            }
                            After::Drop => {
                                // Let what was sent reach the client before the connection goes.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                guard.complete();
                                Some((
                                    Err(std::io::Error::other("dropped on purpose")),
                                    (it, guard),
                                ))
                            }
                        },
                    }
                },
            )
            .boxed();
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(body))
                .unwrap()
        }
    }
}

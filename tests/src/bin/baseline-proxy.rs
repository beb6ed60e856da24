//! What a user could hand-write instead of running grip: a minimal axum handler that takes the
//! same `POST /v1/tasks` body, makes the same OpenAI-format upstream call with reqwest and
//! answers with the output. The host-cost bench measures the daemon against it.
//!
//! It does only what a careful hand-written proxy would: parse the request, post the chat
//! body with a request timeout, parse the answer, reply. No events, no plugins, no limits.
//! Prints its base URL, serves until stdin closes.
//!
//! Run with `cargo run -p e2e --bin baseline-proxy BASE_URL` (the base the openai driver takes,
//! `http://HOST:PORT/v1`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    url: String,
}

async fn task(State(up): State<Upstream>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let Some(input) = body.get("input").and_then(Value::as_str) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "`input` must be a string"})),
        );
    };
    // With tools, a task is two model calls (the tool call, then the answer): the least a
    // hand-written tool loop makes.
    let rounds = match body.get("tools").and_then(Value::as_array) {
        Some(tools) if !tools.is_empty() => 2,
        _ => 1,
    };
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": input}]});
    let answer = async {
        let mut last = Value::Null;
        for _ in 0..rounds {
            let resp = up
                .client
                .post(&up.url)
                .timeout(Duration::from_secs(120))
                .json(&chat)
                .send()
                .await?
                .error_for_status()?;
            last = resp.json::<Value>().await?;
        }
        Ok::<_, reqwest::Error>(last)
    };
    match answer.await {
        Ok(v) => {
            let output = v["choices"][0]["message"]["content"].clone();
            (StatusCode::OK, Json(json!({"output": output})))
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

fn main() {
    let upstream = std::env::args()
        .nth(1)
        .expect("usage: baseline-proxy UPSTREAM_BASE_URL");
    let up = Upstream {
        client: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("the client"),
        url: format!("{}/chat/completions", upstream.trim_end_matches('/')),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("http://{}", listener.local_addr().expect("local addr"));
        let app = Router::new().route("/v1/tasks", post(task)).with_state(up);
        let server = axum::serve(listener, app);
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        });
        tokio::select! {
            r = server => r.expect("serve"),
            _ = stdin_closed => {}
        }
    });
}

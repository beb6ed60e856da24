//! The daemon's router in-process, axum style: an `AppState` made from parts (a registry of
//! real plugins loaded by the real loader, no environment, no socket), requests sent with
//! `tower::ServiceExt::oneshot`. The end-to-end tests in daemon.rs cover the same routes over
//! real HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use e2e::{ManifestSpec, artifacts, scripted};
use host::Registry;
use host::daemon::{AppState, DaemonConfig, router};
use serde_json::{Value, json};
use tower::ServiceExt;

fn registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    scripted("scripted").write(dir.path(), "scripted.toml");
    ManifestSpec::named("text-tools", "text_tools")
        .kind("tool", &["sync", "async"])
        .write(dir.path(), "text-tools.toml");
    Registry::load_dirs(&[dir.path().to_path_buf()], &artifacts().options())
}

fn loopback() -> SocketAddr {
    "127.0.0.1:8080".parse().unwrap()
}

fn state(config: DaemonConfig) -> Arc<AppState> {
    Arc::new(AppState::from_parts(config, registry(), None, loopback()).unwrap())
}

async fn post(state: &Arc<AppState>, body: Value) -> (StatusCode, Value) {
    let req = Request::post("/v1/tasks")
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router(Arc::clone(state)).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_through_the_router_in_process() {
    let s = state(DaemonConfig::default());
    let script = json!({"script": [
        {"tool_calls": [{"name": "TextTools_word_count", "arguments": {"text": "a b c"}}]},
        {"text": "3 words"}
    ]});
    let (status, v) = post(
        &s,
        json!({"driver": "scripted", "input": "count", "tools": ["text-tools"], "config": script}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["output"].as_str(), v["subtasks"].as_u64()),
        (Some("3 words"), Some(1))
    );
    assert_eq!(v["path"], "async");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_spec_is_checked_the_same_way_in_process() {
    let mut config = DaemonConfig::default();
    config.defaults.driver = Some("scripted".into());
    let s = state(config);
    let (status, v) = post(&s, json!({"input": "uses the default driver"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["output"], "echo: uses the default driver");
    let cases = [
        (
            json!({"input": " "}),
            StatusCode::BAD_REQUEST,
            "field `input`: must not be empty",
        ),
        (
            json!({"input": "x", "path": "sync"}),
            StatusCode::BAD_REQUEST,
            "unknown field `path`",
        ),
        (
            json!({"input": "x", "config": {"base_url": "http://10.0.0.1"}}),
            StatusCode::BAD_REQUEST,
            "field `config.base_url`: requests may not change `base_url` of plugin `scripted`",
        ),
        (
            json!({"input": "x", "tools": ["text-tools", "text-tools"]}),
            StatusCode::BAD_REQUEST,
            "`text-tools` is listed twice",
        ),
        (
            json!({"input": "x", "output_schema": {"type": 12}}),
            StatusCode::BAD_REQUEST,
            "field `output_schema`: invalid output schema",
        ),
        (
            json!({"input": "x", "tools": ["scripted"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tools: plugin `scripted` is not a tool",
        ),
    ];
    for (body, want, needle) in cases {
        let (status, v) = post(&s, body.clone()).await;
        assert_eq!(status, want, "{body} -> {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body} -> {msg}");
    }
}

#[test]
fn from_parts_still_refuses_a_public_address_without_a_token() {
    let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let e = AppState::from_parts(DaemonConfig::default(), registry(), None, public).unwrap_err();
    assert!(e.to_string().contains("without authentication"), "{e}");
    assert!(
        AppState::from_parts(
            DaemonConfig::default(),
            registry(),
            Some("t".into()),
            public
        )
        .is_ok()
    );
}

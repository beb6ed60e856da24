//! The daemon's trust boundary, tried as an attacker would: each test sends the attack as a real
//! request to a real daemon on 127.0.0.1, with a real HTTP server standing in for the place a
//! secret would be sent to (it records everything that arrives), and checks what got through.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use e2e::daemon::{Daemon, client, post, sse};
use e2e::{ManifestSpec, artifacts, scripted, serve_router};
use host::daemon::DaemonConfig;
use serde_json::{Value, json};

const SECRET: &str = "s3cr3t-AKIA-never-leaves";
const SECRET_VAR: &str = "E2E_SECURITY_SECRET";
const INTERNAL_REPLY: &str = "INTERNAL-ADMIN-REPLY: db password hunter2";

/// An HTTP server that records every request (headers and body) and answers 500 with an
/// "internal" body: the attacker's listener, or an internal service.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> (Self, String) {
        let rec = Self::default();
        let r = rec.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                let mut text = format!("{headers:?}\n");
                text.push_str(&String::from_utf8_lossy(&body));
                r.seen.lock().unwrap().push(text);
                (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_REPLY)
            }
        });
        let addr = serve_router(app);
        (rec, format!("http://{addr}"))
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The secret is in this process's environment (cargo sets it: `.cargo/config.toml`), as a
/// real key would be in the daemon's.
fn set_secret() {
    assert_eq!(
        std::env::var(SECRET_VAR).as_deref(),
        Ok(SECRET),
        "{SECRET_VAR} is set by .cargo/config.toml: run the tests with cargo from the workspace"
    );
}

/// A daemon config over the repository's own manifests: the first-party defaults, as shipped.
fn first_party() -> DaemonConfig {
    let a = artifacts();
    let mut c = DaemonConfig::default();
    c.plugins.manifest_dirs = vec![a.root.join("manifests")];
    c.plugins.lib_dirs = vec![a.lib_dir.clone()];
    c.server.bind = "127.0.0.1:0".parse().unwrap();
    c
}

/// A daemon config over manifests written in `dir`.
fn config_in(dir: &Path) -> DaemonConfig {
    let mut c = first_party();
    c.plugins.manifest_dirs = vec![dir.to_owned()];
    c
}

/// A jsonl listener on every request, writing to `file`.
fn record_events(c: &mut DaemonConfig, file: &Path) {
    let table: toml::Table =
        toml::from_str(&format!("path = {:?}", file.display().to_string())).unwrap();
    c.listeners = vec![host::daemon::config::GlobalListener {
        plugin: "jsonl".into(),
        config: Some(table),
        batch_size: 1,
    }];
}

fn jsonl_manifest(dir: &Path) {
    ManifestSpec::named("jsonl", "jsonl_listener")
        .kind("event_listener", &["sync", "async"])
        .write(dir, "jsonl.toml");
}

fn events_in(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cannot_send_the_daemons_secrets_or_pick_its_files() {
    set_secret();
    let (rec, url) = Recorder::start();
    let d = Daemon::start(first_party());
    let attacks = [
        (
            json!({"driver": "openai", "config": {"base_url": format!("{url}/v1"), "api_key_env": SECRET_VAR}}),
            "config.api_key_env",
        ),
        (
            json!({"driver": "anthropic", "config": {"base_url": url, "api_key_env": SECRET_VAR}}),
            "config.api_key_env",
        ),
        (
            json!({"driver": "openai", "config": {"base_url": format!("{url}/v1")}}),
            "config.base_url",
        ),
        (
            json!({"driver": "openai", "config": {"http": {"headers": {"Host": "internal", "X-Leak": SECRET}}}}),
            "config.http",
        ),
        (
            json!({"driver": "local", "config": {"model_path": "/etc/passwd"}}),
            "config.model_path",
        ),
        (
            json!({"driver": "local", "config": {"threads": 400}}),
            "config.threads",
        ),
        (
            json!({"driver": "local", "config": {"n_ctx": 65536}}),
            "config.n_ctx",
        ),
        // A tool's config is the operator's as much as a driver's: no request may move the
        // file manager's root to the host's files.
        (
            json!({"driver": "scripted", "tools": ["file-manager"],
                   "tool_config": {"file-manager": {"root": "/"}}}),
            "tool_config.file-manager.root",
        ),
    ];
    for (mut body, key) in attacks {
        body["input"] = json!("hi");
        let (status, _, v) = post(&d, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {v}");
        let msg = message(&v);
        assert!(msg.contains(&format!("field `{key}`")), "{body} -> {msg}");
        assert!(
            msg.contains("manifests/") && msg.contains("[overrides] allow"),
            "names where the operator would allow it: {msg}"
        );
    }
    // Tool instances are made per request: a body of 100,000 tool names would cost seconds.
    let many: Vec<&str> = vec!["text-tools"; 10_000];
    let (status, _, v) = post(
        &d,
        json!({"driver": "scripted", "input": "x", "tools": many}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&v).contains("at most 64"), "{v}");
    let (status, _, v) = post(
        &d,
        json!({"driver": "scripted", "input": "x", "tools": ["text-tools", "text-tools"]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&v).contains("listed twice"), "{v}");

    // Callers can see what they may change.
    let plugins: Value = client()
        .get(d.url("/v1/plugins"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let openai = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "openai")
        .unwrap();
    assert_eq!(openai["overridable"][0], "model", "{openai}");

    // The harmless knobs still work per request.
    let (status, _, v) = post(
        &d,
        json!({"driver": "scripted", "input": "hi", "config": {"chunk_chars": 2}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, _, v) = post(
        &d,
        json!({"driver": "openai", "input": "hi", "config": {"colour": "red"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&v).contains("it allows model, temperature"), "{v}");
    d.stop();
    assert!(
        rec.requests().is_empty(),
        "nothing reached the attacker: {:?}",
        rec.requests()
    );

    // An operator who lets requests pick the URL still does not let them pick the key.
    let mut c = first_party();
    c.plugins
        .overrides
        .insert("openai".into(), vec!["base_url".into(), "model".into()]);
    let d = Daemon::start(c);
    let (status, _, v) = post(
        &d,
        json!({"driver": "openai", "input": "hi",
               "config": {"base_url": format!("{url}/v1"), "api_key_env": SECRET_VAR}}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        message(&v).contains("`[plugins.overrides] openai` in the daemon config"),
        "{v}"
    );
    d.stop();
    let leaked: Vec<String> = rec
        .requests()
        .into_iter()
        .filter(|r| r.contains(SECRET))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// The resource sizes of the local driver, with an operator who allowed them: each is refused
/// by the plugin with the key named, and the daemon stays up (it used to abort on threads=400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_driver_refuses_sizes_that_would_take_the_daemon_down() {
    let mut c = first_party();
    c.plugins.overrides.insert(
        "local".into(),
        ["threads", "n_ctx", "max_tokens", "model_path"]
            .map(String::from)
            .to_vec(),
    );
    let d = Daemon::start(c);
    let dir = tempfile::tempdir().unwrap();
    let not_a_model = dir.path().join("secret.txt");
    std::fs::write(&not_a_model, "private").unwrap();
    let cases = [
        (json!({"threads": 400}), "`threads` = 400 is more than"),
        (json!({"n_ctx": 65536}), "`n_ctx` = 65536 is out of range"),
        (
            json!({"max_tokens": 4294967295u64}),
            "`max_tokens` = 4294967295 is out of range",
        ),
        (
            json!({"model_path": not_a_model}),
            "is not a readable GGUF file",
        ),
        (
            json!({"model_path": "/no/such/file.gguf"}),
            "is not a readable GGUF file",
        ),
    ];
    for (config, needle) in cases {
        let (status, _, v) = post(
            &d,
            json!({"driver": "local", "input": "hi", "config": config}),
        )
        .await;
        assert_eq!(status, 400, "{config} -> {v}");
        assert!(message(&v).contains(needle), "{config} -> {v}");
        assert!(!message(&v).contains("private"), "{v}");
    }
    let r = client().get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the daemon is still up");
    d.stop();
}

/// Sends raw HTTP/1.1 and returns the status code (0 when the connection closed first).
fn raw_status(addr: std::net::SocketAddr, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn task_request(host: &str, extra_headers: &str) -> String {
    let body = r#"{"driver": "scripted", "input": "from a web page"}"#;
    format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra_headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_drive_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    scripted("scripted").write(dir.path(), "scripted.toml");
    jsonl_manifest(dir.path());
    let events = dir.path().join("events.jsonl");
    let mut c = config_in(dir.path());
    record_events(&mut c, &events);
    c.server.allowed_origins = vec!["http://app.example:3000".into()];
    c.server.allowed_hosts = vec!["grip.internal".into()];
    let d = Daemon::start(c);
    let body = r#"{"driver": "scripted", "input": "no preflight needed"}"#;

    // "Simple" requests a page can send without a preflight.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut rb = client().post(d.url("/v1/tasks")).body(body);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 415, "{ct:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "unsupported_media_type");
    }

    // A cross-origin request (browsers send Origin on every POST) and its preflight.
    let r = client()
        .post(d.url("/v1/tasks"))
        .header("origin", "http://evil.example")
        .json(&json!({"driver": "scripted", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "forbidden_origin", "{v}");
    let r = client()
        .request(reqwest::Method::OPTIONS, d.url("/v1/tasks"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // An allowed origin gets CORS, preflight included.
    let r = client()
        .request(reqwest::Method::OPTIONS, d.url("/v1/tasks"))
        .header("origin", "http://app.example:3000")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example:3000"
    );
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("content-type")
    );
    let r = client()
        .post(d.url("/v1/tasks"))
        .header("origin", "http://app.example:3000")
        .json(&json!({"driver": "scripted", "input": "allowed page"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example:3000"
    );

    // DNS rebinding: the page's own name resolving to 127.0.0.1.
    let port = d.addr.port();
    let addr = d.addr;
    let statuses = tokio::task::spawn_blocking(move || {
        [
            format!("rebind.evil.example:{port}"),
            "evil.example".to_owned(),
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            "grip.internal".to_owned(),
        ]
        .map(|h| raw_status(addr, &task_request(&h, "")))
    })
    .await
    .unwrap();
    assert_eq!(statuses, [403, 403, 200, 200, 200]);

    d.stop();
    // Only the four accepted tasks reached the listener.
    let seen = events_in(&events);
    let starts: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "StartTaskEvent")
        .collect();
    assert_eq!(starts.len(), 4, "{seen:?}");
    assert!(
        starts
            .iter()
            .all(|e| e["input"] != "x" && e["input"] != "no preflight needed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_the_request_chose_is_never_echoed() {
    let (rec, url) = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    // The operator lets requests pick the URL (no retries, to keep the test short).
    ManifestSpec::named("openai", "openai_driver")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .extra(
            "[config]\nmodel = \"m\"\napi_key_env = \"NO_KEY\"\nhttp = { retry = { max_retries = 0 } }\n",
        )
        .overridable(&["base_url"])
        .write(dir.path(), "openai.toml");
    let d = Daemon::start(config_in(dir.path()));
    let probe = json!({"driver": "openai", "input": "x", "config": {"base_url": format!("{url}/internal")}});
    let (status, _, v) = post(&d, probe.clone()).await;
    assert_eq!(status, 502, "{v}");
    assert!(!v.to_string().contains("INTERNAL-ADMIN"), "{v}");
    assert!(message(&v).contains("withheld"), "{v}");

    let mut streamed = probe.clone();
    streamed["stream"] = json!(true);
    let r = client()
        .post(d.url("/v1/tasks"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let events = sse(r).await;
    assert_eq!(events.last().unwrap().0, "FinishTaskEvent");
    for (name, data, _) in &events {
        assert!(
            !data.to_string().contains("INTERNAL-ADMIN"),
            "{name}: {data}"
        );
    }
    assert_eq!(rec.requests().len(), 2, "the probes did reach the service");

    d.stop();

    // An upstream the operator configured is reported as it is.
    let operator = tempfile::tempdir().unwrap();
    ManifestSpec::named("openai", "openai_driver")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .extra(&format!(
            "[config]\nmodel = \"m\"\napi_key_env = \"NO_KEY\"\nbase_url = \"{url}/v1\"\nhttp = {{ retry = {{ max_retries = 0 }} }}\n"
        ))
        .write(operator.path(), "openai.toml");
    let d = Daemon::start(config_in(operator.path()));
    let (status, _, v) = post(&d, json!({"driver": "openai", "input": "x"})).await;
    assert_eq!(status, 502);
    assert!(message(&v).contains("INTERNAL-ADMIN"), "{v}");
    d.stop();
}

/// Opens a connection and sends part of a request's headers; returns when the daemon closes it.
fn half_open(addr: std::net::SocketAddr) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let started = Instant::now();
        s.write_all(b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .unwrap();
        let mut buf = [0u8; 256];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        started.elapsed()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_do_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    scripted("scripted").write(dir.path(), "scripted.toml");
    let mut c = config_in(dir.path());
    c.server.header_timeout_ms = 400;
    c.server.shutdown_grace_ms = 20_000;
    let d = Daemon::start(c);
    let addr = d.addr;

    // Slowloris: headers that never end are cut off after the header timeout.
    let closed_after = tokio::task::spawn_blocking(move || half_open(addr).join().unwrap())
        .await
        .unwrap();
    assert!(
        closed_after < Duration::from_secs(20),
        "closed by the daemon, not by the client's read timeout: {closed_after:?}"
    );

    // An idle keep-alive connection is closed too.
    let idle = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let idle_from = Instant::now();
        let n = s.read(&mut buf).unwrap_or(0);
        (n, idle_from.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(idle.0, 0, "closed");
    assert!(idle.1 < Duration::from_secs(20), "{:?}", idle.1);

    // A half-open connection at shutdown: the daemon exits without waiting out the grace.
    let lingering = half_open(addr);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let served = tokio::task::spawn_blocking(move || d.stop()).await.unwrap();
    assert_eq!(served.abandoned, 0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?} of a 20 s grace",
        started.elapsed()
    );
    let _ = lingering.join();
}

/// Checks that every task in the jsonl file has one finish per start; returns the finishes.
fn one_finish_per_start(file: &Path) -> Vec<Value> {
    let events = events_in(file);
    let mut finishes = Vec::new();
    let ids: std::collections::BTreeSet<String> = events
        .iter()
        .map(|e| e["task_id"].as_str().unwrap().to_owned())
        .collect();
    for id in ids {
        let of = |t: &str| {
            events
                .iter()
                .filter(|e| e["task_id"] == id.as_str() && e["type"] == t)
                .count()
        };
        assert_eq!(
            (of("StartTaskEvent"), of("FinishTaskEvent")),
            (1, 1),
            "task {id}: {events:?}"
        );
        let last = events
            .iter()
            .rfind(|e| e["task_id"] == id.as_str())
            .unwrap();
        assert_eq!(last["type"], "FinishTaskEvent", "finish is last: {id}");
        finishes.push(last.clone());
    }
    finishes
}

fn finish_manifests(dir: &Path) -> PathBuf {
    scripted("scripted").write(dir, "scripted.toml");
    ManifestSpec::named("mock-sync", "mock_sync_driver")
        .kind("prompt_driver", &["sync"])
        .overridable(&["delay_ms"])
        .write(dir, "mock-sync.toml");
    jsonl_manifest(dir);
    dir.join("events.jsonl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_timed_out_tasks_end_with_their_finish_event() {
    let dir = tempfile::tempdir().unwrap();
    let events = finish_manifests(dir.path());
    let mut c = config_in(dir.path());
    record_events(&mut c, &events);
    c.server.task_timeout_ms = 700;
    let d = Daemon::start(c);
    let slow =
        |driver: &str| json!({"driver": driver, "input": "slow", "config": {"delay_ms": 3000}});

    // Timed out, on both paths.
    for driver in ["scripted", "mock-sync"] {
        let (status, _, v) = post(&d, slow(driver)).await;
        assert_eq!(status, 504, "{driver}: {v}");
        assert_eq!(v["error"]["type"], "task_timeout");
    }
    // Timed out while an SSE client watches: the finish is its last event.
    let mut body = slow("scripted");
    body["stream"] = json!(true);
    let r = client()
        .post(d.url("/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let seen = sse(r).await;
    let (name, data, _) = seen.last().unwrap();
    assert_eq!(name, "FinishTaskEvent");
    assert_eq!(data["error"], "task stopped: timed out after 700 ms");

    // Cancelled: a plain client and a streaming client leave.
    let gave_up = client()
        .post(d.url("/v1/tasks"))
        .timeout(Duration::from_millis(150))
        .json(&slow("scripted"))
        .send()
        .await;
    assert!(gave_up.is_err());
    let body = json!({"driver": "scripted", "input": "a long answer to stream", "stream": true,
                      "config": {"delay_ms": 100, "chunk_chars": 1}});
    e2e::daemon::leave_after_first_chunk(&d, &body).await;
    e2e::daemon::metrics_containing(&d, "outcome=\"cancelled\"} 2").await;
    assert_eq!(d.stop().abandoned, 0);

    let finishes = one_finish_per_start(&events);
    assert_eq!(finishes.len(), 5, "{finishes:?}");
    let errors: Vec<&str> = finishes
        .iter()
        .map(|f| f["error"].as_str().unwrap())
        .collect();
    let count = |s: &str| errors.iter().filter(|e| e.contains(s)).count();
    assert_eq!(count("timed out after 700 ms"), 3, "{errors:?}");
    assert_eq!(count("cancelled: the client went away"), 2, "{errors:?}");
}

#[test]
fn tasks_abandoned_at_shutdown_end_with_their_finish_event_and_the_daemon_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let events = finish_manifests(&manifests);
    let listeners = format!(
        "[[listeners]]\nplugin = \"jsonl\"\nconfig = {{ path = {:?} }}\nbatch_size = 1\n",
        events.display().to_string()
    );
    let (mut child, base) =
        e2e::procs::start_daemon_with(dir.path(), "shutdown_grace_ms = 300\n", &listeners);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{base}/v1/tasks");
    let watching = rt.spawn({
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(
                    &json!({"driver": "scripted", "input": "long", "stream": true,
                               "config": {"delay_ms": 10000}}),
                )
                .send()
                .await
                .unwrap();
            sse(r).await
        }
    });
    let plain = rt.spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&json!({"driver": "mock-sync", "input": "stuck", "config": {"delay_ms": 10000}}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    std::thread::sleep(Duration::from_millis(500));
    e2e::procs::sigterm(&child);
    let seen = rt.block_on(watching).unwrap();
    let (name, data, _) = seen.last().unwrap();
    assert_eq!(name, "FinishTaskEvent");
    assert_eq!(
        data["error"],
        "task stopped: abandoned: the host shut down before the task ended"
    );
    let (status, v) = rt.block_on(plain).unwrap();
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["type"], "shutting_down");
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(3), "abandoning tasks is a non-zero exit");
    let finishes = one_finish_per_start(&events);
    assert_eq!(finishes.len(), 2);
    assert!(
        finishes
            .iter()
            .all(|f| f["error"].as_str().unwrap().contains("abandoned"))
    );
}

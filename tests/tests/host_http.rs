//! ABI generation 2's HTTP service: our remote drivers are generation-2 plugins whose requests
//! run on the host's client and runtime, on every path (a host worker, a plain thread with no
//! runtime, a stream, a plugin in a child process), with the same answers and errors as before;
//! generation-1 plugins keep loading beside them (see `authoring.rs`, plugin-api 1.0.0).

use std::sync::OnceLock;
use std::time::Duration;

use e2e::mock_llm::MockLlm;
use e2e::remote::{RemoteDriver, collect, request};
use e2e::{ManifestSpec, artifacts};
use host::host_services::http_requests_sent;
use plugin_api::wire::StreamDelta;
use serde_json::json;

const KEY_VAR: &str = "E2E_OPENAI_TEST_KEY";
const KEY: &str = "sk-test-very-secret-key-123";

fn remote() -> &'static RemoteDriver {
    static R: OnceLock<RemoteDriver> = OnceLock::new();
    R.get_or_init(|| RemoteDriver::load("openai", "openai_driver", KEY_VAR, KEY))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_two_driver_sends_every_request_through_the_host() {
    let plugin = remote().registry.get("openai").unwrap();
    assert_eq!(plugin.info().abi_generation, 2, "{:?}", plugin.info());
    let mock = MockLlm::start();
    let d = remote().driver_with(&mock, json!({}));
    let before = http_requests_sent();

    // On a host worker: the exchange is polled inline.
    let a = d.prompt_async(&request("hello")).await.unwrap();
    assert_eq!(a.message.content, "echo: hello");
    // On a plain thread with no runtime (the sync path outside the daemon): the exchange runs
    // on the host's background runtime and its body is relayed.
    let d2 = d.clone();
    let s = std::thread::spawn(move || d2.prompt(&request("from a plain thread")))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(s.message.content, "echo: from a plain thread");
    // A stream, body chunk by chunk.
    let text: String = collect(&d, &request("streamed through the host"))
        .await
        .into_iter()
        .filter_map(|d| match d.unwrap() {
            StreamDelta::Text { text } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(text, "echo: streamed through the host");

    assert!(http_requests_sent() >= before + 3);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.headers["authorization"], format!("Bearer {KEY}"));
        assert_eq!(r.headers["content-type"], "application/json");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_services_errors_read_as_the_drivers_own() {
    // Nothing listens: a connect error, retried, then reported with the URL.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1", l.local_addr().unwrap());
    drop(l);
    let d = remote()
        .try_driver(&json!({"base_url": dead, "api_key_env": KEY_VAR,
            "http": {"retry": {"max_retries": 1, "initial_backoff_ms": 1, "max_backoff_ms": 5}}}))
        .unwrap();
    let e = d.prompt_async(&request("hi")).await.unwrap_err();
    assert!(
        e.message.contains("cannot connect (") && e.message.contains(&dead),
        "{e}"
    );
    assert!(e.message.contains("after 2 attempts"), "{e}");

    // A slow upstream and a short request timeout: a timeout, on the async and the sync path.
    let mock = MockLlm::start();
    mock.set_default_latency(2_000);
    let d = remote().driver_with(
        &mock,
        json!({"http": {"request_timeout_ms": 100, "retry": {"max_retries": 0}}}),
    );
    let e = d.prompt_async(&request("hi")).await.unwrap_err();
    assert!(e.message.contains("timed out"), "{e}");
    let d2 = d.clone();
    let e = std::thread::spawn(move || d2.prompt(&request("hi")))
        .join()
        .unwrap()
        .unwrap_err();
    assert!(e.message.contains("timed out"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_request_cancels_the_hosts_exchange() {
    let mock = MockLlm::start();
    mock.set_default_latency(3_000);
    let d = remote().driver_with(&mock, json!({}));
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_millis(200), d.prompt_async(&request("x"))).await;
    assert!(r.is_err(), "the upstream answers after 3 s");
    assert!(t.elapsed() < Duration::from_secs(2));
    // The host's connection was dropped with the future: the mock sees its client go away,
    // and the next request is served at once by a fresh exchange.
    mock.set_default_latency(0);
    let ok = d.prompt_async(&request("again")).await.unwrap();
    assert_eq!(ok.message.content, "echo: again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_two_driver_in_its_own_process_uses_its_childs_host_service() {
    let mock = MockLlm::start();
    let dir = tempfile::tempdir().unwrap();
    ManifestSpec::named("openai", "openai_driver")
        .kind("prompt_driver", &["sync", "async", "stream"])
        .isolated("")
        .extra(&format!(
            "[config]\nmodel = \"m\"\napi_key_env = \"NO_KEY\"\nbase_url = {:?}\n",
            mock.base_url()
        ))
        .write(dir.path(), "openai.toml");
    let registry = host::Registry::load_dirs(&[dir.path().to_owned()], &artifacts().options());
    assert!(registry.refused().is_empty(), "{:?}", registry.refused());
    let plugin = registry.get("openai").unwrap();
    assert_eq!(plugin.info().abi_generation, 2);
    let d = plugin.new_driver(None).unwrap();
    let r = d.prompt_async(&request("isolated")).await.unwrap();
    assert_eq!(r.message.content, "echo: isolated");
    let d2 = d.clone();
    let s = tokio::task::spawn_blocking(move || d2.prompt(&request("isolated, sync")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.message.content, "echo: isolated, sync");
}

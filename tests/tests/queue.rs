//! Tasks on a queue: a real `nats-server -js` started per test, `grip worker`s and `grip serve`
//! fronts as real processes (so a worker can be SIGKILLed and a front restarted), and the same
//! client-facing behaviour checked against the single-process daemon, which stays the default.

use std::time::{Duration, Instant};

use e2e::daemon::{Daemon, client, post, sse};
use e2e::nats::{Cluster, Proc};
use e2e::{artifacts, scripted};
use serde_json::{Value, json};

/// POSTs `body` to `base`'s `/v1/tasks`: status, headers, JSON body.
async fn submit(base: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(format!("{base}/v1/tasks"))
        .json(body)
        .send()
        .await
        .expect("POST /v1/tasks");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// GETs `/v1/tasks/{id}`: status, headers, JSON body.
async fn record(base: &str, id: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .get(format!("{base}/v1/tasks/{id}"))
        .send()
        .await
        .expect("GET /v1/tasks/{id}");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// Polls the task's record until `done` says so (up to `within`): the last answer.
async fn poll(
    base: &str,
    id: &str,
    within: Duration,
    done: impl Fn(u16, &Value) -> bool,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let deadline = Instant::now() + within;
    loop {
        let r = record(base, id).await;
        if done(r.0, &r.2) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Submits a slow task with the id `id` (its input too), not waited for.
async fn submit_slow(base: &str, id: &str, ms: u64) {
    let mut body = slow(id, ms);
    body["id"] = json!(id);
    body["wait"] = json!(false);
    let (status, _, answer) = submit(base, &body).await;
    assert_eq!(status, 202, "{answer}");
}

/// A slow answer: the scripted driver waits `ms` before answering.
fn slow(input: &str, ms: u64) -> Value {
    json!({"input": input, "config": {"delay_ms": ms}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_tasks_and_results_events_and_records_come_back_through_the_front() {
    let cluster = Cluster::new("concurrency = 4");
    let _w1 = cluster.worker("w1");
    let (_w2, w2_metrics) = cluster.worker_with_metrics("w2");
    let (_front, base) = cluster.front();

    // Many at once: every one answered with its own result; both workers took some.
    let posts = (0..16).map(|i| {
        let base = base.clone();
        async move { submit(&base, &slow(&format!("task {i}"), 100)).await }
    });
    let answers = futures::future::join_all(posts).await;
    let mut workers = std::collections::BTreeSet::new();
    for (i, (status, _, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["output"], format!("echo: task {i}"));
        let (_, h, _) = record(&base, body["task_id"].as_str().unwrap_or("")).await;
        workers.insert(header(&h, "x-grip-worker").to_owned());
    }
    assert_eq!(
        workers,
        ["w1", "w2"].map(String::from).into(),
        "both workers ran tasks"
    );
    // A worker's own port: its health and its tasks' counters.
    let metrics = client()
        .get(format!("{w2_metrics}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("grip_tasks_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    let health = client()
        .get(format!("{w2_metrics}/healthz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(health.status(), 200);

    // SSE relayed from the worker: the events in order, the finish event last, with the result.
    let r = client()
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"input": "stream me", "stream": true}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    let events = sse(r).await;
    let names: Vec<&str> = events.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"StartTaskEvent"), "{names:?}");
    assert_eq!(names.last(), Some(&"FinishTaskEvent"), "{names:?}");
    let text: String = events
        .iter()
        .filter(|(n, ..)| n == "TextChunkEvent")
        .filter_map(|(_, d, _)| d["token"].as_str())
        .collect();
    assert_eq!(text, "echo: stream me");
    assert_eq!(
        events.last().map(|e| &e.1["output"]),
        Some(&json!("echo: stream me"))
    );

    // Submit now, fetch later.
    let (status, h, body) = submit(
        &base,
        &json!({"input": "later", "wait": false, "id": "later-1"}),
    )
    .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (202, Some("queued")),
        "{body}"
    );
    assert_eq!(header(&h, "location"), "/v1/tasks/later-1");
    let (status, _, body) = poll(&base, "later-1", Duration::from_secs(10), |s, _| s == 200).await;
    assert_eq!(
        (status, &body["output"]),
        (200, &json!("echo: later")),
        "{body}"
    );

    // The same id again is the same task: its result, not a second run.
    let (status, _, again) =
        submit(&base, &json!({"input": "something else", "id": "later-1"})).await;
    assert_eq!(
        (status, &again["output"]),
        (200, &json!("echo: later")),
        "{again}"
    );

    // Requests are checked before they are queued.
    let (status, _, body) = submit(&base, &json!({"input": "x", "id": "no.dots"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("`id`"),
        "{body}"
    );
    let (status, _, _) = record(&base, "never-submitted").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_task_hands_it_to_the_other_and_the_client_gets_one_result() {
    let cluster = Cluster::new("ack_wait_ms = 1500");
    let mut workers = [cluster.worker("w1"), cluster.worker("w2")];
    let (_front, base) = cluster.front();
    let body = json!({"id": "survivor", "input": "slow task", "stream": true,
                      "config": {"delay_ms": 400}});
    let stream_base = base.clone();
    let streaming = tokio::spawn(async move {
        let r = client()
            .post(format!("{stream_base}/v1/tasks"))
            .json(&body)
            .send()
            .await
            .expect("POST");
        sse(r).await
    });
    let (_, _, running) = poll(&base, "survivor", Duration::from_secs(10), |_, b| {
        b["state"] == "running" && b["worker"].is_string()
    })
    .await;
    let victim = running["worker"].as_str().unwrap_or("").to_owned();
    let (dead, other) = if victim == "w1" { (0, "w2") } else { (1, "w1") };
    workers[dead].kill();
    let killed = Instant::now();

    let events = streaming.await.expect("the stream");
    let recovered = killed.elapsed();
    let finishes: Vec<&Value> = events
        .iter()
        .filter(|(n, ..)| n == "FinishTaskEvent")
        .map(|(_, d, _)| d)
        .collect();
    assert_eq!(finishes.len(), 1, "one result: {events:?}");
    assert_eq!(finishes[0]["output"], "echo: slow task");
    let retry = events
        .iter()
        .find(|(n, ..)| n == "TaskRetryEvent")
        .map(|(_, d, _)| d.clone())
        .unwrap_or_else(|| panic!("the new attempt says so: {events:?}"));
    assert_eq!(retry["attempt"], 2);
    // Everything after the retry event is one whole run.
    let after: Vec<&str> = events
        .iter()
        .skip_while(|(n, ..)| n != "TaskRetryEvent")
        .skip(1)
        .map(|(n, ..)| n.as_str())
        .collect();
    assert_eq!(after.first(), Some(&"StartTaskEvent"), "{after:?}");

    let (status, h, body) = record(&base, "survivor").await;
    assert_eq!((status, &body["output"]), (200, &json!("echo: slow task")));
    assert_eq!(header(&h, "x-grip-worker"), other);
    assert_eq!(header(&h, "x-grip-attempt"), "2");
    eprintln!(
        "recovery: the task's result came {} ms after its worker was killed (ack_wait 1500 ms, a 2 s run)",
        recovered.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_restarted_while_its_task_runs_still_finds_the_result() {
    let cluster = Cluster::new("");
    let _w = cluster.worker("w1");
    let (mut front, base) = cluster.front();
    let mut body = slow("outlive the front", 1500);
    body["id"] = json!("outlive");
    body["wait"] = json!(false);
    let (status, _, _) = submit(&base, &body).await;
    assert_eq!(status, 202);
    front.kill();
    let (_front2, base2) = cluster.front();
    let (status, _, body) = poll(&base2, "outlive", Duration::from_secs(15), |s, _| s == 200).await;
    assert_eq!(
        (status, &body["output"]),
        (200, &json!("echo: outlive the front")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_and_fronts_reconnect_when_nats_restarts() {
    let mut cluster = Cluster::new("");
    let _w = cluster.worker("w1");
    let (_front, base) = cluster.front();
    let (status, _, before) = submit(&base, &json!({"input": "before", "id": "before"})).await;
    assert_eq!(status, 200, "{before}");

    cluster.nats.restart(Duration::from_millis(500));

    // The clients reconnect on their own; the first tasks may meet them still reconnecting.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let r = submit(&base, &json!({"input": "after"})).await;
        if r.0 == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (after.0, &after.2["output"]),
        (200, &json!("echo: after")),
        "{}",
        after.2
    );
    // The records were stored on disk: the earlier one is still there.
    let (status, _, old) = record(&base, "before").await;
    assert_eq!((status, &old["output"]), (200, &json!("echo: before")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conversation_continues_on_another_worker_and_one_task_at_a_time() {
    let cluster = Cluster::new("");
    let (_front, base) = cluster.front();
    // Step n of the script answers a prompt with n earlier answers in it.
    let turn = |input: &str| {
        json!({"input": input, "conversation_id": "chat-1",
               "config": {"script": [{"text": "first answer"}, {"text": "second answer"}]}})
    };
    let mut w1 = cluster.worker("w1");
    let (status, h, first) = submit(&base, &turn("my name is Ann")).await;
    assert_eq!(
        (status, &first["output"]),
        (200, &json!("first answer")),
        "{first}"
    );
    assert_eq!(header(&h, "x-grip-worker"), "w1");
    w1.kill();

    let _w2 = cluster.worker("w2");
    let (status, h, second) = submit(&base, &turn("what is my name?")).await;
    assert_eq!(
        (status, &second["output"]),
        (200, &json!("second answer")),
        "the earlier turn reached the prompt: {second}"
    );
    assert_eq!(header(&h, "x-grip-worker"), "w2");

    // Two tasks of one conversation at once: one runs, the other is refused, never both.
    let busy = |i: u32| {
        let base = base.clone();
        async move {
            submit(
                &base,
                &json!({"input": format!("at once {i}"), "conversation_id": "chat-2",
                                  "config": {"delay_ms": 1000}}),
            )
            .await
        }
    };
    let (a, b) = tokio::join!(busy(1), busy(2));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} / {}", a.2, b.2);
    let refused = if a.0 == 409 { &a.2 } else { &b.2 };
    assert_eq!(refused["error"]["type"], "conversation_busy", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_keeps_killing_workers_is_dead_lettered_with_its_error() {
    let cluster = Cluster::new("ack_wait_ms = 1000\nmax_attempts = 2");
    let (_front, base) = cluster.front();
    let nats = async_nats::connect(&cluster.nats.url)
        .await
        .expect("connect");
    let mut dead = nats.subscribe("grip.dead.>").await.expect("subscribe");
    let (status, _, _) = submit(
        &base,
        &json!({"id": "killer", "input": "crash", "wait": false, "tools": ["crashy"],
                "config": {"script": [{"tool_calls": [{"name": "Crashy_abort", "arguments": {"text": "x"}}]}]}}),
    )
    .await;
    assert_eq!(status, 202);
    // Whenever the task kills the worker, another one starts, as a supervisor would do.
    let mut deaths = 0;
    let mut worker: Proc = cluster.worker("w0");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        let (status, _, body) = record(&base, "killer").await;
        if status == 500 || Instant::now() > deadline {
            break (status, body);
        }
        if worker.exited() {
            deaths += 1;
            worker = cluster.worker(&format!("w{deaths}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "dead_letter", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("delivered 2 times"), "{message}");
    assert_eq!(deaths, 2, "each attempt took a worker down");
    let letter = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut dead))
        .await
        .expect("a dead letter")
        .expect("a message");
    assert_eq!(letter.subject.as_str(), "grip.dead.killer");
    let error = letter.headers.as_ref().and_then(|h| h.get("Grip-Error"));
    assert!(error.is_some_and(|e| e.as_str().contains("delivered 2 times")));
    // The worker that took the dead letter is still up.
    assert!(!worker.exited());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_refuses_with_429_and_its_tasks_run_once_a_worker_comes() {
    let cluster = Cluster::new("max_pending = 2");
    let (_front, base) = cluster.front();
    for id in ["q1", "q2"] {
        let (status, _, body) = submit(&base, &json!({"input": id, "id": id, "wait": false})).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, h, body) = submit(&base, &json!({"input": "q3", "id": "q3", "wait": false})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "overloaded");
    assert_eq!(header(&h, "retry-after"), "1");
    // The refused id is free: the client's retry is not taken for a resubmission.
    let (status, _, body) = record(&base, "q3").await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = record(&base, "q1").await;
    assert_eq!((status, &body["state"]), (202, &json!("queued")));

    let _w = cluster.worker("w1");
    for id in ["q1", "q2"] {
        let (status, _, body) = poll(&base, id, Duration::from_secs(15), |s, _| s == 200).await;
        assert_eq!(
            (status, &body["output"]),
            (200, &json!(format!("echo: {id}")))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grip_run_submits_to_the_cluster_and_prints_the_answer() {
    let cluster = Cluster::new("");
    let _w = cluster.worker("w1");
    let url = cluster.nats.url.clone();
    let run = move |args: &[&str]| {
        let out = artifacts()
            .grip_command()
            .args(["run", "--nats", &url, "--driver", "scripted"])
            .args(args)
            .output()
            .expect("grip run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let first = run(&["hello cluster"]);
        let second = run(&["--no-stream", "--json", "--id", "cli-1", "again"]);
        (first, second)
    })
    .await
    .map(|(first, second)| {
        assert_eq!(second.0, Some(0), "{}", second.2);
        let body: Value = serde_json::from_str(&second.1).expect("--json prints JSON");
        assert_eq!(body["output"], "echo: again");
        assert_eq!(body["task_id"], "cli-1");
        first
    })
    .expect("the runs");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "echo: hello cluster", "{err}");
    assert!(err.contains("queued as task"), "{err}");
}

/// A queued task continues its caller's trace: the front puts the `traceparent` into the task
/// it queues, and the worker that runs it exports the task's spans under the caller's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_continues_its_callers_trace_on_the_worker() {
    let otlp = e2e::otlp::Receiver::start();
    let cluster = Cluster::new(&format!(
        "\n[telemetry]\nendpoint = {:?}\nservice_name = \"grip-worker-test\"\n",
        otlp.http
    ));
    let _w = cluster.worker("w1");
    let (_front, base) = cluster.front();
    let (trace, parent) = ("5bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let r = client()
        .post(format!("{base}/v1/tasks"))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&json!({"input": "traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = tokio::task::spawn_blocking(move || {
        otlp.wait_spans("the worker's task span", |s| {
            s.iter().any(|s| s.name.starts_with("invoke_agent"))
        })
    })
    .await
    .unwrap();
    let task = spans
        .iter()
        .find(|s| s.name.starts_with("invoke_agent"))
        .unwrap();
    assert_eq!(
        (task.trace_id.as_str(), task.parent_span_id.as_str()),
        (trace, parent)
    );
    assert_eq!(task.service, "grip-worker-test");
    assert!(
        spans
            .iter()
            .any(|s| s.name.starts_with("chat") && s.trace_id == trace)
    );
}

// The same client-facing behaviour from one daemon, no NATS: records, ids, conversations.

fn single_daemon() -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    scripted("scripted").write(dir.path(), "scripted.toml");
    let mut config = host::daemon::DaemonConfig::default();
    config.server.bind = "127.0.0.1:0".parse().expect("addr");
    config.plugins.manifest_dirs = vec![dir.path().to_owned()];
    config.plugins.lib_dirs = vec![artifacts().lib_dir.clone()];
    config.defaults.driver = Some("scripted".into());
    let d = Daemon::start(config);
    // The manifests are read at start.
    drop(dir);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_daemon_keeps_records_ids_and_conversations_the_same_way() {
    let d = single_daemon();
    let base = d.base.clone();

    let (status, h, body) = post(
        &d,
        json!({"input": "later", "wait": false, "id": "s-1",
                                            "config": {"delay_ms": 300}}),
    )
    .await;
    assert_eq!((status, &body["state"]), (202, &json!("running")), "{body}");
    assert_eq!(header(&h, "location"), "/v1/tasks/s-1");
    let (status, _, pending) = record(&base, "s-1").await;
    assert_eq!(
        (status, &pending["state"]),
        (202, &json!("running")),
        "{pending}"
    );
    let (status, _, body) = poll(&base, "s-1", Duration::from_secs(10), |s, _| s == 200).await;
    assert_eq!((status, &body["output"]), (200, &json!("echo: later")));
    let (status, _, again) = post(&d, json!({"input": "other", "id": "s-1"})).await;
    assert_eq!(
        (status, &again["output"]),
        (200, &json!("echo: later")),
        "one run per id"
    );

    let turn = |input: &str| {
        json!({"input": input, "conversation_id": "c",
               "config": {"script": [{"text": "first answer"}, {"text": "second answer"}]}})
    };
    assert_eq!(post(&d, turn("one")).await.2["output"], "first answer");
    assert_eq!(post(&d, turn("two")).await.2["output"], "second answer");

    let slow = json!({"input": "slow", "conversation_id": "busy", "wait": false,
                      "config": {"delay_ms": 1000}});
    assert_eq!(post(&d, slow).await.0, 202);
    let (status, _, refused) =
        post(&d, json!({"input": "meanwhile", "conversation_id": "busy"})).await;
    assert_eq!(
        (status, &refused["error"]["type"]),
        (409, &json!("conversation_busy")),
        "{refused}"
    );

    let (status, _, body) = post(&d, json!({"input": "x", "conversation_id": "has space"})).await;
    assert_eq!(status, 400, "{body}");
    // An id that is no name is refused before it becomes a key: nothing is kept under it.
    let long = "i".repeat(65);
    let (status, _, body) = post(&d, json!({"input": "x", "id": long, "wait": false})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(record(&base, &long).await.0, 400);
    assert_eq!(record(&base, "a.b").await.0, 400);
    assert_eq!(record(&base, "unknown").await.0, 404);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_task_is_one_message_however_often_it_is_sent() {
    let cluster = Cluster::new("");
    let (_front, base) = cluster.front();
    for _ in 0..3 {
        let (status, _, body) = submit(
            &base,
            &json!({"input": "once", "id": "once", "wait": false}),
        )
        .await;
        assert_eq!((status, &body["state"]), (202, &json!("queued")), "{body}");
    }
    let nats = async_nats::connect(&cluster.nats.url)
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(nats);
    // Past the stream's duplicate window a front resending it sends no message id that
    // helps: the task's subject still holds one message only.
    let copy = js
        .publish(
            "grip.tasks.once",
            r#"{"spec":{"input":"twice","id":"once"}}"#.into(),
        )
        .await
        .expect("publish");
    let refused = copy.await.expect_err("a second message for a queued task");
    assert!(refused.to_string().contains("per subject"), "{refused}");
    let mut stream = js.get_stream("GRIP_TASKS").await.expect("the stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);

    let _w = cluster.worker("w1");
    let (status, _, body) = poll(&base, "once", Duration::from_secs(15), |s, _| s == 200).await;
    assert_eq!(
        (status, &body["output"]),
        (200, &json!("echo: once")),
        "{body}"
    );
    assert_eq!(stream.info().await.expect("info").state.messages, 0);
    assert_eq!(record(&base, "a.b").await.0, 400, "no such key is read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_survives_a_rolling_deploy_of_its_workers_without_using_its_attempts() {
    // One attempt allowed: a delivery given back by a stopping worker must not count.
    let cluster = Cluster::new("max_attempts = 1");
    let mut w1 = cluster.worker("w1");
    let (_front, base) = cluster.front();
    submit_slow(&base, "deployed", 4000).await;
    let _ = poll(&base, "deployed", Duration::from_secs(10), |_, b| {
        b["worker"] == "w1" && b["state"] == "running"
    })
    .await;
    // SIGTERM: w1 stops pulling, waits `shutdown_grace_ms` (2 s) for the task, gives it back.
    w1.terminate();
    let (_, _, queued) = record(&base, "deployed").await;
    assert_eq!(
        (&queued["state"], &queued["worker"]),
        (&json!("queued"), &json!("w1")),
        "{queued}"
    );
    let _w2 = cluster.worker("w2");
    let (status, h, body) = poll(&base, "deployed", Duration::from_secs(20), |s, _| {
        s == 200 || s == 500
    })
    .await;
    assert_eq!(
        (status, &body["output"]),
        (200, &json!("echo: deployed")),
        "{body}"
    );
    assert_eq!(header(&h, "x-grip-worker"), "w2");
    assert_eq!(header(&h, "x-grip-attempt"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_frozen_past_ack_wait_gives_its_task_up_to_the_one_that_took_it_over() {
    let cluster = Cluster::new("ack_wait_ms = 1500");
    let mut w1 = cluster.worker("w1");
    let (_front, base) = cluster.front();
    submit_slow(&base, "frozen", 4000).await;
    let (_, _, running) = poll(&base, "frozen", Duration::from_secs(10), |_, b| {
        b["worker"] == "w1"
    })
    .await;
    assert_eq!(running["worker"], "w1", "{running}");
    let _w2 = cluster.worker("w2");
    // Frozen (a stopped VM, a long pause) past ack_wait: the queue gives the task to w2. When
    // w1 wakes, it must see that and stop, not store its attempt's result over w2's.
    w1.pause();
    let _ = poll(&base, "frozen", Duration::from_secs(10), |_, b| {
        b["worker"] == "w2"
    })
    .await;
    w1.resume();
    let (status, h, body) = poll(&base, "frozen", Duration::from_secs(20), |s, _| s == 200).await;
    assert_eq!(
        (status, &body["output"]),
        (200, &json!("echo: frozen")),
        "{body}"
    );
    assert_eq!(
        header(&h, "x-grip-worker"),
        "w2",
        "the first result stored is w2's"
    );
    // 2, or 3 when the redelivery went first to a pull w1 had asked for before it froze.
    assert_ne!(header(&h, "x-grip-attempt"), "1");
    // w1 gave the task up without going down, and the cluster carries on.
    assert!(!w1.exited());
    let (status, _, next) = submit(&base, &json!({"input": "next"})).await;
    assert_eq!(
        (status, &next["output"]),
        (200, &json!("echo: next")),
        "{next}"
    );
}

//! `grip run --nats`: the task is submitted to the cluster's queue and a worker runs it; its
//! events come back from NATS as they happen (the text streamed to stdout, a short trace on
//! stderr) and its result from the cluster's record.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use host::queue::Queue;
use host::queue::front::Submitted;
use host::spec::TaskSpec;
use serde_json::Value;

use crate::{RunArgs, load_config, spec_of};

/// How long the CLI waits for a queued task's result.
const WAIT: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn run(args: RunArgs, url: String) -> anyhow::Result<ExitCode> {
    let loaded = load_config(args.queue_config.as_deref())?;
    let mut config = loaded.queue;
    config.url = Some(url);
    let id = args.id.clone().unwrap_or_else(host::daemon::new_task_id);
    let spec = TaskSpec {
        stream: !args.no_stream,
        id: Some(id.clone()),
        ..spec_of(&args)?
    };
    spec.check_fields(&host::spec::Permissive)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt.block_on(async {
        let queue = Queue::connect(&config, &loaded.conversations, "grip-run").await?;
        let events = queue.events(&id).await?;
        let follow = !args.json;
        match queue.submit(&spec).await? {
            Submitted::New => eprintln!("[queued as task {id}]"),
            Submitted::Existing(_) => eprintln!("[task {id} was submitted before: its result]"),
        }
        let printer = tokio::spawn(print_events(events, follow, args.quiet));
        let record = queue
            .wait(&id, WAIT)
            .await?
            .with_context(|| format!("the record of task {id} disappeared"))?;
        // The worker's last frames arrive about when the record does.
        let streamed = tokio::time::timeout(Duration::from_millis(500), printer)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        let (status, body) = record.answer(&id);
        anyhow::Ok((status, (body, streamed)))
    })?;
    let (body, streamed) = body;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else if status == 200 {
        if !streamed {
            println!("{}", body["output"].as_str().unwrap_or_default());
        } else {
            println!();
        }
    } else {
        eprintln!(
            "error: {} ({})",
            body["error"]["message"]
                .as_str()
                .unwrap_or("the task failed"),
            body["error"]["type"].as_str().unwrap_or("?")
        );
    }
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints the task's events until its finish: text chunks to stdout, a line per prompt, tool
/// round and retry to stderr (unless `quiet`). Whether any text was printed.
async fn print_events(mut events: async_nats::Subscriber, follow: bool, quiet: bool) -> bool {
    let mut streamed = false;
    while let Some(m) = events.next().await {
        let text = String::from_utf8_lossy(&m.payload);
        let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let kind = event["type"].as_str().unwrap_or_default();
        match kind {
            "TextChunkEvent" if follow => {
                print!("{}", event["token"].as_str().unwrap_or_default());
                let _ = std::io::stdout().flush();
                streamed = true;
            }
            "TaskRetryEvent" if !quiet => {
                if streamed {
                    println!();
                }
                streamed = false;
                eprintln!(
                    "↻ task run {}, everything above is void: {}",
                    event["attempt"],
                    event["reason"].as_str().unwrap_or_default()
                );
            }
            "StartActionsSubtaskEvent" if !quiet && follow => {
                let names: Vec<&str> = event["calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                eprintln!("[tools: {}]", names.join(", "));
            }
            "FinishTaskEvent" => return streamed,
            _ => {}
        }
    }
    streamed
}

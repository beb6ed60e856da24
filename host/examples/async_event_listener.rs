//! The spec's async event listener example: an async handler sees every event of a streaming
//! async task, printing text chunks as they arrive.
//!
//! Run with `cargo build && cargo run -p host --example async_event_listener`.

use std::io::Write;

use host::events::HandlerResult;
use host::{EventBus, EventListener, LoaderOptions, PromptTask, Registry};
use plugin_api::wire::{Event, EventKind};

async fn async_handler(event: Event) -> HandlerResult {
    match &event.kind {
        EventKind::TextChunk { token } => {
            print!("{token}");
            std::io::stdout().flush()?;
        }
        other => eprintln!("[{}]", other.type_name()),
    }
    // Pretend to write the event somewhere, without blocking the task.
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    Ok(Some(event))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let registry = Registry::load_dirs(&["manifests".into()], &LoaderOptions::from_env());
    for refused in registry.refused() {
        eprintln!("warning: {}", refused.error);
    }
    let driver = registry
        .get("scripted")
        .ok_or_else(|| {
            anyhow::anyhow!("the scripted plugin is not loaded: run `cargo build` first")
        })?
        .new_driver(Some(&serde_json::json!({"chunk_chars": 3, "delay_ms": 20})))?;

    let _listener =
        EventBus::global().add_listener(EventListener::on_event_async("printer", async_handler));
    let result = PromptTask::new(driver, "Hello, streaming world")
        .stream(true)
        .async_run()
        .await?;
    println!("\nresult: {}", result.text);
    Ok(())
}

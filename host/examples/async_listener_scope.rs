//! The spec's context-manager example: three async listeners in scope at once (they run
//! concurrently: three 100 ms handlers cost about 100 ms per event, not 300), then out of scope.
//!
//! Run with `cargo build && cargo run -p host --example async_listener_scope`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use host::events::HandlerResult;
use host::{EventBus, EventListener, LoaderOptions, PromptTask, Registry};
use plugin_api::wire::Event;

fn slow_listener(name: &'static str) -> EventListener {
    EventListener::on_event_async(name, move |event: Event| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        eprintln!("{name} handled {}", event.kind.type_name());
        HandlerResult::Ok(None)
    })
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
        .new_driver(None)?;
    let bus = Arc::new(EventBus::new());
    let task = PromptTask::new(driver, "Hello").event_bus(Arc::clone(&bus));

    {
        // `async with EventListener(handler1), EventListener(handler2), EventListener(handler3):`
        let _a = bus.add_listener(slow_listener("handler1"));
        let _b = bus.add_listener(slow_listener("handler2"));
        let _c = bus.add_listener(slow_listener("handler3"));
        let start = Instant::now();
        let result = task.async_run().await?;
        println!(
            "{} (4 events x 3 listeners x 100 ms took {:?})",
            result.text,
            start.elapsed()
        );
    }
    // Out of scope: nothing listens any more, and the sync path is allowed again.
    let result = tokio::task::spawn_blocking(move || task.run()).await??;
    println!("{} (no listeners)", result.text);
    Ok(())
}

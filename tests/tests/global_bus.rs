//! The global default bus (Griptape's `EventBus`): a task that carries no bus publishes there.
//! In its own test binary, since every task without a bus in the process would publish to it.

use std::sync::{Arc, Mutex};

use e2e::first_party_registry;
use host::events::HandlerResult;
use host::{EventBus, EventListener, PromptTask};
use plugin_api::wire::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_a_bus_publishes_on_the_global_bus_within_the_listener_scope() {
    let registry = first_party_registry();
    let driver = registry.get("scripted").unwrap().new_driver(None).unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = Arc::clone(&seen);
    let guard = EventBus::global().add_listener(EventListener::on_event_async(
        "global",
        move |e: Event| {
            let s = Arc::clone(&s);
            async move {
                s.lock().unwrap().push(e.kind.type_name().to_owned());
                HandlerResult::Ok(None)
            }
        },
    ));
    let task = PromptTask::new(driver.clone(), "hello");
    task.async_run().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "StartTaskEvent",
            "StartPromptEvent",
            "FinishPromptEvent",
            "FinishTaskEvent"
        ]
    );
    drop(guard);
    task.async_run().await.unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "out of scope, the listener hears nothing"
    );
    // With the async listener gone, the sync path works on the global bus again.
    tokio::task::block_in_place(|| PromptTask::new(driver, "sync").run()).unwrap();
}

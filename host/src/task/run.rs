//! One run of a task (its id, bus and finish claim), and stopping a run from outside.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use plugin_api::wire::{Event, EventKind, Usage};

use super::{StopReason, TaskError};
use crate::events::EventBus;

/// One run's identity and bus.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Unique per `run()` / `async_run()` call.
    pub run_id: String,
    /// Where this run's events go.
    pub bus: Arc<EventBus>,
    state: Arc<RunState>,
}

/// Whether a run's finish event has gone out, and whether a runner stopped it.
#[derive(Debug, Default)]
struct RunState {
    finished: AtomicBool,
    stopped: OnceLock<StopReason>,
}

impl RunContext {
    /// A new run on `bus`, with a fresh id.
    pub(super) fn new(bus: Arc<EventBus>) -> Self {
        Self {
            run_id: uuid::Uuid::new_v4().simple().to_string(),
            bus,
            state: Arc::default(),
        }
    }

    /// Claims the run's one finish event: true for the first caller only.
    pub(super) fn claim_finish(&self) -> bool {
        !self.state.finished.swap(true, Ordering::AcqRel)
    }

    pub(super) fn is_finished(&self) -> bool {
        self.state.finished.load(Ordering::Acquire)
    }

    /// The sync path's check between two steps.
    pub(super) fn check_stopped(&self) -> Result<(), TaskError> {
        match self.state.stopped.get() {
            Some(r) => Err(TaskError::Stopped(*r)),
            None => Ok(()),
        }
    }
}

/// Ends a task's run from outside it (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskStopper {
    task_id: String,
    current: Arc<Mutex<Option<RunContext>>>,
}

impl TaskStopper {
    pub(super) fn new(task_id: String, current: Arc<Mutex<Option<RunContext>>>) -> Self {
        Self { task_id, current }
    }

    /// Publishes the current run's `FinishTaskEvent` with a [`TaskError::Stopped`] error and
    /// flushes the listener drivers, unless the run already finished (or never started).
    /// Returns whether it published. Nothing of that run is published afterwards.
    pub async fn stop(&self, reason: StopReason) -> bool {
        let ctx = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(ctx) = ctx else {
            return false;
        };
        let _ = ctx.state.stopped.set(reason);
        if !ctx.claim_finish() {
            return false;
        }
        let kind = EventKind::FinishTask {
            output: None,
            error: Some(TaskError::Stopped(reason).to_string()),
            usage: Usage::default(),
        };
        let e = Event::new(self.task_id.clone(), ctx.run_id.clone(), kind);
        ctx.bus.apublish_event(&e).await;
        ctx.bus.aflush().await;
        true
    }
}

//! `grip worker`: pulls tasks from the queue and runs each the way the daemon does (the same
//! build, path choice, limits, timeout and listeners: [`crate::daemon`]'s own functions), its
//! events published as they happen and its record stored before the task is acked.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{AckKind, consumer};
use futures::StreamExt;
use plugin_api::wire::{Event, EventKind, Usage};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::task::TaskTracker;

use super::front::{ATTEMPT_HEADER, EVENT_HEADER};
use super::{Job, Queue, QueueError};
use crate::daemon::AppState;
use crate::daemon::tasks::{self, ConversationTurn, Ended, Hooks};
use crate::results::{TaskRecord, TaskState};
use crate::spec::{SpecError, TaskSpec};
use crate::task::StopReason;

/// How long one pull waits for a task before asking again.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed pull (NATS away): the client reconnects meanwhile.
const PULL_RETRY: Duration = Duration::from_millis(500);

/// Runs tasks from `queue` until `shutdown` resolves, `queue.concurrency` at once (the
/// state's task permits); then lets the running ones finish within the daemon's shutdown
/// grace, and hands the rest back to the queue at once.
///
/// # Errors
/// When the stream or its consumer does not exist.
pub async fn run(
    state: Arc<AppState>,
    queue: Queue,
    name: String,
    shutdown: impl Future<Output = ()>,
) -> Result<(), QueueError> {
    let c = queue.config();
    let stream = queue
        .js
        .get_stream(&c.stream)
        .await
        .map_err(|e| queue.error(&format!("stream `{}`", c.stream), &e))?;
    let consumer: consumer::PullConsumer = stream
        .get_consumer(&c.consumer)
        .await
        .map_err(|e| queue.error(&format!("consumer `{}`", c.consumer), &e))?;
    let running = TaskTracker::new();
    let worker = Arc::new(Worker { state, queue, name });
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&worker.state.task_permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let pulled = tokio::select! {
            () = &mut shutdown => break,
            m = pull_one(&consumer) => m,
        };
        match pulled {
            Ok(Some(msg)) => {
                let w = Arc::clone(&worker);
                running.spawn(async move { w.handle(msg, permit).await });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("pulling a task failed: {e}");
                tokio::time::sleep(PULL_RETRY).await;
            }
        }
    }
    tracing::info!(running = running.len(), "worker stopping: no new tasks");
    running.close();
    let grace = Duration::from_millis(worker.state.config.server.shutdown_grace_ms);
    if tokio::time::timeout(grace, running.wait()).await.is_err() {
        // Each stopped task naks its message: another worker takes it now, not after ack_wait.
        worker.state.shutdown.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), running.wait()).await;
    }
    Ok(())
}

/// One task from the consumer, or `None` when none came within [`PULL_WAIT`].
async fn pull_one(
    consumer: &consumer::PullConsumer,
) -> Result<Option<async_nats::jetstream::Message>, async_nats::Error> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_WAIT)
        .messages()
        .await?;
    match batch.next().await {
        Some(m) => Ok(Some(m?)),
        None => Ok(None),
    }
}

struct Worker {
    state: Arc<AppState>,
    queue: Queue,
    name: String,
}

/// How a delivery ended for the queue.
enum Settle {
    /// The record is stored: the task is done with.
    Ack,
    /// Give it back for another worker (this one is stopping).
    Nak,
}

impl Worker {
    async fn handle(&self, msg: async_nats::jetstream::Message, permit: OwnedSemaphorePermit) {
        let attempt = msg
            .info()
            .map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX));
        let (msg, acker) = msg.split();
        let acker = Arc::new(acker);
        let job = match serde_json::from_slice::<Job>(&msg.payload) {
            Ok(j) if j.spec.id.as_deref().is_some_and(crate::spec::is_valid_id) => j,
            Ok(_) | Err(_) => {
                // Not ours to run, and never will be: terminate it rather than redeliver.
                tracing::error!(subject = %msg.subject, "a queued message is not a grip task; dropped");
                let _ = acker.ack_with(AckKind::Term).await;
                return;
            }
        };
        let id = job.spec.id.clone().unwrap_or_default();
        let span = tracing::info_span!("queued", task_id = %id, attempt, worker = %self.name);
        let heartbeat = tokio::spawn(heartbeat(
            Arc::clone(&acker),
            Duration::from_millis(self.queue.config().ack_wait_ms / 3)
                .max(Duration::from_millis(50)),
        ));
        let settle = tracing::Instrument::instrument(
            self.deliver(&id, job.spec, attempt, permit, &msg.payload),
            span,
        )
        .await;
        heartbeat.abort();
        let settled = match settle {
            Settle::Ack => acker.double_ack().await,
            Settle::Nak => acker.ack_with(AckKind::Nak(None)).await,
        };
        if let Err(e) = settled {
            // The record is stored: a redelivery finds it and only acks.
            tracing::warn!(task_id = %id, "settling the task with the queue failed: {e}");
        }
    }

    /// Runs the delivery of task `id` (unless it has ended already or used its attempts) and
    /// stores its record.
    async fn deliver(
        &self,
        id: &str,
        spec: TaskSpec,
        attempt: u32,
        permit: OwnedSemaphorePermit,
        payload: &[u8],
    ) -> Settle {
        let previous = self.queue.record(id).await.ok().flatten();
        if previous.as_ref().is_some_and(|r| r.state.ended()) {
            tracing::info!(task_id = %id, "delivered again after its record was stored: acked");
            return Settle::Ack;
        }
        let max = self.queue.config().max_attempts;
        if attempt > max {
            // The conversation a dying attempt held is free now, not when its lease runs out.
            if let Some(c) = &spec.conversation_id
                && let Err(e) = self.state.conversations.end(c, id, None).await
            {
                tracing::warn!(task_id = %id, "releasing the conversation failed: {e}");
            }
            let last = previous.and_then(|r| r.worker);
            return self.dead_letter(id, attempt - 1, last, payload).await;
        }
        let running = TaskRecord::pending(TaskState::Running, attempt, Some(self.name.clone()));
        if let Err(e) = self.queue.put_record(id, &running).await {
            tracing::warn!(task_id = %id, "could not mark the task running: {e}");
        }
        let (record, finish) = match self.execute(id, spec, attempt, permit).await {
            Some(done) => done,
            None => return Settle::Nak,
        };
        let record = TaskRecord {
            attempt,
            worker: Some(self.name.clone()),
            finish_frame: Some(finish.clone()),
            ..record
        };
        self.store(id, &record).await;
        self.publish_end(id, attempt, finish).await;
        Settle::Ack
    }

    /// Builds and runs the task as the daemon does: its record and finish frame, or `None`
    /// when the worker is stopping and the task goes back to the queue.
    async fn execute(
        &self,
        id: &str,
        mut spec: TaskSpec,
        attempt: u32,
        permit: OwnedSemaphorePermit,
    ) -> Option<(TaskRecord, String)> {
        let st = &self.state;
        let refused = |(status, body): (axum::http::StatusCode, Value)| {
            let frame = finish_frame(id, &body);
            Some((TaskRecord::ended(status.as_u16(), body), frame))
        };
        let conversation = match &spec.conversation_id {
            Some(c) => match st.conversations.begin(c, id).await {
                Ok(turns) => {
                    spec.earlier_turns = turns;
                    Some(ConversationTurn::new(st, c, id, &spec.input))
                }
                Err(e) => return refused(tasks::conversation_error_body(&e, id)),
            },
            None => None,
        };
        let built = match tasks::build(st, spec).await {
            Ok(b) => b,
            Err(e) => {
                if let Some(c) = conversation {
                    c.release(None).await;
                }
                return refused(spec_error_body(st, &e, id));
            }
        };
        let first_event = (attempt > 1).then(|| EventKind::TaskRetry {
            attempt,
            reason: format!(
                "the worker running attempt {} stopped before the task ended",
                attempt - 1
            ),
        });
        let hooks = Hooks {
            first_event,
            conversation,
            record: None,
        };
        let mut started = tasks::start(st, built, permit, true, hooks);
        let relay = started.relay.take();
        let forward = relay.map(|rx| self.forward(id, attempt, started.withhold, rx));
        let finish = match forward {
            Some(f) => f.await,
            None => None,
        };
        let ended = (&mut started.join).await;
        drop(started.client);
        if matches!(ended, Ok(Ended::Stopped(StopReason::Shutdown))) {
            return None;
        }
        let (status, body) = tasks::outcome(&ended, id, started.path, started.withhold);
        let output = match &ended {
            Ok(Ended::Done(Ok(out))) => Some(out),
            _ => None,
        };
        let frame = match finish {
            Some(e) => frame_text(&tasks::sse_frame(&e, started.withhold, output)),
            None => finish_frame(id, &body),
        };
        Some((TaskRecord::ended(status.as_u16(), body), frame))
    }

    /// Publishes the run's events as they come, until its `FinishTaskEvent`, which it returns
    /// (that one goes out with the result, after the record is stored).
    async fn forward(
        &self,
        id: &str,
        attempt: u32,
        withhold: bool,
        mut rx: mpsc::UnboundedReceiver<Event>,
    ) -> Option<Event> {
        while let Some(event) = rx.recv().await {
            if matches!(event.kind, EventKind::FinishTask { .. }) {
                return Some(event);
            }
            let frame = tasks::sse_frame(&event, withhold, None);
            self.publish_frame(id, attempt, event.kind.type_name(), frame)
                .await;
        }
        None
    }

    async fn publish_frame(&self, id: &str, attempt: u32, kind: &str, frame: axum::body::Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(ATTEMPT_HEADER, attempt.to_string().as_str());
        headers.insert(EVENT_HEADER, kind);
        let subject = self.queue.events_subject(id);
        if let Err(e) = self
            .queue
            .client
            .publish_with_headers(subject, headers, frame)
            .await
        {
            tracing::debug!(task_id = %id, "an event was not published: {e}");
        }
    }

    /// Tells the task's followers it has ended: its finish frame to the event subject, and a
    /// word to the waiting fronts (the record is stored by now).
    async fn publish_end(&self, id: &str, attempt: u32, finish: String) {
        self.publish_frame(id, attempt, "FinishTaskEvent", finish.into_bytes().into())
            .await;
        let done = self.queue.done_subject(id);
        if let Err(e) = self.queue.client.publish(done, Default::default()).await {
            tracing::debug!(task_id = %id, "the end was not told: {e}");
        }
    }

    /// Stores the record, retrying while NATS is away: the task is acked only after this, so
    /// giving up would run it again; the daemon's shutdown ends the retries.
    async fn store(&self, id: &str, record: &TaskRecord) {
        let mut pause = Duration::from_millis(100);
        let mut stopping = self.state.shutdown.subscribe();
        loop {
            match self.queue.put_record(id, record).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(task_id = %id, "storing the result failed, retrying: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// A task no worker finished in its attempts: its record says so, the task goes to the
    /// dead-letter subject with the error, and it leaves the queue.
    async fn dead_letter(
        &self,
        id: &str,
        attempts: u32,
        last_worker: Option<String>,
        payload: &[u8],
    ) -> Settle {
        let message = format!(
            "task `{id}` was delivered {attempts} times and no worker finished it (the last to try was `{}`): it is dead-lettered on `{}.dead.{id}`",
            last_worker.as_deref().unwrap_or("?"),
            self.queue.config().subject_prefix,
        );
        tracing::error!("{message}");
        let body = tasks::error_body("dead_letter", &message, id);
        let frame = finish_frame(id, &body);
        let record = TaskRecord {
            state: TaskState::DeadLetter,
            attempt: attempts,
            worker: last_worker,
            status: Some(500),
            body: Some(body),
            finish_frame: Some(frame.clone()),
        };
        let mut headers = HeaderMap::new();
        headers.insert("Grip-Error", message.as_str());
        let subject = format!("{}.dead.{id}", self.queue.config().subject_prefix);
        let dead = self
            .queue
            .js
            .publish_with_headers(subject, headers, payload.to_vec().into())
            .await;
        if let Err(e) = dead {
            tracing::error!(task_id = %id, "publishing the dead letter failed: {e}");
        }
        self.store(id, &record).await;
        self.publish_end(id, attempts, frame).await;
        Settle::Ack
    }
}

/// Tells the queue the task is still being worked on, every `every`, until aborted.
async fn heartbeat(acker: Arc<Acker>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = acker.ack_with(AckKind::Progress).await {
            tracing::debug!("in-progress ack failed: {e}");
        }
    }
}

/// The status and body of a spec the worker cannot build.
fn spec_error_body(state: &AppState, e: &SpecError, id: &str) -> (axum::http::StatusCode, Value) {
    let (status, kind) = tasks::spec_error_status(state, e);
    (status, tasks::error_body(kind, &e.to_string(), id))
}

/// The `FinishTaskEvent` frame of a task that ended without running (refused, dead-lettered):
/// its error is the body's.
fn finish_frame(id: &str, body: &Value) -> String {
    let error = body["error"]["message"]
        .as_str()
        .unwrap_or("the task failed")
        .to_owned();
    let event = Event::new(
        id,
        "",
        EventKind::FinishTask {
            output: None,
            error: Some(error),
            usage: Usage::default(),
        },
    );
    frame_text(&tasks::sse_frame(&event, false, None))
}

fn frame_text(frame: &axum::body::Bytes) -> String {
    String::from_utf8_lossy(frame).into_owned()
}

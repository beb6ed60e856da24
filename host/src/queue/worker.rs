//! `grip worker`: pulls tasks from the queue and runs each the way the daemon does (the same
//! build, path choice, limits, timeout and listeners: [`crate::daemon`]'s own functions), its
//! events published as they happen and its record stored before the task is acked.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{AckKind, consumer};
use axum::http::StatusCode;
use futures::StreamExt;
use plugin_api::wire::{Event, EventKind, Usage};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::front::{ATTEMPT_HEADER, EVENT_HEADER};
use super::{Job, Queue, QueueError};
use crate::daemon::AppState;
use crate::daemon::tasks::{self, Ended, Hooks, Started};
use crate::results::{TaskRecord, TaskState};
use crate::spec::TaskSpec;
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
    /// Give it back, for another worker (this one is stopping) or for later (after the pause).
    Nak(Option<Duration>),
    /// Leave it: the queue gave it to another worker already (this one went silent too long).
    Abandon,
}

/// How a run ended for its worker.
enum Run {
    /// With this record and finish frame, to be stored.
    Ended(TaskRecord, String),
    /// The worker is stopping: the task goes back.
    Stopped,
    /// A store it needs (the conversations) is away: the task is tried again later.
    Unavailable,
    /// This worker lost the task to another (see [`heartbeat`]): it was stopped.
    Lost,
}

/// How long a task whose conversation store was away waits before it is delivered again.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);

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
        let (lost_tx, lost) = oneshot::channel();
        // Aborted when this delivery is settled, or unwound by a panic: never left beating.
        let _heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(
            self.queue.client.clone(),
            Arc::clone(&acker),
            Duration::from_millis(self.queue.config().ack_wait_ms),
            lost_tx,
        )));
        let delivery = Delivery {
            id: &id,
            attempt,
            payload: &msg.payload,
        };
        let settle =
            tracing::Instrument::instrument(self.deliver(&delivery, job.spec, permit, lost), span)
                .await;
        let settled = match settle {
            Settle::Ack => acker.double_ack().await,
            Settle::Nak(pause) => acker.ack_with(AckKind::Nak(pause)).await,
            Settle::Abandon => Ok(()),
        };
        if let Err(e) = settled {
            // The record is stored: a redelivery finds it and only acks.
            tracing::warn!(task_id = %id, "settling the task with the queue failed: {e}");
        }
    }

    /// Runs the delivery (unless its task has ended already or used its attempts) and stores
    /// the task's record.
    async fn deliver(
        &self,
        d: &Delivery<'_>,
        spec: TaskSpec,
        permit: OwnedSemaphorePermit,
        lost: oneshot::Receiver<()>,
    ) -> Settle {
        let id = d.id;
        let seen = match self.queue.read_record(id).await {
            Ok(r) => r,
            // Not knowing whether it ended, it is not run (it may have): asked again later.
            Err(e) => {
                tracing::warn!(task_id = %id, "reading the task's record failed: {e}");
                return Settle::Nak(Some(UNAVAILABLE_RETRY));
            }
        };
        let previous = seen.record.clone();
        if previous.as_ref().is_some_and(|r| r.state.ended()) {
            tracing::info!(task_id = %id, "delivered again after its record was stored: acked");
            return Settle::Ack;
        }
        // Runs given back (a worker stopping for a deploy) are not the task's fault; the others
        // ended with their worker.
        let (runs, given_back) = previous.as_ref().map_or((0, 0), |r| (r.runs, r.given_back));
        let failed = runs.saturating_sub(given_back);
        if failed >= self.queue.config().max_attempts {
            let last = previous.and_then(|r| r.worker);
            return self
                .dead_letter(d, failed, (runs, given_back), &spec, last)
                .await;
        }
        let run = Attempt {
            delivery: d.attempt,
            number: runs + 1,
        };
        let retry = (runs > 0).then(|| retry_reason(previous.as_ref(), run.number));
        let running = TaskRecord {
            runs: run.number,
            given_back,
            ..TaskRecord::pending(TaskState::Running, d.attempt, Some(self.name.clone()))
        };
        // Written over the record just read: no second read on the way to running.
        match self.queue.put_fenced(id, &running, seen).await {
            Ok(true) => {}
            // A later attempt runs it (this delivery waited in a frozen worker): not ours.
            Ok(false) => {
                tracing::warn!(task_id = %id, "a later attempt has the task: this delivery is left");
                return Settle::Abandon;
            }
            Err(e) => tracing::warn!(task_id = %id, "could not mark the task running: {e}"),
        }
        let (record, finish) = match self.execute(id, spec, run, retry, permit, lost).await {
            Run::Ended(record, finish) => (record, finish),
            Run::Stopped => return self.give_back(d, run.number, given_back, None).await,
            Run::Unavailable => {
                let pause = Some(UNAVAILABLE_RETRY);
                return self.give_back(d, run.number, given_back, pause).await;
            }
            Run::Lost => return Settle::Abandon,
        };
        let record = TaskRecord {
            attempt: d.attempt,
            worker: Some(self.name.clone()),
            finish_frame: Some(finish.clone()),
            runs: run.number,
            given_back,
            ..record
        };
        match self.store(id, &record).await {
            Some(true) => {}
            // A later attempt has the task (this worker was silent too long): its result is
            // the one that counts, and its delivery the one to ack.
            Some(false) => {
                tracing::warn!(task_id = %id, "another worker took the task over: this attempt's result is dropped");
                return Settle::Abandon;
            }
            // Stopping before the record could be stored: acked, the task would be lost.
            None => return Settle::Nak(None),
        }
        self.publish_end(id, run.number, finish).await;
        Settle::Ack
    }

    /// Gives the delivery back to the queue, its record counting it as given back (not an
    /// attempt), for another worker at once or after `pause`.
    async fn give_back(
        &self,
        d: &Delivery<'_>,
        runs: u32,
        given_back: u32,
        pause: Option<Duration>,
    ) -> Settle {
        let record = TaskRecord {
            runs,
            given_back: given_back + 1,
            ..TaskRecord::pending(TaskState::Queued, d.attempt, Some(self.name.clone()))
        };
        if let Err(e) = self.put_fenced_fresh(d.id, &record).await {
            // Then this delivery counts as an attempt: the task is still run again.
            tracing::warn!(task_id = %d.id, "recording the task as given back failed: {e}");
        }
        Settle::Nak(pause)
    }

    /// Builds and runs the task as the daemon does (a retry starting with a `TaskRetryEvent`
    /// saying why), until it ends, the worker stops, or `lost` says another worker has it now.
    async fn execute(
        &self,
        id: &str,
        spec: TaskSpec,
        run: Attempt,
        retry: Option<String>,
        permit: OwnedSemaphorePermit,
        mut lost: oneshot::Receiver<()>,
    ) -> Run {
        let st = &self.state;
        let attempt = run.number;
        // The conversation's lease is fenced by the queue's delivery, as the record is.
        let (built, conversation) = match tasks::prepare(st, spec, run.delivery).await {
            Ok(p) => p,
            Err((StatusCode::SERVICE_UNAVAILABLE, body)) => {
                tracing::warn!(task_id = %id, "not run now: {}", body["error"]["message"]);
                return Run::Unavailable;
            }
            Err((status, body)) => {
                let frame = finish_frame(id, &body);
                return Run::Ended(TaskRecord::ended(status.as_u16(), body), frame);
            }
        };
        let first_event = retry.map(|reason| EventKind::TaskRetry { attempt, reason });
        let hooks = Hooks {
            first_event,
            conversation,
            record: None,
        };
        let Started {
            path,
            withhold,
            mut join,
            client,
            relay,
            ..
        } = tasks::start(st, built, permit, true, hooks);
        let run = async {
            let finish = match relay {
                Some(rx) => self.forward(id, attempt, withhold, rx).await,
                None => None,
            };
            (finish, (&mut join).await)
        };
        let (finish, ended) = tokio::select! {
            r = run => r,
            Ok(()) = &mut lost => {
                // Dropping its client stops the task ("the client went away"); its hold on
                // the conversation was taken over, so it adds no turn.
                drop(client);
                return Run::Lost;
            }
        };
        drop(client);
        if matches!(ended, Ok(Ended::Stopped(StopReason::Shutdown))) {
            return Run::Stopped;
        }
        let (status, body) = tasks::outcome(&ended, id, path, withhold);
        let output = match &ended {
            Ok(Ended::Done(Ok(out))) => Some(out),
            _ => None,
        };
        let frame = match finish {
            Some(e) => frame_text(&tasks::sse_frame(&e, withhold, output)),
            None => finish_frame(id, &body),
        };
        Run::Ended(TaskRecord::ended(status.as_u16(), body), frame)
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

    /// Stores the final record, retrying while NATS is away: whether it was stored (`false`:
    /// the task has a result already, or a later attempt), `None` when the worker stopped
    /// first. The task is acked only after this, so giving up would run it again.
    async fn store(&self, id: &str, record: &TaskRecord) -> Option<bool> {
        self.until_done("storing the result", || self.put_fenced_fresh(id, record))
            .await
    }

    /// [`Queue::put_fenced`] over the record as it is now.
    async fn put_fenced_fresh(&self, id: &str, record: &TaskRecord) -> Result<bool, QueueError> {
        let seen = self.queue.read_record(id).await?;
        self.queue.put_fenced(id, record, seen).await
    }

    /// Runs `step` until it succeeds, pausing longer after each failure, or until the worker
    /// stops: its value, or `None` when the worker stopped first.
    async fn until_done<T, F, E>(&self, what: &str, mut step: impl FnMut() -> F) -> Option<T>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut pause = Duration::from_millis(100);
        let mut stopping = self.state.shutdown.subscribe();
        loop {
            match step().await {
                Ok(v) => return Some(v),
                Err(e) => tracing::warn!("{what} failed, retrying: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stopping.wait_for(|s| *s) => return None,
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// A task no worker finished in its attempts: the conversation it held is freed, the task
    /// goes to the dead-letter subject with the error (confirmed by the stream), its record
    /// says so, and it leaves the queue.
    async fn dead_letter(
        &self,
        d: &Delivery<'_>,
        attempts: u32,
        (runs, given_back): (u32, u32),
        spec: &TaskSpec,
        last: Option<String>,
    ) -> Settle {
        let id = d.id;
        // Freed now, not when the dying attempt's lease runs out: taken, then given back.
        if let Some(c) = &spec.conversation_id {
            let conversations = &self.state.conversations;
            let freed = match conversations.begin(c, id, d.attempt).await {
                Ok(_) => conversations.end(c, id, d.attempt, None).await,
                Err(e) => Err(e),
            };
            if let Err(e) = freed {
                tracing::warn!(task_id = %id, "releasing the conversation failed: {e}");
            }
        }
        let message = format!(
            "task `{id}` was delivered {attempts} times and no worker finished it (the last to try was `{}`): it is dead-lettered on `{}.dead.{id}`",
            last.as_deref().unwrap_or("?"),
            self.queue.config().subject_prefix,
        );
        tracing::error!("{message}");
        let body = tasks::error_body("dead_letter", &message, id);
        let frame = finish_frame(id, &body);
        let record = TaskRecord {
            state: TaskState::DeadLetter,
            attempt: d.attempt,
            worker: last,
            status: Some(500),
            body: Some(body),
            finish_frame: Some(frame.clone()),
            runs,
            given_back,
        };
        let subject = format!("{}.dead.{id}", self.queue.config().subject_prefix);
        let published = self
            .until_done("publishing the dead letter", || async {
                let mut headers = HeaderMap::new();
                headers.insert("Grip-Error", message.as_str());
                // Confirmed by the stream, and once: the task's id is the message's.
                headers.insert("Nats-Msg-Id", id);
                let payload = d.payload.to_vec().into();
                let ack = self
                    .queue
                    .js
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map(drop).map_err(|e| e.to_string())
            })
            .await;
        match (published, self.store(id, &record).await) {
            (Some(()), Some(true)) => self.publish_end(id, runs, frame).await,
            // A result came late, and it stands: nothing to tell.
            (Some(()), Some(false)) => {}
            _ => return Settle::Nak(None),
        }
        Settle::Ack
    }
}

/// Why `attempt` runs the task again, for its `TaskRetryEvent`, from the record the previous
/// delivery left.
fn retry_reason(previous: Option<&TaskRecord>, attempt: u32) -> String {
    let worker = previous.and_then(|p| p.worker.as_deref()).unwrap_or("?");
    if previous.is_some_and(|p| p.state == TaskState::Queued && p.given_back > 0) {
        format!(
            "worker `{worker}` gave the task back unfinished (it was stopping, or a store was away)"
        )
    } else {
        format!(
            "worker `{worker}` running attempt {} stopped before the task ended",
            attempt - 1
        )
    }
}

/// Which run of its task a delivery is.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// The queue's delivery count: the fence between a stale delivery and a newer one.
    delivery: u32,
    /// The run's number (1 for the first), counted in the record: what clients see.
    number: u32,
}

/// One delivery of a queued task.
struct Delivery<'a> {
    id: &'a str,
    /// 1 for the first.
    attempt: u32,
    payload: &'a [u8],
}

/// Tells the queue the task is still being worked on, every third of `ack_wait`, until
/// aborted. When no sign of life has reached the queue for `ack_wait` (the connection was
/// down, the acks failed, or the process was frozen), the queue has given the task to another
/// worker: `lost` says so.
async fn heartbeat(
    client: async_nats::Client,
    acker: Arc<Acker>,
    ack_wait: Duration,
    lost: oneshot::Sender<()>,
) {
    let every = (ack_wait / 3).max(Duration::from_millis(50));
    let mut alive_at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        // Before this beat: a late one does not undo the queue's redelivery.
        if alive_at.elapsed() >= ack_wait {
            tracing::warn!(
                "no sign of life reached the queue for {} ms: the task is another worker's now; this attempt stops",
                ack_wait.as_millis()
            );
            let _ = lost.send(());
            return;
        }
        // A publish while disconnected is only buffered: the connection says whether it left.
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        match acker.ack_with(AckKind::Progress).await {
            Ok(()) if connected => alive_at = tokio::time::Instant::now(),
            Ok(()) => {}
            Err(e) => tracing::debug!("in-progress ack failed: {e}"),
        }
    }
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

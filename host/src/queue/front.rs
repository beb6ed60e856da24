//! The submitting side of the queue, for `grip serve --nats` and `grip run --nats`: queue a
//! task once (by its id), follow its events, wait for its record.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::kv;
use futures::StreamExt;

use super::{Job, Queue, QueueError};
use crate::results::{TaskRecord, TaskState};
use crate::spec::TaskSpec;

/// How a submission went.
#[derive(Debug)]
pub enum Submitted {
    /// Queued now.
    New,
    /// The id was submitted before: that task's record (never a second run).
    Existing(TaskRecord),
}

/// Why a task was not queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The queue holds `queue.max_pending` tasks already.
    #[error("the queue is full ({0} tasks waiting or running); retry later")]
    Full(i64),
    /// The queue could not be reached or refused the task.
    #[error("{0}")]
    Queue(#[from] QueueError),
}

/// Header of each event message: the attempt that produced it.
pub const ATTEMPT_HEADER: &str = "Grip-Attempt";
/// Header of each event message: the event's type (`FinishTaskEvent` ends a run).
pub const EVENT_HEADER: &str = "Grip-Event";

impl Queue {
    /// Queues `spec` (its `id` set) unless that id was submitted before. The record is created
    /// first and only if absent, so two fronts given the same id queue it once; the message
    /// also carries the id as `Nats-Msg-Id`, which the stream deduplicates.
    ///
    /// # Errors
    /// [`SubmitError::Full`] when the stream is at its limit, `Queue` when NATS fails.
    pub async fn submit(&self, spec: &TaskSpec) -> Result<Submitted, SubmitError> {
        let id = spec.id.clone().unwrap_or_default();
        let queued = TaskRecord::pending(TaskState::Queued, 0, None);
        let bytes = serde_json::to_vec(&queued).map_err(|e| self.error("encoding", &e))?;
        match self.results.create(&id, bytes.into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let record = self.record(&id).await?.unwrap_or(queued);
                if record.state == TaskState::Queued {
                    // Queued, but perhaps never published (its front died in between): publish
                    // it. The stream keeps one message per task, so a copy is refused while the
                    // first is queued, and a worker given a task whose record has ended only
                    // acks it.
                    let _ = self.publish_job(&id, spec).await;
                }
                return Ok(Submitted::Existing(record));
            }
            Err(e) => return Err(self.error("creating the task's record", &e).into()),
        }
        if let Err(e) = self.publish_job(&id, spec).await {
            // Not queued: the id is free again, for the caller's retry.
            let _ = self.results.purge(&id).await;
            return Err(e);
        }
        Ok(Submitted::New)
    }

    /// Publishes the task on the queue's subject, acknowledged by the stream.
    async fn publish_job(&self, id: &str, spec: &TaskSpec) -> Result<(), SubmitError> {
        let job = serde_json::to_vec(&Job { spec: spec.clone() })
            .map_err(|e| self.error("encoding", &e))?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let published = match self
            .js
            .publish_with_headers(self.task_subject(id), headers, job.into())
            .await
        {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        };
        published.or_else(|e| {
            if queued_already(&e) {
                // The stream holds this task's message: it is queued, once.
                Ok(())
            } else if is_full(&e) {
                Err(SubmitError::Full(self.config.max_pending))
            } else {
                Err(self.error("queueing the task", &e).into())
            }
        })
    }

    /// The events of task `id` from now on, each an SSE frame; subscribe before submitting.
    ///
    /// # Errors
    /// When NATS fails.
    pub async fn events(&self, id: &str) -> Result<async_nats::Subscriber, QueueError> {
        self.client
            .subscribe(self.events_subject(id))
            .await
            .map_err(|e| self.error("subscribing to events", &e))
    }

    /// The record of `id` once the task has ended, or the latest one when `timeout` passes
    /// first (`None`: no such task). A worker says on `<prefix>.done.<id>` when it has stored
    /// a record; the record is also read again every few seconds, so a word lost to a
    /// reconnect costs only that delay. (A subscription, not a KV watch: a watch is a consumer
    /// on the server, one per waiting request.)
    ///
    /// A read that fails (NATS reconnecting) is tried again until `timeout`.
    ///
    /// # Errors
    /// When the record could not be read by then.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskRecord>, QueueError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done = self.client.subscribe(self.done_subject(id)).await.ok();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.record(id).await {
                Ok(Some(r)) if !r.state.ended() && !left.is_zero() => {}
                Ok(record) => return Ok(record),
                Err(e) if left.is_zero() => return Err(e),
                Err(e) => {
                    tracing::debug!(task_id = %id, "reading the record failed, retrying: {e}")
                }
            }
            // `false`: the subscription has ended, and only the rechecks are left.
            let word = async {
                match done.as_mut() {
                    Some(d) => d.next().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            let ended = tokio::select! {
                alive = word => !alive,
                () = tokio::time::sleep(RECHECK.min(left)) => false,
            };
            if ended {
                done = None;
            }
        }
    }
}

/// How often a waiting front reads the record again without a watch's word.
const RECHECK: Duration = Duration::from_secs(2);

/// Whether the stream refused the message because the task's subject holds its message
/// already (`discard_new_per_subject`).
fn queued_already(e: &async_nats::jetstream::context::PublishError) -> bool {
    let text = e.to_string();
    text.contains("per subject") || text.contains("per-subject")
}

/// Whether the stream refused the message for its limit (`discard: new`).
fn is_full(e: &async_nats::jetstream::context::PublishError) -> bool {
    let api =
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
    match api {
        Some(a) => a.error_code() == ErrorCode::STREAM_STORE_FAILED,
        None => e.to_string().contains("maximum messages"),
    }
}

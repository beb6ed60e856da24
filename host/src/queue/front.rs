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
                    // Queued, but perhaps never published (its front died in between): queue it
                    // again under the same message id. The stream drops the copy within its
                    // duplicate window, and a worker given a task whose record has ended only
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
            .publish_with_headers(self.tasks_subject(), headers, job.into())
            .await
        {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        };
        published.map_err(|e| {
            if is_full(&e) {
                SubmitError::Full(self.config.max_pending)
            } else {
                self.error("queueing the task", &e).into()
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
    /// # Errors
    /// When the record cannot be read at all.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskRecord>, QueueError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done = self.client.subscribe(self.done_subject(id)).await.ok();
        loop {
            let record = self.record(id).await?;
            match &record {
                Some(r) if !r.state.ended() => {}
                _ => return Ok(record),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(record);
            }
            let word = async {
                match done.as_mut() {
                    Some(d) => {
                        d.next().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = word => {}
                () = tokio::time::sleep(RECHECK.min(left)) => {}
            }
        }
    }
}

/// How often a waiting front reads the record again without a watch's word.
const RECHECK: Duration = Duration::from_secs(2);

/// Whether the stream refused the message for its limit (`discard: new`).
fn is_full(e: &async_nats::jetstream::context::PublishError) -> bool {
    let api =
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
    match api {
        Some(a) => a.error_code() == ErrorCode::STREAM_STORE_FAILED,
        None => e.to_string().contains("maximum messages"),
    }
}

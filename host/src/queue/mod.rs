//! Tasks on NATS JetStream: `grip serve --nats` queues them, `grip worker` runs them, on as
//! many machines as the cluster has.
//!
//! - **The queue** is a work-queue stream (`GRIP_TASKS`, subject `grip.tasks.<id>`, one message
//!   per task) with one durable pull consumer that every worker shares. A worker pulls a task
//!   only when it has a free slot, says it is still working every third of `ack_wait` (an
//!   in-progress ack), and acks the task once its result is stored. A worker that dies stops
//!   saying so: after `ack_wait` the task is delivered to another worker (**at least once**),
//!   and one that went silent that long stops its run. A task delivered more than
//!   `max_attempts` times is dead-lettered: its record says so with the error, and it is
//!   published on `grip.dead.<id>` (stream `GRIP_DEAD`).
//! - **Records** ([`crate::results::TaskRecord`]) are in the KV bucket `grip_results`, one key
//!   per task id: `queued` when the front accepts the task (created only if absent: a
//!   resubmitted id is the same task, never a second one), `running` with the attempt and the
//!   worker, then `done` with the status and body the daemon would have answered.
//! - **Events** go out on `grip.events.<id>`, in order, each an SSE frame as the daemon sends it;
//!   a task run again starts with a `TaskRetryEvent`. They are core NATS messages (at most
//!   once): the record is what is durable, and a relayed stream ends with the record's finish
//!   frame.
//! - **Conversations** are in the KV bucket `grip_conversations` (see [`crate::conversation`]).
//!
//! Every name is configurable in `[queue]` (see [`QueueConfig`]).

pub mod front;
pub mod worker;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use serde::{Deserialize, Serialize};

use crate::conversation::{ConversationConfig, Conversations};
use crate::results::TaskRecord;
use crate::spec::TaskSpec;

/// `[queue]`: where the tasks go and how they are run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The NATS server(s), `nats://host:4222` (comma-separated for a cluster); `--nats` sets it.
    #[serde(default)]
    pub url: Option<String>,
    /// The work-queue stream.
    #[serde(default = "d::stream")]
    pub stream: String,
    /// Subjects start with this: `<prefix>.tasks`, `<prefix>.events.<id>`, `<prefix>.dead.<id>`.
    #[serde(default = "d::subject_prefix")]
    pub subject_prefix: String,
    /// The workers' shared durable consumer.
    #[serde(default = "d::consumer")]
    pub consumer: String,
    /// The KV bucket of task records.
    #[serde(default = "d::results_bucket")]
    pub results_bucket: String,
    /// The KV bucket of conversations.
    #[serde(default = "d::conversations_bucket")]
    pub conversations_bucket: String,
    /// The stream dead letters are kept in.
    #[serde(default = "d::dead_letter_stream")]
    pub dead_letter_stream: String,
    /// Tasks waiting or running at once; beyond it a submission is refused (429).
    #[serde(default = "d::max_pending")]
    pub max_pending: i64,
    /// Tasks one worker runs at once.
    #[serde(default = "d::concurrency")]
    pub concurrency: usize,
    /// How long a worker may go without a sign of life before its task goes to another.
    #[serde(default = "d::ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Runs of a task before it is dead-lettered (deliveries a worker gave back unfinished, as
    /// when it stops, are not counted).
    #[serde(default = "d::max_attempts")]
    pub max_attempts: u32,
    /// How long a task's record is kept.
    #[serde(default = "d::result_ttl_s")]
    pub result_ttl_s: u64,
    /// Bytes the records may take on the server; beyond it new tasks are refused (503) until
    /// old records expire.
    #[serde(default = "d::results_max_bytes")]
    pub results_max_bytes: i64,
    /// How long `POST /v1/tasks` waits for a queued task before answering 202 with its id.
    #[serde(default = "d::wait_timeout_ms")]
    pub wait_timeout_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            url: None,
            stream: d::stream(),
            subject_prefix: d::subject_prefix(),
            consumer: d::consumer(),
            results_bucket: d::results_bucket(),
            conversations_bucket: d::conversations_bucket(),
            dead_letter_stream: d::dead_letter_stream(),
            max_pending: d::max_pending(),
            concurrency: d::concurrency(),
            ack_wait_ms: d::ack_wait_ms(),
            max_attempts: d::max_attempts(),
            result_ttl_s: d::result_ttl_s(),
            results_max_bytes: d::results_max_bytes(),
            wait_timeout_ms: d::wait_timeout_ms(),
        }
    }
}

mod d {
    pub fn stream() -> String {
        "GRIP_TASKS".into()
    }
    pub fn subject_prefix() -> String {
        "grip".into()
    }
    pub fn consumer() -> String {
        "grip-workers".into()
    }
    pub fn results_bucket() -> String {
        "grip_results".into()
    }
    pub fn conversations_bucket() -> String {
        "grip_conversations".into()
    }
    pub fn dead_letter_stream() -> String {
        "GRIP_DEAD".into()
    }
    pub fn max_pending() -> i64 {
        10_000
    }
    pub fn concurrency() -> usize {
        4
    }
    pub fn ack_wait_ms() -> u64 {
        30_000
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn result_ttl_s() -> u64 {
        24 * 3600
    }
    pub fn results_max_bytes() -> i64 {
        1 << 30
    }
    pub fn wait_timeout_ms() -> u64 {
        600_000
    }
}

/// A queued task: the spec as the front accepted it (its `id` set).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The task.
    pub spec: TaskSpec,
}

/// A task's record as read, and the revision it was read at.
#[derive(Debug)]
pub struct SeenRecord {
    /// The record, if there is one.
    pub record: Option<TaskRecord>,
    revision: Option<u64>,
}

/// Why the queue cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("NATS ({url}): {message}")]
pub struct QueueError {
    /// The server(s).
    pub url: String,
    /// What failed.
    pub message: String,
}

/// A connection to the queue, with its streams and buckets made.
#[derive(Clone)]
pub struct Queue {
    config: QueueConfig,
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    results: kv::Store,
    conversations: kv::Store,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Connects to `config.url` (retrying until the server answers: a worker may start first)
    /// and makes the stream, the consumer and the buckets that do not exist yet (the
    /// conversations' bucket bounded by `limits`).
    ///
    /// # Errors
    /// A [`QueueError`] when no URL is set, or the server refuses a stream or bucket.
    pub async fn connect(
        config: &QueueConfig,
        limits: &ConversationConfig,
        name: &str,
    ) -> Result<Self, QueueError> {
        let url = config.url.clone().ok_or_else(|| QueueError {
            url: "-".into(),
            message: "no server: pass --nats URL or set queue.url".into(),
        })?;
        let fail = |what: &str, e: &dyn std::fmt::Display| queue_error(&url, what, e);
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|e| async move { tracing::info!("NATS: {e}") })
            .connect(url.as_str())
            .await
            .map_err(|e| fail("connecting", &e))?;
        let js = jetstream::new(client.clone());
        let ttl = Duration::from_secs(config.result_ttl_s);
        let results = ensure_bucket(&js, &config.results_bucket, ttl, config.results_max_bytes)
            .await
            .map_err(|e| fail(&format!("bucket `{}`", config.results_bucket), &e))?;
        let conversation_bytes =
            (limits.max_conversations as i64).saturating_mul(limits.max_bytes as i64 + 1024);
        let conversations = ensure_bucket(
            &js,
            &config.conversations_bucket,
            Duration::from_secs(limits.ttl_s),
            conversation_bytes,
        )
        .await
        .map_err(|e| fail(&format!("bucket `{}`", config.conversations_bucket), &e))?;
        let queue = Self {
            config: config.clone(),
            url: url.clone(),
            client,
            js,
            results,
            conversations,
        };
        queue
            .ensure_streams()
            .await
            .map_err(|e| fail("streams", &e))?;
        Ok(queue)
    }

    async fn ensure_streams(&self) -> Result<(), async_nats::Error> {
        let c = &self.config;
        let tasks = self
            .js
            .get_or_create_stream(stream::Config {
                name: c.stream.clone(),
                subjects: vec![self.task_subject("*")],
                retention: stream::RetentionPolicy::WorkQueue,
                max_messages: c.max_pending,
                // One message per task (its subject ends with its id), and a second publish
                // refused while it is queued: a resubmission never makes a second copy, however
                // long after the first.
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        // A stream made by an older grip (subject `<prefix>.tasks`) would take no task.
        let subjects = &tasks.cached_info().config.subjects;
        if !subjects.contains(&self.task_subject("*")) {
            return Err(format!(
                "stream `{}` takes {subjects:?}, not `{}`: it was made by an older grip; delete it (`nats stream rm {}`) once it is empty",
                c.stream,
                self.task_subject("*"),
                c.stream
            )
            .into());
        }
        tasks
            .get_or_create_consumer(
                &c.consumer,
                consumer::pull::Config {
                    durable_name: Some(c.consumer.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_millis(c.ack_wait_ms),
                    // Unbounded: the worker counts the attempts, and the delivery past them
                    // dead-letters the task. A delivery whose settling was lost comes again
                    // (and only acks), rather than staying in the stream, taking a slot.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await?;
        self.js
            .get_or_create_stream(stream::Config {
                name: c.dead_letter_stream.clone(),
                subjects: vec![format!("{}.dead.*", c.subject_prefix)],
                storage: stream::StorageType::File,
                max_age: Duration::from_secs(c.result_ttl_s.max(7 * 24 * 3600)),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// The subject task `id` is queued on (`*`: all of them).
    fn task_subject(&self, id: &str) -> String {
        format!("{}.tasks.{id}", self.config.subject_prefix)
    }

    /// The subject of task `id`'s events.
    fn events_subject(&self, id: &str) -> String {
        format!("{}.events.{id}", self.config.subject_prefix)
    }

    /// The subject a worker tells on that it stored task `id`'s final record.
    fn done_subject(&self, id: &str) -> String {
        format!("{}.done.{id}", self.config.subject_prefix)
    }

    /// The conversations, in the cluster's bucket; a task holds one for at most `lease`.
    pub fn conversations(&self, limits: ConversationConfig, lease: Duration) -> Conversations {
        Conversations::nats(self.conversations.clone(), limits, lease)
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The task's record, if there is one.
    ///
    /// # Errors
    /// When the bucket cannot be read.
    pub async fn record(&self, id: &str) -> Result<Option<TaskRecord>, QueueError> {
        Ok(self.read_record(id).await?.record)
    }

    /// The task's record with the revision a [`Queue::put_fenced`] writes over.
    ///
    /// # Errors
    /// When the bucket cannot be read, or the record is not one.
    pub async fn read_record(&self, id: &str) -> Result<SeenRecord, QueueError> {
        let read = (crate::kv_cas::read(&self.results, id).await)
            .map_err(|e| self.error("reading a record", &e))?;
        let record = read
            .value
            .map(|v| serde_json::from_slice(&v))
            .transpose()
            .map_err(|e| self.error(&format!("record of `{id}`"), &e))?;
        Ok(SeenRecord {
            record,
            revision: read.revision,
        })
    }

    /// Stores a worker's record of the task (running, or its result) over `seen`, unless the
    /// task has ended already or a later attempt has taken it over (the record's attempt is
    /// the fence): whether it was stored. So only the first result stored counts, and a stale
    /// delivery (one held by a worker that was frozen) is not run at all.
    ///
    /// # Errors
    /// When the bucket cannot be read or written.
    pub async fn put_fenced(
        &self,
        id: &str,
        record: &TaskRecord,
        mut seen: SeenRecord,
    ) -> Result<bool, QueueError> {
        let bytes = serde_json::to_vec(record).map_err(|e| self.error("encoding a record", &e))?;
        loop {
            let current = seen.record.as_ref();
            if current.is_some_and(|c| c.state.ended() || c.attempt > record.attempt) {
                return Ok(false);
            }
            // Written only over what was read: a concurrent writer sends the loop round again.
            let written =
                crate::kv_cas::write_over(&self.results, id, bytes.clone().into(), seen.revision)
                    .await
                    .map_err(|e| self.error("writing a record", &e))?;
            if written {
                return Ok(true);
            }
            seen = self.read_record(id).await?;
        }
    }

    fn error(&self, what: &str, e: &dyn std::fmt::Display) -> QueueError {
        queue_error(&self.url, what, e)
    }
}

fn queue_error(url: &str, what: &str, e: &dyn std::fmt::Display) -> QueueError {
    QueueError {
        url: url.to_owned(),
        message: format!("{what}: {e}"),
    }
}

/// The bucket `name`, made if missing: history 1 (a record is its latest value), entries
/// expiring after `max_age`, at most `max_bytes` in all.
///
/// The bucket's stream is made here with the stream settings of a KV bucket, rather than by
/// `create_key_value`: that one first reads the account's info, whose reply from a NATS 2.9
/// server (Debian 12's `nats-server`) lacks fields the client requires.
async fn ensure_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    max_bytes: i64,
) -> Result<kv::Store, async_nats::Error> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let made = js
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            max_bytes,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await;
    match made {
        Ok(_) => Ok(js.get_key_value(name).await?),
        // Another process may have made it meanwhile.
        Err(e) => js.get_key_value(name).await.map_err(|_| e.into()),
    }
}

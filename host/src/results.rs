//! A task's record, as `GET /v1/tasks/{id}` reads it: queued, running, or ended with the
//! response `POST /v1/tasks` gave (its status and JSON body). A single daemon keeps recent
//! records in memory ([`LocalResults`]); on a queue they live in a NATS KV bucket (see
//! [`crate::queue`]), written by the worker that ran the task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// It ended: `status` and `body` are its response.
    Done,
    /// No worker could finish it in the allowed deliveries: `body` says why.
    DeadLetter,
}

impl TaskState {
    /// Whether the task has ended (its response is known).
    pub fn ended(self) -> bool {
        matches!(self, TaskState::Done | TaskState::DeadLetter)
    }
}

/// What is known of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Where it is.
    pub state: TaskState,
    /// The delivery running or last run (1 for the first).
    #[serde(default)]
    pub attempt: u32,
    /// The worker running or last running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The response status, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The response body, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The task's last SSE frame (its `FinishTaskEvent` with the result), once ended, for a
    /// stream relayed from a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_frame: Option<String>,
    /// Runs workers started (on a queue; 0 for a single daemon's task). Counted here, not from
    /// the queue's delivery count: NATS 2.9 does not always count a delivery a worker gave back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub runs: u32,
    /// Of those, the runs a worker gave back without a fault of the task's (it was stopping,
    /// or a store it needed was away): not counted against `queue.max_attempts`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub given_back: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskRecord {
    /// A record of a task not yet ended.
    pub fn pending(state: TaskState, attempt: u32, worker: Option<String>) -> Self {
        Self {
            state,
            attempt,
            worker,
            status: None,
            body: None,
            finish_frame: None,
            runs: 0,
            given_back: 0,
        }
    }

    /// The record of an ended task.
    pub fn ended(status: u16, body: Value) -> Self {
        Self {
            state: TaskState::Done,
            attempt: 1,
            worker: None,
            status: Some(status),
            body: Some(body),
            finish_frame: None,
            runs: 0,
            given_back: 0,
        }
    }

    /// Which run this is, or was last (1 for the first).
    pub fn run(&self) -> u32 {
        if self.runs > 0 {
            self.runs
        } else {
            self.attempt
        }
    }

    /// What `GET /v1/tasks/{id}` answers: the ended task's response, or (202) where it is.
    pub fn answer(&self, task_id: &str) -> (u16, Value) {
        match (self.state.ended(), self.status, &self.body) {
            (true, Some(status), Some(body)) => (status, body.clone()),
            _ => (
                202,
                json!({"task_id": task_id, "state": self.state, "attempt": self.run(),
                       "worker": self.worker}),
            ),
        }
    }
}

/// Recent tasks' records in the daemon's memory: the newest `max` records, each kept for `ttl`
/// after its task was submitted.
#[derive(Debug)]
pub struct LocalResults {
    inner: Mutex<Inner>,
    max: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<String, watch::Sender<TaskRecord>>,
    /// Ids oldest first, with when they were submitted.
    order: VecDeque<(String, Instant)>,
}

/// How a submission's id was received.
#[derive(Debug)]
pub enum Claim {
    /// A new task: the caller runs it and records how it ended.
    New(Recorder),
    /// The id is taken: the task's record, updated when it ends.
    Existing(watch::Receiver<TaskRecord>),
}

/// Records the end of one task (a task dropped without ending is forgotten).
#[derive(Debug)]
pub struct Recorder {
    results: Arc<LocalResults>,
    id: String,
    done: bool,
}

impl Recorder {
    /// Records the task's response.
    pub fn finish(mut self, status: u16, body: Value) {
        self.done = true;
        if let Some(tx) = self.results.sender(&self.id) {
            tx.send_replace(TaskRecord::ended(status, body));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            // From the order too: a later claim of the id must not expire by this one's age.
            let mut inner = self.results.lock();
            inner.records.remove(&self.id);
            inner.order.retain(|(id, _)| *id != self.id);
        }
    }
}

impl LocalResults {
    /// Keeps up to `max` records, each for `ttl`.
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            max: max.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sender(&self, id: &str) -> Option<watch::Sender<TaskRecord>> {
        self.lock().records.get(id).cloned()
    }

    /// Takes `id` for a new running task, or returns the task that has it.
    pub fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let mut inner = self.lock();
        inner.expire(self.ttl, self.max);
        if let Some(tx) = inner.records.get(id) {
            return Claim::Existing(tx.subscribe());
        }
        let (tx, _) = watch::channel(TaskRecord::pending(TaskState::Running, 1, None));
        inner.records.insert(id.to_owned(), tx);
        inner.order.push_back((id.to_owned(), Instant::now()));
        Claim::New(Recorder {
            results: Arc::clone(self),
            id: id.to_owned(),
            done: false,
        })
    }

    /// The record of `id`, if it is known.
    pub fn get(&self, id: &str) -> Option<TaskRecord> {
        let mut inner = self.lock();
        inner.expire(self.ttl, self.max);
        inner.records.get(id).map(|tx| tx.borrow().clone())
    }
}

impl Inner {
    /// Forgets the records past their time, then the oldest beyond `max - 1` (room for one).
    fn expire(&mut self, ttl: Duration, max: usize) {
        while let Some((id, at)) = self.order.front() {
            let old = at.elapsed() > ttl || self.order.len() >= max;
            if !old {
                break;
            }
            // A running task's record stays (its recorder writes it when it ends); it goes on
            // the next pass after that.
            let running = self
                .records
                .get(id)
                .is_some_and(|tx| !tx.borrow().state.ended());
            if running && self.order.len() < max.saturating_mul(2) {
                break;
            }
            let id = id.clone();
            self.order.pop_front();
            self.records.remove(&id);
        }
    }
}

/// Waits until `rx`'s task has ended (or `timeout` passes): its record.
pub async fn wait_ended(mut rx: watch::Receiver<TaskRecord>, timeout: Duration) -> TaskRecord {
    let _ = tokio::time::timeout(timeout, rx.wait_for(|r| r.state.ended())).await;
    rx.borrow().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_given_up_and_claimed_again_is_kept_as_long_as_a_new_one() {
        let r = Arc::new(LocalResults::new(3, Duration::from_secs(60)));
        let Claim::New(first) = r.claim("a") else {
            panic!("a new id is new");
        };
        drop(first);
        let Claim::New(again) = r.claim("a") else {
            panic!("a dropped claim frees the id");
        };
        again.finish(200, json!({}));
        let Claim::New(b) = r.claim("b") else {
            panic!("new");
        };
        b.finish(200, json!({}));
        // Two records and room for a third: `a` is still there (its dropped claim left no
        // place in the order to expire it by).
        assert!(r.get("a").is_some());
    }

    #[tokio::test]
    async fn a_claimed_id_answers_the_first_task_and_then_its_result() {
        let r = Arc::new(LocalResults::new(10, Duration::from_secs(60)));
        let Claim::New(rec) = r.claim("a") else {
            panic!("a new id is new");
        };
        let Claim::Existing(rx) = r.claim("a") else {
            panic!("a taken id is taken");
        };
        assert_eq!(r.get("a").map(|r| r.state), Some(TaskState::Running));
        rec.finish(200, json!({"output": "x"}));
        let ended = wait_ended(rx, Duration::from_secs(1)).await;
        assert_eq!(ended.answer("a"), (200, json!({"output": "x"})));
    }

    #[test]
    fn the_oldest_ended_records_go_beyond_the_bound_and_a_dropped_task_is_forgotten() {
        let r = Arc::new(LocalResults::new(2, Duration::from_secs(60)));
        for id in ["a", "b", "c"] {
            if let Claim::New(rec) = r.claim(id) {
                rec.finish(200, json!({}));
            }
        }
        assert!(r.get("a").is_none());
        assert!(r.get("c").is_some());
        drop(r.claim("d"));
        assert!(r.get("d").is_none());
    }
}

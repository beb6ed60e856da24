//! Conversation memory across tasks: a task with a `conversation_id` starts with that
//! conversation's earlier turns (each an input and its answer) and, when it succeeds, adds its
//! own. The store is the process's memory for a single daemon and a NATS KV bucket when tasks
//! run on workers (see [`crate::queue`]), so any worker continues any conversation.
//!
//! One task at a time per conversation: [`Conversations::begin`] takes a lease that
//! [`Conversations::end`] gives back, and a second task meanwhile is refused with
//! [`ConversationError::Busy`] (never interleaved: two answers to one history would fork it).
//! A lease outlives its task's timeout, so a worker that died holding it does not lock the
//! conversation for ever, and the same task's next attempt (a redelivery) takes it over. A
//! lease is held by one attempt of one task: only that attempt adds its turn, so a worker that
//! lost its task (it went silent, the task was given to another) cannot add a second answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use plugin_api::wire::Message;
use serde::{Deserialize, Serialize};

/// `[conversations]`: the bounds of every conversation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationConfig {
    /// Turns kept; the oldest go first.
    #[serde(default = "d::max_turns")]
    pub max_turns: usize,
    /// Bytes of text kept (inputs and answers); the oldest turns go first.
    #[serde(default = "d::max_bytes")]
    pub max_bytes: usize,
    /// A conversation untouched this long is forgotten.
    #[serde(default = "d::ttl_s")]
    pub ttl_s: u64,
    /// Conversations kept in a single daemon's memory; the least recently used go first.
    #[serde(default = "d::max_conversations")]
    pub max_conversations: usize,
    /// Bytes of text a single daemon keeps in memory over all its conversations; beyond it the
    /// least recently used go first.
    #[serde(default = "d::max_total_bytes")]
    pub max_total_bytes: usize,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        Self {
            max_turns: d::max_turns(),
            max_bytes: d::max_bytes(),
            ttl_s: d::ttl_s(),
            max_conversations: d::max_conversations(),
            max_total_bytes: d::max_total_bytes(),
        }
    }
}

mod d {
    pub fn max_turns() -> usize {
        50
    }
    pub fn max_bytes() -> usize {
        256 * 1024
    }
    pub fn ttl_s() -> u64 {
        24 * 3600
    }
    pub fn max_conversations() -> usize {
        10_000
    }
    pub fn max_total_bytes() -> usize {
        64 << 20
    }
}

/// Why a conversation could not be continued.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConversationError {
    /// Another task of the conversation is running.
    #[error(
        "conversation `{conversation}` is busy with task `{task}`: its tasks run one at a time; retry when it has ended"
    )]
    Busy {
        /// The conversation.
        conversation: String,
        /// The task holding it.
        task: String,
    },
    /// The store failed (NATS unreachable, a corrupt record).
    #[error("conversation store: {0}")]
    Store(String),
}

/// One remembered exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Turn {
    input: String,
    output: String,
}

/// The task (and its attempt) holding a conversation, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    task: String,
    #[serde(default)]
    attempt: u32,
    until_ms: u64,
}

/// A conversation as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    turns: Vec<Turn>,
    #[serde(default)]
    lease: Option<Lease>,
    #[serde(default)]
    touched_ms: u64,
}

impl Record {
    /// Takes the lease for `task`'s `attempt`, unless another live task (or a later attempt
    /// of this one) holds it.
    fn lease(
        &mut self,
        conversation: &str,
        task: &str,
        attempt: u32,
        lease: Duration,
    ) -> Result<(), ConversationError> {
        let now = now_ms();
        if let Some(l) = &self.lease
            && (l.task != task || l.attempt > attempt)
            && l.until_ms > now
        {
            return Err(ConversationError::Busy {
                conversation: conversation.to_owned(),
                task: l.task.clone(),
            });
        }
        self.lease = Some(Lease {
            task: task.to_owned(),
            attempt,
            until_ms: now + lease.as_millis() as u64,
        });
        self.touched_ms = now;
        Ok(())
    }

    /// Gives the lease back and adds `turn`, within the limits, if `task`'s `attempt` still
    /// holds it: an attempt whose lease was taken over has no say (its answer would fork the
    /// history).
    fn release(
        &mut self,
        task: &str,
        attempt: u32,
        turn: Option<Turn>,
        limits: &ConversationConfig,
    ) {
        let held = self
            .lease
            .as_ref()
            .is_some_and(|l| l.task == task && l.attempt == attempt);
        if !held {
            return;
        }
        self.lease = None;
        self.touched_ms = now_ms();
        let Some(turn) = turn else { return };
        self.turns.push(turn);
        let excess = self.turns.len().saturating_sub(limits.max_turns);
        self.turns.drain(..excess);
        let mut bytes = self.bytes();
        while bytes > limits.max_bytes && !self.turns.is_empty() {
            bytes -= self.turns.remove(0).bytes();
        }
    }

    fn messages(&self) -> Vec<Message> {
        self.turns
            .iter()
            .flat_map(|t| {
                [
                    Message::user(t.input.clone()),
                    Message::assistant(t.output.clone()),
                ]
            })
            .collect()
    }

    fn expired(&self, ttl: Duration) -> bool {
        self.touched_ms + (ttl.as_millis() as u64) < now_ms()
    }

    fn bytes(&self) -> usize {
        self.turns.iter().map(Turn::bytes).sum()
    }
}

impl Turn {
    fn bytes(&self) -> usize {
        self.input.len() + self.output.len()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum Store {
    Local(Mutex<Local>),
    Nats(Box<kv::Store>),
}

/// A single daemon's conversations, and the bytes of text they hold.
#[derive(Default)]
struct Local {
    map: HashMap<String, Record>,
    bytes: usize,
}

/// The conversations of a daemon or of a cluster.
pub struct Conversations {
    store: Store,
    limits: ConversationConfig,
    /// How long a task may hold its conversation.
    lease: Duration,
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations")
            .field("nats", &matches!(self.store, Store::Nats(_)))
            .finish_non_exhaustive()
    }
}

/// Compare-and-set rounds before a store update gives up (each lost round is another task's
/// write to the same conversation, which then holds it).
const CAS_ROUNDS: usize = 8;

impl Conversations {
    /// Conversations in this process's memory; a task holds its conversation for at most
    /// `lease`.
    pub fn local(limits: ConversationConfig, lease: Duration) -> Self {
        Self {
            store: Store::Local(Mutex::new(Local::default())),
            limits,
            lease,
        }
    }

    /// Conversations in a NATS KV bucket (its `max_age` is the TTL).
    pub fn nats(kv: kv::Store, limits: ConversationConfig, lease: Duration) -> Self {
        Self {
            store: Store::Nats(Box::new(kv)),
            limits,
            lease,
        }
    }

    /// Starts `task`'s `attempt` (1 for its first run) on `conversation`: its earlier turns,
    /// as messages.
    ///
    /// # Errors
    /// [`ConversationError::Busy`] when another task holds it, `Store` when the store failed.
    pub async fn begin(
        &self,
        conversation: &str,
        task: &str,
        attempt: u32,
    ) -> Result<Vec<Message>, ConversationError> {
        let ttl = Duration::from_secs(self.limits.ttl_s);
        self.modify(conversation, |r| {
            if r.expired(ttl) {
                *r = Record::default();
            }
            r.lease(conversation, task, attempt, self.lease)?;
            Ok(r.messages())
        })
        .await
    }

    /// Ends `task`'s `attempt` on `conversation`, adding `(input, output)` when it succeeded
    /// (and the attempt still held the conversation).
    ///
    /// # Errors
    /// `Store` when the store failed (the turn is then not remembered).
    pub async fn end(
        &self,
        conversation: &str,
        task: &str,
        attempt: u32,
        turn: Option<(&str, &str)>,
    ) -> Result<(), ConversationError> {
        let turn = turn.map(|(i, o)| Turn {
            input: i.to_owned(),
            output: o.to_owned(),
        });
        self.modify(conversation, |r| {
            r.release(task, attempt, turn.clone(), &self.limits);
            Ok(())
        })
        .await
    }

    /// Applies `f` to the conversation's record and stores it, atomically.
    async fn modify<T>(
        &self,
        conversation: &str,
        f: impl FnMut(&mut Record) -> Result<T, ConversationError>,
    ) -> Result<T, ConversationError> {
        match &self.store {
            Store::Local(local) => {
                let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
                local.modify(conversation, &self.limits, f)
            }
            Store::Nats(kv) => modify_nats(kv, conversation, f).await,
        }
    }
}

impl Local {
    /// Applies `f` to the conversation's record, then forgets the least recently used others
    /// while the count or the bytes are over their bounds.
    fn modify<T>(
        &mut self,
        key: &str,
        limits: &ConversationConfig,
        f: impl FnOnce(&mut Record) -> Result<T, ConversationError>,
    ) -> Result<T, ConversationError> {
        if !self.map.contains_key(key) && self.map.len() >= limits.max_conversations {
            self.evict_oldest(key);
        }
        let record = self.map.entry(key.to_owned()).or_default();
        let before = record.bytes();
        let out = f(record);
        self.bytes = self.bytes - before + record.bytes();
        while self.bytes > limits.max_total_bytes && self.evict_oldest(key) {}
        out
    }

    /// Drops the least recently touched conversation, other than `keep`, that no task holds;
    /// whether there was one.
    fn evict_oldest(&mut self, keep: &str) -> bool {
        let oldest = self
            .map
            .iter()
            .filter(|(k, r)| r.lease.is_none() && k.as_str() != keep)
            .min_by_key(|(_, r)| r.touched_ms)
            .map(|(k, _)| k.clone());
        match oldest.and_then(|k| self.map.remove(&k)) {
            Some(r) => {
                self.bytes -= r.bytes();
                true
            }
            None => false,
        }
    }
}

/// Read, change, write with the revision read: a concurrent writer makes the write fail, and
/// the round starts again from what it wrote.
async fn modify_nats<T>(
    kv: &kv::Store,
    key: &str,
    mut f: impl FnMut(&mut Record) -> Result<T, ConversationError>,
) -> Result<T, ConversationError> {
    let store = |e: &dyn std::fmt::Display| ConversationError::Store(e.to_string());
    for _ in 0..CAS_ROUNDS {
        let read = crate::kv_cas::read(kv, key).await.map_err(|e| store(&e))?;
        let mut record = match &read.value {
            Some(v) => serde_json::from_slice(v).map_err(|e| store(&e))?,
            None => Record::default(),
        };
        let out = f(&mut record)?;
        let bytes = serde_json::to_vec(&record).map_err(|e| store(&e))?;
        // Only a lost race (another task wrote first) is worth another round; a full bucket
        // or NATS away is the answer.
        if crate::kv_cas::write_over(kv, key, bytes.into(), read.revision)
            .await
            .map_err(|e| store(&e))?
        {
            return Ok(out);
        }
    }
    Err(ConversationError::Store(format!(
        "conversation `{key}` kept changing under {CAS_ROUNDS} attempts to update it"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_turns: usize, max_bytes: usize) -> ConversationConfig {
        ConversationConfig {
            max_turns,
            max_bytes,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_second_task_is_refused_while_the_first_holds_the_conversation() {
        let c = Conversations::local(limits(10, 1000), Duration::from_secs(60));
        assert!(c.begin("c", "t1", 1).await.unwrap_or_default().is_empty());
        let busy = c.begin("c", "t2", 1).await;
        assert!(
            matches!(&busy, Err(ConversationError::Busy { task, .. }) if task == "t1"),
            "{busy:?}"
        );
        // The same task again (a redelivered attempt) takes its lease over.
        assert!(c.begin("c", "t1", 2).await.is_ok());
        // ...and the attempt it took over has no say any more: its answer is not a turn.
        assert!(c.end("c", "t1", 1, Some(("hi", "stale"))).await.is_ok());
        assert!(matches!(
            c.begin("c", "t2", 1).await,
            Err(ConversationError::Busy { .. })
        ));
        assert!(c.end("c", "t1", 2, Some(("hi", "hello"))).await.is_ok());
        let turns = c.begin("c", "t2", 1).await.unwrap_or_default();
        assert_eq!(turns.len(), 2);
        assert_eq!(turns[1].content, "hello");
        // An earlier attempt cannot take the lease back from a later one.
        assert!(matches!(
            c.begin("c", "t2", 0).await,
            Err(ConversationError::Busy { .. })
        ));
    }

    #[tokio::test]
    async fn a_daemon_keeps_at_most_its_total_bytes_the_least_recently_used_going_first() {
        let limits = ConversationConfig {
            max_total_bytes: 25,
            ..limits(10, 1000)
        };
        let c = Conversations::local(limits, Duration::from_secs(60));
        for name in ["a", "b", "c"] {
            assert!(c.begin(name, "t", 1).await.is_ok());
            assert!(c.end(name, "t", 1, Some(("0123", "456789"))).await.is_ok());
            // Distinct touch times (milliseconds) make "least recently used" one conversation.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        // Three conversations of ten bytes each: the oldest, `a`, was forgotten.
        assert!(c.begin("a", "u", 1).await.unwrap_or_default().is_empty());
        assert_eq!(c.begin("c", "u", 1).await.unwrap_or_default().len(), 2);
    }

    #[tokio::test]
    async fn an_expired_lease_frees_the_conversation() {
        let c = Conversations::local(limits(10, 1000), Duration::ZERO);
        assert!(c.begin("c", "t1", 1).await.is_ok());
        assert!(c.begin("c", "t2", 1).await.is_ok());
    }

    #[tokio::test]
    async fn turns_are_bounded_by_count_and_by_bytes_oldest_first() {
        let c = Conversations::local(limits(2, 12), Duration::from_secs(60));
        for (i, o) in [("a", "1"), ("b", "2"), ("c", "3")] {
            assert!(c.begin("x", "t", 1).await.is_ok());
            assert!(c.end("x", "t", 1, Some((i, o))).await.is_ok());
        }
        let m = c.begin("x", "u", 1).await.unwrap_or_default();
        let texts: Vec<&str> = m.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["b", "2", "c", "3"]);
        assert!(
            c.end("x", "u", 1, Some(("a long input", "answer")))
                .await
                .is_ok()
        );
        let m = c.begin("x", "v", 1).await.unwrap_or_default();
        assert_eq!(
            m.len(),
            0,
            "one turn over the byte bound is not kept either"
        );
    }

    #[tokio::test]
    async fn a_failed_task_adds_no_turn_and_frees_the_conversation() {
        let c = Conversations::local(limits(10, 1000), Duration::from_secs(60));
        assert!(c.begin("c", "t1", 1).await.is_ok());
        assert!(c.end("c", "t1", 1, None).await.is_ok());
        assert!(c.begin("c", "t2", 1).await.unwrap_or_default().is_empty());
    }
}

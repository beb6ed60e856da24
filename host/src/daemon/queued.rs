//! `POST /v1/tasks` on a front of a queue (`grip serve --nats`): the task is checked, queued
//! once by its id, and answered from the cluster: its record when it has ended (waiting up to
//! `queue.wait_timeout_ms`, then 202), at once with 202 for `"wait": false`, or its events
//! relayed as SSE from the worker that runs it, ending with its `FinishTaskEvent`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::tasks::{accepted, async_stream_body, error_body, new_task_id, record_response};
use super::{AppState, api_error};
use crate::queue::Queue;
use crate::queue::front::{ATTEMPT_HEADER, EVENT_HEADER, SubmitError, Submitted};
use crate::results::{TaskRecord, TaskState};
use crate::spec::TaskSpec;

/// How long a relayed stream whose record has ended waits for the worker's last frames.
const TRAILING: Duration = Duration::from_millis(500);

pub(super) async fn submit(state: &Arc<AppState>, queue: &Queue, mut spec: TaskSpec) -> Response {
    if let Err(e) = spec.check_fields(&**state) {
        return api_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
    }
    let id = spec.id.get_or_insert_with(new_task_id).clone();
    let wait = spec.wait.unwrap_or(true);
    // A waiting request holds a slot for as long as it waits: the front's own bound.
    let permit = match wait {
        true => match Arc::clone(&state.task_permits).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => return super::tasks::overloaded(state),
        },
        false => None,
    };
    let wait_for = Duration::from_millis(state.config.queue.wait_timeout_ms);
    // Subscribed before the task is queued: a worker may start it at once.
    let events = if spec.stream && wait {
        match queue.events(&id).await {
            Ok(s) => Some(s),
            Err(e) => return unavailable(&e),
        }
    } else {
        None
    };
    match queue.submit(&spec).await {
        Ok(Submitted::New) => {}
        Ok(Submitted::Existing(record)) if wait && !record.state.ended() => {
            return match queue.wait(&id, wait_for).await {
                Ok(r) => record_response(&id, &r.unwrap_or(record)),
                Err(e) => unavailable(&e),
            };
        }
        Ok(Submitted::Existing(record)) => return record_response(&id, &record),
        Err(SubmitError::Full(_)) => return queue_full(&id),
        Err(e) => return unavailable(&e),
    }
    if !wait {
        return accepted(&id, TaskState::Queued);
    }
    match events {
        Some(sub) => relay(queue.clone(), id, sub, wait_for, permit),
        None => match queue.wait(&id, wait_for).await {
            Ok(Some(r)) => record_response(&id, &r),
            Ok(None) => api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the record of task `{id}` disappeared"),
            ),
            Err(e) => unavailable(&e),
        },
    }
}

/// The worker's frames of task `id` as they come, then its `FinishTaskEvent`: from the worker,
/// or from the record when the record ends first (a frame lost to a reconnect).
fn relay(
    queue: Queue,
    id: String,
    mut sub: async_nats::Subscriber,
    wait_for: Duration,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Response {
    let task_id = id.clone();
    let body = async_stream_body(move |tx| async move {
        let _permit = permit;
        let ended = queue.wait(&id, wait_for);
        tokio::pin!(ended);
        let mut latest = Latest::default();
        let record = loop {
            tokio::select! {
                m = sub.next() => {
                    let Some(m) = m else { break None };
                    if !latest.admits(&m) {
                        continue;
                    }
                    let last = is_finish(&m);
                    if tx.send(Ok(m.payload)).await.is_err() || last {
                        return;
                    }
                }
                r = &mut ended => break r.ok().flatten(),
            }
        };
        // The record ended first: the worker's last frames are on their way.
        let drained = tokio::time::timeout(TRAILING, async {
            while let Some(m) = sub.next().await {
                if !latest.admits(&m) {
                    continue;
                }
                let last = is_finish(&m);
                if tx.send(Ok(m.payload)).await.is_err() || last {
                    return true;
                }
            }
            false
        })
        .await;
        if drained == Ok(true) {
            return;
        }
        let frame = match record {
            Some(TaskRecord {
                finish_frame: Some(f),
                ..
            }) => f,
            Some(r) => pending_frame(&id, &r),
            None => pending_frame(&id, &TaskRecord::pending(TaskState::Queued, 0, None)),
        };
        let _ = tx.send(Ok(frame.into())).await;
    });
    let mut r = super::tasks::event_stream(body);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&task_id) {
        h.insert("x-grip-task-id", v);
    }
    r
}

/// The attempt a relayed stream follows: the latest one seen. A frame of an earlier one (from
/// a worker that was frozen and has not yet noticed that its task went to another) is dropped,
/// so the client sees the new attempt's `TaskRetryEvent` and then that attempt alone.
#[derive(Debug, Default)]
struct Latest(u32);

impl Latest {
    fn admits(&mut self, m: &async_nats::Message) -> bool {
        let attempt = m
            .headers
            .as_ref()
            .and_then(|h| h.get(ATTEMPT_HEADER))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        if attempt < self.0 {
            return false;
        }
        self.0 = attempt;
        true
    }
}

fn is_finish(m: &async_nats::Message) -> bool {
    m.headers
        .as_ref()
        .and_then(|h| h.get(EVENT_HEADER))
        .is_some_and(|v| v.as_str() == "FinishTaskEvent")
}

/// The last frame of a relayed stream that ran out of time before its task ended: where the
/// task is, to be fetched later.
fn pending_frame(id: &str, record: &TaskRecord) -> String {
    let (_, body) = record.answer(id);
    format!("event: pending\ndata: {body}\n\n")
}

fn queue_full(id: &str) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(error_body(
            "overloaded",
            "the queue is full: as many tasks as it holds are waiting or running; retry later",
            id,
        )),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, super::tasks::RETRY_AFTER_SECS);
    r
}

/// 503: the queue (NATS) could not be used.
pub(super) fn unavailable(e: &dyn std::fmt::Display) -> Response {
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "queue_unavailable",
        e.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(attempt: &str) -> async_nats::Message {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ATTEMPT_HEADER, attempt);
        async_nats::Message {
            subject: "grip.events.t".into(),
            reply: None,
            payload: Default::default(),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_relay_drops_the_frames_of_an_attempt_that_was_taken_over() {
        let mut latest = Latest::default();
        let seen: Vec<bool> = ["1", "1", "2", "1", "2", "3", "2"]
            .iter()
            .map(|a| latest.admits(&frame(a)))
            .collect();
        assert_eq!(seen, [true, true, true, false, true, true, false]);
    }
}

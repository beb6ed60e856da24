//! Compare-and-set on a NATS KV bucket: how a task record or a conversation is changed when
//! several processes may write it at once.

use async_nats::jetstream::kv;
// The kv client's own type (`bytes::Bytes`), as axum re-exports it.
use axum::body::Bytes;

/// An entry as read: its value (none when absent or deleted) and the revision to write over
/// (none when the key never existed).
#[derive(Debug, Default)]
pub(crate) struct Read {
    pub(crate) value: Option<Bytes>,
    pub(crate) revision: Option<u64>,
}

/// Reads `key`.
pub(crate) async fn read(kv: &kv::Store, key: &str) -> Result<Read, kv::EntryError> {
    Ok(match kv.entry(key).await? {
        Some(e) => Read {
            value: (e.operation == kv::Operation::Put).then_some(e.value),
            revision: Some(e.revision),
        },
        None => Read::default(),
    })
}

/// Writes `value` at `key` only if it is still at `revision` (or, without one, still absent):
/// `Ok(false)` when another writer came first (read again and retry), an error when the write
/// failed otherwise (a full bucket, NATS away).
pub(crate) async fn write_over(
    kv: &kv::Store,
    key: &str,
    value: Bytes,
    revision: Option<u64>,
) -> Result<bool, String> {
    let raced = match revision {
        Some(rev) => match kv.update(key, value, rev).await {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => true,
            Err(e) => return Err(e.to_string()),
        },
        None => match kv.create(key, value).await {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => true,
            Err(e) => return Err(e.to_string()),
        },
    };
    Ok(!raced)
}

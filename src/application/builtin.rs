//! The handlers built into the `borough` binary (`borough start --handler echo|kv`):
//! - `echo` replies with its request, a JSON object, plus `"replied": true` (the smoke test
//!   of a cluster's request path);
//! - `kv` takes the key-value commands as JSON requests (`get`, `put`, `del`, `batch`,
//!   `range`, `size`, `info`, and `swap`: a read and a write in one request), run on the
//!   partition's leader.
//!
//! Invariants: a request that does not parse is refused with the parser's reason and
//! touches nothing; replies are JSON objects.

use crate::application::handler::{handler_fn, Handler, HandlerError};
use crate::partition::command::BatchOperation;
use crate::partition::kv_store::{KeyBound, RangeQuery};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The built-in handler called `name`, if there is one.
pub fn builtin_handler(name: &str) -> Option<Arc<dyn Handler>> {
    match name {
        "echo" => Some(Arc::new(echo())),
        "kv" => Some(Arc::new(kv())),
        _ => None,
    }
}

/// The names `builtin_handler` knows.
pub const BUILTIN_HANDLERS: &[&str] = &["echo", "kv"];

fn to_bytes(value: &Value) -> Vec<u8> {
    // A `Value` always serializes.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Replies with the request (a JSON object) and `"replied": true`.
pub fn echo() -> impl Handler {
    handler_fn(|request, _context| async move {
        let mut object: Map<String, Value> = serde_json::from_slice(&request.body)
            .map_err(|error| HandlerError::refused(format!("echo takes a JSON object: {error}")))?;
        object.insert("replied".into(), Value::Bool(true));
        Ok(to_bytes(&Value::Object(object)))
    })
    .idempotent()
}

/// A key-value command, as the `kv` handler takes it.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum KvCommand {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Del {
        key: String,
    },
    Batch {
        operations: Vec<KvBatchOperation>,
    },
    Range {
        start: Option<String>,
        end: Option<String>,
        limit: Option<usize>,
    },
    Size,
    Info,
    /// Reads the key's value, writes the new one, and replies with the old.
    Swap {
        key: String,
        value: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum KvBatchOperation {
    Put { key: String, value: String },
    Del { key: String },
}

/// The most pairs one `range` command returns.
const KV_RANGE_LIMIT_MAX: usize = 1000;

fn text(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => Value::String(text),
        Err(error) => Value::String(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

/// The key-value commands as requests.
pub fn kv() -> impl Handler {
    handler_fn(|request, context| async move {
        let command: KvCommand = serde_json::from_slice(&request.body)
            .map_err(|error| HandlerError::refused(format!("not a kv command: {error}")))?;
        let partition = context.partition();
        let reply = match command {
            KvCommand::Get { key } => json!({ "value": partition.get(key).await?.map(text) }),
            KvCommand::Put { key, value } => {
                partition.put(key, value).await?;
                json!({ "ok": true })
            }
            KvCommand::Del { key } => json!({ "existed": partition.del(key).await? }),
            KvCommand::Batch { operations } => {
                let operations = operations
                    .into_iter()
                    .map(|operation| match operation {
                        KvBatchOperation::Put { key, value } => BatchOperation::Put {
                            key: key.into_bytes(),
                            value: value.into_bytes(),
                        },
                        KvBatchOperation::Del { key } => BatchOperation::Delete {
                            key: key.into_bytes(),
                        },
                    })
                    .collect();
                partition.batch(operations).await?;
                json!({ "ok": true })
            }
            KvCommand::Range { start, end, limit } => {
                let page = partition
                    .range(RangeQuery {
                        start: start.map_or(KeyBound::Unbounded, |key| {
                            KeyBound::Included(key.into_bytes())
                        }),
                        end: end.map_or(KeyBound::Unbounded, |key| {
                            KeyBound::Excluded(key.into_bytes())
                        }),
                        limit: limit.unwrap_or(KV_RANGE_LIMIT_MAX).min(KV_RANGE_LIMIT_MAX),
                        reverse: false,
                    })
                    .await?;
                let pairs: Vec<Value> = page
                    .pairs
                    .into_iter()
                    .map(|(key, value)| json!([text(key), text(value)]))
                    .collect();
                json!({ "pairs": pairs, "more": page.next.is_some() })
            }
            KvCommand::Size => {
                let (keys, bytes) = partition.size().await?;
                json!({ "keys": keys, "bytes": bytes })
            }
            KvCommand::Info => {
                let info = partition.info().await?;
                json!({
                    "name": info.name,
                    "id": info.id,
                    "replicas": info.replicas.iter().map(|node| node.0).collect::<Vec<_>>(),
                    "leader": info.leader.map(|node| node.0),
                    "term": info.term,
                    "committed_index": info.committed_index,
                    "applied_index": info.applied_index,
                    "last_index": info.last_index,
                })
            }
            KvCommand::Swap { key, value } => {
                let old = partition.get(key.clone()).await?;
                partition.put(key, value).await?;
                json!({ "old": old.map(text) })
            }
        };
        Ok(to_bytes(&reply))
    })
}

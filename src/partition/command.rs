//! What a partition's Raft log carries: [`Command`]s, each a state machine's operation with
//! the identity of the request that proposed it, as bytes in `EntryKind::Command`; and the
//! key-value store's operations.
//!
//! The postcard encoding of a command is the log format: variants are only ever appended,
//! never reordered or removed. Sizes are checked before a command is proposed, so nothing
//! that reaches the log can fail to apply for being too large.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest key a partition stores.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value a partition stores.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most operations in one atomic batch.
pub const BATCH_OPERATIONS_MAX: usize = 10_000;
/// The most key and value bytes one batch may carry: as much as one largest put, so every
/// command, encoded, fits one Raft message and one frame (`raft::message::COMMAND_BYTES_MAX`).
pub const BATCH_BYTES_MAX: usize = KEY_BYTES_MAX + VALUE_BYTES_MAX;

/// One write, applied atomically when its entry applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOperation {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Puts and deletes that apply together or not at all.
    Batch(Vec<BatchOperation>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOperation {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

/// An operation with the identity of the request that proposed it, so the node that proposed
/// it can answer its client when the entry applies, and every replica applies it at most
/// once (see `replica_store`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command<O> {
    /// The proposing node's id, the session it proposed in (its incarnation: one more at
    /// every start, so request numbers from before a restart never answer requests made
    /// after it), and its request number.
    pub proposer: u32,
    pub proposer_session: u64,
    pub request_id: u64,
    /// Every request of this session below this had been answered (or given up on) when
    /// this one was proposed: a command below it arriving later is a stale copy. Never above
    /// `request_id`.
    pub first_unanswered: u64,
    pub operation: O,
}

/// A key-value command.
pub type KvCommand = Command<KvOperation>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    #[error("keys must not be empty")]
    EmptyKey,
    #[error("key of {0} bytes is over the limit of {KEY_BYTES_MAX}")]
    KeyTooLong(usize),
    #[error("value of {0} bytes is over the limit of {VALUE_BYTES_MAX}")]
    ValueTooLarge(usize),
    #[error("a batch of {0} operations is over the limit of {BATCH_OPERATIONS_MAX}")]
    BatchTooLarge(usize),
    #[error("an empty batch does nothing")]
    EmptyBatch,
    #[error("a batch of {0} key and value bytes is over the limit of {BATCH_BYTES_MAX}")]
    BatchBytesTooLarge(usize),
}

fn check_key(key: &[u8]) -> Result<(), InvalidCommand> {
    if key.is_empty() {
        return Err(InvalidCommand::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(InvalidCommand::KeyTooLong(key.len()));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), InvalidCommand> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(InvalidCommand::ValueTooLarge(value.len()));
    }
    Ok(())
}

impl KvOperation {
    /// Checks sizes before the operation is proposed.
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            KvOperation::Put { key, value } => {
                check_key(key)?;
                check_value(value)
            }
            KvOperation::Delete { key } => check_key(key),
            KvOperation::Batch(operations) => {
                if operations.is_empty() {
                    return Err(InvalidCommand::EmptyBatch);
                }
                if operations.len() > BATCH_OPERATIONS_MAX {
                    return Err(InvalidCommand::BatchTooLarge(operations.len()));
                }
                let bytes: usize = operations
                    .iter()
                    .map(|operation| match operation {
                        BatchOperation::Put { key, value } => key.len() + value.len(),
                        BatchOperation::Delete { key } => key.len(),
                    })
                    .sum();
                if bytes > BATCH_BYTES_MAX {
                    return Err(InvalidCommand::BatchBytesTooLarge(bytes));
                }
                for operation in operations {
                    match operation {
                        BatchOperation::Put { key, value } => {
                            check_key(key)?;
                            check_value(value)?;
                        }
                        BatchOperation::Delete { key } => check_key(key)?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl<O: Serialize> Command<O> {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("commands always serialise")
    }
}

/// The proposer an encoded command names (its first field), whatever its operation, or
/// `None` when the bytes do not start with one.
pub fn proposer_of(command: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<u32>(command)
        .ok()
        .map(|(proposer, _)| proposer)
}

impl<O: DeserializeOwned> Command<O> {
    /// Decodes a command.
    pub fn decode(bytes: &[u8]) -> Result<Command<O>, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sizes_are_refused_before_proposing() {
        let put = |key: usize, value: usize| KvOperation::Put {
            key: vec![b'k'; key],
            value: vec![b'v'; value],
        };
        assert_eq!(put(0, 1).validate(), Err(InvalidCommand::EmptyKey));
        assert_eq!(
            put(KEY_BYTES_MAX + 1, 1).validate(),
            Err(InvalidCommand::KeyTooLong(KEY_BYTES_MAX + 1))
        );
        assert_eq!(
            put(1, VALUE_BYTES_MAX + 1).validate(),
            Err(InvalidCommand::ValueTooLarge(VALUE_BYTES_MAX + 1))
        );
        assert_eq!(put(KEY_BYTES_MAX, VALUE_BYTES_MAX).validate(), Ok(()));
        assert_eq!(
            KvOperation::Batch(vec![]).validate(),
            Err(InvalidCommand::EmptyBatch)
        );
        assert_eq!(
            KvOperation::Batch(vec![BatchOperation::Delete { key: vec![] }]).validate(),
            Err(InvalidCommand::EmptyKey)
        );
        let big_put = || BatchOperation::Put {
            key: vec![b'k'; 8],
            value: vec![b'v'; VALUE_BYTES_MAX],
        };
        assert_eq!(
            KvOperation::Batch(vec![big_put(), big_put()]).validate(),
            Err(InvalidCommand::BatchBytesTooLarge(
                2 * (8 + VALUE_BYTES_MAX)
            ))
        );
    }

    /// The largest command any validated operation makes still fits one Raft message.
    #[test]
    fn the_largest_commands_fit_a_raft_message() {
        let largest = [
            KvOperation::Put {
                key: vec![b'k'; KEY_BYTES_MAX],
                value: vec![b'v'; VALUE_BYTES_MAX],
            },
            KvOperation::Batch(
                (0..BATCH_OPERATIONS_MAX)
                    .map(|index| BatchOperation::Put {
                        key: vec![b'k'; 1 + index % 8],
                        value: vec![b'v'; (BATCH_BYTES_MAX / BATCH_OPERATIONS_MAX) - 8],
                    })
                    .collect(),
            ),
        ];
        for operation in largest {
            assert_eq!(operation.validate(), Ok(()));
            let command = KvCommand {
                proposer: u32::MAX,
                proposer_session: u64::MAX,
                request_id: u64::MAX,
                first_unanswered: u64::MAX,
                operation,
            };
            assert!(command.encode().len() <= crate::raft::message::COMMAND_BYTES_MAX);
        }
    }

    #[test]
    fn commands_round_trip() {
        let command = KvCommand {
            proposer: 3,
            proposer_session: 77,
            request_id: 9,
            first_unanswered: 4,
            operation: KvOperation::Batch(vec![
                BatchOperation::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                },
                BatchOperation::Delete { key: b"b".to_vec() },
            ]),
        };
        assert_eq!(KvCommand::decode(&command.encode()).unwrap(), command);
        assert_eq!(proposer_of(&command.encode()), Some(3));
        assert_eq!(proposer_of(&[]), None);
    }
}

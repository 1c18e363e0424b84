//! Routed requests: a write or a read of a partition sent by any node (its origin) to the
//! node it believes leads that partition, and the answer that comes back. Operations,
//! queries, outcomes and answers travel as the state machine's postcard bytes, so the peer
//! protocol stays independent of the kinds a node runs; the host that receives them decodes
//! them into its kind's types (and validates an operation) before anything acts on them.
//!
//! Invariants:
//! - every request carries its origin's session, and its answer echoes it: an origin takes
//!   only answers to its own run's requests (request numbers start over at every run);
//! - a routed write carries the identity of its origin's request (session, request id and
//!   mark, see `replica_store`), and the serving leader proposes it in the origin's name
//!   only (the transport vouches for the sender): a retry through another leader is a copy
//!   the replicas skip, so forwarding never doubles a write;
//! - every size is bounded: an operation or query fits a command, an answer fits a frame
//!   (a page of a range is bounded below it), a refusal's text is cut to
//!   [`REFUSAL_TEXT_BYTES_MAX`].

use crate::ids::NodeId;
use crate::partition::PartitionId;
use crate::raft::message::COMMAND_BYTES_MAX;
use serde::{Deserialize, Serialize};

/// The largest encoded answer: a page of a range (`kv_store::PAGE_BYTES_MAX` plus one pair)
/// with room to spare in a 4 MiB frame.
pub const ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024 - 64 * 1024;

/// The longest a handler request may wait for its handler: ten minutes.
pub const HANDLER_TIMEOUT_MICROS_MAX: u64 = 600_000_000;

/// The longest refusal text a routed answer carries.
pub const REFUSAL_TEXT_BYTES_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The variant order is the wire format: variants are only ever appended.
pub enum RouteMessage {
    /// Propose this write in the sender's name: its session, request id and mark.
    Write {
        partition: PartitionId,
        proposer_session: u64,
        request_id: u64,
        first_unanswered: u64,
        #[serde(with = "serde_bytes")]
        operation: Vec<u8>,
    },
    /// Read at the partition's read index, as its leader.
    Read {
        partition: PartitionId,
        proposer_session: u64,
        request_id: u64,
        #[serde(with = "serde_bytes")]
        query: Vec<u8>,
    },
    /// The answer to `Write`, `Read` or `Handle` number `request_id` of session `proposer_session`:
    /// the outcome's or answer's bytes. The session tells an answer to a request of an
    /// earlier run of the origin (its request numbers start over) from one of this run.
    Answer {
        proposer_session: u64,
        request_id: u64,
        result: Result<ByteAnswer, RouteRefusal>,
    },
    /// Run the node's request handler for this request, as the partition's leader; its
    /// origin stops waiting `timeout_micros` after it arrives. The name is the partition's,
    /// for the handler (a node that knows the name checks it names this partition).
    Handle {
        partition: PartitionId,
        /// The name's bytes (checked by the node that serves it).
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        proposer_session: u64,
        request_id: u64,
        timeout_micros: u64,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
}

/// An encoded outcome or answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByteAnswer(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// Why a routed request was not served, by kind, so the origin knows whether to retry and
/// where. The order is the wire format: kinds are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteRefusalKind {
    /// This node does not lead the partition; the leader it knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// The partition has no replica on this node (yet, or any more).
    UnknownPartition,
    /// A leadership transfer or membership change is in the way, or too many requests wait.
    Busy,
    /// No answer in time: a write may or may not have applied.
    OutcomeUnknown,
    /// The request itself is wrong (it would be wrong anywhere).
    Invalid,
    /// A read found no such key.
    KeyNotFound,
    /// The node cannot serve now (its store failed or is damaged).
    Unavailable,
    /// The request handler refused the request (its own error); the message is its.
    HandlerRefused,
    /// The request handler panicked, failed an access, or missed its deadline without
    /// writing.
    HandlerFailed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRefusal {
    pub kind: RouteRefusalKind,
    pub message: String,
}

impl RouteRefusal {
    pub fn new(kind: RouteRefusalKind, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > REFUSAL_TEXT_BYTES_MAX {
            let mut end = REFUSAL_TEXT_BYTES_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { kind, message }
    }
}

impl std::fmt::Display for RouteRefusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl RouteMessage {
    /// Checks a decoded message's sizes; its contents are decoded and checked by the host
    /// that takes it.
    pub fn check(&self) -> Result<(), String> {
        match self {
            RouteMessage::Write {
                operation,
                request_id,
                first_unanswered,
                ..
            } => {
                if operation.len() > COMMAND_BYTES_MAX {
                    return Err(format!(
                        "a routed write of {} bytes, more than {COMMAND_BYTES_MAX}",
                        operation.len()
                    ));
                }
                if first_unanswered > request_id {
                    return Err(format!(
                        "a routed write's mark {first_unanswered} is above its request id {request_id}"
                    ));
                }
                Ok(())
            }
            RouteMessage::Read { query, .. } if query.len() > COMMAND_BYTES_MAX => Err(format!(
                "a routed read of {} bytes, more than {COMMAND_BYTES_MAX}",
                query.len()
            )),
            RouteMessage::Read { .. } => Ok(()),
            RouteMessage::Handle { body, .. } if body.len() > COMMAND_BYTES_MAX => Err(format!(
                "a routed handler request of {} bytes, more than {COMMAND_BYTES_MAX}",
                body.len()
            )),
            RouteMessage::Handle { timeout_micros, .. } if *timeout_micros > HANDLER_TIMEOUT_MICROS_MAX => {
                Err(format!(
                    "a routed handler request with a timeout of {timeout_micros} us, more than {HANDLER_TIMEOUT_MICROS_MAX}"
                ))
            }
            RouteMessage::Handle { .. } => Ok(()),
            RouteMessage::Answer {
                result: Ok(answer), ..
            } if answer.0.len() > ANSWER_BYTES_MAX => Err(format!(
                "a routed answer of {} bytes, more than {ANSWER_BYTES_MAX}",
                answer.0.len()
            )),
            RouteMessage::Answer {
                result: Err(refusal),
                ..
            } if refusal.message.len() > REFUSAL_TEXT_BYTES_MAX => Err(format!(
                "a refusal text of {} bytes, more than {REFUSAL_TEXT_BYTES_MAX}",
                refusal.message.len()
            )),
            RouteMessage::Answer { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_parts_are_refused() {
        let write = RouteMessage::Write {
            partition: PartitionId(1),
            proposer_session: 1,
            request_id: 5,
            first_unanswered: 6,
            operation: Vec::new(),
        };
        assert!(write.check().unwrap_err().contains("mark"));
        let read = RouteMessage::Read {
            partition: PartitionId(1),
            proposer_session: 1,
            request_id: 1,
            query: vec![0; COMMAND_BYTES_MAX + 1],
        };
        assert!(read.check().is_err());
        let answer = RouteMessage::Answer {
            proposer_session: 1,
            request_id: 1,
            result: Ok(ByteAnswer(vec![0; ANSWER_BYTES_MAX + 1])),
        };
        assert!(answer.check().is_err());
        let refusal = RouteRefusal::new(RouteRefusalKind::Busy, "é".repeat(1000));
        assert!(refusal.message.len() <= REFUSAL_TEXT_BYTES_MAX);
        assert!(RouteMessage::Answer {
            proposer_session: 1,
            request_id: 1,
            result: Err(refusal)
        }
        .check()
        .is_ok());
    }
}

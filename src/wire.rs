//! The peer protocol: the messages between nodes and the one codec that frames them, used by
//! the TCP transport and by the simulator alike, so the simulator runs every message through
//! the bytes production sends.
//!
//! A frame's payload is postcard: the frame version (a varint), the frame kind (the variant
//! index of [`FrameKind`]), then the body. The TCP transport puts a 4-byte big-endian length
//! before each payload; the simulator's network keeps message boundaries itself.
//!
//! Invariants:
//! - no payload is longer than [`FRAME_BYTES_MAX`]: encoding refuses to make one, decoding
//!   refuses to read one, so a peer cannot make a node allocate without bound;
//! - encoding runs the same checks as decoding: a message the receiver would refuse is not
//!   sent (the sender counts it), so a refused frame always means a broken or hostile
//!   sender, and a well-behaved link is never closed over one of its own messages;
//! - decoding is validation: an unknown version is refused before the body is trusted, every
//!   value is decoded into a validated type (event keys, node ids, partition ids, places),
//!   every message is then checked as a whole ([`Message::check`]: event sizes and JSON, key
//!   counts, Raft terms, indexes and entries), and trailing bytes are refused. A frame that
//!   fails changes nothing; the transport counts it and closes the connection.

use crate::directory::ClusterMessage;
use crate::events::{check_event_json, EventKey, StoreError};
use crate::partition::envelope::{RaftEnvelope, ENVELOPE_BYTES_MAX};
use crate::partition::route::RouteMessage;
use serde::{Deserialize, Serialize};

/// The frame version this build speaks (2: a replica's refusal says why, by kind).
pub const FRAME_VERSION: u16 = 2;

/// The largest frame payload: an event is at most [`EVENT_BYTES_MAX`], so this leaves room
/// for its envelope, a batch of confirmations, or a round of Raft messages (the partition
/// host splits larger rounds into several envelopes).
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

// The partition host fills its envelopes to its own bound: it must leave room in a frame.
const _: () = assert!(ENVELOPE_BYTES_MAX + 1024 <= FRAME_BYTES_MAX);

/// The largest event a replica carries (the node's own limit may be lower).
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;

/// Keys one confirmation may carry.
pub const CONFIRM_KEYS_MAX: usize = 4096;

/// The longest failure text a replica answer may carry.
pub const OUTCOME_TEXT_BYTES_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Store this event (write-once) and answer with `ReplicateResult`.
    Replicate {
        write_id: u64,
        key: EventKey,
        #[serde(with = "serde_bytes")]
        event: Vec<u8>,
    },
    /// The answer to `Replicate`: `Ok` once the event is durable on the sender.
    ReplicateResult {
        write_id: u64,
        key: EventKey,
        outcome: Result<(), ReplicaRefusal>,
    },
    /// The sender saw replication factor reached for these keys: stop repairing them.
    Confirm { keys: Vec<EventKey> },
    /// Raft messages of one round from the sender's partitions to the receiver's.
    Raft(RaftEnvelope),
    /// Membership: a join request or its answer.
    Cluster(ClusterMessage),
    /// A request routed to a partition's leader, or its answer.
    Route(RouteMessage),
}

impl Message {
    /// A short name for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Replicate { .. } => "replicate",
            Message::ReplicateResult { .. } => "replicate_result",
            Message::Confirm { .. } => "confirm",
            Message::Raft(_) => "raft",
            Message::Cluster(_) => "cluster",
            Message::Route(_) => "route",
        }
    }

    /// Checks a decoded message as a whole: what types alone cannot say.
    pub fn check(&self) -> Result<(), WireError> {
        let invalid = |reason: String| WireError::Invalid(format!("{}: {reason}", self.kind()));
        match self {
            Message::Replicate { event, .. } => {
                if event.len() > EVENT_BYTES_MAX {
                    return Err(invalid(format!(
                        "an event of {} bytes, more than {EVENT_BYTES_MAX}",
                        event.len()
                    )));
                }
                check_event_json(event).map_err(|error| invalid(error.to_string()))
            }
            Message::ReplicateResult {
                outcome: Err(refusal),
                ..
            } if refusal.message.len() > OUTCOME_TEXT_BYTES_MAX => Err(invalid(format!(
                "a refusal text of {} bytes, more than {OUTCOME_TEXT_BYTES_MAX}",
                refusal.message.len()
            ))),
            Message::ReplicateResult { .. } => Ok(()),
            Message::Confirm { keys } if keys.len() > CONFIRM_KEYS_MAX => Err(invalid(format!(
                "{} keys, more than {CONFIRM_KEYS_MAX}",
                keys.len()
            ))),
            Message::Confirm { .. } => Ok(()),
            Message::Raft(envelope) => envelope.check().map_err(invalid),
            Message::Cluster(message) => message.check().map_err(invalid),
            Message::Route(message) => message.check().map_err(invalid),
        }
    }
}

/// Why a replica was not stored, for the coordinator's logs and the HTTP peer protocol's
/// status codes: the client's mistakes (4xx) apart from the node's troubles (5xx).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRefusal {
    pub reason: RefusalReason,
    pub message: String,
}

/// The kinds of refusal. The order is the wire format: kinds are only ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// The key's time is before the oldest interval still open.
    TooOld,
    /// The key's time is beyond the next interval.
    TooFarInFuture,
    /// The key already holds a different event.
    WriteOnceConflict,
    /// The event is larger than this node takes.
    TooLarge,
    /// The node cannot store anything now (its store failed, or it is overloaded).
    Unavailable,
}

impl ReplicaRefusal {
    pub fn new(reason: RefusalReason, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > OUTCOME_TEXT_BYTES_MAX {
            let mut end = OUTCOME_TEXT_BYTES_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { reason, message }
    }
}

impl From<&StoreError> for ReplicaRefusal {
    /// How a peer is told the store refused its replica.
    fn from(error: &StoreError) -> Self {
        let reason = match error {
            StoreError::TooOld { .. } => RefusalReason::TooOld,
            StoreError::TooFarInFuture { .. } => RefusalReason::TooFarInFuture,
            StoreError::WriteOnceConflict { .. } => RefusalReason::WriteOnceConflict,
            StoreError::EventTooLarge { .. } => RefusalReason::TooLarge,
            StoreError::Poisoned
            | StoreError::Disk(_)
            | StoreError::Engine(_)
            | StoreError::Corrupt(_) => RefusalReason::Unavailable,
        };
        ReplicaRefusal::new(reason, error.to_string())
    }
}

impl std::fmt::Display for ReplicaRefusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}

/// What a frame carries. The order is the wire format: kinds are only ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameKind {
    /// The first frame on a connection: who is talking (the transport defines its body).
    Hello,
    /// Keeps the receiver's view of the sender fresh while there is nothing else to say.
    Heartbeat,
    /// A message of the node's protocol.
    Message,
}

/// A frame: the one versioned envelope of the peer protocol, for production's transports and
/// the simulator alike. A hello's body is the transport's own type `Hello`; decoding leaves it
/// as bytes (`Frame<&[u8]>`) for the transport to read with [`decode_hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<Hello> {
    /// The first frame on a connection: who is talking.
    Hello(Hello),
    /// Keeps the receiver's view of the sender fresh while there is nothing else to say.
    Heartbeat,
    /// A message of the node's protocol.
    Message(Message),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the limit of {FRAME_BYTES_MAX}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unsupported frame version {0} (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion(u16),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// The header of every payload: version, then kind (public for tools that forge frames).
pub fn header(kind: FrameKind) -> Vec<u8> {
    let bytes = postcard::to_stdvec(&FRAME_VERSION).expect("a u16 always encodes");
    postcard::to_extend(&kind, bytes).expect("a unit variant always encodes")
}

fn finish(payload: Vec<u8>) -> Result<Vec<u8>, WireError> {
    if payload.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(payload.len()));
    }
    Ok(payload)
}

/// The payload of a frame carrying `message`; refused when it would be over the limit or
/// the receiver would refuse it.
pub fn encode_message(message: &Message) -> Result<Vec<u8>, WireError> {
    message.check()?;
    encode_message_unchecked(message)
}

/// The payload of a frame carrying `message` without its checks: for tools that forge
/// hostile frames on purpose (the simulator's garbage peer), never for a node.
pub fn encode_message_unchecked(message: &Message) -> Result<Vec<u8>, WireError> {
    let payload = postcard::to_extend(message, header(FrameKind::Message))
        .map_err(|error| WireError::Malformed(error.to_string()))?;
    finish(payload)
}

/// The payload of a hello frame with the transport's own `body`.
pub fn encode_hello<H: Serialize>(body: &H) -> Result<Vec<u8>, WireError> {
    let payload = postcard::to_extend(body, header(FrameKind::Hello))
        .map_err(|error| WireError::Malformed(error.to_string()))?;
    finish(payload)
}

/// The payload of `frame` (see [`encode_message`] for the checks a message passes).
pub fn encode_frame<H: Serialize>(frame: &Frame<H>) -> Result<Vec<u8>, WireError> {
    match frame {
        Frame::Hello(body) => encode_hello(body),
        Frame::Heartbeat => Ok(encode_heartbeat()),
        Frame::Message(message) => encode_message(message),
    }
}

/// The payload of a heartbeat frame.
pub fn encode_heartbeat() -> Vec<u8> {
    header(FrameKind::Heartbeat)
}

/// Decodes and validates one frame payload (see the module doc).
pub fn decode_frame(payload: &[u8]) -> Result<Frame<&[u8]>, WireError> {
    if payload.is_empty() {
        return Err(WireError::Empty);
    }
    if payload.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(payload.len()));
    }
    let malformed = |error: postcard::Error| WireError::Malformed(error.to_string());
    // The version first, so a newer peer's body is never misread.
    let (version, rest) = postcard::take_from_bytes::<u16>(payload).map_err(malformed)?;
    if version != FRAME_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let (kind, body) = postcard::take_from_bytes::<FrameKind>(rest).map_err(malformed)?;
    match kind {
        FrameKind::Hello => Ok(Frame::Hello(body)),
        FrameKind::Heartbeat if body.is_empty() => Ok(Frame::Heartbeat),
        FrameKind::Heartbeat => Err(trailing(body.len())),
        FrameKind::Message => {
            let (message, rest) = postcard::take_from_bytes::<Message>(body).map_err(malformed)?;
            if !rest.is_empty() {
                return Err(trailing(rest.len()));
            }
            message.check()?;
            Ok(Frame::Message(message))
        }
    }
}

/// Decodes a hello's body into the transport's type, refusing trailing bytes.
pub fn decode_hello<'a, H: Deserialize<'a>>(body: &'a [u8]) -> Result<H, WireError> {
    let (hello, rest) = postcard::take_from_bytes::<H>(body)
        .map_err(|error| WireError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(trailing(rest.len()));
    }
    Ok(hello)
}

fn trailing(bytes: usize) -> WireError {
    WireError::Malformed(format!("{bytes} bytes after the frame's body"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    fn key() -> EventKey {
        EventKey::from_parts(1_700_000_000_000_000, NodeId(3), 7)
    }

    #[test]
    fn frames_round_trip() {
        for message in [
            Message::Confirm { keys: vec![key()] },
            Message::Replicate {
                write_id: 9,
                key: key(),
                event: br#"{"a":[1,2]}"#.to_vec(),
            },
            Message::ReplicateResult {
                write_id: 9,
                key: key(),
                outcome: Err(ReplicaRefusal::new(RefusalReason::TooOld, "refused")),
            },
            Message::Raft(RaftEnvelope::default()),
        ] {
            let payload = encode_message(&message).unwrap();
            assert_eq!(decode_frame(&payload), Ok(Frame::Message(message)));
        }
        assert_eq!(decode_frame(&encode_heartbeat()), Ok(Frame::Heartbeat));
        let hello = encode_hello(&(NodeId(4), "hi".to_string())).unwrap();
        let Ok(Frame::Hello(body)) = decode_frame(&hello) else {
            panic!("a hello");
        };
        assert_eq!(
            decode_hello::<(NodeId, String)>(body),
            Ok((NodeId(4), "hi".to_string()))
        );
    }

    /// Writes a frame of `message` with unchecked field values, as a hostile peer would.
    fn forged<T: Serialize>(body: &T) -> Vec<u8> {
        postcard::to_extend(body, header(FrameKind::Message)).unwrap()
    }

    #[test]
    fn hostile_frames_are_refused() {
        #[derive(Serialize)]
        enum Unchecked {
            Replicate {
                write_id: u64,
                key: String,
                #[serde(with = "serde_bytes")]
                event: Vec<u8>,
            },
            #[allow(dead_code)]
            ReplicateResult,
            Confirm {
                keys: Vec<String>,
            },
        }
        let refused = [
            forged(&Unchecked::Replicate {
                write_id: 1,
                key: "x".into(),
                event: b"{}".to_vec(),
            }),
            forged(&Unchecked::Confirm {
                keys: vec!["x".into()],
            }),
            forged(&Unchecked::Replicate {
                write_id: 1,
                key: key().as_str().into(),
                event: b"{not json".to_vec(),
            }),
            forged(&Unchecked::Replicate {
                write_id: 1,
                key: key().as_str().into(),
                event: format!("{}{}", "[".repeat(100), "]".repeat(100)).into_bytes(),
            }),
            forged(&Unchecked::Confirm {
                keys: vec![key().as_str().into(); CONFIRM_KEYS_MAX + 1],
            }),
        ];
        for payload in refused {
            assert!(
                matches!(
                    decode_frame(&payload),
                    Err(WireError::Malformed(_) | WireError::Invalid(_))
                ),
                "{:?}",
                decode_frame(&payload)
            );
        }
        let mut trailing = encode_message(&Message::Confirm { keys: vec![key()] }).unwrap();
        trailing.push(0);
        assert!(matches!(
            decode_frame(&trailing),
            Err(WireError::Malformed(_))
        ));
        // A count far beyond the bytes that follow fails without allocating it.
        let mut huge_count = header(FrameKind::Message);
        huge_count.extend_from_slice(&[2, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_frame(&huge_count),
            Err(WireError::Malformed(_))
        ));
        let future = postcard::to_stdvec(&(FRAME_VERSION + 1)).unwrap();
        assert_eq!(
            decode_frame(&future),
            Err(WireError::UnsupportedVersion(FRAME_VERSION + 1))
        );
        assert_eq!(decode_frame(&[]), Err(WireError::Empty));
        assert!(matches!(
            decode_frame(&vec![0; FRAME_BYTES_MAX + 1]),
            Err(WireError::TooLarge(_))
        ));
        assert!(matches!(
            decode_frame(&[FRAME_VERSION as u8, 0xff]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn a_message_over_the_limit_or_refused_by_the_checks_is_not_encoded() {
        let oversized = Message::Confirm {
            keys: vec![key(); CONFIRM_KEYS_MAX],
        };
        assert!(oversized.check().is_ok());
        let confirm_bytes = encode_message(&oversized).unwrap().len();
        assert!(confirm_bytes < FRAME_BYTES_MAX, "{confirm_bytes}");
        let not_json = Message::Replicate {
            write_id: 1,
            key: key(),
            event: b"{".to_vec(),
        };
        assert!(matches!(
            encode_message(&not_json),
            Err(WireError::Invalid(_))
        ));
        let huge = Message::Replicate {
            write_id: 1,
            key: key(),
            event: vec![b'1'; FRAME_BYTES_MAX],
        };
        assert!(matches!(
            encode_message_unchecked(&huge),
            Err(WireError::TooLarge(_))
        ));
    }

    /// A round's messages that would not fit one frame go in several envelopes, each of which
    /// the wire codec encodes and decodes; the messages and their order are kept.
    #[test]
    fn a_round_too_large_for_one_frame_is_split_into_envelopes_that_fit() {
        use crate::partition::PartitionId;
        use crate::raft::{Configuration, Message as RaftMessage, MessageBody, SnapshotMeta};
        let chunk = |index: u64| RaftMessage {
            from: NodeId(1),
            to: NodeId(2),
            term: 3,
            body: MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index: 10 + index,
                    term: 3,
                    configuration: Configuration::with_voters([NodeId(1), NodeId(2)]),
                },
                offset: 0,
                data: vec![index as u8; 1 << 20],
                done: false,
            },
        };
        let messages: Vec<(PartitionId, RaftMessage)> = (0..9)
            .map(|index| (PartitionId(index), chunk(index)))
            .collect();
        let whole = RaftEnvelope {
            messages: messages.clone(),
        };
        assert!(encode_message(&Message::Raft(whole.clone())).is_err());
        let parts = whole.into_frames();
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut received = Vec::new();
        for part in parts {
            let frame = encode_message(&Message::Raft(part)).expect("each part fits a frame");
            let Ok(Frame::Message(Message::Raft(decoded))) = decode_frame(&frame) else {
                panic!("a part did not decode");
            };
            received.extend(decoded.messages);
        }
        assert_eq!(received, messages);
        // Small rounds stay whole.
        let small = RaftEnvelope {
            messages: messages[..1].to_vec(),
        };
        assert_eq!(small.clone().into_frames(), vec![small]);
    }
}

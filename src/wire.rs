//! Messages between nodes and their versioned envelope.
//!
//! Every frame on the wire is a postcard-encoded [`Envelope`] whose first field is the wire
//! version; a receiver refuses versions it does not know instead of misreading them. The
//! simulator passes [`Message`] values directly (no encoding) but production and the tests
//! round-trip them through [`encode`] / [`decode`].

use crate::events::EventKey;
use serde::{Deserialize, Serialize};

/// The wire version this build speaks.
pub const WIRE_VERSION: u16 = 1;

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
        outcome: Result<(), String>,
    },
    /// The sender saw replication factor reached for these keys: stop repairing them.
    Confirm { keys: Vec<EventKey> },
    /// Every Raft message of one round from the sender's partitions to the receiver's.
    Raft(crate::partition::host::RaftEnvelope),
}

impl Message {
    /// A short name for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Replicate { .. } => "replicate",
            Message::ReplicateResult { .. } => "replicate_result",
            Message::Confirm { .. } => "confirm",
            Message::Raft(_) => "raft",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub from: crate::ids::NodeId,
    pub message: Message,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion(u16),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

pub fn encode(envelope: &Envelope) -> Vec<u8> {
    postcard::to_stdvec(envelope).expect("encoding into a Vec cannot fail")
}

pub fn decode(bytes: &[u8]) -> Result<Envelope, WireError> {
    // The version is the first varint, so it can be checked before the body is trusted.
    let (version, _) = postcard::take_from_bytes::<u16>(bytes)
        .map_err(|error| WireError::Malformed(error.to_string()))?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    postcard::from_bytes(bytes).map_err(|error| WireError::Malformed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    #[test]
    fn round_trip_and_version_check() {
        let envelope = Envelope {
            version: WIRE_VERSION,
            from: NodeId(3),
            message: Message::Confirm {
                keys: vec![EventKey::from_parts(1_700_000_000_000_000, NodeId(3), 7)],
            },
        };
        let bytes = encode(&envelope);
        assert_eq!(decode(&bytes).unwrap(), envelope);

        let future = Envelope {
            version: WIRE_VERSION + 1,
            ..envelope
        };
        assert_eq!(
            decode(&encode(&future)),
            Err(WireError::UnsupportedVersion(WIRE_VERSION + 1))
        );
        assert!(matches!(decode(&[1, 0xff]), Err(WireError::Malformed(_))));
    }
}

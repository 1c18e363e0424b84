//! The envelope of a round's Raft messages from one node to another, and how a round too
//! large for one frame of the peer protocol is split.
//!
//! Invariants: an envelope holds at most [`ENVELOPE_MESSAGES_MAX`] messages and, once split,
//! encodes within [`ENVELOPE_BYTES_MAX`] (unless one message alone is larger, which the
//! transport refuses); splitting keeps every message and their order.

use crate::partition::PartitionId;
use crate::raft::Message;
use serde::{Deserialize, Serialize};

/// Raft messages of one round from one node to another: all of them, unless they would not
/// fit one frame, when the round's messages go in several envelopes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftEnvelope {
    pub messages: Vec<(PartitionId, Message)>,
}

/// Messages one envelope may carry.
pub const ENVELOPE_MESSAGES_MAX: usize = 65_536;

/// The encoded size an envelope is filled to: a frame of the peer protocol (4 MiB), less room
/// for the frame's header. `crate::wire` asserts at compile time that it fits its frames.
pub const ENVELOPE_BYTES_MAX: usize = 4 * 1024 * 1024 - 1024;

impl RaftEnvelope {
    /// Checks a decoded envelope: a bounded count of messages, each well formed
    /// ([`Message::check`]). Who sent them is checked by the host that receives them.
    pub fn check(&self) -> Result<(), String> {
        if self.messages.len() > ENVELOPE_MESSAGES_MAX {
            return Err(format!(
                "{} Raft messages, more than {ENVELOPE_MESSAGES_MAX}",
                self.messages.len()
            ));
        }
        for (_, message) in &self.messages {
            message.check().map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    /// Splits the envelope so each part encodes within one frame. A message too large for a
    /// frame on its own (a misconfigured chunk size) travels alone, and the transport refuses
    /// it.
    pub(crate) fn into_frames(self) -> Vec<RaftEnvelope> {
        let fits = |envelope: &RaftEnvelope| {
            postcard::experimental::serialized_size(envelope)
                .is_ok_and(|bytes| bytes <= ENVELOPE_BYTES_MAX)
        };
        if self.messages.len() <= ENVELOPE_MESSAGES_MAX && fits(&self) {
            return vec![self];
        }
        let mut parts = Vec::new();
        let mut current = RaftEnvelope::default();
        // A vector's length prefix takes at most 5 bytes.
        let mut current_bytes: usize = 5;
        for message in self.messages {
            let bytes = postcard::experimental::serialized_size(&message).unwrap_or(usize::MAX);
            let full = current.messages.len() == ENVELOPE_MESSAGES_MAX
                || current_bytes.saturating_add(bytes) > ENVELOPE_BYTES_MAX;
            if full && !current.messages.is_empty() {
                parts.push(std::mem::take(&mut current));
                current_bytes = 5;
            }
            current_bytes = current_bytes.saturating_add(bytes);
            current.messages.push(message);
        }
        parts.push(current);
        parts
    }
}

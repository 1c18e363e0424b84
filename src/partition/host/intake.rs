//! The partition host's message intake: a peer's envelope of Raft messages, each checked
//! against the link it came on before its group steps it.
//!
//! Invariants: the transport vouches only for the envelope's sender, so a message in another
//! node's name, or addressed to another node, is refused and counted, never stepped; and a
//! forwarded proposal carries only commands in its sender's name, so no member can retire
//! or fill another proposer's sessions (`replica_store`).

use super::*;
use crate::partition::command::proposer_of;

impl<M: StateMachine> PartitionHost<M> {
    /// Messages another node sent this one.
    pub fn receive(&mut self, from: NodeId, envelope: RaftEnvelope) {
        if self.poisoned.is_some() {
            return;
        }
        self.peer_heard_tick.insert(from, self.tick);
        for (partition, message) in envelope.messages {
            if message.from != from || message.to != self.id {
                // The transport vouches for the envelope's sender only: a message in another
                // node's name, or for another node, is refused.
                tracing::warn!(
                    node = %self.id,
                    %from,
                    claimed_from = %message.from,
                    to = %message.to,
                    kind = message.body.kind(),
                    "Raft message refused: its sender or addressee is not this link's"
                );
                self.counters.messages_refused += 1;
                continue;
            }
            if let crate::raft::MessageBody::Propose { commands } = &message.body {
                let foreign = commands
                    .iter()
                    .any(|command| proposer_of(command) != Some(from.0));
                if foreign {
                    tracing::warn!(node = %self.id, %from, %partition, "forwarded proposal refused: a command not in its sender's name");
                    self.counters.messages_refused += 1;
                    continue;
                }
            }
            match self.groups.get_mut(&partition) {
                Some(group) => {
                    if let crate::raft::MessageBody::InstallSnapshot { .. } = &message.body {
                        self.counters.snapshot_chunks_received += 1;
                        self.snapshot_chunk_tick.insert(partition, self.tick);
                    }
                    if !group.step(message) {
                        self.counters.messages_refused += 1;
                    }
                    self.touched.insert(partition);
                }
                _ => {
                    tracing::debug!(node = %self.id, %partition, "message for a partition not here")
                }
            }
        }
    }
}

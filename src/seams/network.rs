//! The `Network` seam: unreliable, unordered message sends between node ids.
//!
//! `send` never blocks and never reports delivery: a message may be lost, delayed, duplicated
//! or reordered, and every protocol above it must tolerate that. Receiving is push-driven: the
//! driver (the simulator's world or the production shell's transport) hands each arriving
//! message to `Node::handle_message`.
//!
//! The seam knows nothing of what a message is: the node names its message type (the peer
//! protocol's, `crate::wire::Message`), and both worlds encode it with the one codec.

use crate::ids::NodeId;

pub trait Network<Message> {
    /// Queues `message` for `to`. Sending to an unknown or unreachable node is not an error here:
    /// the protocol's own timeouts notice silence.
    fn send(&mut self, to: NodeId, message: Message);
}

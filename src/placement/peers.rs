//! The peer table: every node this node may place replicas on, with its location.
//!
//! Adding a peer twice replaces its location; dropping an unknown peer is a no-op (it never
//! removes some other peer). The table never holds the local node itself.

use crate::ids::{Location, NodeId};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct PeerTable {
    local: NodeId,
    local_location: Location,
    peers: BTreeMap<NodeId, Location>,
}

impl PeerTable {
    pub fn new(local: NodeId, local_location: Location) -> Self {
        Self {
            local,
            local_location,
            peers: BTreeMap::new(),
        }
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn local_location(&self) -> &Location {
        &self.local_location
    }

    /// Adds or relocates a peer. The local node is not a peer of itself.
    pub fn add_peer(&mut self, peer: NodeId, location: Location) {
        if peer != self.local {
            self.peers.insert(peer, location);
        }
    }

    /// Removes a peer; returns whether it was known.
    pub fn drop_peer(&mut self, peer: NodeId) -> bool {
        self.peers.remove(&peer).is_some()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn location(&self, node: NodeId) -> Option<&Location> {
        if node == self.local {
            Some(&self.local_location)
        } else {
            self.peers.get(&node)
        }
    }

    /// Peers in node id order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Location)> {
        self.peers.iter().map(|(node, location)| (*node, location))
    }
}

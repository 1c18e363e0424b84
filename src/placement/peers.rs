//! The peer table: every member of the cluster this node may place replicas on, where it runs
//! (once known) and whether it is up.
//!
//! A member stays in the table while it is down: the replication factor is a property of the
//! cluster, not of the nodes that happen to be up, and a down member is where a replica goes
//! once it returns. Adding a peer twice replaces its location; dropping an unknown peer is a
//! no-op (it never removes some other peer). The table never holds the local node itself.

use crate::ids::{Location, NodeId};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Unknown until the member first said where it runs.
    pub location: Option<Location>,
    pub up: bool,
}

#[derive(Clone, Debug)]
pub struct PeerTable {
    local: NodeId,
    local_location: Location,
    peers: BTreeMap<NodeId, Peer>,
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

    /// Adds or relocates a peer, up. The local node is not a peer of itself.
    pub fn add_peer(&mut self, peer: NodeId, location: Location) {
        if peer != self.local {
            self.peers.insert(
                peer,
                Peer {
                    location: Some(location),
                    up: true,
                },
            );
        }
    }

    /// Adds a member whose place is not known yet (named in configuration, never heard from):
    /// it counts towards the cluster's size and is down until it is added with its location.
    pub fn add_unplaced(&mut self, peer: NodeId) {
        if peer != self.local {
            self.peers.entry(peer).or_insert(Peer {
                location: None,
                up: false,
            });
        }
    }

    /// Marks a known peer down (it stays a member); returns whether it was up.
    pub fn mark_down(&mut self, peer: NodeId) -> bool {
        match self.peers.get_mut(&peer) {
            Some(state) => std::mem::replace(&mut state.up, false),
            None => false,
        }
    }

    /// Removes a peer; returns whether it was known.
    pub fn drop_peer(&mut self, peer: NodeId) -> bool {
        self.peers.remove(&peer).is_some()
    }

    /// Whether `node` is a member: a peer in the table (up or down) or this node.
    pub fn is_member(&self, node: NodeId) -> bool {
        node == self.local || self.peers.contains_key(&node)
    }

    /// Members other than this node, up or down.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peers that are up.
    pub fn up_count(&self) -> usize {
        self.peers.values().filter(|peer| peer.up).count()
    }

    pub fn location(&self, node: NodeId) -> Option<&Location> {
        if node == self.local {
            Some(&self.local_location)
        } else {
            self.peers
                .get(&node)
                .and_then(|peer| peer.location.as_ref())
        }
    }

    pub fn get(&self, node: NodeId) -> Option<&Peer> {
        self.peers.get(&node)
    }

    /// Peers in node id order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Peer)> {
        self.peers.iter().map(|(node, peer)| (*node, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_stay_while_down_and_unplaced_ones_count() {
        let mut table = PeerTable::new(NodeId(1), Location::new("r", "a"));
        table.add_peer(NodeId(1), Location::new("r", "a"));
        assert!(table.is_empty(), "never a peer of itself");
        table.add_peer(NodeId(2), Location::new("r", "b"));
        table.add_unplaced(NodeId(3));
        assert_eq!((table.len(), table.up_count()), (2, 1));
        assert!(table.mark_down(NodeId(2)));
        assert!(!table.mark_down(NodeId(2)));
        assert!(!table.mark_down(NodeId(9)));
        assert_eq!((table.len(), table.up_count()), (2, 0));
        assert!(table.is_member(NodeId(2)) && table.is_member(NodeId(1)));
        assert!(!table.is_member(NodeId(9)));
        table.add_peer(NodeId(3), Location::new("r", "c"));
        assert_eq!(table.location(NodeId(3)), Some(&Location::new("r", "c")));
        table.add_unplaced(NodeId(3));
        assert_eq!(table.get(NodeId(3)).map(|peer| peer.up), Some(true));
        assert!(table.drop_peer(NodeId(2)) && !table.drop_peer(NodeId(2)));
    }
}

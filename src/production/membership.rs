//! The shell's directory of peers: where each one listens, what it told us about itself, and
//! whether it is up.
//!
//! Peers come from the config and from each other (every hello lists the sender's peers).
//! A peer is up from the first frame heard from it until it stays silent for
//! `peer_down_after`; the node is told of each change (`PeerUp` adds it to placement with the
//! zone and region it announced, `PeerDown` drops it), so a silent peer is skipped and comes
//! back when it is heard again. Transitions are decided under one lock and reported in order.
//!
//! The directory holds at most [`PEERS_MAX`] peers: peers learned from hellos are untrusted
//! input, and every hello lists the whole directory, so an unbounded one could grow memory
//! without limit and outgrow a frame.

use crate::ids::{Location, NodeId};
use crate::production::driver::{NodeHandle, NodeInput};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Peers the directory holds at most; past it, new peers are refused (and logged).
pub const PEERS_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub id: NodeId,
    pub peer_address: SocketAddr,
    pub http_address: Option<SocketAddr>,
    pub location: Option<Location>,
    pub up: bool,
}

#[derive(Debug)]
struct PeerState {
    peer_address: SocketAddr,
    http_address: Option<SocketAddr>,
    location: Option<Location>,
    last_heard: Option<Instant>,
    up: bool,
    /// Counts this peer's transitions, so the node can drop a report that arrives after a
    /// newer one (reports travel from several tasks at once).
    generation: u64,
}

#[derive(Debug)]
pub struct Membership {
    local: NodeId,
    peer_down_after: Duration,
    peers: Mutex<BTreeMap<NodeId, PeerState>>,
}

/// A change the node must be told about, with the peer's transition count at the change.
#[derive(Debug)]
pub enum Transition {
    Up(NodeId, Location, u64),
    Down(NodeId, u64),
}

impl Membership {
    pub fn new(local: NodeId, peer_down_after: Duration) -> Self {
        Self {
            local,
            peer_down_after,
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Silence longer than this calls a peer down (and closes its inbound connection).
    pub fn peer_down_after(&self) -> Duration {
        self.peer_down_after
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, PeerState>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a peer we were told of; returns true when it is new (the caller connects to it).
    pub fn learn(&self, id: NodeId, peer_address: SocketAddr) -> bool {
        if id == self.local {
            return false;
        }
        let mut peers = self.lock();
        if let Some(known) = peers.get_mut(&id) {
            if known.peer_address != peer_address {
                tracing::warn!(peer = %id, old = %known.peer_address, new = %peer_address, "peer moved");
                known.peer_address = peer_address;
            }
            return false;
        }
        if peers.len() >= PEERS_MAX {
            tracing::warn!(peer = %id, %peer_address, limit = PEERS_MAX, "peer directory full; not learning this peer");
            return false;
        }
        peers.insert(
            id,
            PeerState {
                peer_address,
                http_address: None,
                location: None,
                last_heard: None,
                up: false,
                generation: 0,
            },
        );
        true
    }

    /// Records a hello: where the peer listens and where it lives. Returns a transition when
    /// the peer just came up.
    pub fn hello(
        &self,
        id: NodeId,
        peer_address: SocketAddr,
        http_address: SocketAddr,
        location: Location,
        now: Instant,
    ) -> Option<Transition> {
        if id == self.local {
            return None;
        }
        let mut peers = self.lock();
        if !peers.contains_key(&id) && peers.len() >= PEERS_MAX {
            tracing::warn!(peer = %id, limit = PEERS_MAX, "peer directory full; ignoring this peer's hello");
            return None;
        }
        let state = peers.entry(id).or_insert(PeerState {
            peer_address,
            http_address: None,
            location: None,
            last_heard: None,
            up: false,
            generation: 0,
        });
        state.peer_address = peer_address;
        state.http_address = Some(http_address);
        let moved = state.location.as_ref().is_some_and(|old| *old != location);
        state.location = Some(location.clone());
        state.last_heard = Some(now);
        if !state.up || moved {
            state.up = true;
            state.generation += 1;
            return Some(Transition::Up(id, location, state.generation));
        }
        None
    }

    /// Any frame from the peer. Returns a transition when it was down and is known enough
    /// (has said hello) to come back.
    pub fn heard(&self, id: NodeId, now: Instant) -> Option<Transition> {
        let mut peers = self.lock();
        let state = peers.get_mut(&id)?;
        state.last_heard = Some(now);
        if !state.up {
            if let Some(location) = state.location.clone() {
                state.up = true;
                state.generation += 1;
                return Some(Transition::Up(id, location, state.generation));
            }
        }
        None
    }

    /// Peers silent for too long go down.
    pub fn expire(&self, now: Instant) -> Vec<Transition> {
        let mut peers = self.lock();
        let mut transitions = Vec::new();
        for (id, state) in peers.iter_mut() {
            let silent = state
                .last_heard
                .is_none_or(|heard| now.duration_since(heard) > self.peer_down_after);
            if state.up && silent {
                state.up = false;
                state.generation += 1;
                transitions.push(Transition::Down(*id, state.generation));
            }
        }
        transitions
    }

    pub fn peer_address(&self, id: NodeId) -> Option<SocketAddr> {
        self.lock().get(&id).map(|state| state.peer_address)
    }

    pub fn known_peers(&self) -> Vec<(NodeId, SocketAddr)> {
        self.lock()
            .iter()
            .map(|(id, state)| (*id, state.peer_address))
            .collect()
    }

    pub fn views(&self) -> Vec<PeerView> {
        self.lock()
            .iter()
            .map(|(id, state)| PeerView {
                id: *id,
                peer_address: state.peer_address,
                http_address: state.http_address,
                location: state.location.clone(),
                up: state.up,
            })
            .collect()
    }

    /// HTTP addresses of the peers that are up, for reads merged across the cluster.
    pub fn up_http_addresses(&self) -> Vec<(NodeId, SocketAddr)> {
        self.lock()
            .iter()
            .filter(|(_, state)| state.up)
            .filter_map(|(id, state)| state.http_address.map(|address| (*id, address)))
            .collect()
    }

    /// The known peers a merged read cannot ask: down, or never said where their HTTP API is.
    pub fn unreachable_peers(&self) -> Vec<NodeId> {
        self.lock()
            .iter()
            .filter(|(_, state)| !state.up || state.http_address.is_none())
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Tells the node of a transition; waits for room so none is lost. Reports from different
/// tasks may arrive out of order; the node keeps only the newest generation per peer.
pub async fn report(node: &NodeHandle, transition: Transition) {
    let input = match transition {
        Transition::Up(id, location, generation) => NodeInput::PeerUp {
            id,
            location,
            generation,
        },
        Transition::Down(id, generation) => NodeInput::PeerDown { id, generation },
    };
    let _ = node.submit(input).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_goes_down_when_silent_and_comes_back_when_heard() {
        let membership = Membership::new(NodeId(1), Duration::from_secs(3));
        let address: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        assert!(membership.learn(NodeId(2), address));
        assert!(!membership.learn(NodeId(2), address));
        assert!(!membership.learn(NodeId(1), address), "never ourselves");
        let start = Instant::now();
        // Heard before its hello: not yet placeable (no zone known).
        assert!(membership.heard(NodeId(2), start).is_none());
        let location = Location::new("r", "z");
        assert!(matches!(
            membership.hello(NodeId(2), address, address, location, start),
            Some(Transition::Up(NodeId(2), _, _))
        ));
        assert!(membership.expire(start + Duration::from_secs(2)).is_empty());
        let expired = membership.expire(start + Duration::from_secs(4));
        assert!(matches!(expired[..], [Transition::Down(NodeId(2), _)]));
        assert!(membership.up_http_addresses().is_empty());
        assert_eq!(membership.unreachable_peers(), vec![NodeId(2)]);
        assert!(matches!(
            membership.heard(NodeId(2), start + Duration::from_secs(5)),
            Some(Transition::Up(NodeId(2), _, _))
        ));
        assert_eq!(membership.up_http_addresses().len(), 1);
        assert!(membership.unreachable_peers().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_directory_stops_learning_at_its_limit() {
        let membership = Membership::new(NodeId(1), Duration::from_secs(3));
        let address: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        for id in 2..2 + PEERS_MAX as u32 {
            assert!(membership.learn(NodeId(id), address));
        }
        let beyond = NodeId(2 + PEERS_MAX as u32);
        assert!(!membership.learn(beyond, address));
        let location = Location::new("r", "z");
        assert!(membership
            .hello(beyond, address, address, location, Instant::now())
            .is_none());
        assert_eq!(membership.known_peers().len(), PEERS_MAX);
        // A hello listing the full directory still fits in one frame.
        let hello = crate::production::peer_frame::FrameBody::Hello {
            sender: crate::production::peer_frame::PeerInfo {
                id: NodeId(1),
                peer_address: address,
                http_address: address,
                location: Location::new("r", "z"),
            },
            known_peers: membership.known_peers(),
        };
        assert!(crate::production::peer_frame::encode_frame(&hello).is_ok());
    }
}

//! The shell's directory of peers: where each one listens, what it told us about itself, and
//! whether it is up.
//!
//! Peers come from the config and from each other (every hello lists the sender's peers).
//! A peer is up from the first frame heard from it until it stays silent for
//! `peer_down_after`; the node is told of each change (`PeerUp` adds it to placement with the
//! zone and region it announced, `PeerDown` drops it), so a silent peer is skipped and comes
//! back when it is heard again. Transitions are decided under one lock and reported in order.
//!
//! Gossip is bounded, since hellos are untrusted input:
//! - the directory holds at most [`PEERS_MAX`] peers, so it cannot grow memory without limit
//!   or outgrow a frame;
//! - a peer learned second-hand (listed in someone's hello) is dialled, but not passed on in
//!   this node's hellos until it has said hello itself, at most [`UNVERIFIED_PEERS_MAX`] such
//!   peers are held at once, and one that never says hello is forgotten after
//!   [`UNVERIFIED_FORGET_AFTER`]: a forged list reaches one node's directory, briefly, not the
//!   cluster's;
//! - second-hand news never moves a known peer's address, and a hello cannot change where a
//!   peer that is up listens or lives (that would hand its traffic, its merged reads or its
//!   place in placement to whoever claims its id); a peer that is down may come back from a
//!   new address or place;
//! - a peer not in this node's configuration that stays down for [`UNCONFIGURED_FORGET_AFTER`]
//!   is forgotten, here and in the node's placement, so hellos with ever new ids cannot fill
//!   the directory or the cluster's count of members for good.

use crate::ids::{Location, NodeId};
use crate::production::driver::{NodeHandle, NodeInput};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Peers the directory holds at most; past it, new peers are refused (and logged).
pub const PEERS_MAX: usize = 1024;
/// Peers learned second-hand and not yet heard from, at most.
pub const UNVERIFIED_PEERS_MAX: usize = 64;
/// A peer learned second-hand that says no hello within this time is forgotten.
pub const UNVERIFIED_FORGET_AFTER: Duration = Duration::from_secs(60);
/// A peer not in the configuration that has been down this long is forgotten.
pub const UNCONFIGURED_FORGET_AFTER: Duration = Duration::from_secs(300);

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
    /// Named in this node's configuration (first-hand): passed on from the start, and never
    /// forgotten.
    configured: bool,
    /// When it last went down (or was learned, if it never came up).
    down_since: Instant,
    /// Said hello itself at least once (first-hand): passed on from then on.
    verified: bool,
    learned_at: Instant,
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
    /// Not in the configuration and down too long: no longer a member.
    Forgotten(NodeId, u64),
}

/// Why a hello was refused; the connection that sent it is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloRefused {
    #[error("peer {id} is up at {known}; a hello from {claimed} cannot move it")]
    AddressInUse {
        id: NodeId,
        known: SocketAddr,
        claimed: SocketAddr,
    },
    #[error("peer {0} is up; a hello cannot change its client address or its place")]
    ChangeWhileUp(NodeId),
    #[error("peer {0} is this node's own id")]
    OwnId(NodeId),
    #[error("the peer directory is full ({PEERS_MAX} peers)")]
    DirectoryFull,
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

    /// Adds a peer from this node's configuration; returns true when it is new (the caller
    /// connects to it).
    pub fn learn_configured(&self, id: NodeId, peer_address: SocketAddr, now: Instant) -> bool {
        self.insert(id, peer_address, true, now)
    }

    /// Adds a peer another node's hello listed (second-hand); returns true when it is new
    /// (the caller connects to it). A known peer is never moved by second-hand news.
    pub fn learn(&self, id: NodeId, peer_address: SocketAddr) -> bool {
        self.insert(id, peer_address, false, Instant::now())
    }

    fn insert(&self, id: NodeId, peer_address: SocketAddr, configured: bool, now: Instant) -> bool {
        if id == self.local || id == NodeId::UNATTRIBUTED {
            return false;
        }
        let mut peers = self.lock();
        if let Some(known) = peers.get_mut(&id) {
            if known.peer_address != peer_address {
                tracing::debug!(peer = %id, known = %known.peer_address, listed = %peer_address, "a hello lists another address for a known peer; ignored");
            }
            return false;
        }
        if peers.len() >= PEERS_MAX {
            tracing::warn!(peer = %id, %peer_address, limit = PEERS_MAX, "peer directory full; not learning this peer");
            return false;
        }
        let unverified = peers
            .values()
            .filter(|state| !state.configured && !state.verified)
            .count();
        if !configured && unverified >= UNVERIFIED_PEERS_MAX {
            tracing::debug!(peer = %id, limit = UNVERIFIED_PEERS_MAX, "too many peers not heard from yet; not learning this one");
            return false;
        }
        peers.insert(
            id,
            PeerState {
                configured,
                down_since: now,
                verified: false,
                learned_at: now,
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
    /// the peer just came up, or why the hello is refused (nothing changes then).
    pub fn hello(
        &self,
        id: NodeId,
        peer_address: SocketAddr,
        http_address: SocketAddr,
        location: Location,
        now: Instant,
    ) -> Result<Option<Transition>, HelloRefused> {
        if id == self.local {
            return Err(HelloRefused::OwnId(id));
        }
        let mut peers = self.lock();
        if !peers.contains_key(&id) && peers.len() >= PEERS_MAX {
            tracing::warn!(peer = %id, limit = PEERS_MAX, "peer directory full; ignoring this peer's hello");
            return Err(HelloRefused::DirectoryFull);
        }
        if let Some(known) = peers.get(&id) {
            if known.up && known.peer_address != peer_address {
                return Err(HelloRefused::AddressInUse {
                    id,
                    known: known.peer_address,
                    claimed: peer_address,
                });
            }
            let changes = known.http_address.is_some_and(|old| old != http_address)
                || known.location.as_ref().is_some_and(|old| *old != location);
            if known.up && changes {
                return Err(HelloRefused::ChangeWhileUp(id));
            }
        }
        let state = peers.entry(id).or_insert(PeerState {
            configured: false,
            down_since: now,
            verified: false,
            learned_at: now,
            peer_address,
            http_address: None,
            location: None,
            last_heard: None,
            up: false,
            generation: 0,
        });
        state.verified = true;
        state.peer_address = peer_address;
        state.http_address = Some(http_address);
        let moved = state.location.as_ref().is_some_and(|old| *old != location);
        state.location = Some(location.clone());
        state.last_heard = Some(now);
        if !state.up || moved {
            state.up = true;
            state.generation += 1;
            return Ok(Some(Transition::Up(id, location, state.generation)));
        }
        Ok(None)
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

    /// Peers silent for too long go down; second-hand peers that never said hello, and
    /// peers not in the configuration that stayed down, are forgotten.
    pub fn expire(&self, now: Instant) -> Vec<Transition> {
        let mut peers = self.lock();
        let mut transitions = Vec::new();
        peers.retain(|id, state| {
            if state.configured || state.up {
                return true;
            }
            if !state.verified && now.duration_since(state.learned_at) > UNVERIFIED_FORGET_AFTER {
                tracing::info!(peer = %id, address = %state.peer_address, "forgetting a peer that was listed by another but never said hello");
                return false;
            }
            if state.verified && now.duration_since(state.down_since) > UNCONFIGURED_FORGET_AFTER {
                tracing::warn!(peer = %id, address = %state.peer_address, "forgetting a peer that is not in the configuration and stayed down");
                transitions.push(Transition::Forgotten(*id, state.generation + 1));
                return false;
            }
            true
        });
        for (id, state) in peers.iter_mut() {
            let silent = state
                .last_heard
                .is_none_or(|heard| now.duration_since(heard) > self.peer_down_after);
            if state.up && silent {
                state.up = false;
                state.down_since = now;
                state.generation += 1;
                transitions.push(Transition::Down(*id, state.generation));
            }
        }
        transitions
    }

    pub fn peer_address(&self, id: NodeId) -> Option<SocketAddr> {
        self.lock().get(&id).map(|state| state.peer_address)
    }

    /// The peers a hello passes on: configured ones, and those that said hello themselves.
    pub fn known_peers(&self) -> Vec<(NodeId, SocketAddr)> {
        self.lock()
            .iter()
            .filter(|(_, state)| state.configured || state.verified)
            .map(|(id, state)| (*id, state.peer_address))
            .collect()
    }

    /// Every peer in the directory, second-hand ones included (the transport dials them).
    pub fn dialled_peers(&self) -> Vec<NodeId> {
        self.lock().keys().copied().collect()
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
        Transition::Forgotten(id, generation) => NodeInput::PeerForgotten { id, generation },
    };
    let _ = node.submit(input).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_goes_down_when_silent_and_comes_back_when_heard() {
        let membership = Membership::new(NodeId(1), Duration::from_secs(3));
        let address = address(9002);
        assert!(membership.learn(NodeId(2), address));
        assert!(!membership.learn(NodeId(2), address));
        assert!(!membership.learn(NodeId(1), address), "never ourselves");
        let start = Instant::now();
        // Heard before its hello: not yet placeable (no zone known).
        assert!(membership.heard(NodeId(2), start).is_none());
        let location = Location::new("r", "z");
        assert!(matches!(
            membership.hello(NodeId(2), address, address, location, start),
            Ok(Some(Transition::Up(NodeId(2), _, _)))
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
        let now = Instant::now();
        for id in 2..2 + PEERS_MAX as u32 {
            assert!(membership.learn_configured(NodeId(id), address(9002), now));
        }
        let beyond = NodeId(2 + PEERS_MAX as u32);
        assert!(!membership.learn_configured(beyond, address(9002), now));
        let location = Location::new("r", "z");
        assert_eq!(
            membership
                .hello(beyond, address(9002), address(9002), location, now)
                .unwrap_err(),
            HelloRefused::DirectoryFull
        );
        assert_eq!(membership.known_peers().len(), PEERS_MAX);
        // A hello listing the full directory still fits in one frame.
        let hello = crate::wire::Frame::Hello(crate::production::peer_frame::PeerHello {
            sender: crate::production::peer_frame::PeerInfo {
                id: NodeId(1),
                peer_address: address(9002),
                http_address: address(9002),
                location: Location::new("r", "z"),
            },
            known_peers: membership.known_peers(),
        });
        assert!(crate::production::peer_frame::encode_frame(&hello).is_ok());
    }

    /// One forged hello listing 2,000 peers used to fill every node's directory: now it
    /// reaches one node's, in a bounded number, is passed on to nobody, and is forgotten.
    #[tokio::test(start_paused = true)]
    async fn second_hand_peers_are_bounded_not_passed_on_and_forgotten() {
        let membership = Membership::new(NodeId(1), Duration::from_secs(3));
        let start = Instant::now();
        assert!(membership.learn_configured(NodeId(2), address(9002), start));
        let learned = (10..2010u32)
            .filter(|id| membership.learn(NodeId(*id), address(20_000 + *id as u16)))
            .count();
        assert_eq!(learned, UNVERIFIED_PEERS_MAX);
        assert_eq!(membership.known_peers(), vec![(NodeId(2), address(9002))]);
        assert_eq!(membership.dialled_peers().len(), 1 + UNVERIFIED_PEERS_MAX);
        // One of them says hello itself: from then on it is passed on.
        let location = Location::new("r", "z");
        membership
            .hello(
                NodeId(10),
                address(20_010),
                address(20_010),
                location,
                start,
            )
            .unwrap();
        assert_eq!(membership.known_peers().len(), 2);
        membership.expire(start + UNVERIFIED_FORGET_AFTER + Duration::from_secs(1));
        let mut left = membership.dialled_peers();
        left.sort();
        assert_eq!(left, vec![NodeId(2), NodeId(10)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hello_cannot_move_a_peer_that_is_up() {
        let membership = Membership::new(NodeId(1), Duration::from_secs(3));
        let start = Instant::now();
        let location = Location::new("r", "z");
        membership.learn_configured(NodeId(2), address(9002), start);
        // Second-hand news never moves a known peer.
        assert!(!membership.learn(NodeId(2), address(6666)));
        assert_eq!(membership.peer_address(NodeId(2)), Some(address(9002)));
        membership
            .hello(
                NodeId(2),
                address(9002),
                address(8002),
                location.clone(),
                start,
            )
            .unwrap();
        let refused = membership.hello(
            NodeId(2),
            address(6666),
            address(6667),
            location.clone(),
            start,
        );
        assert_eq!(
            refused.unwrap_err(),
            HelloRefused::AddressInUse {
                id: NodeId(2),
                known: address(9002),
                claimed: address(6666)
            }
        );
        assert_eq!(membership.peer_address(NodeId(2)), Some(address(9002)));
        // Down, it may come back from elsewhere (a restarted host).
        membership.expire(start + Duration::from_secs(4));
        assert!(matches!(
            membership.hello(NodeId(2), address(7002), address(7003), location, start),
            Ok(Some(Transition::Up(..)))
        ));
        assert_eq!(membership.peer_address(NodeId(2)), Some(address(7002)));
        assert!(membership
            .hello(
                NodeId(1),
                address(1),
                address(1),
                Location::new("r", "z"),
                start
            )
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hello_cannot_change_where_an_up_peer_lives_and_strangers_are_forgotten() {
        let membership = Membership::new(NodeId(1), Duration::from_secs(3));
        let start = Instant::now();
        let location = Location::new("r", "z");
        membership
            .hello(
                NodeId(7),
                address(9007),
                address(8007),
                location.clone(),
                start,
            )
            .unwrap();
        for (http, place) in [
            (address(6666), location.clone()),
            (address(8007), Location::new("r", "elsewhere")),
        ] {
            assert_eq!(
                membership
                    .hello(NodeId(7), address(9007), http, place, start)
                    .unwrap_err(),
                HelloRefused::ChangeWhileUp(NodeId(7))
            );
        }
        // Down, then silent past the bound: forgotten, and the node is told.
        let down = membership.expire(start + Duration::from_secs(4));
        assert!(matches!(down[..], [Transition::Down(NodeId(7), _)]));
        let later = start + Duration::from_secs(4) + UNCONFIGURED_FORGET_AFTER;
        assert!(
            membership.expire(later).is_empty(),
            "not yet past the bound"
        );
        let forgotten = membership.expire(later + Duration::from_secs(1));
        assert!(matches!(
            forgotten[..],
            [Transition::Forgotten(NodeId(7), _)]
        ));
        assert!(membership.dialled_peers().is_empty());
        // A configured peer is never forgotten.
        membership.learn_configured(NodeId(2), address(9002), start);
        membership
            .hello(NodeId(2), address(9002), address(8002), location, start)
            .unwrap();
        membership.expire(later);
        membership.expire(later + UNCONFIGURED_FORGET_AFTER * 2);
        assert_eq!(membership.dialled_peers(), vec![NodeId(2)]);
    }
}

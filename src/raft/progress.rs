//! What a leader knows of one follower's log, and how fast it may send to it (flow control).
//!
//! Invariants: `match_index < next_index`; `match_index` never decreases while the leader
//! leads, unless the follower refuses an append at or below it (it lost synced entries to
//! disk damage), when it drops to what the follower's hint shows; in `Probe` at most one append is unanswered, in `Replicate` at most
//! `inflight_max` appends are, in `Snapshot` only snapshot chunks are sent.

use crate::ids::NodeId;
use std::collections::VecDeque;

/// A leader's progress of each peer, in peer id order. A group has a handful of peers, so a
/// sorted vector sized to them beats an ordered map, whose first node holds room for eleven
/// (about a kilobyte per leader).
#[derive(Clone, Debug, Default)]
pub struct ProgressMap {
    peers: Vec<(NodeId, Progress)>,
}

impl ProgressMap {
    fn position(&self, peer: NodeId) -> Result<usize, usize> {
        self.peers.binary_search_by_key(&peer, |(id, _)| *id)
    }

    pub fn get(&self, peer: &NodeId) -> Option<&Progress> {
        let position = self.position(*peer).ok()?;
        Some(&self.peers[position].1)
    }

    pub fn get_mut(&mut self, peer: &NodeId) -> Option<&mut Progress> {
        let position = self.position(*peer).ok()?;
        Some(&mut self.peers[position].1)
    }

    /// Adds `peer` with `make()`'s progress unless it is tracked already.
    pub fn insert_if_absent(&mut self, peer: NodeId, make: impl FnOnce() -> Progress) {
        if let Err(position) = self.position(peer) {
            // Peers come one at a time and rarely: room for exactly one more, not four.
            self.peers.reserve_exact(1);
            self.peers.insert(position, (peer, make()));
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId, &mut Progress) -> bool) {
        self.peers
            .retain_mut(|(peer, progress)| keep(peer, progress));
    }

    /// Forgets every peer and frees the room they took (a follower tracks none).
    pub fn clear(&mut self) {
        self.peers = Vec::new();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Progress)> {
        self.peers.iter().map(|(peer, progress)| (peer, progress))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&NodeId, &mut Progress)> {
        self.peers
            .iter_mut()
            .map(|(peer, progress)| (&*peer, progress))
    }

    pub fn keys(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.iter().map(|(peer, _)| peer)
    }

    pub fn values(&self) -> impl Iterator<Item = &Progress> {
        self.peers.iter().map(|(_, progress)| progress)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Progress> {
        self.peers.iter_mut().map(|(_, progress)| progress)
    }

    /// Gives back the room an idle group does not need: spare capacity, and empty in-flight
    /// windows.
    pub fn release_idle_buffers(&mut self) {
        self.peers.shrink_to_fit();
        for (_, progress) in &mut self.peers {
            progress.release_idle_buffers();
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// Where the follower's log matches is unknown: one append at a time, backing off on
    /// each rejection.
    Probe,
    /// The follower's log matches up to `match_index`: appends are pipelined.
    Replicate,
    /// The follower needs entries the leader compacted: it is sent the snapshot at `index`,
    /// in chunks, and `offset` is the next byte it expects.
    Snapshot { index: u64, offset: u64 },
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: u64,
    pub next_index: u64,
    pub state: ReplicationState,
    /// In `Probe`: an append was sent and neither it nor a heartbeat has been answered since.
    /// In `Snapshot`: a chunk was asked for or sent and not yet acknowledged.
    pub paused: bool,
    /// Last index of every unanswered append, oldest first (`Replicate` only).
    inflight: VecDeque<u64>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The newest read round this follower acknowledged.
    pub read_round_acknowledged: u64,
}

impl Progress {
    pub fn new(next_index: u64) -> Self {
        Self {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            paused: false,
            inflight: VecDeque::new(),
            recent_active: false,
            read_round_acknowledged: 0,
        }
    }

    pub fn is_paused(&self, inflight_max: usize) -> bool {
        match self.state {
            ReplicationState::Probe | ReplicationState::Snapshot { .. } => self.paused,
            ReplicationState::Replicate => self.inflight.len() >= inflight_max,
        }
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, probe from just after it.
        let next = match self.state {
            ReplicationState::Snapshot { index, .. } => (self.match_index + 1).max(index + 1),
            _ => self.match_index + 1,
        };
        self.state = ReplicationState::Probe;
        self.next_index = next;
        self.paused = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index + 1;
        self.paused = false;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self, index: u64) {
        self.state = ReplicationState::Snapshot { index, offset: 0 };
        self.paused = false;
        self.inflight.clear();
    }

    /// Frees the in-flight window's buffer when nothing is in flight; it grows again on the
    /// next pipelined append.
    pub fn release_idle_buffers(&mut self) {
        if self.inflight.is_empty() {
            self.inflight = VecDeque::new();
        }
    }

    /// A heartbeat came back while the pipeline is full: appends were probably lost, so let
    /// one more out. Its gap makes the follower refuse it, which sends us back to probing.
    pub fn free_one_inflight_if_full(&mut self, inflight_max: usize) {
        if self.state == ReplicationState::Replicate && self.inflight.len() >= inflight_max {
            self.inflight.pop_front();
        }
    }

    /// An append ending at `last_index` was sent.
    pub fn on_append_sent(&mut self, last_index: u64, carried_entries: bool) {
        match self.state {
            ReplicationState::Replicate => {
                if carried_entries {
                    self.next_index = last_index + 1;
                    self.inflight.push_back(last_index);
                }
            }
            ReplicationState::Probe => self.paused = true,
            ReplicationState::Snapshot { .. } => {
                unreachable!("no appends are sent to a follower being sent a snapshot")
            }
        }
    }

    /// The follower's log matches up to `index`. Returns whether that is news.
    pub fn on_accepted(&mut self, index: u64) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|last| *last <= index) {
            self.inflight.pop_front();
        }
        self.paused = false;
        updated
    }

    /// The follower refused an append after `rejected_index`; `probe_from` is where the hint
    /// says to look. Returns false when the refusal is stale (an older append's).
    pub fn on_rejected(&mut self, rejected_index: u64, probe_from: u64) -> bool {
        match self.state {
            ReplicationState::Replicate => {
                if rejected_index <= self.match_index {
                    return false;
                }
                // The pipeline went wrong (the follower lost entries): probe from what matched.
                self.become_probe();
                true
            }
            ReplicationState::Probe => {
                if self.next_index.checked_sub(1) != Some(rejected_index) {
                    return false;
                }
                if rejected_index <= self.match_index {
                    // The follower no longer holds what it confirmed: synced records lost to
                    // disk damage (or a planted bug). Probing from `match_index` again would
                    // loop forever; believe the hint instead.
                    self.match_index = probe_from.min(rejected_index.saturating_sub(1));
                }
                self.next_index = rejected_index.min(probe_from + 1).max(self.match_index + 1);
                self.paused = false;
                true
            }
            ReplicationState::Snapshot { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_backs_off_to_the_hint_but_never_below_match() {
        let mut progress = Progress::new(11);
        progress.on_append_sent(10, true);
        assert!(progress.is_paused(4));
        assert!(progress.on_rejected(10, 4));
        assert_eq!(progress.next_index, 5);
        assert!(!progress.is_paused(4));
        // A refusal for an append we no longer wait on is stale.
        assert!(!progress.on_rejected(10, 1));
        progress.match_index = 3;
        progress.next_index = 6;
        assert!(progress.on_rejected(5, 0));
        assert_eq!(progress.next_index, 4);
        // A refusal at the match index: the follower lost entries it had confirmed.
        progress.on_append_sent(3, false);
        assert!(progress.on_rejected(3, 1));
        assert_eq!(progress.match_index, 1);
        assert_eq!(progress.next_index, 2);
    }

    #[test]
    fn replicate_pipelines_up_to_the_window_and_frees_it_on_acceptance() {
        let mut progress = Progress::new(1);
        progress.become_replicate();
        progress.on_append_sent(3, true);
        progress.on_append_sent(6, true);
        assert!(progress.is_paused(2));
        assert_eq!(progress.next_index, 7);
        assert!(progress.on_accepted(3));
        assert!(!progress.is_paused(2));
        assert!(!progress.on_accepted(2), "an old acceptance is no news");
        assert_eq!(progress.match_index, 3);
    }
}

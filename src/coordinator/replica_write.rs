//! One replica write: the state machine that places an event, counts durable replicas, answers
//! the client at its commit level, and re-spreads failures ("get it done").
//!
//! Invariants:
//! - the client is answered at most once: `Ok` exactly when `required` distinct nodes reported
//!   the event durable, or an error once that count can no longer be reached;
//! - a node counts once, whatever it reports later; a success that arrives after the node's
//!   deadline still counts (the write happened), but the node was already replaced;
//! - every failure or timeout starts at most one replacement, taken from the unused spares in
//!   plan order, and replacements stop at the replication factor: retries always end;
//! - the write is finished when the replication factor is reached (then the holders are told
//!   to stop repairing) or when nothing is in flight and no spare is left (then the repair loop
//!   of whichever holder notices picks it up later).

use super::CommitLevel;
use crate::events::EventKey;
use crate::ids::NodeId;
use crate::placement::{PlacementError, ReplicaPlan};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error(
        "{missing} replicas have NOT been created: commit level {commit_level} needs \
         {required}, {succeeded} succeeded (the event may still exist on those replicas \
         under key {key})"
    )]
    ReplicasNotCreated {
        key: EventKey,
        missing: u32,
        required: u32,
        succeeded: u32,
        commit_level: CommitLevel,
    },
    #[error(
        "commit level {commit_level} needs {required} of {replication_factor} replicas, but \
         only {up} nodes are up; nothing was written"
    )]
    NotEnoughNodesUp {
        commit_level: CommitLevel,
        required: u32,
        replication_factor: u32,
        up: u32,
    },
    #[error("event of {len} bytes is larger than the limit of {max} bytes")]
    EventTooLarge { len: usize, max: usize },
    #[error("the node's store refuses writes: {0}")]
    StoreUnavailable(String),
}

/// What the node must do for the write; the write itself never touches I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteAction {
    /// Stage the event in the local store; report the outcome with `on_success` /
    /// `on_failure` for the local node once the commit is known.
    StageLocal,
    /// Send the event to this peer, expecting an answer by the deadline.
    SendReplicate(NodeId),
    /// Answer the client.
    Answer(Result<EventKey, PutError>),
    /// The replication factor is reached: tell these holders to stop repairing the event.
    Confirm(Vec<NodeId>),
    /// This peer timed out: deprioritise it in placement for a while.
    Suspect(NodeId),
}

#[derive(Debug)]
pub struct ReplicaWrite {
    key: EventKey,
    local: NodeId,
    commit_level: Option<CommitLevel>,
    required: u32,
    replication_factor: u32,
    successes: BTreeSet<NodeId>,
    /// Awaited nodes and their deadlines (`None`: the local commit, which has no timeout).
    in_flight: BTreeMap<NodeId, Option<u64>>,
    /// Nodes that failed or timed out; a timed-out node's late success still counts.
    failed: BTreeSet<NodeId>,
    spares: VecDeque<NodeId>,
    answered: bool,
    confirmed: bool,
    /// A canary's planted bug: the client is answered only once more than `required`
    /// replicas hold the event, so an ALL put is never answered.
    answer_only_past_required: bool,
}

impl ReplicaWrite {
    /// Starts a write for `key` with `plan`. `commit_level` is `None` for a repair, which has
    /// no client to answer. `local_holds_event` is set when the local node already holds the
    /// event durably (a repair started by a holder).
    pub fn start(
        key: EventKey,
        local: NodeId,
        plan: ReplicaPlan,
        replication_factor: u32,
        commit_level: Option<CommitLevel>,
        local_holds_event: bool,
        deadline_micros: u64,
    ) -> (Self, Vec<WriteAction>) {
        assert_eq!(plan.targets.len(), replication_factor as usize, "plan size");
        assert_eq!(
            plan.targets.first(),
            Some(&local),
            "the coordinator places itself first"
        );
        let required = commit_level.map_or(replication_factor, |level| {
            level.required(replication_factor)
        });
        let mut write = Self {
            key,
            local,
            commit_level,
            required,
            replication_factor,
            successes: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            failed: BTreeSet::new(),
            spares: plan.spares.into(),
            answered: commit_level.is_none(),
            confirmed: false,
            answer_only_past_required: false,
        };
        let mut actions = Vec::new();
        for target in plan.targets {
            if target == local {
                if local_holds_event {
                    write.successes.insert(local);
                } else {
                    write.in_flight.insert(local, None);
                    actions.push(WriteAction::StageLocal);
                }
            } else {
                write.in_flight.insert(target, Some(deadline_micros));
                actions.push(WriteAction::SendReplicate(target));
            }
        }
        write.settle(&mut actions);
        (write, actions)
    }

    /// Plants the canary bug `answer_only_past_required` (see the field). Never called
    /// outside a canary scenario.
    pub fn plant_answer_only_past_required(&mut self) {
        self.answer_only_past_required = true;
    }

    pub fn key(&self) -> &EventKey {
        &self.key
    }

    pub fn successes(&self) -> &BTreeSet<NodeId> {
        &self.successes
    }

    /// `node` reports the event durable.
    pub fn on_success(&mut self, node: NodeId) -> Vec<WriteAction> {
        let mut actions = Vec::new();
        let was_awaited = self.in_flight.remove(&node).is_some();
        if was_awaited || self.failed.contains(&node) {
            self.successes.insert(node);
        }
        self.settle(&mut actions);
        actions
    }

    /// `node` reports that it could not store the event; a replacement is started.
    pub fn on_failure(&mut self, node: NodeId, deadline_micros: u64) -> Vec<WriteAction> {
        let mut actions = Vec::new();
        if self.in_flight.remove(&node).is_some() {
            self.failed.insert(node);
            self.replace(deadline_micros, &mut actions);
        }
        self.settle(&mut actions);
        actions
    }

    /// Times out every peer whose deadline is at or before `now_micros`.
    pub fn on_deadline(&mut self, now_micros: u64, next_deadline_micros: u64) -> Vec<WriteAction> {
        let expired: Vec<NodeId> = self
            .in_flight
            .iter()
            .filter(|(_, deadline)| deadline.is_some_and(|at| at <= now_micros))
            .map(|(node, _)| *node)
            .collect();
        let mut actions = Vec::new();
        for node in expired {
            self.in_flight.remove(&node);
            self.failed.insert(node);
            actions.push(WriteAction::Suspect(node));
            self.replace(next_deadline_micros, &mut actions);
        }
        self.settle(&mut actions);
        actions
    }

    pub fn next_deadline_micros(&self) -> Option<u64> {
        self.in_flight.values().flatten().min().copied()
    }

    /// Finished: nothing more will happen for this write.
    pub fn is_finished(&self) -> bool {
        self.confirmed || (self.in_flight.is_empty() && self.answered)
    }

    /// Starts replacements until successes plus in-flight writes cover the replication factor
    /// again, or the spares run out.
    fn replace(&mut self, deadline_micros: u64, actions: &mut Vec<WriteAction>) {
        while self.successes.len() + self.in_flight.len() < self.replication_factor as usize {
            let Some(spare) = self.spares.pop_front() else {
                return;
            };
            if self.successes.contains(&spare)
                || self.in_flight.contains_key(&spare)
                || self.failed.contains(&spare)
            {
                continue;
            }
            self.in_flight.insert(spare, Some(deadline_micros));
            actions.push(WriteAction::SendReplicate(spare));
        }
    }

    fn settle(&mut self, actions: &mut Vec<WriteAction>) {
        let succeeded = self.successes.len() as u32;
        if !self.answered {
            let reachable = succeeded + self.in_flight.len() as u32 + self.spares.len() as u32;
            let level = self.commit_level.expect("unanswered writes have a client");
            let enough = if self.answer_only_past_required {
                succeeded > self.required
            } else {
                succeeded >= self.required
            };
            if enough {
                self.answered = true;
                actions.push(WriteAction::Answer(Ok(self.key.clone())));
            } else if reachable < self.required {
                self.answered = true;
                actions.push(WriteAction::Answer(Err(PutError::ReplicasNotCreated {
                    key: self.key.clone(),
                    missing: self.required - succeeded,
                    required: self.required,
                    succeeded,
                    commit_level: level,
                })));
            }
        }
        if !self.confirmed && succeeded >= self.replication_factor {
            self.confirmed = true;
            let holders = self
                .successes
                .iter()
                .copied()
                .filter(|node| *node != self.local)
                .collect();
            actions.push(WriteAction::Confirm(holders));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: NodeId = NodeId(0);

    fn key() -> EventKey {
        EventKey::from_parts(1_000, LOCAL, 0)
    }

    fn plan(targets: &[u32], spares: &[u32]) -> ReplicaPlan {
        ReplicaPlan {
            targets: targets.iter().map(|n| NodeId(*n)).collect(),
            spares: spares.iter().map(|n| NodeId(*n)).collect(),
        }
    }

    fn answers(actions: &[WriteAction]) -> Vec<&Result<EventKey, PutError>> {
        actions
            .iter()
            .filter_map(|action| match action {
                WriteAction::Answer(result) => Some(result),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn start_stages_locally_and_sends_to_peers() {
        let (_, actions) = ReplicaWrite::start(
            key(),
            LOCAL,
            plan(&[0, 1, 2], &[3]),
            3,
            Some(CommitLevel::Quorum),
            false,
            100,
        );
        assert_eq!(
            actions,
            vec![
                WriteAction::StageLocal,
                WriteAction::SendReplicate(NodeId(1)),
                WriteAction::SendReplicate(NodeId(2)),
            ]
        );
    }

    /// How many successes have come back when the client is answered, per level, RF 3.
    #[test]
    fn answered_after_required_successes() {
        for (level, required) in [
            (CommitLevel::One, 1),
            (CommitLevel::Quorum, 2),
            (CommitLevel::All, 3),
        ] {
            let (mut write, _) = ReplicaWrite::start(
                key(),
                LOCAL,
                plan(&[0, 1, 2], &[]),
                3,
                Some(level),
                false,
                100,
            );
            let mut answered_at = None;
            for (count, node) in [0, 1, 2].into_iter().enumerate() {
                let actions = write.on_success(NodeId(node));
                if !answers(&actions).is_empty() {
                    assert_eq!(answers(&actions), vec![&Ok(key())]);
                    answered_at.get_or_insert(count + 1);
                }
            }
            assert_eq!(answered_at, Some(required), "{level}");
            assert!(write.is_finished());
        }
    }

    #[test]
    fn confirm_names_the_peer_holders_once_rf_is_reached() {
        let (mut write, _) = ReplicaWrite::start(
            key(),
            LOCAL,
            plan(&[0, 1, 2], &[]),
            3,
            Some(CommitLevel::One),
            false,
            100,
        );
        write.on_success(NodeId(0));
        write.on_success(NodeId(2));
        let actions = write.on_success(NodeId(1));
        assert_eq!(
            actions,
            vec![WriteAction::Confirm(vec![NodeId(1), NodeId(2)])]
        );
        assert!(write.on_success(NodeId(1)).is_empty(), "a node counts once");
    }

    #[test]
    fn local_failure_is_respread_to_a_spare() {
        let (mut write, _) = ReplicaWrite::start(
            key(),
            LOCAL,
            plan(&[0, 1, 2], &[3, 4]),
            3,
            Some(CommitLevel::All),
            false,
            100,
        );
        let actions = write.on_failure(LOCAL, 200);
        assert_eq!(actions, vec![WriteAction::SendReplicate(NodeId(3))]);
        write.on_success(NodeId(1));
        write.on_success(NodeId(2));
        let actions = write.on_success(NodeId(3));
        assert_eq!(answers(&actions), vec![&Ok(key())]);
    }

    #[test]
    fn zone_and_region_peer_failures_exhaust_spares_then_error() {
        // RF 2, ALL: the zone peer 1 fails, the spare region peer 5 fails, nothing is left.
        let (mut write, _) = ReplicaWrite::start(
            key(),
            LOCAL,
            plan(&[0, 1], &[5]),
            2,
            Some(CommitLevel::All),
            false,
            100,
        );
        write.on_success(LOCAL);
        assert_eq!(
            write.on_failure(NodeId(1), 200),
            vec![WriteAction::SendReplicate(NodeId(5))]
        );
        let actions = write.on_failure(NodeId(5), 300);
        assert_eq!(
            answers(&actions),
            vec![&Err(PutError::ReplicasNotCreated {
                key: key(),
                missing: 1,
                required: 2,
                succeeded: 1,
                commit_level: CommitLevel::All
            })]
        );
        assert_eq!(
            PutError::ReplicasNotCreated {
                key: key(),
                missing: 1,
                required: 2,
                succeeded: 1,
                commit_level: CommitLevel::All
            }
            .to_string(),
            format!(
                "1 replicas have NOT been created: commit level ALL needs 2, 1 succeeded \
                 (the event may still exist on those replicas under key {})",
                key()
            )
        );
        assert!(write.is_finished());
    }

    #[test]
    fn local_failure_with_rf_one_and_no_peers_errors() {
        let (mut write, _) = ReplicaWrite::start(
            key(),
            LOCAL,
            plan(&[0], &[]),
            1,
            Some(CommitLevel::One),
            false,
            100,
        );
        let actions = write.on_failure(LOCAL, 200);
        assert!(matches!(
            answers(&actions)[..],
            [Err(PutError::ReplicasNotCreated { succeeded: 0, .. })]
        ));
    }

    #[test]
    fn timeout_suspects_and_replaces_but_late_success_counts() {
        let (mut write, _) = ReplicaWrite::start(
            key(),
            LOCAL,
            plan(&[0, 1], &[2]),
            2,
            Some(CommitLevel::All),
            false,
            100,
        );
        assert_eq!(write.next_deadline_micros(), Some(100));
        write.on_success(LOCAL);
        let actions = write.on_deadline(100, 250);
        assert_eq!(
            actions,
            vec![
                WriteAction::Suspect(NodeId(1)),
                WriteAction::SendReplicate(NodeId(2))
            ]
        );
        let actions = write.on_success(NodeId(1));
        assert_eq!(answers(&actions), vec![&Ok(key())]);
        assert!(actions.contains(&WriteAction::Confirm(vec![NodeId(1)])));
    }

    #[test]
    fn answered_client_is_never_answered_again_and_get_it_done_continues() {
        let (mut write, _) = ReplicaWrite::start(
            key(),
            LOCAL,
            plan(&[0, 1, 2], &[3]),
            3,
            Some(CommitLevel::One),
            false,
            100,
        );
        assert_eq!(answers(&write.on_success(LOCAL)).len(), 1);
        let actions = write.on_failure(NodeId(1), 200);
        assert_eq!(actions, vec![WriteAction::SendReplicate(NodeId(3))]);
        assert!(!write.is_finished());
        write.on_success(NodeId(2));
        let actions = write.on_success(NodeId(3));
        assert_eq!(
            actions,
            vec![WriteAction::Confirm(vec![NodeId(2), NodeId(3)])]
        );
    }

    #[test]
    fn repair_write_counts_the_local_copy_and_has_no_client() {
        let (mut write, actions) =
            ReplicaWrite::start(key(), LOCAL, plan(&[0, 1], &[]), 2, None, true, 100);
        assert_eq!(actions, vec![WriteAction::SendReplicate(NodeId(1))]);
        assert_eq!(
            write.on_success(NodeId(1)),
            vec![WriteAction::Confirm(vec![NodeId(1)])]
        );
    }
}

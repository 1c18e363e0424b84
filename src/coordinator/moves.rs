//! The next step of one partition's move towards the replica set the ring gives it: a pure
//! function of the group's configuration as its leader sees it, the target set, which learners
//! caught up, and where each node is. The placement driver (on the directory's leader) asks
//! it again after every step, so a driver that crashes or loses its term mid-move leaves
//! nothing that the next one cannot finish: every step is read off the configuration alone.
//!
//! Invariants (each checked by the tests, the last ones over random moves):
//! - one change at a time, and none while the configuration is joint (Raft leaves it by
//!   itself once it committed);
//! - a node joins as a learner, and is promoted only once it caught up;
//! - voters leave only after every target voter is in, so a move never lowers the voter count
//!   below `min(current, target)` and never spreads over fewer zones than it did or than the
//!   target does, whichever is fewer;
//! - the leader is never removed: leadership moves away first, to a caught-up target voter
//!   (the ring's owner when it is one);
//! - once the voters are the target, the ring's owner is the preferred leader: leadership is
//!   handed to it when it caught up;
//! - learners outside the target (a move the ring undid) are removed before anything else is
//!   added.

use crate::ids::{Location, NodeId};
use crate::raft::{ConfigChange, Configuration};
use std::collections::BTreeSet;

/// What the driver does next for one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// Propose this configuration change through the partition's leader.
    Change(ConfigChange),
    /// Ask the leader to hand leadership to this voter.
    TransferLeadership(NodeId),
    /// A learner is still catching up (or a joint configuration is being left): ask again
    /// later.
    Wait,
    /// The group is on its target, led by its preferred leader.
    Done,
}

/// What the planner needs to know about a partition's group.
pub struct GroupView<'a> {
    /// The configuration as the leader holds it (appended, so it may be uncommitted).
    pub configuration: &'a Configuration,
    pub leader: NodeId,
    /// Whether a node's log reached the leader's commit index (a learner is promoted only
    /// then, and leadership goes only to a voter that did).
    pub caught_up: &'a dyn Fn(NodeId) -> bool,
    /// Where a node is; `None` for a node the directory no longer lists.
    pub location: &'a dyn Fn(NodeId) -> Option<&'a Location>,
}

/// The next step towards `target` (the ring's replica set, its owner first).
pub fn next_step(group: &GroupView<'_>, target: &[NodeId]) -> MoveStep {
    let configuration = group.configuration;
    if configuration.is_joint() || target.is_empty() {
        return MoveStep::Wait;
    }
    let target_set: BTreeSet<NodeId> = target.iter().copied().collect();
    // A learner the target no longer names: the move it belonged to was undone.
    if let Some(stale) = configuration
        .learners
        .iter()
        .find(|learner| !target_set.contains(learner))
    {
        return MoveStep::Change(ConfigChange::Remove(*stale));
    }
    // Target members first: add one as a learner, then promote it once it caught up.
    if let Some(missing) = target.iter().find(|node| !configuration.is_member(**node)) {
        return MoveStep::Change(ConfigChange::AddLearner(*missing));
    }
    if let Some(learner) = target
        .iter()
        .find(|node| configuration.learners.contains(node))
    {
        return if (group.caught_up)(*learner) {
            MoveStep::Change(ConfigChange::Promote(*learner))
        } else {
            MoveStep::Wait
        };
    }
    // Every target node votes: the others leave, one at a time, the leader last.
    let leaving: Vec<NodeId> = configuration
        .voters
        .iter()
        .copied()
        .filter(|voter| !target_set.contains(voter))
        .collect();
    if let Some(&voter) = leaving
        .iter()
        .filter(|voter| **voter != group.leader)
        .min_by_key(|voter| zone_cost(group, **voter))
    {
        return MoveStep::Change(ConfigChange::Remove(voter));
    }
    if !leaving.is_empty() {
        // Only the leader is left to leave: hand leadership to a target voter first.
        return match preferred_leader(group, target) {
            Some(next) => MoveStep::TransferLeadership(next),
            None => MoveStep::Wait,
        };
    }
    if group.leader != target[0] {
        if (group.caught_up)(target[0]) {
            return MoveStep::TransferLeadership(target[0]);
        }
        return MoveStep::Wait;
    }
    MoveStep::Done
}

/// How much removing `voter` would cost the group's zone spread: 1 when it is the last voter
/// of its zone (or its place is unknown, which counts as its own zone), else 0.
fn zone_cost(group: &GroupView<'_>, voter: NodeId) -> u8 {
    let Some(location) = (group.location)(voter) else {
        return 0;
    };
    let shared = group
        .configuration
        .voters
        .iter()
        .filter(|other| **other != voter)
        .any(|other| (group.location)(*other) == Some(location));
    u8::from(!shared)
}

/// The target voter leadership should go to: the ring's owner when it caught up, else the
/// first caught-up target voter.
fn preferred_leader(group: &GroupView<'_>, target: &[NodeId]) -> Option<NodeId> {
    target
        .iter()
        .copied()
        .filter(|node| *node != group.leader && group.configuration.voters.contains(node))
        .find(|node| (group.caught_up)(*node))
}

#[cfg(test)]
mod tests;

//! Who votes and who only listens: a group's configuration, its changes through joint
//! consensus, and the quorum arithmetic over it.
//!
//! Invariants:
//! - a node is in at most one of `voters` and `learners`; `learners_next` (voters being demoted)
//!   are voters of the outgoing half only;
//! - outside a joint configuration `voters_outgoing` and `learners_next` are empty;
//! - a change that alters the voters goes through a joint configuration (old and new voters
//!   must both agree, Raft thesis §4.3) and is left only by `LeaveJoint`; adding or removing a
//!   learner is a simple change; no change may leave the voters empty;
//! - in a joint configuration a decision (commit, election, read) needs a majority of each half.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// The voters (of the incoming half, in a joint configuration).
    pub voters: BTreeSet<NodeId>,
    /// The outgoing half's voters while joint; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Nodes that receive the log and never vote.
    pub learners: BTreeSet<NodeId>,
    /// Voters of the outgoing half that become learners when the joint configuration is left.
    pub learners_next: BTreeSet<NodeId>,
}

/// One membership change, proposed through the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigChange {
    /// Start replicating to a new node that does not vote yet.
    AddLearner(NodeId),
    /// Make a caught-up learner a voter (through a joint configuration).
    Promote(NodeId),
    /// Make a voter a learner (through a joint configuration).
    Demote(NodeId),
    /// Remove a learner, or a voter (through a joint configuration).
    Remove(NodeId),
    /// Leave the joint configuration for its incoming half. The leader proposes it by itself
    /// once the joint configuration has committed.
    LeaveJoint,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigChangeError {
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    #[error("the change would leave the group without voters")]
    NoVotersLeft,
    #[error("a joint configuration must be left before the next change")]
    StillJoint,
    #[error("the configuration is not joint")]
    NotJoint,
}

/// The outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

impl Configuration {
    /// A configuration of voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            voters: voters.into_iter().collect(),
            ..Self::default()
        }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Checks the invariants of the module doc on a configuration from outside (a snapshot
    /// a peer sent): voters and learners apart, `learners_next` only while joint and among
    /// the outgoing voters, and at least one voter.
    pub fn check(&self) -> Result<(), String> {
        if self.voters.is_empty() {
            return Err("a configuration without voters".to_string());
        }
        if let Some(node) = self.voters.intersection(&self.learners).next() {
            return Err(format!("{node} is both a voter and a learner"));
        }
        if !self.learners_next.is_subset(&self.voters_outgoing) {
            return Err("learners_next outside the outgoing voters".to_string());
        }
        if let Some(node) = self.learners.intersection(&self.learners_next).next() {
            return Err(format!("{node} is both a learner and about to become one"));
        }
        Ok(())
    }

    /// Whether `node` votes in either half.
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.voters_outgoing.contains(&node)
    }

    pub fn is_member(&self, node: NodeId) -> bool {
        self.is_voter(node) || self.learners.contains(&node)
    }

    /// Every node that receives the log (voters of both halves and learners), in id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut members: BTreeSet<NodeId> =
            self.voters.union(&self.voters_outgoing).copied().collect();
        members.extend(self.learners.iter().copied());
        members
    }

    /// The configuration after `change`, or why the change is refused. `self` is unchanged.
    pub fn apply(&self, change: ConfigChange) -> Result<Configuration, ConfigChangeError> {
        if self.is_joint() && change != ConfigChange::LeaveJoint {
            return Err(ConfigChangeError::StillJoint);
        }
        let mut next = self.clone();
        match change {
            ConfigChange::AddLearner(node) => {
                if self.is_member(node) {
                    return Err(ConfigChangeError::AlreadyMember(node));
                }
                next.learners.insert(node);
            }
            ConfigChange::Promote(node) => {
                if !self.learners.contains(&node) {
                    return Err(ConfigChangeError::NotALearner(node));
                }
                next.voters_outgoing = self.voters.clone();
                next.learners.remove(&node);
                next.voters.insert(node);
            }
            ConfigChange::Demote(node) => {
                if !self.voters.contains(&node) {
                    return Err(ConfigChangeError::NotAVoter(node));
                }
                if self.voters.len() == 1 {
                    return Err(ConfigChangeError::NoVotersLeft);
                }
                next.voters_outgoing = self.voters.clone();
                next.voters.remove(&node);
                next.learners_next.insert(node);
            }
            ConfigChange::Remove(node) => {
                if self.learners.contains(&node) {
                    next.learners.remove(&node);
                } else if self.voters.contains(&node) {
                    if self.voters.len() == 1 {
                        return Err(ConfigChangeError::NoVotersLeft);
                    }
                    next.voters_outgoing = self.voters.clone();
                    next.voters.remove(&node);
                } else {
                    return Err(ConfigChangeError::NotAMember(node));
                }
            }
            ConfigChange::LeaveJoint => {
                if !self.is_joint() {
                    return Err(ConfigChangeError::NotJoint);
                }
                next.voters_outgoing.clear();
                let demoted = std::mem::take(&mut next.learners_next);
                next.learners.extend(demoted);
            }
        }
        Ok(next)
    }

    /// The highest index a quorum has reached, given each voter's match index.
    pub fn committed_index(&self, match_index: impl Fn(NodeId) -> u64) -> u64 {
        let incoming = majority_index(&self.voters, &match_index);
        if self.is_joint() {
            incoming.min(majority_index(&self.voters_outgoing, &match_index))
        } else {
            incoming
        }
    }

    /// The election's outcome given the votes so far (`true` granted, `false` refused).
    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let incoming = majority_vote(&self.voters, votes);
        if !self.is_joint() {
            return incoming;
        }
        let outgoing = majority_vote(&self.voters_outgoing, votes);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Whether `nodes` hold a quorum (of each half, when joint).
    pub fn is_quorum(&self, nodes: &BTreeSet<NodeId>) -> bool {
        let votes: BTreeMap<NodeId, bool> = nodes.iter().map(|node| (*node, true)).collect();
        self.vote_result(&votes) == VoteResult::Won
    }
}

/// The largest index that a majority of `voters` has reached. An empty half agrees to
/// anything (so a joint configuration's missing half never holds the commit back).
fn majority_index(voters: &BTreeSet<NodeId>, match_index: &impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut indexes: Vec<u64> = voters.iter().map(|voter| match_index(*voter)).collect();
    indexes.sort_unstable_by(|left, right| right.cmp(left));
    indexes[voters.len() / 2]
}

fn majority_vote(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let quorum = voters.len() / 2 + 1;
    let mut granted = 0;
    let mut refused = 0;
    for voter in voters {
        match votes.get(voter) {
            Some(true) => granted += 1,
            Some(false) => refused += 1,
            None => {}
        }
    }
    if granted >= quorum {
        VoteResult::Won
    } else if refused > voters.len() - quorum {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[u32]) -> BTreeSet<NodeId> {
        ids.iter().map(|id| NodeId(*id)).collect()
    }

    #[test]
    fn majority_index_is_the_median_from_the_top() {
        let configuration = Configuration::with_voters(nodes(&[1, 2, 3]));
        let matches = [(1, 5), (2, 3), (3, 9)];
        let lookup = |node: NodeId| {
            matches
                .iter()
                .find(|(id, _)| NodeId(*id) == node)
                .unwrap()
                .1
        };
        assert_eq!(configuration.committed_index(lookup), 5);
        let four = Configuration::with_voters(nodes(&[1, 2, 3, 4]));
        let matches = [(1, 5), (2, 3), (3, 9), (4, 1)];
        let lookup = |node: NodeId| {
            matches
                .iter()
                .find(|(id, _)| NodeId(*id) == node)
                .unwrap()
                .1
        };
        // Three of four must hold it.
        assert_eq!(four.committed_index(lookup), 3);
    }

    #[test]
    fn joint_commit_needs_both_halves() {
        let old = Configuration::with_voters(nodes(&[1, 2, 3]));
        let with_learner = old.apply(ConfigChange::AddLearner(NodeId(4))).unwrap();
        let joint = with_learner
            .apply(ConfigChange::Promote(NodeId(4)))
            .unwrap();
        assert!(joint.is_joint());
        let joint = joint.apply(ConfigChange::LeaveJoint).unwrap();
        let joint = joint.apply(ConfigChange::Remove(NodeId(1))).unwrap();
        // Outgoing {1,2,3,4}, incoming {2,3,4}.
        let matches = [(1, 10), (2, 10), (3, 2), (4, 2)];
        let lookup = |node: NodeId| {
            matches
                .iter()
                .find(|(id, _)| NodeId(*id) == node)
                .unwrap()
                .1
        };
        // Outgoing majority (3 of 4) reached only 2; incoming majority (2 of 3) also 2.
        assert_eq!(joint.committed_index(lookup), 2);
        let votes: BTreeMap<NodeId, bool> = [(1, true), (2, true), (3, true)]
            .iter()
            .map(|(id, granted)| (NodeId(*id), *granted))
            .collect();
        assert_eq!(joint.vote_result(&votes), VoteResult::Won);
        let votes: BTreeMap<NodeId, bool> = [(1, true), (2, true), (3, false), (4, false)]
            .iter()
            .map(|(id, granted)| (NodeId(*id), *granted))
            .collect();
        // Incoming {2,3,4} refused by two of three.
        assert_eq!(joint.vote_result(&votes), VoteResult::Lost);
    }

    #[test]
    fn changes_are_checked_and_leave_the_configuration_unchanged_on_error() {
        let configuration = Configuration::with_voters(nodes(&[1]));
        assert_eq!(
            configuration.apply(ConfigChange::Remove(NodeId(1))),
            Err(ConfigChangeError::NoVotersLeft)
        );
        assert_eq!(
            configuration.apply(ConfigChange::Promote(NodeId(2))),
            Err(ConfigChangeError::NotALearner(NodeId(2)))
        );
        assert_eq!(
            configuration.apply(ConfigChange::AddLearner(NodeId(1))),
            Err(ConfigChangeError::AlreadyMember(NodeId(1)))
        );
        let with_learner = configuration
            .apply(ConfigChange::AddLearner(NodeId(2)))
            .unwrap();
        let joint = with_learner
            .apply(ConfigChange::Promote(NodeId(2)))
            .unwrap();
        assert_eq!(
            joint.apply(ConfigChange::AddLearner(NodeId(3))),
            Err(ConfigChangeError::StillJoint)
        );
        let demoting = joint
            .apply(ConfigChange::LeaveJoint)
            .unwrap()
            .apply(ConfigChange::Demote(NodeId(1)))
            .unwrap();
        assert!(demoting.is_voter(NodeId(1)));
        let left = demoting.apply(ConfigChange::LeaveJoint).unwrap();
        assert_eq!(left.voters, nodes(&[2]));
        assert_eq!(left.learners, nodes(&[1]));
        assert!(!left.is_joint());
        assert_eq!(configuration, Configuration::with_voters(nodes(&[1])));
    }
}

//! The move planner on hand-built groups, and over random moves: every move ends on its
//! target, led by its owner, without losing the leader, voters or zones on the way.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn nodes(ids: &[u32]) -> Vec<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

/// A node's zone in these tests: its id modulo three, unless a test says otherwise.
fn zones_by_id(ids: impl IntoIterator<Item = u32>) -> BTreeMap<NodeId, Location> {
    ids.into_iter()
        .map(|id| {
            (
                NodeId(id),
                Location::new("region", format!("zone-{}", id % 3)),
            )
        })
        .collect()
}

/// `next_step` for a group with `configuration` led by `leader`, where the nodes in
/// `behind` have not caught up.
fn step(
    configuration: &Configuration,
    leader: u32,
    target: &[u32],
    behind: &[u32],
    zones: &BTreeMap<NodeId, Location>,
) -> MoveStep {
    let behind: BTreeSet<NodeId> = nodes(behind).into_iter().collect();
    let caught_up = move |node: NodeId| !behind.contains(&node);
    let location = |node: NodeId| zones.get(&node);
    next_step(
        &GroupView {
            configuration,
            leader: NodeId(leader),
            caught_up: &caught_up,
            location: &location,
        },
        &nodes(target),
    )
}

fn voters(ids: &[u32]) -> Configuration {
    Configuration::with_voters(nodes(ids))
}

#[test]
fn a_new_replica_joins_as_a_learner_is_promoted_once_caught_up_then_the_old_one_leaves() {
    let zones = zones_by_id(1..=4);
    let target = [1, 2, 4];
    let mut configuration = voters(&[1, 2, 3]);
    let add = step(&configuration, 1, &target, &[], &zones);
    assert_eq!(add, MoveStep::Change(ConfigChange::AddLearner(NodeId(4))));
    configuration = configuration
        .apply(ConfigChange::AddLearner(NodeId(4)))
        .unwrap();
    assert_eq!(
        step(&configuration, 1, &target, &[4], &zones),
        MoveStep::Wait
    );
    let promote = step(&configuration, 1, &target, &[], &zones);
    assert_eq!(promote, MoveStep::Change(ConfigChange::Promote(NodeId(4))));
    configuration = configuration
        .apply(ConfigChange::Promote(NodeId(4)))
        .unwrap();
    assert_eq!(
        step(&configuration, 1, &target, &[], &zones),
        MoveStep::Wait,
        "nothing while joint"
    );
    configuration = configuration.apply(ConfigChange::LeaveJoint).unwrap();
    let remove = step(&configuration, 1, &target, &[], &zones);
    assert_eq!(remove, MoveStep::Change(ConfigChange::Remove(NodeId(3))));
    configuration = configuration
        .apply(ConfigChange::Remove(NodeId(3)))
        .unwrap();
    configuration = configuration.apply(ConfigChange::LeaveJoint).unwrap();
    assert_eq!(
        step(&configuration, 1, &target, &[], &zones),
        MoveStep::Done
    );
}

#[test]
fn a_leader_that_must_leave_hands_leadership_to_the_owner_first() {
    let zones = zones_by_id(1..=4);
    let configuration = voters(&[1, 2, 3, 4]);
    assert_eq!(
        step(&configuration, 1, &[2, 3, 4], &[], &zones),
        MoveStep::TransferLeadership(NodeId(2))
    );
    // The owner is behind: another caught-up target voter takes it.
    assert_eq!(
        step(&configuration, 1, &[2, 3, 4], &[2], &zones),
        MoveStep::TransferLeadership(NodeId(3))
    );
    assert_eq!(
        step(&configuration, 1, &[2, 3, 4], &[2, 3, 4], &zones),
        MoveStep::Wait
    );
}

#[test]
fn the_owner_becomes_the_leader_once_the_voters_are_the_target() {
    let zones = zones_by_id(1..=3);
    let configuration = voters(&[1, 2, 3]);
    assert_eq!(
        step(&configuration, 2, &[1, 2, 3], &[], &zones),
        MoveStep::TransferLeadership(NodeId(1))
    );
    assert_eq!(
        step(&configuration, 2, &[1, 2, 3], &[1], &zones),
        MoveStep::Wait
    );
    assert_eq!(
        step(&configuration, 1, &[1, 2, 3], &[], &zones),
        MoveStep::Done
    );
}

#[test]
fn a_learner_the_target_no_longer_names_goes_first() {
    let zones = zones_by_id(1..=5);
    let configuration = voters(&[1, 2, 3])
        .apply(ConfigChange::AddLearner(NodeId(5)))
        .unwrap();
    assert_eq!(
        step(&configuration, 1, &[1, 2, 4], &[], &zones),
        MoveStep::Change(ConfigChange::Remove(NodeId(5)))
    );
}

#[test]
fn of_two_leaving_voters_the_one_whose_zone_stays_covered_goes_first() {
    let zone = |name: &str| Location::new("region", name);
    let zones: BTreeMap<NodeId, Location> = [
        (1, "a"),
        (2, "b"),
        (3, "c"),
        (4, "a"), // leaving; zone a keeps node 1
        (5, "d"), // leaving; the last voter of zone d
    ]
    .into_iter()
    .map(|(id, name)| (NodeId(id), zone(name)))
    .collect();
    let configuration = voters(&[1, 2, 3, 4, 5]);
    assert_eq!(
        step(&configuration, 1, &[1, 2, 3], &[], &zones),
        MoveStep::Change(ConfigChange::Remove(NodeId(4)))
    );
}

#[test]
fn a_joint_configuration_or_an_empty_target_waits() {
    let zones = zones_by_id(1..=4);
    let joint = voters(&[1, 2, 3])
        .apply(ConfigChange::Remove(NodeId(3)))
        .unwrap();
    assert!(joint.is_joint());
    assert_eq!(step(&joint, 1, &[1, 2], &[], &zones), MoveStep::Wait);
    assert_eq!(step(&voters(&[1]), 1, &[], &[], &zones), MoveStep::Wait);
}

fn zone_count(voters: &BTreeSet<NodeId>, zones: &BTreeMap<NodeId, Location>) -> usize {
    voters
        .iter()
        .map(|voter| zones.get(voter))
        .collect::<BTreeSet<_>>()
        .len()
}

proptest! {
    /// Any group moved to any target by the planner's steps (a learner catches up one step
    /// after it is added; a joint configuration is left at once) ends on the target, led by
    /// its owner, in a bounded number of steps, and on the way never loses its leader, never
    /// drops below min(current, target) voters, and never spreads over fewer zones than
    /// min(zones before, zones of the target).
    #[test]
    fn every_move_ends_on_the_target_and_keeps_voters_and_zones(
        initial in proptest::collection::btree_set(1u32..10, 1..6),
        target in proptest::collection::btree_set(1u32..10, 1..6),
        leader_pick in 0usize..6,
        owner_pick in 0usize..6,
    ) {
        let zones = zones_by_id(1..10);
        let mut target: Vec<u32> = target.into_iter().collect();
        let owner = target.remove(owner_pick % target.len());
        target.insert(0, owner);
        let initial: Vec<u32> = initial.into_iter().collect();
        let mut leader = initial[leader_pick % initial.len()];
        let mut configuration = voters(&initial);
        let target_nodes: BTreeSet<NodeId> = nodes(&target).into_iter().collect();
        let voters_floor = initial.len().min(target.len());
        let zones_floor = zone_count(&configuration.voters, &zones)
            .min(zone_count(&target_nodes, &zones));
        let mut behind: Vec<u32> = Vec::new();
        let mut finished = false;
        for _ in 0..4 * (initial.len() + target.len()) + 4 {
            match step(&configuration, leader, &target, &behind, &zones) {
                MoveStep::Change(change) => {
                    if let ConfigChange::Promote(node) = change {
                        prop_assert!(!behind.contains(&node.0), "promoted before it caught up");
                    }
                    if let ConfigChange::Remove(node) = change {
                        prop_assert_ne!(node.0, leader, "the leader was removed");
                    }
                    configuration = configuration.apply(change).expect("a valid change");
                    if let ConfigChange::AddLearner(node) = change {
                        behind.push(node.0);
                    }
                    if configuration.is_joint() {
                        configuration = configuration.apply(ConfigChange::LeaveJoint).unwrap();
                    }
                }
                MoveStep::TransferLeadership(next) => {
                    prop_assert!(configuration.voters.contains(&next));
                    prop_assert!(!behind.contains(&next.0));
                    leader = next.0;
                }
                MoveStep::Wait => behind.clear(),
                MoveStep::Done => {
                    finished = true;
                    break;
                }
            }
            prop_assert!(configuration.voters.contains(&NodeId(leader)));
            prop_assert!(configuration.voters.len() >= voters_floor);
            prop_assert!(zone_count(&configuration.voters, &zones) >= zones_floor);
        }
        prop_assert!(finished, "no end: {configuration:?}");
        prop_assert_eq!(&configuration.voters, &target_nodes);
        prop_assert!(configuration.learners.is_empty());
        prop_assert_eq!(leader, target[0]);
    }
}

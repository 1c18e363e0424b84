//! Membership: learners join from a chunked snapshot and are promoted, one change at a time, a
//! removed leader steps down.

use super::*;

#[test]
fn a_new_node_joins_as_learner_from_a_chunked_snapshot_and_becomes_a_voter() {
    let mut cluster = TestCluster::new(
        3,
        RaftConfig {
            snapshot_chunk_bytes: 16,
            ..config()
        },
        17,
    );
    let leader = cluster.elect();
    for index in 0..20 {
        cluster
            .group(leader)
            .propose(command(&format!("command-{index}")))
            .unwrap();
    }
    cluster.settle();
    cluster.snapshot_and_compact(leader);
    cluster.add_joining_node(node(4), 17);
    cluster
        .group(leader)
        .propose_config_change(ConfigChange::AddLearner(node(4)))
        .unwrap();
    cluster.tick_all(10);
    assert_eq!(cluster.commands(node(4)).len(), 20, "the learner caught up");
    assert!(cluster.groups[&node(4)]
        .configuration()
        .learners
        .contains(&node(4)));
    cluster
        .group(leader)
        .propose_config_change(ConfigChange::Promote(node(4)))
        .unwrap();
    cluster.tick_all(10);
    let configuration = cluster.groups[&leader].configuration().clone();
    assert!(
        !configuration.is_joint(),
        "the leader left the joint configuration"
    );
    assert_eq!(configuration.voters, (1..=4).map(node).collect());
    // Four voters: losing one still commits.
    let other = cluster
        .groups
        .keys()
        .copied()
        .find(|id| *id != leader && *id != node(4))
        .unwrap();
    cluster.crash(other);
    cluster.group(leader).propose(command("with four")).unwrap();
    cluster.tick_all(3);
    assert_eq!(cluster.commands(node(4)).len(), 21);
}

#[test]
fn one_configuration_change_at_a_time() {
    let mut cluster = TestCluster::new(3, config(), 18);
    let leader = cluster.elect();
    cluster.tick_all(2);
    cluster
        .group(leader)
        .propose_config_change(ConfigChange::AddLearner(node(4)))
        .unwrap();
    assert_eq!(
        cluster
            .group(leader)
            .propose_config_change(ConfigChange::AddLearner(node(5))),
        Err(ProposeError::ConfigChangePending)
    );
    assert_eq!(
        cluster
            .group(leader)
            .propose_config_change(ConfigChange::Promote(node(9))),
        Err(ProposeError::ConfigChangePending)
    );
}

#[test]
fn a_removed_leader_steps_down_and_the_rest_elect_a_new_one() {
    let mut cluster = TestCluster::new(3, config(), 19);
    let leader = cluster.elect();
    cluster.tick_all(2);
    cluster
        .group(leader)
        .propose_config_change(ConfigChange::Remove(leader))
        .unwrap();
    cluster.tick_all(5);
    assert_ne!(cluster.groups[&leader].role(), Role::Leader);
    assert!(!cluster.groups[&leader].configuration().is_member(leader));
    cluster.crash(leader);
    let new_leader = cluster.elect();
    assert_ne!(new_leader, leader);
    assert_eq!(cluster.groups[&new_leader].configuration().voters.len(), 2);
    cluster
        .group(new_leader)
        .propose(command("two voters"))
        .unwrap();
    cluster.tick_all(2);
    assert_eq!(cluster.commands(new_leader).len(), 1);
}

/// Three voters that go quiet when idle (after 5 ticks), a leader elected, and node 4 being
/// added as a learner.
fn quiet_group_adding_a_learner(seed: u64) -> (TestCluster, NodeId, RaftConfig) {
    let quiet_config = RaftConfig {
        quiesce_after_ticks: 5,
        ..config()
    };
    let mut cluster = TestCluster::new(3, quiet_config.clone(), seed);
    let leader = cluster.elect();
    cluster.add_joining_node(node(4), seed);
    cluster
        .group(leader)
        .propose_config_change(ConfigChange::AddLearner(node(4)))
        .unwrap();
    (cluster, leader, quiet_config)
}

/// A learner restarted while its group is quiet knows no leader, and cannot campaign to
/// find one: it asks the voters to wake, and hears the leader. Before `Wake`, it stayed
/// without a leader until the next write, and a join sent through it could not be
/// forwarded (membership-nemesis seed 432).
#[test]
fn a_learner_restarted_in_a_quiet_group_wakes_it_and_learns_the_leader() {
    let (mut cluster, leader, quiet_config) = quiet_group_adding_a_learner(23);
    cluster.group(leader).propose(command("one")).unwrap();
    cluster.tick_all(30);
    assert!(
        cluster.groups.values().all(RaftGroup::is_quiet),
        "the idle group went quiet"
    );
    assert_eq!(cluster.commands(node(4)).len(), 1, "the learner caught up");
    cluster.crash(node(4));
    cluster.restart(node(4), 23);
    assert_eq!(cluster.groups[&node(4)].leader(), None);
    let timeout_ticks = quiet_config.election_timeout_ticks;
    cluster.tick_all(3 * timeout_ticks);
    assert_eq!(
        cluster.groups[&node(4)].leader(),
        Some(leader),
        "the restarted learner heard the leader"
    );
    assert_eq!(cluster.groups[&leader].role(), Role::Leader, "no election");
    cluster.tick_all(30);
    assert!(
        cluster.groups.values().all(RaftGroup::is_quiet),
        "the group went quiet again"
    );
}

/// A learner removed while cut off never hears of it, and keeps asking the voters to wake.
/// Only the leader wakes for a member of its group, so the stale learner neither keeps the
/// group from going quiet nor, by waking followers of a quiet leader, causes elections.
#[test]
fn a_stale_learner_asking_to_wake_neither_keeps_the_group_awake_nor_causes_elections() {
    let (mut cluster, leader, quiet_config) = quiet_group_adding_a_learner(29);
    cluster.tick_all(10);
    cluster.isolate(node(4));
    cluster
        .group(leader)
        .propose_config_change(ConfigChange::Remove(node(4)))
        .unwrap();
    cluster.tick_all(30);
    assert!(cluster.groups[&node(4)]
        .configuration()
        .learners
        .contains(&node(4)));
    cluster.crash(node(4));
    cluster.restart(node(4), 29);
    cluster.heal();
    let term = cluster.groups[&leader].term();
    cluster.tick_all(20 * quiet_config.election_timeout_ticks);
    assert_eq!(cluster.leader(), Some(leader));
    assert_eq!(cluster.groups[&leader].term(), term, "no election");
    for voter in [1, 2, 3].map(node) {
        assert!(cluster.groups[&voter].is_quiet(), "{voter} is quiet");
    }
}

/// A learner that cannot reach the leader still wakes it: the followers pass its `Wake` on,
/// and the leader's heartbeats, which do reach the learner, tell it who leads.
#[test]
fn followers_pass_a_learners_wake_on_to_their_quiet_leader() {
    let (mut cluster, leader, quiet_config) = quiet_group_adding_a_learner(31);
    cluster.tick_all(30);
    assert!(cluster.groups.values().all(RaftGroup::is_quiet));
    cluster.crash(node(4));
    cluster.restart(node(4), 31);
    // Only the learner's own messages to the leader are lost.
    cluster.cut.insert((node(4), leader));
    cluster.tick_all(3 * quiet_config.election_timeout_ticks);
    assert_eq!(cluster.groups[&node(4)].leader(), Some(leader));
    assert_eq!(cluster.groups[&leader].role(), Role::Leader, "no election");
}

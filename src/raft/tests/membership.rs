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

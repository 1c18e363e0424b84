//! Reads: ReadIndex releases a read only after a quorum confirmed the leadership; a cut-off
//! leader serves none.

use super::*;

#[test]
fn a_read_index_is_released_after_a_quorum_confirms_the_leadership() {
    let mut cluster = TestCluster::new(3, config(), 13);
    let leader = cluster.elect();
    cluster.tick_all(2);
    cluster.group(leader).propose(command("x")).unwrap();
    cluster.settle();
    cluster.group(leader).read_index(77).unwrap();
    cluster.process(leader);
    assert!(cluster
        .read_states
        .get(&leader)
        .is_none_or(|states| states.is_empty()));
    cluster.settle();
    let states = &cluster.read_states[&leader];
    assert_eq!(
        states,
        &vec![ReadState {
            context: 77,
            index: cluster.committed(leader)
        }]
    );
}

#[test]
fn a_cut_off_leader_serves_no_read() {
    // A deposed leader that does not know it must not answer: its read needs a quorum.
    let mut cluster = TestCluster::new(3, config(), 14);
    let leader = cluster.elect();
    cluster.tick_all(2);
    cluster.isolate(leader);
    cluster.group(leader).read_index(5).unwrap();
    cluster.settle();
    cluster.tick_all(3);
    assert!(cluster
        .read_states
        .get(&leader)
        .is_none_or(|states| states.is_empty()));
}

#[test]
fn a_follower_read_goes_through_the_leader() {
    let mut cluster = TestCluster::new(3, config(), 15);
    let leader = cluster.elect();
    cluster.tick_all(2);
    let follower = cluster
        .groups
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.group(follower).read_index(9).unwrap();
    cluster.settle();
    let states = &cluster.read_states[&follower];
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].context, 9);
    assert_eq!(states[0].index, cluster.committed(leader));
}

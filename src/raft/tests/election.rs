//! Elections: one leader per term, one vote per term, votes only for logs at least as up to
//! date, pre-vote and check-quorum.

use super::*;

#[test]
fn a_single_voter_elects_itself_and_commits_alone() {
    let mut cluster = TestCluster::new(1, config(), 1);
    let leader = cluster.elect();
    assert_eq!(leader, node(1));
    cluster.group(leader).propose(command("a")).unwrap();
    cluster.settle();
    assert_eq!(cluster.commands(leader), &[command("a")]);
}

#[test]
fn election_safety_one_leader_and_every_node_follows_it() {
    // §5.2: at most one leader per term; the others learn who it is.
    let mut cluster = TestCluster::new(5, config(), 2);
    let leader = cluster.elect();
    cluster.tick_all(3);
    let term = cluster.groups[&leader].term();
    for (id, group) in &cluster.groups {
        assert_eq!(group.term(), term, "{id}");
        assert_eq!(group.leader(), Some(leader), "{id}");
    }
}

#[test]
fn pre_vote_keeps_a_returning_partitioned_node_from_raising_terms() {
    // Thesis §9.6: a node cut off keeps pre-voting without raising its term, so when it
    // returns the leader is not deposed.
    let mut cluster = TestCluster::new(3, config(), 3);
    let leader = cluster.elect();
    let term = cluster.groups[&leader].term();
    let follower = cluster
        .groups
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.isolate(follower);
    cluster.tick_all(100);
    assert_eq!(
        cluster.groups[&follower].term(),
        term,
        "pre-votes do not raise the term"
    );
    cluster.heal();
    cluster.tick_all(10);
    assert_eq!(cluster.leader(), Some(leader));
    assert_eq!(cluster.groups[&leader].term(), term);
}

#[test]
fn without_pre_vote_a_returning_node_raises_the_term() {
    // The contrast to the test above: the disruption pre-vote prevents.
    let mut cluster = TestCluster::new(
        3,
        RaftConfig {
            pre_vote: false,
            check_quorum: false,
            ..config()
        },
        3,
    );
    let leader = cluster.elect();
    let term = cluster.groups[&leader].term();
    let follower = cluster
        .groups
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.isolate(follower);
    cluster.tick_all(100);
    assert!(cluster.groups[&follower].term() > term);
}

#[test]
fn a_vote_is_granted_once_per_term() {
    // §5.2: each server votes for at most one candidate in a term.
    let mut group = RaftGroup::bootstrap(
        node(1),
        [node(1), node(2), node(3)],
        config(),
        SeededRng::from_seed(4),
    );
    let vote = |from: u32| Message {
        from: node(from),
        to: node(1),
        term: 5,
        body: MessageBody::Vote {
            last_log_index: 1,
            last_log_term: 0,
            transfer: false,
        },
    };
    group.step(vote(2));
    group.step(vote(3));
    let ready = group.ready();
    assert_eq!(ready.hard_state.unwrap().vote, Some(node(2)));
    let answers: Vec<(NodeId, MessageBody)> = ready
        .messages_after_persist
        .iter()
        .map(|message| (message.to, message.body.clone()))
        .collect();
    assert_eq!(
        answers,
        vec![
            (node(2), MessageBody::VoteResponse { granted: true }),
            (node(3), MessageBody::VoteResponse { granted: false }),
        ]
    );
    assert!(
        ready.messages.is_empty(),
        "a vote is only sent once it is durable"
    );
}

fn vote_answer(group: &mut RaftGroup, from: u32, last_log_index: u64, last_log_term: u64) -> bool {
    group.step(Message {
        from: node(from),
        to: group.id(),
        term: group.term() + 1,
        body: MessageBody::Vote {
            last_log_index,
            last_log_term,
            transfer: false,
        },
    });
    let ready = group.ready();
    group.advance();
    ready
        .messages_after_persist
        .iter()
        .any(|message| message.body == MessageBody::VoteResponse { granted: true })
}

#[test]
fn a_vote_needs_a_log_at_least_as_up_to_date() {
    // §5.4.1: later last term wins; equal last terms, the longer log wins.
    let voter = || group_with_log(1, &[1, 2, 2], 2, config());
    // Our log ends at index 4, term 2.
    assert!(
        !vote_answer(&mut voter(), 2, 3, 2),
        "shorter with the same last term"
    );
    assert!(
        !vote_answer(&mut voter(), 2, 9, 1),
        "longer but an older last term"
    );
    assert!(vote_answer(&mut voter(), 2, 4, 2), "as up to date");
    assert!(vote_answer(&mut voter(), 2, 2, 3), "a newer last term");
}

#[test]
fn the_planted_vote_bug_grants_a_stale_log() {
    let planted = RaftConfig {
        planted_bug: Some(RaftPlantedBug::VoteWithoutLogCheck),
        ..config()
    };
    assert!(vote_answer(
        &mut group_with_log(1, &[1, 2, 2], 2, planted),
        2,
        2,
        1
    ));
}

#[test]
fn a_stale_candidate_cannot_win_and_the_up_to_date_node_does() {
    // §5.4.1 end to end: the node that missed committed entries campaigns first and loses.
    let mut cluster = TestCluster::new(3, config(), 5);
    let leader = cluster.elect();
    let stale = cluster
        .groups
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.isolate(stale);
    for index in 0..5 {
        cluster
            .group(leader)
            .propose(command(&format!("c{index}")))
            .unwrap();
    }
    cluster.settle();
    cluster.heal();
    cluster.crash(leader);
    // Only the stale node's clock runs: it times out first.
    cluster.tick_one(stale, 40);
    assert_ne!(cluster.groups[&stale].role(), Role::Leader);
    let new_leader = cluster.elect();
    assert_ne!(new_leader, stale);
    assert_eq!(cluster.commands(new_leader).len(), 5);
}

#[test]
fn check_quorum_makes_a_cut_off_leader_step_down() {
    let mut cluster = TestCluster::new(3, config(), 6);
    let leader = cluster.elect();
    cluster.isolate(leader);
    cluster.tick_all(cluster.config.election_timeout_ticks * 2 + 1);
    assert_ne!(cluster.groups[&leader].role(), Role::Leader);
}

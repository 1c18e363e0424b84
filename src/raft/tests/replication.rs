//! Replication and commitment: a majority commits, only current-term entries commit by
//! counting (Figure 8), divergent logs are repaired, proposals are forwarded and batched.

use super::*;

#[test]
fn entries_commit_on_a_majority_and_apply_everywhere_in_order() {
    let mut cluster = TestCluster::new(5, config(), 7);
    let leader = cluster.elect();
    let minority: Vec<NodeId> = cluster
        .groups
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .take(2)
        .collect();
    for id in &minority {
        cluster.crash(*id);
    }
    for index in 0..10 {
        cluster
            .group(leader)
            .propose(command(&format!("c{index}")))
            .unwrap();
    }
    cluster.settle();
    assert_eq!(cluster.commands(leader).len(), 10, "three of five commit");
    for id in &minority {
        cluster.restart(*id, 7);
    }
    cluster.tick_all(5);
    for id in cluster.groups.keys() {
        assert_eq!(cluster.commands(*id).len(), 10, "{id} caught up");
    }
}

#[test]
fn a_leader_without_a_majority_commits_nothing() {
    let mut cluster = TestCluster::new(3, config(), 8);
    let leader = cluster.elect();
    let before = cluster.committed(leader);
    let others: Vec<NodeId> = cluster
        .groups
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    for id in others {
        cluster.crash(id);
    }
    cluster.group(leader).propose(command("lonely")).unwrap();
    cluster.settle();
    assert_eq!(cluster.committed(leader), before);
}

/// Raft Figure 8: a leader of term 4 holding an entry of term 2 on a majority must not commit
/// it by counting; it commits only once an entry of term 4 reaches a majority.
fn figure_8(config: RaftConfig) -> (u64, u64) {
    // Log: index 2 (term 1), index 3 (term 2). Term 3 was someone else's.
    let mut leader = group_with_log(1, &[1, 2], 3, config);
    leader.tick();
    for _ in 0..40 {
        if leader.role() == Role::PreCandidate {
            break;
        }
        leader.tick();
    }
    for from in [2, 3] {
        leader.step(Message {
            from: node(from),
            to: node(1),
            term: 4,
            body: MessageBody::PreVoteResponse { granted: true },
        });
    }
    for from in [2, 3] {
        leader.step(Message {
            from: node(from),
            to: node(1),
            term: 4,
            body: MessageBody::VoteResponse { granted: true },
        });
    }
    assert_eq!(leader.role(), Role::Leader);
    assert_eq!(leader.term(), 4);
    let _ = leader.ready();
    leader.advance();
    // S2 and S3 hold index 3 (term 2), not yet the leader's no-op at 4 (term 4).
    for from in [2, 3] {
        leader.step(Message {
            from: node(from),
            to: node(1),
            term: 4,
            body: MessageBody::AppendResponse {
                outcome: AppendOutcome::Accepted { match_index: 3 },
            },
        });
    }
    let committed_by_counting = leader.log().committed();
    for from in [2, 3] {
        leader.step(Message {
            from: node(from),
            to: node(1),
            term: 4,
            body: MessageBody::AppendResponse {
                outcome: AppendOutcome::Accepted { match_index: 4 },
            },
        });
    }
    (committed_by_counting, leader.log().committed())
}

#[test]
fn figure_8_only_current_term_entries_commit_by_counting() {
    assert_eq!(figure_8(config()), (BOOTSTRAP_INDEX, 4));
}

#[test]
fn figure_8_the_planted_bug_commits_an_old_term_entry_by_counting() {
    let planted = RaftConfig {
        planted_bug: Some(RaftPlantedBug::CommitPreviousTermByCounting),
        ..config()
    };
    // Without its empty entry the leader's log ends at 3, the old-term entry it commits.
    assert_eq!(figure_8(planted).0, 3);
}

#[test]
fn fast_back_off_repairs_a_long_divergent_log_in_few_round_trips() {
    // §5.3 with the conflict-term hint: a follower with many entries of a stale term is
    // repaired with one rejection per term, not one per entry.
    let mut follower = group_with_log(2, &[1, 1, 2, 2, 2, 2, 2, 2, 2, 2], 2, config());
    follower.step(Message {
        from: node(1),
        to: node(2),
        term: 3,
        body: MessageBody::Append {
            prev_log_index: 11,
            prev_log_term: 3,
            entries: vec![],
            leader_commit: 1,
        },
    });
    let ready = follower.ready();
    let reply = &ready.messages_after_persist[0];
    // Everything after index 3 (the last of term 1) conflicts with a term-3 entry at 11.
    assert_eq!(
        reply.body,
        MessageBody::AppendResponse {
            outcome: AppendOutcome::Rejected {
                rejected_index: 11,
                hint_index: 11,
                hint_term: 2,
            }
        }
    );
}

#[test]
fn a_divergent_follower_is_repaired_end_to_end() {
    // Log matching (§5.3): after the repair every log equals the leader's.
    let mut cluster = TestCluster::new(3, config(), 9);
    let old_leader = cluster.elect();
    cluster.isolate(old_leader);
    for index in 0..20 {
        cluster
            .group(old_leader)
            .propose(command(&format!("lost{index}")))
            .unwrap();
    }
    cluster.settle();
    cluster.tick_all(60);
    let new_leader = cluster.leader().unwrap();
    assert_ne!(new_leader, old_leader);
    for index in 0..3 {
        cluster
            .group(new_leader)
            .propose(command(&format!("kept{index}")))
            .unwrap();
    }
    cluster.settle();
    cluster.heal();
    cluster.tick_all(20);
    let expected = cluster.commands(new_leader).to_vec();
    assert_eq!(expected.len(), 3);
    assert_eq!(cluster.commands(old_leader), expected.as_slice());
    let leader_log = cluster.groups[&new_leader].log().last_index();
    assert_eq!(cluster.groups[&old_leader].log().last_index(), leader_log);
}

#[test]
fn a_follower_forwards_proposals_to_the_leader() {
    let mut cluster = TestCluster::new(3, config(), 10);
    let leader = cluster.elect();
    cluster.tick_all(2);
    let follower = cluster
        .groups
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    let proposal = cluster
        .group(follower)
        .propose(command("via follower"))
        .unwrap();
    assert_eq!(proposal, Proposal::Forwarded { leader });
    cluster.settle();
    assert_eq!(cluster.commands(leader), &[command("via follower")]);
}

#[test]
fn proposals_of_one_round_share_one_append_per_peer() {
    let mut cluster = TestCluster::new(3, config(), 11);
    let leader = cluster.elect();
    cluster.tick_all(2);
    for index in 0..10 {
        cluster
            .group(leader)
            .propose(command(&format!("c{index}")))
            .unwrap();
    }
    let ready = cluster.group(leader).ready();
    let appends: Vec<usize> = ready
        .messages
        .iter()
        .filter_map(|message| match &message.body {
            MessageBody::Append { entries, .. } => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(
        appends,
        vec![10, 10],
        "one append of ten entries to each follower"
    );
    assert_eq!(ready.entries.len(), 10);
    assert!(ready.messages_after_persist.is_empty());
}

//! Pinned Raft behaviours, each test naming the rule it checks, over a small in-memory
//! cluster: a network that can drop, cut and reorder, durable storage that survives a
//! restart, and a state machine that records what it applied.

use super::*;
use crate::ids::NodeId;
use crate::random::{Rng, SeededRng};
use std::collections::{BTreeMap, BTreeSet};

fn node(id: u32) -> NodeId {
    NodeId(id)
}

fn command(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// What a node has made durable.
#[derive(Clone, Debug, Default)]
struct Storage {
    hard_state: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
    /// The state machine: every command applied, in order, and the index applied.
    commands: Vec<Vec<u8>>,
    applied: u64,
}

impl Storage {
    fn bootstrap(voters: &[NodeId]) -> Self {
        Self {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: BOOTSTRAP_INDEX,
                    term: 0,
                    configuration: Configuration::with_voters(voters.iter().copied()),
                },
                data: postcard::to_stdvec(&Vec::<Vec<u8>>::new()).unwrap(),
            },
            applied: BOOTSTRAP_INDEX,
            ..Self::default()
        }
    }
}

struct TestCluster {
    groups: BTreeMap<NodeId, RaftGroup>,
    storage: BTreeMap<NodeId, Storage>,
    config: RaftConfig,
    in_flight: Vec<Message>,
    cut: BTreeSet<(NodeId, NodeId)>,
    crashed: BTreeSet<NodeId>,
    rng: SeededRng,
    loss_ratio: f64,
    /// Every index applied anywhere, with the entry's term: state machine safety.
    applied_everywhere: BTreeMap<u64, (u64, EntryKind)>,
    /// The leader of each term seen: election safety.
    leaders_by_term: BTreeMap<u64, NodeId>,
    read_states: BTreeMap<NodeId, Vec<ReadState>>,
    restarts: u64,
}

impl TestCluster {
    fn new(size: u32, config: RaftConfig, seed: u64) -> Self {
        let voters: Vec<NodeId> = (1..=size).map(node).collect();
        let mut cluster = Self {
            groups: BTreeMap::new(),
            storage: BTreeMap::new(),
            config: config.clone(),
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            crashed: BTreeSet::new(),
            rng: SeededRng::split(seed, 1000),
            loss_ratio: 0.0,
            applied_everywhere: BTreeMap::new(),
            leaders_by_term: BTreeMap::new(),
            read_states: BTreeMap::new(),
            restarts: 0,
        };
        for id in &voters {
            let group = RaftGroup::bootstrap(
                *id,
                voters.iter().copied(),
                config.clone(),
                SeededRng::split(seed, u64::from(id.0)),
            );
            cluster.groups.insert(*id, group);
            cluster.storage.insert(*id, Storage::bootstrap(&voters));
        }
        cluster
    }

    fn add_joining_node(&mut self, id: NodeId, seed: u64) {
        let group = RaftGroup::joining(
            id,
            self.config.clone(),
            SeededRng::split(seed, u64::from(id.0)),
        );
        self.groups.insert(id, group);
        self.storage.insert(id, Storage::default());
    }

    fn group(&mut self, id: NodeId) -> &mut RaftGroup {
        self.groups.get_mut(&id).expect("known node")
    }

    /// Runs the Ready loop of `id` until it has nothing more to do.
    fn process(&mut self, id: NodeId) {
        if self.crashed.contains(&id) {
            return;
        }
        loop {
            let group = self.groups.get_mut(&id).unwrap();
            if !group.has_ready() {
                break;
            }
            let ready = group.ready();
            if let Some(role_state) = ready.role_state {
                if role_state.role == Role::Leader {
                    let previous = self.leaders_by_term.insert(role_state.term, id);
                    assert!(
                        previous.is_none() || previous == Some(id),
                        "election safety: {previous:?} and {id} both led term {}",
                        role_state.term
                    );
                }
            }
            self.in_flight.extend(ready.messages);
            let storage = self.storage.get_mut(&id).unwrap();
            for request in &ready.snapshot_requests {
                if request.index != storage.snapshot.meta.index {
                    continue;
                }
                let data = &storage.snapshot.data;
                let start = (request.offset as usize).min(data.len());
                let end = (start + request.bytes_max).min(data.len());
                let chunk = data[start..end].to_vec();
                let done = end == data.len();
                let (to, index, offset) = (request.to, request.index, request.offset);
                self.groups
                    .get_mut(&id)
                    .unwrap()
                    .on_snapshot_chunk(to, index, offset, chunk, done);
            }
            let storage = self.storage.get_mut(&id).unwrap();
            if let Some(snapshot) = &ready.snapshot {
                storage.commands = postcard::from_bytes(&snapshot.data).unwrap();
                storage.applied = snapshot.meta.index;
                storage.entries.clear();
                storage.snapshot = snapshot.clone();
            }
            if let Some(first) = ready.entries.first() {
                storage.entries.retain(|entry| entry.index < first.index);
                storage.entries.extend(ready.entries.iter().cloned());
            }
            if let Some(hard_state) = ready.hard_state {
                storage.hard_state = hard_state;
            }
            self.in_flight.extend(ready.messages_after_persist);
            for entry in ready.committed_entries {
                assert_eq!(entry.index, storage.applied + 1, "{id} applies in order");
                storage.applied = entry.index;
                if let EntryKind::Command(bytes) = &entry.kind {
                    storage.commands.push(bytes.clone());
                }
                match self.applied_everywhere.get(&entry.index) {
                    Some((term, kind)) => assert_eq!(
                        (term, kind),
                        (&entry.term, &entry.kind),
                        "state machine safety: {id} applied another entry at {}",
                        entry.index
                    ),
                    None => {
                        self.applied_everywhere
                            .insert(entry.index, (entry.term, entry.kind.clone()));
                    }
                }
            }
            self.read_states
                .entry(id)
                .or_default()
                .extend(ready.read_states);
            self.groups.get_mut(&id).unwrap().advance();
        }
    }

    fn process_all(&mut self) {
        let ids: Vec<NodeId> = self.groups.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
    }

    /// Delivers messages (in a seeded order when `shuffle`) until none are left or
    /// `limit` deliveries.
    fn deliver(&mut self, shuffle: bool, limit: usize) {
        self.process_all();
        let mut delivered = 0;
        while !self.in_flight.is_empty() && delivered < limit {
            let position = if shuffle {
                self.rng.below(self.in_flight.len() as u64) as usize
            } else {
                0
            };
            let message = self.in_flight.remove(position);
            delivered += 1;
            if self.cut.contains(&(message.from, message.to))
                || self.crashed.contains(&message.to)
                || !self.groups.contains_key(&message.to)
                || (self.loss_ratio > 0.0 && self.rng.chance(self.loss_ratio))
            {
                continue;
            }
            let to = message.to;
            self.group(to).step(message);
            self.process(to);
        }
    }

    fn settle(&mut self) {
        self.deliver(false, 100_000);
    }

    fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.groups.keys().copied().collect();
            for id in ids {
                if !self.crashed.contains(&id) {
                    self.group(id).tick();
                    self.process(id);
                }
            }
            self.settle();
        }
    }

    fn tick_one(&mut self, id: NodeId, ticks: u32) {
        for _ in 0..ticks {
            self.group(id).tick();
            self.process(id);
            self.settle();
        }
    }

    /// Ticks everyone until some node leads, and returns it.
    fn elect(&mut self) -> NodeId {
        for _ in 0..200 {
            if let Some(leader) = self.leader() {
                return leader;
            }
            self.tick_all(1);
        }
        panic!("no leader within 200 ticks");
    }

    fn leader(&self) -> Option<NodeId> {
        // The leader of the highest term that some live node leads.
        self.groups
            .iter()
            .filter(|(id, group)| !self.crashed.contains(id) && group.role() == Role::Leader)
            .max_by_key(|(_, group)| group.term())
            .map(|(id, _)| *id)
    }

    fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self
            .groups
            .keys()
            .copied()
            .filter(|other| *other != id)
            .collect();
        for other in others {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn crash(&mut self, id: NodeId) {
        self.crashed.insert(id);
        self.in_flight
            .retain(|message| message.from != id && message.to != id);
    }

    /// Restarts a crashed node from its durable storage.
    fn restart(&mut self, id: NodeId, seed: u64) {
        self.crashed.remove(&id);
        self.restarts += 1;
        let storage = self.storage.get(&id).unwrap().clone();
        // The state machine is rebuilt from its last snapshot and the committed log tail.
        let mut storage = storage;
        storage.commands = postcard::from_bytes(&storage.snapshot.data).unwrap_or_default();
        storage.applied = storage.snapshot.meta.index;
        let state = RecoveredState {
            hard_state: storage.hard_state,
            snapshot: storage.snapshot.meta.clone(),
            entries: storage.entries.clone(),
            applied: storage.applied,
        };
        self.storage.insert(id, storage);
        let group = RaftGroup::recover(
            id,
            self.config.clone(),
            state,
            SeededRng::split(seed, 100 + self.restarts),
        );
        self.groups.insert(id, group);
    }

    fn commands(&self, id: NodeId) -> &[Vec<u8>] {
        &self.storage[&id].commands
    }

    fn committed(&self, id: NodeId) -> u64 {
        self.groups[&id].log().committed()
    }

    /// Takes a snapshot of `id`'s state machine and compacts its log to it.
    fn snapshot_and_compact(&mut self, id: NodeId) {
        let storage = self.storage.get_mut(&id).unwrap();
        let index = storage.applied;
        let group = self.groups.get_mut(&id).unwrap();
        let term = group.log().term(index).unwrap();
        group.compact(index);
        storage.snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                configuration: group.configuration().clone(),
            },
            data: postcard::to_stdvec(&storage.commands).unwrap(),
        };
        storage.entries.retain(|entry| entry.index > index);
    }
}

fn config() -> RaftConfig {
    RaftConfig::default()
}

// ---- election ----

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

fn group_with_log(id: u32, terms: &[u64], term: u64, config: RaftConfig) -> RaftGroup {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(offset, term)| Entry {
            term: *term,
            index: BOOTSTRAP_INDEX + 1 + offset as u64,
            kind: EntryKind::Command(vec![offset as u8]),
        })
        .collect();
    RaftGroup::recover(
        node(id),
        config,
        RecoveredState {
            hard_state: HardState {
                term,
                vote: None,
                commit: BOOTSTRAP_INDEX,
            },
            snapshot: SnapshotMeta {
                index: BOOTSTRAP_INDEX,
                term: 0,
                configuration: Configuration::with_voters((1..=5).map(node)),
            },
            entries,
            applied: BOOTSTRAP_INDEX,
        },
        SeededRng::from_seed(u64::from(id)),
    )
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

// ---- replication and commitment ----

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

// ---- durability ----

#[test]
fn committed_entries_survive_every_node_restarting() {
    let mut cluster = TestCluster::new(3, config(), 12);
    let leader = cluster.elect();
    for index in 0..5 {
        cluster
            .group(leader)
            .propose(command(&format!("c{index}")))
            .unwrap();
    }
    cluster.settle();
    let ids: Vec<NodeId> = cluster.groups.keys().copied().collect();
    for id in &ids {
        cluster.crash(*id);
    }
    for id in &ids {
        cluster.restart(*id, 12);
    }
    let leader = cluster.elect();
    cluster.group(leader).propose(command("after")).unwrap();
    cluster.tick_all(3);
    for id in &ids {
        assert_eq!(cluster.commands(*id).len(), 6, "{id}");
    }
}

// ---- reads ----

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

// ---- leadership transfer ----

#[test]
fn leadership_moves_to_the_chosen_voter() {
    let mut cluster = TestCluster::new(3, config(), 16);
    let leader = cluster.elect();
    cluster.tick_all(2);
    let target = cluster
        .groups
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.group(leader).transfer_leadership(target).unwrap();
    assert_eq!(
        cluster.group(leader).propose(command("refused")),
        Err(ProposeError::TransferInProgress)
    );
    cluster.settle();
    assert_eq!(cluster.leader(), Some(target));
    assert_eq!(cluster.groups[&leader].leader(), Some(target));
}

// ---- membership ----

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

// ---- randomized safety ----

/// Many seeds of random loss, reordering, partitions and crashes with proposals throughout:
/// election safety and state machine safety are asserted on every Ready, and after healing
/// every node converges on the same commands.
#[test]
fn random_faults_keep_safety_and_converge_after_healing() {
    for seed in 0..300 {
        let mut cluster = TestCluster::new(5, config(), seed);
        cluster.loss_ratio = 0.1;
        let ids: Vec<NodeId> = cluster.groups.keys().copied().collect();
        let mut proposed = 0;
        for step in 0..400u64 {
            let draw = cluster.rng.below(100);
            if draw < 3 {
                let id = ids[cluster.rng.below(ids.len() as u64) as usize];
                if cluster.crashed.len() < 2 {
                    cluster.crash(id);
                }
            } else if draw < 8 {
                let crashed: Vec<NodeId> = cluster.crashed.iter().copied().collect();
                if let Some(id) = crashed.first() {
                    cluster.restart(*id, seed);
                }
            } else if draw < 11 {
                let id = ids[cluster.rng.below(ids.len() as u64) as usize];
                cluster.isolate(id);
            } else if draw < 15 {
                cluster.heal();
            }
            if let Some(leader) = cluster.leader() {
                if cluster
                    .group(leader)
                    .propose(command(&format!("s{seed}-{step}")))
                    .is_ok()
                {
                    proposed += 1;
                }
            }
            let ids_now: Vec<NodeId> = cluster.groups.keys().copied().collect();
            for id in ids_now {
                if !cluster.crashed.contains(&id) {
                    cluster.group(id).tick();
                    cluster.process(id);
                }
            }
            cluster.deliver(true, 200);
        }
        // Liveness: heal everything and let it settle.
        cluster.loss_ratio = 0.0;
        cluster.heal();
        let crashed: Vec<NodeId> = cluster.crashed.iter().copied().collect();
        for id in crashed {
            cluster.restart(id, seed);
        }
        // A proposal to a leader that is about to be deposed may be lost (it was never
        // committed), so the client retries, as a real one would.
        let mut leader = cluster.elect();
        for _ in 0..10 {
            leader = cluster.elect();
            let _ = cluster.group(leader).propose(command("final"));
            cluster.tick_all(10);
            if cluster.commands(leader).contains(&command("final")) {
                break;
            }
        }
        cluster.tick_all(10);
        let expected = cluster.commands(leader).to_vec();
        assert!(
            expected.contains(&command("final")),
            "seed {seed}: the final write applied"
        );
        assert!(proposed > 0);
        for id in &ids {
            assert_eq!(
                cluster.commands(*id),
                expected.as_slice(),
                "seed {seed}: {id} converged"
            );
        }
    }
}

/// A snapshot whose image the state machine would not take is refused when its last chunk
/// arrives: nothing is installed, and a later transfer from offset 0 is taken.
#[test]
fn an_invalid_snapshot_image_is_refused_and_asked_for_again() {
    fn only_ok(data: &[u8]) -> Result<(), String> {
        if data == b"ok" {
            Ok(())
        } else {
            Err("not ok".to_string())
        }
    }
    let checked = RaftConfig {
        snapshot_check: Some(only_ok),
        ..config()
    };
    let mut follower = RaftGroup::joining(node(3), checked, SeededRng::from_seed(3));
    let chunk = |data: &[u8]| Message {
        from: node(1),
        to: node(3),
        term: 2,
        body: MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: 7,
                term: 2,
                configuration: Configuration::with_voters([node(1), node(2), node(3)]),
            },
            offset: 0,
            data: data.to_vec(),
            done: true,
        },
    };
    assert!(!follower.step(chunk(b"garbage")));
    let ready = follower.ready();
    assert!(ready.snapshot.is_none(), "nothing installed");
    follower.advance();
    assert_eq!(follower.log().snapshot_index(), 0);
    assert!(follower.step(chunk(b"ok")));
    let ready = follower.ready();
    assert_eq!(ready.snapshot.map(|snapshot| snapshot.meta.index), Some(7));
}

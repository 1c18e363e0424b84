//! Pinned Raft behaviours, each test naming the rule it checks, in one file per rule
//! (elections, replication, durability, reads, leadership transfer, membership, snapshots,
//! randomized safety), over the small in-memory cluster this file defines: a network that can
//! drop, cut and reorder, durable storage that survives a restart, and a state machine that
//! records what it applied.

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

/// A follower of `term` whose log holds one entry per term in `terms`.
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

mod durability;
mod election;
mod leadership_transfer;
mod membership;
mod randomized;
mod reads;
mod replication;
mod snapshots;

//! Hosts of several partitions on a small in-memory cluster: group commit, batching per
//! peer, linearizable reads, and recovery from the durable image after a crash.

use crate::ids::NodeId;
use crate::partition::command::{BatchOperation, KvOperation};
use crate::partition::host::{HostConfig, PartitionStart, RequestError};
use crate::partition::kv_store::{
    KvStateMachine, RangeQuery, ReadAnswer, ReadRequest, WriteOutcome,
};
use crate::partition::state_machine::StateMachineError as KvError;
use crate::partition::PartitionId;
use crate::raft::{ConfigChange, Role};
use crate::storage::test_disk::TestDisk;
use std::collections::BTreeMap;
use std::sync::Arc;

type PartitionHost = crate::partition::host::PartitionHost<KvStateMachine>;
type HostOutput = crate::partition::host::HostOutput<WriteOutcome, ReadAnswer>;

struct Cluster {
    hosts: BTreeMap<NodeId, PartitionHost>,
    disks: BTreeMap<NodeId, Arc<TestDisk>>,
    down: Vec<NodeId>,
    outputs: BTreeMap<NodeId, Vec<HostOutput>>,
    config: HostConfig,
}

impl Cluster {
    fn new(nodes: u32, partitions: u64, config: HostConfig) -> Self {
        let ids: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
        let mut cluster = Cluster {
            hosts: BTreeMap::new(),
            disks: BTreeMap::new(),
            down: Vec::new(),
            outputs: BTreeMap::new(),
            config,
        };
        for id in &ids {
            let disk = TestDisk::new();
            let mut host =
                PartitionHost::open(*id, disk.clone(), cluster.config.clone(), 7, KvStateMachine)
                    .unwrap();
            for partition in 0..partitions {
                host.create_partition(
                    PartitionId(partition),
                    PartitionStart::Bootstrap {
                        voters: ids.clone(),
                    },
                )
                .unwrap();
            }
            cluster.hosts.insert(*id, host);
            cluster.disks.insert(*id, disk);
        }
        cluster
    }

    /// Processes every host and delivers envelopes until quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut sent = Vec::new();
            for (id, host) in self.hosts.iter_mut() {
                if self.down.contains(id) {
                    continue;
                }
                host.process();
                for (to, envelope) in host.take_envelopes() {
                    sent.push((*id, to, envelope));
                }
                self.outputs
                    .entry(*id)
                    .or_default()
                    .extend(host.take_outputs());
            }
            if sent.is_empty() {
                return;
            }
            for (from, to, envelope) in sent {
                if self.down.contains(&to) {
                    continue;
                }
                if let Some(host) = self.hosts.get_mut(&to) {
                    host.receive(from, envelope);
                }
            }
        }
        panic!("the cluster did not settle");
    }

    fn tick(&mut self, ticks: u32) {
        for _ in 0..ticks {
            for (id, host) in self.hosts.iter_mut() {
                if !self.down.contains(id) {
                    host.tick();
                }
            }
            self.settle();
        }
    }

    fn leader(&self, partition: PartitionId) -> Option<NodeId> {
        self.hosts
            .iter()
            .filter(|(id, _)| !self.down.contains(id))
            .filter(|(_, host)| {
                host.status(partition)
                    .is_some_and(|status| status.role == Role::Leader)
            })
            .max_by_key(|(_, host)| host.status(partition).unwrap().term)
            .map(|(id, _)| *id)
    }

    fn elect_all(&mut self, partitions: u64) {
        for _ in 0..300 {
            if (0..partitions).all(|partition| self.leader(PartitionId(partition)).is_some()) {
                // One more heartbeat round so every follower knows its leader.
                self.tick(3);
                return;
            }
            self.tick(1);
        }
        panic!("not every partition elected a leader");
    }

    fn answer(&mut self, node: NodeId, request_id: u64) -> Option<HostOutput> {
        let outputs = self.outputs.entry(node).or_default();
        let position = outputs.iter().position(|output| match output {
            HostOutput::WriteAnswered { request_id: id, .. }
            | HostOutput::ReadAnswered { request_id: id, .. } => *id == request_id,
            HostOutput::Applied { .. } | HostOutput::RoleChanged { .. } => false,
        })?;
        Some(outputs.remove(position))
    }

    fn put(
        &mut self,
        partition: PartitionId,
        key: &str,
        value: &str,
    ) -> Result<WriteOutcome, RequestError> {
        let leader = self.leader(partition).expect("a leader");
        let request_id = self.hosts.get_mut(&leader).unwrap().write(
            partition,
            KvOperation::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            },
        )?;
        self.settle();
        match self.answer(leader, request_id) {
            Some(HostOutput::WriteAnswered { result, .. }) => result,
            other => panic!("no write answer: {other:?}"),
        }
    }

    fn get_via(
        &mut self,
        node: NodeId,
        partition: PartitionId,
        key: &str,
    ) -> Result<ReadAnswer, RequestError> {
        let request_id = self.hosts.get_mut(&node).unwrap().read(
            partition,
            ReadRequest::Get {
                key: key.as_bytes().to_vec(),
            },
        )?;
        self.settle();
        self.tick(2);
        match self.answer(node, request_id) {
            Some(HostOutput::ReadAnswered { result, .. }) => result,
            other => panic!("no read answer: {other:?}"),
        }
    }

    fn crash_and_restart(&mut self, id: NodeId) {
        let disk = self.disks[&id].crash();
        self.hosts.remove(&id);
        let host =
            PartitionHost::open(id, disk.clone(), self.config.clone(), 8, KvStateMachine).unwrap();
        self.disks.insert(id, disk);
        self.hosts.insert(id, host);
    }
}

#[test]
fn writes_and_linearizable_reads_on_several_partitions() {
    let mut cluster = Cluster::new(3, 4, HostConfig::default());
    cluster.elect_all(4);
    for partition in 0..4 {
        let partition = PartitionId(partition);
        assert_eq!(
            cluster.put(partition, "key", &format!("v{}", partition.0)),
            Ok(WriteOutcome::Put)
        );
    }
    // Reads from every node, follower or leader, see the write (ReadIndex through the leader).
    for node in 1..=3 {
        for partition in 0..4 {
            assert_eq!(
                cluster.get_via(NodeId(node), PartitionId(partition), "key"),
                Ok(ReadAnswer::Value(format!("v{partition}").into_bytes()))
            );
        }
    }
    let missing = cluster
        .get_via(NodeId(1), PartitionId(0), "absent")
        .unwrap_err();
    assert_eq!(missing, RequestError::State(KvError::KeyNotFound));
    assert_eq!(missing.to_string(), "Key not found in database");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut cluster = Cluster::new(3, 1, HostConfig::default());
    cluster.elect_all(1);
    let leader = cluster.leader(PartitionId(0)).unwrap();
    let host = cluster.hosts.get_mut(&leader).unwrap();
    let before = host.status(PartitionId(0)).unwrap().last_index;
    assert!(matches!(
        host.write(
            PartitionId(0),
            KvOperation::Put {
                key: vec![],
                value: vec![1]
            }
        ),
        Err(RequestError::Invalid(_))
    ));
    assert_eq!(
        host.write(PartitionId(9), KvOperation::Delete { key: b"a".to_vec() }),
        Err(RequestError::UnknownPartition(PartitionId(9)))
    );
    assert_eq!(host.status(PartitionId(0)).unwrap().last_index, before);
}

#[test]
fn one_round_of_many_partitions_costs_one_sync_and_one_envelope_per_peer() {
    let partitions = 50;
    let mut cluster = Cluster::new(3, partitions, HostConfig::default());
    cluster.elect_all(partitions);
    // Move every leader to node 1 so one host proposes for all partitions.
    for partition in 0..partitions {
        let partition = PartitionId(partition);
        let leader = cluster.leader(partition).unwrap();
        if leader != NodeId(1) {
            cluster
                .hosts
                .get_mut(&leader)
                .unwrap()
                .transfer_leadership(partition, NodeId(1))
                .unwrap();
        }
    }
    cluster.tick(5);
    for partition in 0..partitions {
        assert_eq!(cluster.leader(PartitionId(partition)), Some(NodeId(1)));
    }
    let host = cluster.hosts.get_mut(&NodeId(1)).unwrap();
    let syncs_before = host.counters().log_syncs;
    for partition in 0..partitions {
        host.write(
            PartitionId(partition),
            KvOperation::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        )
        .unwrap();
    }
    host.process();
    assert_eq!(
        host.counters().log_syncs,
        syncs_before + 1,
        "one sync for fifty groups"
    );
    let envelopes = host.take_envelopes();
    assert_eq!(envelopes.len(), 2, "one envelope per peer");
    for (_, envelope) in &envelopes {
        assert_eq!(envelope.messages.len(), partitions as usize);
    }
}

/// Each host knows the groups it leads without a pass over all of them, and a transfer
/// moves the group from one set to the other.
#[test]
fn hosts_track_the_groups_they_lead() {
    let partitions = 6;
    let mut cluster = Cluster::new(3, partitions, HostConfig::default());
    cluster.elect_all(partitions);
    let leading = |cluster: &Cluster, node: NodeId| cluster.hosts[&node].leading().clone();
    for partition in (0..partitions).map(PartitionId) {
        let leader = cluster.leader(partition).unwrap();
        for node in (1..=3).map(NodeId) {
            assert_eq!(
                leading(&cluster, node).contains(&partition),
                node == leader,
                "{partition} on {node}"
            );
        }
    }
    let partition = PartitionId(0);
    let leader = cluster.leader(partition).unwrap();
    let next = NodeId(leader.0 % 3 + 1);
    cluster
        .hosts
        .get_mut(&leader)
        .unwrap()
        .transfer_leadership(partition, next)
        .unwrap();
    cluster.tick(5);
    assert_eq!(cluster.leader(partition), Some(next));
    assert!(leading(&cluster, next).contains(&partition));
    assert!(!leading(&cluster, leader).contains(&partition));
}

#[test]
fn acknowledged_writes_survive_crashes_of_every_node() {
    let mut cluster = Cluster::new(3, 2, HostConfig::default());
    cluster.elect_all(2);
    for index in 0..20 {
        let partition = PartitionId(index % 2);
        cluster
            .put(partition, &format!("key-{index}"), &format!("{index}"))
            .unwrap();
    }
    for node in 1..=3 {
        cluster.crash_and_restart(NodeId(node));
    }
    cluster.elect_all(2);
    for index in 0..20 {
        let partition = PartitionId(index % 2);
        assert_eq!(
            cluster.get_via(NodeId(2), partition, &format!("key-{index}")),
            Ok(ReadAnswer::Value(format!("{index}").into_bytes())),
            "key-{index}"
        );
    }
}

/// Three nodes, one partition, and 60 puts of `value` through its leader.
fn one_partition_with_puts(config: HostConfig, value: &str) -> (Cluster, PartitionId) {
    let mut cluster = Cluster::new(3, 1, config);
    cluster.elect_all(1);
    let partition = PartitionId(0);
    for index in 0..60 {
        cluster
            .put(partition, &format!("key-{index:02}"), value)
            .unwrap();
    }
    (cluster, partition)
}

/// Many partitions share the node's catch-up budget: each keeps an equal share of
/// `log_catch_up_entries_total`, never less than the floor nor more than its own tail.
#[test]
fn partitions_share_the_catch_up_budget() {
    let config = |total| HostConfig {
        log_catch_up_entries: 100,
        log_catch_up_entries_total: total,
        ..HostConfig::default()
    };
    let tail = |partitions, total| {
        let cluster = Cluster::new(1, partitions, config(total));
        cluster.hosts[&NodeId(1)].catch_up_entries()
    };
    assert_eq!(
        tail(2, 10_000),
        100,
        "a few partitions keep their whole tail"
    );
    assert_eq!(tail(40, 2_000), 50, "many share the budget");
    assert_eq!(tail(40, 40), 16, "never below the floor");
}

/// Compaction keeps `log_catch_up_entries` behind the checkpoint: a follower that installs
/// the snapshot finds the entries after it still in the leader's log.
#[test]
fn compaction_keeps_a_tail_for_followers_catching_up() {
    let config = HostConfig {
        checkpoint_applied_entries: 10,
        log_catch_up_entries: 25,
        ..HostConfig::default()
    };
    let (cluster, partition) = one_partition_with_puts(config, "x");
    let host = &cluster.hosts[&NodeId(1)];
    let log = host.group(partition).unwrap().log();
    let applied = log.applied();
    assert!(applied >= 60, "applied {applied}");
    // The last checkpoint is at most 10 entries behind applied; the tail reaches 25 behind it.
    let first_index = log.first_index();
    assert!(
        first_index > 1 && first_index + 25 <= applied + 1,
        "first index {first_index}, applied {applied}"
    );
    assert!(
        first_index + 25 + 10 >= applied,
        "compacted, but only down to the tail: first index {first_index}, applied {applied}"
    );
}

#[test]
fn checkpoints_compact_the_log_and_recovery_still_sees_everything() {
    let config = HostConfig {
        checkpoint_applied_entries: 10,
        log_catch_up_entries: 0,
        log_segment_bytes_max: 2048,
        log_checkpoint_segments: 2,
        ..HostConfig::default()
    };
    let (mut cluster, partition) = one_partition_with_puts(config, &"x".repeat(40));
    let counters = cluster.hosts[&NodeId(1)].counters();
    assert!(counters.state_machine_checkpoints >= 5, "{counters:?}");
    assert!(counters.log_checkpoints >= 1, "{counters:?}");
    let first_index = cluster.hosts[&NodeId(1)]
        .group(partition)
        .unwrap()
        .log()
        .first_index();
    assert!(
        first_index > 40,
        "the in-memory log was compacted: first index {first_index}"
    );
    for node in 1..=3 {
        cluster.crash_and_restart(NodeId(node));
    }
    cluster.elect_all(1);
    let leader = cluster.leader(partition).unwrap();
    let request_id = cluster
        .hosts
        .get_mut(&leader)
        .unwrap()
        .read(partition, ReadRequest::Range(RangeQuery::default()))
        .unwrap();
    cluster.settle();
    cluster.tick(2);
    match cluster.answer(leader, request_id) {
        Some(HostOutput::ReadAnswered {
            result: Ok(ReadAnswer::Page(page)),
            ..
        }) => assert_eq!((page.pairs.len(), page.next), (60, None)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_new_replica_catches_up_from_a_snapshot_after_compaction() {
    let config = HostConfig {
        checkpoint_applied_entries: 5,
        ..HostConfig::default()
    };
    let mut cluster = Cluster::new(3, 1, config.clone());
    cluster.elect_all(1);
    let partition = PartitionId(0);
    for index in 0..30 {
        cluster
            .put(partition, &format!("key-{index:02}"), "v")
            .unwrap();
    }
    // A fourth node joins: it has nothing, and the leader's log no longer starts at 1.
    let disk = TestDisk::new();
    let mut joiner =
        PartitionHost::open(NodeId(4), disk.clone(), config, 9, KvStateMachine).unwrap();
    joiner
        .create_partition(partition, PartitionStart::Joining)
        .unwrap();
    cluster.hosts.insert(NodeId(4), joiner);
    cluster.disks.insert(NodeId(4), disk);
    let leader = cluster.leader(partition).unwrap();
    cluster
        .hosts
        .get_mut(&leader)
        .unwrap()
        .change_membership(partition, ConfigChange::AddLearner(NodeId(4)))
        .unwrap();
    cluster.tick(10);
    let learner_applied = cluster.hosts[&NodeId(4)].status(partition).unwrap().applied;
    let leader_applied = cluster.hosts[&leader].status(partition).unwrap().applied;
    assert_eq!(learner_applied, leader_applied);
    cluster
        .hosts
        .get_mut(&leader)
        .unwrap()
        .change_membership(partition, ConfigChange::Promote(NodeId(4)))
        .unwrap();
    cluster.tick(10);
    let voters = cluster.hosts[&leader]
        .status(partition)
        .unwrap()
        .configuration
        .voters;
    assert_eq!(voters.len(), 4);
    // The new voter serves reads of data it only ever got through the snapshot.
    assert_eq!(
        cluster.get_via(NodeId(4), partition, "key-03"),
        Ok(ReadAnswer::Value(b"v".to_vec()))
    );
    // And a batch applies atomically across keys.
    let leader = cluster.leader(partition).unwrap();
    let request_id = cluster
        .hosts
        .get_mut(&leader)
        .unwrap()
        .write(
            partition,
            KvOperation::Batch(vec![
                BatchOperation::Delete {
                    key: b"key-03".to_vec(),
                },
                BatchOperation::Put {
                    key: b"key-99".to_vec(),
                    value: b"w".to_vec(),
                },
            ]),
        )
        .unwrap();
    cluster.settle();
    assert!(matches!(
        cluster.answer(leader, request_id),
        Some(HostOutput::WriteAnswered {
            result: Ok(WriteOutcome::Batch),
            ..
        })
    ));
    assert_eq!(
        cluster.get_via(NodeId(4), partition, "key-03"),
        Err(RequestError::State(KvError::KeyNotFound))
    );
}

#[test]
fn a_poisoned_host_refuses_requests() {
    let mut cluster = Cluster::new(1, 1, HostConfig::default());
    cluster.elect_all(1);
    cluster.disks[&NodeId(1)].fail_syncs(true);
    let host = cluster.hosts.get_mut(&NodeId(1)).unwrap();
    let request_id = host
        .write(
            PartitionId(0),
            KvOperation::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
        )
        .unwrap();
    host.process();
    assert!(host.is_poisoned());
    let outputs = host.take_outputs();
    assert!(matches!(
        outputs.as_slice(),
        [HostOutput::WriteAnswered { request_id: id, result: Err(RequestError::Poisoned(_)) }] if *id == request_id
    ));
    assert!(matches!(
        host.write(PartitionId(0), KvOperation::Delete { key: b"a".to_vec() }),
        Err(RequestError::Poisoned(_))
    ));
}

#[test]
fn idle_partitions_go_quiet_and_cost_only_one_ping_per_peer() {
    let partitions = 20;
    let mut cluster = Cluster::new(3, partitions, HostConfig::default());
    cluster.elect_all(partitions);
    for partition in 0..partitions {
        cluster.put(PartitionId(partition), "k", "v").unwrap();
    }
    // Past the quiesce delay, every group is quiet.
    cluster.tick(60);
    for host in cluster.hosts.values() {
        for partition in 0..partitions {
            assert!(host.group(PartitionId(partition)).unwrap().is_quiet());
        }
    }
    let before: Vec<(u64, u64)> = cluster
        .hosts
        .values()
        .map(|host| {
            let counters = host.counters();
            (counters.messages_sent, counters.envelopes_sent)
        })
        .collect();
    cluster.tick(100);
    for (host, (messages, envelopes)) in cluster.hosts.values().zip(before) {
        let counters = host.counters();
        assert_eq!(
            counters.messages_sent, messages,
            "quiet groups send nothing"
        );
        // One ping per peer per heartbeat interval (2 ticks): 2 peers x 50.
        assert_eq!(counters.envelopes_sent - envelopes, 100);
    }
    // A write wakes its group and commits.
    assert_eq!(cluster.put(PartitionId(3), "k", "w"), Ok(WriteOutcome::Put));
}

#[test]
fn quiet_followers_elect_when_the_leaders_node_goes_silent() {
    let partitions = 6;
    let mut cluster = Cluster::new(3, partitions, HostConfig::default());
    cluster.elect_all(partitions);
    cluster.tick(60);
    let victim = NodeId(1);
    let led: Vec<PartitionId> = (0..partitions)
        .map(PartitionId)
        .filter(|partition| cluster.leader(*partition) == Some(victim))
        .collect();
    assert!(!led.is_empty(), "node 1 leads something");
    cluster.down.push(victim);
    // Silence is noticed after an election timeout, then an election runs.
    cluster.tick(60);
    for partition in led {
        let leader = cluster.leader(partition).expect("a new leader");
        assert_ne!(leader, victim);
        assert_eq!(cluster.put(partition, "after", "x"), Ok(WriteOutcome::Put));
    }
}

/// A node whose partition database was rebuilt (a new disk) starts a fresh incarnation that
/// may be below the session its old life left in the partition: its first write is skipped
/// ("outcome unknown", never applied twice), and it takes a session above the old one, so
/// its writes apply again instead of being skipped for good.
#[test]
fn a_rebuilt_node_behind_its_old_session_takes_a_higher_one() {
    use crate::partition::replica_store::INCARNATION_BASE_MAX;
    use crate::random::{Rng, SeededRng};
    let base = |seed: u64| SeededRng::split(seed, u64::MAX - 1).below(INCARNATION_BASE_MAX);
    let partition = PartitionId(0);
    let mut cluster = Cluster::new(3, 1, HostConfig::default());
    cluster.elect_all(1);
    let node = NodeId(1);
    let write_via = |cluster: &mut Cluster, key: &str| {
        let request_id = cluster
            .hosts
            .get_mut(&node)
            .unwrap()
            .write(
                partition,
                KvOperation::Put {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                },
            )
            .expect("proposed");
        for _ in 0..100 {
            cluster.tick(1);
            if let Some(HostOutput::WriteAnswered { result, .. }) = cluster.answer(node, request_id)
            {
                return result;
            }
        }
        panic!("no answer to the write of {key}");
    };
    assert_eq!(write_via(&mut cluster, "old-life"), Ok(WriteOutcome::Put));
    // Rebuilt: an empty disk, and a first incarnation below the one it had.
    let seed = (8..).find(|seed| base(*seed) < base(7)).unwrap();
    let disk = TestDisk::new();
    let mut host = PartitionHost::open(
        node,
        disk.clone(),
        HostConfig::default(),
        seed,
        KvStateMachine,
    )
    .unwrap();
    host.create_partition(partition, PartitionStart::Joining)
        .unwrap();
    cluster.hosts.insert(node, host);
    cluster.disks.insert(node, disk);
    // A write through the leader makes it probe the rebuilt replica and bring it up to date,
    // its old life's command (and session) included.
    assert_eq!(cluster.put(partition, "nudge", "x"), Ok(WriteOutcome::Put));
    cluster.tick(30);
    let caught_up = cluster.hosts[&node].status(partition).unwrap();
    assert!(caught_up.applied >= 4, "{caught_up:?}");
    assert_eq!(
        write_via(&mut cluster, "first"),
        Err(RequestError::OutcomeUnknown),
        "a write of the lower session is skipped"
    );
    assert_eq!(write_via(&mut cluster, "second"), Ok(WriteOutcome::Put));
    assert_eq!(
        cluster.get_via(NodeId(2), partition, "first"),
        Err(RequestError::State(KvError::KeyNotFound))
    );
    assert!(cluster.get_via(NodeId(2), partition, "second").is_ok());
}

/// A member may forward proposals in its own name only: a command naming another proposer
/// (which could retire that proposer's session for good) is refused and counted, and
/// nothing of it applies.
#[test]
fn a_forwarded_proposal_in_another_proposers_name_is_refused() {
    use crate::partition::command::Command;
    use crate::partition::envelope::RaftEnvelope;
    use crate::raft::{Message, MessageBody};
    let partition = PartitionId(0);
    let mut cluster = Cluster::new(3, 1, HostConfig::default());
    cluster.elect_all(1);
    let leader = cluster.leader(partition).unwrap();
    let forger = NodeId(if leader == NodeId(1) { 2 } else { 1 });
    let victim = NodeId(6 - leader.0 - forger.0);
    let command = |proposer: NodeId| Command {
        proposer: proposer.0,
        proposer_session: u64::MAX,
        request_id: 1,
        first_unanswered: 1,
        operation: KvOperation::Put {
            key: b"forged".to_vec(),
            value: b"x".to_vec(),
        },
    };
    let refused_before = cluster.hosts[&leader].counters().messages_refused;
    let envelope = RaftEnvelope {
        messages: vec![(
            partition,
            Message {
                from: forger,
                to: leader,
                term: 0,
                body: MessageBody::Propose {
                    commands: vec![command(forger).encode(), command(victim).encode()],
                },
            },
        )],
    };
    cluster
        .hosts
        .get_mut(&leader)
        .unwrap()
        .receive(forger, envelope);
    cluster.tick(5);
    assert_eq!(
        cluster.hosts[&leader].counters().messages_refused,
        refused_before + 1
    );
    assert_eq!(
        cluster.get_via(leader, partition, "forged"),
        Err(RequestError::State(KvError::KeyNotFound)),
        "no command of the refused message applied"
    );
    // The victim's own writes still apply.
    assert_eq!(cluster.put(partition, "after", "y"), Ok(WriteOutcome::Put));
}

/// A driver that syncs on another thread: between `write_round` and `round_synced` nothing
/// the round holds back is answered, even when something asks the host to complete rounds;
/// the report completes it, and a failed sync poisons the host and fails the write.
#[test]
fn a_round_synced_by_the_driver_answers_only_after_the_sync_reports() {
    let write = |host: &mut PartitionHost, key: &str| {
        host.write(
            PartitionId(0),
            KvOperation::Put {
                key: key.as_bytes().to_vec(),
                value: b"1".to_vec(),
            },
        )
        .unwrap()
    };
    let mut cluster = Cluster::new(1, 1, HostConfig::default());
    cluster.elect_all(1);
    let host = cluster.hosts.get_mut(&NodeId(1)).unwrap();
    host.take_outputs();

    let request_id = write(host, "a");
    assert!(host.prepare_round());
    let file = host.write_round().expect("the round's log needs a sync");
    assert!(file.starts_with("raft-"), "{file}");
    assert!(host.is_awaiting_sync());
    // Neither a second write nor a completion attempt may finish the round early.
    assert_eq!(host.write_round(), None);
    host.complete_round();
    host.process();
    assert!(
        host.take_outputs().is_empty(),
        "answered before the sync reported"
    );
    host.round_synced(Ok(()));
    assert!(!host.is_awaiting_sync());
    host.process();
    let outputs = host.take_outputs();
    assert!(
        outputs.iter().any(|output| matches!(
            output,
            HostOutput::WriteAnswered { request_id: id, result: Ok(_) } if *id == request_id
        )),
        "{outputs:?}"
    );

    let request_id = write(host, "b");
    assert!(host.prepare_round());
    assert!(host.write_round().is_some());
    host.round_synced(Err(crate::seams::DiskError::SyncFailed(file)));
    assert!(host.is_poisoned());
    let outputs = host.take_outputs();
    assert!(
        outputs.iter().any(|output| matches!(
            output,
            HostOutput::WriteAnswered { request_id: id, result: Err(RequestError::Poisoned(_)) } if *id == request_id
        )),
        "{outputs:?}"
    );
}

#[test]
fn a_removed_replica_is_deleted_for_good_and_comes_back_past_its_terms() {
    let mut cluster = Cluster::new(3, 2, HostConfig::default());
    cluster.elect_all(2);
    let partition = PartitionId(1);
    cluster.put(partition, "kept", "v").unwrap();
    cluster.put(PartitionId(0), "other", "w").unwrap();
    // Node 3 leaves the group of partition 1 (a non-leader: make sure of it).
    let leader = cluster.leader(partition).unwrap();
    let leaving = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|node| *node != leader)
        .unwrap();
    let host = cluster.hosts.get_mut(&leader).unwrap();
    host.change_membership(partition, ConfigChange::Demote(leaving))
        .unwrap();
    cluster.tick(5);
    let host = cluster.hosts.get_mut(&leader).unwrap();
    host.change_membership(partition, ConfigChange::Remove(leaving))
        .unwrap();
    cluster.tick(5);
    let term = cluster.hosts[&leaving].status(partition).unwrap().term;
    assert!(term > 0);
    let host = cluster.hosts.get_mut(&leaving).unwrap();
    assert_eq!(host.remove_partition(partition), Ok(true));
    assert!(host.status(partition).is_none());
    assert_eq!(host.counters().replicas_removed, 1);
    // Gone across a crash, while the node's other partition is untouched.
    cluster.crash_and_restart(leaving);
    let host = &cluster.hosts[&leaving];
    assert!(host.status(partition).is_none());
    assert!(host.partitions().all(|id| id != partition));
    cluster.tick(5);
    assert_eq!(
        cluster.get_via(leaving, PartitionId(0), "other"),
        Ok(ReadAnswer::Value(b"w".to_vec()))
    );
    // Created again here, it starts empty from the term and vote its old replica had, and
    // keeps them across a crash before it wrote anything.
    let host = cluster.hosts.get_mut(&leaving).unwrap();
    host.create_partition(partition, PartitionStart::Joining)
        .unwrap();
    assert_eq!(host.status(partition).unwrap().term, term);
    let vote = host.group(partition).unwrap().vote();
    assert_eq!(host.status(partition).unwrap().applied, 0);
    cluster.crash_and_restart(leaving);
    let group = cluster.hosts[&leaving].group(partition).unwrap();
    assert_eq!((group.term(), group.vote()), (term, vote));
    // Added back, it catches up and serves the data again.
    let leader = cluster.leader(partition).unwrap();
    let host = cluster.hosts.get_mut(&leader).unwrap();
    host.change_membership(partition, ConfigChange::AddLearner(leaving))
        .unwrap();
    cluster.tick(10);
    let host = cluster.hosts.get_mut(&leader).unwrap();
    host.change_membership(partition, ConfigChange::Promote(leaving))
        .unwrap();
    cluster.tick(10);
    assert_eq!(
        cluster.get_via(leaving, partition, "kept"),
        Ok(ReadAnswer::Value(b"v".to_vec()))
    );
}

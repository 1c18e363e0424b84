//! Membership on a small in-memory cluster of real partition hosts: a bootstrap, joins
//! through different members, the directory's group growing to three voters in three zones,
//! a partition created from a learner and founded by exactly the replicas its entry names,
//! refusals that say why, and a member that restarts; and requests routed by name from any
//! node, through creation races, lost messages and a leader's crash.

use super::*;
use crate::coordinator::cluster_machine::{ClusterAnswer, ClusterQuery};
use crate::coordinator::router::{
    RouteError, RoutedOutcome, RoutedRequest, Router, RouterAnswer, RouterConfig,
};
use crate::directory::names::Address;
use crate::directory::{DirectoryOutcome, PartitionName};
use crate::ids::Location;
use crate::partition::command::KvOperation;
use crate::partition::host::{HostConfig, RequestError};
use crate::partition::kv_store::{ReadAnswer, ReadRequest, WriteOutcome};
use crate::partition::route::RouteMessage;
use crate::partition::PartitionId;
use crate::raft::Role;
use crate::random::{Rng, SeededRng};
use crate::storage::test_disk::TestDisk;
use std::sync::Arc;

type Host = PartitionHost<ClusterStateMachine>;
type Output = HostOutput<ClusterOutcome, ClusterAnswer>;

struct Node {
    host: Host,
    coordinator: ClusterCoordinator,
    disk: Arc<TestDisk>,
    config: ClusterConfig,
    outputs: Vec<Output>,
    router: Router<ClusterStateMachine>,
    routed: Vec<RouterAnswer<ClusterOutcome, ClusterAnswer>>,
    /// The placement driver's own routed requests.
    own_requests: BTreeSet<u64>,
}

struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    /// Every membership message sent, in order.
    sent: Vec<(NodeId, NodeId, ClusterMessage)>,
    /// Drops each envelope and message with this chance, drawn from this stream.
    loss: Option<(SeededRng, f64)>,
}

fn member(id: u32, zone: &str) -> Member {
    Member::for_test(id, zone)
}

fn cluster_name(name: &str) -> ClusterName {
    ClusterName::new(name).unwrap()
}

fn open(config: ClusterConfig, disk: Arc<TestDisk>) -> Node {
    let mut host = Host::open(
        config.member.id,
        disk.clone(),
        HostConfig::default(),
        u64::from(config.member.id.0),
        ClusterStateMachine::default(),
    )
    .unwrap();
    let coordinator = ClusterCoordinator::open(config.clone(), &mut host).unwrap();
    Node {
        host,
        coordinator,
        disk,
        config,
        outputs: Vec::new(),
        router: Router::new(RouterConfig::default()),
        routed: Vec::new(),
        own_requests: BTreeSet::new(),
    }
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            nodes: BTreeMap::new(),
            sent: Vec::new(),
            loss: None,
        }
    }

    fn add(&mut self, member: Member, name: &str, start: ClusterStart) {
        let config = ClusterConfig {
            member,
            cluster_name: cluster_name(name),
            start,
            join_retry_ticks: 5,
            placement: crate::coordinator::placement::PlacementConfig::default(),
        };
        let id = config.member.id;
        self.nodes.insert(id, open(config, TestDisk::new()));
    }

    fn restart(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        let disk = node.disk.crash();
        self.nodes.insert(id, open(node.config, disk));
    }

    /// Processes every node and delivers what they send until quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut envelopes = Vec::new();
            let mut messages = Vec::new();
            let mut routes: Vec<(NodeId, NodeId, RouteMessage)> = Vec::new();
            for (id, node) in self.nodes.iter_mut() {
                node.host.process();
                node.coordinator.on_directory_changes(&mut node.host);
                for output in node.host.take_outputs() {
                    if let Some(output) = node.coordinator.on_output::<ClusterStateMachine>(output)
                    {
                        node.outputs.push(output);
                    }
                }
                envelopes.extend(
                    node.host
                        .take_envelopes()
                        .into_iter()
                        .map(|(to, e)| (*id, to, e)),
                );
                messages.extend(
                    node.coordinator
                        .take_messages()
                        .into_iter()
                        .map(|(to, message)| (*id, to, message)),
                );
                routes.extend(
                    node.host
                        .take_route_messages()
                        .into_iter()
                        .map(|(to, message)| (*id, to, message)),
                );
                for operation in node.coordinator.take_directory_requests() {
                    let operation = ClusterOperation::Directory(operation);
                    let request = node.router.submit_directory(&mut node.host, operation);
                    node.own_requests.insert(request);
                }
                routes.extend(
                    node.host
                        .take_route_messages()
                        .into_iter()
                        .map(|(to, message)| (*id, to, message)),
                );
                for (joiner, operation) in node.coordinator.take_joins_to_route() {
                    let operation = ClusterOperation::Directory(operation);
                    let request = node.router.submit_directory(&mut node.host, operation);
                    node.coordinator.join_routed(request, joiner);
                }
                routes.extend(
                    node.host
                        .take_route_messages()
                        .into_iter()
                        .map(|(to, message)| (*id, to, message)),
                );
                for answer in node.router.take_answers() {
                    if node.own_requests.remove(&answer.request_id) {
                        continue;
                    }
                    let result = match &answer.result {
                        Ok(crate::coordinator::router::RoutedOutcome::Wrote(outcome)) => {
                            Ok(outcome)
                        }
                        Ok(_) => Err("a read answered a join".to_string()),
                        Err(error) => Err(error.to_string()),
                    };
                    if !node
                        .coordinator
                        .on_routed_join_answer::<ClusterStateMachine>(answer.request_id, result)
                    {
                        node.routed.push(answer);
                    }
                }
            }
            if envelopes.is_empty() && messages.is_empty() && routes.is_empty() {
                return;
            }
            if let Some((rng, chance)) = &mut self.loss {
                envelopes.retain(|_| !rng.chance(*chance));
                messages.retain(|_| !rng.chance(*chance));
                routes.retain(|_| !rng.chance(*chance));
            }
            for (from, to, message) in routes {
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.router.take_route(&mut node.host, from, message);
                }
            }
            for (from, to, envelope) in envelopes {
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.host.receive(from, envelope);
                }
            }
            self.sent.extend(messages.iter().cloned());
            for (from, to, message) in messages {
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.coordinator.receive(&mut node.host, from, message);
                }
            }
        }
        panic!("the cluster did not settle");
    }

    fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            node.host.tick();
            node.coordinator.tick(&mut node.host);
            node.router.tick(&mut node.host);
        }
        self.settle();
    }

    /// Ticks until `done` holds, at most `ticks` times.
    fn run_until(&mut self, ticks: u32, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..ticks {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("not within {ticks} ticks: {what}");
    }

    fn directory(&self, id: NodeId) -> Option<&Directory> {
        directory_of(&self.nodes[&id].host)
    }

    fn system_configuration(&self) -> Option<crate::raft::Configuration> {
        self.nodes.values().find_map(|node| {
            let status = node.host.status(SYSTEM_PARTITION)?;
            (status.role == Role::Leader).then_some(status.configuration)
        })
    }

    fn leader(&self, partition: PartitionId) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, node)| {
                node.host
                    .status(partition)
                    .is_some_and(|status| status.role == Role::Leader)
            })
            .map(|(id, _)| *id)
    }

    fn take_answer(&mut self, id: NodeId, request: u64) -> Option<Output> {
        let outputs = &mut self.nodes.get_mut(&id).unwrap().outputs;
        let position = outputs.iter().position(|output| match output {
            HostOutput::WriteAnswered { request_id, .. }
            | HostOutput::ReadAnswered { request_id, .. } => *request_id == request,
            _ => false,
        })?;
        Some(outputs.remove(position))
    }

    /// Proposes `operation` on `partition` at `id` and runs until it is answered.
    fn write(
        &mut self,
        id: NodeId,
        partition: PartitionId,
        operation: ClusterOperation,
    ) -> Result<ClusterOutcome, RequestError> {
        let request = self
            .nodes
            .get_mut(&id)
            .unwrap()
            .host
            .write(partition, operation)?;
        for _ in 0..200 {
            if let Some(HostOutput::WriteAnswered { result, .. }) = self.take_answer(id, request) {
                return result;
            }
            self.tick();
        }
        panic!("no answer to the write");
    }
}

/// Node 1 founds "test" in zone a; 2 to 5 join through different members, in zones a, b, a
/// and c: the first learners to catch up crowd zone a, and zone c comes last.
fn five_node_cluster() -> Cluster {
    let mut cluster = Cluster::new();
    let zones = ["a", "a", "b", "a", "c"];
    cluster.add(
        member(1, zones[0]),
        "test",
        ClusterStart::Bootstrap(ClusterSettings::new(cluster_name("test"))),
    );
    cluster.run_until(100, "node 1 bootstraps", |cluster| {
        cluster.nodes[&NodeId(1)].coordinator.state() == &MembershipState::Member
    });
    for (id, seed) in [(2, 1), (3, 1), (4, 2), (5, 3)] {
        cluster.add(
            member(id, zones[id as usize - 1]),
            "test",
            ClusterStart::Join {
                seed: Some(NodeId(seed)),
            },
        );
    }
    cluster.run_until(
        300,
        "every node a member with the whole directory",
        |cluster| {
            cluster.nodes.iter().all(|(id, node)| {
                node.coordinator.state() == &MembershipState::Member
                    && cluster
                        .directory(*id)
                        .is_some_and(|directory| directory.members().count() == 5)
            })
        },
    );
    cluster.run_until(300, "three voters in three zones", |cluster| {
        let directory = cluster.directory(NodeId(1)).unwrap();
        cluster.system_configuration().is_some_and(|configuration| {
            let zones: BTreeSet<&Location> = configuration
                .voters
                .iter()
                .map(|id| &directory.member(*id).unwrap().location)
                .collect();
            configuration.voters.len() == 3 && zones.len() == 3 && !configuration.is_joint()
        })
    });
    cluster
}

#[test]
fn joins_grow_the_directory_group_to_three_voters_in_three_zones() {
    let cluster = five_node_cluster();
    let configuration = cluster.system_configuration().unwrap();
    assert_eq!(configuration.learners.len(), 2, "{configuration:?}");
    let directory = cluster.directory(NodeId(1)).unwrap();
    let zones: BTreeSet<&str> = configuration
        .voters
        .iter()
        .map(|id| directory.member(*id).unwrap().location.zone.as_str())
        .collect();
    assert_eq!(
        zones.len(),
        3,
        "voters {:?} spread over zones",
        configuration.voters
    );
    // Every member's copy agrees.
    for id in cluster.nodes.keys() {
        assert_eq!(cluster.directory(*id).unwrap().image(), directory.image());
    }
}

#[test]
fn a_partition_created_anywhere_is_founded_by_the_replicas_its_entry_names() {
    let mut cluster = five_node_cluster();
    // Node 4 is a learner of the directory's group: its proposal goes to the leader.
    let name = PartitionName::new("user:42").unwrap();
    let create =
        ClusterOperation::Directory(DirectoryOperation::CreatePartition { name: name.clone() });
    let entry = match cluster.write(NodeId(4), SYSTEM_PARTITION, create.clone()) {
        Ok(ClusterOutcome::Directory(DirectoryOutcome::Partition {
            entry,
            created: true,
        })) => entry,
        other => panic!("{other:?}"),
    };
    assert_eq!(entry.replicas.len(), 3);
    // A second creation, from another node, finds the same partition.
    match cluster.write(NodeId(5), SYSTEM_PARTITION, create) {
        Ok(ClusterOutcome::Directory(DirectoryOutcome::Partition {
            entry: again,
            created: false,
        })) => {
            assert_eq!(again, entry)
        }
        other => panic!("{other:?}"),
    }
    cluster.run_until(200, "the partition elects a leader", |cluster| {
        cluster.leader(entry.id).is_some()
    });
    for (id, node) in &cluster.nodes {
        let hosts = node.host.group(entry.id).is_some();
        assert_eq!(
            hosts,
            entry.replicas.contains(id),
            "{id} hosts {}",
            entry.id
        );
    }
    let replica = entry.replicas[0];
    let put = ClusterOperation::Kv(KvOperation::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    });
    assert_eq!(
        cluster.write(replica, entry.id, put),
        Ok(ClusterOutcome::Kv(WriteOutcome::Put))
    );
    let reader = entry.replicas[2];
    let request = cluster
        .nodes
        .get_mut(&reader)
        .unwrap()
        .host
        .read(
            entry.id,
            ClusterQuery::Kv(ReadRequest::Get { key: b"k".to_vec() }),
        )
        .unwrap();
    cluster.run_until(50, "the read is answered", |cluster| {
        cluster.nodes[&reader].outputs.iter().any(|output| {
            matches!(output, HostOutput::ReadAnswered { request_id, .. } if *request_id == request)
        })
    });
    match cluster.take_answer(reader, request) {
        Some(HostOutput::ReadAnswered { result, .. }) => {
            assert_eq!(
                result,
                Ok(ClusterAnswer::Kv(ReadAnswer::Value(b"v".to_vec())))
            )
        }
        other => panic!("{other:?}"),
    }

    // A replica that restarts keeps its membership and its replica.
    cluster.restart(reader);
    assert!(cluster.nodes[&reader].host.group(entry.id).is_some());
    cluster.run_until(100, "the restarted replica is a member again", |cluster| {
        cluster.nodes[&reader].coordinator.state() == &MembershipState::Member
    });
}

#[test]
fn joins_that_can_never_succeed_are_refused_with_the_reason() {
    let mut cluster = five_node_cluster();
    cluster.add(
        member(6, "c"),
        "other",
        ClusterStart::Join {
            seed: Some(NodeId(2)),
        },
    );
    cluster.run_until(50, "the node of another cluster is refused", |cluster| {
        cluster.nodes[&NodeId(6)].coordinator.state() != &MembershipState::Joining
    });
    match cluster.nodes[&NodeId(6)].coordinator.state() {
        MembershipState::Refused(reason) => assert!(
            reason.contains("this is cluster \"test\"") && reason.contains("\"other\""),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    // The directory never listed the node of the other cluster.
    assert!(cluster
        .directory(NodeId(1))
        .unwrap()
        .member(NodeId(6))
        .is_none());

    // A second node given id 3 by mistake asks member 5 to join under it.
    let mut impostor = member(3, "c");
    impostor.instance = 7;
    impostor.peer_address = Address::new("10.0.0.99:7001").unwrap();
    let request = ClusterMessage::JoinRequest {
        cluster_name: cluster_name("test"),
        member: impostor,
    };
    let seed = cluster.nodes.get_mut(&NodeId(5)).unwrap();
    seed.coordinator.receive(&mut seed.host, NodeId(3), request);
    cluster.run_until(100, "the impostor is answered", |cluster| {
        cluster.sent.iter().any(|(from, to, message)| {
            *from == NodeId(5)
                && *to == NodeId(3)
                && matches!(message, ClusterMessage::JoinAnswer(_))
        })
    });
    let answer = cluster
        .sent
        .iter()
        .rev()
        .find_map(|(from, to, message)| match message {
            ClusterMessage::JoinAnswer(answer) if *from == NodeId(5) && *to == NodeId(3) => {
                Some(answer.clone())
            }
            _ => None,
        });
    assert_eq!(
        answer,
        Some(JoinAnswer::Refused(
            "node id n3 is taken by another node, the member at 10.0.0.3:7001".into()
        ))
    );
    // A node may only join as itself.
    let seed = cluster.nodes.get_mut(&NodeId(5)).unwrap();
    let request = ClusterMessage::JoinRequest {
        cluster_name: cluster_name("test"),
        member: member(9, "c"),
    };
    seed.coordinator.receive(&mut seed.host, NodeId(8), request);
    assert!(matches!(
        seed.coordinator.take_messages().as_slice(),
        [(
            NodeId(8),
            ClusterMessage::JoinAnswer(JoinAnswer::Refused(_))
        )]
    ));
}

/// Seeded runs of six nodes joining through random members while envelopes and messages are
/// lost, nodes crash and restart, and partitions are created from random nodes. Once the
/// network heals: every node is a member, every copy of the directory is the same, and every
/// partition's group exists on exactly the replicas its entry names, founded with them as
/// voters, with a leader.
#[test]
fn membership_and_placement_hold_under_loss_and_restarts() {
    for seed in 0..6 {
        let mut rng = SeededRng::split(seed, 0);
        let mut cluster = Cluster::new();
        cluster.loss = Some((SeededRng::split(seed, 1), 0.2));
        let zone = |rng: &mut SeededRng| ["a", "b", "c"][rng.below(3) as usize];
        cluster.add(
            member(1, zone(&mut rng)),
            "test",
            ClusterStart::Bootstrap(ClusterSettings::new(cluster_name("test"))),
        );
        for id in 2..=6u32 {
            let seed_node = NodeId(1 + rng.below(u64::from(id) - 1) as u32);
            let zone = zone(&mut rng);
            cluster.add(
                member(id, zone),
                "test",
                ClusterStart::Join {
                    seed: Some(seed_node),
                },
            );
        }
        let mut created = 0;
        for _ in 0..400 {
            cluster.tick();
            if rng.chance(0.02) {
                let victim = NodeId(1 + rng.below(6) as u32);
                cluster.restart(victim);
            }
            if rng.chance(0.1) {
                let proposer = NodeId(1 + rng.below(6) as u32);
                let name = PartitionName::new(format!("p{}", rng.below(12))).unwrap();
                let create =
                    ClusterOperation::Directory(DirectoryOperation::CreatePartition { name });
                let host = &mut cluster.nodes.get_mut(&proposer).unwrap().host;
                if host.write(SYSTEM_PARTITION, create).is_ok() {
                    created += 1;
                }
            }
        }
        cluster.loss = None;
        cluster.run_until(
            1000,
            "every node a member with the same directory",
            |cluster| {
                let first = cluster.directory(NodeId(1)).map(Directory::image);
                cluster.nodes.iter().all(|(id, node)| {
                    node.coordinator.state() == &MembershipState::Member
                        && cluster.directory(*id).map(Directory::image) == first
                        && first.as_ref().is_some_and(|image| image.members.len() == 6)
                })
            },
        );
        let directory = cluster.directory(NodeId(1)).unwrap().clone();
        assert!(
            created > 0 && directory.partition_count() > 0,
            "seed {seed}"
        );
        // The placement driver moves every partition onto the ring's set of the final
        // members, and the replicas left behind are deleted.
        cluster.run_until(3000, "every partition on the ring's replicas", |cluster| {
            let Some(directory) = cluster.directory(NodeId(1)) else {
                return false;
            };
            directory.partitions().all(|entry| {
                !entry.is_moving()
                    && entry.replicas == directory.ring_replicas(&entry.name)
                    && cluster.nodes.iter().all(|(id, node)| {
                        node.host.group(entry.id).is_some() == entry.replicas.contains(id)
                    })
            })
        });
        let directory = cluster.directory(NodeId(1)).unwrap().clone();
        for entry in directory.partitions() {
            cluster.run_until(300, "the partition elects a leader", |cluster| {
                cluster.leader(entry.id).is_some()
            });
            for (id, node) in &cluster.nodes {
                let group = node.host.group(entry.id);
                assert_eq!(
                    group.is_some(),
                    entry.replicas.contains(id),
                    "seed {seed}: {id} and partition {}",
                    entry.name
                );
                if let Some(group) = group {
                    let voters: BTreeSet<NodeId> = entry.replicas.iter().copied().collect();
                    assert_eq!(group.configuration().voters, voters, "seed {seed}");
                }
            }
        }
    }
}

type Routed = Result<RoutedOutcome<ClusterOutcome, ClusterAnswer>, RouteError>;

impl Cluster {
    /// Routes `request` for partition `name` from `id`; its id.
    fn submit(
        &mut self,
        id: NodeId,
        name: &str,
        request: RoutedRequest<ClusterOperation, ClusterQuery>,
    ) -> u64 {
        let node = self.nodes.get_mut(&id).unwrap();
        let name = PartitionName::new(name).unwrap();
        node.router.submit(&mut node.host, name, request)
    }

    fn take_routed(&mut self, id: NodeId, request: u64) -> Option<Routed> {
        let routed = &mut self.nodes.get_mut(&id).unwrap().routed;
        let position = routed
            .iter()
            .position(|answer| answer.request_id == request)?;
        Some(routed.remove(position).result)
    }

    /// Routes `request` from `id` and runs until it is answered.
    fn route(
        &mut self,
        id: NodeId,
        name: &str,
        request: RoutedRequest<ClusterOperation, ClusterQuery>,
    ) -> Routed {
        let request = self.submit(id, name, request);
        for _ in 0..2000 {
            self.settle();
            if let Some(result) = self.take_routed(id, request) {
                return result;
            }
            self.tick();
        }
        panic!("no answer to the routed request");
    }

    fn entries(&self, id: NodeId) -> Vec<crate::directory::PartitionEntry> {
        self.directory(id)
            .map(|directory| directory.partitions().cloned().collect())
            .unwrap_or_default()
    }
}

fn put(key: &str, value: &str) -> RoutedRequest<ClusterOperation, ClusterQuery> {
    RoutedRequest::Write(ClusterOperation::Kv(KvOperation::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }))
}

fn get(key: &str) -> RoutedRequest<ClusterOperation, ClusterQuery> {
    RoutedRequest::Read(ClusterQuery::Kv(ReadRequest::Get {
        key: key.as_bytes().to_vec(),
    }))
}

fn value(result: Routed) -> Vec<u8> {
    match result {
        Ok(RoutedOutcome::Read(ClusterAnswer::Kv(ReadAnswer::Value(value)))) => value,
        other => panic!("not a value: {other:?}"),
    }
}

#[test]
fn any_node_routes_by_name_and_the_first_request_creates_the_partition() {
    let mut cluster = five_node_cluster();
    // The first request for a name creates it; any node reaches it, replica or not.
    assert_eq!(
        cluster.route(NodeId(4), "user:42", put("k", "v1")),
        Ok(RoutedOutcome::Wrote(ClusterOutcome::Kv(WriteOutcome::Put)))
    );
    let entries = cluster.entries(NodeId(1));
    assert_eq!(entries.len(), 1, "{entries:?}");
    let outsider = (1..=5)
        .map(NodeId)
        .find(|id| !entries[0].replicas.contains(id))
        .unwrap();
    assert_eq!(value(cluster.route(outsider, "user:42", get("k"))), b"v1");
    assert_eq!(
        cluster.route(outsider, "user:42", put("k", "v2")),
        Ok(RoutedOutcome::Wrote(ClusterOutcome::Kv(WriteOutcome::Put)))
    );
    for id in 1..=5 {
        assert_eq!(value(cluster.route(NodeId(id), "user:42", get("k"))), b"v2");
    }
    // A missing key says so, in Borough's words.
    match cluster.route(outsider, "user:42", get("missing")) {
        Err(error) => assert_eq!(error.to_string(), "Key not found in database"),
        other => panic!("{other:?}"),
    }
    assert_eq!(cluster.entries(NodeId(1)).len(), 1);
}

#[test]
fn concurrent_first_requests_for_one_name_create_one_partition() {
    let mut cluster = five_node_cluster();
    let requests: Vec<(NodeId, u64)> = (1..=5)
        .map(|id| {
            let id = NodeId(id);
            (
                id,
                cluster.submit(id, "race", put(&format!("k{}", id.0), "v")),
            )
        })
        .collect();
    for (id, request) in requests {
        let mut answer = None;
        for _ in 0..500 {
            if let Some(result) = cluster.take_routed(id, request) {
                answer = Some(result);
                break;
            }
            cluster.tick();
        }
        assert_eq!(
            answer,
            Some(Ok(RoutedOutcome::Wrote(ClusterOutcome::Kv(
                WriteOutcome::Put
            )))),
            "{id}"
        );
    }
    let entries = cluster.entries(NodeId(1));
    assert_eq!(entries.len(), 1, "{entries:?}");
    let groups = cluster
        .nodes
        .values()
        .filter(|node| node.host.group(entries[0].id).is_some())
        .count();
    assert_eq!(groups, 3);
    for id in 1..=5 {
        assert_eq!(
            value(cluster.route(NodeId(1), "race", get(&format!("k{id}")))),
            b"v"
        );
    }
}

#[test]
fn routing_survives_lost_messages_and_a_leader_restart() {
    let mut cluster = five_node_cluster();
    assert!(cluster.route(NodeId(2), "p", put("k", "v0")).is_ok());
    // The loss sequence is arbitrary. At 20% loss each way, about one sequence in twelve
    // loses enough round trips for some request to spend its 12 attempts, which the router
    // reports as it should (`NoLeader`, with what it heard); this one does not.
    cluster.loss = Some((SeededRng::from_seed(3), 0.2));
    let entry = cluster.entries(NodeId(1)).remove(0);
    for round in 1..=20 {
        let from = NodeId(1 + round % 5);
        if round == 10 {
            let leader = cluster.leader(entry.id).unwrap();
            cluster.restart(leader);
        }
        match cluster.route(from, "p", put("k", &format!("v{round}"))) {
            Ok(_) | Err(RouteError::Request(RequestError::OutcomeUnknown)) => {}
            Err(error) => panic!("round {round}: {error}"),
        }
    }
    cluster.loss = None;
    assert_eq!(value(cluster.route(NodeId(3), "p", get("k"))), b"v20");
}

#[test]
fn a_partition_without_a_quorum_fails_in_bounded_time_saying_why() {
    let mut cluster = five_node_cluster();
    assert!(cluster.route(NodeId(1), "lonely", put("k", "v")).is_ok());
    let entry = cluster.entries(NodeId(1)).remove(0);
    let outsider = (1..=5)
        .map(NodeId)
        .find(|id| !entry.replicas.contains(id))
        .unwrap();
    // Two of its three replicas go away, its leader among them (the ring's owner leads,
    // once leadership is balanced); the directory keeps a quorum or not, the partition does
    // not.
    let leader = cluster.leader(entry.id).unwrap();
    let survivor = *entry.replicas.iter().find(|id| **id != leader).unwrap();
    for replica in entry.replicas.iter().filter(|id| **id != survivor) {
        cluster.nodes.remove(replica);
    }
    let request = cluster.submit(outsider, "lonely", put("k", "w"));
    let mut answer = None;
    for _ in 0..RouterConfig::default().request_timeout_ticks + 10 {
        cluster.tick();
        if let Some(result) = cluster.take_routed(outsider, request) {
            answer = Some(result);
            break;
        }
    }
    match answer {
        Some(Err(RouteError::NoLeader { name, detail })) => {
            assert_eq!(name, "lonely");
            assert!(detail.contains("of 3 replicas unreachable"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

impl Cluster {
    /// Whether every partition settled on the ring's replica set of the current members,
    /// with its group on exactly those nodes, voting, and no replica left elsewhere.
    fn placement_settled(&self, observer: NodeId) -> bool {
        let Some(directory) = self.directory(observer) else {
            return false;
        };
        directory.partitions().all(|entry| {
            let voters: BTreeSet<NodeId> = entry.replicas.iter().copied().collect();
            !entry.is_moving()
                && entry.replicas == directory.ring_replicas(&entry.name)
                && self
                    .nodes
                    .iter()
                    .all(|(id, node)| match node.host.group(entry.id) {
                        Some(group) => {
                            entry.replicas.contains(id) && group.configuration().voters == voters
                        }
                        None => !entry.replicas.contains(id),
                    })
        })
    }
}

/// Load on every partition while nodes join one by one, then drain one by one: every
/// request succeeds, partitions end on the ring's replicas, drained nodes end left with no
/// replica, and every acknowledged write reads back.
#[test]
fn nodes_join_and_drain_under_load_and_every_request_succeeds() {
    let zones = ["a", "b", "c"];
    let mut cluster = Cluster::new();
    let mut rng = SeededRng::split(11, 0);
    cluster.add(
        member(1, zones[0]),
        "test",
        ClusterStart::Bootstrap(ClusterSettings::new(cluster_name("test"))),
    );
    cluster.run_until(100, "node 1 bootstraps", |cluster| {
        cluster.nodes[&NodeId(1)].coordinator.state() == &MembershipState::Member
    });
    let names: Vec<String> = (0..12).map(|index| format!("p{index}")).collect();
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    for name in &names {
        assert!(cluster.route(NodeId(1), name, put("k", "v0")).is_ok());
        acknowledged.insert(name.clone(), "v0".into());
    }
    let mut in_flight: Vec<(NodeId, u64, String, String)> = Vec::new();
    let mut written = 0u64;
    let mut answered_so_far = 0u64;
    // One tick of load: a put from a random member, and every answer checked.
    let mut load = |cluster: &mut Cluster, rng: &mut SeededRng, sources: &[NodeId]| {
        written += 1;
        let from = sources[rng.below(sources.len() as u64) as usize];
        let name = names[rng.below(names.len() as u64) as usize].clone();
        let value = format!("v{written}");
        let request = cluster.submit(from, &name, put("k", &value));
        in_flight.push((from, request, name, value));
        cluster.tick();
        let mut still = Vec::new();
        for (from, request, name, value) in in_flight.drain(..) {
            match cluster.take_routed(from, request) {
                Some(Ok(_)) => {
                    answered_so_far += 1;
                    acknowledged.insert(name, value);
                }
                Some(Err(error)) => panic!("a put to {name} from {from} failed: {error}"),
                None => still.push((from, request, name, value)),
            }
        }
        in_flight = still;
        (answered_so_far, in_flight.len())
    };
    let mut members = vec![NodeId(1)];
    for id in 2..=5u32 {
        cluster.add(
            member(id, zones[(id as usize - 1) % 3]),
            "test",
            ClusterStart::Join {
                seed: Some(NodeId(1)),
            },
        );
        members.push(NodeId(id));
        for _ in 0..400 {
            load(&mut cluster, &mut rng, &[NodeId(1)]);
        }
        cluster.run_until(3000, "placement settles after a join", |cluster| {
            cluster.placement_settled(NodeId(1))
        });
    }
    // Every node leads some partitions: the ring's owners lead.
    let directory = cluster.directory(NodeId(1)).unwrap().clone();
    let mut leaders = BTreeSet::new();
    for entry in directory.partitions() {
        cluster.run_until(300, "the ring's owner leads", |cluster| {
            cluster.leader(entry.id) == Some(entry.replicas[0])
        });
        leaders.insert(entry.replicas[0]);
    }
    assert!(leaders.len() >= 3, "{leaders:?}");
    // Drain three nodes, one by one, under load from the others.
    for leaving in [NodeId(5), NodeId(2), NodeId(1)] {
        members.retain(|id| *id != leaving);
        cluster.nodes.get_mut(&leaving).unwrap().coordinator.leave();
        let sources = members.clone();
        let mut left = false;
        for _ in 0..4000 {
            load(&mut cluster, &mut rng, &sources);
            if cluster.nodes[&leaving].coordinator.state() == &MembershipState::Left {
                left = true;
                break;
            }
        }
        assert!(left, "{leaving} never left");
        let observer = members[0];
        cluster.run_until(3000, "placement settles after a drain", |cluster| {
            cluster.placement_settled(observer)
        });
        assert!(
            cluster.nodes[&leaving]
                .host
                .partitions()
                .all(|id| id == SYSTEM_PARTITION),
            "{leaving} still holds replicas"
        );
        // Drained, it stops (the binary exits); the directory's group then lets it go.
        cluster.nodes.remove(&leaving);
        cluster.run_until(1000, "the directory's group lets the node go", |cluster| {
            cluster
                .system_configuration()
                .is_some_and(|configuration| !configuration.is_member(leaving))
        });
    }
    let mut answered = 0;
    for _ in 0..2000 {
        let (so_far, waiting) = load(&mut cluster, &mut rng, &members.clone());
        answered = so_far;
        if waiting == 0 {
            break;
        }
    }
    assert!(answered > 1000, "{answered} answered");
    let moves: u64 = cluster
        .nodes
        .values()
        .map(|node| node.coordinator.placement_counters().moves_admitted)
        .sum();
    let deleted: u64 = cluster
        .nodes
        .values()
        .map(|node| node.coordinator.placement_counters().replicas_deleted)
        .sum();
    eprintln!("{answered} puts answered, {moves} moves admitted, {deleted} replicas deleted on the survivors");
    let reader = members[0];
    for (name, expected) in &acknowledged {
        assert_eq!(
            value(cluster.route(reader, name, get("k"))),
            expected.as_bytes(),
            "{name}"
        );
    }
}

//! The Raft benchmark: one simulated 3-node cluster hosting N partitions of 3 replicas, a kv
//! write load spread over them, no faults. It reports simulated seconds per wall second, Raft
//! messages and network envelopes per committed entry, syncs per committed entry, and the
//! memory a quiet group costs (heap growth per group replica, with the simulated disks'
//! in-memory file images left out, since a real disk holds those).
//!
//! Heap is what the caller's counting allocator reports as live (bytes asked for, before the
//! allocator's rounding): exact and repeatable, unlike resident memory, which moves with
//! whatever the allocator kept from earlier runs.

use crate::clock::{ClockSkew, SimClock, VirtualTime};
use crate::disk::{ProcessDisk, SimDisk};
use crate::network::{Outbox, SimNetworkHandle};
use crate::run_config::RunConfig;
use crate::runner::run_world;
use crate::scenario::Scenario;
use crate::state_machine::{Node, SimOperation};
use crate::world::World;
use borough::ids::NodeId;
use borough::node::NodeSeams;
use borough::partition::command::KvOperation;
use borough::partition::host::PartitionStart;
use borough::partition::PartitionId;
use borough::raft::{RaftGroup, Role};
use borough::seams::{SeededRng, SharedDisk};
use borough::wire::Message;
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// What one benchmark run measured.
#[derive(Clone, Debug)]
pub struct RaftBenchFigures {
    pub groups: u64,
    pub simulated_seconds: f64,
    pub wall_seconds: f64,
    pub committed_entries: u64,
    pub raft_messages: u64,
    pub envelopes: u64,
    pub syncs: u64,
    pub nodes: u64,
}

impl RaftBenchFigures {
    pub fn line(&self) -> String {
        let per_entry = |count: u64| count as f64 / self.committed_entries.max(1) as f64;
        format!(
            "groups={} sim_s={:.1} wall_s={:.2} ratio={:.0}x committed_entries={} raft_messages_per_entry={:.2} envelopes_per_entry={:.2} syncs_per_entry_per_node={:.3}",
            self.groups,
            self.simulated_seconds,
            self.wall_seconds,
            self.simulated_seconds / self.wall_seconds,
            self.committed_entries,
            per_entry(self.raft_messages),
            per_entry(self.envelopes),
            per_entry(self.syncs) / self.nodes.max(1) as f64,
        )
    }
}

/// The benchmark's scenario for `groups` partitions and `writes_per_s` writes across them.
pub fn scenario(groups: u64, writes_per_s: u64, seconds: u64) -> Scenario {
    let rate_section = if writes_per_s == 0 {
        String::new()
    } else {
        format!(
            "[[workload]]\nkind = \"kv\"\nrate_per_s = {writes_per_s}\nkeys_per_partition = 16\nread_ratio = 0.0\ndelete_ratio = 0.0\nclient_timeout_ms = 2000\n"
        )
    };
    let text = format!(
        "[scenario]\ntier = \"slow\"\nseeds = 1\nexpect = \"pass\"\nsafety_duration_ms = {}\nliveness_duration_ms = 4000\n\n[checks]\nliveness_bound_ms = 1000\n\n[cluster]\nregions = 1\nzones_per_region = 3\nnodes_per_zone = 1\n\n[knobs]\n\n[partitions]\ncount = {groups}\nreplicas = 3\n\n{rate_section}",
        seconds * 1000
    );
    Scenario::parse(Path::new("raft-bench.toml"), &text).expect("the bench scenario is valid")
}

/// Runs the benchmark once under load.
pub fn run(groups: u64, writes_per_s: u64, seconds: u64) -> RaftBenchFigures {
    let scenario = scenario(groups, writes_per_s, seconds);
    let (world, wall_seconds): (World, f64) = run_world(&scenario, 1);
    RaftBenchFigures {
        groups,
        simulated_seconds: world.now_micros() as f64 / 1e6,
        wall_seconds,
        committed_entries: world.raft.committed_entries(),
        raft_messages: world.raft_messages_sent,
        envelopes: world.raft_envelopes_sent,
        syncs: world.nodes.iter().map(|node| node.disk.stats().syncs).sum(),
        nodes: world.nodes.len() as u64,
    }
}

/// What the memory of `groups` quiet groups measured: the benchmark's cluster with no load,
/// run until every group has elected a leader, committed one write and gone quiet.
#[derive(Clone, Debug)]
pub struct QuietMemoryFigures {
    pub groups: u64,
    /// Group replicas: three per group, one per node.
    pub replicas: u64,
    /// Replicas quiet at the end (all of them, unless something kept a group awake).
    pub quiet_replicas: u64,
    pub raft_messages: u64,
    pub envelopes: u64,
    /// Live heap growth from before the cluster was built to the end, less what the
    /// simulated disks hold.
    pub heap_grown_bytes: u64,
    /// The same for the same nodes holding no group: their fixed cost, which dominates the
    /// figure for a few groups.
    pub empty_nodes_heap_bytes: u64,
    /// The same right after the nodes opened and created their partitions (no election yet).
    pub heap_created_bytes: u64,
    /// Of the growth at the end, what the nodes' processes held: the heap freed by dropping
    /// them (the disks stay).
    pub node_heap_bytes: u64,
    pub disk_bytes: u64,
    /// Resident memory growth over the run, less the disks' images; noisy, for comparison.
    pub resident_grown_bytes: u64,
}

impl QuietMemoryFigures {
    fn per_replica(&self, bytes: u64) -> f64 {
        bytes as f64 / self.replicas.max(1) as f64
    }

    /// The figure issue 4 bounds (under 4 KiB): heap bytes per quiet group replica.
    pub fn heap_bytes_per_quiet_replica(&self) -> f64 {
        self.per_replica(self.heap_grown_bytes)
    }

    /// The same without the nodes' fixed cost: what one more quiet group replica costs.
    pub fn heap_bytes_per_quiet_replica_beyond_empty_nodes(&self) -> f64 {
        self.per_replica(
            self.heap_grown_bytes
                .saturating_sub(self.empty_nodes_heap_bytes),
        )
    }

    pub fn line(&self) -> String {
        format!(
            "idle: groups={} replicas={} quiet_replicas={} raft_messages={} envelopes={} heap_bytes_per_quiet_replica={:.0} (exact: counted heap growth less disk images) beyond_empty_nodes={:.0} heap_bytes_per_replica_at_creation={:.0} node_heap_bytes_per_replica={:.0} disk_image_bytes_per_replica={:.0} resident_bytes_per_replica={:.0} (RSS growth, noisy)",
            self.groups,
            self.replicas,
            self.quiet_replicas,
            self.raft_messages,
            self.envelopes,
            self.heap_bytes_per_quiet_replica(),
            self.heap_bytes_per_quiet_replica_beyond_empty_nodes(),
            self.per_replica(self.heap_created_bytes),
            self.per_replica(self.node_heap_bytes),
            self.per_replica(self.disk_bytes),
            self.per_replica(self.resident_grown_bytes),
        )
    }
}

/// The simulated time between two steps of [`QuietCluster`]: one message hop.
const STEP_MICROS: u64 = 1000;
/// When each group's leader is sent its one write: every election is over by then.
const WRITE_AT_MICROS: u64 = 2_000_000;

/// The benchmark's nodes with nothing but their Raft groups to do, driven in steps of
/// [`STEP_MICROS`]: a message arrives the step after it was sent, staged writes are synced in
/// the step they were staged, no faults. The world cannot be used for this: its end-of-run
/// checks restart every node from its disk, after which no group is quiet.
struct QuietCluster {
    now: VirtualTime,
    epoch_micros: u64,
    outbox: Outbox,
    nodes: Vec<Node>,
    disks: Vec<SimDisk>,
    in_flight: Vec<(NodeId, NodeId, Message)>,
    raft_messages: u64,
    envelopes: u64,
}

impl QuietCluster {
    fn open(config: &RunConfig) -> Self {
        let now: VirtualTime = Rc::new(Cell::new(0));
        let outbox: Outbox = Rc::new(RefCell::new(Vec::new()));
        let partitions = config
            .partitions
            .as_ref()
            .expect("the bench scenario has partitions");
        let mut nodes = Vec::new();
        let mut disks = Vec::new();
        for (ordinal, (id, location)) in config.nodes.iter().enumerate() {
            let disk = SimDisk::new(SeededRng::split(config.seed, 1 + ordinal as u64));
            let seams = NodeSeams {
                clock: Box::new(SimClock {
                    epoch_micros: config.epoch_micros,
                    now: now.clone(),
                    skew: ClockSkew::none(),
                }),
                network: Box::new(SimNetworkHandle {
                    from: *id,
                    outbox: outbox.clone(),
                }),
                disk: Arc::new(ProcessDisk::new(disk.clone())) as SharedDisk,
                rng: Box::new(SeededRng::split(config.seed, 100 + ordinal as u64)),
            };
            let mut node = Node::open(config.node_config(*id, location.clone()), seams)
                .expect("a node opens on an empty disk");
            for (peer, peer_location) in &config.nodes {
                node.add_peer(*peer, peer_location.clone());
            }
            for partition in 0..partitions.count {
                let voters = partitions.voters(partition, &config.nodes);
                if voters.contains(id) {
                    node.create_partition(
                        PartitionId(partition),
                        PartitionStart::Bootstrap { voters },
                    )
                    .expect("a partition is created on a healthy node");
                }
            }
            nodes.push(node);
            disks.push(disk);
        }
        let mut cluster = Self {
            now,
            epoch_micros: config.epoch_micros,
            outbox,
            nodes,
            disks,
            in_flight: Vec::new(),
            raft_messages: 0,
            envelopes: 0,
        };
        cluster.collect_sent();
        cluster
    }

    /// Moves what the nodes sent into flight, and drops their outputs (nobody waits on them).
    fn collect_sent(&mut self) {
        for (from, to, message) in self.outbox.borrow_mut().drain(..) {
            if let Message::Raft(envelope) = &message {
                self.envelopes += 1;
                self.raft_messages += envelope.messages.len() as u64;
            }
            self.in_flight.push((from, to, message));
        }
        for node in &mut self.nodes {
            node.take_outputs();
        }
    }

    fn step(&mut self) {
        let now = self.now.get() + STEP_MICROS;
        self.now.set(now);
        let local_now = ClockSkew::none().local_micros(self.epoch_micros, now);
        for node in &mut self.nodes {
            if node.next_deadline_micros() <= local_now {
                node.handle_deadlines();
            }
        }
        for (from, to, message) in std::mem::take(&mut self.in_flight) {
            if let Some(node) = self.nodes.iter_mut().find(|node| node.id() == to) {
                node.handle_message(from, message);
            }
        }
        for node in &mut self.nodes {
            if node.has_staged_writes() {
                node.flush();
            }
        }
        self.collect_sent();
    }

    /// One small write to every group, through its leader.
    fn write_each_group(&mut self, groups: u64) {
        for partition in (0..groups).map(PartitionId) {
            let leader = self.nodes.iter_mut().find(|node| {
                node.partitions()
                    .and_then(|host| host.status(partition))
                    .is_some_and(|status| status.role == Role::Leader)
            });
            if let Some(leader) = leader {
                let operation = KvOperation::Put {
                    key: b"key".to_vec(),
                    value: partition.0.to_be_bytes().to_vec(),
                };
                // A refusal leaves that group unwritten; the figure is still a quiet group's.
                let _ = leader.partition_write(partition, SimOperation::Kv(operation));
            }
        }
        self.collect_sent();
    }

    fn quiet_replicas(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(Node::partitions)
            .map(|host| {
                host.partitions()
                    .filter(|partition| host.group(*partition).is_some_and(RaftGroup::is_quiet))
                    .count() as u64
            })
            .sum()
    }

    fn disk_bytes(&self) -> u64 {
        self.disks.iter().map(SimDisk::held_bytes).sum()
    }
}

/// What one [`QuietCluster`] run measured.
struct ClusterMemory {
    quiet_replicas: u64,
    raft_messages: u64,
    envelopes: u64,
    heap_grown_bytes: u64,
    heap_created_bytes: u64,
    node_heap_bytes: u64,
    disk_bytes: u64,
    resident_grown_bytes: u64,
}

fn measure_cluster(
    config: &RunConfig,
    groups: u64,
    end_micros: u64,
    heap_bytes: &impl Fn() -> u64,
    resident_bytes: &impl Fn() -> u64,
) -> ClusterMemory {
    let heap_before = heap_bytes();
    let resident_before = resident_bytes();
    let mut cluster = QuietCluster::open(config);
    let heap_created_bytes = heap_bytes()
        .saturating_sub(heap_before)
        .saturating_sub(cluster.disk_bytes());
    while cluster.now.get() < WRITE_AT_MICROS {
        cluster.step();
    }
    cluster.write_each_group(groups);
    while cluster.now.get() < end_micros {
        cluster.step();
    }
    let heap_after = heap_bytes();
    let resident_after = resident_bytes();
    let disk_bytes = cluster.disk_bytes();
    let quiet_replicas = cluster.quiet_replicas();
    drop(std::mem::take(&mut cluster.nodes));
    ClusterMemory {
        quiet_replicas,
        raft_messages: cluster.raft_messages,
        envelopes: cluster.envelopes,
        heap_grown_bytes: heap_after
            .saturating_sub(heap_before)
            .saturating_sub(disk_bytes),
        heap_created_bytes,
        node_heap_bytes: heap_after.saturating_sub(heap_bytes()),
        disk_bytes,
        resident_grown_bytes: resident_after
            .saturating_sub(resident_before)
            .saturating_sub(disk_bytes),
    }
}

/// Measures the memory of `groups` quiet groups over `seconds` simulated seconds, and of the
/// same nodes with no groups (what the nodes cost however few groups they hold).
/// `heap_bytes` reads the process's live heap (the caller's counting allocator),
/// `resident_bytes` its resident set.
pub fn measure_quiet_memory(
    groups: u64,
    seconds: u64,
    heap_bytes: impl Fn() -> u64,
    resident_bytes: impl Fn() -> u64,
) -> QuietMemoryFigures {
    let config = RunConfig::draw(&scenario(groups, 0, seconds), 1);
    let end_micros = (seconds * 1_000_000).max(WRITE_AT_MICROS + 2_000_000);
    let mut empty_config = config.clone();
    if let Some(partitions) = &mut empty_config.partitions {
        partitions.count = 0;
    }
    let empty = measure_cluster(&empty_config, 0, end_micros, &heap_bytes, &resident_bytes);
    let measured = measure_cluster(&config, groups, end_micros, &heap_bytes, &resident_bytes);
    QuietMemoryFigures {
        groups,
        replicas: groups * 3,
        quiet_replicas: measured.quiet_replicas,
        raft_messages: measured.raft_messages,
        envelopes: measured.envelopes,
        heap_grown_bytes: measured.heap_grown_bytes,
        empty_nodes_heap_bytes: empty.heap_grown_bytes,
        heap_created_bytes: measured.heap_created_bytes,
        node_heap_bytes: measured.node_heap_bytes,
        disk_bytes: measured.disk_bytes,
        resident_grown_bytes: measured.resident_grown_bytes,
    }
}

#[cfg(test)]
mod tests {
    /// The scenario the benchmark builds passes the scenario checks (it once stopped parsing
    /// when those grew, and nothing but a manual run noticed).
    #[test]
    fn the_bench_scenario_is_valid_under_load_and_idle() {
        for (groups, writes_per_s, seconds) in [(1, 2000, 10), (10_000, 2000, 10), (100, 0, 5)] {
            let scenario = super::scenario(groups, writes_per_s, seconds);
            let partitions = scenario.file.partitions.expect("a partitions section");
            assert!(
                matches!(partitions.count, crate::scenario::Drawn::Fixed(count) if count == groups)
            );
        }
    }
}

//! One run's configuration: a scenario with every range drawn from the seed.
//!
//! Drawing happens once, from a stream of its own, before the world starts, so adding a knob to
//! a scenario changes only the draws after it in this stream and never the world's stream.

use crate::checkers::Checker;
use crate::scenario::{
    parse_feed_planted_bug, parse_handler_planted_bug, parse_placement_planted_bug,
    parse_planted_bug, parse_raft_planted_bug, ChecksSection, Drawn, Expectation, FaultSection,
    RaftCanary, Scenario,
};
use borough::coordinator::CommitLevel;
use borough::coordinator::PlantedBug;
use borough::events::{ConsolidationInterval, StoreConfig};
use borough::ids::{Location, NodeId};
use borough::node::{NodeConfig, PartitionsConfig};
use borough::partition::host::HostConfig;
use borough::placement::ReplicationStrategy;
use borough::raft::RaftConfig;
use borough::seams::{Rng, SeededRng};

/// The stream that draws the run's configuration.
const CONFIG_STREAM: u64 = 7;
/// Runs start at 2026-01-01T00:00:00Z plus a drawn offset of up to a day, so runs cross
/// consolidation-interval boundaries at different points.
const EPOCH_BASE_MICROS: u64 = 1_767_225_600_000_000;
const DAY_MICROS: u64 = 86_400_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Events,
    Kv,
    /// The simulator's counter state machine in the partitions (`crate::state_machine`).
    Counter,
    /// The example ledger application's handler (`workload::ledger`).
    Ledger,
    /// Shared maps and their change feeds (`workload::maps`).
    Maps,
}

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub kind: WorkloadKind,
    pub rate_per_s: u64,
    pub event_bytes: Drawn<u64>,
    pub commit_levels: Vec<CommitLevel>,
    pub client_timeout_micros: u64,
    pub keys_per_partition: u64,
    pub read_ratio: f64,
    pub delete_ratio: f64,
    pub batch_ratio: f64,
    pub range_ratio: f64,
    /// Feed subscribers per map (`maps`).
    pub subscribers_per_map: u64,
    /// How long a subscriber that left stays away (`maps`).
    pub subscriber_away_micros: Drawn<u64>,
}

/// The Raft partitions of a run.
#[derive(Clone, Debug)]
pub struct PartitionsRun {
    pub count: u64,
    pub replicas: u64,
    pub tick_micros: u64,
    pub raft: RaftConfig,
    pub checkpoint_applied_entries: u64,
    pub log_catch_up_entries: u64,
    pub acknowledge_before_sync: bool,
    pub apply_command_copies: bool,
    pub split_batches: bool,
    pub skip_log_sync: bool,
    pub poison_on_missing_key: bool,
    /// Named partitions through the cluster directory (see `scenario::PartitionsSection`).
    pub named: bool,
}

impl PartitionsRun {
    /// The ids the run's partitions may have: `0..count` placed by the scenario, or with
    /// names the directory's system partition 0 and ids 1..=count it gives names as they
    /// are created (an id not created yet has no group anywhere).
    pub fn partition_ids(&self) -> std::ops::Range<u64> {
        if self.named {
            0..self.count + 1
        } else {
            0..self.count
        }
    }

    /// The name clients use for partition number `number`.
    pub fn name(number: u64) -> borough::directory::PartitionName {
        borough::directory::PartitionName::new(format!("partition {number}"))
            .expect("a short name is valid")
    }

    /// The voters of `partition`: `replicas` consecutive nodes of the zone-interleaved node
    /// order (one node of each zone in turn), from a start that rotates with the partition,
    /// so replicas spread over zones first and leaders and load spread over the cluster.
    pub fn voters(&self, partition: u64, nodes: &[(NodeId, Location)]) -> Vec<NodeId> {
        let order = zone_interleaved(nodes);
        let replicas = (self.replicas as usize).min(order.len());
        (0..replicas)
            .map(|offset| order[(partition as usize + offset) % order.len()])
            .collect()
    }
}

/// The nodes one zone at a time: the first node of every zone (zones in order), then the
/// second of every zone, and so on. Any `k` consecutive nodes of this order (cyclically) hold
/// at most `ceil(k / zones)` nodes of one zone when zones are equally sized.
pub fn zone_interleaved(nodes: &[(NodeId, Location)]) -> Vec<NodeId> {
    let mut zones: std::collections::BTreeMap<(&str, &str), Vec<NodeId>> = Default::default();
    for (id, location) in nodes {
        zones
            .entry((location.region.as_str(), location.zone.as_str()))
            .or_default()
            .push(*id);
    }
    let deepest = zones.values().map(Vec::len).max().unwrap_or(0);
    let mut order = Vec::with_capacity(nodes.len());
    for depth in 0..deepest {
        for members in zones.values() {
            if let Some(id) = members.get(depth) {
                order.push(*id);
            }
        }
    }
    order
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub scenario: String,
    pub seed: u64,
    pub epoch_micros: u64,
    pub nodes: Vec<(NodeId, Location)>,
    pub safety_micros: u64,
    pub liveness_micros: u64,
    pub replication_factor: u32,
    pub strategy: ReplicationStrategy,
    pub replica_timeout_micros: u64,
    pub repair_delay_micros: u64,
    pub latency_micros: Drawn<u64>,
    pub cross_region_latency_micros: Drawn<u64>,
    pub fsync_latency_micros: Drawn<u64>,
    pub consolidation_interval: ConsolidationInterval,
    pub checkpoint_records: usize,
    pub planted_bug: Option<PlantedBug>,
    pub workloads: Vec<WorkloadConfig>,
    pub partitions: Option<PartitionsRun>,
    pub faults: Vec<FaultSection>,
    pub checks: ChecksSection,
    /// A canary's run stops at the first violation from the checker it names: the catch is
    /// what it exists to show, and what follows a broken rule only costs time.
    pub stop_when_caught_by: Option<Checker>,
    /// Whole nodes joining and leaving (see `faults::nodes`).
    pub membership: Option<MembershipRun>,
    /// A canary's bug planted in the nodes' handler runtime.
    pub handler_planted_bug: Option<borough::application::HandlerPlantedBug>,
    /// `maps`: a canary's bug planted in the nodes' feed hub.
    pub feed_planted_bug: Option<borough::feeds::FeedPlantedBug>,
}

/// A run's plan of whole nodes joining and leaving, drawn from `[membership]`.
#[derive(Clone, Debug)]
pub struct MembershipRun {
    pub initial_nodes: usize,
    /// Growth, then shrinkage: `None` for the nemesis.
    pub grow_to: Option<usize>,
    pub shrink_to: usize,
    pub nemesis: bool,
    pub step_every_micros: Drawn<u64>,
    pub dead_after_micros: u64,
    pub members_min: usize,
    pub moves_max: usize,
    pub planted_bug: Option<borough::coordinator::placement::PlacementPlantedBug>,
}

impl RunConfig {
    /// Whether any fault of the run hits the disks (only those may poison a store).
    pub fn has_disk_faults(&self) -> bool {
        self.faults.iter().any(|fault| fault.kind.is_disk_fault())
    }

    /// Whether the nodes run the example ledger's handler (a ledger workload drives it).
    pub fn runs_ledger(&self) -> bool {
        self.workloads
            .iter()
            .any(|workload| workload.kind == WorkloadKind::Ledger)
    }
}

fn millis_to_micros(drawn: Drawn<u64>) -> Drawn<u64> {
    match drawn {
        Drawn::Fixed(value) => Drawn::Fixed(value * 1000),
        Drawn::Range(low, high) => Drawn::Range(low * 1000, high * 1000),
    }
}

impl RunConfig {
    pub fn draw(scenario: &Scenario, seed: u64) -> Self {
        let file = &scenario.file;
        let mut rng = SeededRng::split(seed, CONFIG_STREAM);
        let regions = file.cluster.regions.draw(&mut rng);
        let zones_per_region = file.cluster.zones_per_region.draw(&mut rng);
        let mut nodes_per_zone = file.cluster.nodes_per_zone.draw(&mut rng);
        let replication_factor = file.knobs.replication_factor.draw(&mut rng) as u32;
        // A cluster smaller than its replication factor can only refuse every put; swarm
        // draws grow the zones instead of producing such runs.
        while regions * zones_per_region * nodes_per_zone < replication_factor as u64 {
            nodes_per_zone += 1;
        }
        let mut nodes = Vec::new();
        for region in 0..regions {
            for zone in 0..zones_per_region {
                for _ in 0..nodes_per_zone {
                    let id = NodeId(nodes.len() as u32 + 1);
                    nodes.push((
                        id,
                        Location::new(format!("r{}", region + 1), format!("z{}", zone + 1)),
                    ));
                }
            }
        }
        let knobs = &file.knobs;
        let strategy = ReplicationStrategy {
            other_zone_replicas: knobs.other_zone_replicas.draw(&mut rng) as u32,
            other_region_replicas: knobs.other_region_replicas.draw(&mut rng) as u32,
        };
        let workloads = file
            .workload
            .iter()
            .map(|workload| {
                let kind = match workload.kind.as_str() {
                    "kv" => WorkloadKind::Kv,
                    "counter" => WorkloadKind::Counter,
                    "ledger" => WorkloadKind::Ledger,
                    "maps" => WorkloadKind::Maps,
                    _ => WorkloadKind::Events,
                };
                let rate_per_s = workload.rate_per_s.draw(&mut rng);
                let client_timeout_micros = workload.client_timeout_ms.draw(&mut rng) * 1000;
                // Drawn only for kv workloads, so event runs keep their streams.
                let (keys_per_partition, read_ratio, delete_ratio, batch_ratio, range_ratio) =
                    match kind {
                        WorkloadKind::Kv => (
                            workload.keys_per_partition.draw(&mut rng).max(1),
                            workload.read_ratio.draw(&mut rng),
                            workload.delete_ratio.draw(&mut rng),
                            workload.batch_ratio.draw(&mut rng),
                            workload.range_ratio.draw(&mut rng),
                        ),
                        WorkloadKind::Ledger => (
                            workload.keys_per_partition.draw(&mut rng).max(2),
                            workload.read_ratio.draw(&mut rng),
                            0.0,
                            0.0,
                            0.0,
                        ),
                        WorkloadKind::Maps => (
                            workload.keys_per_partition.draw(&mut rng).max(1),
                            0.0,
                            workload.delete_ratio.draw(&mut rng),
                            0.0,
                            0.0,
                        ),
                        WorkloadKind::Counter => {
                            (0, workload.read_ratio.draw(&mut rng), 0.0, 0.0, 0.0)
                        }
                        WorkloadKind::Events => (0, 0.0, 0.0, 0.0, 0.0),
                    };
                WorkloadConfig {
                    kind,
                    rate_per_s,
                    event_bytes: workload.event_bytes,
                    commit_levels: workload
                        .commit_levels
                        .iter()
                        .map(|level| level.parse().expect("validated on load"))
                        .collect(),
                    client_timeout_micros,
                    keys_per_partition,
                    read_ratio,
                    delete_ratio,
                    batch_ratio,
                    range_ratio,
                    subscriber_away_micros: millis_to_micros(workload.subscriber_away_ms),
                    subscribers_per_map: match kind {
                        WorkloadKind::Maps => workload.subscribers_per_map.draw(&mut rng).max(1),
                        _ => 0,
                    },
                }
            })
            .collect();
        let epoch_micros = EPOCH_BASE_MICROS + rng.below(DAY_MICROS);
        let safety_micros = file.scenario.safety_duration_ms.draw(&mut rng) * 1000;
        let liveness_micros = file.scenario.liveness_duration_ms.draw(&mut rng) * 1000;
        let replica_timeout_micros = knobs.replica_timeout_ms.draw(&mut rng) * 1000;
        let repair_delay_micros = knobs.repair_delay_ms.draw(&mut rng) * 1000;
        let checkpoint_records = knobs.checkpoint_records.draw(&mut rng) as usize;
        // Drawn last, so scenarios without partitions keep every earlier draw.
        let partitions = file
            .partitions
            .as_ref()
            .map(|section| {
                let canary = section
                    .planted_bug
                    .as_deref()
                    .map(|name| parse_raft_planted_bug(name).expect("validated on load"));
                PartitionsRun {
                    count: section.count.draw(&mut rng).max(1),
                    replicas: section.replicas.draw(&mut rng),
                    tick_micros: section.tick_ms.draw(&mut rng) * 1000,
                    raft: RaftConfig {
                        election_timeout_ticks: section.election_timeout_ticks.draw(&mut rng)
                            as u32,
                        heartbeat_interval_ticks: section.heartbeat_interval_ticks.draw(&mut rng)
                            as u32,
                        pre_vote: section.pre_vote,
                        check_quorum: section.check_quorum,
                        planted_bug: match canary {
                            Some(RaftCanary::Raft(bug)) => Some(bug),
                            _ => None,
                        },
                        ..RaftConfig::default()
                    },
                    checkpoint_applied_entries: section.checkpoint_applied_entries.draw(&mut rng),
                    log_catch_up_entries: section.log_catch_up_entries.draw(&mut rng),
                    acknowledge_before_sync: canary == Some(RaftCanary::AcknowledgeBeforeSync),
                    apply_command_copies: canary == Some(RaftCanary::ApplyCommandCopies),
                    split_batches: canary == Some(RaftCanary::SplitBatches),
                    skip_log_sync: canary == Some(RaftCanary::SkipLogSync),
                    poison_on_missing_key: canary == Some(RaftCanary::PoisonOnMissingKey),
                    named: section.named,
                }
            })
            .map(|mut partitions| {
                partitions.raft.quiesce_after_ticks =
                    file.partitions.as_ref().map_or(0, |section| {
                        section.quiesce_after_ticks.draw(&mut rng) as u32
                    });
                if let Some(chunk) = file
                    .partitions
                    .as_ref()
                    .and_then(|section| section.snapshot_chunk_bytes)
                {
                    partitions.raft.snapshot_chunk_bytes = chunk.draw(&mut rng).max(1) as _;
                }
                if let Some(entries) = file
                    .partitions
                    .as_ref()
                    .and_then(|section| section.append_entries_max)
                {
                    partitions.raft.append_entries_max = entries.draw(&mut rng).max(1) as _;
                }
                if let Some(inflight) = file
                    .partitions
                    .as_ref()
                    .and_then(|section| section.inflight_max)
                {
                    partitions.raft.inflight_max = inflight.draw(&mut rng).max(1) as _;
                }
                partitions
            });
        // Drawn after everything else, so scenarios without it keep every earlier draw.
        let membership = file.membership.as_ref().map(|section| {
            let node_count = nodes.len();
            let initial_nodes =
                (section.initial_nodes.draw(&mut rng) as usize).clamp(1, node_count);
            let grow_to = section
                .grow_to
                .map(|grow_to| (grow_to.draw(&mut rng) as usize).clamp(initial_nodes, node_count));
            let shrink_to = section
                .shrink_to
                .map_or(1, |shrink_to| shrink_to.draw(&mut rng) as usize)
                .max(1);
            MembershipRun {
                initial_nodes,
                grow_to,
                shrink_to,
                nemesis: section.nemesis,
                step_every_micros: millis_to_micros(section.step_every_ms),
                dead_after_micros: section.dead_after_ms.draw(&mut rng) * 1000,
                members_min: section.members_min.max(1) as usize,
                moves_max: section.moves_max.draw(&mut rng).max(1) as usize,
                planted_bug: section
                    .planted_bug
                    .as_deref()
                    .map(|name| parse_placement_planted_bug(name).expect("validated on load")),
            }
        });
        Self {
            scenario: scenario.name.clone(),
            seed,
            epoch_micros,
            nodes,
            safety_micros,
            liveness_micros,
            replication_factor,
            strategy,
            replica_timeout_micros,
            repair_delay_micros,
            latency_micros: millis_to_micros(knobs.latency_ms),
            cross_region_latency_micros: millis_to_micros(knobs.cross_region_latency_ms),
            fsync_latency_micros: millis_to_micros(knobs.fsync_latency_ms),
            consolidation_interval: ConsolidationInterval::parse(&knobs.consolidation_interval)
                .expect("validated on load"),
            checkpoint_records,
            planted_bug: knobs
                .planted_bug
                .as_deref()
                .map(|name| parse_planted_bug(name).expect("validated on load")),
            handler_planted_bug: file
                .workload
                .iter()
                .find_map(|workload| workload.handler_planted_bug.as_deref())
                .map(|name| parse_handler_planted_bug(name).expect("validated on load")),
            feed_planted_bug: file
                .workload
                .iter()
                .find_map(|workload| workload.feed_planted_bug.as_deref())
                .map(|name| parse_feed_planted_bug(name).expect("validated on load")),
            workloads,
            partitions,
            faults: file.fault.clone(),
            checks: file.checks.clone(),
            stop_when_caught_by: match file.scenario.expect {
                Expectation::Fail => file.scenario.caught_by,
                Expectation::Pass => None,
            },
            membership,
        }
    }

    /// Workloads stop halfway through the liveness phase; the rest lets repairs converge.
    pub fn workload_stop_micros(&self) -> u64 {
        self.safety_micros + self.liveness_micros / 2
    }

    pub fn end_micros(&self) -> u64 {
        self.safety_micros + self.liveness_micros
    }

    pub fn node_config(&self, id: NodeId, location: Location) -> NodeConfig {
        let mut config = NodeConfig::new(id, location);
        config.coordinator.replication_factor = self.replication_factor;
        config.coordinator.strategy = self.strategy;
        config.coordinator.replica_timeout_micros = self.replica_timeout_micros;
        config.coordinator.repair_delay_micros = self.repair_delay_micros;
        config.coordinator.planted_bug = self.planted_bug;
        config.handlers.planted_bug = self.handler_planted_bug;
        config.feeds.planted_bug = self.feed_planted_bug;
        config.coordinator.store = StoreConfig {
            consolidation_interval: self.consolidation_interval,
            checkpoint_records: self.checkpoint_records,
            ..StoreConfig::default()
        };
        if let Some(partitions) = &self.partitions {
            let client_timeout_micros = self
                .workloads
                .iter()
                .filter(|workload| workload.kind != WorkloadKind::Events)
                .map(|workload| workload.client_timeout_micros)
                .max()
                .unwrap_or(5_000_000);
            config.partitions = Some(PartitionsConfig {
                host: HostConfig {
                    raft: partitions.raft.clone(),
                    checkpoint_applied_entries: partitions.checkpoint_applied_entries,
                    log_catch_up_entries: partitions.log_catch_up_entries,
                    // Answer before the client gives up, so outcomes are known where they can be.
                    request_timeout_ticks: (client_timeout_micros / partitions.tick_micros)
                        .saturating_sub(1)
                        .max(1),
                    report_applied: true,
                    acknowledge_before_sync: partitions.acknowledge_before_sync,
                    apply_command_copies: partitions.apply_command_copies,
                    split_batches: partitions.split_batches,
                    skip_log_sync: partitions.skip_log_sync,
                    poison_on_missing_key: partitions.poison_on_missing_key,
                    ..HostConfig::default()
                },
                tick_micros: partitions.tick_micros,
            });
            if partitions.named {
                config.cluster = Some(self.cluster_config(id, &config, partitions));
                // The router ends each request before its client gives up, so outcomes are
                // known where they can be.
                config.router.request_timeout_ticks = (client_timeout_micros
                    / partitions.tick_micros)
                    .saturating_sub(2)
                    .max(1);
            }
        }
        config
    }

    /// Membership of a run of named partitions: the first node founds the cluster, every
    /// other node joins through it. A member's instance is fixed by its id, as a data dir's
    /// is: a restarted node is the same member.
    fn cluster_config(
        &self,
        id: NodeId,
        config: &NodeConfig,
        partitions: &PartitionsRun,
    ) -> borough::coordinator::cluster::ClusterConfig {
        use borough::coordinator::cluster::{ClusterConfig, ClusterStart};
        use borough::directory::{Address, ClusterName, ClusterSettings, Member, MemberState};
        let cluster_name = ClusterName::new("sim").expect("a short name is valid");
        let address = |port: u16| {
            Address::new(format!("node-{}.sim:{port}", id.0)).expect("a short address is valid")
        };
        let founder = self.nodes.first().map(|(founder, _)| *founder);
        let start = if founder == Some(id) {
            let mut settings = ClusterSettings::new(cluster_name.clone());
            settings.replicas = u8::try_from(partitions.replicas).unwrap_or(u8::MAX);
            ClusterStart::Bootstrap(settings)
        } else {
            ClusterStart::Join { seed: founder }
        };
        ClusterConfig {
            member: Member {
                id,
                instance: 1_000_000 + u64::from(id.0),
                peer_address: address(7481),
                http_address: address(7480),
                location: config.coordinator.location.clone(),
                state: MemberState::Active,
            },
            cluster_name,
            start,
            join_retry_ticks: 20,
            placement: self.placement_config(partitions),
        }
    }

    /// The placement driver's knobs: the membership plan's, else the defaults.
    fn placement_config(
        &self,
        partitions: &PartitionsRun,
    ) -> borough::coordinator::placement::PlacementConfig {
        let mut placement = borough::coordinator::placement::PlacementConfig::default();
        if let Some(membership) = &self.membership {
            placement.dead_after_ticks =
                (membership.dead_after_micros / partitions.tick_micros.max(1)).max(1);
            placement.moves_max = membership.moves_max;
            placement.planted_bug = membership.planted_bug;
        }
        placement
    }

    /// One line that says what was drawn, printed at the start of a run.
    pub fn describe(&self) -> String {
        let regions: std::collections::BTreeSet<&str> =
            self.nodes.iter().map(|(_, l)| l.region.as_str()).collect();
        let zones: std::collections::BTreeSet<&Location> =
            self.nodes.iter().map(|(_, l)| l).collect();
        format!(
            "nodes={} zones={} regions={} rf={} other_zone_replicas={} other_region_replicas={} safety_s={} liveness_s={}",
            self.nodes.len(),
            zones.len(),
            regions.len(),
            self.replication_factor,
            self.strategy.other_zone_replicas,
            self.strategy.other_region_replicas,
            self.safety_micros as f64 / 1e6,
            self.liveness_micros as f64 / 1e6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(zones: usize, nodes_per_zone: usize) -> Vec<(NodeId, Location)> {
        // Nodes numbered zone by zone, as the simulator numbers them.
        (0..zones * nodes_per_zone)
            .map(|index| {
                let zone = index / nodes_per_zone + 1;
                (
                    NodeId(index as u32 + 1),
                    Location::new("r1", format!("z{zone}")),
                )
            })
            .collect()
    }

    #[test]
    fn five_replicas_over_three_zones_keep_a_quorum_without_any_zone() {
        let nodes = cluster(3, 2);
        let partitions = PartitionsRun {
            count: 12,
            replicas: 5,
            tick_micros: 10_000,
            raft: RaftConfig::default(),
            checkpoint_applied_entries: 256,
            log_catch_up_entries: 64,
            acknowledge_before_sync: false,
            apply_command_copies: false,
            split_batches: false,
            skip_log_sync: false,
            poison_on_missing_key: false,
            named: false,
        };
        for partition in 0..partitions.count {
            let voters = partitions.voters(partition, &nodes);
            assert_eq!(voters.len(), 5);
            for zone in ["z1", "z2", "z3"] {
                let in_zone = voters
                    .iter()
                    .filter(|voter| {
                        nodes
                            .iter()
                            .any(|(id, location)| id == *voter && location.zone == zone)
                    })
                    .count();
                assert!(
                    in_zone <= 2,
                    "partition {partition}: {in_zone} voters in {zone}"
                );
            }
        }
    }
}

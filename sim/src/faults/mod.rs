//! Fault injectors: what a scenario's `[[fault]]` entries do to the world, and healing.
//!
//! Faults run only in the safety phase. Continuous faults (flaky links, disk corruption,
//! fsync failures, torn writes, clock skew) are on from the start; episodic ones (crashes,
//! partitions, outages, clock jumps, pauses) occur every
//! `every_ms`, each occurrence drawing its own duration and victims. At the heal every cut
//! link is restored, every down node restarted, every pause ended and disk and link faults
//! switched off; clock skew stays, as real clocks stay skewed.
//!
//! Injectors only change the world; checkers (`crate::checkers`) judge the outcome.

pub mod garbage;
mod membership;
pub mod nodes;

use crate::disk::DiskFaults;
use crate::network::FlakyLinks;
use crate::scenario::{Drawn, FaultKind, FaultSection};
use crate::world::{Event, World};
use borough::ids::NodeId;
use borough::partition::PartitionId;
use borough::raft::Role;
use borough::seams::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// Files the corruption and torn-write faults target: the log, whose checksums must catch them.
/// The embedded engine's file sees crashes (unsynced writes lost) but no bit flips.
const LOG_SUFFIX: &str = ".wal";

#[derive(Debug, Default)]
pub struct FaultState {
    /// Nodes down because of a crash fault (bounded by `max_nodes`).
    pub crashed_by_fault: BTreeSet<NodeId>,
    pub occurrences: u64,
    /// Per bit-rot fault (by index), the nodes whose disks rot.
    pub rot_victims: BTreeMap<usize, Vec<NodeId>>,
    pub bits_rotted: u64,
    /// Rolling restarts: the next node (by position) and the one restarting now.
    pub rolling_next: usize,
    pub rolling_down: Option<NodeId>,
    pub rolling_restarts: u64,
    /// Membership changes: per partition, the voters being moved out (demoted, to remove).
    pub leaving: BTreeMap<u64, BTreeSet<NodeId>>,
    pub membership_changes: u64,
    pub snapshot_crashes: u64,
    /// The crash-after-vote fault (by index) waiting for the next granted vote.
    pub crash_after_vote_armed: Option<usize>,
    pub vote_crashes: u64,
    /// The crash-after-first-commit fault (by index) waiting for a leader's first commit.
    pub crash_after_first_commit_armed: Option<usize>,
    /// Per (partition, leader, term): the commit index its first append of the term carried.
    pub commit_at_term_start: BTreeMap<(PartitionId, NodeId, u64), u64>,
    pub first_commit_crashes: u64,
    /// The crash-during-sync fault (by index) waiting for the next flush.
    pub crash_during_sync_armed: Option<usize>,
    pub sync_crashes: u64,
    /// Cut-off leaders whose timers stalled (`stall_timers`).
    pub timer_stalls: u64,
}

/// How an episodic fault ends.
#[derive(Debug)]
pub enum FaultEnd {
    Reconnect {
        group: BTreeSet<NodeId>,
        both_ways: bool,
    },
    Restart {
        nodes: Vec<NodeId>,
    },
    /// Not an end but a start scheduled for the current instant: power loss of `node` once
    /// the step that armed it is over (its outputs already out).
    CrashNow {
        node: NodeId,
    },
    Unpause {
        node: NodeId,
    },
    RestoreLinks {
        links: Vec<(NodeId, NodeId)>,
    },
    /// A rolling restart's node, its leaderships moved away, stops now and restarts after
    /// `down_micros`.
    StopAfterDrain {
        node: NodeId,
        down_micros: u64,
        power_loss: bool,
    },
}

/// The up node that leads the most Raft partitions, if any leads one.
fn busiest_leader(world: &World) -> Option<NodeId> {
    let mut best: Option<(usize, NodeId)> = None;
    for node in &world.nodes {
        let Some(host) = node.node().and_then(|node| node.partitions()) else {
            continue;
        };
        let led = host
            .partitions()
            .filter(|partition| {
                host.status(*partition)
                    .is_some_and(|status| status.role == borough::raft::Role::Leader)
            })
            .count();
        if led > 0 && best.is_none_or(|(most, _)| led > most) {
            best = Some((led, node.id));
        }
    }
    best.map(|(_, id)| id)
}

pub fn start(world: &mut World) {
    world.garbage.active = world
        .config
        .faults
        .iter()
        .any(|fault| fault.kind == FaultKind::GarbagePeer);
    let mut base = DiskFaults::none();
    base.target_suffixes = vec![LOG_SUFFIX.to_string()];
    let mut disk_faults = vec![base; world.nodes.len()];
    let faults = world.config.faults.clone();
    // Disk faults hit every node, or the first `nodes` of one order drawn here (so faults
    // with the same `nodes` hit the same replicas).
    let disk_order: Vec<usize> = if faults
        .iter()
        .any(|fault| fault.kind.is_disk_fault() && fault.nodes.is_some())
    {
        let everyone = world.node_ids();
        shuffled(world, &everyone)
            .iter()
            .map(|id| world.index_of(*id))
            .collect()
    } else {
        Vec::new()
    };
    for (index, fault) in faults.iter().enumerate() {
        let victims: Vec<usize> = match (fault.kind.is_disk_fault(), fault.nodes) {
            (true, Some(count)) => disk_order.iter().copied().take(count as usize).collect(),
            _ => (0..world.nodes.len()).collect(),
        };
        match fault.kind {
            FaultKind::FlakyLinks => {
                world.network.flaky = FlakyLinks {
                    loss_ratio: draw_ratio(world, fault.loss_ratio),
                    duplicate_ratio: draw_ratio(world, fault.duplicate_ratio),
                    extra_delay_micros_max: fault
                        .delay_ms
                        .map_or(0, |delay| delay.draw(&mut world.rng) * 1000),
                };
            }
            FaultKind::DiskCorruption => {
                let ratio = draw_ratio(world, fault.read_corruption_ratio);
                for victim in &victims {
                    disk_faults[*victim].read_corruption_ratio = ratio;
                }
            }
            FaultKind::FsyncFailure => {
                let ratio = draw_ratio(world, fault.sync_failure_ratio);
                for victim in &victims {
                    disk_faults[*victim].sync_failure_ratio = ratio;
                }
            }
            FaultKind::TornWrites => {
                for victim in &victims {
                    disk_faults[*victim].torn_writes = true;
                }
            }
            FaultKind::BitRot => {
                let ids = victims
                    .iter()
                    .map(|victim| world.nodes[*victim].id)
                    .collect();
                world.fault_state.rot_victims.insert(index, ids);
            }
            FaultKind::ClockSkew => {
                let offset_max = fault
                    .offset_ms
                    .map_or(0, |offset| offset.draw(&mut world.rng) * 1000)
                    as i64;
                let drift_max = fault
                    .drift_ppm
                    .map_or(0, |drift| drift.draw(&mut world.rng))
                    as i64;
                for node in 0..world.nodes.len() {
                    let offset = world.draw(0, 2 * offset_max as u64) as i64 - offset_max;
                    let drift = world.draw(0, 2 * drift_max as u64) as i64 - drift_max;
                    world.nodes[node].skew.offset_micros.set(offset);
                    world.nodes[node].skew.drift_ppm = drift;
                }
            }
            _ => {}
        }
        if let Some(every) = fault.every_ms {
            let at = every.draw(&mut world.rng) * 1000;
            world.schedule(at, Event::Fault { index });
        }
    }
    for (node, faults) in disk_faults.into_iter().enumerate() {
        world.set_node_disk_faults(node, faults);
    }
}

fn draw_ratio(world: &mut World, ratio: Option<Drawn<f64>>) -> f64 {
    ratio.map_or(0.0, |ratio| ratio.draw(&mut world.rng))
}

fn duration_micros(world: &mut World, fault: &FaultSection, default_ms: u64) -> u64 {
    fault
        .duration_ms
        .unwrap_or(Drawn::Fixed(default_ms))
        .draw(&mut world.rng)
        * 1000
}

/// `voter` just sent a granted Raft vote in `partition` and `term` (it is durable: votes go
/// out after the round's sync). An armed crash-after-vote fault cuts its power at once, before
/// anything else reaches it, so its restart must remember the vote. It waits for a vote that
/// hurts: one granted while another candidate campaigns in the same term, whose request may
/// reach the voter once it is back.
pub fn vote_granted(world: &mut World, voter: NodeId, partition: PartitionId, term: u64) {
    let Some(index) = world.fault_state.crash_after_vote_armed else {
        return;
    };
    if world.healed || world.fault_state.crashed_by_fault.contains(&voter) {
        return;
    }
    let rival_candidates = world
        .nodes
        .iter()
        .filter_map(|node| node.node()?.partitions()?.status(partition))
        .filter(|status| status.role == Role::Candidate && status.term == term)
        .count();
    if rival_candidates < 2 {
        return;
    }
    let fault = world.config.faults[index].clone();
    if world.fault_state.crashed_by_fault.len() >= fault.max_nodes.unwrap_or(1) as usize {
        return;
    }
    world.fault_state.crash_after_vote_armed = None;
    let now = world.now_micros();
    let down = duration_micros(world, &fault, 50);
    tracing::info!(node = %voter, down_ms = down / 1000, "fault: crash right after a vote");
    world.trace.record(now, "vote_crash", voter.0 as u64, down);
    world.fault_state.crashed_by_fault.insert(voter);
    world.fault_state.vote_crashes += 1;
    world.schedule(now, Event::FaultEnd(FaultEnd::CrashNow { node: voter }));
    world.schedule(
        now + down,
        Event::FaultEnd(FaultEnd::Restart { nodes: vec![voter] }),
    );
}

/// Node `index` is about to flush its staged writes. An armed crash-during-sync fault takes
/// it: its process dies at the flush's first sync (the writes issued, none synced), and the
/// world then cuts its power. Returns whether the fault took this flush.
pub fn arm_crash_during_sync(world: &mut World, index: usize) -> bool {
    let Some(fault_index) = world.fault_state.crash_during_sync_armed else {
        return false;
    };
    let id = world.nodes[index].id;
    if world.healed || world.fault_state.crashed_by_fault.contains(&id) {
        return false;
    }
    let fault = &world.config.faults[fault_index];
    if world.fault_state.crashed_by_fault.len() >= fault.max_nodes.unwrap_or(1) as usize {
        return false;
    }
    let Some(process_disk) = &world.nodes[index].process_disk else {
        return false;
    };
    process_disk.die_at_next_sync();
    world.fault_state.crash_during_sync_armed = None;
    true
}

/// The flush armed by `arm_crash_during_sync` ran: if its process died at a sync, cut the
/// node's power now, before anything it did in that step leaves it (it died mid-step), and
/// restart it later. A flush that never synced leaves the fault armed for the next.
pub fn after_flush_armed(world: &mut World, index: usize, fault_index: usize) -> bool {
    let died = world.nodes[index]
        .process_disk
        .as_ref()
        .is_some_and(|disk| disk.died_at_sync());
    if !died {
        if let Some(process_disk) = &world.nodes[index].process_disk {
            process_disk.disarm();
        }
        world.fault_state.crash_during_sync_armed = Some(fault_index);
        return false;
    }
    let fault = world.config.faults[fault_index].clone();
    let id = world.nodes[index].id;
    let now = world.now_micros();
    let down = duration_micros(world, &fault, 200);
    tracing::info!(node = %id, down_ms = down / 1000, "fault: crash during a sync");
    world.trace.record(now, "sync_crash", id.0 as u64, down);
    world.fault_state.sync_crashes += 1;
    cut_power_until_restart(world, index, now + down);
    true
}

/// A crash fault cuts node `index`'s power now and holds it down (counted against the crash
/// faults' `max_nodes`) until `restart_at_micros`.
fn cut_power_until_restart(world: &mut World, index: usize, restart_at_micros: u64) {
    let id = world.nodes[index].id;
    world.crash_node(index);
    world.fault_state.crashed_by_fault.insert(id);
    world.schedule(
        restart_at_micros,
        Event::FaultEnd(FaultEnd::Restart { nodes: vec![id] }),
    );
}

/// `leader` sent an append in `partition` and `term` carrying `leader_commit`. The first one of
/// its term sets the commit index it inherited; the first to carry more is its first commit
/// as leader, and an armed crash-after-first-commit fault cuts its power right then, before
/// its followers hear more (they may hold the entries it committed and not its own).
pub fn leader_appended(
    world: &mut World,
    leader: NodeId,
    partition: PartitionId,
    term: u64,
    leader_commit: u64,
) {
    if !world
        .config
        .faults
        .iter()
        .any(|fault| fault.kind == FaultKind::CrashAfterFirstCommit)
    {
        return;
    }
    let inherited = *world
        .fault_state
        .commit_at_term_start
        .entry((partition, leader, term))
        .or_insert(leader_commit);
    let Some(index) = world.fault_state.crash_after_first_commit_armed else {
        return;
    };
    if leader_commit <= inherited
        || world.healed
        || world.fault_state.crashed_by_fault.contains(&leader)
    {
        return;
    }
    let fault = world.config.faults[index].clone();
    if world.fault_state.crashed_by_fault.len() >= fault.max_nodes.unwrap_or(1) as usize {
        return;
    }
    // Seen once per term: a later commit of the same leader is not its first.
    world
        .fault_state
        .commit_at_term_start
        .insert((partition, leader, term), u64::MAX);
    world.fault_state.crash_after_first_commit_armed = None;
    let now = world.now_micros();
    let down = duration_micros(world, &fault, 50);
    tracing::info!(node = %leader, %partition, term, leader_commit, "fault: crash a new leader at its first commit");
    world
        .trace
        .record(now, "first_commit_crash", leader.0 as u64, down);
    world.fault_state.crashed_by_fault.insert(leader);
    world.fault_state.first_commit_crashes += 1;
    world.schedule(now, Event::FaultEnd(FaultEnd::CrashNow { node: leader }));
    world.schedule(
        now + down,
        Event::FaultEnd(FaultEnd::Restart {
            nodes: vec![leader],
        }),
    );
}

/// One occurrence of episodic fault `index`; schedules the next.
pub fn occur(world: &mut World, index: usize) {
    if world.healed {
        return;
    }
    let fault = world.config.faults[index].clone();
    let now = world.now_micros();
    if let Some(every) = fault.every_ms {
        let next = now + every.draw(&mut world.rng).max(1) * 1000;
        if next < world.config.safety_micros {
            world.schedule(next, Event::Fault { index });
        }
    }
    world.fault_state.occurrences += 1;
    let everyone = world.node_ids();
    match fault.kind {
        FaultKind::Crash => {
            let max_nodes = fault.max_nodes.unwrap_or(1) as usize;
            if world.fault_state.crashed_by_fault.len() >= max_nodes {
                return;
            }
            let Some(victim) = pick_up_node(world) else {
                return;
            };
            let id = world.nodes[victim].id;
            let down = duration_micros(world, &fault, 1_000);
            tracing::info!(node = %id, down_ms = down / 1000, "fault: crash");
            cut_power_until_restart(world, victim, now + down);
        }
        FaultKind::Partition | FaultKind::OneWayPartition => {
            let size = world.draw(1, everyone.len().saturating_sub(1).max(1) as u64) as usize;
            let group = pick_group(world, &everyone, size);
            let both_ways = fault.kind == FaultKind::Partition;
            tracing::info!(?group, both_ways, "fault: partition");
            isolate(world, group, both_ways, &fault);
        }
        FaultKind::IsolateLeader | FaultKind::OneWayIsolateLeader => {
            // The node that leads the most partitions (lowest id on ties): the nemesis goes
            // for the leader, where random partitions mostly hit followers.
            let Some(leader) = busiest_leader(world) else {
                return;
            };
            let both_ways = fault.kind == FaultKind::IsolateLeader;
            let stall_timers = fault.stall_timers.unwrap_or(false);
            tracing::info!(%leader, both_ways, stall_timers, "fault: isolate the leader");
            let until = isolate(world, [leader].into_iter().collect(), both_ways, &fault);
            if stall_timers {
                let index = world.index_of(leader);
                world.nodes[index].timers_stalled_until = until;
                world.fault_state.timer_stalls += 1;
            }
        }
        FaultKind::ZoneOutage | FaultKind::RegionOutage => {
            let places: BTreeSet<(String, String)> = world
                .nodes
                .iter()
                .map(|node| {
                    let zone = if fault.kind == FaultKind::ZoneOutage {
                        node.location.zone.clone()
                    } else {
                        String::new()
                    };
                    (node.location.region.clone(), zone)
                })
                .collect();
            let places: Vec<(String, String)> = places.into_iter().collect();
            let chosen = places[world.draw(0, places.len() as u64 - 1) as usize].clone();
            let group: BTreeSet<NodeId> = world
                .nodes
                .iter()
                .filter(|node| {
                    node.location.region == chosen.0
                        && (chosen.1.is_empty() || node.location.zone == chosen.1)
                })
                .map(|node| node.id)
                .collect();
            tracing::info!(region = %chosen.0, zone = %chosen.1, ?group, "fault: outage");
            if fault.power_loss.unwrap_or(false) {
                let down = duration_micros(world, &fault, 3_000);
                for node in &group {
                    let index = world.index_of(*node);
                    world.crash_node(index);
                }
                world.schedule(
                    now + down,
                    Event::FaultEnd(FaultEnd::Restart {
                        nodes: group.into_iter().collect(),
                    }),
                );
            } else {
                isolate(world, group, true, &fault);
            }
        }
        FaultKind::ClockJump => {
            let victim = world.draw(0, world.nodes.len() as u64 - 1) as usize;
            let jump_max = fault
                .jump_ms
                .unwrap_or(Drawn::Fixed(1_000))
                .draw(&mut world.rng) as i64
                * 1000;
            let jump = world.draw(0, 2 * jump_max as u64) as i64 - jump_max;
            let offset = &world.nodes[victim].skew.offset_micros;
            offset.set(offset.get() + jump);
            tracing::info!(node = %world.nodes[victim].id, jump_ms = jump / 1000, "fault: clock jump");
            world.trace.record(
                now,
                "clock_jump",
                world.nodes[victim].id.0 as u64,
                jump as u64,
            );
            world.reschedule_timer(victim);
        }
        FaultKind::Pause => {
            let Some(victim) = pick_up_node(world) else {
                return;
            };
            let pause = duration_micros(world, &fault, 500);
            world.nodes[victim].paused_until = now + pause;
            let id = world.nodes[victim].id;
            tracing::info!(node = %id, pause_ms = pause / 1000, "fault: pause");
            world.schedule(now + pause, Event::FaultEnd(FaultEnd::Unpause { node: id }));
        }
        FaultKind::RollingRestart => rolling_restart(world, &fault),
        FaultKind::MajoritiesRing | FaultKind::Bridge => {
            let links = if fault.kind == FaultKind::MajoritiesRing {
                majorities_ring_links(world)
            } else {
                bridge_links(world)
            };
            if links.is_empty() {
                return;
            }
            tracing::info!(kind = ?fault.kind, cut_links = links.len(), "fault: non-transitive partition");
            for (from, to) in &links {
                world.network.cut(*from, *to);
            }
            world
                .trace
                .record(now, "cut_links", links.len() as u64, fault.kind as u64);
            let at = now + duration_micros(world, &fault, 2_000);
            world.schedule(at, Event::FaultEnd(FaultEnd::RestoreLinks { links }));
        }
        FaultKind::BitRot => {
            let victims = world.fault_state.rot_victims[&index].clone();
            if victims.is_empty() {
                return;
            }
            let victim = victims[world.draw(0, victims.len() as u64 - 1) as usize];
            let node = world.index_of(victim);
            if let Some((file, bit)) = world.nodes[node].disk.rot() {
                tracing::info!(node = %victim, %file, bit, "fault: bit rot");
                world.trace.record(now, "rot", victim.0 as u64, bit);
                world.fault_state.bits_rotted += 1;
            }
        }
        FaultKind::MembershipChange => crate::faults::membership::step(world),
        FaultKind::GarbagePeer => garbage::occur(world),
        FaultKind::CrashAfterVote => world.fault_state.crash_after_vote_armed = Some(index),
        FaultKind::CrashDuringSync => world.fault_state.crash_during_sync_armed = Some(index),
        FaultKind::CrashAfterFirstCommit => {
            world.fault_state.crash_after_first_commit_armed = Some(index)
        }
        FaultKind::CrashDuringSnapshot => {
            let max_nodes = fault.max_nodes.unwrap_or(1) as usize;
            if world.fault_state.crashed_by_fault.len() >= max_nodes {
                return;
            }
            let receiving: Vec<usize> = (0..world.nodes.len())
                .filter(|node| {
                    world.nodes[*node]
                        .node()
                        .and_then(|node| node.partitions())
                        .is_some_and(|host| host.is_receiving_snapshot())
                })
                .collect();
            if receiving.is_empty() {
                return;
            }
            let victim = receiving[world.draw(0, receiving.len() as u64 - 1) as usize];
            let id = world.nodes[victim].id;
            let down = duration_micros(world, &fault, 1_000);
            tracing::info!(node = %id, down_ms = down / 1000, "fault: crash while receiving a snapshot");
            world.fault_state.snapshot_crashes += 1;
            cut_power_until_restart(world, victim, now + down);
        }
        FaultKind::FlakyLinks
        | FaultKind::DiskCorruption
        | FaultKind::FsyncFailure
        | FaultKind::TornWrites
        | FaultKind::ClockSkew => {}
    }
}

/// One step of a rolling restart: the next node in order goes down (after its leaderships
/// moved away, with `drain_leaders`) once the previous one is back.
fn rolling_restart(world: &mut World, fault: &FaultSection) {
    if let Some(previous) = world.fault_state.rolling_down {
        if !world.nodes[world.index_of(previous)].is_up() {
            return;
        }
    }
    let index = world.fault_state.rolling_next % world.nodes.len();
    world.fault_state.rolling_next += 1;
    if !world.nodes[index].is_up() {
        return;
    }
    let id = world.nodes[index].id;
    let down_micros = duration_micros(world, fault, 1_000);
    let power_loss = fault.power_loss.unwrap_or(false);
    world.fault_state.rolling_down = Some(id);
    world.fault_state.rolling_restarts += 1;
    let now = world.now_micros();
    let drain_micros = if fault.drain_leaders.unwrap_or(false) {
        let transfers = drain_leaderships(world, index);
        tracing::info!(node = %id, transfers, "fault: rolling restart, draining leaderships");
        world.config.partitions.as_ref().map_or(0, |partitions| {
            partitions.tick_micros * u64::from(partitions.raft.election_timeout_ticks)
        })
    } else {
        0
    };
    world.schedule(
        now + drain_micros,
        Event::FaultEnd(FaultEnd::StopAfterDrain {
            node: id,
            down_micros,
            power_loss,
        }),
    );
}

/// Asks node `index` to hand each partition it leads to another up voter; returns how many
/// transfers it started.
fn drain_leaderships(world: &mut World, index: usize) -> usize {
    let id = world.nodes[index].id;
    let Some(host) = world.nodes[index].node().and_then(|node| node.partitions()) else {
        return 0;
    };
    let mut transfers = Vec::new();
    for partition in host.partitions() {
        let Some(status) = host.status(partition) else {
            continue;
        };
        if status.role != borough::raft::Role::Leader {
            continue;
        }
        let target = status
            .configuration
            .voters
            .iter()
            .copied()
            .find(|voter| *voter != id && world.nodes[world.index_of(*voter)].is_up());
        if let Some(target) = target {
            transfers.push((partition, target));
        }
    }
    let count = transfers.len();
    world.with_node(index, |node| {
        for (partition, target) in transfers {
            // A refusal (a membership change in flight) only leaves this leader in place.
            let _ = node.partition_transfer_leadership(partition, target);
        }
    });
    count
}

/// Nodes in a random ring, each cut (both ways) from those farther than its `reach` nearest
/// on either side, where `reach` is the least that still lets each node see a majority.
fn majorities_ring_links(world: &mut World) -> Vec<(NodeId, NodeId)> {
    let everyone = world.node_ids();
    let ring = shuffled(world, &everyone);
    ring_links(&ring)
}

fn ring_links(ring: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let count = ring.len();
    let majority = count / 2 + 1;
    let reach = (majority - 1).div_ceil(2);
    let mut links = Vec::new();
    for (position, from) in ring.iter().enumerate() {
        for (other, to) in ring.iter().enumerate() {
            let apart = position.abs_diff(other);
            let distance = apart.min(count - apart);
            if distance > reach {
                links.push((*from, *to));
            }
        }
    }
    links
}

/// One random node bridges two halves that are cut from each other (both ways).
fn bridge_links(world: &mut World) -> Vec<(NodeId, NodeId)> {
    let everyone = world.node_ids();
    if everyone.len() < 3 {
        return Vec::new();
    }
    let order = shuffled(world, &everyone);
    halves_links(&order)
}

/// `order[0]` bridges the halves of the rest.
fn halves_links(order: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let half = (order.len() - 1) / 2;
    let (left, right) = order[1..].split_at(half);
    let mut links = Vec::new();
    for a in left {
        for b in right {
            links.push((*a, *b));
            links.push((*b, *a));
        }
    }
    links
}

fn shuffled(world: &mut World, nodes: &[NodeId]) -> Vec<NodeId> {
    let mut pool = nodes.to_vec();
    let mut order = Vec::with_capacity(pool.len());
    while !pool.is_empty() {
        let pick = world.rng.below(pool.len() as u64) as usize;
        order.push(pool.swap_remove(pick));
    }
    order
}

/// Cuts `group` off and schedules the reconnection; returns when it is due.
fn isolate(
    world: &mut World,
    group: BTreeSet<NodeId>,
    both_ways: bool,
    fault: &FaultSection,
) -> u64 {
    let everyone = world.node_ids();
    let duration = duration_micros(world, fault, 2_000);
    world.network.isolate(&group, &everyone, both_ways);
    world.trace.record(
        world.now_micros(),
        "isolate",
        group.iter().map(|node| 1u64 << (node.0 % 64)).sum(),
        both_ways as u64,
    );
    let at = world.now_micros() + duration;
    world.schedule(
        at,
        Event::FaultEnd(FaultEnd::Reconnect { group, both_ways }),
    );
    at
}

pub fn end(world: &mut World, end: FaultEnd) {
    if world.healed {
        return; // the heal already undid everything
    }
    match end {
        FaultEnd::Reconnect { group, both_ways } => {
            let everyone = world.node_ids();
            world.network.reconnect(&group, &everyone, both_ways);
        }
        FaultEnd::Restart { nodes } => {
            for node in nodes {
                world.fault_state.crashed_by_fault.remove(&node);
                let index = world.index_of(node);
                if !world.nodes[index].is_up() {
                    world.start_node(index);
                }
            }
        }
        FaultEnd::CrashNow { node } => {
            let index = world.index_of(node);
            world.crash_node(index);
        }
        FaultEnd::Unpause { .. } => {}
        FaultEnd::RestoreLinks { links } => {
            for (from, to) in links {
                world.network.uncut(from, to);
            }
        }
        FaultEnd::StopAfterDrain {
            node,
            down_micros,
            power_loss,
        } => {
            let index = world.index_of(node);
            if power_loss {
                world.crash_node(index);
            } else {
                world.stop_process(index);
            }
            let at = world.now_micros() + down_micros;
            world.schedule(at, Event::FaultEnd(FaultEnd::Restart { nodes: vec![node] }));
        }
    }
}

/// The end of the safety phase: every fault is healed at once.
pub fn heal(world: &mut World) {
    tracing::info!("heal: faults off, liveness phase begins");
    world.healed = true;
    world.network.heal();
    world.set_disk_faults(DiskFaults::none());
    world.trace.record(world.now_micros(), "heal", 0, 0);
    for index in 0..world.nodes.len() {
        world.nodes[index].paused_until = 0;
        world.nodes[index].timers_stalled_until = 0;
        if !world.nodes[index].is_up() {
            world.start_node(index);
        }
    }
    world.fault_state.crashed_by_fault.clear();
    world.fault_state.rolling_down = None;
}

fn pick_up_node(world: &mut World) -> Option<usize> {
    let up: Vec<usize> = (0..world.nodes.len())
        .filter(|index| world.nodes[*index].is_up())
        .collect();
    if up.is_empty() {
        return None;
    }
    Some(up[world.draw(0, up.len() as u64 - 1) as usize])
}

fn pick_group(world: &mut World, everyone: &[NodeId], size: usize) -> BTreeSet<NodeId> {
    let mut pool = everyone.to_vec();
    let mut group = BTreeSet::new();
    while group.len() < size && !pool.is_empty() {
        let pick = world.rng.below(pool.len() as u64) as usize;
        group.insert(pool.swap_remove(pick));
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which nodes each node still reaches (itself included) once `links` are cut.
    fn reach(everyone: &[NodeId], links: &[(NodeId, NodeId)]) -> Vec<BTreeSet<NodeId>> {
        everyone
            .iter()
            .map(|from| {
                everyone
                    .iter()
                    .copied()
                    .filter(|to| from == to || !links.contains(&(*from, *to)))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_majorities_ring_leaves_every_node_a_majority_but_not_the_same_one() {
        for count in [4u32, 5, 6, 7] {
            let everyone: Vec<NodeId> = (1..=count).map(NodeId).collect();
            let ring: Vec<NodeId> = everyone.clone();
            let majority = everyone.len() / 2 + 1;
            let links = ring_links(&ring);
            assert!(!links.is_empty());
            let seen = reach(&everyone, &links);
            assert!(
                seen.iter().all(|set| set.len() >= majority),
                "{count}: {seen:?}"
            );
            let distinct: BTreeSet<&BTreeSet<NodeId>> = seen.iter().collect();
            assert!(
                distinct.len() > 1,
                "{count}: every node sees the same majority"
            );
        }
    }

    #[test]
    fn a_bridge_node_reaches_both_halves_and_each_half_with_it_is_a_majority() {
        for count in [3u32, 5, 6, 7] {
            let order: Vec<NodeId> = (1..=count).map(NodeId).collect();
            let links = halves_links(&order);
            let seen = reach(&order, &links);
            assert_eq!(seen[0].len(), order.len(), "the bridge reaches everyone");
            assert!(seen[1..].iter().all(|set| set.len() < order.len()));
            if count % 2 == 1 {
                // Odd clusters: both halves with the bridge are majorities.
                let majority = order.len() / 2 + 1;
                assert!(
                    seen.iter().all(|set| set.len() >= majority),
                    "{count}: {seen:?}"
                );
            }
        }
    }
}

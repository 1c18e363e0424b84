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

use crate::disk::DiskFaults;
use crate::network::FlakyLinks;
use crate::scenario::{Drawn, FaultKind, FaultSection};
use crate::world::{Event, World};
use borough::ids::NodeId;
use borough::seams::Rng;
use std::collections::BTreeSet;

/// Files the corruption and torn-write faults target: the log, whose checksums must catch them.
/// The embedded engine's file sees crashes (unsynced writes lost) but no bit flips.
const LOG_SUFFIX: &str = ".wal";

#[derive(Debug, Default)]
pub struct FaultState {
    /// Nodes down because of a crash fault (bounded by `max_nodes`).
    pub crashed_by_fault: BTreeSet<NodeId>,
    pub occurrences: u64,
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
    Unpause {
        node: NodeId,
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
    let mut disk_faults = DiskFaults::none();
    disk_faults.target_suffixes = vec![LOG_SUFFIX.to_string()];
    let faults = world.config.faults.clone();
    for (index, fault) in faults.iter().enumerate() {
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
                disk_faults.read_corruption_ratio = draw_ratio(world, fault.read_corruption_ratio)
            }
            FaultKind::FsyncFailure => {
                disk_faults.sync_failure_ratio = draw_ratio(world, fault.sync_failure_ratio)
            }
            FaultKind::TornWrites => disk_faults.torn_writes = true,
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
    world.set_disk_faults(disk_faults);
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
            world.crash_node(victim);
            world.fault_state.crashed_by_fault.insert(id);
            world.schedule(
                now + down,
                Event::FaultEnd(FaultEnd::Restart { nodes: vec![id] }),
            );
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
            tracing::info!(%leader, both_ways, "fault: isolate the leader");
            isolate(world, [leader].into_iter().collect(), both_ways, &fault);
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
        FaultKind::FlakyLinks
        | FaultKind::DiskCorruption
        | FaultKind::FsyncFailure
        | FaultKind::TornWrites
        | FaultKind::ClockSkew => {}
    }
}

fn isolate(world: &mut World, group: BTreeSet<NodeId>, both_ways: bool, fault: &FaultSection) {
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
        FaultEnd::Unpause { .. } => {}
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
        if !world.nodes[index].is_up() {
            world.start_node(index);
        }
    }
    world.fault_state.crashed_by_fault.clear();
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

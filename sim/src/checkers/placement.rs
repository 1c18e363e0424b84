//! Checkers of partitions moving between nodes (runs with `[membership]`, or any run of named
//! partitions for the first).
//!
//! - `placement_converged`, at the end of the healed phase: every partition settled on the
//!   ring's replica set of the active members (`min(replicas, active)` of them, spread over
//!   `min(replicas, zones)` zones), its group's voters are exactly those nodes with no
//!   learner left, no other running node holds a replica of it, and every node asked to
//!   drain stopped;
//! - `caught_up_promotions`, after every step: a leader promotes a learner only once the
//!   learner's log reached its commit index, less [`PROMOTION_LAG_ENTRIES_MAX`];
//! - `joint_consensus`, after every step: a leader appends a configuration change only once
//!   the previous one committed (a joint configuration is left only once it committed);
//! - `requests_succeed` (when the scenario asks for it): every kv request got a definite
//!   answer, none was refused, and none took longer than the scenario's bound.

use crate::checkers::Checker;
use crate::world::{Violation, World};
use borough::directory::{Directory, MemberState, SYSTEM_PARTITION};
use borough::ids::NodeId;
use borough::raft::{ConfigChange, EntryKind, Role};
use std::collections::BTreeSet;

/// How far behind the leader's commit index a learner may be when it is promoted: the
/// placement driver promises 8 entries; the rule is judged here on its own terms.
pub const PROMOTION_LAG_ENTRIES_MAX: u64 = 8;
/// Violations of one kind reported per run: the first few say it all.
const REPORTS_MAX: usize = 5;

/// The directory as the running node that applied the most of it knows it.
pub fn freshest_directory(world: &World) -> Option<Directory> {
    world
        .nodes
        .iter()
        .filter_map(|sim_node| {
            let node = sim_node.node()?;
            let applied = node.partitions()?.status(SYSTEM_PARTITION)?.applied;
            Some((applied, node.directory()?.clone()))
        })
        .max_by_key(|(applied, _)| *applied)
        .map(|(_, directory)| directory)
}

pub fn check_converged(world: &mut World) {
    let named = world
        .config
        .partitions
        .as_ref()
        .is_some_and(|partitions| partitions.named);
    if !named {
        return;
    }
    let Some(directory) = freshest_directory(world) else {
        return;
    };
    let mut problems = Vec::new();
    let active: Vec<_> = directory
        .members()
        .filter(|member| member.state == MemberState::Active)
        .collect();
    let zones: BTreeSet<_> = active.iter().map(|member| &member.location).collect();
    let replicas = directory
        .settings()
        .map_or(0, |settings| usize::from(settings.replicas));
    for entry in directory.partitions() {
        let name = &entry.name;
        if entry.is_moving() {
            problems.push(format!(
                "{name} is still moving away from {:?}",
                entry.previous
            ));
        }
        let ring = directory.ring_replicas(name);
        if entry.replicas != ring {
            problems.push(format!(
                "{name} is on {:?}, the ring says {ring:?}",
                entry.replicas
            ));
        }
        if entry.replicas.len() != replicas.min(active.len()) {
            problems.push(format!(
                "{name} has {} replicas with {} active members",
                entry.replicas.len(),
                active.len()
            ));
        }
        let entry_zones: BTreeSet<_> = entry
            .replicas
            .iter()
            .filter_map(|node| directory.member(*node).map(|member| &member.location))
            .collect();
        if entry_zones.len() < replicas.min(zones.len()) {
            problems.push(format!(
                "{name} spans {} zones of {}",
                entry_zones.len(),
                zones.len()
            ));
        }
        let wanted: BTreeSet<NodeId> = entry.replicas.iter().copied().collect();
        let mut leader_configuration = None;
        for sim_node in &world.nodes {
            let Some(host) = sim_node.node().and_then(|node| node.partitions()) else {
                continue;
            };
            let Some(group) = host.group(entry.id) else {
                continue;
            };
            if !wanted.contains(&sim_node.id) {
                problems.push(format!(
                    "{} still holds a replica of {name}, which settled on {:?}",
                    sim_node.id, entry.replicas
                ));
            }
            if group.role() == Role::Leader {
                leader_configuration = Some(group.configuration().clone());
            }
        }
        match leader_configuration {
            Some(configuration) => {
                if configuration.voters != wanted || !configuration.learners.is_empty() {
                    problems.push(format!(
                        "{name}'s group runs on {configuration:?}, not {:?}",
                        entry.replicas
                    ));
                }
            }
            None => problems.push(format!("{name} has no leader")),
        }
    }
    for (node, _) in &world.nodes_state.draining {
        problems.push(format!("{node} was asked to drain and never stopped"));
    }
    let now = world.now_micros();
    for message in problems.into_iter().take(REPORTS_MAX) {
        world.violations.push(Violation {
            at_micros: now,
            checker: Checker::PlacementConverged,
            message,
        });
    }
}

/// After a node's step: the promotions its leaders appended since the last look.
pub fn after_node_step(world: &mut World, index: usize) {
    if world.config.membership.is_none() {
        return;
    }
    let id = world.nodes[index].id;
    let mut offences = Vec::new();
    let mut joint_offences = Vec::new();
    let mut seen = Vec::new();
    if let Some(host) = world.nodes[index].node().and_then(|node| node.partitions()) {
        for &partition in host.leading() {
            let Some(group) = host.group(partition) else {
                continue;
            };
            if group.role() != Role::Leader {
                continue;
            }
            let log = group.log();
            let last = log.last_index();
            let key = (id, partition, group.term());
            let from = world
                .placement_watch
                .get(&key)
                .map_or(log.committed(), |seen| seen + 1)
                .max(log.snapshot_index() + 1);
            for index in from..=last {
                let Some(entry) = log.entry(index) else {
                    continue;
                };
                // Only what this leader appended: an earlier leader judged its own.
                if entry.term != group.term() {
                    continue;
                }
                let EntryKind::ConfigChange(change) = entry.kind else {
                    continue;
                };
                let committed = log.committed();
                let uncommitted_change = (committed + 1..index).find(|earlier| {
                    log.entry(*earlier)
                        .is_some_and(|earlier| matches!(earlier.kind, EntryKind::ConfigChange(_)))
                });
                if let Some(earlier) = uncommitted_change {
                    joint_offences.push(format!(
                        "{partition}: leader {id} appended {change:?} at entry {index} while the change at entry {earlier} was not committed (commit index {committed})"
                    ));
                }
                let ConfigChange::Promote(learner) = change else {
                    continue;
                };
                let matched = group.matched_index(learner).unwrap_or(0);
                if matched + PROMOTION_LAG_ENTRIES_MAX < committed {
                    offences.push(format!(
                        "{partition}: leader {id} promoted {learner} at entry {index} while the learner held up to {matched} of {committed} committed entries"
                    ));
                }
            }
            seen.push((key, last));
        }
    }
    for (key, last) in seen {
        world.placement_watch.insert(key, last);
    }
    let now = world.now_micros();
    let reports = offences
        .into_iter()
        .map(|message| (Checker::CaughtUpPromotions, message))
        .chain(
            joint_offences
                .into_iter()
                .map(|message| (Checker::JointConsensus, message)),
        );
    for (checker, message) in reports {
        if world.placement_reports >= REPORTS_MAX {
            break;
        }
        world.placement_reports += 1;
        world.violations.push(Violation {
            at_micros: now,
            checker,
            message,
        });
    }
}

/// Every kv request answered definitely, none refused, none slower than the bound.
pub fn check_requests(world: &mut World) {
    if !world.config.checks.every_request_succeeds {
        return;
    }
    let mut problems = Vec::new();
    let history = &world.kv_history;
    if history.refused > 0 {
        problems.push(format!("{} kv requests were refused", history.refused));
    }
    if !history.unanswered_reads.is_empty() {
        problems.push(format!(
            "{} kv reads got no answer",
            history.unanswered_reads.len()
        ));
    }
    let unknown = history.count(|record| {
        record.call.response == crate::checkers::atomicity::KvResponse::Indeterminate
    });
    if unknown > 0 {
        problems.push(format!("{unknown} kv writes ended without an outcome"));
    }
    if let Some(bound_ms) = world.config.checks.request_ms_max {
        let slowest = history
            .records
            .values()
            .filter_map(|record| Some(record.call.return_micros? - record.call.call_micros))
            .max()
            .unwrap_or(0);
        if slowest > bound_ms * 1000 {
            problems.push(format!(
                "the slowest kv request took {} ms, over the bound of {bound_ms} ms",
                slowest / 1000
            ));
        }
    }
    let now = world.now_micros();
    for message in problems {
        world.violations.push(Violation {
            at_micros: now,
            checker: Checker::RequestsSucceed,
            message,
        });
    }
}

/// The slowest kv request and how many were answered, for the run's figures.
pub fn request_figures(world: &World) -> (usize, u64) {
    let answered: Vec<u64> = world
        .kv_history
        .records
        .values()
        .filter_map(|record| Some(record.call.return_micros? - record.call.call_micros))
        .collect();
    (answered.len(), answered.into_iter().max().unwrap_or(0))
}

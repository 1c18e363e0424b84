//! The event store's guarantees, checked against every node's durable store after the run.
//!
//! - no acknowledged event is lost: each is on at least one node, unless at least as many
//!   replicas as its commit level counted were destroyed (no scenario destroys disks yet);
//! - write-once: every copy of a key holds the same bytes, the bytes the client put;
//! - replication factor restored: after healing, every acknowledged event is on at least RF
//!   nodes;
//! - placement: events put after healing (when every peer is reachable) sit where the strategy
//!   says: on their coordinator, and in as many other zones and regions as it asks and the
//!   cluster has;
//! - liveness: every put issued at least `liveness_bound_ms` after healing is acknowledged.

use super::Checker;
use crate::workload::{PutOutcome, PutRecord};
use crate::world::{Violation, World};
use borough::events::EventKey;
use borough::ids::{Location, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Every copy of every event, per key, as read from the nodes' stores.
#[derive(Debug, Default)]
pub struct StoredCopies {
    pub copies: BTreeMap<EventKey, Vec<(NodeId, Vec<u8>)>>,
}

impl StoredCopies {
    pub fn read(world: &mut World) -> Self {
        let mut copies: BTreeMap<EventKey, Vec<(NodeId, Vec<u8>)>> = BTreeMap::new();
        let mut unreadable = Vec::new();
        for sim_node in &world.nodes {
            let Some(node) = sim_node.node() else {
                continue;
            };
            match node.scan_events(None, None, usize::MAX) {
                Ok(events) => {
                    for (key, event) in events {
                        copies.entry(key).or_default().push((sim_node.id, event));
                    }
                }
                Err(error) => unreadable.push(format!("{}: {error}", sim_node.id)),
            }
        }
        for message in unreadable {
            world.violations.push(Violation {
                at_micros: world.now_micros(),
                checker: Checker::Recovery,
                message: format!("store unreadable after recovery: {message}"),
            });
        }
        Self { copies }
    }

    pub fn holders(&self, key: &EventKey) -> BTreeSet<NodeId> {
        self.copies
            .get(key)
            .map(|copies| copies.iter().map(|(node, _)| *node).collect())
            .unwrap_or_default()
    }
}

pub fn check(world: &mut World, stored: &StoredCopies) {
    let now = world.now_micros();
    let checks = world.config.checks.clone();
    let replication_factor = world.config.replication_factor as usize;
    let mut found: Vec<(Checker, String)> = Vec::new();

    if checks.write_once {
        for (key, copies) in &stored.copies {
            let distinct: BTreeSet<&Vec<u8>> = copies.iter().map(|(_, event)| event).collect();
            if distinct.len() > 1 {
                found.push((
                    Checker::WriteOnce,
                    format!(
                        "key {key} holds {} different contents across nodes",
                        distinct.len()
                    ),
                ));
            }
        }
    }

    let locations: BTreeMap<NodeId, Location> = world.config.nodes.iter().cloned().collect();
    let placement_from = world.config.safety_micros + checks.liveness_bound_ms * 1000;
    for (key, record) in world.history.acknowledged() {
        let holders = stored.holders(key);
        if checks.write_once {
            if let Some((node, _)) = stored
                .copies
                .get(key)
                .and_then(|copies| copies.iter().find(|(_, event)| *event != record.event))
            {
                found.push((
                    Checker::WriteOnce,
                    format!("key {key} on {node} differs from what the client put"),
                ));
            }
        }
        if checks.no_acknowledged_loss && holders.is_empty() {
            found.push((
                Checker::NoAcknowledgedLoss,
                format!(
                    "acknowledged event {key} (commit level {}, coordinator {}) is on no node",
                    record.commit_level, record.coordinator
                ),
            ));
            continue;
        }
        if checks.replication_factor_restored && holders.len() < replication_factor {
            found.push((
                Checker::ReplicationFactorRestored,
                format!("acknowledged event {key} is on {} of {replication_factor} nodes after healing: {holders:?}", holders.len()),
            ));
        }
        if checks.placement && record.issued_micros >= placement_from {
            if let Some(problem) = placement_problem(world, record, &holders, &locations) {
                found.push((Checker::Placement, format!("event {key}: {problem}")));
            }
        }
    }

    let liveness_from = world.config.safety_micros + checks.liveness_bound_ms * 1000;
    let liveness_to = world.config.workload_stop_micros();
    for (request_id, record) in &world.history.puts {
        if record.issued_micros >= liveness_from
            && record.issued_micros < liveness_to
            && !matches!(record.outcome, PutOutcome::Acknowledged { .. })
        {
            found.push((
                Checker::Liveness,
                format!(
                    "put {request_id} issued {} ms after healing to {} was not acknowledged: {:?}",
                    (record.issued_micros - world.config.safety_micros) / 1000,
                    record.coordinator,
                    record.outcome
                ),
            ));
        }
    }
    for (checker, message) in found {
        world.violations.push(Violation {
            at_micros: now,
            checker,
            message,
        });
    }
}

fn placement_problem(
    world: &World,
    record: &PutRecord,
    holders: &BTreeSet<NodeId>,
    locations: &BTreeMap<NodeId, Location>,
) -> Option<String> {
    let home = &locations[&record.coordinator];
    if !holders.contains(&record.coordinator) {
        return Some(format!("not on its coordinator {}", record.coordinator));
    }
    let strategy = world.config.strategy;
    let others = world.config.replication_factor.saturating_sub(1) as usize;
    let other_zones: BTreeSet<&str> = locations
        .values()
        .filter(|l| l.region == home.region && l.zone != home.zone)
        .map(|l| l.zone.as_str())
        .collect();
    let other_zone_peers = locations
        .values()
        .filter(|l| l.region == home.region && l.zone != home.zone)
        .count();
    let other_region_peers = locations
        .values()
        .filter(|l| l.region != home.region)
        .count();
    let zone_expected = (strategy.other_zone_replicas as usize)
        .min(others)
        .min(other_zone_peers);
    let region_expected = (strategy.other_region_replicas as usize)
        .min(others - zone_expected)
        .min(other_region_peers);
    let held_zones: BTreeSet<&str> = holders
        .iter()
        .map(|node| &locations[node])
        .filter(|l| l.region == home.region && l.zone != home.zone)
        .map(|l| l.zone.as_str())
        .collect();
    let held_zone_copies = holders
        .iter()
        .filter(|node| locations[node].region == home.region && locations[node].zone != home.zone)
        .count();
    let held_region_copies = holders
        .iter()
        .filter(|node| locations[node].region != home.region)
        .count();
    if held_zone_copies < zone_expected || held_zones.len() < zone_expected.min(other_zones.len()) {
        return Some(format!(
            "{held_zone_copies} copies in {} other zones, strategy asks {zone_expected}",
            held_zones.len()
        ));
    }
    if held_region_copies < region_expected {
        return Some(format!(
            "{held_region_copies} copies in other regions, strategy asks {region_expected}"
        ));
    }
    None
}

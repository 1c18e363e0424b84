//! The replica plan for one event: targets first, spares after, in the documented order.

use super::PeerTable;
use crate::ids::NodeId;
use crate::seams::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How many replicas must leave the coordinator's zone and region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationStrategy {
    /// Replicas in other zones of the coordinator's region.
    #[serde(default)]
    pub other_zone_replicas: u32,
    /// Replicas in other regions.
    #[serde(default)]
    pub other_region_replicas: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("not enough peers for replicationFactor {0}")]
    NotEnoughPeers(u32),
    #[error("replicationFactor must be at least 1")]
    ZeroReplicationFactor,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPlan {
    /// `replication_factor` nodes, the coordinator first.
    pub targets: Vec<NodeId>,
    /// Every other peer, in the order "get it done" tries them.
    pub spares: Vec<NodeId>,
}

/// Places `replication_factor` replicas for an event coordinated by the table's local node.
/// Down peers are treated like suspected ones (tried after the healthy peers of their group);
/// members whose place is not known yet come after every placed peer.
pub fn plan(
    peers: &PeerTable,
    replication_factor: u32,
    strategy: ReplicationStrategy,
    suspected: &BTreeSet<NodeId>,
    rng: &mut dyn Rng,
) -> Result<ReplicaPlan, PlacementError> {
    if replication_factor == 0 {
        return Err(PlacementError::ZeroReplicationFactor);
    }
    // Checked up front, as the client must hear it before anything is written.
    if peers.len() + 1 < replication_factor as usize {
        return Err(PlacementError::NotEnoughPeers(replication_factor));
    }
    let local = peers.local_location();
    let mut other_zones: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    let mut other_regions: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    let mut same_zone: Vec<NodeId> = Vec::new();
    let mut unplaced: Vec<NodeId> = Vec::new();
    // Down members are avoided like suspected ones (no extra set when none is down).
    let avoided: BTreeSet<NodeId>;
    let suspected = if peers.up_count() < peers.len() {
        let down = peers
            .iter()
            .filter(|(_, peer)| !peer.up)
            .map(|(node, _)| node);
        avoided = suspected.iter().copied().chain(down).collect();
        &avoided
    } else {
        suspected
    };
    for (node, peer) in peers.iter() {
        let Some(location) = &peer.location else {
            unplaced.push(node);
            continue;
        };
        if location.region != local.region {
            other_regions
                .entry(&location.region)
                .or_default()
                .push(node);
        } else if location.zone != local.zone {
            other_zones.entry(&location.zone).or_default().push(node);
        } else {
            same_zone.push(node);
        }
    }
    let mut zone_groups = shuffled_groups(other_zones, suspected, rng);
    let mut region_groups = shuffled_groups(other_regions, suspected, rng);
    let mut same_zone_group = vec![healthy_first(same_zone, suspected, rng)];
    let mut unplaced_group = vec![healthy_first(unplaced, suspected, rng)];

    let wanted = replication_factor as usize;
    let mut targets = vec![peers.local()];
    let zone_count = (strategy.other_zone_replicas as usize).min(wanted - targets.len());
    take_spread(&mut zone_groups, zone_count, &mut targets);
    let region_count = (strategy.other_region_replicas as usize).min(wanted - targets.len());
    take_spread(&mut region_groups, region_count, &mut targets);
    let same_zone_count = wanted - targets.len();
    take_spread(&mut same_zone_group, same_zone_count, &mut targets);

    // Fallback order: other zones, other regions, the own zone, then members of unknown
    // place. The same order serves the targets still owed (when the own zone ran short) and
    // the spares.
    let mut fallback = Vec::new();
    for groups in [
        &mut zone_groups,
        &mut region_groups,
        &mut same_zone_group,
        &mut unplaced_group,
    ] {
        take_spread(groups, usize::MAX, &mut fallback);
    }
    let owed = wanted - targets.len();
    let spares = fallback.split_off(owed.min(fallback.len()));
    targets.extend(fallback);
    debug_assert_eq!(
        targets.len(),
        wanted,
        "the up-front check guarantees enough peers"
    );
    Ok(ReplicaPlan { targets, spares })
}

/// Groups in random order, those with a healthy peer first; each group's peers shuffled,
/// healthy ones first.
fn shuffled_groups(
    groups: BTreeMap<&str, Vec<NodeId>>,
    suspected: &BTreeSet<NodeId>,
    rng: &mut dyn Rng,
) -> Vec<Vec<NodeId>> {
    let mut groups: Vec<Vec<NodeId>> = groups
        .into_values()
        .map(|group| healthy_first(group, suspected, rng))
        .collect();
    shuffle(&mut groups, rng);
    // Stable: keeps the random order among equally healthy groups.
    groups.sort_by_key(|group| suspected.contains(&group[0]));
    groups
}

fn healthy_first(
    mut group: Vec<NodeId>,
    suspected: &BTreeSet<NodeId>,
    rng: &mut dyn Rng,
) -> Vec<NodeId> {
    shuffle(&mut group, rng);
    group.sort_by_key(|node| suspected.contains(node));
    group
}

fn shuffle<T>(items: &mut [T], rng: &mut dyn Rng) {
    for index in (1..items.len()).rev() {
        let other = rng.below(index as u64 + 1) as usize;
        items.swap(index, other);
    }
}

/// Takes up to `count` peers round-robin across groups (one per group before a second from
/// any), removing them from the groups.
fn take_spread(groups: &mut [Vec<NodeId>], count: usize, into: &mut Vec<NodeId>) {
    let mut taken = 0;
    while taken < count && groups.iter().any(|group| !group.is_empty()) {
        for group in groups.iter_mut() {
            if taken == count {
                break;
            }
            if !group.is_empty() {
                into.push(group.remove(0));
                taken += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Location;
    use crate::seams::SeededRng;

    /// n0 is local in r1/z1. n1 also r1/z1; n2, n3 in r1/z2; n4 in r1/z3; n5, n6 in r2/z1.
    fn table() -> PeerTable {
        let mut table = PeerTable::new(NodeId(0), Location::new("r1", "z1"));
        table.add_peer(NodeId(1), Location::new("r1", "z1"));
        table.add_peer(NodeId(2), Location::new("r1", "z2"));
        table.add_peer(NodeId(3), Location::new("r1", "z2"));
        table.add_peer(NodeId(4), Location::new("r1", "z3"));
        table.add_peer(NodeId(5), Location::new("r2", "z1"));
        table.add_peer(NodeId(6), Location::new("r2", "z1"));
        table
    }

    fn strategy(zones: u32, regions: u32) -> ReplicationStrategy {
        ReplicationStrategy {
            other_zone_replicas: zones,
            other_region_replicas: regions,
        }
    }

    fn zone_of(table: &PeerTable, node: NodeId) -> String {
        table.location(node).unwrap().to_string()
    }

    #[test]
    fn not_enough_peers_is_refused_up_front() {
        let table = table();
        let error = plan(
            &table,
            8,
            strategy(0, 0),
            &BTreeSet::new(),
            &mut SeededRng::from_seed(1),
        );
        assert_eq!(error, Err(PlacementError::NotEnoughPeers(8)));
        assert_eq!(
            error.unwrap_err().to_string(),
            "not enough peers for replicationFactor 8"
        );
        assert!(plan(
            &table,
            7,
            strategy(0, 0),
            &BTreeSet::new(),
            &mut SeededRng::from_seed(1)
        )
        .is_ok());
    }

    #[test]
    fn no_strategy_places_in_own_zone_then_falls_back_to_zones_regions() {
        let table = table();
        let placed = plan(
            &table,
            3,
            strategy(0, 0),
            &BTreeSet::new(),
            &mut SeededRng::from_seed(2),
        )
        .unwrap();
        // Local, the only own-zone peer, then owed one from the fallback: an other-zone peer.
        assert_eq!(placed.targets[0], NodeId(0));
        assert_eq!(placed.targets[1], NodeId(1));
        assert!(zone_of(&table, placed.targets[2]).starts_with("r1/z"));
        assert_ne!(zone_of(&table, placed.targets[2]), "r1/z1");
        // Spares: remaining other-zone peers, then other-region peers.
        let spare_regions: Vec<String> =
            placed.spares.iter().map(|n| zone_of(&table, *n)).collect();
        assert_eq!(spare_regions.len(), 4);
        assert!(spare_regions[..2].iter().all(|z| z.starts_with("r1/")));
        assert!(spare_regions[2..].iter().all(|z| z.starts_with("r2/")));
    }

    #[test]
    fn zone_replicas_land_in_distinct_zones() {
        let table = table();
        for seed in 0..20 {
            let placed = plan(
                &table,
                3,
                strategy(2, 0),
                &BTreeSet::new(),
                &mut SeededRng::from_seed(seed),
            )
            .unwrap();
            let zones: BTreeSet<String> = placed.targets[1..]
                .iter()
                .map(|n| zone_of(&table, *n))
                .collect();
            assert_eq!(
                zones,
                BTreeSet::from(["r1/z2".to_string(), "r1/z3".to_string()])
            );
        }
    }

    #[test]
    fn zone_then_region_then_own_zone() {
        let table = table();
        let placed = plan(
            &table,
            4,
            strategy(1, 1),
            &BTreeSet::new(),
            &mut SeededRng::from_seed(3),
        )
        .unwrap();
        let places: Vec<String> = placed.targets.iter().map(|n| zone_of(&table, *n)).collect();
        assert_eq!(places[0], "r1/z1");
        assert!(places[1] == "r1/z2" || places[1] == "r1/z3");
        assert_eq!(places[2], "r2/z1");
        assert_eq!(placed.targets[3], NodeId(1));
    }

    #[test]
    fn more_zone_replicas_than_zones_fills_from_zone_peers() {
        let table = table();
        let placed = plan(
            &table,
            4,
            strategy(3, 0),
            &BTreeSet::new(),
            &mut SeededRng::from_seed(4),
        )
        .unwrap();
        let mut others: Vec<NodeId> = placed.targets[1..].to_vec();
        others.sort();
        assert_eq!(others, vec![NodeId(2), NodeId(3), NodeId(4)]);
    }

    #[test]
    fn suspected_peers_go_last_within_their_group() {
        let table = table();
        let suspected = BTreeSet::from([NodeId(2)]);
        for seed in 0..20 {
            let placed = plan(
                &table,
                2,
                strategy(1, 0),
                &suspected,
                &mut SeededRng::from_seed(seed),
            )
            .unwrap();
            // z3's healthy n4 beats z2, whose n3 is healthy but whose group starts with... n3.
            assert_ne!(placed.targets[1], NodeId(2), "seed {seed}");
        }
    }

    /// The original's rule: a replication factor smaller than 1 + other_zone_replicas +
    /// other_region_replicas is allowed, and replicas go local, other zones, other regions,
    /// same zone (its README: RF 3 with 2 other-zone and 1 other-region replicas gives the
    /// local replica and two in other zones).
    #[test]
    fn a_small_replication_factor_fills_local_then_zones_then_regions() {
        let table = table();
        for seed in 0..20 {
            let placed = plan(
                &table,
                3,
                strategy(2, 1),
                &BTreeSet::new(),
                &mut SeededRng::from_seed(seed),
            )
            .unwrap();
            let places: Vec<String> = placed.targets.iter().map(|n| zone_of(&table, *n)).collect();
            assert_eq!(places[0], "r1/z1");
            let zones: BTreeSet<&String> = places[1..].iter().collect();
            assert_eq!(zones.len(), 2, "{places:?}");
            assert!(places[1..].iter().all(|p| p == "r1/z2" || p == "r1/z3"));
            let placed = plan(
                &table,
                4,
                strategy(2, 1),
                &BTreeSet::new(),
                &mut SeededRng::from_seed(seed),
            )
            .unwrap();
            assert!(zone_of(&table, placed.targets[3]).starts_with("r2/"));
        }
    }

    #[test]
    fn down_and_unplaced_members_come_last() {
        let mut table = PeerTable::new(NodeId(0), Location::new("r1", "z1"));
        table.add_peer(NodeId(1), Location::new("r1", "z2"));
        table.add_peer(NodeId(2), Location::new("r1", "z2"));
        table.add_peer(NodeId(3), Location::new("r1", "z3"));
        table.add_unplaced(NodeId(4));
        table.mark_down(NodeId(1));
        for seed in 0..20 {
            let placed = plan(
                &table,
                3,
                strategy(0, 0),
                &BTreeSet::new(),
                &mut SeededRng::from_seed(seed),
            )
            .unwrap();
            let mut targets = placed.targets.clone();
            targets.sort();
            assert_eq!(
                targets,
                vec![NodeId(0), NodeId(2), NodeId(3)],
                "seed {seed}"
            );
            assert_eq!(placed.spares.last(), Some(&NodeId(4)));
        }
        // Members count towards the replication factor even when down or unplaced.
        assert!(plan(
            &table,
            5,
            strategy(0, 0),
            &BTreeSet::new(),
            &mut SeededRng::from_seed(1)
        )
        .is_ok());
    }

    #[test]
    fn replication_factor_one_is_local_only() {
        let placed = plan(
            &table(),
            1,
            strategy(1, 1),
            &BTreeSet::new(),
            &mut SeededRng::from_seed(5),
        )
        .unwrap();
        assert_eq!(placed.targets, vec![NodeId(0)]);
        assert_eq!(placed.spares.len(), 6);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::ids::Location;
    use crate::seams::SeededRng;
    use proptest::prelude::*;

    /// Which fallback group a peer falls in, relative to the local node in r0/z0.
    fn group(location: &Location) -> u8 {
        if location.region != "r0" {
            1
        } else if location.zone != "z0" {
            0
        } else {
            2
        }
    }

    proptest! {
        #[test]
        fn placement_invariants(
            layout in proptest::collection::vec((0u8..3, 0u8..3, any::<bool>()), 0..12),
            replication_factor in 1u32..6,
            other_zone_replicas in 0u32..4,
            other_region_replicas in 0u32..4,
            seed in any::<u64>(),
        ) {
            let mut table = PeerTable::new(NodeId(0), Location::new("r0", "z0"));
            let mut suspected = BTreeSet::new();
            for (index, (region, zone, is_suspected)) in layout.iter().enumerate() {
                let node = NodeId(index as u32 + 1);
                table.add_peer(node, Location::new(format!("r{region}"), format!("z{zone}")));
                if *is_suspected {
                    suspected.insert(node);
                }
            }
            let strategy = ReplicationStrategy { other_zone_replicas, other_region_replicas };
            let result = plan(&table, replication_factor, strategy, &suspected, &mut SeededRng::from_seed(seed));
            if table.len() + 1 < replication_factor as usize {
                prop_assert_eq!(result, Err(PlacementError::NotEnoughPeers(replication_factor)));
                return Ok(());
            }
            let placed = result.unwrap();
            // Local first, RF targets, never the same node twice, every peer placed somewhere.
            prop_assert_eq!(placed.targets[0], NodeId(0));
            prop_assert_eq!(placed.targets.len(), replication_factor as usize);
            let everything: Vec<NodeId> = placed.targets.iter().chain(&placed.spares).copied().collect();
            let distinct: BTreeSet<NodeId> = everything.iter().copied().collect();
            prop_assert_eq!(distinct.len(), everything.len());
            prop_assert_eq!(everything.len(), table.len() + 1);

            // Zone and region counts met whenever the peers exist.
            let location = |node: &NodeId| table.location(*node).unwrap().clone();
            let others = replication_factor as usize - 1;
            let zone_peers: Vec<Location> = table.iter().filter_map(|(_, peer)| peer.location.clone()).filter(|l| group(l) == 0).collect();
            let zone_names: BTreeSet<&str> = zone_peers.iter().map(|l| l.zone.as_str()).collect();
            let region_peers = table.iter().filter(|(_, peer)| peer.location.as_ref().is_some_and(|l| group(l) == 1)).count();
            let zone_expected = (other_zone_replicas as usize).min(others).min(zone_peers.len());
            let region_expected = (other_region_replicas as usize).min(others - zone_expected).min(region_peers);
            let targets: Vec<Location> = placed.targets[1..].iter().map(location).collect();
            let zone_targets: Vec<&Location> = targets.iter().filter(|l| group(l) == 0).collect();
            let held_zones: BTreeSet<&str> = zone_targets.iter().map(|l| l.zone.as_str()).collect();
            prop_assert!(zone_targets.len() >= zone_expected);
            prop_assert!(held_zones.len() >= zone_expected.min(zone_names.len()));
            prop_assert!(targets.iter().filter(|l| group(l) == 1).count() >= region_expected);

            // Spares keep the fallback order: other zones, other regions, own zone.
            let spare_groups: Vec<u8> = placed.spares.iter().map(|node| group(&location(node))).collect();
            prop_assert!(spare_groups.windows(2).all(|pair| pair[0] <= pair[1]), "{:?}", spare_groups);
        }
    }
}

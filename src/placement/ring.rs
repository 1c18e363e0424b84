//! The consistent hash ring: where a named partition's replicas live.
//!
//! Every active member owns `virtual_nodes` points on a ring of `u64` positions; a partition
//! name hashes to a position, and its replica set is read walking clockwise from there: the
//! owner (the first member met) and its distinct successors, zones spread first.
//!
//! What users rely on, each pinned by a test below:
//! - stability: positions come from xxh3 (64-bit, seed 0) over fixed byte layouts, never from
//!   the process (`std`'s `RandomState`), so every node, every process and every version
//!   places a name the same way; fixed vectors pin the hash;
//! - determinism: the ring depends on the set of members and their zones only, not on the
//!   order they are given in;
//! - a replica set has `min(replicas, members)` distinct members, the owner first; no two of
//!   them share a zone while a zone without one of them has members (a zone is a region and
//!   zone pair);
//! - balance: with [`VIRTUAL_NODES_DEFAULT`], no member of 10 (one zone each) holds more than
//!   1.25x its fair share of the replicas of 10,000 partitions;
//! - minimal movement: adding an 11th member moves about 1/11 of the replicas, and no more
//!   than 1.5x that.

use crate::ids::{Location, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use xxhash_rust::xxh3::xxh3_64;

/// Points per member: enough that 10 members hold within 1.25x of a fair share (measured in
/// the balance test), few enough that a ring of 100 members is 25,600 points (400 KiB).
pub const VIRTUAL_NODES_DEFAULT: u32 = 256;
/// The most points a member may have: keeps a ring of many members small.
pub const VIRTUAL_NODES_MAX: u32 = 4096;

/// Where a partition name falls on the ring.
pub fn name_position(name: &[u8]) -> u64 {
    xxh3_64(name)
}

/// Where a member's `index`th virtual node sits: xxh3 over the member id and the index, both
/// little-endian `u32`s (8 bytes).
pub fn virtual_node_position(member: NodeId, index: u32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&member.0.to_le_bytes());
    bytes[4..].copy_from_slice(&index.to_le_bytes());
    xxh3_64(&bytes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    position: u64,
    /// Breaks the (astronomically rare) tie of two members' points at one position.
    member: NodeId,
}

/// A ring over a set of members. Build one per directory version; lookups do not allocate
/// beyond the answer.
#[derive(Clone, Debug)]
pub struct Ring {
    points: Vec<Point>,
    zones: BTreeMap<NodeId, Location>,
    zone_count: usize,
}

impl Ring {
    /// The ring of `members` (a member named twice keeps its last location), each with
    /// `virtual_nodes` points (at least 1, at most [`VIRTUAL_NODES_MAX`]).
    pub fn new(members: impl IntoIterator<Item = (NodeId, Location)>, virtual_nodes: u32) -> Self {
        let virtual_nodes = virtual_nodes.clamp(1, VIRTUAL_NODES_MAX);
        let zones: BTreeMap<NodeId, Location> = members.into_iter().collect();
        let mut points = Vec::with_capacity(zones.len() * virtual_nodes as usize);
        for &member in zones.keys() {
            for index in 0..virtual_nodes {
                points.push(Point {
                    position: virtual_node_position(member, index),
                    member,
                });
            }
        }
        points.sort_unstable();
        let zone_count = zones.values().collect::<BTreeSet<_>>().len();
        Self {
            points,
            zones,
            zone_count,
        }
    }

    pub fn member_count(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    /// The replica set of the partition called `name`: `min(replicas, members)` distinct
    /// members, the owner first, then the first member met of each zone not yet holding a
    /// replica, then (when zones ran out) the other members in ring order.
    pub fn replica_set(&self, name: &[u8], replicas: usize) -> Vec<NodeId> {
        let wanted = replicas.min(self.zones.len());
        let mut chosen: Vec<NodeId> = Vec::with_capacity(wanted);
        let mut chosen_zones: BTreeSet<&Location> = BTreeSet::new();
        // Members met in zones already holding a replica, in ring order.
        let mut deferred: Vec<NodeId> = Vec::new();
        let mut seen: BTreeSet<NodeId> = BTreeSet::new();
        let start = self
            .points
            .partition_point(|point| point.position < name_position(name));
        let walk = self.points[start..].iter().chain(&self.points[..start]);
        for point in walk {
            let enough_spread = chosen.len() == wanted
                || (chosen_zones.len() == self.zone_count
                    && chosen.len() + deferred.len() >= wanted);
            if enough_spread {
                break;
            }
            if !seen.insert(point.member) {
                continue;
            }
            let Some(zone) = self.zones.get(&point.member) else {
                continue;
            };
            if chosen_zones.insert(zone) {
                chosen.push(point.member);
            } else {
                deferred.push(point.member);
            }
        }
        let missing = wanted - chosen.len().min(wanted);
        chosen.extend(deferred.into_iter().take(missing));
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(count: u32, zones: u32) -> Vec<(NodeId, Location)> {
        (1..=count)
            .map(|id| {
                let zone = format!("zone-{}", (id - 1) % zones);
                (NodeId(id), Location::new("region", zone))
            })
            .collect()
    }

    fn names(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|index| format!("partition {index}").into_bytes())
            .collect()
    }

    /// Replicas held per member over `names`.
    fn load(ring: &Ring, names: &[Vec<u8>], replicas: usize) -> BTreeMap<NodeId, usize> {
        let mut held = BTreeMap::new();
        for name in names {
            for member in ring.replica_set(name, replicas) {
                *held.entry(member).or_insert(0) += 1;
            }
        }
        held
    }

    #[test]
    fn positions_match_fixed_vectors() {
        // xxh3-64 of the empty input, seed 0: the reference implementation's value.
        assert_eq!(name_position(b""), 0x2d06_8005_38d3_94c2);
        // Pinned: a change here moves every partition of every cluster.
        assert_eq!(name_position(b"partition 1"), 0x094b_c213_1122_d113);
        assert_eq!(name_position(b"user:42"), 0x9fc1_e605_fa71_74aa);
        assert_eq!(virtual_node_position(NodeId(1), 0), 0x2fbc_5935_64db_792e);
        assert_eq!(virtual_node_position(NodeId(7), 255), 0x1738_31c5_a437_53c7);
    }

    #[test]
    fn a_replica_set_reads_the_pinned_placement() {
        let ring = Ring::new(members(5, 5), VIRTUAL_NODES_DEFAULT);
        assert_eq!(
            ring.replica_set(b"partition 1", 3),
            vec![NodeId(1), NodeId(5), NodeId(3)]
        );
        assert_eq!(
            ring.replica_set(b"user:42", 3),
            vec![NodeId(5), NodeId(4), NodeId(1)]
        );
    }

    #[test]
    fn replica_sets_are_balanced_over_ten_members() {
        let names = names(10_000);
        for replicas in [1, 3] {
            let ring = Ring::new(members(10, 10), VIRTUAL_NODES_DEFAULT);
            let held = load(&ring, &names, replicas);
            let fair = (names.len() * replicas) as f64 / 10.0;
            let most = *held.values().max().unwrap() as f64;
            let least = *held.values().min().unwrap() as f64;
            println!(
                "replicas {replicas}: most {most} ({:.3}x fair), least {least} ({:.3}x)",
                most / fair,
                least / fair
            );
            assert_eq!(held.len(), 10, "every member holds replicas");
            assert!(most <= 1.25 * fair, "most {most} over 1.25x of {fair}");
        }
    }

    #[test]
    fn zones_bound_the_load_of_their_members() {
        // 4, 3 and 3 members in three zones: every partition has one replica per zone, so a
        // member of a zone of three holds a third of all partitions, 1.11x a fair share.
        let names = names(10_000);
        let ring = Ring::new(members(10, 3), VIRTUAL_NODES_DEFAULT);
        let held = load(&ring, &names, 3);
        let fair = 3.0 * names.len() as f64 / 10.0;
        for (member, count) in &held {
            assert!(
                *count as f64 <= 1.25 * 10.0 / 9.0 * fair,
                "{member} holds {count}"
            );
        }
    }

    #[test]
    fn adding_an_eleventh_member_moves_about_an_eleventh() {
        let names = names(10_000);
        for (zones, replicas) in [(10, 3), (11, 1), (3, 3)] {
            let before = Ring::new(members(10, zones), VIRTUAL_NODES_DEFAULT);
            let after = Ring::new(members(11, zones), VIRTUAL_NODES_DEFAULT);
            let mut moved = 0;
            for name in &names {
                let old: BTreeSet<NodeId> =
                    before.replica_set(name, replicas).into_iter().collect();
                let new = after.replica_set(name, replicas);
                moved += new.iter().filter(|member| !old.contains(member)).count();
            }
            let total = names.len() * replicas;
            let ideal = total as f64 / 11.0;
            println!(
                "{zones} zones, {replicas} replicas: moved {moved} of {total} ({:.3}x of 1/11)",
                moved as f64 / ideal
            );
            assert!(
                moved as f64 <= 1.5 * ideal,
                "{moved} moved, over 1.5x of {ideal}"
            );
            assert!(moved > 0);
        }
    }

    #[test]
    fn small_and_empty_rings() {
        let empty = Ring::new(Vec::new(), VIRTUAL_NODES_DEFAULT);
        assert!(empty.is_empty());
        assert!(empty.replica_set(b"p", 3).is_empty());
        let one = Ring::new(members(1, 1), 1);
        assert_eq!(one.replica_set(b"p", 3), vec![NodeId(1)]);
        let two_in_one_zone = Ring::new(members(2, 1), 4);
        let mut set = two_in_one_zone.replica_set(b"p", 3);
        set.sort();
        assert_eq!(set, vec![NodeId(1), NodeId(2)]);
    }

    fn arbitrary_members() -> impl Strategy<Value = Vec<(u32, u8)>> {
        proptest::collection::vec((1u32..64, 0u8..5), 0..20)
    }

    proptest! {
        #[test]
        fn replica_sets_keep_their_invariants(
            raw in arbitrary_members(),
            name in proptest::collection::vec(any::<u8>(), 0..16),
            replicas in 0usize..7,
            virtual_nodes in 1u32..64,
        ) {
            let members: Vec<(NodeId, Location)> = raw
                .iter()
                .map(|(id, zone)| (NodeId(*id), Location::new("r", format!("z{zone}"))))
                .collect();
            let ring = Ring::new(members.clone(), virtual_nodes);
            let set = ring.replica_set(&name, replicas);
            let locations: BTreeMap<NodeId, Location> = members.iter().cloned().collect();
            prop_assert_eq!(set.len(), replicas.min(locations.len()));
            let distinct: BTreeSet<NodeId> = set.iter().copied().collect();
            prop_assert_eq!(distinct.len(), set.len());
            let zones_held: BTreeSet<&Location> = set.iter().map(|member| &locations[member]).collect();
            let zones_all: BTreeSet<&Location> = locations.values().collect();
            prop_assert_eq!(zones_held.len(), set.len().min(zones_all.len()));
            // The order members are given in changes nothing.
            let mut reversed = members;
            reversed.reverse();
            let mut last_wins: BTreeMap<NodeId, Location> = BTreeMap::new();
            for (member, location) in reversed.iter().rev() {
                last_wins.insert(*member, location.clone());
            }
            let reordered = Ring::new(last_wins.into_iter().rev(), virtual_nodes);
            prop_assert_eq!(reordered.replica_set(&name, replicas), set);
        }
    }
}

//! Consolidation intervals, checked against every node's durable store after the run.
//!
//! - at most once: no node reports the same interval closed twice, restarts included;
//! - closed in time: an interval holding events on a node is closed there once it is two
//!   intervals old on that node's clock (with a few seconds of slack for the check period);
//! - consistent: a closed interval's event count and digest (XOR of xxh3 of its keys) match the
//!   events the node actually holds in it.

use super::Checker;
use super::StoredCopies;
use crate::world::{Violation, World};
use std::collections::{BTreeMap, BTreeSet};

/// Closing runs on a periodic check, and not while writes are staged.
const CLOSE_SLACK_MICROS: u64 = 10_000_000;

pub fn check(world: &mut World, stored: &StoredCopies) {
    let now = world.now_micros();
    let interval = world.config.consolidation_interval;
    let length = interval.length_micros();
    let mut found = Vec::new();

    let mut reported: BTreeSet<(borough::ids::NodeId, u64)> = BTreeSet::new();
    for (node, start) in &world.interval_closures {
        if !reported.insert((*node, *start)) {
            found.push(format!(
                "{node} reported the interval starting at {start} closed twice"
            ));
        }
    }

    // Per node: interval start -> (event count, digest) of what it holds.
    let mut held: BTreeMap<borough::ids::NodeId, BTreeMap<u64, (u64, u64)>> = BTreeMap::new();
    for (key, copies) in &stored.copies {
        let start = interval.start_of(key.timestamp_micros());
        let digest = xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes());
        for (node, _) in copies {
            let entry = held.entry(*node).or_default().entry(start).or_default();
            entry.0 += 1;
            entry.1 ^= digest;
        }
    }
    let epoch = world.config.epoch_micros;
    for sim_node in &world.nodes {
        let Some(node) = sim_node.node() else {
            continue;
        };
        let local_now = sim_node.skew.local_micros(epoch, now);
        for (start, (count, digest)) in held.get(&sim_node.id).into_iter().flatten() {
            let summary = match node.store().interval_summary(*start) {
                Ok(Some(summary)) => summary,
                Ok(None) => {
                    found.push(format!(
                        "{} holds events in interval {start} but has no summary of it",
                        sim_node.id
                    ));
                    continue;
                }
                Err(error) => {
                    found.push(format!(
                        "{}: interval {start} unreadable: {error}",
                        sim_node.id
                    ));
                    continue;
                }
            };
            if summary.event_count != *count || summary.digest != *digest {
                found.push(format!(
                    "{} interval {start}: summary says {} events (digest {:016x}), the store holds {count} (digest {digest:016x})",
                    sim_node.id, summary.event_count, summary.digest
                ));
            }
            if !summary.closed && start + 2 * length + CLOSE_SLACK_MICROS <= local_now {
                found.push(format!(
                    "{} never closed interval {start}, {} s old",
                    sim_node.id,
                    (local_now - start) / 1_000_000
                ));
            }
        }
    }
    for message in found {
        world.violations.push(Violation {
            at_micros: now,
            checker: Checker::Intervals,
            message,
        });
    }
}

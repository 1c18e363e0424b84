//! Checkers: they judge what the world did, and never change it.
//!
//! `on_answer` runs at every client answer (keys must be unique across acknowledged puts);
//! `finish` runs once at the end: it power-cycles every node (so only durable state counts),
//! reads every store, and runs the event-store checks in `event_store`, the consolidation
//! interval checks in `intervals`, and the Raft partition checks in `raft` (which also judge
//! every apply and role change as it happens, and the kv history's linearizability and
//! atomicity, whose history and multi-key rules live in `atomicity`). `recovery` judges each
//! boot: on a disk that only crashed, recovery finds no damage at rest.

pub mod atomicity;
mod checker;
mod event_store;
mod intervals;
pub mod linearizability;
pub mod placement;
pub mod raft;
pub mod recovery;

use crate::workload::PutOutcome;
use crate::world::{Violation, World};
use borough::coordinator::{CommitLevel, PutError};
use borough::events::EventKey;
use borough::ids::NodeId;

pub use checker::Checker;
pub use event_store::StoredCopies;

pub fn on_answer(
    world: &mut World,
    _node: NodeId,
    request_id: u64,
    result: Result<EventKey, PutError>,
) {
    let now = world.now_micros();
    match world.history.puts.get(&request_id) {
        Some(record) if record.outcome == PutOutcome::Pending => {}
        // The client gave up already: a late answer is never seen.
        _ => return,
    }
    let outcome = match result {
        Ok(key) => {
            check_acknowledgement_honesty(world, request_id, &key);
            if let Some(previous) = world
                .history
                .acknowledged_keys
                .insert(key.clone(), request_id)
            {
                world.violations.push(Violation {
                    at_micros: now,
                    checker: Checker::WriteOnce,
                    message: format!("key {key} was returned for two puts: request {previous} and request {request_id}"),
                });
            }
            PutOutcome::Acknowledged {
                key,
                at_micros: now,
            }
        }
        Err(error) => PutOutcome::Failed { error },
    };
    world
        .history
        .puts
        .get_mut(&request_id)
        .expect("checked above")
        .outcome = outcome;
}

/// Acknowledgement honesty: when a put is acknowledged at a commit level, at least that
/// level's count of replicas hold it durably at that instant: an up node whose store holds
/// it (the store serves committed events only), or a node that had already sent a replica's
/// durable answer for it (a crash since cannot take a synced copy away).
fn check_acknowledgement_honesty(world: &mut World, request_id: u64, key: &EventKey) {
    let Some(record) = world.history.puts.get(&request_id) else {
        return;
    };
    // Counted here, not by the coordinator's own rule: a checker that shared the code it
    // judges would share its bugs.
    let replication_factor = world.config.replication_factor as usize;
    let required = match record.commit_level {
        CommitLevel::One => 1,
        CommitLevel::Quorum => replication_factor / 2 + 1,
        CommitLevel::All => replication_factor,
    };
    let mut holders = world.durable_claims.get(key).cloned().unwrap_or_default();
    for sim_node in &world.nodes {
        if let Some(node) = sim_node.node() {
            if matches!(node.get_event(key), Ok(Some(_))) {
                holders.insert(sim_node.id);
            }
        }
    }
    if holders.len() < required {
        world.violations.push(Violation {
            at_micros: world.now_micros(),
            checker: Checker::AcknowledgementHonesty,
            message: format!(
                "put {request_id} was acknowledged at {} as {key}, which needs {required} durable replicas, while {} held it: {holders:?}",
                record.commit_level,
                holders.len()
            ),
        });
    }
}

/// Power-cycles every node, then checks the durable outcome.
pub fn finish(world: &mut World) {
    if world.unbootable {
        return;
    }
    if world.messages_unencodable > 0 {
        world.violations.push(Violation {
            at_micros: world.now_micros(),
            checker: Checker::Codec,
            message: format!(
                "{} messages were refused by the codec at their sender and never sent",
                world.messages_unencodable
            ),
        });
    }
    raft::check_converged(world);
    placement::check_converged(world);
    placement::check_requests(world);
    // Before the power cycle below: it ends every subscription.
    crate::workload::maps::check(world);
    for index in 0..world.nodes.len() {
        world.crash_node(index);
        world.start_node(index);
    }
    let copies = StoredCopies::read(world);
    event_store::check(world, &copies);
    intervals::check(world, &copies);
    raft::check_durable_and_linearizable(world);
    crate::workload::counter::check(world);
    crate::workload::ledger::check(world);
}

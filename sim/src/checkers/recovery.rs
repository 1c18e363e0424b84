//! The recovery checker at each boot: recovery finds no damage at rest on a disk that only
//! crashed.
//!
//! A crash only takes what was never synced (the torn or missing tail of each file). So on a
//! disk where no bit rotted and no read came back corrupted, recovery must find no damage at
//! rest: an event log cut at a record that failed its checks, or partition replicas refused
//! as damaged, means recovery misjudged a torn tail, or a writer wrote what its reader
//! refuses. Each node is reported once (damage found stays on its disk). A node that cannot
//! boot at all once faults are healed is judged where it boots (`World::start_node`).

use crate::checkers::Checker;
use crate::state_machine::Node;
use crate::world::{Violation, World};

/// Judges the store `node` recovered from its disk at boot.
pub fn on_boot(world: &mut World, index: usize, node: &Node) {
    let id = world.nodes[index].id;
    if world.damage_reported.contains(&id) {
        return;
    }
    let disk = world.nodes[index].disk.stats();
    if disk.rots > 0 || disk.corrupted_reads > 0 {
        // Damage may be real here; whether it is handled is for the other checkers.
        return;
    }
    let mut found = Vec::new();
    let corrupt_records = node.store().stats().corrupt_records;
    if corrupt_records > 0 {
        found.push(format!(
            "{id} cut its event log at {corrupt_records} damaged record(s), but its disk only \
             crashed ({} crashes, {} writes torn; no bit rotted, no read was corrupted)",
            disk.crashes, disk.torn_writes
        ));
    }
    if let Some(reason) = node.partitions_damaged() {
        found.push(format!(
            "{id} refused its partition replicas as damaged, but its disk only crashed ({} \
             crashes, {} writes torn; no bit rotted, no read was corrupted): {reason}",
            disk.crashes, disk.torn_writes
        ));
    }
    if found.is_empty() {
        return;
    }
    world.damage_reported.insert(id);
    for message in found {
        world.violations.push(Violation {
            at_micros: world.now_micros(),
            checker: Checker::Recovery,
            message,
        });
    }
}

//! The membership-change nemesis: an operator that keeps moving replicas of Raft partitions
//! between nodes while the other faults run, one configuration step per occurrence.
//!
//! A move of partition `p` goes: add a learner on a node outside `p` (its replica is created
//! there first, as a joining one), promote it once it caught up, demote a random voter
//! (possibly the leader), remove that learner. Each step is proposed on `p`'s leader and may
//! be refused (no leader, a change or transfer in flight, the leader lost its lease); the next
//! occurrence looks at the configuration again and picks up where the move stands, so lost
//! proposals need no bookkeeping beyond the set of voters on their way out.
//!
//! Removed replicas stay on their nodes, inert (no leader sends to them; pre-vote keeps them
//! from disrupting), and are reused with their durable state if the node is added back, so
//! no node ever votes twice in a term.

use crate::world::World;
use borough::ids::NodeId;
use borough::partition::host::PartitionStart;
use borough::partition::PartitionId;
use borough::raft::{ConfigChange, Role};

/// Entries a learner may trail the leader's commit index by and still be promoted.
const CAUGHT_UP_LAG_ENTRIES: u64 = 8;

pub fn step(world: &mut World) {
    let Some(partitions) = world.config.partitions.clone() else {
        return;
    };
    let partition = world.draw(0, partitions.count - 1);
    let id = PartitionId(partition);
    let Some((leader, status)) = leader_of(world, id) else {
        return;
    };
    let configuration = status.configuration.clone();
    if configuration.is_joint() {
        return; // the leader leaves the joint configuration by itself
    }
    let leaving = world
        .fault_state
        .leaving
        .get(&partition)
        .cloned()
        .unwrap_or_default();
    let change = if let Some(learner) = configuration.learners.iter().next().copied() {
        if leaving.contains(&learner) {
            Some(ConfigChange::Remove(learner))
        } else if applied_on(world, learner, id) + CAUGHT_UP_LAG_ENTRIES >= status.committed {
            Some(ConfigChange::Promote(learner))
        } else {
            None // still catching up
        }
    } else if configuration.voters.len() as u64 > partitions.replicas {
        let voters: Vec<NodeId> = configuration.voters.iter().copied().collect();
        let victim = voters[world.draw(0, voters.len() as u64 - 1) as usize];
        Some(ConfigChange::Demote(victim))
    } else {
        let outside: Vec<usize> = (0..world.nodes.len())
            .filter(|node| {
                world.nodes[*node].is_up() && !configuration.is_member(world.nodes[*node].id)
            })
            .collect();
        if outside.is_empty() {
            return;
        }
        let joiner = outside[world.draw(0, outside.len() as u64 - 1) as usize];
        let joiner_id = world.nodes[joiner].id;
        let mut created = false;
        world.with_node(joiner, |node| {
            created = node.create_partition(id, PartitionStart::Joining).is_ok();
        });
        if !created {
            return;
        }
        Some(ConfigChange::AddLearner(joiner_id))
    };
    let Some(change) = change else {
        return;
    };
    let leader_index = world.index_of(leader);
    let mut accepted = false;
    world.with_node(leader_index, |node| {
        accepted = node.partition_change_membership(id, change).is_ok();
    });
    tracing::info!(partition = %id, %leader, ?change, accepted, "fault: membership change");
    world
        .trace
        .record(world.now_micros(), "membership", partition, accepted as u64);
    if !accepted {
        return;
    }
    world.fault_state.membership_changes += 1;
    let hosts = world.partition_hosts.entry(partition).or_default();
    match change {
        ConfigChange::AddLearner(node) => {
            if !hosts.contains(&node) {
                hosts.push(node);
            }
        }
        ConfigChange::Demote(node) => {
            world
                .fault_state
                .leaving
                .entry(partition)
                .or_default()
                .insert(node);
        }
        ConfigChange::Remove(node) => {
            // Clients stop sending there; keep at least one target.
            if hosts.len() > 1 {
                hosts.retain(|host| *host != node);
            }
            if let Some(leaving) = world.fault_state.leaving.get_mut(&partition) {
                leaving.remove(&node);
            }
        }
        ConfigChange::Promote(_) | ConfigChange::LeaveJoint => {}
    }
}

/// The up node leading `partition` in the highest term, with its view of the group.
fn leader_of(
    world: &World,
    partition: PartitionId,
) -> Option<(NodeId, borough::raft::GroupStatus)> {
    world
        .nodes
        .iter()
        .filter_map(|sim_node| {
            let status = sim_node.node()?.partitions()?.status(partition)?;
            (status.role == Role::Leader).then_some((sim_node.id, status))
        })
        .max_by_key(|(_, status)| status.term)
}

fn applied_on(world: &World, node: NodeId, partition: PartitionId) -> u64 {
    world.nodes[world.index_of(node)]
        .node()
        .and_then(|node| node.partitions())
        .and_then(|host| host.status(partition))
        .map_or(0, |status| status.applied)
}

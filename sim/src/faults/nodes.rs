//! Whole nodes joining and leaving a cluster of named partitions (`[membership]`): a growth
//! plan, or the membership nemesis.
//!
//! - Growth: the run starts with `initial_nodes` (node 1 founds the cluster); every step a
//!   spare joins until `grow_to` run, then members drain one at a time (node 1, the seed
//!   every spare joins through, stays) until `shrink_to` remain. It runs until done, faults
//!   or not: the scenario's durations leave it time.
//! - The nemesis (a fault, so only in the safety phase): each step joins a spare, drains a
//!   member, or kills one for good (never below `members_min` active members, never node 1,
//!   one drain at a time). A killed node is left to the directory to declare dead.
//!
//! A drained node stops (for good) once the directory marks it left and it holds no replica
//! (`Node::is_drained`) and no client call waits on it. Clients stop sending to a node once
//! it drains, as a load balancer reading the directory would. Spares and departed nodes are
//! never started by a restart, a heal or the final power cycle.

use crate::world::{Event, World};
use borough::ids::NodeId;
use std::collections::BTreeSet;

/// Time between two looks at the draining nodes.
const WATCH_INTERVAL_MICROS: u64 = 50_000;

#[derive(Debug, Default)]
pub struct NodesState {
    /// Nodes not started yet.
    pub spares: BTreeSet<NodeId>,
    /// Nodes stopped for good: drained, or killed.
    pub departed: BTreeSet<NodeId>,
    /// Nodes asked to leave that have not stopped yet, with when they were asked.
    pub draining: Vec<(NodeId, u64)>,
    /// Growth is over: members drain now.
    pub shrinking: bool,
    pub joins: u64,
    pub drains: u64,
    pub kills: u64,
    /// How long each drain took, from the ask to the stop.
    pub drain_micros: Vec<u64>,
}

impl NodesState {
    /// Whether a restart may start this node: not a spare, not gone for good.
    pub fn may_start(&self, node: NodeId) -> bool {
        !self.spares.contains(&node) && !self.departed.contains(&node)
    }

    /// Whether clients may send to this node.
    pub fn takes_clients(&self, node: NodeId) -> bool {
        self.may_start(node) && !self.draining.iter().any(|(id, _)| *id == node)
    }
}

/// Sets the spares aside before any node starts, and schedules the first step.
pub fn start(world: &mut World) {
    let Some(membership) = world.config.membership.clone() else {
        return;
    };
    let spares: BTreeSet<NodeId> = world
        .config
        .nodes
        .iter()
        .skip(membership.initial_nodes)
        .map(|(id, _)| *id)
        .collect();
    world.nodes_state.spares = spares;
    schedule_step(world);
    let watch_at = world.now_micros() + WATCH_INTERVAL_MICROS;
    world.schedule(watch_at, Event::NodesWatch);
}

fn schedule_step(world: &mut World) {
    let Some(membership) = world.config.membership.clone() else {
        return;
    };
    let (low, high) = match membership.step_every_micros {
        crate::scenario::Drawn::Fixed(value) => (value, value),
        crate::scenario::Drawn::Range(low, high) => (low, high),
    };
    let at = world.now_micros() + world.draw(low, high);
    world.schedule(at, Event::NodesStep);
}

/// Members the plan may drain or kill: all but node 1, the seed every spare joins through.
fn removable(members: &[NodeId]) -> Vec<NodeId> {
    members
        .iter()
        .copied()
        .filter(|id| *id != NodeId(1))
        .collect()
}

/// Active members as the plan counts them: started, not gone, not draining (those clients
/// send to).
pub(crate) fn members(world: &World) -> Vec<NodeId> {
    world
        .config
        .nodes
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| world.nodes_state.takes_clients(*id))
        .collect()
}

pub fn step(world: &mut World) {
    let Some(membership) = world.config.membership.clone() else {
        return;
    };
    if membership.nemesis {
        if world.healed {
            return; // a fault: the safety phase only
        }
        nemesis_step(world, &membership);
        schedule_step(world);
        return;
    }
    let members = members(world);
    let grow_to = membership.grow_to.unwrap_or(0);
    if !world.nodes_state.shrinking {
        if members.len() < grow_to && join_spare(world) {
            schedule_step(world);
            return;
        }
        world.nodes_state.shrinking = true;
    }
    if members.len() > membership.shrink_to {
        // One drain at a time: the next waits for the last to stop.
        if world.nodes_state.draining.is_empty() {
            drain_one(world, &members);
        }
        schedule_step(world);
    }
}

fn nemesis_step(world: &mut World, membership: &crate::run_config::MembershipRun) {
    let members = members(world);
    let can_shrink = members.len() > membership.members_min;
    match world.draw(0, 2) {
        0 => {
            join_spare(world);
        }
        1 if can_shrink && world.nodes_state.draining.is_empty() => drain_one(world, &members),
        // One loss at a time, as an operator replaces a dead node before the next dies:
        // no kill while an earlier one is not declared dead yet or a partition moves.
        2 if can_shrink && settled_since_last_kill(world) => {
            let candidates = removable(&members);
            if candidates.is_empty() {
                return;
            }
            let victim = candidates[world.draw(0, candidates.len() as u64 - 1) as usize];
            let index = world.index_of(victim);
            tracing::info!(node = %victim, "killed for good");
            world.crash_node(index);
            world.nodes_state.departed.insert(victim);
            world.nodes_state.kills += 1;
            world
                .trace
                .record(world.now_micros(), "kill_for_good", u64::from(victim.0), 0);
        }
        _ => {}
    }
}

/// Whether every node killed so far is fully replaced: marked left, in no partition's
/// holders, out of the directory's own group, and no partition moving (as the running node
/// that applied the most of the directory sees it). Losing a second replica before the first
/// is rebuilt can take a group's quorum for good, as it would for an operator.
fn settled_since_last_kill(world: &World) -> bool {
    // The directory's group has a leader, on a settled configuration of at most the
    // settings' voters, without any node that departed.
    let directory_group_clear = world.nodes.iter().any(|sim_node| {
        let Some(node) = sim_node.node() else {
            return false;
        };
        let Some(status) = node
            .partitions()
            .and_then(|host| host.status(borough::directory::SYSTEM_PARTITION))
        else {
            return false;
        };
        let voters_max = node
            .directory()
            .and_then(|directory| directory.settings())
            .map_or(0, |settings| usize::from(settings.directory_voters));
        status.role == borough::raft::Role::Leader
            && !status.configuration.is_joint()
            && status.configuration.voters.len() <= voters_max
            && world
                .nodes_state
                .departed
                .iter()
                .all(|node| !status.configuration.is_member(*node))
    });
    if !directory_group_clear {
        return false;
    }
    let Some(directory) = crate::checkers::placement::freshest_directory(world) else {
        return false;
    };
    directory.moving_count() == 0
        && world.nodes_state.departed.iter().all(|node| {
            directory
                .member(*node)
                .is_none_or(|member| member.state == borough::directory::MemberState::Left)
                && directory
                    .partitions()
                    .all(|entry| !entry.holders().contains(node))
        })
}

/// Starts a spare of the zone with the fewest members (the lowest id among equals): it
/// joins through node 1.
fn join_spare(world: &mut World) -> bool {
    let members = members(world);
    let zone_of = |world: &World, node: NodeId| world.nodes[world.index_of(node)].location.clone();
    let spare = world
        .nodes_state
        .spares
        .iter()
        .copied()
        .min_by_key(|spare| {
            let zone = zone_of(world, *spare);
            let count = members
                .iter()
                .filter(|member| zone_of(world, **member) == zone)
                .count();
            (count, *spare)
        });
    let Some(spare) = spare else {
        return false;
    };
    world.nodes_state.spares.remove(&spare);
    world.nodes_state.joins += 1;
    tracing::info!(node = %spare, "a spare joins");
    world
        .trace
        .record(world.now_micros(), "join", u64::from(spare.0), 0);
    let index = world.index_of(spare);
    world.start_node(index);
    true
}

/// Asks a random member other than node 1 to leave.
fn drain_one(world: &mut World, members: &[NodeId]) {
    let candidates = removable(members);
    if candidates.is_empty() {
        return;
    }
    let leaving = candidates[world.draw(0, candidates.len() as u64 - 1) as usize];
    tracing::info!(node = %leaving, "drains");
    world.nodes_state.drains += 1;
    let now = world.now_micros();
    world.nodes_state.draining.push((leaving, now));
    world.trace.record(now, "drain", u64::from(leaving.0), 0);
    ask_to_leave(world, leaving);
}

fn ask_to_leave(world: &mut World, node: NodeId) {
    let index = world.index_of(node);
    if world.nodes[index].is_up() {
        world.with_node(index, |node| {
            let _ = node.leave();
        });
    }
}

/// Every `WATCH_INTERVAL_MICROS`: draining nodes are asked again (a crash forgets the ask)
/// and stopped for good once drained with no client call waiting on them.
pub fn watch(world: &mut World) {
    // A node the cluster told it left (declared dead while it was away) stops for good too.
    for index in 0..world.nodes.len() {
        let id = world.nodes[index].id;
        let told = world.nodes[index]
            .node()
            .is_some_and(|running| running.is_drained());
        if told
            && !world
                .nodes_state
                .draining
                .iter()
                .any(|(node, _)| *node == id)
        {
            tracing::info!(node = %id, "told it left the cluster: stops for good");
            world.stop_process(index);
            world.nodes_state.departed.insert(id);
            world
                .trace
                .record(world.now_micros(), "departed", u64::from(id.0), 1);
        }
    }
    let draining = world.nodes_state.draining.clone();
    for (node, asked_micros) in draining {
        let index = world.index_of(node);
        let drained = world.nodes[index]
            .node()
            .is_some_and(|running| running.is_drained());
        if drained && !world.kv_history.waits_on(node) {
            tracing::info!(node = %node, "drained: stops for good");
            world.stop_process(index);
            world.nodes_state.departed.insert(node);
            world.nodes_state.draining.retain(|(id, _)| *id != node);
            let now = world.now_micros();
            world
                .nodes_state
                .drain_micros
                .push(now.saturating_sub(asked_micros));
            world.trace.record(now, "departed", u64::from(node.0), 0);
        } else {
            ask_to_leave(world, node);
        }
    }
    if !world.ended {
        let at = world.now_micros() + WATCH_INTERVAL_MICROS;
        world.schedule(at, Event::NodesWatch);
    }
}

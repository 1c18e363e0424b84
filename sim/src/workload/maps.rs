//! The maps workload: writers on random nodes set and delete keys of a few shared maps (named
//! partitions `map-N`), while feed subscribers, each on a random node, follow the maps' change
//! feeds, leave and resume from their last revision (on another node, or after their node
//! died), until the workload stops; then every subscriber connects once more and catches up.
//!
//! The committed history of each map is what its replicas applied: every replica reports each
//! change it applied with its revision (`SimStateMachine::take_applied_maps`), and they must
//! agree. The check (`feeds`) holds every subscription to it:
//! - a subscription's first event is `Ready` (the whole map, equal to the history folded up to
//!   its revision) or, when it resumed from revision r, `Resumed` at r;
//! - then exactly the changes after it, each the history's change at its revision, in
//!   revision order: no gap, no duplicate, no reordering; a later `Ready` (a compacted gap)
//!   never goes back and equals the folded history;
//! - every subscriber ends at the final map, and every acknowledged write is the history's
//!   change at the revision it was acknowledged with.

use crate::checkers::Checker;
use crate::run_config::WorkloadConfig;
use crate::state_machine::{SimAnswer, SimOperation, SimOutcome};
use crate::world::{Event, Violation, World};
use borough::coordinator::router::{RoutedOutcome, RoutedRequest, RouterAnswer};
use borough::directory::PartitionName;
use borough::feeds::{FeedDelivery, FeedEvent, SubscriptionId};
use borough::ids::NodeId;
use borough::maps::{ChangeKind, MapKey, MapOperation, MapOutcome, MapValue};
use borough::seams::Rng as _;
use std::collections::BTreeMap;

/// Feed violations reported at most per run (a broken feed breaks every later event).
const VIOLATIONS_MAX: usize = 10;

pub fn map_name(map: u64) -> String {
    format!("map-{map}")
}

fn map_of(name: &[u8]) -> Option<u64> {
    std::str::from_utf8(name)
        .ok()?
        .strip_prefix("map-")?
        .parse()
        .ok()
}

/// One follower of a map's feed.
#[derive(Debug, Default)]
pub struct Subscriber {
    pub map: u64,
    /// The node and subscription it is connected through.
    connection: Option<(NodeId, SubscriptionId)>,
    /// The revision it asked to resume from in this connection, and whether its first
    /// event is still to come.
    asked_from: Option<u64>,
    awaiting_first: bool,
    /// What it holds: the map at `revision` (once it had a `Ready`).
    revision: Option<u64>,
    entries: BTreeMap<String, String>,
    pub events: u64,
    pub connections: u64,
    pub readies: u64,
    pub resumes: u64,
}

#[derive(Debug)]
struct MapWrite {
    map: u64,
    operation: MapOperation,
}

#[derive(Debug, Default)]
pub struct MapsHistory {
    pub subscribers: Vec<Subscriber>,
    by_connection: BTreeMap<(NodeId, SubscriptionId), usize>,
    /// Deliveries of the very step that made their subscription (it is not on record yet).
    early: Vec<(NodeId, FeedDelivery)>,
    /// Each map's committed changes by revision, as its replicas applied them.
    history: BTreeMap<u64, BTreeMap<u64, MapOperation>>,
    writes: BTreeMap<u64, MapWrite>,
    pending: BTreeMap<(NodeId, u64), u64>,
    /// Acknowledged writes: history id to revision.
    acknowledged: BTreeMap<u64, u64>,
    next_write: u64,
    pub writes_sent: u64,
    pub writes_refused: u64,
    /// Feed reads the nodes up at the end made from their own replicas and through relays
    /// (since their last start).
    pub local_reads_at_end: u64,
    pub relay_reads_at_end: u64,
    violations: usize,
    /// The index of the maps workload in the run's workloads.
    workload: usize,
}

impl MapsHistory {
    pub fn node_crashed(&mut self, node: NodeId) {
        for history_id in crate::workload::take_pending_at(&mut self.pending, node) {
            self.writes.remove(&history_id);
        }
        let lost: Vec<(NodeId, SubscriptionId)> = self
            .by_connection
            .range((node, SubscriptionId(0))..=(node, SubscriptionId(u64::MAX)))
            .map(|(key, _)| *key)
            .collect();
        for key in lost {
            if let Some(index) = self.by_connection.remove(&key) {
                self.subscribers[index].connection = None;
            }
        }
    }

    pub fn acknowledged_count(&self) -> usize {
        self.acknowledged.len()
    }

    pub fn changes_committed(&self) -> usize {
        self.history.values().map(BTreeMap::len).sum()
    }
}

fn violation(world: &mut World, message: String) {
    if world.maps_history.violations >= VIOLATIONS_MAX {
        return;
    }
    world.maps_history.violations += 1;
    world.violations.push(Violation {
        at_micros: world.now_micros(),
        checker: Checker::Feeds,
        message,
    });
}

/// Sets up the subscribers and their first connections.
pub fn start(world: &mut World, index: usize) {
    let workload: WorkloadConfig = world.config.workloads[index].clone();
    world.maps_history.workload = index;
    let maps = world.config.partitions.as_ref().map_or(1, |run| run.count);
    for map in 0..maps {
        for _ in 0..workload.subscribers_per_map {
            let subscriber = world.maps_history.subscribers.len();
            world.maps_history.subscribers.push(Subscriber {
                map,
                ..Subscriber::default()
            });
            let at = world.now_micros() + world.draw(0, 500_000);
            world.schedule(at, Event::MapSubscriber { subscriber });
        }
    }
}

/// A subscriber's turn (each subscriber has one turn pending at a time): it leaves, or
/// (re)connects to a random node, resuming from what it has. Once the workload stopped it
/// stays, and only reconnects when its node went away.
pub fn subscriber_turn(world: &mut World, subscriber: usize) {
    let connected = world.maps_history.subscribers[subscriber].connection;
    let stopped = world.workload_stopped;
    let now = world.now_micros();
    if let Some((node, id)) = connected {
        if stopped {
            let next = now + 500_000;
            world.schedule(next, Event::MapSubscriber { subscriber });
            return;
        }
        // Leaves: its node forgets the subscription; it keeps what it has.
        let index = world.index_of(node);
        world.with_node(index, |node| node.unsubscribe(id));
        world.maps_history.by_connection.remove(&(node, id));
        world.maps_history.subscribers[subscriber].connection = None;
        let away = world.config.workloads[world.maps_history.workload]
            .subscriber_away_micros
            .draw(&mut world.rng);
        // Back by the time the workload stops at the latest: every subscriber is to end
        // at the final map.
        let stop = world.config.workload_stop_micros();
        let back = (world.now_micros() + away).min(stop.max(world.now_micros()) + away % 500_000);
        world.schedule(back, Event::MapSubscriber { subscriber });
        return;
    }
    let target = world.draw(0, world.nodes.len() as u64 - 1) as usize;
    if !world.nodes[target].is_up() || world.nodes[target].paused_until > now {
        let retry = now + world.draw(50_000, 300_000);
        world.schedule(retry, Event::MapSubscriber { subscriber });
        return;
    }
    let map = world.maps_history.subscribers[subscriber].map;
    let from = world.maps_history.subscribers[subscriber].revision;
    let Ok(name) = PartitionName::new(map_name(map)) else {
        return;
    };
    let mut made = None;
    world.with_node(target, |node| made = Some(node.subscribe(name, from)));
    let node = world.nodes[target].id;
    let Some(Ok(id)) = made else {
        let retry = now + world.draw(50_000, 300_000);
        world.schedule(retry, Event::MapSubscriber { subscriber });
        return;
    };
    let state = &mut world.maps_history.subscribers[subscriber];
    state.connection = Some((node, id));
    state.asked_from = from;
    state.awaiting_first = true;
    state.connections += 1;
    world
        .maps_history
        .by_connection
        .insert((node, id), subscriber);
    world
        .trace
        .record(now, "subscribe", subscriber as u64, from.unwrap_or(0));
    // Only this subscription's part: the others of a shared delivery had theirs at once.
    let early = std::mem::take(&mut world.maps_history.early);
    for (early_node, delivery) in early {
        if early_node == node && delivery.subscriptions.contains(&id) {
            take_event(world, subscriber, &delivery.event);
        }
    }
    let next = if stopped {
        500_000
    } else {
        world.draw(200_000, 2_000_000)
    };
    let at = world.now_micros() + next;
    world.schedule(at, Event::MapSubscriber { subscriber });
}

/// A writer's turn: a set or a delete of a random key of a random map, through a random node.
pub fn client_operation(world: &mut World, index: usize) {
    if world.workload_stopped {
        return;
    }
    let workload: WorkloadConfig = world.config.workloads[index].clone();
    let rate = workload.rate_per_s.max(1);
    let next = world.now_micros() + world.draw(0, 2 * (1_000_000 / rate));
    world.schedule(next, Event::ClientMap { workload: index });
    let maps = world.config.partitions.as_ref().map_or(1, |run| run.count);
    let map = world.draw(0, maps - 1);
    let key = world.draw(0, workload.keys_per_partition.max(1) - 1);
    let history_id = world.maps_history.next_write;
    world.maps_history.next_write += 1;
    let Ok(key) = MapKey::new(format!("k{key}")) else {
        return;
    };
    let operation = if world.rng.chance(workload.delete_ratio) {
        MapOperation::Delete { key }
    } else {
        let value = serde_json::json!({ "write": history_id, "at": world.now_micros() });
        let Ok(value) = MapValue::from_value(&value) else {
            return;
        };
        MapOperation::Set { key, value }
    };
    let target = world.draw(0, world.nodes.len() as u64 - 1) as usize;
    let now = world.now_micros();
    if !world.nodes[target].is_up() || world.nodes[target].paused_until > now {
        world.maps_history.writes_refused += 1;
        return;
    }
    let Ok(name) = PartitionName::new(map_name(map)) else {
        return;
    };
    let mut started = None;
    let request = RoutedRequest::Write(SimOperation::Map(operation.clone()));
    world.with_node(target, |node| {
        started = Some(node.route_request(name, request))
    });
    let Some(Ok(request_id)) = started else {
        world.maps_history.writes_refused += 1;
        return;
    };
    let node = world.nodes[target].id;
    world.maps_history.writes_sent += 1;
    world
        .maps_history
        .writes
        .insert(history_id, MapWrite { map, operation });
    world
        .maps_history
        .pending
        .insert((node, request_id), history_id);
    world.trace.record(now, "map write", history_id, map);
    if let Some(answer) = crate::workload::kv::take_early_routed(world, node, request_id) {
        on_routed_answer(world, node, answer);
    }
}

/// A routed answer: a map write's when it answers one; any other is handed back.
pub fn on_routed_answer(
    world: &mut World,
    node: NodeId,
    answer: RouterAnswer<SimOutcome, SimAnswer>,
) -> Option<RouterAnswer<SimOutcome, SimAnswer>> {
    let Some(history_id) = world
        .maps_history
        .pending
        .remove(&(node, answer.request_id))
    else {
        return Some(answer);
    };
    if let Ok(RoutedOutcome::Wrote(SimOutcome::Map(MapOutcome::Changed { revision }))) =
        answer.result
    {
        world.maps_history.acknowledged.insert(history_id, revision);
    }
    None
}

/// What a node's replicas applied: the committed history, which every replica must agree on.
pub fn record_applied(world: &mut World, node: NodeId, applied: Vec<(Vec<u8>, u64, MapOperation)>) {
    for (name, revision, operation) in applied {
        let Some(map) = map_of(&name) else {
            continue;
        };
        let recorded = world
            .maps_history
            .history
            .entry(map)
            .or_default()
            .entry(revision)
            .or_insert_with(|| operation.clone())
            .clone();
        if recorded != operation {
            violation(
                world,
                format!(
                    "map-{map}: {node} applied {operation:?} at revision {revision}, another replica {recorded:?}"
                ),
            );
        }
    }
}

/// The map folded from its history up to `revision`, or the first revision missing.
fn folded(
    history: &BTreeMap<u64, MapOperation>,
    revision: u64,
) -> Result<BTreeMap<String, String>, u64> {
    let mut entries = BTreeMap::new();
    for expected in 1..=revision {
        match history.get(&expected) {
            Some(MapOperation::Set { key, value }) => {
                entries.insert(key.as_str().to_string(), value.as_json().to_string());
            }
            Some(MapOperation::Delete { key }) => {
                entries.remove(key.as_str());
            }
            None => return Err(expected),
        }
    }
    Ok(entries)
}

pub fn on_delivery(world: &mut World, node: NodeId, delivery: FeedDelivery) {
    let mut unknown = false;
    for id in &delivery.subscriptions {
        match world.maps_history.by_connection.get(&(node, *id)).copied() {
            Some(subscriber) => take_event(world, subscriber, &delivery.event),
            None => unknown = true,
        }
    }
    if unknown {
        // Possibly the subscription the current step is making: taken once it is on record.
        world.maps_history.early.push((node, delivery));
    }
}

fn take_event(world: &mut World, index: usize, event: &FeedEvent) {
    let subscriber = &world.maps_history.subscribers[index];
    let map = subscriber.map;
    let (node, id) = subscriber
        .connection
        .unwrap_or((NodeId(0), SubscriptionId(0)));
    let who = format!(
        "map-{map} subscriber {index} (subscription {} on {node})",
        id.0
    );
    let first = subscriber.awaiting_first;
    let held = subscriber.revision;
    let asked_from = subscriber.asked_from;
    let history = world
        .maps_history
        .history
        .get(&map)
        .cloned()
        .unwrap_or_default();
    let mut problems = Vec::new();
    {
        let subscriber = &mut world.maps_history.subscribers[index];
        subscriber.events += 1;
        subscriber.awaiting_first = false;
        match event {
            FeedEvent::Ready(map_entries) => {
                subscriber.readies += 1;
                let revision = map_entries.revision;
                if held.is_some_and(|held| revision < held) {
                    problems.push(format!(
                        "{who}: a ready at revision {revision} after it had {held:?}"
                    ));
                }
                let entries: BTreeMap<String, String> = map_entries
                    .entries
                    .iter()
                    .map(|(key, value)| (key.as_str().to_string(), value.as_json().to_string()))
                    .collect();
                match folded(&history, revision) {
                    Ok(expected) if expected != entries => problems.push(format!(
                        "{who}: ready at revision {revision} holds {} keys, unlike the committed history folded to it ({} keys)",
                        entries.len(),
                        expected.len()
                    )),
                    Err(missing) => problems.push(format!(
                        "{who}: ready at revision {revision}, but no replica applied revision {missing}"
                    )),
                    Ok(_) => {}
                }
                subscriber.entries = entries;
                subscriber.revision = Some(revision);
            }
            FeedEvent::Resumed { revision } => {
                subscriber.resumes += 1;
                if !first || Some(*revision) != asked_from {
                    problems.push(format!(
                        "{who}: resumed at {revision}, having asked for {asked_from:?} (first event: {first})"
                    ));
                }
            }
            FeedEvent::Change(change) => {
                let expected = held.map_or(0, |held| held + 1);
                if first || held.is_none() {
                    problems.push(format!(
                        "{who}: change {} before any ready or resumed",
                        change.revision
                    ));
                } else if change.revision != expected {
                    problems.push(format!(
                        "{who}: change at revision {} where {expected} was next (a gap, duplicate or reordering)",
                        change.revision
                    ));
                }
                let key = change.key.as_str().to_string();
                match (&change.kind, history.get(&change.revision)) {
                    (
                        ChangeKind::Set { value },
                        Some(MapOperation::Set {
                            key: committed_key,
                            value: committed_value,
                        }),
                    ) if committed_key == &change.key && committed_value == value => {}
                    (ChangeKind::Delete { old_value }, Some(MapOperation::Delete { key: committed_key }))
                        if committed_key == &change.key =>
                    {
                        if problems.is_empty()
                            && subscriber.entries.get(&key) != Some(&old_value.as_json().to_string())
                        {
                            problems.push(format!(
                                "{who}: delete of {key} at revision {} says its old value was {}, the subscriber held {:?}",
                                change.revision,
                                old_value.as_json(),
                                subscriber.entries.get(&key)
                            ));
                        }
                    }
                    (kind, committed) => problems.push(format!(
                        "{who}: change at revision {} is {kind:?} of {key}; the committed history has {committed:?}",
                        change.revision
                    )),
                }
                match &change.kind {
                    ChangeKind::Set { value } => {
                        subscriber.entries.insert(key, value.as_json().to_string());
                    }
                    ChangeKind::Delete { .. } => {
                        subscriber.entries.remove(&key);
                    }
                }
                subscriber.revision = Some(change.revision.max(held.unwrap_or(0)));
            }
            FeedEvent::Resync { .. } => {}
        }
    }
    for problem in problems {
        violation(world, problem);
    }
}

/// At the end, once the workload stopped and the cluster healed: every subscriber holds the
/// final map, and every acknowledged write is in the history at its revision.
pub fn check(world: &mut World) {
    for index in 0..world.nodes.len() {
        if let crate::world::NodeState::Up(node) = &world.nodes[index].state {
            let counters = node.feed_counters();
            world.maps_history.local_reads_at_end += counters.local_reads;
            world.maps_history.relay_reads_at_end += counters.relay_reads;
        }
    }
    let mut problems = Vec::new();
    for (history_id, revision) in &world.maps_history.acknowledged {
        let Some(write) = world.maps_history.writes.get(history_id) else {
            continue;
        };
        let committed = world
            .maps_history
            .history
            .get(&write.map)
            .and_then(|history| history.get(revision));
        if committed != Some(&write.operation) {
            problems.push(format!(
                "map-{}: write {history_id} ({:?}) was acknowledged at revision {revision}, which the history has as {committed:?}",
                write.map, write.operation
            ));
        }
    }
    for (index, subscriber) in world.maps_history.subscribers.iter().enumerate() {
        let history = world
            .maps_history
            .history
            .get(&subscriber.map)
            .cloned()
            .unwrap_or_default();
        let last = history.keys().next_back().copied().unwrap_or(0);
        let Some(held) = subscriber.revision else {
            problems.push(format!(
                "map-{} subscriber {index} never received the map ({} connections)",
                subscriber.map, subscriber.connections
            ));
            continue;
        };
        if held != last || subscriber.connection.is_none() {
            problems.push(format!(
                "map-{} subscriber {index} ended at revision {held} of {last} (connected: {:?})",
                subscriber.map, subscriber.connection
            ));
            continue;
        }
        if folded(&history, last).ok().as_ref() != Some(&subscriber.entries) {
            problems.push(format!(
                "map-{} subscriber {index} ended at revision {last} with a map unlike the history's",
                subscriber.map
            ));
        }
    }
    for problem in problems {
        violation(world, problem);
    }
}

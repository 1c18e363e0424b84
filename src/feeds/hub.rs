//! The feed hub of one node: the subscriptions to maps made on this node, and what each is
//! owed next.
//!
//! A subscription is at a position: starting (from nothing, or from a revision it had), or
//! live at the revision of the last event it was given. Whenever a map changes (its
//! partition's state machine reports it touched) or a subscription starts, the hub reads
//! what each group of subscriptions at the same position needs and hands it out as
//! deliveries, one event shared by the group:
//! - from the node's own replica, when it has one that votes and knows a leader (a follower
//!   serves its own subscribers from what it applied, which is always a prefix of the
//!   committed history);
//! - otherwise through the router, from the partition's leader, polled every
//!   `relay_poll_ticks` while live (a relay: one read per position, however many
//!   subscribers share it).
//!
//! Invariants (what the feed checker holds it to):
//! - a subscription receives `Ready` at R (or `Resumed` at its own revision), then exactly
//!   the changes after it, in revision order, each once; a gap is never silent: when the
//!   changes it needs were compacted away it receives a fresh `Ready`;
//! - an answer is only handed to subscriptions still at the position it was read for;
//! - the hub holds no events: everything it reads goes out at once, and bounding what a
//!   subscriber has not consumed is its connection's [`FeedBuffer`](super::FeedBuffer);
//! - a subscription asking to resume after a revision the leader never committed starts
//!   over with the whole map (a replica behind it is waited for);
//! - at most `subscriptions_max` subscriptions live at once.

use crate::coordinator::cluster::{directory_of, ClusterKinds};
use crate::coordinator::router::{RouteError, RoutedOutcome, RoutedRequest, Router, RouterAnswer};
use crate::directory::PartitionName;
use crate::feeds::event::{FeedDelivery, FeedEvent, SubscriptionId};
use crate::maps::{FeedRead, MapAnswer, MapQuery};
use crate::partition::host::PartitionHost;
use crate::partition::PartitionId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Bugs a canary plants in the hub, to prove the feed checker catches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedPlantedBug {
    /// A subscription that resumes from a revision skips the first change after it.
    SkipDeltaOnResume,
}

#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// Subscriptions alive at once on the node; one more is refused.
    pub subscriptions_max: usize,
    /// Ticks between two reads of a live relay that found nothing new.
    pub relay_poll_ticks: u64,
    /// Reads from the node's replica for one position in one pump (a subscriber far behind
    /// catches up over several).
    pub local_reads_per_pump_max: usize,
    pub planted_bug: Option<FeedPlantedBug>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            subscriptions_max: 10_000,
            relay_poll_ticks: 2,
            local_reads_per_pump_max: 4,
            planted_bug: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("this node serves {0} feed subscriptions already; try another node or later")]
    TooManySubscriptions(usize),
    #[error("this node runs no cluster of named partitions")]
    NoCluster,
}

/// What the hub did since the node opened, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedCounters {
    pub subscribed: u64,
    pub unsubscribed: u64,
    pub refused: u64,
    /// Events handed out (one per subscription reached).
    pub events: u64,
    /// `Ready`s handed out to groups (a start, or a compacted resume).
    pub snapshots: u64,
    /// Resumes served from the history.
    pub resumes: u64,
    pub local_reads: u64,
    pub relay_reads: u64,
    pub relay_failures: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// Nothing handed out yet; `from` is the revision it resumes from.
    Start { from: Option<u64> },
    /// Everything up to `revision` handed out.
    Live { revision: u64 },
}

impl Position {
    fn after(self) -> Option<u64> {
        match self {
            Position::Start { from } => from,
            Position::Live { revision } => Some(revision),
        }
    }
}

#[derive(Debug)]
struct Subscription {
    name: PartitionName,
    position: Position,
}

/// The reads in flight for one map's subscriptions served through the router.
#[derive(Debug, Default)]
struct Relay {
    /// Request id to the position (`after`) it reads for.
    in_flight: BTreeMap<u64, Option<u64>>,
    /// No live read before this tick.
    next_poll_tick: u64,
}

#[derive(Debug, Default)]
pub struct FeedHub {
    config: FeedConfig,
    next_id: u64,
    subscriptions: BTreeMap<SubscriptionId, Subscription>,
    by_name: BTreeMap<PartitionName, BTreeSet<SubscriptionId>>,
    /// Maps to look at in the next pump.
    dirty: BTreeSet<PartitionName>,
    relays: BTreeMap<PartitionName, Relay>,
    /// A relay's request id to its map.
    relay_requests: BTreeMap<u64, PartitionName>,
    deliveries: Vec<FeedDelivery>,
    counters: FeedCounters,
    tick: u64,
}

impl FeedHub {
    pub fn new(config: FeedConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn counters(&self) -> FeedCounters {
        self.counters
    }

    /// Subscriptions alive.
    pub fn len(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    /// A new subscription to map `name`, from revision `from` (it had everything up to it)
    /// or from nothing. Its first event comes out of the next pump.
    pub fn subscribe(
        &mut self,
        name: PartitionName,
        from: Option<u64>,
    ) -> Result<SubscriptionId, FeedError> {
        if self.subscriptions.len() >= self.config.subscriptions_max {
            self.counters.refused += 1;
            return Err(FeedError::TooManySubscriptions(self.subscriptions.len()));
        }
        self.next_id += 1;
        let id = SubscriptionId(self.next_id);
        self.subscriptions.insert(
            id,
            Subscription {
                name: name.clone(),
                position: Position::Start { from },
            },
        );
        self.by_name.entry(name.clone()).or_default().insert(id);
        self.dirty.insert(name);
        self.counters.subscribed += 1;
        Ok(id)
    }

    /// Ends a subscription (its connection closed, or it was cut off). Unknown ids are
    /// ignored.
    pub fn unsubscribe(&mut self, id: SubscriptionId) {
        let Some(subscription) = self.subscriptions.remove(&id) else {
            return;
        };
        self.counters.unsubscribed += 1;
        if let Some(ids) = self.by_name.get_mut(&subscription.name) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_name.remove(&subscription.name);
            }
        }
    }

    pub fn take_deliveries(&mut self) -> Vec<FeedDelivery> {
        std::mem::take(&mut self.deliveries)
    }

    /// Hands out what the subscriptions are owed: called in every pump of the node, after
    /// its partitions applied. `routing`: the node runs a cluster, so relays may route.
    pub fn pump<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        router: &mut Router<M>,
        routing: bool,
    ) {
        let touched = host.machine_mut().take_touched_maps();
        if !touched.is_empty() {
            tracing::debug!(?touched, "feed maps touched");
        }
        self.tick = host.ticks();
        if self.subscriptions.is_empty() {
            self.relays.clear();
            self.dirty.clear();
            return;
        }
        if let Some(directory) = directory_of(host) {
            for partition in touched {
                if let Some(entry) = directory.partition_by_id(partition) {
                    if self.by_name.contains_key(&entry.name) {
                        self.dirty.insert(entry.name.clone());
                    }
                }
            }
        }
        for (name, relay) in &self.relays {
            if self.tick >= relay.next_poll_tick {
                self.dirty.insert(name.clone());
            }
        }
        for name in std::mem::take(&mut self.dirty) {
            self.serve(host, router, routing, name);
        }
    }

    /// The subscriptions of `name`, grouped by the revision they need changes after.
    fn groups(&self, name: &PartitionName) -> BTreeMap<Option<u64>, Vec<SubscriptionId>> {
        let mut groups: BTreeMap<Option<u64>, Vec<SubscriptionId>> = BTreeMap::new();
        for id in self.by_name.get(name).into_iter().flatten() {
            if let Some(subscription) = self.subscriptions.get(id) {
                groups
                    .entry(subscription.position.after())
                    .or_default()
                    .push(*id);
            }
        }
        groups
    }

    fn serve<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        router: &mut Router<M>,
        routing: bool,
        name: PartitionName,
    ) {
        if !self.by_name.contains_key(&name) {
            self.relays.remove(&name);
            return;
        }
        let local = directory_of(host)
            .and_then(|directory| directory.partition(&name))
            .map(|entry| entry.id)
            .filter(|partition| serves_locally(host, *partition));
        tracing::debug!(map = ?name, local = ?local, subscriptions = self.by_name.get(&name).map_or(0, BTreeSet::len), "feed serve");
        match local {
            Some(partition) => {
                self.relays.remove(&name);
                for after in self.groups(&name).into_keys() {
                    self.serve_local(host, &name, partition, after);
                }
            }
            None if routing => self.serve_relay(host, router, name),
            None => {}
        }
    }

    /// Reads for the group at `after` from this node's replica until it is caught up (or
    /// the pump's budget is spent, and the map is looked at again next pump).
    fn serve_local<M: ClusterKinds>(
        &mut self,
        host: &PartitionHost<M>,
        name: &PartitionName,
        partition: PartitionId,
        after: Option<u64>,
    ) {
        let mut after = after;
        for _ in 0..self.config.local_reads_per_pump_max {
            let Some(query) = M::map_query(MapQuery::Feed { after }) else {
                return;
            };
            let answer = match host.read_applied(partition, &query) {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::debug!(map = ?name, %error, "feed local read failed");
                    return;
                }
            };
            self.counters.local_reads += 1;
            let Some(MapAnswer::Feed(read)) = M::map_answer(answer) else {
                return;
            };
            match self.hand_out(name, after, read) {
                Some(Progress::More(next)) => after = Some(next),
                Some(Progress::CaughtUp) | None => return,
            }
        }
        self.dirty.insert(name.clone());
    }

    fn serve_relay<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        router: &mut Router<M>,
        name: PartitionName,
    ) {
        let groups = self.groups(&name);
        let tick = self.tick;
        let relay = self.relays.entry(name.clone()).or_default();
        let live_due = tick >= relay.next_poll_tick;
        let mut sent = false;
        for (after, ids) in groups {
            if relay.in_flight.values().any(|asked| *asked == after) {
                continue;
            }
            let starting = ids.iter().any(|id| {
                self.subscriptions.get(id).is_some_and(|subscription| {
                    matches!(subscription.position, Position::Start { .. })
                })
            });
            if !starting && !live_due {
                continue;
            }
            let Some(query) = M::map_query(MapQuery::Feed { after }) else {
                return;
            };
            let request_id = router.submit(host, name.clone(), RoutedRequest::Read(query));
            relay.in_flight.insert(request_id, after);
            self.relay_requests.insert(request_id, name.clone());
            self.counters.relay_reads += 1;
            sent = true;
        }
        if sent || live_due {
            relay.next_poll_tick = tick + self.config.relay_poll_ticks;
        }
    }

    /// Takes a router answer to a relay's read; gives back any other.
    pub fn take_router_answer<M: ClusterKinds>(
        &mut self,
        answer: RouterAnswer<M::Outcome, M::Answer>,
    ) -> Option<RouterAnswer<M::Outcome, M::Answer>> {
        let Some(name) = self.relay_requests.remove(&answer.request_id) else {
            return Some(answer);
        };
        let after = self
            .relays
            .get_mut(&name)
            .and_then(|relay| relay.in_flight.remove(&answer.request_id));
        let Some(after) = after else {
            // The relay ended (its subscribers left, or the node took over locally).
            return None;
        };
        let read = match answer.result {
            Ok(RoutedOutcome::Read(answer)) => match M::map_answer(answer) {
                Some(MapAnswer::Feed(read)) => Some(read),
                _ => None,
            },
            Ok(_) | Err(RouteError::Request(_)) | Err(_) => None,
        };
        let Some(read) = read else {
            self.counters.relay_failures += 1;
            if let Some(relay) = self.relays.get_mut(&name) {
                relay.next_poll_tick = self.tick + 5 * self.config.relay_poll_ticks;
            }
            return None;
        };
        if let FeedRead::Behind { .. } = read {
            // The leader read at its read index: a revision past it was never committed (a
            // client's made-up revision). Those subscriptions start over with the whole map
            // instead of polling the leader for ever.
            self.start_over(&name, after);
            self.dirty.insert(name);
            return None;
        }
        if let Some(Progress::More(_)) = self.hand_out(&name, after, read) {
            // More is waiting at the leader: read on at the next pump.
            if let Some(relay) = self.relays.get_mut(&name) {
                relay.next_poll_tick = self.tick;
            }
            self.dirty.insert(name);
        }
        None
    }

    /// Sets the subscriptions of `name` at position `after` to start from nothing.
    fn start_over(&mut self, name: &PartitionName, after: Option<u64>) {
        for id in self.by_name.get(name).into_iter().flatten() {
            if let Some(subscription) = self.subscriptions.get_mut(id) {
                if subscription.position.after() == after {
                    subscription.position = Position::Start { from: None };
                }
            }
        }
    }

    /// Hands `read` (what a replica answered for position `after`) to the subscriptions
    /// still at that position, and moves them on.
    fn hand_out(
        &mut self,
        name: &PartitionName,
        after: Option<u64>,
        read: FeedRead,
    ) -> Option<Progress> {
        let mut starting = Vec::new();
        let mut live = Vec::new();
        for id in self.by_name.get(name).into_iter().flatten() {
            let Some(subscription) = self.subscriptions.get(id) else {
                continue;
            };
            if subscription.position.after() != after {
                continue;
            }
            match subscription.position {
                Position::Start { .. } => starting.push(*id),
                Position::Live { .. } => live.push(*id),
            }
        }
        if starting.is_empty() && live.is_empty() {
            return None;
        }
        tracing::debug!(map = ?name, ?after, starting = starting.len(), live = live.len(), read = ?match &read { FeedRead::Changes { changes, revision } => (changes.len() as u64, *revision), FeedRead::Snapshot(entries) => (u64::MAX, entries.revision), FeedRead::Behind { revision } => (u64::MAX - 1, *revision) }, "feed hand out");
        let mut everyone: Vec<SubscriptionId> = starting.iter().chain(&live).copied().collect();
        everyone.sort_unstable();
        let (revision, progress) = match read {
            FeedRead::Behind { .. } => return Some(Progress::CaughtUp),
            FeedRead::Snapshot(entries) => {
                let revision = entries.revision;
                self.counters.snapshots += 1;
                self.deliver(everyone, FeedEvent::Ready(entries));
                (revision, Progress::CaughtUp)
            }
            FeedRead::Changes {
                changes,
                revision: at,
            } => {
                let after = after.unwrap_or(0);
                if !starting.is_empty() {
                    self.counters.resumes += 1;
                    self.deliver(starting.clone(), FeedEvent::Resumed { revision: after });
                }
                let last = changes.last().map_or(after, |change| change.revision);
                let skip_first = self.config.planted_bug == Some(FeedPlantedBug::SkipDeltaOnResume)
                    && !starting.is_empty();
                for (offset, change) in changes.into_iter().enumerate() {
                    let to = if offset == 0 && skip_first {
                        live.clone()
                    } else {
                        everyone.clone()
                    };
                    self.deliver(to, FeedEvent::Change(change));
                }
                let progress = if last < at {
                    Progress::More(last)
                } else {
                    Progress::CaughtUp
                };
                (last, progress)
            }
        };
        for id in starting.iter().chain(&live) {
            if let Some(subscription) = self.subscriptions.get_mut(id) {
                subscription.position = Position::Live { revision };
            }
        }
        Some(progress)
    }

    fn deliver(&mut self, subscriptions: Vec<SubscriptionId>, event: FeedEvent) {
        if subscriptions.is_empty() {
            return;
        }
        self.counters.events += subscriptions.len() as u64;
        self.deliveries.push(FeedDelivery {
            subscriptions,
            event: Arc::new(event),
        });
    }
}

/// What a read left for its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    CaughtUp,
    /// More changes wait after this revision.
    More(u64),
}

/// Whether this node's replica of `partition` serves feeds: it votes and knows a leader (a
/// replica that is catching up, or cut off from its group, leaves its subscribers to the
/// leader).
fn serves_locally<M: ClusterKinds>(host: &PartitionHost<M>, partition: PartitionId) -> bool {
    host.status(partition)
        .is_some_and(|status| status.leader.is_some() && status.configuration.is_voter(host.id()))
}

//! Request routing on one node: any node takes a request for any partition name, finds the
//! partition in its copy of the directory (creating it through the directory when the name is
//! new), and sends it to the replica it believes leads, following "not the leader" hints at
//! once and trying the other replicas after a short pause when one cannot serve.
//!
//! It drives the node's partition host and never owns it: each call is given the host.
//!
//! Invariants:
//! - a write keeps one identity (the host's `route_write`) across every attempt, so replicas
//!   apply it at most once however many leaders it was sent to; the host holds its mark until
//!   the router finishes it;
//! - every request ends: answered by a replica, refused for a reason that retrying cannot
//!   change, or failed after [`RouterConfig::attempts_max`] attempts or
//!   [`RouterConfig::request_timeout_ticks`], with an error that says what was heard from
//!   each replica;
//! - a failed write is reported as not applied only when every node it reached refused it
//!   before proposing it (or saw its entry replaced): an unanswered attempt, an unknown
//!   outcome or a poisoned node leaves it "may have applied";
//! - the router acts on the directory this node applied, or on an entry the directory's
//!   leader answered with; it never guesses a replica set;
//! - at most [`RouterConfig::requests_max`] requests wait at once; one more is refused.

use crate::coordinator::cluster::{directory_of, ClusterKinds};
use crate::directory::SYSTEM_PARTITION;
use crate::directory::{DirectoryOperation, DirectoryOutcome, PartitionEntry, PartitionName};
use crate::ids::NodeId;
use crate::partition::host::{decode_answer, error_of, PartitionHost, RequestError};
use crate::partition::route::{
    ByteAnswer, RouteMessage, RouteRefusal, RouteRefusalKind, HANDLER_TIMEOUT_MICROS_MAX,
};
use crate::partition::PartitionId;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Sends of one request at most (to hints, then to the other replicas).
    pub attempts_max: u32,
    /// Ticks a request may take in all.
    pub request_timeout_ticks: u64,
    /// Ticks one attempt waits for its answer before the next replica is tried.
    pub attempt_timeout_ticks: u64,
    /// Ticks to wait after a replica could not serve (no leader yet, no replica yet).
    pub retry_pause_ticks: u64,
    /// Requests waiting at once.
    pub requests_max: usize,
    /// The length of a tick (a handler request's timeout is in microseconds).
    pub tick_micros: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            attempts_max: 12,
            request_timeout_ticks: 500,
            attempt_timeout_ticks: 30,
            retry_pause_ticks: 10,
            requests_max: 16_384,
            tick_micros: 10_000,
        }
    }
}

/// What a client asks of a partition.
#[derive(Clone, Debug, PartialEq)]
pub enum RoutedRequest<Operation, Query> {
    Write(Operation),
    Read(Query),
    /// A request for the partition's handler, run on its leader. `idempotent`: the handler
    /// declared it, so an attempt that went unanswered may be sent again; otherwise only
    /// refusals that say it did not run are retried. The request waits `timeout_micros` in
    /// all (at most [`HANDLER_TIMEOUT_MICROS_MAX`]).
    Handle {
        body: Vec<u8>,
        idempotent: bool,
        timeout_micros: u64,
    },
}

impl<Operation, Query> RoutedRequest<Operation, Query> {
    /// Whether an attempt that went unanswered may be sent again.
    fn resend_when_silent(&self) -> bool {
        match self {
            RoutedRequest::Write(_) | RoutedRequest::Read(_) => true,
            RoutedRequest::Handle { idempotent, .. } => *idempotent,
        }
    }
}

/// What came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutedOutcome<Outcome, Answer> {
    Wrote(Outcome),
    Read(Answer),
    /// A handler's reply.
    Replied(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The partition refused it, or its outcome is unknown.
    #[error(transparent)]
    Request(RequestError),
    #[error("partition {name:?} has no leader: {detail}")]
    NoLeader { name: String, detail: String },
    #[error("partition {name:?} could not be created: {reason}")]
    NotCreated { name: String, reason: String },
    #[error("the cluster directory has no leader this node can reach: {0}")]
    NoDirectory(String),
    #[error("this node routes {0} requests already; retry")]
    Overloaded(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterAnswer<Outcome, Answer> {
    pub request_id: u64,
    pub result: Result<RoutedOutcome<Outcome, Answer>, RouteError>,
    /// A failed write that certainly did not take effect: every node it reached refused it
    /// before proposing it (or saw its entry replaced), so retrying it cannot double it.
    /// `false` when it may have taken effect (an attempt went unanswered, or its outcome is
    /// unknown).
    pub not_applied: bool,
}

/// Where a request is going.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// The directory's own group (the system partition).
    Directory,
    Named(PartitionName),
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the name to be in the directory (its creation in flight, or asked for at
    /// `retry_tick`).
    Resolving { retry_tick: u64 },
    /// Sent to `target` at `sent_tick`; the message is kept for the next attempt.
    Sent { target: NodeId, sent_tick: u64 },
    /// Waiting until `until_tick` before the next attempt.
    Paused { until_tick: u64 },
}

#[derive(Debug)]
struct Request<Operation, Query> {
    target: Target,
    request: RoutedRequest<Operation, Query>,
    /// Set once the partition is known: its id, replica set, and the routed message (the
    /// write's identity, kept for every attempt) with its route id.
    route: Option<Route>,
    phase: Phase,
    attempts: u32,
    deadline_tick: u64,
    /// The replica to try next, from a hint.
    hint: Option<NodeId>,
    /// What each replica said last, for the error a failure carries.
    heard: BTreeMap<NodeId, String>,
    /// Some attempt may have been proposed: it went unanswered, or its answer did not say
    /// it was refused before proposing.
    maybe_proposed: bool,
    /// For a creation: the client request waiting for it.
    creating_for: Option<u64>,
}

#[derive(Debug)]
struct Route {
    partition: PartitionId,
    replicas: Vec<NodeId>,
    route_id: u64,
    message: RouteMessage,
}

pub struct Router<M: ClusterKinds> {
    config: RouterConfig,
    tick: u64,
    next_request_id: u64,
    requests: BTreeMap<u64, Request<M::Operation, M::Query>>,
    /// Route id (the host's request id) to the router's request id.
    by_route: BTreeMap<u64, u64>,
    /// The leader each partition last named or proved to be.
    leaders: BTreeMap<PartitionId, NodeId>,
    /// The names whose creation is in flight, with the creating request.
    creating: BTreeMap<PartitionName, u64>,
    answers: Vec<RouterAnswer<M::Outcome, M::Answer>>,
    /// The planted canary bug: a handler request goes to this node first when it holds a
    /// replica of the partition (leader or not).
    handlers_on_own_replica: bool,
}

impl<M: ClusterKinds> std::fmt::Debug for Router<M> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Router")
            .field("requests", &self.requests.len())
            .finish_non_exhaustive()
    }
}

/// A refusal that retrying elsewhere can change (and how long to wait first).
fn retryable(kind: &RouteRefusalKind) -> bool {
    matches!(
        kind,
        RouteRefusalKind::NotLeader { .. }
            | RouteRefusalKind::UnknownPartition
            | RouteRefusalKind::Busy
            | RouteRefusalKind::Unavailable
    )
}

impl<M: ClusterKinds> Router<M> {
    pub fn new(config: RouterConfig) -> Self {
        Self {
            config,
            tick: 0,
            next_request_id: 0,
            requests: BTreeMap::new(),
            by_route: BTreeMap::new(),
            leaders: BTreeMap::new(),
            creating: BTreeMap::new(),
            answers: Vec::new(),
            handlers_on_own_replica: false,
        }
    }

    /// Plants the canary bug [`Router::handlers_on_own_replica`] describes.
    pub fn plant_serve_handlers_on_own_replica(&mut self) {
        self.handlers_on_own_replica = true;
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.requests.len()
    }

    /// The leader this router last heard of for `partition`.
    pub fn leader_of(&self, partition: PartitionId) -> Option<NodeId> {
        self.leaders.get(&partition).copied()
    }

    pub fn take_answers(&mut self) -> Vec<RouterAnswer<M::Outcome, M::Answer>> {
        std::mem::take(&mut self.answers)
    }

    /// Takes a client request for partition `name`; its answer comes out of
    /// [`Self::take_answers`] with the returned id.
    pub fn submit(
        &mut self,
        host: &mut PartitionHost<M>,
        name: PartitionName,
        request: RoutedRequest<M::Operation, M::Query>,
    ) -> u64 {
        self.enqueue(host, Target::Named(name), request)
    }

    /// Takes a write for the directory itself (the system partition), sent to its leader;
    /// its answer comes out of [`Self::take_answers`] with the returned id.
    pub fn submit_directory(
        &mut self,
        host: &mut PartitionHost<M>,
        operation: M::Operation,
    ) -> u64 {
        self.enqueue(host, Target::Directory, RoutedRequest::Write(operation))
    }

    fn enqueue(
        &mut self,
        host: &mut PartitionHost<M>,
        target: Target,
        request: RoutedRequest<M::Operation, M::Query>,
    ) -> u64 {
        self.next_request_id += 1;
        let request_id = self.next_request_id;
        let timeout_ticks = match &request {
            RoutedRequest::Handle { timeout_micros, .. } => {
                (*timeout_micros).min(HANDLER_TIMEOUT_MICROS_MAX) / self.config.tick_micros.max(1)
            }
            _ => self.config.request_timeout_ticks,
        };
        if self.requests.len() >= self.config.requests_max {
            self.answers.push(RouterAnswer {
                request_id,
                result: Err(RouteError::Overloaded(self.requests.len())),
                not_applied: true,
            });
            return request_id;
        }
        self.requests.insert(
            request_id,
            Request {
                target,
                request,
                route: None,
                phase: Phase::Resolving { retry_tick: 0 },
                attempts: 0,
                deadline_tick: self.tick + self.config.request_timeout_ticks,
                hint: None,
                heard: BTreeMap::new(),
                maybe_proposed: false,
                creating_for: None,
            },
        );
        if let Some(request) = self.requests.get_mut(&request_id) {
            request.deadline_tick = self.tick + timeout_ticks.max(1);
        }
        self.advance(host, request_id);
        request_id
    }

    /// One tick: attempts that waited too long move on, pauses end, requests past their
    /// deadline fail.
    pub fn tick(&mut self, host: &mut PartitionHost<M>) {
        self.tick += 1;
        let now = self.tick;
        let due: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, request)| {
                now >= request.deadline_tick
                    || match request.phase {
                        Phase::Resolving { retry_tick } => now >= retry_tick,
                        Phase::Sent { sent_tick, .. } => {
                            request.request.resend_when_silent()
                                && now >= sent_tick + self.config.attempt_timeout_ticks
                        }
                        Phase::Paused { until_tick } => now >= until_tick,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for request_id in due {
            if let Some(request) = self.requests.get_mut(&request_id) {
                if let Phase::Sent { target, .. } = request.phase {
                    request.heard.insert(target, "no answer".into());
                    request.maybe_proposed = true;
                    request.phase = Phase::Paused { until_tick: now };
                }
            }
            self.advance(host, request_id);
        }
    }

    /// Moves a request on: resolves its partition, or sends its next attempt, or fails it.
    fn advance(&mut self, host: &mut PartitionHost<M>, request_id: u64) {
        let Some(request) = self.requests.get(&request_id) else {
            return;
        };
        if self.tick >= request.deadline_tick {
            let error = self.give_up_error(host, request);
            self.finish(host, request_id, Err(error));
            return;
        }
        if request.route.is_none() {
            match self.resolve(host, request_id) {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    self.finish(host, request_id, Err(error));
                    return;
                }
            }
        }
        self.send_attempt(host, request_id);
    }

    /// The replicas and leader of a request's target, as this node knows them now.
    fn placement(
        &self,
        host: &PartitionHost<M>,
        target: &Target,
    ) -> Option<(PartitionId, Vec<NodeId>)> {
        match target {
            Target::Directory => {
                // A node still joining has no configuration of the directory's group yet:
                // it waits for one rather than trying nobody.
                let status = host.status(SYSTEM_PARTITION)?;
                let voters: Vec<NodeId> = status.configuration.voters.iter().copied().collect();
                (!voters.is_empty()).then_some((SYSTEM_PARTITION, voters))
            }
            Target::Named(name) => {
                // During a move the replicas it is leaving may still lead it.
                let entry = directory_of(host)?.partition(name)?;
                Some((entry.id, entry.holders()))
            }
        }
    }

    /// Gives a request its route once its partition is known; asks the directory to create
    /// a name it does not list. `Ok(false)`: not yet.
    fn resolve(
        &mut self,
        host: &mut PartitionHost<M>,
        request_id: u64,
    ) -> Result<bool, RouteError> {
        let Some(request) = self.requests.get(&request_id) else {
            return Ok(false);
        };
        let Some((partition, replicas)) = self.placement(host, &request.target) else {
            if let Target::Named(name) = &request.target {
                let name = name.clone();
                self.create(host, request_id, name)?;
            }
            if let Some(request) = self.requests.get_mut(&request_id) {
                request.phase = Phase::Resolving {
                    retry_tick: self.tick + self.config.retry_pause_ticks,
                };
            }
            return Ok(false);
        };
        self.set_route(host, request_id, partition, replicas)?;
        Ok(true)
    }

    fn set_route(
        &mut self,
        host: &mut PartitionHost<M>,
        request_id: u64,
        partition: PartitionId,
        replicas: Vec<NodeId>,
    ) -> Result<(), RouteError> {
        let Some(request) = self.requests.get_mut(&request_id) else {
            return Ok(());
        };
        let (route_id, message) = match (&request.request, &request.target) {
            (RoutedRequest::Write(operation), _) => host.route_write(partition, operation),
            (RoutedRequest::Read(query), _) => host.route_read(partition, query),
            (RoutedRequest::Handle { body, .. }, Target::Named(name)) => {
                host.route_handle(partition, name.as_bytes().to_vec(), body.clone())
            }
            (RoutedRequest::Handle { .. }, Target::Directory) => Err(RequestError::Invalid(
                "the directory's partition runs no request handler".into(),
            )),
        }
        .map_err(RouteError::Request)?;
        self.by_route.insert(route_id, request_id);
        request.route = Some(Route {
            partition,
            replicas,
            route_id,
            message,
        });
        Ok(())
    }

    /// Asks the directory to create `name` for request `waiting` (once per name at a time).
    fn create(
        &mut self,
        host: &mut PartitionHost<M>,
        waiting: u64,
        name: PartitionName,
    ) -> Result<(), RouteError> {
        if self.creating.contains_key(&name) {
            return Ok(());
        }
        let Some(operation) =
            M::directory_operation(DirectoryOperation::CreatePartition { name: name.clone() })
        else {
            return Err(RouteError::NoDirectory(
                "this node's partitions run no directory".into(),
            ));
        };
        self.next_request_id += 1;
        let create_id = self.next_request_id;
        self.requests.insert(
            create_id,
            Request {
                target: Target::Directory,
                request: RoutedRequest::Write(operation),
                route: None,
                phase: Phase::Resolving { retry_tick: 0 },
                attempts: 0,
                deadline_tick: self.tick + self.config.request_timeout_ticks,
                hint: None,
                heard: BTreeMap::new(),
                maybe_proposed: false,
                creating_for: Some(waiting),
            },
        );
        self.creating.insert(name, create_id);
        self.advance(host, create_id);
        Ok(())
    }

    /// The node to send the next attempt to: a hint, the leader last heard of, this node's
    /// own view of the group, then the replicas in turn.
    fn choose_target(
        &self,
        host: &PartitionHost<M>,
        request: &Request<M::Operation, M::Query>,
    ) -> Option<NodeId> {
        let route = request.route.as_ref()?;
        // The directory may have moved the partition since the route was set: its holders
        // now count too.
        let current = self
            .placement(host, &request.target)
            .filter(|(partition, _)| *partition == route.partition)
            .map(|(_, holders)| holders)
            .unwrap_or_default();
        let in_set = |node: &NodeId| route.replicas.contains(node) || current.contains(node);
        if self.handlers_on_own_replica
            && matches!(request.request, RoutedRequest::Handle { .. })
            && route.replicas.contains(&host.id())
        {
            return Some(host.id());
        }
        if let Some(hint) = request.hint.filter(in_set) {
            return Some(hint);
        }
        let fresh = |node: &NodeId| in_set(node) && !request.heard.contains_key(node);
        let known = self.leaders.get(&route.partition).copied().or_else(|| {
            host.status(route.partition)
                .and_then(|status| status.leader)
        });
        if let Some(leader) = known.filter(fresh) {
            return Some(leader);
        }
        if route.replicas.is_empty() {
            return None;
        }
        // The replicas in turn, starting past the ones already tried this round.
        let count = route.replicas.len();
        let start = usize::try_from(request.attempts).unwrap_or(0) % count;
        (0..count)
            .map(|offset| route.replicas[(start + offset) % count])
            .find(fresh)
            .or(Some(route.replicas[start]))
    }

    fn send_attempt(&mut self, host: &mut PartitionHost<M>, request_id: u64) {
        let Some(request) = self.requests.get(&request_id) else {
            return;
        };
        if request.attempts >= self.config.attempts_max {
            let error = self.give_up_error(host, request);
            self.finish(host, request_id, Err(error));
            return;
        }
        let Some(target) = self.choose_target(host, request) else {
            let error = self.give_up_error(host, request);
            self.finish(host, request_id, Err(error));
            return;
        };
        let now = self.tick;
        let Some(request) = self.requests.get_mut(&request_id) else {
            return;
        };
        let Some(route) = &request.route else {
            return;
        };
        request.attempts += 1;
        request.hint = None;
        request.phase = Phase::Sent {
            target,
            sent_tick: now,
        };
        let mut message = route.message.clone();
        if let RouteMessage::Handle { timeout_micros, .. } = &mut message {
            // What is left of the caller's wait, less a margin, so the serving node's own
            // deadline answers before the caller gives up.
            let left_micros = request
                .deadline_tick
                .saturating_sub(now)
                .saturating_mul(self.config.tick_micros);
            let margin_micros = (left_micros / 10).clamp(2 * self.config.tick_micros, 500_000);
            *timeout_micros = left_micros.saturating_sub(margin_micros);
        }
        host.send_route(target, message);
    }

    /// A routed message from `from` (this node included): an answer is the router's, a
    /// request is served by the host.
    pub fn take_route(&mut self, host: &mut PartitionHost<M>, from: NodeId, message: RouteMessage) {
        match message {
            RouteMessage::Answer {
                proposer_session,
                request_id,
                result,
            } => self.receive_answer(host, from, proposer_session, request_id, result),
            request => host.serve_route(from, request),
        }
    }

    /// An answer to routed request `route_id` from `from`.
    pub fn receive_answer(
        &mut self,
        host: &mut PartitionHost<M>,
        from: NodeId,
        session: u64,
        route_id: u64,
        result: Result<ByteAnswer, RouteRefusal>,
    ) {
        if session != host.session() {
            // An answer to a request of an earlier run of this node: its number may now
            // name another request.
            return;
        }
        let Some(&request_id) = self.by_route.get(&route_id) else {
            return;
        };
        let Some(request) = self.requests.get_mut(&request_id) else {
            return;
        };
        let Some(route) = &request.route else {
            return;
        };
        let partition = route.partition;
        let current = matches!(request.phase, Phase::Sent { target, .. } if target == from);
        match result {
            Ok(bytes) => {
                let decoded = match &request.request {
                    RoutedRequest::Write(_) => {
                        decode_answer::<M::Outcome>(&bytes).map(RoutedOutcome::Wrote)
                    }
                    RoutedRequest::Read(_) => {
                        decode_answer::<M::Answer>(&bytes).map(RoutedOutcome::Read)
                    }
                    RoutedRequest::Handle { .. } => Ok(RoutedOutcome::Replied(bytes.0)),
                };
                match decoded {
                    Ok(outcome) => {
                        self.leaders.insert(partition, from);
                        self.finish(host, request_id, Ok(outcome));
                    }
                    Err(reason) => {
                        tracing::warn!(%from, %reason, "a routed answer refused");
                        request.heard.insert(from, reason);
                        // It said something was done, in a form this node cannot read.
                        request.maybe_proposed = true;
                        if current {
                            request.phase = Phase::Paused {
                                until_tick: self.tick + self.config.retry_pause_ticks,
                            };
                        }
                    }
                }
            }
            Err(refusal) if retryable(&refusal.kind) => {
                if !current {
                    return;
                }
                // A node that cannot serve now refused before proposing, but a poisoned
                // one may have proposed first (the entry can still commit elsewhere).
                if refusal.kind == RouteRefusalKind::Unavailable {
                    request.maybe_proposed = true;
                }
                request.heard.insert(from, refusal.message.clone());
                match refusal.kind {
                    RouteRefusalKind::NotLeader {
                        leader: Some(leader),
                    } if leader != from => {
                        self.leaders.insert(partition, leader);
                        request.hint = Some(leader);
                        self.send_attempt(host, request_id);
                    }
                    _ => {
                        if self.leaders.get(&partition) == Some(&from) {
                            self.leaders.remove(&partition);
                        }
                        request.phase = Phase::Paused {
                            until_tick: self.tick + self.config.retry_pause_ticks,
                        };
                    }
                }
            }
            Err(refusal) => {
                if refusal.kind == RouteRefusalKind::OutcomeUnknown {
                    request.maybe_proposed = true;
                }
                let error = error_of(partition, &refusal);
                self.finish(host, request_id, Err(RouteError::Request(error)));
            }
        }
    }

    /// Why a request failed after all its attempts.
    fn give_up_error(
        &self,
        host: &PartitionHost<M>,
        request: &Request<M::Operation, M::Query>,
    ) -> RouteError {
        let replicas = request
            .route
            .as_ref()
            .map(|route| route.replicas.clone())
            .or_else(|| {
                self.placement(host, &request.target)
                    .map(|(_, replicas)| replicas)
            })
            .unwrap_or_default();
        if matches!(request.request, RoutedRequest::Handle { .. }) && request.maybe_proposed {
            return RouteError::Request(RequestError::OutcomeUnknown);
        }
        let detail = if replicas.is_empty() {
            "this node knows no replica of it yet (it may still be joining the cluster, or its \
             directory has not reached it)"
                .to_string()
        } else {
            Self::replies_detail(request, &replicas)
        };
        match &request.target {
            Target::Named(name) => RouteError::NoLeader {
                name: name.to_string(),
                detail,
            },
            Target::Directory => RouteError::NoDirectory(detail),
        }
    }

    /// How many of `replicas` never answered, and what each one that did said.
    fn replies_detail(request: &Request<M::Operation, M::Query>, replicas: &[NodeId]) -> String {
        let unreachable = replicas
            .iter()
            .filter(|node| {
                request
                    .heard
                    .get(node)
                    .is_none_or(|said| said == "no answer")
            })
            .count();
        let said: Vec<String> = request
            .heard
            .iter()
            .map(|(node, said)| format!("{node}: {said}"))
            .collect();
        let mut detail = format!(
            "{unreachable} of {} replicas unreachable after {} attempts",
            replicas.len(),
            request.attempts
        );
        if !said.is_empty() {
            detail.push_str(&format!(" ({})", said.join("; ")));
        }
        detail
    }

    /// Ends a request: answers its client (or the request that waited for its creation).
    fn finish(
        &mut self,
        host: &mut PartitionHost<M>,
        request_id: u64,
        result: Result<RoutedOutcome<M::Outcome, M::Answer>, RouteError>,
    ) {
        let Some(request) = self.requests.remove(&request_id) else {
            return;
        };
        if let Some(route) = &request.route {
            self.by_route.remove(&route.route_id);
            if matches!(request.request, RoutedRequest::Write(_)) {
                host.finish_routed_write(route.route_id);
            }
        }
        let Some(waiting) = request.creating_for else {
            let not_applied = result.is_err() && !request.maybe_proposed;
            self.answers.push(RouterAnswer {
                request_id,
                result,
                not_applied,
            });
            return;
        };
        self.creating.retain(|_, creator| *creator != request_id);
        self.on_created(host, waiting, result);
    }

    /// A creation ended: the request that waited for it routes to the entry it answered
    /// with, or fails with its reason.
    fn on_created(
        &mut self,
        host: &mut PartitionHost<M>,
        waiting: u64,
        result: Result<RoutedOutcome<M::Outcome, M::Answer>, RouteError>,
    ) {
        let Some(request) = self.requests.get(&waiting) else {
            return;
        };
        if request.route.is_some() {
            // It found the entry in this node's directory meanwhile.
            return;
        }
        let name = match &request.target {
            Target::Named(name) => name.to_string(),
            Target::Directory => String::new(),
        };
        let entry: Result<PartitionEntry, RouteError> = match result {
            Ok(RoutedOutcome::Wrote(outcome)) => match M::directory_outcome(&outcome) {
                Some(DirectoryOutcome::Partition { entry, .. }) => Ok(entry.clone()),
                Some(DirectoryOutcome::Refused(refusal)) => Err(RouteError::NotCreated {
                    name,
                    reason: refusal.to_string(),
                }),
                other => Err(RouteError::NotCreated {
                    name,
                    reason: format!("the directory answered {other:?}"),
                }),
            },
            Ok(RoutedOutcome::Read(_) | RoutedOutcome::Replied(_)) => Err(RouteError::NotCreated {
                name,
                reason: "the directory answered a write with a read".into(),
            }),
            Err(error) => Err(RouteError::NotCreated {
                name,
                reason: error.to_string(),
            }),
        };
        match entry {
            Ok(entry) => {
                if let Err(error) = self.set_route(host, waiting, entry.id, entry.replicas) {
                    self.finish(host, waiting, Err(error));
                    return;
                }
                self.send_attempt(host, waiting);
            }
            Err(error) => self.finish(host, waiting, Err(error)),
        }
    }
}

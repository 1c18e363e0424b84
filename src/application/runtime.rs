//! The node's handler executor: it starts a task for each handler request this node serves
//! as its partition's leader, polls the tasks' futures when an access they wait for
//! resolves, carries out the accesses they file (their own partition's here, on its Raft
//! group; other partitions' through the router), and answers each request's origin exactly
//! once. It is sans-IO like the rest of the node: no threads, no wakers that matter (a task
//! is polled when one of its accesses resolved, in task order), time from the node's clock,
//! so a handler runs seed for seed inside the simulator.
//!
//! Invariants:
//! - a task starts only on a node that leads its partition, and its own partition's reads
//!   and writes are carried out only while this node still leads it in the term the task
//!   started in; after that each fails with "not the leader", so a handler never writes
//!   under a leader that may have been replaced;
//! - a write resolves once it applied (committed through Raft), a read at the read index;
//! - every request served is answered once: its reply, its handler's refusal, a panic or a
//!   missed deadline as a clear failure, or, when its leader changed under it, "not the
//!   leader" (the origin retries) only if the handler is idempotent or had not written yet,
//!   else "outcome unknown"; a task that panics is dropped and the node goes on;
//! - tasks, queued requests and polls per turn are bounded ([`HandlerRuntimeConfig`]).

use crate::application::context::{
    Access, AccessAnswer, AccessResult, Filed, HandlerContext, PartitionInfo, SharedMailbox, Target,
};
use crate::application::handler::{
    Handler, HandlerError, HandlerFuture, HandlerRequest, PartitionError,
};
use crate::coordinator::cluster::{directory_of, ClusterKinds};
use crate::coordinator::router::{RouteError, RoutedOutcome, RoutedRequest, Router, RouterAnswer};
use crate::directory::PartitionName;
use crate::ids::NodeId;
use crate::partition::host::{HostOutput, PartitionHost, RequestError};
use crate::partition::route::{
    ByteAnswer, RouteMessage, RouteRefusal, RouteRefusalKind, ANSWER_BYTES_MAX,
};
use crate::partition::state_machine::StateMachineError;
use crate::partition::PartitionId;
use crate::raft::Role;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

#[derive(Clone, Debug)]
pub struct HandlerRuntimeConfig {
    /// Handler tasks running at once on this node; one more request is refused as busy.
    pub tasks_max: usize,
    /// Requests of one partition waiting for its one-at-a-time handler.
    pub queued_per_partition_max: usize,
    /// Polls of one task in one turn of the runtime (a handler that spins on failing
    /// accesses yields to the rest of the node, and to its deadline).
    pub polls_per_turn_max: u32,
    /// A canary's planted bug.
    pub planted_bug: Option<HandlerPlantedBug>,
}

impl Default for HandlerRuntimeConfig {
    fn default() -> Self {
        Self {
            tasks_max: 4096,
            queued_per_partition_max: 1024,
            polls_per_turn_max: 16,
            planted_bug: None,
        }
    }
}

/// Bugs a canary plants in the runtime, for the checkers to catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerPlantedBug {
    /// A node that holds a replica of the partition runs the handler itself, leader or
    /// not, and its handler reads that replica's applied state without a read index.
    ReadFollowerWithoutReadIndex,
}

/// What the runtime did since the node opened, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandlerCounters {
    pub started: u64,
    pub replied: u64,
    /// The handler refused (returned an error of its own).
    pub refused: u64,
    pub panicked: u64,
    pub timed_out: u64,
    /// Tasks whose partition's leader changed while they ran.
    pub lost_leadership: u64,
    /// Requests turned away before a task started (not the leader, busy, no handler).
    pub turned_away: u64,
}

/// Who asked, and under which number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Origin {
    node: NodeId,
    session: u64,
    request_id: u64,
}

/// A request for a handler, as it arrived.
#[derive(Debug)]
struct Arrival {
    origin: Origin,
    partition: PartitionId,
    name: String,
    body: Vec<u8>,
    deadline_micros: u64,
    timeout_micros: u64,
}

/// What an access waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Waiting {
    Host(u64),
    Router(u64),
}

struct Task {
    future: Option<HandlerFuture>,
    origin: Origin,
    partition: PartitionId,
    name: String,
    /// The partition's term when the task started: its own accesses need this node to
    /// lead in this term still.
    term: u64,
    deadline_micros: u64,
    timeout_micros: u64,
    /// Whether it filed a write (here or elsewhere) or a request to another handler.
    wrote: bool,
    lost_leadership: bool,
    /// Accesses in flight, by what they wait for.
    waiting: BTreeMap<Waiting, u64>,
    /// Access ids it filed, so their results are cleared with it.
    access_ids: BTreeSet<u64>,
    polls_this_turn: u32,
    one_at_a_time: bool,
}

/// What carrying out an access did.
enum Carried {
    /// It waits for this request (the host's or the router's).
    Waiting(u64),
    /// It resolved at once.
    Answered(AccessResult),
    /// Nothing (an access of another kind).
    Nothing,
}

/// How a task ended.
enum Ending {
    Returned(Result<Vec<u8>, HandlerError>),
    Panicked(String),
    DeadlinePassed,
}

pub struct HandlerRuntime {
    handler: Option<Arc<dyn Handler>>,
    config: HandlerRuntimeConfig,
    mailbox: SharedMailbox,
    next_task: u64,
    tasks: BTreeMap<u64, Task>,
    pub(super) ready: BTreeSet<u64>,
    by_waiting: BTreeMap<Waiting, u64>,
    /// Accesses of tasks that ended before their answers came: the answers are dropped
    /// when they come (each request ends with an answer, so this empties).
    abandoned: BTreeSet<Waiting>,
    by_origin: BTreeMap<Origin, u64>,
    /// One-at-a-time requests waiting for their partition's running one.
    queued: BTreeMap<PartitionId, VecDeque<Arrival>>,
    /// Partitions whose one-at-a-time handler runs a request now.
    running_alone: BTreeSet<PartitionId>,
    counters: HandlerCounters,
}

impl std::fmt::Debug for HandlerRuntime {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HandlerRuntime")
            .field("handler", &self.handler.is_some())
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// A panic's message, when it carries one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// How a failed request of the host reads to a handler.
fn access_error(error: RequestError) -> Result<AccessAnswer, PartitionError> {
    match error {
        RequestError::State(StateMachineError::KeyNotFound) => Ok(AccessAnswer::NotFound),
        RequestError::OutcomeUnknown => Err(PartitionError::OutcomeUnknown),
        RequestError::Invalid(reason) => Err(PartitionError::Invalid(reason)),
        other => Err(PartitionError::Failed(other.to_string())),
    }
}

impl HandlerRuntime {
    pub fn new(config: HandlerRuntimeConfig) -> Self {
        Self {
            handler: None,
            config,
            mailbox: SharedMailbox::default(),
            next_task: 0,
            tasks: BTreeMap::new(),
            ready: BTreeSet::new(),
            by_waiting: BTreeMap::new(),
            abandoned: BTreeSet::new(),
            by_origin: BTreeMap::new(),
            queued: BTreeMap::new(),
            running_alone: BTreeSet::new(),
            counters: HandlerCounters::default(),
        }
    }

    pub fn set_handler(&mut self, handler: Arc<dyn Handler>) {
        self.handler = Some(handler);
    }

    pub fn has_handler(&self) -> bool {
        self.handler.is_some()
    }

    /// Whether this node's handler declared itself idempotent.
    pub fn idempotent(&self) -> bool {
        self.handler
            .as_ref()
            .is_some_and(|handler| handler.idempotent())
    }

    pub fn planted_bug(&self) -> Option<HandlerPlantedBug> {
        self.config.planted_bug
    }

    pub fn counters(&self) -> HandlerCounters {
        self.counters
    }

    /// Tasks running and requests queued.
    pub fn load(&self) -> (usize, usize) {
        (
            self.tasks.len(),
            self.queued.values().map(VecDeque::len).sum(),
        )
    }

    /// Whether some task has a resolved access to take (or just started).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    // ---- requests arriving ----

    /// A handler request routed to this node (`RouteMessage::Handle`); anything else is not
    /// the runtime's and is ignored. Starts a task, queues the request, or answers its
    /// origin with a refusal.
    pub fn serve<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        from: NodeId,
        message: RouteMessage,
        now_micros: u64,
    ) {
        let RouteMessage::Handle {
            partition,
            name,
            proposer_session,
            request_id,
            timeout_micros,
            body,
        } = message
        else {
            return;
        };
        let origin = Origin {
            node: from,
            session: proposer_session,
            request_id,
        };
        if self.by_origin.contains_key(&origin) {
            // A resend of a request running here: its answer will come.
            return;
        }
        if self
            .queued
            .get(&partition)
            .is_some_and(|queue| queue.iter().any(|arrival| arrival.origin == origin))
        {
            return;
        }
        let Some(handler) = self.handler.clone() else {
            self.turn_away(
                host,
                origin,
                RouteRefusal::new(
                    RouteRefusalKind::Invalid,
                    format!("node {} runs no request handler", host.id()),
                ),
            );
            return;
        };
        let name = match PartitionName::new(name) {
            Ok(name) => name,
            Err(invalid) => {
                self.turn_away(
                    host,
                    origin,
                    RouteRefusal::new(
                        RouteRefusalKind::Invalid,
                        format!("a handler request for an invalid partition name: {invalid}"),
                    ),
                );
                return;
            }
        };
        // The name must be the partition's, when this node's directory knows it.
        if let Some(entry) = directory_of(host).and_then(|directory| directory.partition(&name)) {
            if entry.id != partition {
                self.turn_away(
                    host,
                    origin,
                    RouteRefusal::new(
                        RouteRefusalKind::Invalid,
                        format!("partition {name} is not partition {partition}"),
                    ),
                );
                return;
            }
        }
        if let Err(refusal) = self.check_serves(host, partition) {
            self.turn_away(host, origin, refusal);
            return;
        }
        let arrival = Arrival {
            origin,
            partition,
            name: String::from_utf8_lossy(name.as_bytes()).into_owned(),
            body,
            deadline_micros: now_micros.saturating_add(timeout_micros),
            timeout_micros,
        };
        if handler.one_at_a_time() && self.running_alone.contains(&partition) {
            let waiting = self.queued.get(&partition).map_or(0, VecDeque::len);
            if waiting >= self.config.queued_per_partition_max {
                self.turn_away(
                    host,
                    origin,
                    RouteRefusal::new(
                        RouteRefusalKind::Busy,
                        format!(
                            "partition {} has {} requests waiting for its handler; retry",
                            arrival.name, waiting
                        ),
                    ),
                );
                return;
            }
            self.queued.entry(partition).or_default().push_back(arrival);
            return;
        }
        if self.tasks.len() >= self.config.tasks_max {
            self.turn_away(
                host,
                origin,
                RouteRefusal::new(
                    RouteRefusalKind::Busy,
                    format!(
                        "node {} runs {} handlers already; retry",
                        host.id(),
                        self.tasks.len()
                    ),
                ),
            );
            return;
        }
        self.start(host, &handler, arrival, now_micros);
    }

    /// Whether this node may start a handler of `partition` now.
    fn check_serves<M: ClusterKinds>(
        &self,
        host: &PartitionHost<M>,
        partition: PartitionId,
    ) -> Result<u64, RouteRefusal> {
        let Some(status) = host.status(partition) else {
            return Err(RouteRefusal::new(
                RouteRefusalKind::UnknownPartition,
                format!("partition {partition} is not on node {}", host.id()),
            ));
        };
        if host.is_poisoned() {
            return Err(RouteRefusal::new(
                RouteRefusalKind::Unavailable,
                format!("node {}'s partition store is out of service", host.id()),
            ));
        }
        let bug = self.config.planted_bug == Some(HandlerPlantedBug::ReadFollowerWithoutReadIndex);
        if status.role != Role::Leader && !bug {
            return Err(RouteRefusal::new(
                RouteRefusalKind::NotLeader {
                    leader: status.leader.filter(|leader| *leader != host.id()),
                },
                format!("node {} does not lead partition {partition}", host.id()),
            ));
        }
        Ok(status.term)
    }

    fn turn_away<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        origin: Origin,
        refusal: RouteRefusal,
    ) {
        self.counters.turned_away += 1;
        Self::answer(host, origin, Err(refusal));
    }

    fn answer<M: ClusterKinds>(
        host: &mut PartitionHost<M>,
        origin: Origin,
        result: Result<ByteAnswer, RouteRefusal>,
    ) {
        host.send_route(
            origin.node,
            RouteMessage::Answer {
                proposer_session: origin.session,
                request_id: origin.request_id,
                result,
            },
        );
    }

    fn start<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        handler: &Arc<dyn Handler>,
        arrival: Arrival,
        now_micros: u64,
    ) {
        let term = match self.check_serves(host, arrival.partition) {
            Ok(term) => term,
            Err(refusal) => {
                self.turn_away(host, arrival.origin, refusal);
                return;
            }
        };
        self.next_task += 1;
        let task_id = self.next_task;
        self.mailbox.borrow_mut().now_micros = now_micros;
        let context = HandlerContext::new(self.mailbox.clone(), task_id, arrival.name.clone());
        let request = HandlerRequest {
            partition: arrival.name.clone(),
            body: arrival.body,
            deadline_micros: arrival.deadline_micros,
        };
        let one_at_a_time = handler.one_at_a_time();
        if one_at_a_time {
            self.running_alone.insert(arrival.partition);
        }
        self.counters.started += 1;
        self.by_origin.insert(arrival.origin, task_id);
        let made = std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(request, context)));
        self.tasks.insert(
            task_id,
            Task {
                future: None,
                origin: arrival.origin,
                partition: arrival.partition,
                name: arrival.name,
                term,
                deadline_micros: arrival.deadline_micros,
                timeout_micros: arrival.timeout_micros,
                wrote: false,
                lost_leadership: false,
                waiting: BTreeMap::new(),
                access_ids: BTreeSet::new(),
                polls_this_turn: 0,
                one_at_a_time,
            },
        );
        match made {
            Ok(future) => {
                if let Some(task) = self.tasks.get_mut(&task_id) {
                    task.future = Some(future);
                }
                self.ready.insert(task_id);
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.end(host, task_id, Ending::Panicked(message), now_micros);
            }
        }
    }

    // ---- results arriving ----

    /// Takes a host output that answers one of the tasks' accesses; gives back any other.
    pub fn take_host_output<M: ClusterKinds>(
        &mut self,
        output: HostOutput<M::Outcome, M::Answer>,
    ) -> Option<HostOutput<M::Outcome, M::Answer>> {
        let request_id = match &output {
            HostOutput::WriteAnswered { request_id, .. }
            | HostOutput::ReadAnswered { request_id, .. } => *request_id,
            _ => return Some(output),
        };
        let Some(task_id) = self.by_waiting.remove(&Waiting::Host(request_id)) else {
            if self.abandoned.remove(&Waiting::Host(request_id)) {
                return None;
            }
            return Some(output);
        };
        let result = match output {
            HostOutput::WriteAnswered { result, .. } => match result {
                Ok(outcome) => M::kv_outcome(outcome)
                    .map(AccessAnswer::Wrote)
                    .ok_or_else(|| PartitionError::Failed("a write answered another kind".into())),
                Err(RequestError::NotLeader { .. }) => Err(self.lose_leadership(task_id)),
                Err(error) => access_error(error),
            },
            HostOutput::ReadAnswered { result, .. } => match result {
                Ok(answer) => M::kv_answer(answer)
                    .map(AccessAnswer::Read)
                    .ok_or_else(|| PartitionError::Failed("a read answered another kind".into())),
                Err(RequestError::NotLeader { .. }) => Err(self.lose_leadership(task_id)),
                Err(error) => access_error(error),
            },
            _ => return None,
        };
        self.resolve(task_id, Waiting::Host(request_id), result);
        None
    }

    /// Takes a router answer to one of the tasks' accesses; gives back any other.
    pub fn take_router_answer<M: ClusterKinds>(
        &mut self,
        answer: RouterAnswer<M::Outcome, M::Answer>,
    ) -> Option<RouterAnswer<M::Outcome, M::Answer>> {
        let Some(task_id) = self.by_waiting.remove(&Waiting::Router(answer.request_id)) else {
            if self.abandoned.remove(&Waiting::Router(answer.request_id)) {
                return None;
            }
            return Some(answer);
        };
        let result = match answer.result {
            Ok(RoutedOutcome::Wrote(outcome)) => M::kv_outcome(outcome)
                .map(AccessAnswer::Wrote)
                .ok_or_else(|| PartitionError::Failed("a write answered another kind".into())),
            Ok(RoutedOutcome::Read(read)) => M::kv_answer(read)
                .map(AccessAnswer::Read)
                .ok_or_else(|| PartitionError::Failed("a read answered another kind".into())),
            Ok(RoutedOutcome::Replied(reply)) => Ok(AccessAnswer::Replied(reply)),
            Err(RouteError::Request(RequestError::HandlerRefused(message))) => {
                Err(PartitionError::Refused(message))
            }
            Err(RouteError::Request(error)) => access_error(error),
            Err(error) => Err(PartitionError::Failed(error.to_string())),
        };
        self.resolve(task_id, Waiting::Router(answer.request_id), result);
        None
    }

    fn lose_leadership(&mut self, task_id: u64) -> PartitionError {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return PartitionError::Failed("the task ended".into());
        };
        if !task.lost_leadership {
            task.lost_leadership = true;
            self.counters.lost_leadership += 1;
        }
        PartitionError::NotLeader {
            partition: task.name.clone(),
        }
    }

    /// Files an access's result for its task, and makes the task ready.
    fn resolve(&mut self, task_id: u64, waiting: Waiting, result: AccessResult) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let Some(access_id) = task.waiting.remove(&waiting) else {
            return;
        };
        self.mailbox.borrow_mut().results.insert(access_id, result);
        self.ready.insert(task_id);
    }

    fn resolve_now(&mut self, task_id: u64, access_id: u64, result: AccessResult) {
        if !self.tasks.contains_key(&task_id) {
            return;
        }
        self.mailbox.borrow_mut().results.insert(access_id, result);
        self.ready.insert(task_id);
    }

    // ---- running ----

    /// One turn: ends the tasks past their deadline, starts queued requests whose turn
    /// came, polls the ready tasks and carries out what they filed, until none is ready or
    /// each has had its polls for the turn.
    pub fn run<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        router: &mut Router<M>,
        now_micros: u64,
    ) {
        self.mailbox.borrow_mut().now_micros = now_micros;
        let expired: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.deadline_micros <= now_micros)
            .map(|(id, _)| *id)
            .collect();
        for task_id in expired {
            self.end(host, task_id, Ending::DeadlinePassed, now_micros);
        }
        self.expire_queued(host, now_micros);
        for task in self.tasks.values_mut() {
            task.polls_this_turn = 0;
        }
        while let Some(task_id) = self.next_ready() {
            self.poll(host, task_id, now_micros);
            self.carry_out(host, router);
        }
    }

    /// The first ready task that has polls left this turn (the others wait for the next).
    fn next_ready(&mut self) -> Option<u64> {
        let limit = self.config.polls_per_turn_max;
        let task_id = self.ready.iter().copied().find(|id| {
            self.tasks
                .get(id)
                .is_none_or(|task| task.polls_this_turn < limit)
        })?;
        self.ready.remove(&task_id);
        Some(task_id)
    }

    fn poll<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        task_id: u64,
        now_micros: u64,
    ) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.polls_this_turn += 1;
        let Some(future) = task.future.as_mut() else {
            return;
        };
        let mut context = Context::from_waker(Waker::noop());
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut context)));
        match polled {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(result)) => {
                self.end(host, task_id, Ending::Returned(result), now_micros)
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.end(host, task_id, Ending::Panicked(message), now_micros);
            }
        }
    }

    /// Carries out every access filed since the last call.
    fn carry_out<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>, router: &mut Router<M>) {
        let filed: Vec<Filed> = std::mem::take(&mut self.mailbox.borrow_mut().filed);
        for Filed {
            task: task_id,
            access_id,
            access,
        } in filed
        {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            task.access_ids.insert(access_id);
            if access.writes() {
                task.wrote = true;
            }
            let partition = task.partition;
            let term = task.term;
            let deadline_micros = task.deadline_micros;
            let now_micros = self.mailbox.borrow().now_micros;
            let own = match &access {
                Access::Read { target, .. }
                | Access::Write { target, .. }
                | Access::Info { target } => *target == Target::Own,
                Access::Request { .. } => false,
            };
            if own {
                match self.carry_out_here(host, task_id, partition, term, access) {
                    Carried::Waiting(request_id) => {
                        self.wait(task_id, access_id, Waiting::Host(request_id))
                    }
                    Carried::Nothing => {}
                    Carried::Answered(result) => self.resolve_now(task_id, access_id, result),
                }
                continue;
            }
            match self.carry_out_elsewhere(
                host,
                router,
                access,
                deadline_micros.saturating_sub(now_micros),
            ) {
                Carried::Waiting(request_id) => {
                    self.wait(task_id, access_id, Waiting::Router(request_id))
                }
                Carried::Nothing => {}
                Carried::Answered(result) => self.resolve_now(task_id, access_id, result),
            }
        }
    }

    fn wait(&mut self, task_id: u64, access_id: u64, waiting: Waiting) {
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.waiting.insert(waiting, access_id);
            self.by_waiting.insert(waiting, task_id);
        }
    }

    /// An access to the task's own partition: started on its group (`Ok(Some(request))`),
    /// or answered at once (`Err(result)`, which may be a success).
    fn carry_out_here<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        task_id: u64,
        partition: PartitionId,
        term: u64,
        access: Access,
    ) -> Carried {
        let bug = self.config.planted_bug == Some(HandlerPlantedBug::ReadFollowerWithoutReadIndex);
        let status = host.status(partition);
        let leads = status
            .as_ref()
            .is_some_and(|status| status.role == Role::Leader && status.term == term);
        if !leads && !bug {
            return Carried::Answered(Err(self.lose_leadership(task_id)));
        }
        let started = match access {
            Access::Read { query, .. } if bug => {
                return Carried::Answered(
                    match host.read_applied(partition, &M::kv_query(query)) {
                        Ok(answer) => {
                            M::kv_answer(answer).map(AccessAnswer::Read).ok_or_else(|| {
                                PartitionError::Failed("a read answered another kind".into())
                            })
                        }
                        Err(error) => access_error(error),
                    },
                );
            }
            Access::Read { query, .. } => host.read(partition, M::kv_query(query)),
            Access::Write { operation, .. } => host.write(partition, M::kv_operation(operation)),
            Access::Info { .. } => {
                let name = self
                    .tasks
                    .get(&task_id)
                    .map(|task| task.name.clone())
                    .unwrap_or_default();
                let replicas = PartitionName::new(name.clone())
                    .ok()
                    .and_then(|parsed| {
                        directory_of(host)?
                            .partition(&parsed)
                            .map(|entry| entry.replicas.clone())
                    })
                    .unwrap_or_default();
                return Carried::Answered(Ok(AccessAnswer::Info(PartitionInfo {
                    name,
                    id: partition.0,
                    replicas,
                    leader: status.as_ref().and_then(|status| status.leader),
                    term: status.as_ref().map(|status| status.term),
                    committed_index: status.as_ref().map(|status| status.committed),
                    applied_index: status.as_ref().map(|status| status.applied),
                    last_index: status.as_ref().map(|status| status.last_index),
                })));
            }
            Access::Request { .. } => return Carried::Nothing,
        };
        match started {
            Ok(request_id) => Carried::Waiting(request_id),
            Err(RequestError::NotLeader { .. }) => {
                Carried::Answered(Err(self.lose_leadership(task_id)))
            }
            Err(error) => Carried::Answered(access_error(error)),
        }
    }

    /// An access to another partition, or another partition's handler: routed.
    fn carry_out_elsewhere<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        router: &mut Router<M>,
        access: Access,
        timeout_micros: u64,
    ) -> Carried {
        let (name, request) = match access {
            Access::Read {
                target: Target::Other(name),
                query,
            } => (name, RoutedRequest::Read(M::kv_query(query))),
            Access::Write {
                target: Target::Other(name),
                operation,
            } => (name, RoutedRequest::Write(M::kv_operation(operation))),
            Access::Request { partition, body } => (
                partition,
                RoutedRequest::Handle {
                    body,
                    idempotent: self.idempotent(),
                    timeout_micros,
                },
            ),
            Access::Info {
                target: Target::Other(name),
            } => {
                let parsed = match PartitionName::new(name.clone()) {
                    Ok(parsed) => parsed,
                    Err(error) => {
                        return Carried::Answered(Err(PartitionError::Invalid(error.to_string())))
                    }
                };
                let Some(entry) =
                    directory_of(host).and_then(|directory| directory.partition(&parsed))
                else {
                    return Carried::Answered(Err(PartitionError::Failed(format!(
                        "partition {name:?} is not in this node's directory (it may not exist yet)"
                    ))));
                };
                return Carried::Answered(Ok(AccessAnswer::Info(PartitionInfo {
                    name,
                    id: entry.id.0,
                    replicas: entry.replicas.clone(),
                    leader: router.leader_of(entry.id),
                    term: None,
                    committed_index: None,
                    applied_index: None,
                    last_index: None,
                })));
            }
            Access::Read { .. } | Access::Write { .. } | Access::Info { .. } => {
                return Carried::Nothing
            }
        };
        match PartitionName::new(name) {
            Ok(name) => Carried::Waiting(router.submit(host, name, request)),
            Err(error) => Carried::Answered(Err(PartitionError::Invalid(error.to_string()))),
        }
    }

    // ---- ending ----

    /// Ends a task: answers its origin, forgets its accesses, and lets the next queued
    /// request of its partition start.
    fn end<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        task_id: u64,
        ending: Ending,
        now_micros: u64,
    ) {
        let Some(task) = self.tasks.remove(&task_id) else {
            return;
        };
        self.ready.remove(&task_id);
        self.by_origin.remove(&task.origin);
        for waiting in task.waiting.keys() {
            self.by_waiting.remove(waiting);
            self.abandoned.insert(*waiting);
        }
        {
            let mut mailbox = self.mailbox.borrow_mut();
            for access_id in &task.access_ids {
                mailbox.results.remove(access_id);
            }
            mailbox.filed.retain(|filed| filed.task != task_id);
        }
        let result = self.outcome(host, &task, ending);
        // The future goes before the answer: dropping it may panic too.
        let future = task.future;
        let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(future)));
        Self::answer(host, task.origin, result);
        if task.one_at_a_time {
            self.running_alone.remove(&task.partition);
            self.start_next_queued(host, task.partition, now_micros);
        }
    }

    /// What the origin is told of a task that ended.
    fn outcome<M: ClusterKinds>(
        &mut self,
        host: &PartitionHost<M>,
        task: &Task,
        ending: Ending,
    ) -> Result<ByteAnswer, RouteRefusal> {
        let timeout_ms = task.timeout_micros / 1000;
        let name = &task.name;
        match ending {
            Ending::Returned(Ok(reply)) => {
                if reply.len() > ANSWER_BYTES_MAX {
                    return Err(RouteRefusal::new(
                        RouteRefusalKind::HandlerFailed,
                        format!(
                            "the handler's reply of {} bytes is over the limit of {ANSWER_BYTES_MAX}",
                            reply.len()
                        ),
                    ));
                }
                self.counters.replied += 1;
                Ok(ByteAnswer(reply))
            }
            Ending::Returned(Err(_)) if task.lost_leadership => {
                let idempotent = self.idempotent();
                if idempotent || !task.wrote {
                    let leader = host
                        .status(task.partition)
                        .and_then(|status| status.leader)
                        .filter(|leader| *leader != host.id());
                    Err(RouteRefusal::new(
                        RouteRefusalKind::NotLeader { leader },
                        format!(
                            "partition {name}'s leader changed while its handler ran on node {}; the request runs again at the new leader",
                            host.id()
                        ),
                    ))
                } else {
                    Err(RouteRefusal::new(
                        RouteRefusalKind::OutcomeUnknown,
                        format!(
                            "partition {name}'s leader changed while its handler ran on node {}, after it wrote: the request may or may not have taken effect (the handler is not declared idempotent, so it is not run again)",
                            host.id()
                        ),
                    ))
                }
            }
            Ending::Returned(Err(HandlerError::Refused(message))) => {
                self.counters.refused += 1;
                Err(RouteRefusal::new(RouteRefusalKind::HandlerRefused, message))
            }
            Ending::Returned(Err(HandlerError::Partition(PartitionError::OutcomeUnknown))) => {
                self.counters.refused += 1;
                Err(RouteRefusal::new(
                    RouteRefusalKind::OutcomeUnknown,
                    format!("a write of the handler of partition {name} had no answer in time: the request may or may not have taken effect"),
                ))
            }
            Ending::Returned(Err(HandlerError::Partition(error))) => {
                self.counters.refused += 1;
                Err(RouteRefusal::new(
                    RouteRefusalKind::HandlerFailed,
                    format!("the handler of partition {name} failed: {error}"),
                ))
            }
            Ending::Panicked(message) => {
                self.counters.panicked += 1;
                tracing::warn!(partition = %name, %message, "a request handler panicked; the request fails, the node goes on");
                Err(RouteRefusal::new(
                    RouteRefusalKind::HandlerFailed,
                    format!("the handler of partition {name} panicked: {message}"),
                ))
            }
            Ending::DeadlinePassed => {
                self.counters.timed_out += 1;
                if task.wrote {
                    Err(RouteRefusal::new(
                        RouteRefusalKind::OutcomeUnknown,
                        format!("the handler of partition {name} did not reply within {timeout_ms} ms; what it wrote may have taken effect"),
                    ))
                } else {
                    Err(RouteRefusal::new(
                        RouteRefusalKind::HandlerFailed,
                        format!("the handler of partition {name} did not reply within {timeout_ms} ms (it wrote nothing)"),
                    ))
                }
            }
        }
    }

    fn start_next_queued<M: ClusterKinds>(
        &mut self,
        host: &mut PartitionHost<M>,
        partition: PartitionId,
        now_micros: u64,
    ) {
        let Some(handler) = self.handler.clone() else {
            return;
        };
        while !self.running_alone.contains(&partition) {
            let Some(arrival) = self
                .queued
                .get_mut(&partition)
                .and_then(VecDeque::pop_front)
            else {
                break;
            };
            if arrival.deadline_micros <= now_micros {
                self.turn_away(host, arrival.origin, Self::expired_in_queue(&arrival));
                continue;
            }
            self.start(host, &handler, arrival, now_micros);
        }
        if self.queued.get(&partition).is_some_and(VecDeque::is_empty) {
            self.queued.remove(&partition);
        }
    }

    fn expired_in_queue(arrival: &Arrival) -> RouteRefusal {
        RouteRefusal::new(
            RouteRefusalKind::HandlerFailed,
            format!(
                "the request waited for partition {}'s earlier requests past its deadline of {} ms (it did not run)",
                arrival.name,
                arrival.timeout_micros / 1000
            ),
        )
    }

    fn expire_queued<M: ClusterKinds>(&mut self, host: &mut PartitionHost<M>, now_micros: u64) {
        let mut expired = Vec::new();
        for queue in self.queued.values_mut() {
            while queue
                .front()
                .is_some_and(|arrival| arrival.deadline_micros <= now_micros)
            {
                if let Some(arrival) = queue.pop_front() {
                    expired.push(arrival);
                }
            }
        }
        self.queued.retain(|_, queue| !queue.is_empty());
        for arrival in expired {
            self.turn_away(host, arrival.origin, Self::expired_in_queue(&arrival));
        }
        // A partition whose running request ended while its queue was skipped starts the
        // next one here.
        let idle: Vec<PartitionId> = self
            .queued
            .keys()
            .filter(|partition| !self.running_alone.contains(partition))
            .copied()
            .collect();
        for partition in idle {
            self.start_next_queued(host, partition, now_micros);
        }
    }
}

impl Default for HandlerRuntime {
    fn default() -> Self {
        Self::new(HandlerRuntimeConfig::default())
    }
}

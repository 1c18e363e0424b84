//! The partition host's share of routed requests (`crate::partition::route`): as the origin,
//! it gives a routed write its identity (this node's session, a request id from the same
//! counter as local writes, and the mark) and keeps it waiting until the router is done with
//! it; as the serving leader, it proposes a routed write in its origin's name and answers it
//! when the entry applies here, and serves a routed read like a local one.
//!
//! Invariants:
//! - a routed write of this node counts as unanswered (it holds the partition's mark down)
//!   until the router finishes it, so a copy of it that arrives late is still applied at
//!   most once and never after it was given up on;
//! - a routed write is proposed only by a node that leads the partition, only in the name of
//!   the node that sent it, and only once it decoded and validated;
//! - serving state is bounded ([`SERVING_REQUESTS_MAX`]); every request served is answered
//!   exactly once (outcome, refusal, or "outcome unknown" at its deadline), unless the host
//!   is poisoned, when the origin's own timeout answers its client.

use super::*;
use crate::partition::route::{ByteAnswer, RouteMessage, RouteRefusal, RouteRefusalKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Routed requests a host serves at once; one more is refused as busy.
pub const SERVING_REQUESTS_MAX: usize = 16_384;

/// A routed write this node originated, waiting for the router.
#[derive(Debug)]
pub(super) struct RoutedWrite {
    pub(super) partition: PartitionId,
}

impl Pending for RoutedWrite {
    fn partition(&self) -> PartitionId {
        self.partition
    }
    fn deadline_tick(&self) -> u64 {
        // The router decides when to give up, and then finishes it.
        u64::MAX
    }
}

/// A routed write this node proposed as leader, by (partition, origin, session, request id).
#[derive(Debug)]
pub(super) struct ServingWrite {
    pub(super) appended_at: (u64, u64),
    pub(super) deadline_tick: u64,
}

pub(super) type ServingKey = (PartitionId, NodeId, u64, u64);

/// How a refused request reads to its origin.
pub fn refusal_of(error: &RequestError) -> RouteRefusal {
    let kind = match error {
        RequestError::NotLeader { leader, .. } => RouteRefusalKind::NotLeader { leader: *leader },
        RequestError::UnknownPartition(_) => RouteRefusalKind::UnknownPartition,
        RequestError::Busy(_) => RouteRefusalKind::Busy,
        RequestError::OutcomeUnknown => RouteRefusalKind::OutcomeUnknown,
        RequestError::Invalid(_) | RequestError::InvalidMembershipChange(_) => {
            RouteRefusalKind::Invalid
        }
        RequestError::State(StateMachineError::KeyNotFound) => RouteRefusalKind::KeyNotFound,
        RequestError::State(_) | RequestError::Poisoned(_) | RequestError::Damaged(_) => {
            RouteRefusalKind::Unavailable
        }
        RequestError::HandlerRefused(_) => RouteRefusalKind::HandlerRefused,
        RequestError::HandlerFailed(_) => RouteRefusalKind::HandlerFailed,
    };
    RouteRefusal::new(kind, error.to_string())
}

/// The error a refusal stands for at the origin.
pub fn error_of(partition: PartitionId, refusal: &RouteRefusal) -> RequestError {
    match &refusal.kind {
        RouteRefusalKind::NotLeader { leader } => RequestError::NotLeader {
            partition,
            leader: *leader,
        },
        RouteRefusalKind::UnknownPartition => RequestError::UnknownPartition(partition),
        RouteRefusalKind::Busy => RequestError::Busy(partition),
        RouteRefusalKind::OutcomeUnknown => RequestError::OutcomeUnknown,
        RouteRefusalKind::Invalid => RequestError::Invalid(refusal.message.clone()),
        RouteRefusalKind::KeyNotFound => RequestError::State(StateMachineError::KeyNotFound),
        RouteRefusalKind::Unavailable => {
            RequestError::State(StateMachineError::Engine(refusal.message.clone()))
        }
        RouteRefusalKind::HandlerRefused => RequestError::HandlerRefused(refusal.message.clone()),
        RouteRefusalKind::HandlerFailed => RequestError::HandlerFailed(refusal.message.clone()),
    }
}

/// Encodes an outcome or answer for its origin.
fn encode_answer<T: Serialize>(value: &T) -> Result<ByteAnswer, RouteRefusal> {
    match postcard::to_allocvec(value) {
        Ok(bytes) if bytes.len() <= crate::partition::route::ANSWER_BYTES_MAX => {
            Ok(ByteAnswer(bytes))
        }
        Ok(bytes) => Err(RouteRefusal::new(
            RouteRefusalKind::Unavailable,
            format!("an answer of {} bytes does not fit a frame", bytes.len()),
        )),
        Err(error) => Err(RouteRefusal::new(
            RouteRefusalKind::Unavailable,
            format!("an answer could not be encoded: {error}"),
        )),
    }
}

/// Decodes an outcome or answer from the node that served it.
pub fn decode_answer<T: DeserializeOwned>(answer: &ByteAnswer) -> Result<T, String> {
    postcard::from_bytes(&answer.0).map_err(|error| format!("a malformed routed answer: {error}"))
}

impl<M: StateMachine> PartitionHost<M> {
    // ---- as the origin ----

    /// A write of `partition` to be routed to its leader: validated, given its identity,
    /// and kept waiting (holding the partition's mark) until [`Self::finish_routed_write`].
    /// The message may be sent to several nodes in turn; replicas apply it at most once.
    pub fn route_write(
        &mut self,
        partition: PartitionId,
        operation: &M::Operation,
    ) -> Result<(u64, RouteMessage), RequestError> {
        self.check_usable()?;
        self.store
            .machine()
            .validate(operation)
            .map_err(RequestError::Invalid)?;
        let operation = postcard::to_allocvec(operation)
            .map_err(|error| RequestError::Invalid(error.to_string()))?;
        let request_id = self.new_request_id();
        let first_unanswered = self.first_unanswered(partition, request_id);
        self.routed_writes
            .insert(request_id, RoutedWrite { partition });
        let message = RouteMessage::Write {
            partition,
            proposer_session: self.session,
            request_id,
            first_unanswered,
            operation,
        };
        Ok((request_id, message))
    }

    /// The router is done with a routed write (answered, or given up on): its mark may move.
    pub fn finish_routed_write(&mut self, request_id: u64) {
        self.routed_writes.remove(request_id);
    }

    /// A read of `partition` to be routed to its leader.
    pub fn route_read(
        &mut self,
        partition: PartitionId,
        query: &M::Query,
    ) -> Result<(u64, RouteMessage), RequestError> {
        self.check_usable()?;
        let query = postcard::to_allocvec(query)
            .map_err(|error| RequestError::Invalid(error.to_string()))?;
        let request_id = self.new_request_id();
        Ok((
            request_id,
            RouteMessage::Read {
                partition,
                proposer_session: self.session,
                request_id,
                query,
            },
        ))
    }

    /// A request for the handler of `partition` (named `name`) to be routed to its leader:
    /// a route id from the request counter, and the message (its timeout is set at each
    /// attempt).
    pub fn route_handle(
        &mut self,
        partition: PartitionId,
        name: Vec<u8>,
        body: Vec<u8>,
    ) -> Result<(u64, RouteMessage), RequestError> {
        self.check_usable()?;
        if body.len() > crate::raft::message::COMMAND_BYTES_MAX {
            return Err(RequestError::Invalid(format!(
                "a handler request of {} bytes is over the limit of {}",
                body.len(),
                crate::raft::message::COMMAND_BYTES_MAX
            )));
        }
        let request_id = self.new_request_id();
        Ok((
            request_id,
            RouteMessage::Handle {
                partition,
                name,
                proposer_session: self.session,
                request_id,
                timeout_micros: 0,
                body,
            },
        ))
    }

    /// Queues a routed request for `to` (this node included).
    pub fn send_route(&mut self, to: NodeId, message: RouteMessage) {
        self.route_outbox.push((to, message));
    }

    /// Routed messages for other nodes (and this one: a request routed to itself).
    pub fn take_route_messages(&mut self) -> Vec<(NodeId, RouteMessage)> {
        std::mem::take(&mut self.route_outbox)
    }

    // ---- as the serving leader ----

    fn answer_route(
        &mut self,
        to: NodeId,
        proposer_session: u64,
        request_id: u64,
        result: Result<ByteAnswer, RouteRefusal>,
    ) {
        self.route_outbox.push((
            to,
            RouteMessage::Answer {
                proposer_session,
                request_id,
                result,
            },
        ));
    }

    fn refuse_route(
        &mut self,
        to: NodeId,
        proposer_session: u64,
        request_id: u64,
        error: &RequestError,
    ) {
        self.answer_route(to, proposer_session, request_id, Err(refusal_of(error)));
    }

    /// This run's session: what the answers to its routed requests echo.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Whether this node leads `partition` now; the refusal to send when it does not.
    fn check_leads(&self, partition: PartitionId) -> Result<(), RequestError> {
        self.check_usable()?;
        let group = self
            .groups
            .get(&partition)
            .ok_or(RequestError::UnknownPartition(partition))?;
        let leader = group.leader();
        if leader == Some(self.id) {
            Ok(())
        } else {
            Err(RequestError::NotLeader { partition, leader })
        }
    }

    /// A routed write or read from `from` (an answer is the router's, not the host's).
    pub fn serve_route(&mut self, from: NodeId, message: RouteMessage) {
        match message {
            RouteMessage::Write {
                partition,
                proposer_session,
                request_id,
                first_unanswered,
                operation,
            } => {
                let command = Command {
                    proposer: from.0,
                    proposer_session,
                    request_id,
                    first_unanswered,
                    operation: (),
                };
                if let Err(error) = self.serve_write(partition, command, &operation) {
                    self.refuse_route(from, proposer_session, request_id, &error);
                }
            }
            RouteMessage::Read {
                partition,
                proposer_session,
                request_id,
                query,
            } => {
                let origin = (from, proposer_session, request_id);
                if let Err(error) = self.serve_read(origin, partition, &query) {
                    self.refuse_route(from, proposer_session, request_id, &error);
                }
            }
            // The node's handler runtime serves these; a host alone has none.
            RouteMessage::Handle {
                proposer_session,
                request_id,
                ..
            } => self.refuse_route(
                from,
                proposer_session,
                request_id,
                &RequestError::Invalid(format!("node {} runs no request handler", self.id)),
            ),
            RouteMessage::Answer { .. } => {}
        }
    }

    fn serve_write(
        &mut self,
        partition: PartitionId,
        identity: Command<()>,
        operation: &[u8],
    ) -> Result<(), RequestError> {
        let operation: M::Operation = postcard::from_bytes(operation).map_err(|error| {
            self.counters.messages_refused += 1;
            RequestError::Invalid(format!("a routed write that does not decode: {error}"))
        })?;
        if let Err(reason) = self.store.machine().validate(&operation) {
            self.counters.messages_refused += 1;
            return Err(RequestError::Invalid(reason));
        }
        self.check_leads(partition)?;
        let origin = NodeId(identity.proposer);
        let key = (
            partition,
            origin,
            identity.proposer_session,
            identity.request_id,
        );
        if self.serving_writes.contains_key(&key) {
            // A resend of a write proposed here and still waiting: its answer will come.
            return Ok(());
        }
        if self.serving_writes.len() + self.serving_reads.len() >= SERVING_REQUESTS_MAX {
            return Err(RequestError::Busy(partition));
        }
        let command = Command {
            proposer: identity.proposer,
            proposer_session: identity.proposer_session,
            request_id: identity.request_id,
            first_unanswered: identity.first_unanswered,
            operation,
        };
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        match group.propose(command.encode()) {
            Ok(crate::raft::Proposal::Appended { index, term }) => {
                self.serving_writes.insert(
                    key,
                    ServingWrite {
                        appended_at: (index, term),
                        deadline_tick: self.tick + self.config.request_timeout_ticks,
                    },
                );
                Ok(())
            }
            // Checked above: only a leader serves, and a leader appends.
            Ok(crate::raft::Proposal::Forwarded { leader }) => Err(RequestError::NotLeader {
                partition,
                leader: Some(leader),
            }),
            Err(error) => Err(requests::propose_refusal(partition, error)),
        }
    }

    fn serve_read(
        &mut self,
        origin: (NodeId, u64, u64),
        partition: PartitionId,
        query: &[u8],
    ) -> Result<(), RequestError> {
        let query: M::Query = postcard::from_bytes(query).map_err(|error| {
            self.counters.messages_refused += 1;
            RequestError::Invalid(format!("a routed read that does not decode: {error}"))
        })?;
        self.check_leads(partition)?;
        if self.serving_writes.len() + self.serving_reads.len() >= SERVING_REQUESTS_MAX {
            return Err(RequestError::Busy(partition));
        }
        let request_id = self.read(partition, query)?;
        self.serving_reads.insert(request_id, origin);
        Ok(())
    }

    /// Answers the routed writes among the commands a round applied to `partition`, and
    /// refuses those whose entries were replaced by another leader's.
    pub(super) fn answer_served_writes(
        &mut self,
        partition: PartitionId,
        entries: &[Entry],
        applied: &[AppliedCommand<M::Outcome>],
    ) {
        if self.serving_writes.is_empty() {
            return;
        }
        for command in applied {
            let key = (
                partition,
                NodeId(command.proposer),
                command.proposer_session,
                command.request_id,
            );
            if self.serving_writes.remove(&key).is_none() {
                continue;
            }
            let result = match &command.outcome {
                CommandOutcome::TookEffect(outcome) => encode_answer(outcome),
                CommandOutcome::Superseded | CommandOutcome::Undecodable(_) => {
                    Err(refusal_of(&RequestError::OutcomeUnknown))
                }
            };
            self.answer_route(key.1, key.2, command.request_id, result);
        }
        let range =
            (partition, NodeId(0), 0, 0)..=(partition, NodeId(u32::MAX), u64::MAX, u64::MAX);
        let lost: Vec<ServingKey> = self
            .serving_writes
            .range(range)
            .filter(|(_, write)| {
                let (index, term) = write.appended_at;
                entries
                    .iter()
                    .any(|entry| entry.index == index && entry.term != term)
            })
            .map(|(key, _)| *key)
            .collect();
        let leader = self.groups.get(&partition).and_then(RaftGroup::leader);
        for key in lost {
            self.serving_writes.remove(&key);
            self.refuse_route(
                key.1,
                key.2,
                key.3,
                &RequestError::NotLeader { partition, leader },
            );
        }
    }

    /// A read's answer: to the origin that routed it, or to this node's client.
    pub(super) fn answer_read(&mut self, request_id: u64, result: Result<M::Answer, RequestError>) {
        match self.serving_reads.remove(&request_id) {
            Some((origin, session, origin_request_id)) => {
                let result = match &result {
                    Ok(answer) => encode_answer(answer),
                    Err(error) => Err(refusal_of(error)),
                };
                self.answer_route(origin, session, origin_request_id, result);
            }
            None => self
                .outputs
                .push(HostOutput::ReadAnswered { request_id, result }),
        }
    }

    /// At a tick: routed writes served here past their deadline are answered "outcome
    /// unknown" (the entry may still apply; its origin decides what to tell its client).
    pub(super) fn expire_served_writes(&mut self) {
        let now = self.tick;
        let expired: Vec<ServingKey> = self
            .serving_writes
            .iter()
            .filter(|(_, write)| write.deadline_tick <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            self.serving_writes.remove(&key);
            self.refuse_route(key.1, key.2, key.3, &RequestError::OutcomeUnknown);
        }
    }

    /// When the host is poisoned: every routed request it serves is refused.
    pub(super) fn refuse_all_served(&mut self, error: &RequestError) {
        let writes: Vec<ServingKey> = self.serving_writes.keys().copied().collect();
        self.serving_writes.clear();
        for key in writes {
            self.refuse_route(key.1, key.2, key.3, error);
        }
        let reads: Vec<(NodeId, u64, u64)> = std::mem::take(&mut self.serving_reads)
            .into_values()
            .collect();
        for (origin, session, request_id) in reads {
            self.refuse_route(origin, session, request_id, error);
        }
    }

    /// Routed requests being served here (for status and tests).
    pub fn served_requests(&self) -> usize {
        self.serving_writes.len() + self.serving_reads.len()
    }
}

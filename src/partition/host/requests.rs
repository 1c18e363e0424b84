//! The partition host's client requests: proposing writes (with the proposer's session and
//! mark, see `replica_store`) and starting linearizable reads, membership changes and
//! leadership transfers; answering writes when their entries apply and reads once the
//! partition applied up to their read index; failing every waiting request when the host is
//! poisoned.
//!
//! Invariants: a write is answered only by the node that proposed it, when the entry it
//! proposed applies here (or "outcome unknown" after its timeout, or "not the leader" when
//! its entry was replaced); a read is answered only after its group confirmed leadership for
//! it and the state machine applied up to its index.

use super::*;

impl<M: StateMachine> PartitionHost<M> {
    pub(super) fn new_request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id
    }

    /// The mark a new write of `partition` carries: its oldest write still waiting (or the
    /// new one). Every earlier write of the partition not waiting any more was answered, so
    /// its copies, and the write itself if it was given up on, must never apply now.
    pub(super) fn first_unanswered(&self, partition: PartitionId, request_id: u64) -> u64 {
        let local = self.pending_writes.of_partition(partition).next();
        let routed = self.routed_writes.of_partition(partition).next();
        [local.map(|(id, _)| id), routed.map(|(id, _)| id)]
            .into_iter()
            .flatten()
            .fold(request_id, u64::min)
    }

    /// Proposes a write; its answer comes out of [`PartitionHost::take_outputs`] with the
    /// returned request id. Bad input is refused here and changes nothing.
    pub fn write(
        &mut self,
        partition: PartitionId,
        operation: M::Operation,
    ) -> Result<u64, RequestError> {
        self.check_usable()?;
        self.store
            .machine()
            .validate(&operation)
            .map_err(RequestError::Invalid)?;
        let operation = self.plant_split_batch(partition, operation);
        let request_id = self.new_request_id();
        let first_unanswered = self.first_unanswered(partition, request_id);
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        let command = Command {
            proposer: self.id.0,
            proposer_session: self.session,
            request_id,
            first_unanswered,
            operation,
        };
        let appended_at = match group.propose(command.encode()) {
            Ok(crate::raft::Proposal::Appended { index, term }) => Some((index, term)),
            Ok(crate::raft::Proposal::Forwarded { .. }) => None,
            Err(error) => return Err(propose_refusal(partition, error)),
        };
        self.pending_writes.insert(
            request_id,
            PendingWrite {
                partition,
                appended_at,
                deadline_tick: self.tick + self.config.request_timeout_ticks,
            },
        );
        Ok(request_id)
    }

    /// The planted `split_batches` bug: every piece of a write but the last is proposed on
    /// its own, unanswered, ahead of the rest (so it applies first); the last is the write's
    /// answer. Without the bug the operation is returned unchanged.
    pub(super) fn plant_split_batch(
        &mut self,
        partition: PartitionId,
        operation: M::Operation,
    ) -> M::Operation {
        if !self.config.split_batches {
            return operation;
        }
        let mut pieces = self.store.machine().split_for_canary(operation);
        let Some(last) = pieces.pop() else {
            unreachable!("a write splits into at least itself")
        };
        for piece in pieces {
            let request_id = self.new_request_id();
            let command = Command {
                proposer: self.id.0,
                proposer_session: self.session,
                request_id,
                first_unanswered: self.first_unanswered(partition, request_id),
                operation: piece,
            };
            if let Some(group) = self.groups.get_mut(&partition) {
                let _ = group.propose(command.encode());
            }
        }
        last
    }

    /// Starts a linearizable read; its answer comes out of [`PartitionHost::take_outputs`].
    pub fn read(&mut self, partition: PartitionId, request: M::Query) -> Result<u64, RequestError> {
        self.check_usable()?;
        let request_id = self.new_request_id();
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        if let Err(error) = group.read_index(read_context(self.read_salt, request_id)) {
            return Err(propose_refusal(partition, error));
        }
        self.pending_reads.insert(
            request_id,
            PendingRead {
                partition,
                request,
                read_index: None,
                deadline_tick: self.tick + self.config.request_timeout_ticks,
            },
        );
        Ok(request_id)
    }

    /// Reads this replica's applied state at once, without a read index: it may be behind
    /// the leader's. Only a canary's planted bug reads this way.
    pub fn read_applied(
        &self,
        partition: PartitionId,
        request: &M::Query,
    ) -> Result<M::Answer, RequestError> {
        self.check_usable()?;
        if !self.groups.contains_key(&partition) {
            return Err(RequestError::UnknownPartition(partition));
        }
        self.store
            .read(partition, request)
            .map_err(RequestError::from)
    }

    /// Proposes a membership change of `partition` (on its leader).
    pub fn change_membership(
        &mut self,
        partition: PartitionId,
        change: crate::raft::ConfigChange,
    ) -> Result<(), RequestError> {
        self.check_usable()?;
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        group
            .propose_config_change(change)
            .map(|_| ())
            .map_err(|error| propose_refusal(partition, error))
    }

    pub fn transfer_leadership(
        &mut self,
        partition: PartitionId,
        target: NodeId,
    ) -> Result<(), RequestError> {
        let Some(group) = self.groups.get_mut(&partition) else {
            return Err(RequestError::UnknownPartition(partition));
        };
        self.touched.insert(partition);
        group
            .transfer_leadership(target)
            .map_err(|error| propose_refusal(partition, error))
    }

    pub(super) fn answer_applied_writes(
        &mut self,
        partition: PartitionId,
        entries: &[crate::raft::Entry],
        applied: Vec<AppliedCommand<M::Outcome>>,
    ) {
        self.answer_served_writes(partition, entries, &applied);
        for command in applied {
            if command.proposer != self.id.0 || command.proposer_session != self.session {
                continue;
            }
            // Within one session a request id names one write of one partition; a command
            // claiming otherwise was proposed in this node's name by someone else.
            let ours = self
                .pending_writes
                .get(command.request_id)
                .map(|write| write.partition == partition);
            if ours == Some(true) {
                self.pending_writes.remove(command.request_id);
                // A skipped copy says nothing for sure: the request either applied once
                // already (perhaps inside a snapshot this node installed, so it was never
                // answered) or was overtaken and never will.
                let result = match command.outcome {
                    CommandOutcome::TookEffect(outcome) => Ok(outcome),
                    CommandOutcome::Superseded | CommandOutcome::Undecodable(_) => {
                        Err(RequestError::OutcomeUnknown)
                    }
                };
                self.outputs.push(HostOutput::WriteAnswered {
                    request_id: command.request_id,
                    result,
                });
            }
        }
        // A write appended here whose index applied with another entry was lost in a
        // leadership change: it never committed, so it will never apply.
        let mut lost = Vec::new();
        for (request_id, write) in self.pending_writes.of_partition(partition) {
            if let Some((index, term)) = write.appended_at {
                if let Some(entry) = entries.iter().find(|entry| entry.index == index) {
                    if entry.term != term {
                        lost.push(request_id);
                    }
                }
            }
        }
        for request_id in lost {
            self.pending_writes.remove(request_id);
            self.outputs.push(HostOutput::WriteAnswered {
                request_id,
                result: Err(RequestError::NotLeader {
                    partition,
                    leader: self.groups.get(&partition).and_then(RaftGroup::leader),
                }),
            });
        }
    }

    pub(super) fn serve_reads(&mut self, partition: PartitionId) {
        if self.pending_reads.of_partition(partition).next().is_none() {
            return;
        }
        let applied = self.store.point(partition).map_or(0, |point| point.index);
        let ready: Vec<u64> = self
            .pending_reads
            .of_partition(partition)
            .filter(|(_, read)| read.read_index.is_some_and(|index| index <= applied))
            .map(|(request_id, _)| request_id)
            .collect();
        for request_id in ready {
            let read = self.pending_reads.remove(request_id).expect("listed above");
            let result = self
                .store
                .read(partition, &read.request)
                .map_err(RequestError::from);
            if self.config.poison_on_missing_key
                && matches!(
                    result,
                    Err(RequestError::State(StateMachineError::KeyNotFound))
                )
            {
                self.fail("a read found no key".into());
                return;
            }
            self.answer_read(request_id, result);
        }
    }

    pub(super) fn fail_all_requests(&mut self) {
        let reason = self.poisoned.clone().unwrap_or_default();
        for request_id in self.pending_writes.take_all() {
            self.outputs.push(HostOutput::WriteAnswered {
                request_id,
                result: Err(RequestError::Poisoned(reason.clone())),
            });
        }
        for request_id in self.pending_reads.take_all() {
            self.answer_read(request_id, Err(RequestError::Poisoned(reason.clone())));
        }
        self.refuse_all_served(&RequestError::Poisoned(reason));
    }
}

/// The context a read carries through Raft: its request id offset by the session, so an
/// answer to a read of an earlier run of this node (request ids restart at every open) never
/// matches a read of this one.
pub(super) fn read_context(session: u64, request_id: u64) -> u64 {
    session.wrapping_add(request_id)
}

pub(super) fn propose_refusal(partition: PartitionId, error: ProposeError) -> RequestError {
    match error {
        ProposeError::NoLeader => RequestError::NotLeader {
            partition,
            leader: None,
        },
        ProposeError::NotLeader { leader } => RequestError::NotLeader { partition, leader },
        ProposeError::TransferInProgress | ProposeError::ConfigChangePending => {
            RequestError::Busy(partition)
        }
        ProposeError::InvalidConfigChange(error) => {
            RequestError::InvalidMembershipChange(error.to_string())
        }
    }
}

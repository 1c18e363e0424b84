//! The partition host's round: every touched group's Ready taken together, one append and
//! one sync of the node-wide Raft log for all of them (group commit), then what waited for
//! the sync: snapshots installed, acknowledgements sent, entries applied, reads served.
//!
//! Invariant: the Ready contract of `raft::ready` is kept for every group in a round:
//! replication messages may leave at once, everything else only after the round's sync;
//! committed entries apply after it; a received snapshot is named in the log (synced) before
//! the state machine installs it, so a crash in between recovers to the old state.

use super::*;

impl<M: StateMachine> PartitionHost<M> {
    /// Whether some group has something to persist, send or apply.
    pub fn has_work(&self) -> bool {
        self.poisoned.is_none()
            && self
                .touched
                .iter()
                .any(|partition| self.groups.get(partition).is_some_and(RaftGroup::has_ready))
    }

    /// Runs rounds until every group is idle, syncing inline (tests and tools; a driver with
    /// a disk to wait on uses [`PartitionHost::prepare_round`] and
    /// [`PartitionHost::complete_round`]).
    pub fn process(&mut self) {
        for _ in 0..8 {
            if !self.prepare_round() {
                if !self.has_work() {
                    break;
                }
                continue;
            }
            self.complete_round();
        }
    }

    /// Whether a prepared round waits for its sync.
    pub fn has_prepared_round(&self) -> bool {
        self.prepared.is_some()
    }

    /// Starts a round: takes every group's Ready, sends the replication traffic that may leave
    /// now, and stages the log writes. Returns true when the round waits for a sync (call
    /// [`PartitionHost::complete_round`] once the disk can take it); a round with nothing to
    /// write completes at once.
    pub fn prepare_round(&mut self) -> bool {
        if self.prepared.is_some() {
            return true;
        }
        if self.poisoned.is_some() {
            return false;
        }
        let mut readies: Vec<(PartitionId, Ready)> = Vec::new();
        // Every touched group is either taken now (and touched again when it advances) or
        // has nothing to do until something touches it: one look per touch, however often
        // the node asks for a round.
        for partition in std::mem::take(&mut self.touched) {
            if let Some(group) = self.groups.get_mut(&partition) {
                if group.has_ready() {
                    readies.push((partition, group.ready()));
                }
            }
        }
        if readies.is_empty() {
            return false;
        }
        self.counters.rounds += 1;
        if readies.iter().any(|(_, ready)| {
            ready.snapshot.is_some()
                || ready
                    .entries
                    .iter()
                    .any(|entry| matches!(entry.kind, EntryKind::ConfigChange(_)))
        }) {
            self.peers_stale = true;
        }
        for (partition, ready) in readies.iter_mut() {
            let partition = *partition;
            if let Some(role_state) = ready.role_state {
                if role_state.role == Role::Leader {
                    self.leading.insert(partition);
                } else {
                    self.leading.remove(&partition);
                }
            }
            for message in std::mem::take(&mut ready.messages) {
                self.queue(partition, message);
            }
            if self.config.acknowledge_before_sync {
                for message in std::mem::take(&mut ready.messages_after_persist) {
                    self.queue(partition, message);
                }
            }
            for request in std::mem::take(&mut ready.snapshot_requests) {
                if let Err(error) = self.serve_snapshot_chunk(partition, request) {
                    self.fail(error);
                    return false;
                }
            }
            if let Some(snapshot) = &ready.snapshot {
                self.raft_log
                    .stage_base(partition, snapshot.meta.index, snapshot.meta.term);
            }
            self.raft_log
                .stage_entries(partition, std::mem::take(&mut ready.entries));
            if let Some(hard_state) = ready.hard_state {
                self.raft_log.stage_hard_state(partition, hard_state);
            }
        }
        self.prepared = Some(readies);
        if self.raft_log.has_staged() {
            true
        } else {
            self.complete_round();
            false
        }
    }

    /// Finishes the prepared round: one sync for every group's writes, then what waited for
    /// it (snapshots installed, acknowledgements sent, entries applied, reads served). Does
    /// nothing while the round's sync is the driver's ([`PartitionHost::write_round`]).
    pub fn complete_round(&mut self) {
        if self.awaiting_sync {
            return;
        }
        let Some(readies) = self.prepared.take() else {
            return;
        };
        self.finish(readies);
    }

    /// Writes the prepared round's log records and hands their sync to the caller, so a
    /// driver with threads can go on taking inputs while the disk works: returns the file to
    /// sync, then [`PartitionHost::round_synced`] completes the round. Returns `None` when
    /// no sync is needed: the round completed here (nothing to write), or nothing is
    /// prepared, or its sync is already out.
    pub fn write_round(&mut self) -> Option<String> {
        if self.poisoned.is_some() {
            // Nothing of a poisoned host's round may complete; dropping it also keeps a
            // driver from taking it for work forever.
            self.prepared = None;
            return None;
        }
        if self.awaiting_sync || self.prepared.is_none() {
            return None;
        }
        match self.raft_log.write_staged() {
            Ok(Some(file)) => {
                self.awaiting_sync = true;
                Some(file)
            }
            Ok(None) => {
                self.complete_round();
                None
            }
            Err(error) => {
                self.fail(error.to_string());
                None
            }
        }
    }

    /// Whether a round's sync is out with the driver.
    pub fn is_awaiting_sync(&self) -> bool {
        self.awaiting_sync
    }

    /// The result of the sync [`PartitionHost::write_round`] asked for: completes the round,
    /// or poisons the host when the sync failed. (A host that failed meanwhile dropped the
    /// round: nothing waits for it.)
    pub fn round_synced(&mut self, result: Result<(), DiskError>) {
        if !self.awaiting_sync {
            return;
        }
        self.awaiting_sync = false;
        if let Err(error) = self.raft_log.synced(result) {
            self.fail(error.to_string());
            return;
        }
        let Some(readies) = self.prepared.take() else {
            return;
        };
        self.finish(readies);
    }

    fn finish(&mut self, readies: Vec<(PartitionId, Ready)>) {
        if self.poisoned.is_some() {
            return;
        }
        if let Err(error) = self.complete(readies) {
            self.fail(error);
            return;
        }
        if let Err(error) = self.maintain() {
            self.fail(error);
            return;
        }
        if let Err(error) = self.remove_deferred() {
            tracing::error!(%error, "a replica could not be deleted");
        }
    }

    pub(super) fn fail(&mut self, reason: String) {
        self.prepared = None;
        let _ = self.poison(reason);
        self.fail_all_requests();
    }

    pub(super) fn complete(
        &mut self,
        mut readies: Vec<(PartitionId, Ready)>,
    ) -> Result<(), String> {
        // One sync for every group (done already when the driver synced the round).
        self.raft_log.commit().map_err(|error| error.to_string())?;
        // Snapshots into the state machines, after the log names them.
        for (partition, ready) in readies.iter_mut() {
            if let Some(snapshot) = ready.snapshot.take() {
                let point = AppliedPoint {
                    index: snapshot.meta.index,
                    term: snapshot.meta.term,
                    configuration: snapshot.meta.configuration.clone(),
                };
                self.store
                    .install_snapshot(*partition, point, &snapshot.data)
                    .map_err(|error| error.to_string())?;
                self.snapshot_chunk_tick.remove(partition);
                self.counters.snapshots_installed += 1;
            }
        }
        // Every group's committed entries in one commit of the state machine's database.
        let runs: Vec<CommittedRun<'_>> = readies
            .iter()
            .filter_map(|(partition, ready)| {
                let last = ready.committed_entries.last()?;
                Some(CommittedRun {
                    partition: *partition,
                    entries: &ready.committed_entries,
                    configuration: self.groups[partition].configuration_at(last.index),
                })
            })
            .collect();
        let mut applied_runs: BTreeMap<PartitionId, Vec<AppliedCommand<M::Outcome>>> = self
            .store
            .apply_all(&runs)
            .map_err(|error| error.to_string())?
            .into_iter()
            .zip(runs.iter().map(|run| run.partition))
            .map(|(applied, partition)| (partition, applied))
            .collect();
        drop(runs);
        // What waited for durability; then answers and reads; then advance.
        for (partition, mut ready) in readies {
            for message in std::mem::take(&mut ready.messages_after_persist) {
                self.queue(partition, message);
            }
            if let Some(applied) = applied_runs.remove(&partition) {
                self.after_apply(partition, &ready.committed_entries, applied)?;
            }
            self.note_read_indexes(partition, ready.read_states);
            if let (Some(role_state), true) = (ready.role_state, self.config.report_applied) {
                self.outputs.push(HostOutput::RoleChanged {
                    partition,
                    role_state,
                });
            }
            self.groups
                .get_mut(&partition)
                .expect("a group with a Ready")
                .advance();
            self.touched.insert(partition);
            self.serve_reads(partition);
        }
        Ok(())
    }

    /// After a group's committed entries applied: reports them (for the simulator's
    /// checkers) and answers the writes this node proposed.
    fn after_apply(
        &mut self,
        partition: PartitionId,
        entries: &[Entry],
        applied: Vec<AppliedCommand<M::Outcome>>,
    ) -> Result<(), String> {
        self.counters.entries_applied += entries.len() as u64;
        self.applied_since_checkpoint += entries.len() as u64;
        if self.config.report_applied {
            self.report_applied(partition, entries, &applied);
        }
        // This node's session found older than one the partition remembers for it (its
        // partition database was rebuilt, and its old life proposed under a higher one):
        // without a higher session its proposals would be skipped for good.
        let retired_by = applied
            .iter()
            .filter(|command| {
                command.proposer == self.id.0 && command.proposer_session == self.session
            })
            .filter_map(|command| command.retired_by)
            .max();
        self.answer_applied_writes(partition, entries, applied);
        if let Some(newer) = retired_by {
            self.session = self
                .store
                .begin_incarnation_above(newer)
                .map_err(|error| error.to_string())?;
            tracing::warn!(node = %self.id, %partition, retired_by = newer, session = self.session, "proposer session was behind a partition's: took a higher one");
        }
        Ok(())
    }

    /// Every applied entry with its digest and the command it carried, if any.
    fn report_applied(
        &mut self,
        partition: PartitionId,
        entries: &[Entry],
        applied: &[AppliedCommand<M::Outcome>],
    ) {
        let applier_term = self.groups[&partition].term();
        let commands: BTreeMap<u64, AppliedCommandReport> = applied
            .iter()
            .filter(|command| !matches!(command.outcome, CommandOutcome::Undecodable(_)))
            .map(|command| {
                (
                    command.index,
                    AppliedCommandReport {
                        proposer: command.proposer,
                        proposer_session: command.proposer_session,
                        request_id: command.request_id,
                        first_unanswered: command.first_unanswered,
                        took_effect: matches!(command.outcome, CommandOutcome::TookEffect(_)),
                    },
                )
            })
            .collect();
        for entry in entries {
            self.outputs.push(HostOutput::Applied {
                partition,
                index: entry.index,
                term: entry.term,
                digest: entry_digest(entry),
                applier_term,
                command: commands.get(&entry.index).copied(),
            });
        }
    }

    /// Confirmed read indexes of this run's reads of `partition`. A late answer from before a
    /// restart, or one for another partition, confirms nothing here.
    fn note_read_indexes(
        &mut self,
        partition: PartitionId,
        read_states: Vec<crate::raft::ReadState>,
    ) {
        for read_state in read_states {
            let request_id = read_state.context.wrapping_sub(self.read_salt);
            match self.pending_reads.get_mut(request_id) {
                Some(read) if read.partition == partition => {
                    read.read_index = Some(read_state.index);
                }
                _ => {}
            }
        }
    }

    pub(super) fn queue(&mut self, partition: PartitionId, message: Message) {
        let to = message.to;
        self.outbox
            .entry(to)
            .or_default()
            .messages
            .push((partition, message));
    }

    pub(super) fn serve_snapshot_chunk(
        &mut self,
        partition: PartitionId,
        request: crate::raft::SnapshotChunkRequest,
    ) -> Result<(), String> {
        let applied_index = self.store.point(partition).map_or(0, |point| point.index);
        // A new transfer snapshots the state machine as it is now; a running one continues
        // from the image it started with.
        let index = if request.offset == 0 {
            applied_index
        } else {
            request.index
        };
        if !self.snapshots.contains_key(&(partition, index)) {
            if request.offset != 0 {
                // The image is gone: the next heartbeat restarts nothing, so let the leader
                // time the transfer out and start over.
                return Ok(());
            }
            let (point, data) = self
                .store
                .snapshot(partition)
                .map_err(|error| error.to_string())?;
            debug_assert_eq!(point.index, index);
            self.snapshots.insert(
                (partition, index),
                CachedSnapshot {
                    data,
                    last_used_tick: self.tick,
                },
            );
        }
        let cached = self
            .snapshots
            .get_mut(&(partition, index))
            .expect("cached above");
        cached.last_used_tick = self.tick;
        let start = (request.offset as usize).min(cached.data.len());
        let end = start
            .saturating_add(request.bytes_max)
            .min(cached.data.len());
        let chunk = cached.data[start..end].to_vec();
        let done = end == cached.data.len();
        if let Some(group) = self.groups.get_mut(&partition) {
            group.on_snapshot_chunk(request.to, index, request.offset, chunk, done);
            self.touched.insert(partition);
        }
        Ok(())
    }
}

//! The partition host's upkeep between rounds: ticks (with request timeouts and the snapshot
//! cache's expiry), the node-level watch of peers that lets quiet groups cost nothing, and
//! the checkpoints of the state machines and the Raft log.
//!
//! Invariant: the Raft log drops entries only at or below a partition's checkpointed applied
//! index (less the catch-up tail), and a log checkpoint rewrites only what is durable.

use super::*;

impl<M: StateMachine> PartitionHost<M> {
    /// One tick of the node's clock for every group; requests past their deadline are
    /// answered "outcome unknown".
    pub fn tick(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        self.tick += 1;
        for (partition, group) in self.groups.iter_mut() {
            if !group.is_quiet() {
                group.tick();
                self.touched.insert(*partition);
            }
        }
        self.watch_peers();
        let now = self.tick;
        for request_id in self.pending_writes.expired(now) {
            self.pending_writes.remove(request_id);
            self.outputs.push(HostOutput::WriteAnswered {
                request_id,
                result: Err(RequestError::OutcomeUnknown),
            });
        }
        for request_id in self.pending_reads.expired(now) {
            self.pending_reads.remove(request_id);
            self.answer_read(request_id, Err(RequestError::OutcomeUnknown));
        }
        self.expire_served_writes();
        self.snapshots
            .retain(|_, snapshot| snapshot.last_used_tick + 200 > now);
    }

    /// Node-level liveness, so quiet groups cost nothing: every heartbeat interval each peer
    /// gets one envelope (empty when no group has anything for it), and a quiet follower
    /// whose leader's node has been silent for an election timeout is woken to elect.
    pub(super) fn watch_peers(&mut self) {
        let raft = &self.config.raft;
        if raft.quiesce_after_ticks == 0 {
            return;
        }
        let heartbeat_ticks = u64::from(raft.heartbeat_interval_ticks);
        let silent_ticks = u64::from(raft.election_timeout_ticks);
        let now = self.tick;
        // A pass over every group only when a configuration changed, and now and then to
        // forget peers of changes a leader change undid (an extra peer only costs pings).
        if (self.peers_stale && now.is_multiple_of(silent_ticks))
            || now.is_multiple_of(silent_ticks * PEER_REFRESH_ELECTION_TIMEOUTS)
        {
            self.refresh_peers();
            self.peers_stale = false;
        }
        if now.is_multiple_of(heartbeat_ticks) {
            for peer in &self.peers {
                self.outbox.entry(*peer).or_default();
            }
        }
        let mut silent_peers = std::collections::BTreeSet::new();
        for peer in &self.peers {
            let heard = *self.peer_heard_tick.entry(*peer).or_insert(now);
            if now.saturating_sub(heard) > silent_ticks {
                silent_peers.insert(*peer);
            }
        }
        if silent_peers.is_empty() {
            return;
        }
        for (partition, group) in self.groups.iter_mut() {
            let Some(leader) = group.leader() else {
                continue;
            };
            if group.is_quiet() && silent_peers.contains(&leader) {
                group.wake(true);
                self.touched.insert(*partition);
            }
        }
    }

    /// The catch-up tail each partition keeps behind its checkpoint: the configured one, or
    /// an equal share of the node's total when many partitions share it.
    pub(super) fn catch_up_entries(&self) -> u64 {
        let partitions = (self.groups.len() as u64).max(1);
        let share =
            (self.config.log_catch_up_entries_total / partitions).max(LOG_CATCH_UP_ENTRIES_MIN);
        self.config.log_catch_up_entries.min(share)
    }

    /// Checkpoints the state machines and the log when due, and drops what they cover.
    pub(super) fn maintain(&mut self) -> Result<(), String> {
        if self.applied_since_checkpoint >= self.config.checkpoint_applied_entries {
            self.store.checkpoint().map_err(|error| error.to_string())?;
            self.applied_since_checkpoint = 0;
            self.counters.state_machine_checkpoints += 1;
            let catch_up_entries = self.catch_up_entries();
            for (partition, group) in self.groups.iter_mut() {
                let index = self
                    .store
                    .checkpointed_index(*partition)
                    .saturating_sub(catch_up_entries);
                if index > group.log().snapshot_index() {
                    group.compact(index);
                    self.touched.insert(*partition);
                }
            }
        }
        if self.raft_log.segment()
            >= self.log_checkpoint_segment + self.config.log_checkpoint_segments
            && !self.raft_log.has_staged()
        {
            let live: Vec<LiveLog<'_>> = self
                .groups
                .iter()
                .map(|(partition, group)| {
                    let log = group.log();
                    let base_index = log.snapshot_index();
                    let base_term = log.term(base_index).expect("the base term is kept");
                    // Only what is durable: entries appended since the last Ready are not.
                    let entries = (log.first_index()..=log.persisted())
                        .filter_map(|index| log.entry(index))
                        .collect();
                    LiveLog {
                        partition: *partition,
                        hard_state: group.durable_hard_state(),
                        base: (base_index, base_term),
                        entries,
                    }
                })
                .collect();
            self.raft_log
                .checkpoint(live)
                .map_err(|error: RaftLogError| error.to_string())?;
            self.log_checkpoint_segment = self.raft_log.segment();
            self.counters.log_checkpoints += 1;
        }
        Ok(())
    }
}

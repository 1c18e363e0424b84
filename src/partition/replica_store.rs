//! The state of every partition replica on a node, in one redb database on the `Disk` seam
//! (`partitions.redb`): what the host keeps for every kind of state machine alike (each
//! partition's applied point, the at-most-once session table, this node's proposer
//! incarnation), and the state machine's own tables, written in the same transactions.
//!
//! Invariants:
//! - the applied point and the session windows are written in the same transaction as the
//!   writes they cover, so the state and the point it claims never disagree;
//! - commits that apply entries are not synced (`Durability::None`), and one commit applies a
//!   whole round of partitions (`apply_all`); a checkpoint syncs them all at once, and only a checkpointed applied index may let the Raft log drop entries;
//! - an installed snapshot replaces the partition's state, sessions and point in one synced
//!   commit;
//! - any write failure poisons the store: it refuses further writes until the node restarts;
//! - a command applies at most once. Per partition and proposer node the store keeps that
//!   proposer's latest session (its incarnation: every start of a node's host takes the next
//!   one, durably, before it proposes anything) and a window: the proposer's mark (every
//!   request below it was answered, so a command below it is a stale copy) and the request
//!   ids at or above it that applied. A command below the mark, already in the window, or of
//!   an older session of its proposer (one that restarted since: nobody waits for its answer)
//!   is skipped as superseded on every replica alike. So the table holds one window per
//!   proposer node, however often nodes restart, and each window is bounded (the host takes
//!   forwarded commands only in their sender's name, so no member fills the table with
//!   other proposers). A node whose own command was skipped for a newer session of its own
//!   (its partition database was rebuilt) takes an incarnation above that one. The network may
//!   duplicate a forwarded proposal, and the leader would append each copy; it may also
//!   reorder two requests of one session, and the later one arriving first does not make the
//!   earlier one fail.

use crate::partition::command::Command;
use crate::partition::state_machine::{engine_error, StateMachine, StateMachineError};
use crate::partition::PartitionId;
use crate::raft::{Configuration, Entry, EntryKind};
use crate::seams::SharedDisk;
use crate::storage::{prepare_database_file, DiskBackend};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DATABASE_FILE: &str = "partitions.redb";
const POINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("partition_points");
/// (partition, proposer node) to its [`ProposerSession`], encoded.
const SESSIONS: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("partition_proposer_sessions");
/// Partitions whose replica left this node, with its last term and vote (a [`RemovedVote`],
/// encoded): a replica created here again starts from them, so this node never votes twice
/// in one term.
const REMOVED_VOTES: TableDefinition<u64, &[u8]> = TableDefinition::new("partition_removed_votes");

/// The last term and vote of a replica that left this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedVote {
    pub term: u64,
    pub vote: Option<crate::ids::NodeId>,
}
/// This node's own facts: its proposer incarnation.
const NODE: TableDefinition<&str, u64> = TableDefinition::new("partition_node");
const INCARNATION: &str = "incarnation";
/// The page cache of a store opened without a size (tests, and the simulator's many nodes).
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// A fresh database's first incarnation is drawn below this (see `begin_incarnation`).
pub const INCARNATION_BASE_MAX: u64 = 1 << 40;

/// What a partition's state machine has applied: the Raft snapshot point it stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPoint {
    pub index: u64,
    pub term: u64,
    pub configuration: Configuration,
}

/// What became of one committed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutcome<O> {
    /// It applied; the state machine's outcome.
    TookEffect(O),
    /// Skipped on every replica alike: a copy of a command already applied, a command its
    /// proposer had answered before it arrived, or one of a session its proposer restarted
    /// out of (never applied).
    Superseded,
    /// The entry did not decode: a format bug; the entry is skipped on every replica alike.
    Undecodable(String),
}

/// What applying one command did, for the proposer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedCommand<O> {
    pub index: u64,
    pub proposer: u32,
    pub proposer_session: u64,
    pub request_id: u64,
    /// The command's `first_unanswered`, as applied (never above its request id).
    pub first_unanswered: u64,
    pub outcome: CommandOutcome<O>,
    /// Superseded because its proposer's session is older than this one, which the partition
    /// remembers for that proposer.
    pub retired_by: Option<u64>,
}

/// One partition's committed entries to apply, and the configuration in force at the last.
#[derive(Debug)]
pub struct CommittedRun<'entries> {
    pub partition: PartitionId,
    pub entries: &'entries [Entry],
    pub configuration: Configuration,
}

#[derive(Debug)]
pub struct ReplicaStore<M: StateMachine> {
    database: Database,
    machine: M,
    points: BTreeMap<PartitionId, AppliedPoint>,
    /// The applied index each partition had at the last checkpoint (durable).
    checkpointed: BTreeMap<PartitionId, u64>,
    poisoned: Option<String>,
    /// A canary's planted bug: apply copies and overtaken commands as if new. Never set
    /// outside a canary scenario.
    apply_copies: bool,
}

impl<M: StateMachine> ReplicaStore<M> {
    /// Plants the canary bug `apply_copies` (see the field).
    pub fn plant_apply_copies(&mut self) {
        self.apply_copies = true;
    }

    pub fn open(disk: SharedDisk, machine: M) -> Result<Self, StateMachineError> {
        Self::open_with_cache(disk, machine, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store with a page cache of `cache_bytes`. A database larger than its cache
    /// reads pages back from the disk on every apply: a cache below the working set cost a
    /// put load a fifth of its throughput.
    pub fn open_with_cache(
        disk: SharedDisk,
        mut machine: M,
        cache_bytes: usize,
    ) -> Result<Self, StateMachineError> {
        prepare_database_file(disk.as_ref(), DATABASE_FILE)?;
        let database = Database::builder()
            .set_cache_size(cache_bytes)
            .create_with_backend(DiskBackend::new(disk, DATABASE_FILE))
            .map_err(engine_error)?;
        let mut transaction = database.begin_write().map_err(engine_error)?;
        transaction
            .set_durability(Durability::Immediate)
            .map_err(engine_error)?;
        transaction.open_table(POINTS).map_err(engine_error)?;
        transaction.open_table(SESSIONS).map_err(engine_error)?;
        transaction.open_table(NODE).map_err(engine_error)?;
        transaction
            .open_table(REMOVED_VOTES)
            .map_err(engine_error)?;
        machine.open_tables(&transaction)?;
        transaction.commit().map_err(engine_error)?;
        let mut points = BTreeMap::new();
        {
            let transaction = database.begin_read().map_err(engine_error)?;
            let table = transaction.open_table(POINTS).map_err(engine_error)?;
            for row in table.iter().map_err(engine_error)? {
                let (id, point) = row.map_err(engine_error)?;
                let point: AppliedPoint = postcard::from_bytes(point.value()).map_err(|error| {
                    StateMachineError::Corrupt(format!("applied point: {error}"))
                })?;
                check_point(id.value(), &point).map_err(StateMachineError::Corrupt)?;
                points.insert(PartitionId(id.value()), point);
            }
        }
        let checkpointed = points
            .iter()
            .map(|(id, point)| (*id, point.index))
            .collect();
        Ok(Self {
            database,
            machine,
            points,
            checkpointed,
            poisoned: None,
            apply_copies: false,
        })
    }

    /// Takes this node's next proposer incarnation, durably: the session its proposals carry
    /// until it restarts. Sessions only grow, so a replica knows a command of an older
    /// session of a proposer for one whose proposer is gone. A database without one (a new
    /// node, or one whose partition database was rebuilt) starts at `fresh_base`, drawn below
    /// [`INCARNATION_BASE_MAX`], so a rebuilt node is unlikely to take the very session its
    /// old life left in other replicas' tables; one below it is raised when it shows
    /// ([`ReplicaStore::begin_incarnation_above`]).
    pub fn begin_incarnation(&mut self, fresh_base: u64) -> Result<u64, StateMachineError> {
        self.take_incarnation(|last| match last {
            Some(last) => last.checked_add(1),
            None => Some(fresh_base.clamp(1, INCARNATION_BASE_MAX)),
        })
    }

    /// Takes an incarnation above `retired_by`, a session this node's proposals were found
    /// older than: its proposals go on being applied instead of skipped for good.
    pub fn begin_incarnation_above(&mut self, retired_by: u64) -> Result<u64, StateMachineError> {
        self.take_incarnation(|last| {
            let next = retired_by.checked_add(1)?;
            Some(last.map_or(next, |last| next.max(last.saturating_add(1))))
        })
    }

    fn take_incarnation(
        &mut self,
        next: impl FnOnce(Option<u64>) -> Option<u64>,
    ) -> Result<u64, StateMachineError> {
        self.check_writable()?;
        let result = (|| {
            let transaction = self.write_transaction(Durability::Immediate)?;
            let incarnation = {
                let mut table = transaction.open_table(NODE).map_err(engine_error)?;
                let last = table
                    .get(INCARNATION)
                    .map_err(engine_error)?
                    .map(|value| value.value());
                let next = next(last).ok_or_else(|| {
                    StateMachineError::Corrupt("the proposer incarnation is exhausted".into())
                })?;
                table.insert(INCARNATION, next).map_err(engine_error)?;
                next
            };
            transaction.commit().map_err(engine_error)?;
            Ok(incarnation)
        })();
        self.poison_on_error(result)
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_writable(&self) -> Result<(), StateMachineError> {
        match &self.poisoned {
            Some(reason) => Err(StateMachineError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    fn poison_on_error<T>(
        &mut self,
        result: Result<T, StateMachineError>,
    ) -> Result<T, StateMachineError> {
        if let Err(error) = &result {
            tracing::error!(%error, "partition store poisoned: refusing writes until restart");
            self.poisoned.get_or_insert(error.to_string());
        }
        result
    }

    fn write_transaction(
        &self,
        durability: Durability,
    ) -> Result<redb::WriteTransaction, StateMachineError> {
        let mut transaction = self.database.begin_write().map_err(engine_error)?;
        transaction
            .set_durability(durability)
            .map_err(engine_error)?;
        Ok(transaction)
    }

    /// The state machine, for checks that need no transaction (validation).
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The state machine, for what it keeps in memory (a queue of changes to take).
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    /// Every partition on this node and what it has applied.
    pub fn points(&self) -> &BTreeMap<PartitionId, AppliedPoint> {
        &self.points
    }

    pub fn point(&self, id: PartitionId) -> Option<&AppliedPoint> {
        self.points.get(&id)
    }

    /// The applied index of `id` that survives a crash.
    pub fn checkpointed_index(&self, id: PartitionId) -> u64 {
        self.checkpointed.get(&id).copied().unwrap_or(0)
    }

    /// Adds a partition at `point` (its bootstrap snapshot), durably.
    pub fn create_partition(
        &mut self,
        id: PartitionId,
        point: AppliedPoint,
    ) -> Result<(), StateMachineError> {
        assert!(
            id.0 < u64::MAX,
            "partition ids stay below u64::MAX (key prefix bounds)"
        );
        self.check_writable()?;
        let result = self.write_point(id, &point, Durability::Immediate);
        self.poison_on_error(result)?;
        self.checkpointed.insert(id, point.index);
        self.points.insert(id, point);
        Ok(())
    }

    /// Deletes partition `id` from this node (its state, sessions and point) in one synced
    /// commit, and remembers its replica's last term and vote.
    pub fn remove_partition(
        &mut self,
        id: PartitionId,
        last_vote: RemovedVote,
    ) -> Result<(), StateMachineError> {
        self.check_writable()?;
        let result = self.remove_transaction(id, last_vote);
        self.poison_on_error(result)?;
        self.points.remove(&id);
        self.checkpointed.remove(&id);
        Ok(())
    }

    fn remove_transaction(
        &mut self,
        id: PartitionId,
        last_vote: RemovedVote,
    ) -> Result<(), StateMachineError> {
        let transaction = self.write_transaction(Durability::Immediate)?;
        self.machine.remove_partition(&transaction, id)?;
        {
            let mut sessions = transaction.open_table(SESSIONS).map_err(engine_error)?;
            sessions
                .retain_in((id.0, 0)..=(id.0, u32::MAX), |_, _| false)
                .map_err(engine_error)?;
            let mut points = transaction.open_table(POINTS).map_err(engine_error)?;
            points.remove(id.0).map_err(engine_error)?;
            let mut removed = transaction
                .open_table(REMOVED_VOTES)
                .map_err(engine_error)?;
            let encoded = postcard::to_stdvec(&last_vote).expect("votes serialise");
            removed
                .insert(id.0, encoded.as_slice())
                .map_err(engine_error)?;
        }
        transaction.commit().map_err(engine_error)
    }

    /// The last term and vote of a removed replica of `id` here, if one was ever removed.
    pub fn removed_vote(&self, id: PartitionId) -> Result<Option<RemovedVote>, StateMachineError> {
        let transaction = self.database.begin_read().map_err(engine_error)?;
        let removed = transaction
            .open_table(REMOVED_VOTES)
            .map_err(engine_error)?;
        let Some(encoded) = removed.get(id.0).map_err(engine_error)? else {
            return Ok(None);
        };
        postcard::from_bytes(encoded.value())
            .map(Some)
            .map_err(|error| StateMachineError::Corrupt(format!("removed replica's vote: {error}")))
    }

    fn write_point(
        &self,
        id: PartitionId,
        point: &AppliedPoint,
        durability: Durability,
    ) -> Result<(), StateMachineError> {
        let transaction = self.write_transaction(durability)?;
        put_point(&transaction, id, point)?;
        transaction.commit().map_err(engine_error)
    }

    /// Applies committed entries of `id` in one (unsynced) transaction, moving its applied
    /// point to the last one; `configuration` is the one in force at that entry.
    pub fn apply(
        &mut self,
        id: PartitionId,
        entries: &[Entry],
        configuration: Configuration,
    ) -> Result<Vec<AppliedCommand<M::Outcome>>, StateMachineError> {
        let mut applied = self.apply_all(&[CommittedRun {
            partition: id,
            entries,
            configuration,
        }])?;
        Ok(applied.pop().unwrap_or_default())
    }

    /// Applies the committed entries of several partitions in one (unsynced) transaction:
    /// a round's worth of applies costs one commit of the database, not one per partition.
    /// Each run moves its partition's applied point to its last entry. Returns what applying
    /// did, one list per run, in the runs' order. A partition may appear in one run only.
    pub fn apply_all(
        &mut self,
        runs: &[CommittedRun<'_>],
    ) -> Result<Vec<Vec<AppliedCommand<M::Outcome>>>, StateMachineError> {
        self.check_writable()?;
        let mut next_points = Vec::with_capacity(runs.len());
        for run in runs {
            let Some(point) = self.points.get(&run.partition) else {
                return Err(StateMachineError::UnknownPartition(run.partition));
            };
            let next_point = match (run.entries.first(), run.entries.last()) {
                (Some(first), Some(last)) => {
                    assert_eq!(
                        first.index,
                        point.index + 1,
                        "partition {} applies in order",
                        run.partition
                    );
                    Some(AppliedPoint {
                        index: last.index,
                        term: last.term,
                        configuration: run.configuration.clone(),
                    })
                }
                _ => None,
            };
            next_points.push(next_point);
        }
        debug_assert!(
            runs.iter()
                .map(|run| run.partition)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == runs.len(),
            "one run per partition"
        );
        if next_points.iter().all(Option::is_none) {
            return Ok(runs.iter().map(|_| Vec::new()).collect());
        }
        let result = self.apply_transaction(runs, &next_points);
        let applied = self.poison_on_error(result)?;
        for (run, next_point) in runs.iter().zip(next_points) {
            if let Some(next_point) = next_point {
                self.points.insert(run.partition, next_point);
            }
        }
        Ok(applied)
    }

    fn apply_transaction(
        &mut self,
        runs: &[CommittedRun<'_>],
        next_points: &[Option<AppliedPoint>],
    ) -> Result<Vec<Vec<AppliedCommand<M::Outcome>>>, StateMachineError> {
        let transaction = self.write_transaction(Durability::None)?;
        let mut applied_runs = Vec::with_capacity(runs.len());
        for (run, next_point) in runs.iter().zip(next_points) {
            let Some(next_point) = next_point else {
                applied_runs.push(Vec::new());
                continue;
            };
            applied_runs.push(self.apply_entries(&transaction, run.partition, run.entries)?);
            put_point(&transaction, run.partition, next_point)?;
        }
        transaction.commit().map_err(engine_error)?;
        Ok(applied_runs)
    }

    fn apply_entries(
        &mut self,
        transaction: &redb::WriteTransaction,
        id: PartitionId,
        entries: &[Entry],
    ) -> Result<Vec<AppliedCommand<M::Outcome>>, StateMachineError> {
        let mut applied = Vec::new();
        for entry in entries {
            let EntryKind::Command(bytes) = &entry.kind else {
                continue;
            };
            let command = match Command::<M::Operation>::decode(bytes) {
                Ok(command) => command,
                Err(error) => {
                    tracing::error!(partition = %id, index = entry.index, %error, "undecodable command skipped");
                    applied.push(AppliedCommand {
                        index: entry.index,
                        proposer: 0,
                        proposer_session: 0,
                        request_id: 0,
                        first_unanswered: 0,
                        outcome: CommandOutcome::Undecodable(error.to_string()),
                        retired_by: None,
                    });
                    continue;
                }
            };
            // A mark above its own request would let a forged command fence off others.
            let first_unanswered = command.first_unanswered.min(command.request_id);
            let admission = self.admit(transaction, id, &command, first_unanswered)?;
            let retired_by = match admission {
                Admission::OlderSession { newer } => Some(newer),
                Admission::TakesEffect | Admission::Copy => None,
            };
            let outcome = if admission == Admission::TakesEffect {
                CommandOutcome::TookEffect(self.machine.apply(
                    transaction,
                    id,
                    entry.index,
                    &command.operation,
                )?)
            } else {
                tracing::debug!(partition = %id, index = entry.index, proposer = command.proposer, request_id = command.request_id, "command superseded: not applied");
                CommandOutcome::Superseded
            };
            applied.push(AppliedCommand {
                index: entry.index,
                proposer: command.proposer,
                proposer_session: command.proposer_session,
                request_id: command.request_id,
                first_unanswered,
                outcome,
                retired_by,
            });
        }
        Ok(applied)
    }

    /// Whether `command` may take effect, and if so records it in its proposer's session.
    fn admit(
        &self,
        transaction: &redb::WriteTransaction,
        id: PartitionId,
        command: &Command<M::Operation>,
        first_unanswered: u64,
    ) -> Result<Admission, StateMachineError> {
        let mut sessions = transaction.open_table(SESSIONS).map_err(engine_error)?;
        let key = (id.0, command.proposer);
        let stored = match sessions.get(key).map_err(engine_error)? {
            Some(bytes) => Some(ProposerSession::decode(bytes.value())?),
            None => None,
        };
        let mut current = match stored {
            // A newer session of the proposer retires the older one and its window.
            Some(stored) if stored.session >= command.proposer_session => stored,
            _ => ProposerSession {
                session: command.proposer_session,
                window: SessionWindow::default(),
            },
        };
        let admission = if current.session != command.proposer_session {
            Admission::OlderSession {
                newer: current.session,
            }
        } else if current.window.admits(command.request_id) {
            Admission::TakesEffect
        } else {
            Admission::Copy
        };
        if admission != Admission::TakesEffect && !self.apply_copies {
            return Ok(admission);
        }
        if current.session == command.proposer_session {
            current.window.record(command.request_id, first_unanswered);
            sessions
                .insert(key, current.encode().as_slice())
                .map_err(engine_error)?;
        }
        Ok(Admission::TakesEffect)
    }

    /// Makes every applied entry durable (one synced commit).
    pub fn checkpoint(&mut self) -> Result<(), StateMachineError> {
        self.check_writable()?;
        let result = (|| {
            let transaction = self.write_transaction(Durability::Immediate)?;
            transaction.commit().map_err(engine_error)
        })();
        self.poison_on_error(result)?;
        self.checkpointed = self
            .points
            .iter()
            .map(|(id, point)| (*id, point.index))
            .collect();
        Ok(())
    }

    /// Answers `query` from `id`'s applied state.
    pub fn read(&self, id: PartitionId, query: &M::Query) -> Result<M::Answer, StateMachineError> {
        if !self.points.contains_key(&id) {
            return Err(StateMachineError::UnknownPartition(id));
        }
        let transaction = self.database.begin_read().map_err(engine_error)?;
        self.machine.read(&transaction, id, query)
    }

    /// The bytes of keys and values `id`'s state machine holds.
    pub fn size_bytes(&self, id: PartitionId) -> Result<u64, StateMachineError> {
        if !self.points.contains_key(&id) {
            return Err(StateMachineError::UnknownPartition(id));
        }
        let transaction = self.database.begin_read().map_err(engine_error)?;
        self.machine.size_bytes(&transaction, id)
    }

    /// The proposer sessions `id` remembers (one per proposer node).
    pub fn session_count(&self, id: PartitionId) -> Result<usize, StateMachineError> {
        Ok(self.sessions(id)?.len())
    }

    /// The partition's whole state at its applied point, for a follower that needs a snapshot.
    pub fn snapshot(&self, id: PartitionId) -> Result<(AppliedPoint, Vec<u8>), StateMachineError> {
        let point = self
            .points
            .get(&id)
            .cloned()
            .ok_or(StateMachineError::UnknownPartition(id))?;
        let transaction = self.database.begin_read().map_err(engine_error)?;
        let state = self.machine.take_snapshot(&transaction, id)?;
        let sessions = self.sessions(id)?;
        let data =
            postcard::to_stdvec(&SnapshotImage { state, sessions }).expect("images serialise");
        Ok((point, data))
    }

    /// The partition's proposer sessions.
    fn sessions(&self, id: PartitionId) -> Result<Vec<(u32, ProposerSession)>, StateMachineError> {
        let transaction = self.database.begin_read().map_err(engine_error)?;
        let table = transaction.open_table(SESSIONS).map_err(engine_error)?;
        let mut sessions = Vec::new();
        for row in table
            .range((id.0, 0)..=(id.0, u32::MAX))
            .map_err(engine_error)?
        {
            let (key, session) = row.map_err(engine_error)?;
            let (_, proposer) = key.value();
            sessions.push((proposer, ProposerSession::decode(session.value())?));
        }
        Ok(sessions)
    }

    /// Checks a snapshot image received from a peer before Raft installs it: it decodes, its
    /// sessions keep their invariants, and the state machine takes its state.
    pub fn check_snapshot_image(data: &[u8]) -> Result<(), String> {
        let image: SnapshotImage =
            postcard::from_bytes(data).map_err(|error| format!("snapshot image: {error}"))?;
        for (_, session) in &image.sessions {
            session
                .window
                .check()
                .map_err(|problem| format!("snapshot image: {problem}"))?;
        }
        M::check_image(&image.state).map_err(|problem| format!("snapshot image: {problem}"))
    }

    /// Replaces the partition's state with a snapshot image, durably.
    pub fn install_snapshot(
        &mut self,
        id: PartitionId,
        point: AppliedPoint,
        data: &[u8],
    ) -> Result<(), StateMachineError> {
        self.check_writable()?;
        let image: SnapshotImage = postcard::from_bytes(data)
            .map_err(|error| StateMachineError::Corrupt(format!("snapshot image: {error}")))?;
        let result = self.install_transaction(id, &point, &image);
        self.poison_on_error(result)?;
        self.checkpointed.insert(id, point.index);
        self.points.insert(id, point);
        Ok(())
    }

    fn install_transaction(
        &mut self,
        id: PartitionId,
        point: &AppliedPoint,
        image: &SnapshotImage,
    ) -> Result<(), StateMachineError> {
        let transaction = self.write_transaction(Durability::Immediate)?;
        self.machine
            .install_snapshot(&transaction, id, &image.state)?;
        {
            let mut sessions = transaction.open_table(SESSIONS).map_err(engine_error)?;
            sessions
                .retain_in((id.0, 0)..=(id.0, u32::MAX), |_, _| false)
                .map_err(engine_error)?;
            for (proposer, session) in &image.sessions {
                sessions
                    .insert((id.0, *proposer), session.encode().as_slice())
                    .map_err(engine_error)?;
            }
        }
        put_point(&transaction, id, point)?;
        transaction.commit().map_err(engine_error)
    }
}

/// What a replica makes of a command's session and request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    TakesEffect,
    /// Already applied, or below its session's mark.
    Copy,
    /// Of a session older than the one the partition remembers for its proposer.
    OlderSession {
        newer: u64,
    },
}

fn put_point(
    transaction: &redb::WriteTransaction,
    id: PartitionId,
    point: &AppliedPoint,
) -> Result<(), StateMachineError> {
    let mut points = transaction.open_table(POINTS).map_err(engine_error)?;
    let encoded = postcard::to_stdvec(point).expect("points serialise");
    points
        .insert(id.0, encoded.as_slice())
        .map_err(engine_error)?;
    Ok(())
}

/// Checks an applied point read from the database: an id below the reserved one, an index
/// and term within the protocol's limits, and a configuration keeping its invariants (or
/// none yet, for a replica still joining).
fn check_point(id: u64, point: &AppliedPoint) -> Result<(), String> {
    use crate::raft::message::{INDEX_MAX, TERM_MAX};
    if id == u64::MAX {
        return Err("a partition under the reserved id u64::MAX".to_string());
    }
    if point.index > INDEX_MAX || point.term > TERM_MAX {
        return Err(format!(
            "partition {id}: applied point ({}, {}) beyond the limits",
            point.index, point.term
        ));
    }
    if point.configuration != Configuration::default() {
        point
            .configuration
            .check()
            .map_err(|problem| format!("partition {id}: {problem}"))?;
    }
    Ok(())
}

/// A partition's state and sessions, as a snapshot carries them.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotImage {
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
    sessions: Vec<(u32, ProposerSession)>,
}

/// A proposer node's latest session on a partition, and its window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposerSession {
    pub session: u64,
    pub window: SessionWindow,
}

impl ProposerSession {
    fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("sessions serialise")
    }

    fn decode(bytes: &[u8]) -> Result<ProposerSession, StateMachineError> {
        let session: ProposerSession = postcard::from_bytes(bytes)
            .map_err(|error| StateMachineError::Corrupt(format!("proposer session: {error}")))?;
        session.window.check().map_err(StateMachineError::Corrupt)?;
        Ok(session)
    }
}

/// Requests applied per session window at most: a proposer answers every request within its
/// timeout, so its mark keeps up; one that never raises it is broken or hostile, and the mark
/// moves up past its oldest ids (a request of that session still in flight below it is then
/// skipped, answered "outcome unknown": the lesser harm than a session table without bound).
pub const SESSION_WINDOW_IDS_MAX: usize = 65_536;

/// What a partition remembers of one proposer session to apply each command at most once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWindow {
    /// Every request of the session below this was answered by its proposer: a command
    /// below it is a copy, or one given up on, and never applies.
    pub first_unanswered: u64,
    /// The request ids at or above `first_unanswered` that applied, ascending.
    pub applied: Vec<u64>,
}

impl SessionWindow {
    /// Whether a command with `request_id` may apply: not below the mark, not applied yet.
    pub fn admits(&self, request_id: u64) -> bool {
        request_id >= self.first_unanswered && self.applied.binary_search(&request_id).is_err()
    }

    /// Records `request_id` as applied and raises the mark to `first_unanswered` (never
    /// lowers it). An id below the mark needs no entry: the mark already refuses it.
    pub fn record(&mut self, request_id: u64, first_unanswered: u64) {
        self.first_unanswered = self.first_unanswered.max(first_unanswered);
        let mark = self.first_unanswered;
        let below_mark = self.applied.partition_point(|applied| *applied < mark);
        self.applied.drain(..below_mark);
        if request_id >= mark {
            if let Err(position) = self.applied.binary_search(&request_id) {
                self.applied.insert(position, request_id);
            }
        }
        if self.applied.len() > SESSION_WINDOW_IDS_MAX {
            let excess = self.applied.len() - SESSION_WINDOW_IDS_MAX;
            self.first_unanswered = self.applied[excess];
            self.applied.drain(..excess);
        }
    }

    /// A window read from disk or a snapshot: ascending, above its mark, within the bound.
    fn check(&self) -> Result<(), String> {
        let ascending = self.applied.windows(2).all(|pair| pair[0] < pair[1]);
        let above_mark = self
            .applied
            .first()
            .is_none_or(|first| *first >= self.first_unanswered);
        if !ascending || !above_mark || self.applied.len() > SESSION_WINDOW_IDS_MAX {
            return Err(format!(
                "session window: {} ids, ascending {ascending}, above its mark {above_mark}",
                self.applied.len()
            ));
        }
        Ok(())
    }
}

//! The state machines of every partition on a node, in one redb database on the `Disk` seam:
//! the key-value pairs with the partition id as a key prefix, and per partition the index,
//! term and configuration it has applied up to (its snapshot point).
//!
//! Invariants:
//! - the applied point is written in the same transaction as the writes it covers, so the
//!   state and the point it claims never disagree;
//! - commits that apply entries are not synced (`Durability::None`); a checkpoint syncs them
//!   all at once, and only a checkpointed applied index may let the Raft log drop entries;
//! - an installed snapshot replaces the partition's pairs and point in one synced commit;
//! - any write failure poisons the store: it refuses further writes until the node restarts;
//! - a command applies at most once: per partition and proposer session a window is kept with
//!   the pairs (and carried by snapshots): the proposer's mark (every request below it was
//!   answered, so a command below it is a stale copy) and the request ids at or above it that
//!   applied. A command below the mark or already in the window is skipped as superseded on
//!   every replica alike. The network may duplicate a forwarded proposal, and the leader
//!   would append each copy; it may also reorder two requests of one session, and the later
//!   one arriving first does not make the earlier one fail.

use crate::partition::command::{BatchOperation, KvCommand, KvOperation};
use crate::partition::PartitionId;
use crate::raft::{Configuration, Entry, EntryKind};
use crate::seams::{DiskError, SharedDisk};
use crate::storage::{prepare_database_file, DiskBackend};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DATABASE_FILE: &str = "partitions.redb";
const PAIRS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("partition_pairs");
const POINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("partition_points");
/// (partition, proposer node, proposer session) to its [`SessionWindow`], encoded.
const SESSIONS: TableDefinition<(u64, u32, u64), &[u8]> =
    TableDefinition::new("partition_session_windows");
const DATABASE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// What a partition's state machine has applied: the Raft snapshot point it stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPoint {
    pub index: u64,
    pub term: u64,
    pub configuration: Configuration,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The wording Borough has always used for a missing key.
    #[error("Key not found in database")]
    KeyNotFound,
    #[error("partition {0} is not on this node")]
    UnknownPartition(PartitionId),
    #[error("the partition store is poisoned by an earlier write failure ({0}); restart the node")]
    Poisoned(String),
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("corrupt partition store: {0}")]
    Corrupt(String),
}

fn engine(error: impl Into<redb::Error>) -> KvError {
    KvError::Engine(error.into().to_string())
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A range read: `start` inclusive, `end` exclusive (either open), at most `limit` pairs, in
/// key order or its reverse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub start: Option<Vec<u8>>,
    pub end: Option<Vec<u8>>,
    pub limit: usize,
    pub reverse: bool,
}

/// What applying one command did, for the proposer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedCommand {
    pub index: u64,
    pub proposer: u32,
    pub proposer_session: u64,
    pub request_id: u64,
    /// The command's `first_unanswered`, as applied (never above its request id).
    pub first_unanswered: u64,
    pub outcome: WriteOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Put,
    /// Whether the key existed.
    Deleted(bool),
    Batch,
    /// The entry did not decode: a format bug; the entry is skipped on every replica alike.
    Undecodable(String),
    /// Skipped on every replica alike: a copy of a command already applied, or a command
    /// its proposer had answered before it arrived (never applied).
    Superseded,
}

#[derive(Debug)]
pub struct KvStore {
    database: Database,
    points: BTreeMap<PartitionId, AppliedPoint>,
    /// The applied index each partition had at the last checkpoint (durable).
    checkpointed: BTreeMap<PartitionId, u64>,
    poisoned: Option<String>,
    /// A canary's planted bug: apply copies and overtaken commands as if new. Never set
    /// outside a canary scenario.
    apply_copies: bool,
}

impl KvStore {
    /// Plants the canary bug `apply_copies` (see the field).
    pub fn plant_apply_copies(&mut self) {
        self.apply_copies = true;
    }

    pub fn open(disk: SharedDisk) -> Result<KvStore, KvError> {
        prepare_database_file(disk.as_ref(), DATABASE_FILE)?;
        let database = Database::builder()
            .set_cache_size(DATABASE_CACHE_BYTES)
            .create_with_backend(DiskBackend::new(disk, DATABASE_FILE))
            .map_err(engine)?;
        let mut transaction = database.begin_write().map_err(engine)?;
        transaction
            .set_durability(Durability::Immediate)
            .map_err(engine)?;
        transaction.open_table(PAIRS).map_err(engine)?;
        transaction.open_table(POINTS).map_err(engine)?;
        transaction.open_table(SESSIONS).map_err(engine)?;
        transaction.commit().map_err(engine)?;
        let mut points = BTreeMap::new();
        {
            let transaction = database.begin_read().map_err(engine)?;
            let table = transaction.open_table(POINTS).map_err(engine)?;
            for row in table.iter().map_err(engine)? {
                let (id, point) = row.map_err(engine)?;
                let point: AppliedPoint = postcard::from_bytes(point.value())
                    .map_err(|error| KvError::Corrupt(format!("applied point: {error}")))?;
                check_point(id.value(), &point).map_err(KvError::Corrupt)?;
                points.insert(PartitionId(id.value()), point);
            }
        }
        let checkpointed = points
            .iter()
            .map(|(id, point)| (*id, point.index))
            .collect();
        Ok(KvStore {
            database,
            points,
            checkpointed,
            poisoned: None,
            apply_copies: false,
        })
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_writable(&self) -> Result<(), KvError> {
        match &self.poisoned {
            Some(reason) => Err(KvError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    fn poison_on_error<T>(&mut self, result: Result<T, KvError>) -> Result<T, KvError> {
        if let Err(error) = &result {
            tracing::error!(%error, "partition store poisoned: refusing writes until restart");
            self.poisoned.get_or_insert(error.to_string());
        }
        result
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
    ) -> Result<(), KvError> {
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

    fn write_point(
        &self,
        id: PartitionId,
        point: &AppliedPoint,
        durability: Durability,
    ) -> Result<(), KvError> {
        let mut transaction = self.database.begin_write().map_err(engine)?;
        transaction.set_durability(durability).map_err(engine)?;
        {
            let mut points = transaction.open_table(POINTS).map_err(engine)?;
            let encoded = postcard::to_stdvec(point).expect("points serialise");
            points.insert(id.0, encoded.as_slice()).map_err(engine)?;
        }
        transaction.commit().map_err(engine)
    }

    /// Applies committed entries of `id` in one (unsynced) transaction, moving its applied
    /// point to the last one; `configuration` is the one in force at that entry.
    pub fn apply(
        &mut self,
        id: PartitionId,
        entries: &[Entry],
        configuration: Configuration,
    ) -> Result<Vec<AppliedCommand>, KvError> {
        self.check_writable()?;
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let Some(point) = self.points.get(&id) else {
            return Err(KvError::UnknownPartition(id));
        };
        assert_eq!(
            entries[0].index,
            point.index + 1,
            "partition {id} applies in order"
        );
        let next_point = AppliedPoint {
            index: last.index,
            term: last.term,
            configuration,
        };
        let result = self.apply_transaction(id, entries, &next_point);
        let applied = self.poison_on_error(result)?;
        self.points.insert(id, next_point);
        Ok(applied)
    }

    fn apply_transaction(
        &self,
        id: PartitionId,
        entries: &[Entry],
        point: &AppliedPoint,
    ) -> Result<Vec<AppliedCommand>, KvError> {
        let mut transaction = self.database.begin_write().map_err(engine)?;
        transaction
            .set_durability(Durability::None)
            .map_err(engine)?;
        let mut applied = Vec::new();
        {
            let mut pairs = transaction.open_table(PAIRS).map_err(engine)?;
            let mut sessions = transaction.open_table(SESSIONS).map_err(engine)?;
            for entry in entries {
                let EntryKind::Command(bytes) = &entry.kind else {
                    continue;
                };
                let command = match KvCommand::decode(bytes) {
                    Ok(command) => command,
                    Err(error) => {
                        tracing::error!(partition = %id, index = entry.index, %error, "undecodable command skipped");
                        applied.push(AppliedCommand {
                            index: entry.index,
                            proposer: 0,
                            proposer_session: 0,
                            request_id: 0,
                            first_unanswered: 0,
                            outcome: WriteOutcome::Undecodable(error.to_string()),
                        });
                        continue;
                    }
                };
                let session = (id.0, command.proposer, command.proposer_session);
                let mut window = match sessions.get(session).map_err(engine)? {
                    Some(bytes) => SessionWindow::decode(bytes.value())?,
                    None => SessionWindow::default(),
                };
                // A mark above its own request would let a forged command fence off others.
                let first_unanswered = command.first_unanswered.min(command.request_id);
                if !window.admits(command.request_id) && !self.apply_copies {
                    tracing::debug!(partition = %id, index = entry.index, proposer = command.proposer, request_id = command.request_id, "command superseded: not applied");
                    applied.push(AppliedCommand {
                        index: entry.index,
                        proposer: command.proposer,
                        proposer_session: command.proposer_session,
                        request_id: command.request_id,
                        first_unanswered,
                        outcome: WriteOutcome::Superseded,
                    });
                    continue;
                }
                window.record(command.request_id, first_unanswered);
                sessions
                    .insert(session, window.encode().as_slice())
                    .map_err(engine)?;
                let outcome = match &command.operation {
                    KvOperation::Put { key, value } => {
                        pairs
                            .insert((id.0, key.as_slice()), value.as_slice())
                            .map_err(engine)?;
                        WriteOutcome::Put
                    }
                    KvOperation::Delete { key } => {
                        let existed = pairs
                            .remove((id.0, key.as_slice()))
                            .map_err(engine)?
                            .is_some();
                        WriteOutcome::Deleted(existed)
                    }
                    KvOperation::Batch(operations) => {
                        for operation in operations {
                            match operation {
                                BatchOperation::Put { key, value } => {
                                    pairs
                                        .insert((id.0, key.as_slice()), value.as_slice())
                                        .map_err(engine)?;
                                }
                                BatchOperation::Delete { key } => {
                                    pairs.remove((id.0, key.as_slice())).map_err(engine)?;
                                }
                            }
                        }
                        WriteOutcome::Batch
                    }
                };
                applied.push(AppliedCommand {
                    index: entry.index,
                    proposer: command.proposer,
                    proposer_session: command.proposer_session,
                    request_id: command.request_id,
                    first_unanswered,
                    outcome,
                });
            }
            let mut points = transaction.open_table(POINTS).map_err(engine)?;
            let encoded = postcard::to_stdvec(point).expect("points serialise");
            points.insert(id.0, encoded.as_slice()).map_err(engine)?;
        }
        transaction.commit().map_err(engine)?;
        Ok(applied)
    }

    /// Makes every applied entry durable (one synced commit) and returns the partitions whose
    /// checkpointed index moved.
    pub fn checkpoint(&mut self) -> Result<(), KvError> {
        self.check_writable()?;
        let result = (|| {
            let mut transaction = self.database.begin_write().map_err(engine)?;
            transaction
                .set_durability(Durability::Immediate)
                .map_err(engine)?;
            transaction.commit().map_err(engine)
        })();
        self.poison_on_error(result)?;
        self.checkpointed = self
            .points
            .iter()
            .map(|(id, point)| (*id, point.index))
            .collect();
        Ok(())
    }

    pub fn get(&self, id: PartitionId, key: &[u8]) -> Result<Vec<u8>, KvError> {
        if !self.points.contains_key(&id) {
            return Err(KvError::UnknownPartition(id));
        }
        let transaction = self.database.begin_read().map_err(engine)?;
        let pairs = transaction.open_table(PAIRS).map_err(engine)?;
        match pairs.get((id.0, key)).map_err(engine)? {
            Some(value) => Ok(value.value().to_vec()),
            None => Err(KvError::KeyNotFound),
        }
    }

    /// Pairs of `id` in `query`'s range, in key order (or reversed).
    pub fn range(&self, id: PartitionId, query: &RangeQuery) -> Result<Vec<Pair>, KvError> {
        if !self.points.contains_key(&id) {
            return Err(KvError::UnknownPartition(id));
        }
        let transaction = self.database.begin_read().map_err(engine)?;
        let pairs = transaction.open_table(PAIRS).map_err(engine)?;
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let start = query.start.clone().unwrap_or_default();
        // An open end stops at the next partition's prefix.
        let empty: &[u8] = &[];
        let rows = match &query.end {
            Some(end) => pairs.range((id.0, start.as_slice())..(id.0, end.as_slice())),
            None => pairs.range((id.0, start.as_slice())..(next_partition(id), empty)),
        }
        .map_err(engine)?;
        let mut found = Vec::new();
        let rows: Box<dyn Iterator<Item = _>> = if query.reverse {
            Box::new(rows.rev())
        } else {
            Box::new(rows)
        };
        for row in rows {
            let (key, value) = row.map_err(engine)?;
            found.push((key.value().1.to_vec(), value.value().to_vec()));
            if found.len() >= query.limit {
                break;
            }
        }
        Ok(found)
    }

    /// The partition's whole state at its applied point, for a follower that needs a snapshot.
    pub fn snapshot(&self, id: PartitionId) -> Result<(AppliedPoint, Vec<u8>), KvError> {
        let point = self
            .points
            .get(&id)
            .cloned()
            .ok_or(KvError::UnknownPartition(id))?;
        let pairs = self.range(
            id,
            &RangeQuery {
                limit: usize::MAX,
                ..RangeQuery::default()
            },
        )?;
        let sessions = self.sessions(id)?;
        let data =
            postcard::to_stdvec(&SnapshotImage { pairs, sessions }).expect("images serialise");
        Ok((point, data))
    }

    /// The partition's proposer sessions and the window of each.
    fn sessions(&self, id: PartitionId) -> Result<Vec<SessionEntry>, KvError> {
        let transaction = self.database.begin_read().map_err(engine)?;
        let table = transaction.open_table(SESSIONS).map_err(engine)?;
        let mut sessions = Vec::new();
        for row in table
            .range((id.0, 0, 0)..=(id.0, u32::MAX, u64::MAX))
            .map_err(engine)?
        {
            let (key, window) = row.map_err(engine)?;
            let (_, proposer, session) = key.value();
            sessions.push(((proposer, session), SessionWindow::decode(window.value())?));
        }
        Ok(sessions)
    }

    /// Checks a snapshot image received from a peer before Raft installs it: it decodes, and
    /// its keys and values are within a command's limits.
    pub fn check_snapshot_image(data: &[u8]) -> Result<(), String> {
        let image: SnapshotImage =
            postcard::from_bytes(data).map_err(|error| format!("snapshot image: {error}"))?;
        for (_, window) in &image.sessions {
            window
                .check()
                .map_err(|problem| format!("snapshot image: {problem}"))?;
        }
        for (key, value) in &image.pairs {
            if key.is_empty()
                || key.len() > crate::partition::command::KEY_BYTES_MAX
                || value.len() > crate::partition::command::VALUE_BYTES_MAX
            {
                return Err(format!(
                    "snapshot image: a pair of {} key and {} value bytes",
                    key.len(),
                    value.len()
                ));
            }
        }
        Ok(())
    }

    /// Replaces the partition's state with a snapshot image, durably.
    pub fn install_snapshot(
        &mut self,
        id: PartitionId,
        point: AppliedPoint,
        data: &[u8],
    ) -> Result<(), KvError> {
        self.check_writable()?;
        let image: SnapshotImage = postcard::from_bytes(data)
            .map_err(|error| KvError::Corrupt(format!("snapshot image: {error}")))?;
        let result = (|| {
            let mut transaction = self.database.begin_write().map_err(engine)?;
            transaction
                .set_durability(Durability::Immediate)
                .map_err(engine)?;
            {
                let mut pairs = transaction.open_table(PAIRS).map_err(engine)?;
                let empty: &[u8] = &[];
                pairs
                    .retain_in((id.0, empty)..(next_partition(id), empty), |_, _| false)
                    .map_err(engine)?;
                for (key, value) in &image.pairs {
                    pairs
                        .insert((id.0, key.as_slice()), value.as_slice())
                        .map_err(engine)?;
                }
                let mut sessions = transaction.open_table(SESSIONS).map_err(engine)?;
                sessions
                    .retain_in((id.0, 0, 0)..=(id.0, u32::MAX, u64::MAX), |_, _| false)
                    .map_err(engine)?;
                for ((proposer, session), window) in &image.sessions {
                    sessions
                        .insert((id.0, *proposer, *session), window.encode().as_slice())
                        .map_err(engine)?;
                }
                let mut points = transaction.open_table(POINTS).map_err(engine)?;
                let encoded = postcard::to_stdvec(&point).expect("points serialise");
                points.insert(id.0, encoded.as_slice()).map_err(engine)?;
            }
            transaction.commit().map_err(engine)
        })();
        self.poison_on_error(result)?;
        self.checkpointed.insert(id, point.index);
        self.points.insert(id, point);
        Ok(())
    }
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
    if point.configuration != crate::raft::Configuration::default() {
        point
            .configuration
            .check()
            .map_err(|problem| format!("partition {id}: {problem}"))?;
    }
    Ok(())
}

/// The first key prefix after `id`'s: partition ids stay below `u64::MAX` for this.
fn next_partition(id: PartitionId) -> u64 {
    id.0.checked_add(1)
        .expect("partition ids are below u64::MAX")
}

/// A partition's pairs, as a snapshot carries them.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotImage {
    pairs: Vec<Pair>,
    sessions: Vec<SessionEntry>,
}

/// (proposer, session) and its window.
type SessionEntry = ((u32, u64), SessionWindow);

/// Requests applied per session window at most: a proposer answers every request within its
/// timeout, so its mark keeps up; one that never raises it is broken or hostile, and the mark
/// moves up past its oldest ids (a request of that session still in flight below it is then
/// skipped, answered "outcome unknown": the lesser harm than a session table without bound).
const SESSION_WINDOW_IDS_MAX: usize = 65_536;

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

    fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("session windows serialise")
    }

    fn decode(bytes: &[u8]) -> Result<SessionWindow, KvError> {
        let window: SessionWindow = postcard::from_bytes(bytes)
            .map_err(|error| KvError::Corrupt(format!("session window: {error}")))?;
        window.check().map_err(KvError::Corrupt)?;
        Ok(window)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::storage::test_disk::TestDisk;

    const P: PartitionId = PartitionId(7);

    fn put(index: u64, key: &str, value: &str) -> Entry {
        command(
            index,
            KvOperation::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            },
        )
    }

    fn command(index: u64, operation: KvOperation) -> Entry {
        session_command(index, index, index, operation)
    }

    /// `operation` as request `request_id` of session 1, carrying `first_unanswered`.
    fn session_command(
        index: u64,
        request_id: u64,
        first_unanswered: u64,
        operation: KvOperation,
    ) -> Entry {
        Entry {
            term: 1,
            index,
            kind: EntryKind::Command(
                KvCommand {
                    proposer: 1,
                    proposer_session: 1,
                    request_id,
                    first_unanswered,
                    operation,
                }
                .encode(),
            ),
        }
    }

    fn store_with_partition(disk: &std::sync::Arc<TestDisk>) -> KvStore {
        let mut store = KvStore::open(disk.clone()).unwrap();
        store
            .create_partition(
                P,
                AppliedPoint {
                    index: 1,
                    term: 0,
                    configuration: Configuration::with_voters([NodeId(1)]),
                },
            )
            .unwrap();
        store
    }

    #[test]
    fn writes_apply_and_a_missing_key_has_the_documented_error() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        let applied = store
            .apply(
                P,
                &[
                    put(2, "a", "1"),
                    put(3, "b", "2"),
                    command(4, KvOperation::Delete { key: b"a".to_vec() }),
                    command(
                        5,
                        KvOperation::Delete {
                            key: b"zz".to_vec(),
                        },
                    ),
                ],
                configuration,
            )
            .unwrap();
        let outcomes: Vec<WriteOutcome> =
            applied.into_iter().map(|applied| applied.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                WriteOutcome::Put,
                WriteOutcome::Put,
                WriteOutcome::Deleted(true),
                WriteOutcome::Deleted(false)
            ]
        );
        assert_eq!(store.get(P, b"b").unwrap(), b"2");
        let missing = store.get(P, b"a").unwrap_err();
        assert_eq!(missing.to_string(), "Key not found in database");
        assert_eq!(store.point(P).unwrap().index, 5);
        assert_eq!(
            store.get(PartitionId(8), b"a"),
            Err(KvError::UnknownPartition(PartitionId(8)))
        );
    }

    #[test]
    fn ranges_respect_bounds_limit_direction_and_partitions() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        store
            .create_partition(PartitionId(8), store.point(P).unwrap().clone())
            .unwrap();
        let configuration = store.point(P).unwrap().configuration.clone();
        let entries: Vec<Entry> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(offset, key)| put(offset as u64 + 2, key, key))
            .collect();
        store.apply(P, &entries, configuration.clone()).unwrap();
        store
            .apply(PartitionId(8), &[put(2, "a", "other")], configuration)
            .unwrap();
        let keys = |query: RangeQuery| -> Vec<String> {
            store
                .range(P, &query)
                .unwrap()
                .into_iter()
                .map(|(key, _)| String::from_utf8(key).unwrap())
                .collect()
        };
        let all = RangeQuery {
            limit: 100,
            ..RangeQuery::default()
        };
        assert_eq!(keys(all.clone()), ["a", "b", "c", "d"]);
        assert_eq!(
            keys(RangeQuery {
                start: Some(b"b".to_vec()),
                end: Some(b"d".to_vec()),
                ..all.clone()
            }),
            ["b", "c"]
        );
        assert_eq!(
            keys(RangeQuery {
                reverse: true,
                limit: 3,
                ..all.clone()
            }),
            ["d", "c", "b"]
        );
        assert_eq!(keys(RangeQuery { limit: 0, ..all }), Vec::<String>::new());
    }

    #[test]
    fn a_batch_applies_atomically_with_its_point() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        store
            .apply(
                P,
                &[
                    put(2, "gone", "x"),
                    command(
                        3,
                        KvOperation::Batch(vec![
                            BatchOperation::Put {
                                key: b"a".to_vec(),
                                value: b"1".to_vec(),
                            },
                            BatchOperation::Delete {
                                key: b"gone".to_vec(),
                            },
                        ]),
                    ),
                ],
                configuration,
            )
            .unwrap();
        assert_eq!(store.get(P, b"a").unwrap(), b"1");
        assert_eq!(store.get(P, b"gone"), Err(KvError::KeyNotFound));
    }

    #[test]
    fn only_checkpointed_writes_survive_a_crash_and_the_point_matches_them() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        store
            .apply(P, &[put(2, "a", "1")], configuration.clone())
            .unwrap();
        store.checkpoint().unwrap();
        assert_eq!(store.checkpointed_index(P), 2);
        store.apply(P, &[put(3, "b", "2")], configuration).unwrap();
        assert_eq!(store.checkpointed_index(P), 2);
        let crashed = disk.crash();
        drop(store);
        let store = KvStore::open(crashed).unwrap();
        assert_eq!(store.point(P).unwrap().index, 2);
        assert_eq!(store.get(P, b"a").unwrap(), b"1");
        assert_eq!(store.get(P, b"b"), Err(KvError::KeyNotFound));
    }

    /// The command of `entry` again, at `index`: what the leader appends when the network
    /// duplicates a forwarded proposal.
    fn copy_at(entry: &Entry, index: u64) -> Entry {
        Entry {
            index,
            ..entry.clone()
        }
    }

    #[test]
    fn a_command_applies_at_most_once_even_across_a_snapshot() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        let first = put(2, "a", "1");
        let delete = command(3, KvOperation::Delete { key: b"a".to_vec() });
        let applied = store
            .apply(
                P,
                &[first.clone(), delete.clone(), copy_at(&first, 4)],
                configuration.clone(),
            )
            .unwrap();
        let outcomes: Vec<&WriteOutcome> = applied.iter().map(|command| &command.outcome).collect();
        assert_eq!(
            outcomes,
            [
                &WriteOutcome::Put,
                &WriteOutcome::Deleted(true),
                &WriteOutcome::Superseded
            ]
        );
        assert_eq!(
            store.get(P, b"a"),
            Err(KvError::KeyNotFound),
            "no second put"
        );
        // A request below a mark that applied (request 3 marked every request below it
        // answered) is a copy or one its proposer gave up on: never applied.
        let overtaken = put(2, "b", "late");
        let applied = store
            .apply(P, &[copy_at(&overtaken, 5)], configuration.clone())
            .unwrap();
        assert_eq!(applied[0].outcome, WriteOutcome::Superseded);
        // A replica that catches up from a snapshot knows what was applied.
        let (point, image) = store.snapshot(P).unwrap();
        let target_disk = TestDisk::new();
        let mut target = store_with_partition(&target_disk);
        target.install_snapshot(P, point, &image).unwrap();
        let applied = target
            .apply(P, &[copy_at(&delete, 6)], configuration)
            .unwrap();
        assert_eq!(applied[0].outcome, WriteOutcome::Superseded);
    }

    /// A put of `key` as request `request_id` of session 1, carrying `first_unanswered`.
    fn request(index: u64, request_id: u64, first_unanswered: u64, key: &str) -> Entry {
        let put = KvOperation::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        };
        session_command(index, request_id, first_unanswered, put)
    }

    /// Two requests of one session may arrive in either order (forwarded separately, or
    /// one retried at a new leader): the later one arriving first must not fail the other.
    /// Copies are still skipped, and so is anything below a mark that applied.
    #[test]
    fn reordered_requests_of_a_session_both_apply_and_copies_do_not() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        let entries = [
            // Requests 10 and 11 in flight together (both marked 10), 11 arriving first.
            request(2, 11, 10, "b"),
            request(3, 10, 10, "a"),
            // A copy of 10.
            request(4, 10, 10, "a"),
            // Request 13 proposed once 10 and 11 were answered and 12 given up on.
            request(5, 13, 13, "d"),
            // 12 arrives late: its proposer already answered it "outcome unknown".
            request(6, 12, 12, "c"),
            // A forged mark above its own request fences off nothing above that request.
            request(7, 14, u64::MAX, "e"),
            request(8, 15, 15, "f"),
        ];
        let applied = store.apply(P, &entries, configuration).unwrap();
        let outcomes: Vec<(u64, &WriteOutcome)> = applied
            .iter()
            .map(|command| (command.request_id, &command.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                (11, &WriteOutcome::Put),
                (10, &WriteOutcome::Put),
                (10, &WriteOutcome::Superseded),
                (13, &WriteOutcome::Put),
                (12, &WriteOutcome::Superseded),
                (14, &WriteOutcome::Put),
                (15, &WriteOutcome::Put),
            ]
        );
        assert_eq!(applied[5].first_unanswered, 14, "a forged mark is clamped");
        assert_eq!(store.get(P, b"c"), Err(KvError::KeyNotFound));
    }

    #[test]
    fn a_session_window_stays_bounded_and_refuses_what_it_dropped() {
        let mut window = SessionWindow::default();
        for request_id in 0..(SESSION_WINDOW_IDS_MAX as u64 + 10) {
            assert!(window.admits(request_id));
            // A proposer that never raises its mark.
            window.record(request_id, 0);
        }
        assert_eq!(window.applied.len(), SESSION_WINDOW_IDS_MAX);
        assert_eq!(window.first_unanswered, 10);
        assert!(!window.admits(9), "dropped ids fall below the mark");
        assert!(!window.admits(10), "kept ids are still known");
        assert!(window.check().is_ok());
        // Only the planted `apply_copies` bug records an id the window refused.
        window.record(3, 0);
        assert!(window.check().is_ok(), "an id below the mark is not kept");
        let unsorted = SessionWindow {
            first_unanswered: 0,
            applied: vec![3, 2],
        };
        assert!(unsorted.check().is_err());
        let below_mark = SessionWindow {
            first_unanswered: 5,
            applied: vec![4],
        };
        assert!(below_mark.check().is_err());
    }

    #[test]
    fn a_snapshot_replaces_the_partition_and_nothing_else() {
        let source_disk = TestDisk::new();
        let mut source = store_with_partition(&source_disk);
        let configuration = source.point(P).unwrap().configuration.clone();
        source
            .apply(
                P,
                &[put(2, "a", "1"), put(3, "b", "2")],
                configuration.clone(),
            )
            .unwrap();
        let (point, image) = source.snapshot(P).unwrap();
        assert_eq!(point.index, 3);

        let disk = TestDisk::new();
        let mut target = store_with_partition(&disk);
        target
            .create_partition(PartitionId(8), target.point(P).unwrap().clone())
            .unwrap();
        target
            .apply(P, &[put(2, "stale", "x")], configuration.clone())
            .unwrap();
        target
            .apply(PartitionId(8), &[put(2, "keep", "y")], configuration)
            .unwrap();
        target.install_snapshot(P, point.clone(), &image).unwrap();
        assert_eq!(target.get(P, b"stale"), Err(KvError::KeyNotFound));
        assert_eq!(target.get(P, b"b").unwrap(), b"2");
        assert_eq!(target.get(PartitionId(8), b"keep").unwrap(), b"y");
        assert_eq!(target.point(P), Some(&point));
        // Installed durably.
        let crashed = disk.crash();
        drop(target);
        let target = KvStore::open(crashed).unwrap();
        assert_eq!(target.get(P, b"a").unwrap(), b"1");
    }

    #[test]
    fn a_failed_sync_poisons_the_store() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        store
            .apply(P, &[put(2, "a", "1")], configuration.clone())
            .unwrap();
        disk.fail_syncs(true);
        assert!(store.checkpoint().is_err());
        assert!(store.is_poisoned());
        disk.fail_syncs(false);
        assert!(matches!(
            store.apply(P, &[put(3, "b", "2")], configuration),
            Err(KvError::Poisoned(_))
        ));
    }
}

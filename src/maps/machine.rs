//! The map state machine: each partition holds one map of JSON values by text key, numbers
//! every committed change with the map's next revision, and keeps the latest changes as its
//! history, so a feed that fell behind resumes from a revision instead of starting over.
//!
//! Its state lives in three tables of the node's partition database, each keyed by the
//! partition id first: the entries, the history (by revision) and a meta row per partition
//! (revision, oldest change kept, bytes).
//!
//! Invariants:
//! - the revision grows by one for each committed change and never otherwise; a delete of a
//!   missing key and a refused set change nothing;
//! - the history holds exactly the changes `first_retained..=revision`, contiguous, at most
//!   [`HISTORY_CHANGES_MAX`] of them and about [`HISTORY_BYTES_MAX`] bytes (always the last
//!   change), so folding it onto the map at `first_retained - 1` gives the map;
//! - a map's entries count at most [`MAP_BYTES_MAX`] bytes (a key's and value's bytes plus
//!   [`ENTRY_OVERHEAD_BYTES`] each), so a whole map always fits one routed answer;
//! - an image carries entries, history and meta, and is checked against all three.

use crate::maps::operation::{
    ChangeKind, FeedRead, MapAnswer, MapChange, MapEntries, MapOperation, MapOutcome, MapQuery,
};
use crate::maps::value::{MapKey, MapValue};
use crate::partition::state_machine::{engine_error, StateMachine, StateMachineError};
use crate::partition::PartitionId;
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

const ENTRIES: TableDefinition<(u64, &str), &str> = TableDefinition::new("map_entries");
const CHANGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("map_changes");
const META: TableDefinition<u64, &[u8]> = TableDefinition::new("map_meta");

/// The most bytes a map's entries count for.
pub const MAP_BYTES_MAX: u64 = 2 * 1024 * 1024;
/// What each entry and each change counts for beyond its key's and value's bytes.
pub const ENTRY_OVERHEAD_BYTES: u64 = 16;
/// The most changes a map's history keeps.
pub const HISTORY_CHANGES_MAX: u64 = 1000;
/// The bytes a map's history keeps, about (the last change is always kept).
pub const HISTORY_BYTES_MAX: u64 = 2 * 1024 * 1024;
/// The most changes one feed read answers.
pub const FEED_READ_CHANGES_MAX: usize = 1000;
/// A feed read stops once its changes pass this many bytes (it holds at least one).
pub const FEED_READ_BYTES_MAX: u64 = 1024 * 1024;

/// A map's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMeta {
    /// The last change's revision (0 for a map never changed).
    pub revision: u64,
    /// The oldest change the history keeps (`revision + 1` when it keeps none).
    pub first_retained: u64,
    pub entries_bytes: u64,
    pub history_bytes: u64,
}

impl Default for MapMeta {
    fn default() -> Self {
        Self {
            revision: 0,
            first_retained: 1,
            entries_bytes: 0,
            history_bytes: 0,
        }
    }
}

impl MapMeta {
    fn history_changes(&self) -> u64 {
        self.revision + 1 - self.first_retained
    }

    fn check(&self) -> Result<(), String> {
        if self.first_retained == 0 || self.first_retained > self.revision.saturating_add(1) {
            return Err(format!(
                "map meta: oldest change {} outside revisions 1..={}",
                self.first_retained,
                self.revision.saturating_add(1)
            ));
        }
        if self.entries_bytes > MAP_BYTES_MAX {
            return Err(format!("map meta: {} entry bytes", self.entries_bytes));
        }
        Ok(())
    }
}

fn entry_bytes(key: &MapKey, value: &MapValue) -> u64 {
    (key.as_str().len() + value.len()) as u64 + ENTRY_OVERHEAD_BYTES
}

fn change_bytes(change: &MapChange) -> u64 {
    let value = match &change.kind {
        ChangeKind::Set { value } => value,
        ChangeKind::Delete { old_value } => old_value,
    };
    entry_bytes(&change.key, value)
}

/// One partition's whole map, history and meta: what a replica installs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapImage {
    pub meta: MapMeta,
    pub entries: Vec<(MapKey, MapValue)>,
    pub history: Vec<MapChange>,
}

impl MapImage {
    /// Checks the image is whole: entries in key order within the size limit, the history
    /// exactly the meta's revisions, the bytes the meta's.
    pub fn check(&self) -> Result<(), String> {
        self.meta.check()?;
        let mut entries_bytes = 0u64;
        for pair in self.entries.windows(2) {
            if pair[0].0 >= pair[1].0 {
                return Err("map image: entries out of key order".into());
            }
        }
        for (key, value) in &self.entries {
            entries_bytes += entry_bytes(key, value);
        }
        if entries_bytes != self.meta.entries_bytes {
            return Err(format!(
                "map image: entries of {entries_bytes} bytes, meta says {}",
                self.meta.entries_bytes
            ));
        }
        if self.history.len() as u64 != self.meta.history_changes() {
            return Err(format!(
                "map image: {} changes kept, meta says {}",
                self.history.len(),
                self.meta.history_changes()
            ));
        }
        let mut history_bytes = 0u64;
        for (offset, change) in self.history.iter().enumerate() {
            if change.revision != self.meta.first_retained + offset as u64 {
                return Err(format!(
                    "map image: change {} where {} belongs",
                    change.revision,
                    self.meta.first_retained + offset as u64
                ));
            }
            history_bytes += change_bytes(change);
        }
        if history_bytes != self.meta.history_bytes {
            return Err(format!(
                "map image: history of {history_bytes} bytes, meta says {}",
                self.meta.history_bytes
            ));
        }
        Ok(())
    }
}

/// The map state machine. In memory it keeps only which partitions' maps changed since the
/// feeds last asked (`take_touched`): nothing an outcome depends on.
#[derive(Debug, Default)]
pub struct MapStateMachine {
    touched: BTreeSet<PartitionId>,
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StateMachineError {
    StateMachineError::Corrupt(format!("{what}: {error}"))
}

fn read_meta(
    table: &impl ReadableTable<u64, &'static [u8]>,
    partition: PartitionId,
) -> Result<MapMeta, StateMachineError> {
    match table.get(partition.0).map_err(engine_error)? {
        None => Ok(MapMeta::default()),
        Some(bytes) => {
            let meta: MapMeta =
                postcard::from_bytes(bytes.value()).map_err(|error| corrupt("map meta", error))?;
            meta.check()
                .map_err(|problem| corrupt("map meta", problem))?;
            Ok(meta)
        }
    }
}

fn decode_change(bytes: &[u8]) -> Result<MapChange, StateMachineError> {
    postcard::from_bytes(bytes).map_err(|error| corrupt("map change", error))
}

fn read_value(
    table: &impl ReadableTable<(u64, &'static str), &'static str>,
    partition: PartitionId,
    key: &MapKey,
) -> Result<Option<MapValue>, StateMachineError> {
    match table
        .get((partition.0, key.as_str()))
        .map_err(engine_error)?
    {
        None => Ok(None),
        Some(text) => MapValue::from_json(text.value().as_bytes())
            .map(Some)
            .map_err(|error| corrupt("map value", error)),
    }
}

fn read_entries(
    table: &impl ReadableTable<(u64, &'static str), &'static str>,
    partition: PartitionId,
) -> Result<Vec<(MapKey, MapValue)>, StateMachineError> {
    let mut entries = Vec::new();
    for row in table
        .range((partition.0, "")..(next_partition(partition), ""))
        .map_err(engine_error)?
    {
        let (key, value) = row.map_err(engine_error)?;
        let key = MapKey::new(key.value().1).map_err(|error| corrupt("map key", error))?;
        let value = MapValue::from_json(value.value().as_bytes())
            .map_err(|error| corrupt("map value", error))?;
        entries.push((key, value));
    }
    Ok(entries)
}

fn read_history(
    table: &impl ReadableTable<(u64, u64), &'static [u8]>,
    partition: PartitionId,
    from: u64,
    changes_max: usize,
    bytes_max: u64,
) -> Result<Vec<MapChange>, StateMachineError> {
    let mut changes = Vec::new();
    let mut bytes = 0u64;
    for row in table
        .range((partition.0, from)..=(partition.0, u64::MAX))
        .map_err(engine_error)?
    {
        let (_, change) = row.map_err(engine_error)?;
        let change = decode_change(change.value())?;
        bytes += change_bytes(&change);
        changes.push(change);
        if changes.len() >= changes_max || bytes >= bytes_max {
            break;
        }
    }
    Ok(changes)
}

/// The first key prefix after `partition`'s (ids stay below `u64::MAX`).
fn next_partition(partition: PartitionId) -> u64 {
    partition
        .0
        .checked_add(1)
        .expect("partition ids are below u64::MAX")
}

fn clear(transaction: &WriteTransaction, partition: PartitionId) -> Result<(), StateMachineError> {
    let mut entries = transaction.open_table(ENTRIES).map_err(engine_error)?;
    entries
        .retain_in(
            (partition.0, "")..(next_partition(partition), ""),
            |_, _| false,
        )
        .map_err(engine_error)?;
    let mut changes = transaction.open_table(CHANGES).map_err(engine_error)?;
    changes
        .retain_in((partition.0, 0)..=(partition.0, u64::MAX), |_, _| false)
        .map_err(engine_error)?;
    let mut meta = transaction.open_table(META).map_err(engine_error)?;
    meta.remove(partition.0).map_err(engine_error)?;
    Ok(())
}

impl MapStateMachine {
    /// Whether a database holds the map tables (a kind that runs maps only in some
    /// deployments opens them only where they exist, so its other databases stay as they
    /// were).
    pub fn tables_exist(transaction: &WriteTransaction) -> Result<bool, StateMachineError> {
        Ok(transaction
            .list_tables()
            .map_err(engine_error)?
            .any(|table| table.name() == META.name()))
    }

    /// The partitions whose maps changed (applied, installed or removed) since the last call.
    pub fn take_touched(&mut self) -> BTreeSet<PartitionId> {
        std::mem::take(&mut self.touched)
    }

    /// Records `change` in the history and compacts it to its limits.
    fn write_change(
        transaction: &WriteTransaction,
        partition: PartitionId,
        meta: &mut MapMeta,
        change: &MapChange,
    ) -> Result<(), StateMachineError> {
        let mut changes = transaction.open_table(CHANGES).map_err(engine_error)?;
        let encoded = postcard::to_stdvec(change).expect("changes serialise");
        changes
            .insert((partition.0, change.revision), encoded.as_slice())
            .map_err(engine_error)?;
        meta.history_bytes += change_bytes(change);
        // Compact from the oldest end, keeping at least the change just made.
        while meta.history_changes() > 1
            && (meta.history_changes() > HISTORY_CHANGES_MAX
                || meta.history_bytes > HISTORY_BYTES_MAX)
        {
            let oldest = changes
                .remove((partition.0, meta.first_retained))
                .map_err(engine_error)?
                .ok_or_else(|| {
                    corrupt(
                        "map history",
                        format!("change {} missing from {partition}", meta.first_retained),
                    )
                })?;
            let oldest = decode_change(oldest.value())?;
            meta.history_bytes = meta.history_bytes.saturating_sub(change_bytes(&oldest));
            meta.first_retained += 1;
        }
        Ok(())
    }
}

impl StateMachine for MapStateMachine {
    type Operation = MapOperation;
    type Outcome = MapOutcome;
    type Query = MapQuery;
    type Answer = MapAnswer;

    fn open_tables(&mut self, transaction: &WriteTransaction) -> Result<(), StateMachineError> {
        transaction.open_table(ENTRIES).map_err(engine_error)?;
        transaction.open_table(CHANGES).map_err(engine_error)?;
        transaction.open_table(META).map_err(engine_error)?;
        Ok(())
    }

    fn validate(&self, _operation: &MapOperation) -> Result<(), String> {
        // Keys and values are checked as they are made and decoded.
        Ok(())
    }

    fn apply(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        _index: u64,
        operation: &MapOperation,
    ) -> Result<MapOutcome, StateMachineError> {
        let mut meta_table = transaction.open_table(META).map_err(engine_error)?;
        let mut meta = read_meta(&meta_table, partition)?;
        let mut entries = transaction.open_table(ENTRIES).map_err(engine_error)?;
        let (key, kind) = match operation {
            MapOperation::Set { key, value } => {
                let old = read_value(&entries, partition, key)?;
                let old_bytes = old.as_ref().map_or(0, |old| entry_bytes(key, old));
                let entries_bytes = meta.entries_bytes - old_bytes.min(meta.entries_bytes)
                    + entry_bytes(key, value);
                if entries_bytes > MAP_BYTES_MAX {
                    return Ok(MapOutcome::Full {
                        entries_bytes: meta.entries_bytes,
                    });
                }
                entries
                    .insert((partition.0, key.as_str()), value.as_json())
                    .map_err(engine_error)?;
                meta.entries_bytes = entries_bytes;
                (
                    key,
                    ChangeKind::Set {
                        value: value.clone(),
                    },
                )
            }
            MapOperation::Delete { key } => {
                let Some(old_value) = read_value(&entries, partition, key)? else {
                    return Ok(MapOutcome::Missing {
                        revision: meta.revision,
                    });
                };
                entries
                    .remove((partition.0, key.as_str()))
                    .map_err(engine_error)?;
                meta.entries_bytes = meta
                    .entries_bytes
                    .saturating_sub(entry_bytes(key, &old_value));
                (key, ChangeKind::Delete { old_value })
            }
        };
        meta.revision += 1;
        let change = MapChange {
            revision: meta.revision,
            key: key.clone(),
            kind,
        };
        Self::write_change(transaction, partition, &mut meta, &change)?;
        let encoded = postcard::to_stdvec(&meta).expect("meta serialises");
        meta_table
            .insert(partition.0, encoded.as_slice())
            .map_err(engine_error)?;
        self.touched.insert(partition);
        Ok(MapOutcome::Changed {
            revision: meta.revision,
        })
    }

    fn read(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
        query: &MapQuery,
    ) -> Result<MapAnswer, StateMachineError> {
        let meta = read_meta(
            &transaction.open_table(META).map_err(engine_error)?,
            partition,
        )?;
        let entries = transaction.open_table(ENTRIES).map_err(engine_error)?;
        let snapshot = |entries| -> Result<MapEntries, StateMachineError> {
            Ok(MapEntries {
                revision: meta.revision,
                entries: read_entries(entries, partition)?,
            })
        };
        Ok(match query {
            MapQuery::Get { key } => MapAnswer::Value {
                value: read_value(&entries, partition, key)?,
                revision: meta.revision,
            },
            MapQuery::Entries => MapAnswer::Entries(snapshot(&entries)?),
            MapQuery::Feed { after: None } => {
                MapAnswer::Feed(FeedRead::Snapshot(snapshot(&entries)?))
            }
            MapQuery::Feed { after: Some(after) } => {
                if *after > meta.revision {
                    MapAnswer::Feed(FeedRead::Behind {
                        revision: meta.revision,
                    })
                } else if *after + 1 < meta.first_retained {
                    MapAnswer::Feed(FeedRead::Snapshot(snapshot(&entries)?))
                } else {
                    let history = transaction.open_table(CHANGES).map_err(engine_error)?;
                    MapAnswer::Feed(FeedRead::Changes {
                        changes: read_history(
                            &history,
                            partition,
                            after + 1,
                            FEED_READ_CHANGES_MAX,
                            FEED_READ_BYTES_MAX,
                        )?,
                        revision: meta.revision,
                    })
                }
            }
        })
    }

    fn take_snapshot(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<Vec<u8>, StateMachineError> {
        let meta = read_meta(
            &transaction.open_table(META).map_err(engine_error)?,
            partition,
        )?;
        let entries = read_entries(
            &transaction.open_table(ENTRIES).map_err(engine_error)?,
            partition,
        )?;
        let history = read_history(
            &transaction.open_table(CHANGES).map_err(engine_error)?,
            partition,
            0,
            usize::MAX,
            u64::MAX,
        )?;
        let image = MapImage {
            meta,
            entries,
            history,
        };
        Ok(postcard::to_stdvec(&image).expect("images serialise"))
    }

    fn check_image(image: &[u8]) -> Result<(), String> {
        let image: MapImage =
            postcard::from_bytes(image).map_err(|error| format!("map image: {error}"))?;
        image.check()
    }

    fn install_snapshot(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        image: &[u8],
    ) -> Result<(), StateMachineError> {
        let image: MapImage =
            postcard::from_bytes(image).map_err(|error| corrupt("map image", error))?;
        image
            .check()
            .map_err(|problem| corrupt("map image", problem))?;
        clear(transaction, partition)?;
        self.touched.insert(partition);
        if image == MapImage::default() {
            return Ok(());
        }
        let mut entries = transaction.open_table(ENTRIES).map_err(engine_error)?;
        for (key, value) in &image.entries {
            entries
                .insert((partition.0, key.as_str()), value.as_json())
                .map_err(engine_error)?;
        }
        let mut changes = transaction.open_table(CHANGES).map_err(engine_error)?;
        for change in &image.history {
            let encoded = postcard::to_stdvec(change).expect("changes serialise");
            changes
                .insert((partition.0, change.revision), encoded.as_slice())
                .map_err(engine_error)?;
        }
        let mut meta = transaction.open_table(META).map_err(engine_error)?;
        let encoded = postcard::to_stdvec(&image.meta).expect("meta serialises");
        meta.insert(partition.0, encoded.as_slice())
            .map_err(engine_error)?;
        Ok(())
    }

    fn remove_partition(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
    ) -> Result<(), StateMachineError> {
        self.touched.insert(partition);
        clear(transaction, partition)
    }

    fn size_bytes(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<u64, StateMachineError> {
        let meta = read_meta(
            &transaction.open_table(META).map_err(engine_error)?,
            partition,
        )?;
        Ok(meta.entries_bytes + meta.history_bytes)
    }
}

impl MapStateMachine {
    /// Whether an image is of a partition without map state.
    pub fn is_empty_image(image: &[u8]) -> bool {
        postcard::from_bytes::<MapImage>(image).is_ok_and(|image| image == MapImage::default())
    }

    /// The image of a partition without map state.
    pub fn empty_image() -> Vec<u8> {
        postcard::to_stdvec(&MapImage::default()).expect("images serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    struct Harness {
        database: Database,
        machine: MapStateMachine,
        index: u64,
    }

    const MAP: PartitionId = PartitionId(7);

    impl Harness {
        fn new() -> Self {
            let database = Database::builder()
                .create_with_backend(InMemoryBackend::new())
                .unwrap();
            let mut machine = MapStateMachine::default();
            let transaction = database.begin_write().unwrap();
            machine.open_tables(&transaction).unwrap();
            transaction.commit().unwrap();
            Self {
                database,
                machine,
                index: 0,
            }
        }

        fn apply(&mut self, partition: PartitionId, operation: MapOperation) -> MapOutcome {
            let transaction = self.database.begin_write().unwrap();
            self.index += 1;
            let outcome = self
                .machine
                .apply(&transaction, partition, self.index, &operation)
                .unwrap();
            transaction.commit().unwrap();
            outcome
        }

        fn set(&mut self, key: &str, value: &str) -> MapOutcome {
            self.apply(MAP, set(key, value))
        }

        fn read(&self, partition: PartitionId, query: MapQuery) -> MapAnswer {
            let transaction = self.database.begin_read().unwrap();
            self.machine.read(&transaction, partition, &query).unwrap()
        }

        fn feed(&self, after: Option<u64>) -> FeedRead {
            match self.read(MAP, MapQuery::Feed { after }) {
                MapAnswer::Feed(read) => read,
                other => panic!("{other:?}"),
            }
        }

        fn image(&self, partition: PartitionId) -> Vec<u8> {
            let transaction = self.database.begin_read().unwrap();
            self.machine.take_snapshot(&transaction, partition).unwrap()
        }
    }

    fn set(key: &str, value: &str) -> MapOperation {
        MapOperation::Set {
            key: MapKey::new(key).unwrap(),
            value: MapValue::from_json(value.as_bytes()).unwrap(),
        }
    }

    fn delete(key: &str) -> MapOperation {
        MapOperation::Delete {
            key: MapKey::new(key).unwrap(),
        }
    }

    #[test]
    fn each_change_takes_the_next_revision_and_nothing_else_does() {
        let mut harness = Harness::new();
        assert_eq!(harness.set("a", "1"), MapOutcome::Changed { revision: 1 });
        assert_eq!(
            harness.set("b", "{\"x\":2}"),
            MapOutcome::Changed { revision: 2 }
        );
        assert_eq!(harness.set("a", "3"), MapOutcome::Changed { revision: 3 });
        assert_eq!(
            harness.apply(MAP, delete("zz")),
            MapOutcome::Missing { revision: 3 }
        );
        assert_eq!(
            harness.apply(MAP, delete("a")),
            MapOutcome::Changed { revision: 4 }
        );
        // Another partition's map counts on its own.
        assert_eq!(
            harness.apply(PartitionId(8), set("a", "1")),
            MapOutcome::Changed { revision: 1 }
        );
        assert_eq!(
            harness.machine.take_touched(),
            BTreeSet::from([MAP, PartitionId(8)])
        );
        assert_eq!(
            harness.read(MAP, MapQuery::Entries),
            MapAnswer::Entries(MapEntries {
                revision: 4,
                entries: vec![(
                    MapKey::new("b").unwrap(),
                    MapValue::from_json(b"{\"x\":2}").unwrap()
                )],
            })
        );
        assert_eq!(
            harness.read(
                MAP,
                MapQuery::Get {
                    key: MapKey::new("a").unwrap()
                }
            ),
            MapAnswer::Value {
                value: None,
                revision: 4
            }
        );
        let FeedRead::Changes { changes, revision } = harness.feed(Some(2)) else {
            panic!("changes expected");
        };
        assert_eq!(revision, 4);
        assert_eq!(
            changes,
            vec![
                MapChange {
                    revision: 3,
                    key: MapKey::new("a").unwrap(),
                    kind: ChangeKind::Set {
                        value: MapValue::from_json(b"3").unwrap()
                    },
                },
                MapChange {
                    revision: 4,
                    key: MapKey::new("a").unwrap(),
                    kind: ChangeKind::Delete {
                        old_value: MapValue::from_json(b"3").unwrap()
                    },
                },
            ]
        );
        assert_eq!(
            harness.feed(Some(4)),
            FeedRead::Changes {
                changes: vec![],
                revision: 4
            }
        );
        assert_eq!(harness.feed(Some(5)), FeedRead::Behind { revision: 4 });
        assert!(matches!(
            harness.feed(None),
            FeedRead::Snapshot(MapEntries { revision: 4, .. })
        ));
    }

    #[test]
    fn history_is_compacted_and_a_compacted_resume_gets_the_whole_map() {
        let mut harness = Harness::new();
        let total = HISTORY_CHANGES_MAX + 50;
        for revision in 1..=total {
            harness.set(&format!("k{}", revision % 7), &revision.to_string());
        }
        // The oldest 50 are gone: resuming before them is a snapshot, after them changes.
        let FeedRead::Snapshot(snapshot) = harness.feed(Some(49)) else {
            panic!("a compacted resume must get the whole map");
        };
        assert_eq!(snapshot.revision, total);
        assert_eq!(snapshot.entries.len(), 7);
        let FeedRead::Changes { changes, .. } = harness.feed(Some(50)) else {
            panic!("changes expected");
        };
        assert_eq!(changes.len(), FEED_READ_CHANGES_MAX);
        assert_eq!(changes[0].revision, 51);
        // Folding the kept history onto nothing gives every key's last value.
        let image: MapImage = postcard::from_bytes(&harness.image(MAP)).unwrap();
        assert_eq!(image.history.len() as u64, HISTORY_CHANGES_MAX);
        assert_eq!(image.meta.first_retained, 51);
        assert_eq!(image.check(), Ok(()));
    }

    #[test]
    fn big_values_compact_history_by_bytes_and_a_full_map_refuses_sets() {
        let mut harness = Harness::new();
        let big = format!("\"{}\"", "x".repeat(200 * 1024));
        let mut refused = None;
        for index in 0..20 {
            match harness.set(&format!("key{index}"), &big) {
                MapOutcome::Changed { .. } => {}
                MapOutcome::Full { entries_bytes } => {
                    refused = Some((index, entries_bytes));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let (index, entries_bytes) = refused.expect("the map fills");
        assert_eq!(index, 10, "ten values of 200 KiB fit 2 MiB");
        assert!(entries_bytes <= MAP_BYTES_MAX);
        let image: MapImage = postcard::from_bytes(&harness.image(MAP)).unwrap();
        assert!(image.meta.history_bytes <= HISTORY_BYTES_MAX);
        assert_eq!(image.meta.revision, 10);
        assert_eq!(image.check(), Ok(()));
        // Overwriting a key replaces its bytes, so it still fits.
        assert_eq!(
            harness.set("key0", "1"),
            MapOutcome::Changed { revision: 11 }
        );
    }

    #[test]
    fn images_move_a_map_whole_and_bad_images_are_refused() {
        let mut harness = Harness::new();
        for revision in 1..=30u64 {
            harness.set(&format!("k{}", revision % 4), &revision.to_string());
        }
        harness.apply(MAP, delete("k1"));
        let image = harness.image(MAP);
        assert_eq!(MapStateMachine::check_image(&image), Ok(()));

        let mut other = Harness::new();
        other.set("stale", "1");
        let transaction = other.database.begin_write().unwrap();
        other
            .machine
            .install_snapshot(&transaction, MAP, &image)
            .unwrap();
        transaction.commit().unwrap();
        assert_eq!(
            other.read(MAP, MapQuery::Entries),
            harness.read(MAP, MapQuery::Entries)
        );
        assert_eq!(other.feed(Some(10)), harness.feed(Some(10)));
        assert_eq!(other.set("k9", "9"), MapOutcome::Changed { revision: 32 });

        // Each kind of damage is refused before anything is installed.
        let good: MapImage = postcard::from_bytes(&image).unwrap();
        let mut damaged = Vec::new();
        let mut gap = good.clone();
        gap.history.remove(3);
        damaged.push(gap);
        let mut bytes = good.clone();
        bytes.meta.entries_bytes += 1;
        damaged.push(bytes);
        let mut order = good.clone();
        order.entries.reverse();
        damaged.push(order);
        let mut meta = good.clone();
        meta.meta.first_retained = meta.meta.revision + 2;
        damaged.push(meta);
        for image in damaged {
            let bytes = postcard::to_stdvec(&image).unwrap();
            assert!(MapStateMachine::check_image(&bytes).is_err(), "{image:?}");
        }
        assert!(MapStateMachine::check_image(b"\xff\xff").is_err());

        // Removing a partition leaves nothing of its map.
        let transaction = harness.database.begin_write().unwrap();
        harness.machine.remove_partition(&transaction, MAP).unwrap();
        transaction.commit().unwrap();
        assert_eq!(
            harness.image(MAP),
            postcard::to_stdvec(&MapImage::default()).unwrap()
        );
    }
}

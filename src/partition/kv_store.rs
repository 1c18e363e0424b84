//! The key-value store: the first [`StateMachine`] a partition runs. Its pairs live in the
//! node's partition database (`replica_store`) with the partition id as key prefix, so every
//! partition's pairs are one contiguous range.
//!
//! Invariants: a write touches only its own partition's range; a batch applies whole inside
//! the command's transaction; a page of a range is one read transaction (one instant; a range
//! of several pages is several reads, each linearizable on its own) of at most
//! `PAGE_PAIRS_MAX` pairs, ending with the pair that brings it to `PAGE_BYTES_MAX` bytes; an
//! image holds the partition's pairs in key order, each within a command's size limits.

use crate::partition::command::{BatchOperation, KvOperation, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::partition::state_machine::{engine_error, StateMachine, StateMachineError};
use crate::partition::PartitionId;
use redb::{ReadTransaction, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::ops::Bound;

const PAIRS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("partition_pairs");

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// The most pairs one page of a range holds.
pub const PAGE_PAIRS_MAX: usize = 1000;
/// A page stops once its keys and values pass this many bytes (it always holds at least
/// one pair, so a range of large values still moves).
pub const PAGE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// One end of a range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyBound {
    #[default]
    Unbounded,
    Included(Vec<u8>),
    Excluded(Vec<u8>),
}

impl KeyBound {
    fn key(&self) -> Option<&[u8]> {
        match self {
            KeyBound::Unbounded => None,
            KeyBound::Included(key) | KeyBound::Excluded(key) => Some(key),
        }
    }
}

/// A range read: the keys between `start` and `end` (each included, excluded or open), at
/// most `limit` pairs, in key order or its reverse. It is served in pages: a page that stops
/// before the range and the limit are done says how to read on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeQuery {
    pub start: KeyBound,
    pub end: KeyBound,
    pub limit: usize,
    pub reverse: bool,
}

impl Default for RangeQuery {
    /// The whole partition, in key order.
    fn default() -> Self {
        Self {
            start: KeyBound::Unbounded,
            end: KeyBound::Unbounded,
            limit: usize::MAX,
            reverse: false,
        }
    }
}

impl RangeQuery {
    /// Whether no key can be in the range (its start is past its end).
    pub fn is_empty(&self) -> bool {
        let (Some(start), Some(end)) = (self.start.key(), self.end.key()) else {
            return false;
        };
        let both_included = matches!(self.start, KeyBound::Included(_))
            && matches!(self.end, KeyBound::Included(_));
        start > end || (start == end && !both_included)
    }
}

/// One page of a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub pairs: Vec<Pair>,
    /// The query that reads the rest of the range, when this page stopped early: the same
    /// range, past this page's last key, with what is left of the limit.
    pub next: Option<RangeQuery>,
}

/// What a read asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadRequest {
    Get {
        key: Vec<u8>,
    },
    Range(RangeQuery),
    /// How many keys the partition holds, and their bytes with their values' (a pass over
    /// the partition: an operator's question, not a hot path).
    Size,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadAnswer {
    Value(Vec<u8>),
    Page(Page),
    Size { keys: u64, bytes: u64 },
}

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    Put,
    /// Whether the key existed.
    Deleted(bool),
    Batch,
}

/// The key-value state machine. It keeps nothing outside its table.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvStateMachine;

/// Deletes every pair of `partition`.
fn clear_pairs(
    transaction: &WriteTransaction,
    partition: PartitionId,
) -> Result<(), StateMachineError> {
    let mut pairs = transaction.open_table(PAIRS).map_err(engine_error)?;
    let empty: &[u8] = &[];
    pairs
        .retain_in(
            (partition.0, empty)..(next_partition(partition), empty),
            |_, _| false,
        )
        .map_err(engine_error)
}

impl StateMachine for KvStateMachine {
    type Operation = KvOperation;
    type Outcome = WriteOutcome;
    type Query = ReadRequest;
    type Answer = ReadAnswer;

    fn open_tables(&mut self, transaction: &WriteTransaction) -> Result<(), StateMachineError> {
        transaction.open_table(PAIRS).map_err(engine_error)?;
        Ok(())
    }

    fn validate(&self, operation: &KvOperation) -> Result<(), String> {
        operation.validate().map_err(|error| error.to_string())
    }

    fn apply(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        _index: u64,
        operation: &KvOperation,
    ) -> Result<WriteOutcome, StateMachineError> {
        let mut pairs = transaction.open_table(PAIRS).map_err(engine_error)?;
        let id = partition.0;
        Ok(match operation {
            KvOperation::Put { key, value } => {
                pairs
                    .insert((id, key.as_slice()), value.as_slice())
                    .map_err(engine_error)?;
                WriteOutcome::Put
            }
            KvOperation::Delete { key } => {
                let existed = pairs
                    .remove((id, key.as_slice()))
                    .map_err(engine_error)?
                    .is_some();
                WriteOutcome::Deleted(existed)
            }
            KvOperation::Batch(operations) => {
                for operation in operations {
                    match operation {
                        BatchOperation::Put { key, value } => {
                            pairs
                                .insert((id, key.as_slice()), value.as_slice())
                                .map_err(engine_error)?;
                        }
                        BatchOperation::Delete { key } => {
                            pairs.remove((id, key.as_slice())).map_err(engine_error)?;
                        }
                    }
                }
                WriteOutcome::Batch
            }
        })
    }

    fn read(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
        query: &ReadRequest,
    ) -> Result<ReadAnswer, StateMachineError> {
        match query {
            ReadRequest::Get { key } => {
                let pairs = transaction.open_table(PAIRS).map_err(engine_error)?;
                match pairs
                    .get((partition.0, key.as_slice()))
                    .map_err(engine_error)?
                {
                    Some(value) => Ok(ReadAnswer::Value(value.value().to_vec())),
                    None => Err(StateMachineError::KeyNotFound),
                }
            }
            ReadRequest::Range(range) => range_page(
                transaction,
                partition,
                range,
                PAGE_PAIRS_MAX,
                PAGE_BYTES_MAX,
            )
            .map(ReadAnswer::Page),
            ReadRequest::Size => {
                let (keys, bytes) = partition_size(transaction, partition)?;
                Ok(ReadAnswer::Size { keys, bytes })
            }
        }
    }

    fn take_snapshot(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<Vec<u8>, StateMachineError> {
        let page = range_page(
            transaction,
            partition,
            &RangeQuery::default(),
            usize::MAX,
            usize::MAX,
        )?;
        Ok(postcard::to_stdvec(&page.pairs).expect("pairs serialise"))
    }

    fn check_image(image: &[u8]) -> Result<(), String> {
        let pairs: Vec<Pair> = postcard::from_bytes(image).map_err(|error| error.to_string())?;
        for (key, value) in &pairs {
            if key.is_empty() || key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
                return Err(format!(
                    "a pair of {} key and {} value bytes",
                    key.len(),
                    value.len()
                ));
            }
        }
        Ok(())
    }

    fn install_snapshot(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        image: &[u8],
    ) -> Result<(), StateMachineError> {
        let image: Vec<Pair> = postcard::from_bytes(image)
            .map_err(|error| StateMachineError::Corrupt(format!("key-value image: {error}")))?;
        clear_pairs(transaction, partition)?;
        let mut pairs = transaction.open_table(PAIRS).map_err(engine_error)?;
        for (key, value) in &image {
            pairs
                .insert((partition.0, key.as_slice()), value.as_slice())
                .map_err(engine_error)?;
        }
        Ok(())
    }

    fn remove_partition(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
    ) -> Result<(), StateMachineError> {
        clear_pairs(transaction, partition)
    }

    fn split_for_canary(&self, operation: KvOperation) -> Vec<KvOperation> {
        match operation {
            KvOperation::Batch(operations) => operations
                .into_iter()
                .map(|operation| KvOperation::Batch(vec![operation]))
                .collect(),
            operation => vec![operation],
        }
    }

    fn size_bytes(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<u64, StateMachineError> {
        partition_size(transaction, partition).map(|(_, bytes)| bytes)
    }
}

/// The keys of `partition`, and the bytes of its keys and values.
fn partition_size(
    transaction: &ReadTransaction,
    partition: PartitionId,
) -> Result<(u64, u64), StateMachineError> {
    let pairs = transaction.open_table(PAIRS).map_err(engine_error)?;
    let empty: &[u8] = &[];
    let (mut keys, mut bytes) = (0u64, 0u64);
    for row in pairs
        .range((partition.0, empty)..(next_partition(partition), empty))
        .map_err(engine_error)?
    {
        let (key, value) = row.map_err(engine_error)?;
        keys += 1;
        bytes += (key.value().1.len() + value.value().len()) as u64;
    }
    Ok((keys, bytes))
}

/// The table bound of one end of a range in `partition`.
fn table_bound(partition: PartitionId, bound: &KeyBound, is_end: bool) -> Bound<(u64, &[u8])> {
    let empty: &[u8] = &[];
    match bound {
        KeyBound::Included(key) => Bound::Included((partition.0, key.as_slice())),
        KeyBound::Excluded(key) => Bound::Excluded((partition.0, key.as_slice())),
        // An open end stops at the next partition's prefix.
        KeyBound::Unbounded if is_end => Bound::Excluded((next_partition(partition), empty)),
        KeyBound::Unbounded => Bound::Included((partition.0, empty)),
    }
}

/// The first page of `query` over `partition`: at most `pairs_max` pairs, stopping once it
/// holds `bytes_max` bytes, all read in one transaction.
fn range_page(
    transaction: &ReadTransaction,
    partition: PartitionId,
    query: &RangeQuery,
    pairs_max: usize,
    bytes_max: usize,
) -> Result<Page, StateMachineError> {
    let mut page = Page {
        pairs: Vec::new(),
        next: None,
    };
    if query.limit == 0 || query.is_empty() {
        return Ok(page);
    }
    let pairs = transaction.open_table(PAIRS).map_err(engine_error)?;
    let bounds = (
        table_bound(partition, &query.start, false),
        table_bound(partition, &query.end, true),
    );
    let rows = pairs.range::<(u64, &[u8])>(bounds).map_err(engine_error)?;
    let mut rows: Box<dyn Iterator<Item = _>> = if query.reverse {
        Box::new(rows.rev())
    } else {
        Box::new(rows)
    };
    let page_pairs_max = query.limit.min(pairs_max);
    let mut bytes = 0usize;
    for row in rows.by_ref() {
        let (key, value) = row.map_err(engine_error)?;
        let (key, value) = (key.value().1.to_vec(), value.value().to_vec());
        bytes = bytes.saturating_add(key.len() + value.len());
        page.pairs.push((key, value));
        if page.pairs.len() >= page_pairs_max || bytes >= bytes_max {
            break;
        }
    }
    let limit_left = query.limit.saturating_sub(page.pairs.len());
    if limit_left > 0 && rows.next().is_some() {
        if let Some((last, _)) = page.pairs.last() {
            let past_last = KeyBound::Excluded(last.clone());
            let mut next = query.clone();
            if query.reverse {
                next.end = past_last;
            } else {
                next.start = past_last;
            }
            next.limit = limit_left;
            page.next = Some(next);
        }
    }
    Ok(page)
}

/// The first key prefix after `partition`'s: partition ids stay below `u64::MAX` for this.
fn next_partition(partition: PartitionId) -> u64 {
    partition
        .0
        .checked_add(1)
        .expect("partition ids are below u64::MAX")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::partition::command::{BatchOperation, Command};
    use crate::partition::replica_store::{
        AppliedPoint, CommandOutcome, ReplicaStore, SessionWindow, SESSION_WINDOW_IDS_MAX,
    };
    use crate::raft::{Configuration, Entry, EntryKind};
    use crate::storage::test_disk::TestDisk;
    use serde::Serialize;

    type KvStore = ReplicaStore<KvStateMachine>;
    type KvError = StateMachineError;

    trait KvReads {
        fn get(&self, id: PartitionId, key: &[u8]) -> Result<Vec<u8>, KvError>;
        fn range(&self, id: PartitionId, query: &RangeQuery) -> Result<Page, KvError>;

        /// Every page of `query`, following each page's continuation.
        fn range_all(&self, id: PartitionId, query: &RangeQuery) -> (Vec<Pair>, usize) {
            let mut pairs = Vec::new();
            let mut pages = 0;
            let mut next = Some(query.clone());
            while let Some(query) = next {
                let page = self.range(id, &query).unwrap();
                pages += 1;
                pairs.extend(page.pairs);
                next = page.next;
            }
            (pairs, pages)
        }
    }

    impl KvReads for KvStore {
        fn get(&self, id: PartitionId, key: &[u8]) -> Result<Vec<u8>, KvError> {
            match self.read(id, &ReadRequest::Get { key: key.to_vec() })? {
                ReadAnswer::Value(value) => Ok(value),
                other => panic!("a get answered with {other:?}"),
            }
        }

        fn range(&self, id: PartitionId, query: &RangeQuery) -> Result<Page, KvError> {
            match self.read(id, &ReadRequest::Range(query.clone()))? {
                ReadAnswer::Page(page) => Ok(page),
                other => panic!("a range answered with {other:?}"),
            }
        }
    }

    fn took_effect(outcome: WriteOutcome) -> CommandOutcome<WriteOutcome> {
        CommandOutcome::TookEffect(outcome)
    }

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
        proposer_command(index, 1, request_id, first_unanswered, operation)
    }

    /// `operation` as request `request_id` of node 1's session `session`.
    fn proposer_command(
        index: u64,
        session: u64,
        request_id: u64,
        first_unanswered: u64,
        operation: KvOperation,
    ) -> Entry {
        Entry {
            term: 1,
            index,
            kind: EntryKind::Command(
                Command {
                    proposer: 1,
                    proposer_session: session,
                    request_id,
                    first_unanswered,
                    operation,
                }
                .encode(),
            ),
        }
    }

    fn store_with_partition(disk: &std::sync::Arc<TestDisk>) -> KvStore {
        let mut store = KvStore::open(disk.clone(), KvStateMachine).unwrap();
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
        let outcomes: Vec<CommandOutcome<WriteOutcome>> =
            applied.into_iter().map(|applied| applied.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                took_effect(WriteOutcome::Put),
                took_effect(WriteOutcome::Put),
                took_effect(WriteOutcome::Deleted(true)),
                took_effect(WriteOutcome::Deleted(false))
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
            let page = store.range(P, &query).unwrap();
            assert_eq!(page.next, None, "one page");
            page.pairs
                .into_iter()
                .map(|(key, _)| String::from_utf8(key).unwrap())
                .collect()
        };
        let key = |text: &str| text.as_bytes().to_vec();
        let all = RangeQuery::default();
        assert_eq!(keys(all.clone()), ["a", "b", "c", "d"]);
        let between = |start: KeyBound, end: KeyBound| RangeQuery {
            start,
            end,
            ..all.clone()
        };
        use KeyBound::{Excluded, Included, Unbounded};
        assert_eq!(
            keys(between(Included(key("b")), Excluded(key("d")))),
            ["b", "c"]
        );
        assert_eq!(
            keys(between(Excluded(key("b")), Included(key("d")))),
            ["c", "d"]
        );
        assert_eq!(keys(between(Included(key("b")), Included(key("b")))), ["b"]);
        assert_eq!(keys(between(Excluded(key("bb")), Unbounded)), ["c", "d"]);
        assert_eq!(
            keys(between(Unbounded, Excluded(key("a")))),
            Vec::<String>::new()
        );
        // A start past the end is an empty range, not an error.
        for (start, end) in [
            (Included(key("c")), Included(key("b"))),
            (Excluded(key("b")), Included(key("b"))),
            (Included(key("b")), Excluded(key("b"))),
        ] {
            let query = between(start, end);
            assert!(query.is_empty());
            assert_eq!(keys(query), Vec::<String>::new());
        }
        assert_eq!(
            keys(RangeQuery {
                reverse: true,
                limit: 3,
                ..all.clone()
            }),
            ["d", "c", "b"]
        );
        assert_eq!(
            keys(RangeQuery {
                reverse: true,
                ..between(Excluded(key("a")), Excluded(key("d")))
            }),
            ["c", "b"]
        );
        assert_eq!(keys(RangeQuery { limit: 0, ..all }), Vec::<String>::new());
    }

    #[test]
    fn large_ranges_come_in_pages_that_end() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        let count = 2 * PAGE_PAIRS_MAX + 500;
        let entries: Vec<Entry> = (0..count)
            .map(|offset| {
                let key = format!("k{offset:05}");
                put(offset as u64 + 2, &key, "v")
            })
            .collect();
        store.apply(P, &entries, configuration.clone()).unwrap();
        let expected: Vec<Vec<u8>> = (0..count)
            .map(|offset| format!("k{offset:05}").into_bytes())
            .collect();
        let keys =
            |pairs: Vec<Pair>| -> Vec<Vec<u8>> { pairs.into_iter().map(|(key, _)| key).collect() };

        let first = store.range(P, &RangeQuery::default()).unwrap();
        assert_eq!(first.pairs.len(), PAGE_PAIRS_MAX);
        assert_eq!(
            first.next.as_ref().map(|next| next.start.clone()),
            Some(KeyBound::Excluded(expected[PAGE_PAIRS_MAX - 1].clone()))
        );
        let (pairs, pages) = store.range_all(P, &RangeQuery::default());
        assert_eq!((keys(pairs), pages), (expected.clone(), 3));
        let reverse = RangeQuery {
            reverse: true,
            ..RangeQuery::default()
        };
        let (pairs, _) = store.range_all(P, &reverse);
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(keys(pairs), reversed);
        // A limit across pages ends the range there, with no continuation after it.
        let limited = RangeQuery {
            limit: PAGE_PAIRS_MAX + 10,
            ..RangeQuery::default()
        };
        let (pairs, pages) = store.range_all(P, &limited);
        assert_eq!(
            (keys(pairs), pages),
            (expected[..PAGE_PAIRS_MAX + 10].to_vec(), 2)
        );
        // A range that ends exactly at a page's end has no empty page after it.
        let exact = RangeQuery {
            end: KeyBound::Excluded(expected[PAGE_PAIRS_MAX].clone()),
            ..RangeQuery::default()
        };
        assert_eq!(store.range(P, &exact).unwrap().next, None);

        // Large values fill a page by bytes first.
        let big = "v".repeat(VALUE_BYTES_MAX);
        let entries: Vec<Entry> = (0..6)
            .map(|offset| put((count + offset) as u64 + 2, &format!("z{offset}"), &big))
            .collect();
        store.apply(P, &entries, configuration).unwrap();
        let values = RangeQuery {
            start: KeyBound::Included(b"z".to_vec()),
            ..RangeQuery::default()
        };
        let page = store.range(P, &values).unwrap();
        assert_eq!(page.pairs.len(), PAGE_BYTES_MAX / VALUE_BYTES_MAX);
        let (pairs, pages) = store.range_all(P, &values);
        assert_eq!(
            (pairs.len(), pages),
            (6, 6 / (PAGE_BYTES_MAX / VALUE_BYTES_MAX))
        );
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
        let store = KvStore::open(crashed, KvStateMachine).unwrap();
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
        let outcomes: Vec<&CommandOutcome<WriteOutcome>> =
            applied.iter().map(|command| &command.outcome).collect();
        assert_eq!(
            outcomes,
            [
                &took_effect(WriteOutcome::Put),
                &took_effect(WriteOutcome::Deleted(true)),
                &CommandOutcome::Superseded
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
        assert_eq!(applied[0].outcome, CommandOutcome::Superseded);
        // A replica that catches up from a snapshot knows what was applied.
        let (point, image) = store.snapshot(P).unwrap();
        let target_disk = TestDisk::new();
        let mut target = store_with_partition(&target_disk);
        target.install_snapshot(P, point, &image).unwrap();
        let applied = target
            .apply(P, &[copy_at(&delete, 6)], configuration)
            .unwrap();
        assert_eq!(applied[0].outcome, CommandOutcome::Superseded);
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
        let put = took_effect(WriteOutcome::Put);
        let superseded = CommandOutcome::Superseded;
        let outcomes: Vec<(u64, &CommandOutcome<WriteOutcome>)> = applied
            .iter()
            .map(|command| (command.request_id, &command.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                (11, &put),
                (10, &put),
                (10, &superseded),
                (13, &put),
                (12, &superseded),
                (14, &put),
                (15, &put),
            ]
        );
        assert_eq!(applied[5].first_unanswered, 14, "a forged mark is clamped");
        assert_eq!(store.get(P, b"c"), Err(KvError::KeyNotFound));
    }

    /// A proposer that restarted proposes in a newer session: the older session's window is
    /// dropped (one window per proposer, however often it restarts), and a late copy of an
    /// older session's command never applies, on a replica that caught up by snapshot too.
    #[test]
    fn a_newer_session_of_a_proposer_retires_the_older_one() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        let put = |key: &str| KvOperation::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        };
        let mut index = 1;
        let mut next = || {
            index += 1;
            index
        };
        let mut entries = Vec::new();
        for session in 1..=100 {
            entries.push(proposer_command(next(), session, 1, 1, put("a")));
        }
        let old = proposer_command(next(), 7, 2, 1, put("late"));
        entries.push(old);
        let applied = store.apply(P, &entries, configuration.clone()).unwrap();
        assert!(applied[..100]
            .iter()
            .all(|command| command.outcome == took_effect(WriteOutcome::Put)));
        assert_eq!(applied[100].outcome, CommandOutcome::Superseded);
        assert_eq!(
            store.session_count(P).unwrap(),
            1,
            "one window per proposer"
        );
        let (point, image) = store.snapshot(P).unwrap();
        let target_disk = TestDisk::new();
        let mut target = store_with_partition(&target_disk);
        target.install_snapshot(P, point, &image).unwrap();
        assert_eq!(target.session_count(P).unwrap(), 1);
        let late = proposer_command(next(), 99, 3, 1, put("late"));
        let applied = target.apply(P, &[late], configuration).unwrap();
        assert_eq!(applied[0].outcome, CommandOutcome::Superseded);
        assert_eq!(target.get(P, b"late"), Err(KvError::KeyNotFound));
    }

    #[test]
    fn the_size_counts_the_partitions_own_keys_and_values() {
        let disk = TestDisk::new();
        let mut store = store_with_partition(&disk);
        let configuration = store.point(P).unwrap().configuration.clone();
        assert_eq!(store.size_bytes(P).unwrap(), 0);
        store
            .apply(P, &[put(2, "ab", "123"), put(3, "c", "4")], configuration)
            .unwrap();
        assert_eq!(store.size_bytes(P).unwrap(), 2 + 3 + 1 + 1);
        assert_eq!(
            store.size_bytes(PartitionId(9)),
            Err(KvError::UnknownPartition(PartitionId(9)))
        );
    }

    #[test]
    fn every_open_takes_a_higher_incarnation() {
        let disk = TestDisk::new();
        let mut store = KvStore::open(disk.clone(), KvStateMachine).unwrap();
        assert_eq!(
            store.begin_incarnation(5).unwrap(),
            5,
            "a fresh database's base"
        );
        assert_eq!(store.begin_incarnation(5).unwrap(), 6);
        drop(store);
        let mut store = KvStore::open(disk.crash(), KvStateMachine).unwrap();
        assert_eq!(store.begin_incarnation(5).unwrap(), 7, "taken durably");
        assert_eq!(store.begin_incarnation_above(100).unwrap(), 101);
        assert_eq!(
            store.begin_incarnation_above(3).unwrap(),
            102,
            "never lower"
        );
        assert_eq!(store.begin_incarnation(5).unwrap(), 103);
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
        assert!(!window_is_refused(window.clone()));
        // Only the planted `apply_copies` bug records an id the window refused.
        window.record(3, 0);
        assert!(
            !window_is_refused(window),
            "an id below the mark is not kept"
        );
        let unsorted = SessionWindow {
            first_unanswered: 0,
            applied: vec![3, 2],
        };
        assert!(window_is_refused(unsorted));
        let below_mark = SessionWindow {
            first_unanswered: 5,
            applied: vec![4],
        };
        assert!(window_is_refused(below_mark));
    }

    /// Whether a snapshot image holding `window` is refused.
    fn window_is_refused(window: SessionWindow) -> bool {
        #[derive(Serialize)]
        struct Image {
            #[serde(with = "serde_bytes")]
            state: Vec<u8>,
            sessions: Vec<(u32, (u64, SessionWindow))>,
        }
        let image = Image {
            state: postcard::to_stdvec(&Vec::<Pair>::new()).unwrap(),
            sessions: vec![(1, (1, window))],
        };
        KvStore::check_snapshot_image(&postcard::to_stdvec(&image).unwrap()).is_err()
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
        let target = KvStore::open(crashed, KvStateMachine).unwrap();
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
            Err(StateMachineError::Poisoned(_))
        ));
    }
}

//! The node-wide Raft log: the hard states and entries of every partition on the node in one
//! segmented log (`raft-{segment}.wal`), so a round of all groups costs one append and one
//! sync (group commit).
//!
//! Invariants:
//! - records replay in log order; an `Entries` record replaces the partition's entries from its
//!   first index on (a conflicting suffix is truncated by writing its replacement), a `Base`
//!   record drops every entry before it (a snapshot install, or a checkpoint's restart point);
//! - nothing staged is durable before `commit` returns `Ok`; a failed commit poisons the log,
//!   since after a failed sync nobody knows what is on disk;
//! - a checkpoint writes every partition's live state (hard state, base, entries) into a fresh
//!   segment and syncs it before the older segments are removed, so a crash at any point
//!   replays to the same state;
//! - every record stays far below the segmented log's record bound: a run of entries is
//!   written as consecutive records of at most [`ENTRIES_RECORD_BYTES_TARGET`] bytes each
//!   (plus one entry), however many entries a round holds;
//! - replay checks each record's values (indexes and terms within the protocol's limits,
//!   entries in sequence with terms never going back, partition ids below the reserved one)
//!   and refuses to open on a record that fails, as on damage;
//! - synced records damaged at rest are never cut away: the log refuses to open
//!   ([`RaftLogError::DamagedAtRest`]), because a replica that silently lost a vote or an
//!   acknowledged entry can elect a second leader in a term or lose a committed entry. The
//!   replica must be rebuilt (removed from its groups and added back as a new one). A torn
//!   tail (unsynced writes cut by a crash) is truncated as usual; damage to the very last
//!   synced record looks exactly like one, which is the limit of what checksums can tell.

use crate::partition::PartitionId;
use crate::raft::{Entry, HardState};
use crate::seams::{DiskError, SharedDisk};
use crate::storage::{DamagePolicy, LogError, SegmentedLog};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const RAFT_LOG_PREFIX: &str = "raft-";

/// Entry bytes after which a run of entries continues in a new record.
pub const ENTRIES_RECORD_BYTES_TARGET: usize = 4 * 1024 * 1024;

/// Appends `entries` as `Entries` records of bounded size: replay joins consecutive records
/// of one partition, so the split changes nothing but the records' sizes.
fn push_entry_records<'a>(
    records: &mut Vec<RaftLogRecord>,
    partition: PartitionId,
    entries: impl IntoIterator<Item = std::borrow::Cow<'a, Entry>>,
) {
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for entry in entries {
        chunk_bytes += entry.payload_bytes() + 32;
        chunk.push(entry.into_owned());
        if chunk_bytes > ENTRIES_RECORD_BYTES_TARGET {
            records.push(RaftLogRecord::Entries {
                partition: partition.0,
                entries: std::mem::take(&mut chunk),
            });
            chunk_bytes = 0;
        }
    }
    if !chunk.is_empty() {
        records.push(RaftLogRecord::Entries {
            partition: partition.0,
            entries: chunk,
        });
    }
}

/// Checks one replayed record's values (see the module doc).
fn check_record(record: &RaftLogRecord) -> Result<(), String> {
    use crate::raft::message::{INDEX_MAX, TERM_MAX};
    let partition = match record {
        RaftLogRecord::HardState { partition, .. }
        | RaftLogRecord::Entries { partition, .. }
        | RaftLogRecord::Base { partition, .. }
        | RaftLogRecord::Removed { partition } => *partition,
    };
    if partition == u64::MAX {
        return Err("partition id u64::MAX is reserved".to_string());
    }
    match record {
        RaftLogRecord::HardState { hard_state, .. } => {
            if hard_state.term > TERM_MAX || hard_state.commit > INDEX_MAX {
                return Err(format!("hard state {hard_state:?} beyond the limits"));
            }
        }
        RaftLogRecord::Entries { entries, .. } => {
            for pair in entries.windows(2) {
                if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                    return Err(format!(
                        "entry {} (term {}) after entry {} (term {})",
                        pair[1].index, pair[1].term, pair[0].index, pair[0].term
                    ));
                }
            }
            if let Some(bad) = entries
                .iter()
                .find(|entry| entry.index == 0 || entry.index > INDEX_MAX || entry.term > TERM_MAX)
            {
                return Err(format!(
                    "entry {} of term {} beyond the limits",
                    bad.index, bad.term
                ));
            }
        }
        RaftLogRecord::Base { index, term, .. } => {
            if *index > INDEX_MAX || *term > TERM_MAX {
                return Err(format!("base ({index}, {term}) beyond the limits"));
            }
        }
        RaftLogRecord::Removed { .. } => {}
    }
    Ok(())
}

/// One record of the Raft log. The postcard encoding is the on-disk format: variants are only
/// ever appended, never reordered or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftLogRecord {
    HardState {
        partition: u64,
        hard_state: HardState,
    },
    Entries {
        partition: u64,
        entries: Vec<Entry>,
    },
    /// The partition's log restarts after (`index`, `term`).
    Base {
        partition: u64,
        index: u64,
        term: u64,
    },
    /// The partition left this node.
    Removed {
        partition: u64,
    },
}

/// A partition's log as recovery found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredLog {
    pub hard_state: HardState,
    /// The last `Base` point, if any.
    pub base: Option<(u64, u64)>,
    /// Contiguous entries after the base.
    pub entries: Vec<Entry>,
}

impl From<LogError> for RaftLogError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::DamagedAtRest { .. } => RaftLogError::DamagedAtRest(error.to_string()),
            error => RaftLogError::Log(error),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftLogError {
    #[error("the Raft log is damaged at rest ({0}); this node's replicas may have lost votes or acknowledged entries, so they stay out until rebuilt (remove them from their partitions and add them back)")]
    DamagedAtRest(String),
    #[error(transparent)]
    Log(LogError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("the Raft log is poisoned by an earlier write failure ({0}); restart the node")]
    Poisoned(String),
}

/// What one partition's live state is, for a checkpoint.
#[derive(Debug)]
pub struct LiveLog<'a> {
    pub partition: PartitionId,
    pub hard_state: HardState,
    pub base: (u64, u64),
    pub entries: Vec<&'a Entry>,
}

#[derive(Debug)]
pub struct RaftLogStore {
    log: SegmentedLog<RaftLogRecord>,
    staged: Vec<RaftLogRecord>,
    poisoned: Option<String>,
    syncs: u64,
}

impl RaftLogStore {
    /// Opens the log and replays it into each partition's recovered state.
    pub fn open(
        disk: SharedDisk,
        segment_bytes_max: u64,
    ) -> Result<(RaftLogStore, BTreeMap<PartitionId, RecoveredLog>), RaftLogError> {
        Self::open_with(disk, segment_bytes_max, false)
    }

    /// `open`; `torn_tails_are_damage` is set only by a canary's planted bug (a torn tail
    /// is then refused as damage at rest).
    pub fn open_with(
        disk: SharedDisk,
        segment_bytes_max: u64,
        torn_tails_are_damage: bool,
    ) -> Result<(RaftLogStore, BTreeMap<PartitionId, RecoveredLog>), RaftLogError> {
        let (log, recovery) = SegmentedLog::open_with(
            disk,
            RAFT_LOG_PREFIX,
            segment_bytes_max,
            0,
            DamagePolicy::Refuse,
            torn_tails_are_damage,
        )?;
        debug_assert_eq!(recovery.corrupt_records, 0, "damage is refused, not cut");
        let mut recovered: BTreeMap<PartitionId, RecoveredLog> = BTreeMap::new();
        for record in recovery.records {
            check_record(&record).map_err(|problem| {
                RaftLogError::DamagedAtRest(format!("a record holds impossible values: {problem}"))
            })?;
            match record {
                RaftLogRecord::HardState {
                    partition,
                    hard_state,
                } => {
                    recovered
                        .entry(PartitionId(partition))
                        .or_default()
                        .hard_state = hard_state;
                }
                RaftLogRecord::Entries { partition, entries } => {
                    let log = recovered.entry(PartitionId(partition)).or_default();
                    let Some(first) = entries.first() else {
                        continue;
                    };
                    log.entries.retain(|entry| entry.index < first.index);
                    let contiguous = log
                        .entries
                        .last()
                        .is_none_or(|last| last.index + 1 == first.index);
                    if !contiguous {
                        // Only a record lost to damage leaves a hole; what follows it cannot
                        // be trusted to match, so the tail starts over here.
                        log.entries.clear();
                    }
                    log.entries.extend(entries);
                }
                RaftLogRecord::Base {
                    partition,
                    index,
                    term,
                } => {
                    let log = recovered.entry(PartitionId(partition)).or_default();
                    log.base = Some((index, term));
                    log.entries.retain(|entry| entry.index > index);
                    if log
                        .entries
                        .first()
                        .is_some_and(|entry| entry.index != index + 1)
                    {
                        log.entries.clear();
                    }
                }
                RaftLogRecord::Removed { partition } => {
                    recovered.remove(&PartitionId(partition));
                }
            }
        }
        Ok((
            RaftLogStore {
                log,
                staged: Vec::new(),
                poisoned: None,
                syncs: 0,
            },
            recovered,
        ))
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Syncs done by commits and checkpoints.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    pub fn stage_hard_state(&mut self, partition: PartitionId, hard_state: HardState) {
        self.staged.push(RaftLogRecord::HardState {
            partition: partition.0,
            hard_state,
        });
    }

    pub fn stage_entries(&mut self, partition: PartitionId, entries: Vec<Entry>) {
        push_entry_records(
            &mut self.staged,
            partition,
            entries.into_iter().map(std::borrow::Cow::Owned),
        );
    }

    pub fn stage_base(&mut self, partition: PartitionId, index: u64, term: u64) {
        self.staged.push(RaftLogRecord::Base {
            partition: partition.0,
            index,
            term,
        });
    }

    pub fn stage_removed(&mut self, partition: PartitionId) {
        self.staged.push(RaftLogRecord::Removed {
            partition: partition.0,
        });
    }

    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Makes everything staged durable with one append and one sync.
    pub fn commit(&mut self) -> Result<(), RaftLogError> {
        if let Some(file) = self.write_staged()? {
            let result = self.log.sync_file(&file);
            self.synced(result)?;
        }
        Ok(())
    }

    /// Appends everything staged as one write and returns the file whose sync makes it
    /// durable; the caller syncs it (on another thread, say) and reports the result with
    /// [`RaftLogStore::synced`] before it counts on the records. `None`: nothing to sync.
    pub fn write_staged(&mut self) -> Result<Option<String>, RaftLogError> {
        if let Some(reason) = &self.poisoned {
            return Err(RaftLogError::Poisoned(reason.clone()));
        }
        if self.staged.is_empty() {
            return Ok(None);
        }
        let staged = std::mem::take(&mut self.staged);
        match self.log.write(&staged) {
            Ok((_, to_sync)) => {
                if to_sync.is_none() {
                    self.syncs += 1;
                }
                Ok(to_sync)
            }
            Err(error) => Err(self.poison(error)),
        }
    }

    /// The outcome of syncing the file [`RaftLogStore::write_staged`] named. A failed sync
    /// poisons the log: what it wrote may or may not be on the disk.
    pub fn synced(&mut self, result: Result<(), DiskError>) -> Result<(), RaftLogError> {
        match result {
            Ok(()) => {
                self.syncs += 1;
                Ok(())
            }
            Err(error) => Err(self.poison(error)),
        }
    }

    fn poison(&mut self, error: DiskError) -> RaftLogError {
        tracing::error!(%error, "Raft log poisoned: refusing writes until restart");
        self.poisoned.get_or_insert(error.to_string());
        error.into()
    }

    /// Plants the canary bug `skip_log_sync` (see `SegmentedLog::plant_skip_sync`).
    pub fn plant_skip_sync(&mut self) {
        self.log.plant_skip_sync();
    }

    /// Segments the log spans now; a caller checkpoints when it grows past a bound.
    pub fn segment(&self) -> u64 {
        self.log.segment()
    }

    /// Rewrites the live state of every partition into a fresh segment and drops the older
    /// ones. Nothing may be staged.
    pub fn checkpoint<'a>(
        &mut self,
        live: impl IntoIterator<Item = LiveLog<'a>>,
    ) -> Result<(), RaftLogError> {
        assert!(
            self.staged.is_empty(),
            "commit staged records before a checkpoint"
        );
        if let Some(reason) = &self.poisoned {
            return Err(RaftLogError::Poisoned(reason.clone()));
        }
        let result = (|| {
            let segment = self.log.rotate()?;
            let mut records = Vec::new();
            for partition in live {
                records.push(RaftLogRecord::HardState {
                    partition: partition.partition.0,
                    hard_state: partition.hard_state,
                });
                records.push(RaftLogRecord::Base {
                    partition: partition.partition.0,
                    index: partition.base.0,
                    term: partition.base.1,
                });
                push_entry_records(
                    &mut records,
                    partition.partition,
                    partition
                        .entries
                        .into_iter()
                        .map(std::borrow::Cow::Borrowed),
                );
            }
            if !records.is_empty() {
                self.log.append(&records)?;
                self.syncs += 1;
            }
            self.log.remove_segments_below(segment)?;
            Ok::<(), DiskError>(())
        })();
        if let Err(error) = result {
            tracing::error!(%error, "Raft log checkpoint failed: poisoned");
            self.poisoned = Some(error.to_string());
            return Err(error.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::raft::EntryKind;
    use crate::seams::Disk;
    use crate::storage::test_disk::TestDisk;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Command(vec![index as u8]),
        }
    }

    fn open(
        disk: &std::sync::Arc<TestDisk>,
    ) -> (RaftLogStore, BTreeMap<PartitionId, RecoveredLog>) {
        RaftLogStore::open(disk.clone(), 1 << 20).unwrap()
    }

    #[test]
    fn committed_records_replay_with_truncation_and_bases() {
        let disk = TestDisk::new();
        let (mut log, recovered) = open(&disk);
        assert!(recovered.is_empty());
        let one = PartitionId(1);
        let two = PartitionId(2);
        let hard_state = HardState {
            term: 3,
            vote: Some(NodeId(2)),
            commit: 2,
        };
        log.stage_hard_state(one, hard_state);
        log.stage_entries(one, vec![entry(2, 1), entry(3, 1), entry(4, 1)]);
        log.stage_entries(two, vec![entry(2, 1)]);
        log.commit().unwrap();
        // A new leader replaces 4 and appends 5; partition 2 installs a snapshot at 9.
        log.stage_entries(one, vec![entry(4, 3), entry(5, 3)]);
        log.stage_base(two, 9, 2);
        log.commit().unwrap();
        // Staged but never committed: lost in the crash.
        log.stage_entries(one, vec![entry(6, 3)]);
        let (_, recovered) = open(&disk.crash());
        assert_eq!(recovered[&one].hard_state, hard_state);
        assert_eq!(
            recovered[&one].entries,
            vec![entry(2, 1), entry(3, 1), entry(4, 3), entry(5, 3)]
        );
        assert_eq!(recovered[&two].base, Some((9, 2)));
        assert!(recovered[&two].entries.is_empty());
    }

    #[test]
    fn a_checkpoint_keeps_the_live_state_and_drops_old_segments() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk);
        let one = PartitionId(1);
        for index in 2..50 {
            log.stage_entries(one, vec![entry(index, 1)]);
            log.commit().unwrap();
        }
        let live_entries: Vec<Entry> = (40..50).map(|index| entry(index, 1)).collect();
        let hard_state = HardState {
            term: 1,
            vote: None,
            commit: 45,
        };
        log.checkpoint([LiveLog {
            partition: one,
            hard_state,
            base: (39, 1),
            entries: live_entries.iter().collect(),
        }])
        .unwrap();
        let segments: Vec<String> = disk
            .list()
            .unwrap()
            .into_iter()
            .filter(|name| name.starts_with(RAFT_LOG_PREFIX))
            .collect();
        assert_eq!(segments.len(), 1, "older segments are gone: {segments:?}");
        let (_, recovered) = open(&disk.crash());
        assert_eq!(recovered[&one].entries, live_entries);
        assert_eq!(recovered[&one].base, Some((39, 1)));
        assert_eq!(recovered[&one].hard_state, hard_state);
    }

    #[test]
    fn a_failed_sync_poisons_the_log() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk);
        disk.fail_syncs(true);
        log.stage_entries(PartitionId(1), vec![entry(2, 1)]);
        assert!(log.commit().is_err());
        disk.fail_syncs(false);
        log.stage_entries(PartitionId(1), vec![entry(3, 1)]);
        assert!(matches!(log.commit(), Err(RaftLogError::Poisoned(_))));
    }

    #[test]
    fn synced_records_damaged_at_rest_are_refused_at_every_open_and_never_cut() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk);
        let one = PartitionId(1);
        for index in 2..6 {
            log.stage_entries(one, vec![entry(index, 1)]);
            log.commit().unwrap();
        }
        let segment = crate::storage::prefixed_segment_name(RAFT_LOG_PREFIX, 0);
        let length_before = disk.read_all(&segment).unwrap().len();
        // A bit of the first record rots: good records follow it, so it is no torn tail.
        disk.corrupt_at_rest(&segment, 10);
        let mut disk = disk;
        for _ in 0..2 {
            disk = disk.crash();
            let error = RaftLogStore::open(disk.clone(), 1 << 20).unwrap_err();
            assert!(
                matches!(error, RaftLogError::DamagedAtRest(_)),
                "damage is refused: {error}"
            );
            assert_eq!(disk.read_all(&segment).unwrap().len(), length_before);
        }
    }

    #[test]
    fn a_rotted_length_that_makes_synced_records_look_torn_is_refused() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk);
        let one = PartitionId(1);
        for index in 2..6 {
            log.stage_entries(one, vec![entry(index, 1)]);
            log.commit().unwrap();
        }
        let segment = crate::storage::prefixed_segment_name(RAFT_LOG_PREFIX, 0);
        let bytes = disk.read_all(&segment).unwrap();
        let first_payload = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as u64;
        let second = 8 + first_payload;
        // A high bit of the second record's length flips: it now claims to run past the end
        // of the file, as a torn write would, though two synced records follow it.
        disk.corrupt_at_rest(&segment, second + 2);
        let error = RaftLogStore::open(disk.crash(), 1 << 20).unwrap_err();
        assert!(matches!(error, RaftLogError::DamagedAtRest(_)), "{error}");
    }

    #[test]
    fn a_torn_tail_is_still_cut() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk);
        let one = PartitionId(1);
        for index in 2..6 {
            log.stage_entries(one, vec![entry(index, 1)]);
            log.commit().unwrap();
        }
        let segment = crate::storage::prefixed_segment_name(RAFT_LOG_PREFIX, 0);
        let length = disk.read_all(&segment).unwrap().len() as u64;
        disk.corrupt_at_rest(&segment, length - 1);
        let (_, recovered) = open(&disk.crash());
        let indexes: Vec<u64> = recovered[&one]
            .entries
            .iter()
            .map(|entry| entry.index)
            .collect();
        assert_eq!(indexes, vec![2, 3, 4]);
    }

    /// Entries that arrive faster than rounds sync (a slow follower's pipeline of appends)
    /// used to make one record over the log's bound; now they are split and replay joins them.
    #[test]
    fn a_large_run_of_entries_is_written_in_bounded_records() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk);
        let one = PartitionId(1);
        let big = |index: u64| Entry {
            index,
            term: 2,
            kind: EntryKind::Command(vec![index as u8; 1 << 20]),
        };
        let entries: Vec<Entry> = (2..22).map(big).collect();
        log.stage_entries(one, entries.clone());
        log.commit().unwrap();
        let (_, recovered) = RaftLogStore::open(disk.crash(), 64 << 20).unwrap();
        assert_eq!(recovered[&one].entries, entries);
    }

    /// A checksummed record whose values no correct node writes refuses the open (as damage
    /// does), instead of reaching an assertion when the groups recover.
    #[test]
    fn records_with_impossible_values_refuse_the_open() {
        use crate::raft::message::TERM_MAX;
        let cases = [
            RaftLogRecord::Entries {
                partition: 1,
                entries: vec![entry(2, 1), entry(4, 1)],
            },
            RaftLogRecord::Entries {
                partition: 1,
                entries: vec![entry(2, 3), entry(3, 2)],
            },
            RaftLogRecord::Entries {
                partition: 1,
                entries: vec![entry(u64::MAX, 1)],
            },
            RaftLogRecord::HardState {
                partition: 1,
                hard_state: HardState {
                    term: TERM_MAX + 1,
                    vote: None,
                    commit: 0,
                },
            },
            RaftLogRecord::Base {
                partition: u64::MAX,
                index: 1,
                term: 1,
            },
        ];
        for record in cases {
            let disk = TestDisk::new();
            let (mut log, _) = open(&disk);
            log.staged.push(record.clone());
            log.commit().unwrap();
            let error = RaftLogStore::open(disk.crash(), 1 << 20).unwrap_err();
            assert!(
                matches!(error, RaftLogError::DamagedAtRest(_)),
                "{record:?}: {error}"
            );
        }
    }
}

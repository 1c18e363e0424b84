//! The event store's log: [`LogRecord`]s on the node-wide segmented log
//! (`crate::storage::segmented_log`) under the prefix `log-`.
//!
//! Invariant: the postcard encoding of [`LogRecord`] is the on-disk format; its variants are
//! only ever appended, never reordered or removed.

use crate::events::key::EventKey;
use crate::seams::SharedDisk;
use crate::storage::{
    parse_prefixed_segment_name, prefixed_segment_name, DamagePolicy, LogError, Recovery,
    SegmentedLog,
};
use serde::{Deserialize, Serialize};

/// The event store's segment prefix.
pub const EVENT_LOG_PREFIX: &str = "log-";

/// One entry of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    /// A write-once event stored under `key`.
    Event {
        key: EventKey,
        // As one byte string, not a sequence of u8: a memcpy instead of a loop per byte.
        #[serde(with = "serde_bytes")]
        event: Vec<u8>,
    },
    /// The events under `keys` are replicated; they leave the unconfirmed set.
    Confirm { keys: Vec<EventKey> },
    /// The consolidation interval starting at `start_micros` takes no more events.
    IntervalClosed { start_micros: u64 },
}

/// The event store's log.
pub type EventLog = SegmentedLog<LogRecord>;

/// The event store's segment file name.
pub fn segment_name(segment: u64) -> String {
    prefixed_segment_name(EVENT_LOG_PREFIX, segment)
}

/// The segment number in `name`, when it names a segment of the event log.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    parse_prefixed_segment_name(EVENT_LOG_PREFIX, name)
}

/// Recovers the event log from segment `first_segment` on (see [`SegmentedLog::open_with`]).
/// Damage is cut and counted, never refused: the event store re-replicates what it loses.
/// `torn_tails_are_damage` is set only by the canary bug of that name.
pub fn open(
    disk: SharedDisk,
    segment_bytes_max: u64,
    first_segment: u64,
    torn_tails_are_damage: bool,
) -> Result<(EventLog, Recovery<LogRecord>), LogError> {
    SegmentedLog::open_with(
        disk,
        EVENT_LOG_PREFIX,
        segment_bytes_max,
        first_segment,
        DamagePolicy::Truncate,
        torn_tails_are_damage,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::storage::test_disk::TestDisk;

    fn key(index: u32) -> EventKey {
        EventKey::from_parts(1_700_000_000_000_000, NodeId(1), index)
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(7), "log-0000000000000007.wal");
        assert_eq!(parse_segment_name("log-0000000000000007.wal"), Some(7));
        assert_eq!(parse_segment_name("raft-0000000000000007.wal"), None);
        assert_eq!(parse_segment_name("events.redb"), None);
    }

    #[test]
    fn every_kind_of_record_survives_a_crash_after_its_sync() {
        let disk = TestDisk::new();
        let (mut log, recovery) = open(disk.clone(), 1 << 20, 0, false).unwrap();
        assert!(recovery.records.is_empty());
        let batch = vec![
            LogRecord::Event {
                key: key(1),
                event: br#"{"a":1}"#.to_vec(),
            },
            LogRecord::Confirm { keys: vec![key(1)] },
            LogRecord::IntervalClosed { start_micros: 300 },
        ];
        log.append(&batch).unwrap();
        let (_, recovery) = open(disk.crash(), 1 << 20, 0, false).unwrap();
        assert_eq!(recovery.records, batch);
    }

    #[test]
    fn only_the_canary_takes_a_torn_tail_for_damage() {
        for torn_tails_are_damage in [false, true] {
            let disk = TestDisk::new();
            let (mut log, _) = open(disk.clone(), 1 << 20, 0, false).unwrap();
            log.append(&[LogRecord::IntervalClosed { start_micros: 1 }])
                .unwrap();
            crate::seams::Disk::append(disk.as_ref(), &segment_name(0), b"\x05\x00").unwrap();
            crate::seams::Disk::sync(disk.as_ref(), &segment_name(0)).unwrap();
            let (_, recovery) = open(disk.crash(), 1 << 20, 0, torn_tails_are_damage).unwrap();
            assert_eq!(recovery.records.len(), 1);
            assert_eq!(recovery.corrupt_records, u64::from(torn_tails_are_damage));
            assert_eq!(
                recovery.torn_tail_bytes,
                u64::from(!torn_tails_are_damage) * 2
            );
        }
    }
}

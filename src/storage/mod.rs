//! Storage shared by every durable store of a node, all on the `Disk` seam: the segmented,
//! checksummed write-ahead log (generic over its owner's record type) and redb's storage
//! backend. The event store and the partitions' Raft log and state machines build on these;
//! nothing here knows what they store.

pub mod redb_backend;
pub mod segmented_log;
#[cfg(test)]
pub(crate) mod test_disk;

pub use redb_backend::{prepare_database_file, DiskBackend};
pub use segmented_log::{
    decode_record, encode_record, parse_prefixed_segment_name, prefixed_segment_name, DamagePolicy,
    LogError, Recovery, SegmentedLog, Undecodable, RECORD_PAYLOAD_BYTES_MAX,
};

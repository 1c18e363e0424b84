//! A node-wide write-ahead log: append-only segment files `{prefix}{segment:016}.wal` holding
//! checksummed records of one owner's record type. The event store's log (`log-`,
//! `crate::events::log`) and the partitions' Raft log (`raft-`, `crate::partition::raft_log`)
//! share this framing and recovery.
//!
//! Framing: `[u32 LE payload length][u32 LE crc32c of payload][payload]`, payload = postcard
//! of a record. Invariants:
//! - a batch is one `append` and one `sync` (group commit), never split across segments;
//! - bytes that failed their checksum are never returned: a mismatch is re-read (read
//!   corruption is transient), and a persistent one ends the segment there;
//! - only the end of the last segment can legitimately hold a torn record (the unsynced batch
//!   of a crash), which is cut quietly; damage anywhere else (an earlier segment, or before a
//!   good record) is synced data lost: the segment is cut there too, but it is counted and
//!   logged loudly;
//! - a new segment's name is durable (`sync_directory`) before any record is written to it, so
//!   segment numbers on disk have no holes below the current one;
//! - a record is decoded into validated types (event keys included). One that passes its
//!   checksum but does not decode is handed to the log's owner under
//!   [`DamagePolicy::Truncate`] (the event store skips it, loudly and counted, when it has
//!   the shape of a known record with a value that fails validation, and refuses to open on
//!   an unknown shape, such as a newer build's record); under [`DamagePolicy::Refuse`] (the
//!   Raft log, where a skipped vote or entry could break safety) the open fails.

use crate::seams::{DiskError, SharedDisk};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;

const RECORD_HEADER_BYTES: u64 = 8;
/// A length above this is corruption, not a record: it bounds what a flipped length bit can
/// make recovery allocate.
pub const RECORD_PAYLOAD_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Re-reads of a record that failed its checksum before it is taken as damaged at rest.
const CHECKSUM_REREADS: u32 = 3;
const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_DIGITS: usize = 16;
/// Segment numbers have at most `SEGMENT_DIGITS` digits.
const SEGMENT_LIMIT: u64 = 10_000_000_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A record passed its checksum but does not decode, and the log was opened with
    /// [`DamagePolicy::Refuse`]: a format or programming error, not disk damage, so recovery
    /// refuses to guess.
    #[error("undecodable log record in {name} at offset {offset}: {message}")]
    Undecodable {
        name: String,
        offset: u64,
        message: String,
    },
    /// Synced records are damaged (a good record follows the damage) and the log was opened
    /// with [`DamagePolicy::Refuse`]: nothing was changed on disk.
    #[error("the log is damaged at rest in {name} at offset {offset} ({defect}): synced records are lost")]
    DamagedAtRest {
        name: String,
        offset: u64,
        defect: String,
    },
}

/// What recovery does with synced records that are damaged (not a torn tail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamagePolicy {
    /// Cut the segment at the damage and go on: the records after it are lost (the event
    /// store re-replicates what it loses). A record that checks out but does not decode is
    /// skipped and counted.
    Truncate,
    /// Refuse to open and change nothing: the damage is found again at every open, so a log
    /// whose losses cannot be repaired locally (a Raft log: lost votes and acknowledgements)
    /// never comes back silently shortened.
    Refuse,
}

/// A payload that passed its checksum but did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    pub segment: String,
    pub offset: u64,
    pub payload: Vec<u8>,
    pub error: String,
}

/// What recovery found in the segments it replayed.
#[derive(Debug)]
pub struct Recovery<R> {
    pub records: Vec<R>,
    /// Damaged places that were not a torn tail; the records after each are lost.
    pub corrupt_records: u64,
    /// Payloads that passed their checksum but did not decode into valid records, with the
    /// segment and offset they were found at, for the owner to judge (`Truncate` only).
    pub undecodable: Vec<Undecodable>,
    /// Bytes cut from the end of the last segment (a batch torn by a crash).
    pub torn_tail_bytes: u64,
}

impl<R> Default for Recovery<R> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            corrupt_records: 0,
            undecodable: Vec::new(),
            torn_tail_bytes: 0,
        }
    }
}

/// The file name of segment number `segment` of the log named by `prefix`.
pub fn prefixed_segment_name(prefix: &str, segment: u64) -> String {
    format!("{prefix}{segment:0SEGMENT_DIGITS$}{SEGMENT_SUFFIX}")
}

/// The segment number in `name`, when it names a segment of the log named by `prefix`.
pub fn parse_prefixed_segment_name(prefix: &str, name: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Frames one record: header then payload.
pub fn encode_record<R: Serialize>(record: &R, into: &mut Vec<u8>) {
    // The payload is serialised in place after a header placeholder, then the header is
    // filled in: no intermediate buffer per record.
    let header_at = into.len();
    into.extend_from_slice(&[0; 8]);
    let mut buffer = std::mem::take(into);
    buffer = postcard::to_extend(record, buffer).expect("log records always serialise");
    *into = buffer;
    let payload = &into[header_at + 8..];
    assert!(
        !payload.is_empty() && payload.len() as u64 <= RECORD_PAYLOAD_BYTES_MAX,
        "log record payload of {} bytes is outside (0, {RECORD_PAYLOAD_BYTES_MAX}]: callers bound record sizes",
        payload.len()
    );
    let length = (payload.len() as u32).to_le_bytes();
    let checksum = crc32c::crc32c(payload).to_le_bytes();
    into[header_at..header_at + 4].copy_from_slice(&length);
    into[header_at + 4..header_at + 8].copy_from_slice(&checksum);
}

/// The segmented log, positioned at the end of its last segment.
#[derive(Debug)]
pub struct SegmentedLog<R> {
    disk: SharedDisk,
    prefix: &'static str,
    segment_bytes_max: u64,
    segment: u64,
    /// `segment_name(segment)`, kept so an append formats nothing.
    segment_file: String,
    segment_len_bytes: u64,
    /// Reused for every batch, so an append allocates only when a batch outgrows the last.
    batch_buffer: Vec<u8>,
    damage_policy: DamagePolicy,
    /// True only under a canary's planted bug: recovery takes a torn tail for damage at rest.
    torn_tails_are_damage: bool,
    /// False only under a canary's planted bug: appends are written but never synced.
    sync_appends: bool,
    records: PhantomData<fn() -> R>,
}

impl<R: Serialize + DeserializeOwned> SegmentedLog<R> {
    /// Recovers the log: removes segments below `first_segment` (already checkpointed),
    /// replays the rest in order, repairs their damage, and positions for appending.
    pub fn open_prefixed(
        disk: SharedDisk,
        prefix: &'static str,
        segment_bytes_max: u64,
        first_segment: u64,
        damage_policy: DamagePolicy,
    ) -> Result<(SegmentedLog<R>, Recovery<R>), LogError> {
        Self::open_with(
            disk,
            prefix,
            segment_bytes_max,
            first_segment,
            damage_policy,
            false,
        )
    }

    /// `open_prefixed`; `torn_tails_are_damage` is set only by a canary's planted bug.
    pub fn open_with(
        disk: SharedDisk,
        prefix: &'static str,
        segment_bytes_max: u64,
        first_segment: u64,
        damage_policy: DamagePolicy,
        torn_tails_are_damage: bool,
    ) -> Result<(SegmentedLog<R>, Recovery<R>), LogError> {
        assert!(segment_bytes_max > 0, "segment_bytes_max must be positive");
        if first_segment >= SEGMENT_LIMIT {
            return Err(LogError::Disk(DiskError::io(
                "<checkpoint>",
                format!("checkpoint segment {first_segment} has more than {SEGMENT_DIGITS} digits"),
            )));
        }
        let mut segments = Vec::new();
        let mut removed_any = false;
        for name in disk.list()? {
            let Some(segment) = parse_prefixed_segment_name(prefix, &name) else {
                continue;
            };
            if segment < first_segment {
                disk.remove(&name)?;
                removed_any = true;
            } else {
                segments.push(segment);
            }
        }
        if removed_any {
            disk.sync_directory()?;
        }
        let mut log = SegmentedLog {
            disk,
            prefix,
            segment_bytes_max,
            segment: first_segment,
            segment_file: prefixed_segment_name(prefix, first_segment),
            segment_len_bytes: 0,
            batch_buffer: Vec::new(),
            damage_policy,
            torn_tails_are_damage,
            sync_appends: true,
            records: PhantomData,
        };
        let mut recovery = Recovery::default();
        let Some(&last) = segments.last() else {
            log.disk.create(&log.segment_file)?;
            log.disk.sync_directory()?;
            return Ok((log, recovery));
        };
        for (index, &segment) in segments.iter().enumerate() {
            if index > 0 && segment != segments[index - 1] + 1 {
                tracing::warn!(
                    after = segments[index - 1],
                    segment,
                    "log segments are missing between these two"
                );
            }
            let end = log.recover_segment(segment, segment == last, &mut recovery)?;
            if segment == last {
                log.segment = segment;
                log.segment_file = prefixed_segment_name(prefix, segment);
                log.segment_len_bytes = end;
            }
        }
        Ok((log, recovery))
    }

    /// The segment new records go to.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Appends `records` as one write and one sync, first rotating to a new segment when the
    /// batch would push a non-empty segment past `segment_bytes_max`. Returns the bytes
    /// appended. An error leaves the log in an unknown state: the caller must stop using it.
    pub fn append(&mut self, records: &[R]) -> Result<u64, DiskError> {
        let (batch_bytes, to_sync) = self.write(records)?;
        if let Some(file) = to_sync {
            self.disk.sync(&file)?;
        }
        Ok(batch_bytes)
    }

    /// Appends `records` as one write, as [`SegmentedLog::append`] does, but leaves the sync
    /// to the caller: returns the bytes appended and the file to sync before anything may
    /// count on them (`None` only under the canary `skip_log_sync`). Every earlier write is
    /// in a segment that was synced before this one was started, or in this file.
    pub fn write(&mut self, records: &[R]) -> Result<(u64, Option<String>), DiskError> {
        assert!(!records.is_empty(), "an empty batch has nothing to commit");
        let mut bytes = std::mem::take(&mut self.batch_buffer);
        bytes.clear();
        for record in records {
            encode_record(record, &mut bytes);
        }
        let batch_bytes = bytes.len() as u64;
        if self.segment_len_bytes > 0
            && self.segment_len_bytes + batch_bytes > self.segment_bytes_max
        {
            self.rotate()?;
        }
        let offset = self.disk.append(&self.segment_file, &bytes)?;
        self.batch_buffer = bytes;
        self.segment_len_bytes = offset + batch_bytes;
        let to_sync = self.sync_appends.then(|| self.segment_file.clone());
        Ok((batch_bytes, to_sync))
    }

    /// Syncs a segment file [`SegmentedLog::write`] named.
    pub fn sync_file(&self, file: &str) -> Result<(), DiskError> {
        self.disk.sync(file)
    }

    /// Plants the canary bug `skip_log_sync`: appends are written but never synced, so a
    /// power loss takes everything since the log was opened. Never outside a canary.
    pub fn plant_skip_sync(&mut self) {
        self.sync_appends = false;
    }

    /// Starts a new, empty segment and returns its number; the name is durable on return.
    pub fn rotate(&mut self) -> Result<u64, DiskError> {
        // Names hold 16 digits: a checkpoint record claiming more is damage, not a segment.
        let Some(next) = self
            .segment
            .checked_add(1)
            .filter(|next| *next < SEGMENT_LIMIT)
        else {
            return Err(DiskError::io(
                &self.segment_file,
                "log segment numbers are exhausted (or the checkpoint record is damaged)",
            ));
        };
        let next_file = prefixed_segment_name(self.prefix, next);
        self.disk.create(&next_file)?;
        self.disk.sync_directory()?;
        self.segment = next;
        self.segment_file = next_file;
        self.segment_len_bytes = 0;
        Ok(next)
    }

    /// Removes the segments numbered below `segment` (their records are checkpointed) and makes
    /// the removal durable. Returns how many were removed.
    pub fn remove_segments_below(&self, segment: u64) -> Result<usize, DiskError> {
        assert!(
            segment <= self.segment,
            "segment {segment} is past the current segment {}",
            self.segment
        );
        let mut removed = 0;
        for name in self.disk.list()? {
            if parse_prefixed_segment_name(self.prefix, &name)
                .is_some_and(|number| number < segment)
            {
                self.disk.remove(&name)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.disk.sync_directory()?;
        }
        Ok(removed)
    }

    /// Replays one segment into `recovery`, truncating it at the first damaged record.
    /// Returns the segment's length afterwards.
    fn recover_segment(
        &self,
        segment: u64,
        is_last: bool,
        recovery: &mut Recovery<R>,
    ) -> Result<u64, LogError> {
        let name = prefixed_segment_name(self.prefix, segment);
        // One read for the whole segment; only a record that fails its checks is read again.
        let bytes = self.disk.read_all(&name)?;
        let file_len = bytes.len() as u64;
        let mut offset = 0;
        while offset < file_len {
            let payload = match check_record(&bytes, offset) {
                Ok(payload) => payload.to_vec(),
                Err(defect) => match self.reread_record(&name, offset, file_len)? {
                    Some(payload) => payload,
                    None => {
                        // A torn write only ever hits the end of the last segment: a good record
                        // after the damage means synced data rotted, even in the last segment.
                        let torn = is_last
                            && !good_record_follows(&bytes, offset)
                            && !self.torn_tails_are_damage;
                        if !torn && self.damage_policy == DamagePolicy::Refuse {
                            return Err(LogError::DamagedAtRest {
                                name,
                                offset,
                                defect: format!("{defect:?}"),
                            });
                        }
                        self.cut_segment(&name, offset, file_len, torn, defect, recovery)?;
                        return Ok(offset);
                    }
                },
            };
            let length = payload.len() as u64;
            match decode_record::<R>(&payload) {
                Ok(record) => recovery.records.push(record),
                Err(error) if self.damage_policy == DamagePolicy::Truncate => {
                    recovery.undecodable.push(Undecodable {
                        segment: name.clone(),
                        offset,
                        payload,
                        error,
                    });
                }
                Err(message) => {
                    return Err(LogError::Undecodable {
                        name,
                        offset,
                        message,
                    })
                }
            }
            offset += RECORD_HEADER_BYTES + length;
        }
        Ok(file_len)
    }

    /// Reads the record at `offset` again, up to `CHECKSUM_REREADS` times, and returns its
    /// payload once it checks out, or `None` when it never does.
    fn reread_record(
        &self,
        name: &str,
        offset: u64,
        file_len: u64,
    ) -> Result<Option<Vec<u8>>, DiskError> {
        if file_len - offset < RECORD_HEADER_BYTES {
            // Read faults flip bits, they do not change lengths: a short header is final.
            return Ok(None);
        }
        for _ in 0..CHECKSUM_REREADS {
            let header = self
                .disk
                .read_at(name, offset, RECORD_HEADER_BYTES as usize)?;
            let (payload_len, checksum) = parse_header(&header);
            if payload_len == 0
                || payload_len > RECORD_PAYLOAD_BYTES_MAX
                || offset + RECORD_HEADER_BYTES + payload_len > file_len
            {
                continue;
            }
            let payload =
                self.disk
                    .read_at(name, offset + RECORD_HEADER_BYTES, payload_len as usize)?;
            if crc32c::crc32c(&payload) == checksum {
                return Ok(Some(payload));
            }
        }
        Ok(None)
    }

    /// Ends a segment at a damaged record: either the torn tail of a crash, or lost data.
    fn cut_segment(
        &self,
        name: &str,
        offset: u64,
        file_len: u64,
        torn: bool,
        defect: RecordDefect,
        recovery: &mut Recovery<R>,
    ) -> Result<(), DiskError> {
        let cut_bytes = file_len - offset;
        if torn {
            tracing::info!(
                segment = name,
                offset,
                cut_bytes,
                ?defect,
                "truncating the torn tail of the log"
            );
            recovery.torn_tail_bytes += cut_bytes;
        } else {
            tracing::warn!(
                segment = name,
                offset,
                cut_bytes,
                ?defect,
                "damaged record inside the log: truncating the segment, the records after it are lost"
            );
            recovery.corrupt_records += 1;
        }
        // Truncate so the damage is not found again and new appends never follow garbage.
        self.disk.truncate(name, offset)?;
        self.disk.sync(name)
    }
}

/// Decodes one record's payload into validated values; trailing bytes are refused too.
pub fn decode_record<R: DeserializeOwned>(payload: &[u8]) -> Result<R, String> {
    match postcard::take_from_bytes::<R>(payload) {
        Ok((record, [])) => Ok(record),
        Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
        Err(error) => Err(error.to_string()),
    }
}

/// Why a record did not check out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordDefect {
    /// The file ends inside the header or the payload.
    Short,
    /// The length is zero (no record encodes to nothing; zero-filled space looks like this)
    /// or above the bound.
    ImpossibleLength,
    ChecksumMismatch,
}

fn parse_header(header: &[u8]) -> (u64, u32) {
    let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let checksum = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    (u64::from(length), checksum)
}

/// Whether the damaged record at `offset` has a plausible length and a good record after it.
fn good_record_follows(bytes: &[u8], offset: u64) -> bool {
    let file_len = bytes.len() as u64;
    if file_len - offset < RECORD_HEADER_BYTES {
        return false;
    }
    let start = offset as usize;
    let (payload_len, _) = parse_header(&bytes[start..start + RECORD_HEADER_BYTES as usize]);
    let next = offset + RECORD_HEADER_BYTES + payload_len;
    if payload_len > 0
        && payload_len <= RECORD_PAYLOAD_BYTES_MAX
        && next < file_len
        && check_record(bytes, next).is_ok()
    {
        return true;
    }
    // The damaged header's length cannot be trusted (a rotted length bit makes synced data
    // look like a torn tail): look for a good record at any later offset. A crash only ever
    // cuts the end, so one found means the damage is not a torn write.
    (offset + 1..file_len.saturating_sub(RECORD_HEADER_BYTES))
        .any(|candidate| check_record(bytes, candidate).is_ok())
}

/// Checks the record at `offset` of a segment's bytes and returns its payload.
fn check_record(bytes: &[u8], offset: u64) -> Result<&[u8], RecordDefect> {
    let file_len = bytes.len() as u64;
    if file_len - offset < RECORD_HEADER_BYTES {
        return Err(RecordDefect::Short);
    }
    let start = offset as usize;
    let (payload_len, checksum) = parse_header(&bytes[start..start + RECORD_HEADER_BYTES as usize]);
    if payload_len == 0 || payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(RecordDefect::ImpossibleLength);
    }
    if file_len - offset - RECORD_HEADER_BYTES < payload_len {
        return Err(RecordDefect::Short);
    }
    let payload_start = start + RECORD_HEADER_BYTES as usize;
    let payload = &bytes[payload_start..payload_start + payload_len as usize];
    if crc32c::crc32c(payload) != checksum {
        return Err(RecordDefect::ChecksumMismatch);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::Disk;
    use crate::storage::test_disk::TestDisk;
    use serde::Deserialize;
    use std::sync::Arc;

    const PREFIX: &str = "test-";

    /// A record type of the tests' own: the log is generic over its owner's records.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    enum TestRecord {
        Put {
            index: u32,
            #[serde(with = "serde_bytes")]
            value: Vec<u8>,
        },
        Mark {
            index: u32,
        },
    }

    fn event(index: u32) -> TestRecord {
        TestRecord::Put {
            index,
            value: vec![index as u8; 20],
        }
    }

    fn segment_name(segment: u64) -> String {
        prefixed_segment_name(PREFIX, segment)
    }

    fn open_at(
        disk: &Arc<TestDisk>,
        segment_bytes_max: u64,
        first_segment: u64,
    ) -> (SegmentedLog<TestRecord>, Recovery<TestRecord>) {
        SegmentedLog::open_prefixed(
            disk.clone(),
            PREFIX,
            segment_bytes_max,
            first_segment,
            DamagePolicy::Truncate,
        )
        .unwrap()
    }

    fn open(
        disk: &Arc<TestDisk>,
        segment_bytes_max: u64,
    ) -> (SegmentedLog<TestRecord>, Recovery<TestRecord>) {
        open_at(disk, segment_bytes_max, 0)
    }

    fn framed_len(record: &TestRecord) -> u64 {
        let mut bytes = Vec::new();
        encode_record(record, &mut bytes);
        bytes.len() as u64
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(7), "test-0000000000000007.wal");
        assert_eq!(
            parse_prefixed_segment_name(PREFIX, "test-0000000000000007.wal"),
            Some(7)
        );
        assert_eq!(parse_prefixed_segment_name(PREFIX, "test-7.wal"), None);
        assert_eq!(
            parse_prefixed_segment_name(PREFIX, "log-0000000000000007.wal"),
            None
        );
        assert_eq!(parse_prefixed_segment_name(PREFIX, "events.redb"), None);
    }

    #[test]
    fn records_survive_a_crash_after_their_sync() {
        let disk = TestDisk::new();
        let (mut log, recovery) = open(&disk, 1 << 20);
        assert!(recovery.records.is_empty());
        let batch = vec![
            event(1),
            TestRecord::Mark { index: 1 },
            TestRecord::Mark { index: 300 },
        ];
        log.append(&batch).unwrap();
        assert_eq!(disk.syncs(PREFIX), 1, "one sync per batch");
        let disk = disk.crash();
        let (_, recovery) = open(&disk, 1 << 20);
        assert_eq!(recovery.records, batch);
    }

    #[test]
    fn rotation_never_splits_a_batch() {
        let disk = TestDisk::new();
        let record_bytes = framed_len(&event(0));
        let (mut log, _) = open(&disk, 3 * record_bytes);
        log.append(&[event(0), event(1)]).unwrap();
        log.append(&[event(2), event(3)]).unwrap();
        log.append(&[event(4)]).unwrap();
        assert_eq!(log.segment(), 1);
        assert_eq!(disk.len(&segment_name(0)).unwrap(), Some(2 * record_bytes));
        assert_eq!(disk.len(&segment_name(1)).unwrap(), Some(3 * record_bytes));
        let disk = disk.crash();
        let (log, recovery) = open(&disk, 3 * record_bytes);
        assert_eq!(recovery.records, (0..5).map(event).collect::<Vec<_>>());
        assert_eq!(log.segment(), 1);
        assert_eq!(log.remove_segments_below(1).unwrap(), 1);
        let (_, recovery) = open_at(&disk.crash(), 3 * record_bytes, 1);
        assert_eq!(recovery.records, (2..5).map(event).collect::<Vec<_>>());
    }

    #[test]
    fn torn_tails_are_cut_and_appends_continue_after_them() {
        for garbage in [
            &b"\x05\x00"[..],                           // a short header
            &b"\x20\x00\x00\x00\x01\x02\x03\x04ab"[..], // a short payload
            &[0u8; 16][..],                             // zero-filled space
            &b"\x02\x00\x00\x00\xde\xad\xbe\xefab"[..], // a wrong checksum
            &b"\xff\xff\xff\x7f\x00\x00\x00\x00"[..],   // an impossible length
        ] {
            let disk = TestDisk::new();
            let (mut log, _) = open(&disk, 1 << 20);
            log.append(&[event(1)]).unwrap();
            disk.append(&segment_name(0), garbage).unwrap();
            disk.sync(&segment_name(0)).unwrap();
            let disk = disk.crash();
            let (mut log, recovery) = open(&disk, 1 << 20);
            assert_eq!(recovery.records, vec![event(1)]);
            assert_eq!(recovery.torn_tail_bytes, garbage.len() as u64);
            assert_eq!(recovery.corrupt_records, 0);
            log.append(&[event(2)]).unwrap();
            let (_, recovery) = open(&disk.crash(), 1 << 20);
            assert_eq!(recovery.records, vec![event(1), event(2)]);
            assert_eq!(recovery.torn_tail_bytes, 0);
        }
    }

    #[test]
    fn transient_read_corruption_is_reread_never_accepted() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk, 1 << 20);
        log.append(&[event(1), event(2)]).unwrap();
        let second_payload_offset = framed_len(&event(1)) + RECORD_HEADER_BYTES + 3;
        // The whole-segment read and two re-reads see the flip; the third re-read is clean.
        disk.flip_on_read(&segment_name(0), second_payload_offset, 3);
        let (_, recovery) = open(&disk, 1 << 20);
        assert_eq!(recovery.records, vec![event(1), event(2)]);
        assert_eq!(recovery.torn_tail_bytes, 0);
        // A flip in a length field is re-read the same way.
        disk.flip_on_read(&segment_name(0), 2, 1);
        let (_, recovery) = open(&disk, 1 << 20);
        assert_eq!(recovery.records, vec![event(1), event(2)]);
    }

    #[test]
    fn a_record_that_never_checks_out_is_cut_not_returned() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk, 1 << 20);
        log.append(&[event(1), event(2)]).unwrap();
        let first_len = framed_len(&event(1));
        disk.flip_on_read(&segment_name(0), first_len + RECORD_HEADER_BYTES + 3, 4);
        let (_, recovery) = open(&disk, 1 << 20);
        assert_eq!(recovery.records, vec![event(1)]);
        assert_eq!(recovery.torn_tail_bytes, first_len);
        assert_eq!(disk.len(&segment_name(0)).unwrap(), Some(first_len));
    }

    #[test]
    fn rot_before_good_records_of_the_last_segment_is_lost_data_not_a_torn_tail() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk, 1 << 20);
        log.append(&[event(1)]).unwrap();
        log.append(&[event(2)]).unwrap();
        disk.corrupt_at_rest(&segment_name(0), RECORD_HEADER_BYTES + 2);
        let (_, recovery) = open(&disk, 1 << 20);
        assert_eq!(recovery.records, vec![]);
        assert_eq!(recovery.corrupt_records, 1);
        assert_eq!(recovery.torn_tail_bytes, 0);
        assert_eq!(disk.len(&segment_name(0)).unwrap(), Some(0));
    }

    #[test]
    fn damage_in_an_earlier_segment_is_counted_and_replay_continues() {
        let disk = TestDisk::new();
        let record_bytes = framed_len(&event(0));
        let (mut log, _) = open(&disk, 2 * record_bytes);
        log.append(&[event(0), event(1)]).unwrap();
        log.append(&[event(2), event(3)]).unwrap();
        assert_eq!(log.segment(), 1);
        disk.corrupt_at_rest(&segment_name(0), record_bytes + RECORD_HEADER_BYTES);
        let (_, recovery) = open(&disk, 2 * record_bytes);
        assert_eq!(recovery.records, vec![event(0), event(2), event(3)]);
        assert_eq!(recovery.corrupt_records, 1);
        assert_eq!(recovery.torn_tail_bytes, 0);
        assert_eq!(disk.len(&segment_name(0)).unwrap(), Some(record_bytes));
    }

    /// Frames `payload` as a record with a good checksum.
    fn checksummed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn a_checksummed_record_that_does_not_decode_is_handed_to_the_owner() {
        let disk = TestDisk::new();
        let (mut log, _) = open(&disk, 1 << 20);
        log.append(&[event(1)]).unwrap();
        // A known variant holding a value of another type: it checks out, it does not decode.
        #[derive(Serialize)]
        enum Unchecked {
            _Put,
            Mark { index: String },
        }
        let forged = postcard::to_stdvec(&Unchecked::Mark { index: "x".into() }).unwrap();
        disk.append(&segment_name(0), &checksummed(&forged))
            .unwrap();
        let mut tail = Vec::new();
        encode_record(&event(2), &mut tail);
        disk.append(&segment_name(0), &tail).unwrap();
        disk.sync(&segment_name(0)).unwrap();
        let disk = disk.crash();
        let (mut log, recovery) = open(&disk, 1 << 20);
        assert_eq!(recovery.records, vec![event(1), event(2)]);
        assert_eq!(recovery.undecodable.len(), 1);
        assert_eq!(recovery.undecodable[0].payload, forged);
        assert_eq!(recovery.corrupt_records, 0);
        log.append(&[event(3)]).unwrap();
        let (_, recovery) = open(&disk, 1 << 20);
        assert_eq!(recovery.records, vec![event(1), event(2), event(3)]);
    }

    #[test]
    fn a_checksummed_record_that_does_not_decode_is_refused_by_a_refusing_log() {
        let disk = TestDisk::new();
        let (_, _) = open(&disk, 1 << 20);
        disk.append(&segment_name(0), &checksummed(&[0xff, 0xff, 0xff]))
            .unwrap();
        let error = SegmentedLog::<TestRecord>::open_prefixed(
            disk.clone(),
            PREFIX,
            1 << 20,
            0,
            DamagePolicy::Refuse,
        )
        .unwrap_err();
        assert!(matches!(error, LogError::Undecodable { offset: 0, .. }));
    }
}

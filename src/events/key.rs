//! Event keys and their generator.
//!
//! A key is `TTTTTTTTTTTTTTTTT-NNNNNNNN-CCCCCCCC`: the coordinator's clock in microseconds since
//! the Unix epoch (17 decimal digits), its node id (8 hex digits) and a counter (8 hex digits).
//! Fixed width makes string order equal time order, and the node id makes keys unique across
//! nodes. Per node, keys are strictly increasing even when the clock stalls or steps back:
//! the generator never issues a timestamp below the last one it issued, and bumps the counter
//! within one clock tick.
//!
//! Across a restart the in-memory high-water mark is gone, and a clock that stepped back could
//! re-issue a key issued before the crash. So the generator reserves a window of time
//! durably (`keygen.reservation`) before issuing a key inside it, and a restarted generator
//! starts above the last reservation. That costs one extra sync every `RESERVATION_MICROS`, and
//! keys issued right after a restart may run up to that far ahead of the clock.

use crate::ids::NodeId;
use crate::seams::{Disk, DiskError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How far ahead one durable reservation reaches.
pub const RESERVATION_MICROS: u64 = 1_000_000;
const RESERVATION_FILE: &str = "keygen.reservation";
const RESERVATION_TEMPORARY_FILE: &str = "keygen.reservation.tmp";
const TIMESTAMP_DIGITS: usize = 17;
/// Timestamps a key can hold: 17 decimal digits of microseconds (until the year 5138).
pub const KEY_TIMESTAMP_MICROS_LIMIT: u64 = 100_000_000_000_000_000;
const KEY_LEN: usize = TIMESTAMP_DIGITS + 1 + 8 + 1 + 8;

/// A validated event key: only [`EventKey::parse`], [`EventKey::from_parts`] and the
/// `Deserialize` impl (which parses) make one, so every key in memory has the fixed layout
/// and the accessors below cannot fail on it. Keys arrive from clients, peers and the disk;
/// each is checked as it is decoded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EventKey(String);

impl<'de> Deserialize<'de> for EventKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        EventKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed event key {0:?}: expected TTTTTTTTTTTTTTTTT-NNNNNNNN-CCCCCCCC")]
pub struct MalformedKey(pub String);

impl EventKey {
    pub fn from_parts(timestamp_micros: u64, node: NodeId, counter: u32) -> Self {
        // The generator refuses such clocks; anything else passing one is our bug.
        assert!(
            timestamp_micros < KEY_TIMESTAMP_MICROS_LIMIT,
            "timestamp {timestamp_micros} does not fit an event key"
        );
        EventKey(format!(
            "{timestamp_micros:0width$}-{:08x}-{counter:08x}",
            node.0,
            width = TIMESTAMP_DIGITS
        ))
    }

    /// Parses and validates a key received from outside. The node field may be any 8 hex
    /// digits: it says which node issued the key, and keys issued by a node 0 before node ids
    /// were checked stay readable.
    pub fn parse(text: &str) -> Result<Self, MalformedKey> {
        // The error quotes at most the start of hostile input, which may be megabytes long.
        let malformed = || MalformedKey(text.chars().take(KEY_LEN + 8).collect());
        let bytes = text.as_bytes();
        if bytes.len() != KEY_LEN
            || bytes[TIMESTAMP_DIGITS] != b'-'
            || bytes[TIMESTAMP_DIGITS + 9] != b'-'
            || !bytes[..TIMESTAMP_DIGITS].iter().all(u8::is_ascii_digit)
        {
            return Err(malformed());
        }
        let hex_ok = |part: &[u8]| {
            part.iter()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte))
        };
        if !hex_ok(&bytes[TIMESTAMP_DIGITS + 1..TIMESTAMP_DIGITS + 9])
            || !hex_ok(&bytes[TIMESTAMP_DIGITS + 10..])
        {
            return Err(malformed());
        }
        Ok(EventKey(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn timestamp_micros(&self) -> u64 {
        // Every constructor checks the layout: 17 digits always fit a u64.
        self.0
            .get(..TIMESTAMP_DIGITS)
            .and_then(|digits| digits.parse().ok())
            .expect("keys are validated on construction")
    }

    pub fn node(&self) -> NodeId {
        let hex = self.0.get(TIMESTAMP_DIGITS + 1..TIMESTAMP_DIGITS + 9);
        NodeId(
            hex.and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .expect("keys are validated on construction"),
        )
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("the clock reads {0} µs since the epoch, beyond what an event key can hold")]
    ClockOutOfRange(u64),
}

/// Issues unique, increasing keys for one node.
#[derive(Debug)]
pub struct KeyGenerator {
    node: NodeId,
    last_timestamp_micros: u64,
    counter: u32,
    /// Keys may be issued with timestamps strictly below this; durable on disk.
    reserved_until_micros: u64,
}

impl KeyGenerator {
    /// Recovers the generator: the first key it issues is above every key issued before a crash.
    pub fn open(node: NodeId, disk: &dyn Disk) -> Result<Self, DiskError> {
        let reserved_until_micros = match disk.len(RESERVATION_FILE)? {
            None => 0,
            Some(_) => {
                let bytes = disk.read_all(RESERVATION_FILE)?;
                decode_reservation(&bytes).ok_or_else(|| {
                    DiskError::io(RESERVATION_FILE, "corrupt key reservation record")
                })?
            }
        };
        Ok(Self {
            node,
            // Every timestamp below the old reservation may have been used.
            last_timestamp_micros: reserved_until_micros,
            counter: 0,
            reserved_until_micros,
        })
    }

    /// Forgets the durable reservation, as if nothing had been issued before: the bug the
    /// key canary plants (a restart after a backwards clock step re-issues old keys).
    pub fn forget_reservation(&mut self) {
        self.last_timestamp_micros = 0;
        self.reserved_until_micros = 0;
    }

    /// The next key at local time `now_micros`. Syncs a new reservation when the current one
    /// does not cover the key.
    pub fn next(&mut self, now_micros: u64, disk: &dyn Disk) -> Result<EventKey, KeyError> {
        let (timestamp_micros, counter) = if now_micros > self.last_timestamp_micros {
            (now_micros, 0)
        } else if self.counter == u32::MAX {
            (self.last_timestamp_micros + 1, 0)
        } else {
            (self.last_timestamp_micros, self.counter + 1)
        };
        if timestamp_micros >= KEY_TIMESTAMP_MICROS_LIMIT {
            return Err(KeyError::ClockOutOfRange(timestamp_micros));
        }
        if timestamp_micros >= self.reserved_until_micros {
            let until = timestamp_micros + RESERVATION_MICROS;
            write_reservation(disk, until)?;
            self.reserved_until_micros = until;
        }
        self.last_timestamp_micros = timestamp_micros;
        self.counter = counter;
        Ok(EventKey::from_parts(timestamp_micros, self.node, counter))
    }
}

fn encode_reservation(until_micros: u64) -> Vec<u8> {
    let mut bytes = until_micros.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    bytes
}

fn decode_reservation(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 12 {
        return None;
    }
    let (value, checksum) = bytes.split_at(8);
    if crc32c::crc32c(value).to_le_bytes() != checksum {
        return None;
    }
    Some(u64::from_le_bytes(value.try_into().ok()?))
}

/// Replaces the reservation atomically: write a temporary file, sync it, rename, sync the
/// directory. A crash leaves either the old or the new record, never a torn one.
fn write_reservation(disk: &dyn Disk, until_micros: u64) -> Result<(), DiskError> {
    disk.remove(RESERVATION_TEMPORARY_FILE)?;
    disk.create(RESERVATION_TEMPORARY_FILE)?;
    disk.write_at(
        RESERVATION_TEMPORARY_FILE,
        0,
        &encode_reservation(until_micros),
    )?;
    disk.sync(RESERVATION_TEMPORARY_FILE)?;
    disk.rename(RESERVATION_TEMPORARY_FILE, RESERVATION_FILE)?;
    disk.sync_directory()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_round_trip() {
        let key = EventKey::from_parts(1_763_000_000_123_456, NodeId(42), 9);
        assert_eq!(key.as_str(), "01763000000123456-0000002a-00000009");
        assert_eq!(key.timestamp_micros(), 1_763_000_000_123_456);
        assert_eq!(key.node(), NodeId(42));
        assert_eq!(EventKey::parse(key.as_str()), Ok(key));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for text in [
            "",
            "01763000000123456-0000002a-0000000",
            "01763000000123456_0000002a-00000009",
            "0176300000012345x-0000002a-00000009",
            "01763000000123456-0000002A-00000009",
        ] {
            assert!(EventKey::parse(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn decoding_validates_keys() {
        let key = EventKey::from_parts(1_763_000_000_123_456, NodeId(42), 9);
        let bytes = postcard::to_stdvec(&key).unwrap();
        assert_eq!(postcard::from_bytes::<EventKey>(&bytes), Ok(key.clone()));
        // The wire and disk encoding is a plain string.
        assert_eq!(bytes, postcard::to_stdvec(key.as_str()).unwrap());
        let forged = postcard::to_stdvec("x").unwrap();
        assert!(postcard::from_bytes::<EventKey>(&forged).is_err());
        assert!(serde_json::from_str::<EventKey>("\"x\"").is_err());
        assert_eq!(
            serde_json::from_str::<EventKey>(&format!("\"{key}\"")).unwrap(),
            key
        );
    }

    #[test]
    fn reservation_round_trip_and_corruption() {
        let bytes = encode_reservation(123);
        assert_eq!(decode_reservation(&bytes), Some(123));
        let mut corrupt = bytes.clone();
        corrupt[0] ^= 1;
        assert_eq!(decode_reservation(&corrupt), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::storage::test_disk::TestDisk;
    use proptest::prelude::*;

    proptest! {
        /// Keys are unique and strictly increasing per node whatever the clock does, across
        /// crashes too, and string order is numeric order.
        #[test]
        fn keys_unique_and_ordered(
            steps in proptest::collection::vec((-3_000_000i64..3_000_000, any::<bool>()), 1..200),
        ) {
            let mut disk = TestDisk::new();
            let mut generator = KeyGenerator::open(NodeId(9), disk.as_ref()).unwrap();
            let mut clock: i64 = 1_700_000_000_000_000;
            let mut issued: Vec<EventKey> = Vec::new();
            for (step, crash) in steps {
                clock += step;
                if crash {
                    disk = disk.crash();
                    generator = KeyGenerator::open(NodeId(9), disk.as_ref()).unwrap();
                }
                let key = generator.next(clock as u64, disk.as_ref()).unwrap();
                prop_assert_eq!(key.node(), NodeId(9));
                if let Some(last) = issued.last() {
                    prop_assert!(key > *last, "{} after {}", key, last);
                    prop_assert!(key.timestamp_micros() >= last.timestamp_micros());
                }
                issued.push(key);
            }
        }
    }

    #[test]
    fn keys_of_different_nodes_never_collide() {
        let disk = TestDisk::new();
        let other_disk = TestDisk::new();
        let mut first = KeyGenerator::open(NodeId(1), disk.as_ref()).unwrap();
        let mut second = KeyGenerator::open(NodeId(2), other_disk.as_ref()).unwrap();
        let now = 1_700_000_000_000_000;
        for _ in 0..100 {
            assert_ne!(
                first.next(now, disk.as_ref()).unwrap(),
                second.next(now, other_disk.as_ref()).unwrap()
            );
        }
    }
}

//! Consolidation intervals: the fixed time buckets the event store groups events into.
//!
//! Owns the interval names (ISO 8601 durations, as AllData configures them) and the bucket
//! arithmetic. Invariant: bucket boundaries are multiples of the length since the Unix epoch,
//! so they fall on UTC boundaries and every node computes the same buckets for the same key,
//! whatever its time zone or start time.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

const MINUTE_MICROS: u64 = 60 * 1_000_000;

/// The length of one consolidation interval, named as an ISO 8601 duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConsolidationInterval {
    PT5M,
    PT15M,
    PT1H,
    PT3H,
    P1D,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid consolidation interval \"{0}\": expected PT5M, PT15M, PT1H, PT3H or P1D")]
pub struct InvalidConsolidationInterval(pub String);

impl ConsolidationInterval {
    pub const ALL: [ConsolidationInterval; 5] = [
        ConsolidationInterval::PT5M,
        ConsolidationInterval::PT15M,
        ConsolidationInterval::PT1H,
        ConsolidationInterval::PT3H,
        ConsolidationInterval::P1D,
    ];

    pub fn parse(text: &str) -> Result<Self, InvalidConsolidationInterval> {
        Self::ALL
            .into_iter()
            .find(|interval| interval.as_str() == text)
            .ok_or_else(|| InvalidConsolidationInterval(text.to_string()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConsolidationInterval::PT5M => "PT5M",
            ConsolidationInterval::PT15M => "PT15M",
            ConsolidationInterval::PT1H => "PT1H",
            ConsolidationInterval::PT3H => "PT3H",
            ConsolidationInterval::P1D => "P1D",
        }
    }

    pub fn length_micros(self) -> u64 {
        match self {
            ConsolidationInterval::PT5M => 5 * MINUTE_MICROS,
            ConsolidationInterval::PT15M => 15 * MINUTE_MICROS,
            ConsolidationInterval::PT1H => 60 * MINUTE_MICROS,
            ConsolidationInterval::PT3H => 3 * 60 * MINUTE_MICROS,
            ConsolidationInterval::P1D => 24 * 60 * MINUTE_MICROS,
        }
    }

    /// The start of the interval holding `timestamp_micros` (floor to the epoch-aligned grid).
    pub fn start_of(self, timestamp_micros: u64) -> u64 {
        timestamp_micros - timestamp_micros % self.length_micros()
    }
}

impl fmt::Display for ConsolidationInterval {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for ConsolidationInterval {
    type Err = InvalidConsolidationInterval;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

// Serialised as the ISO name, so configuration files and the wire read like AllData's.
impl Serialize for ConsolidationInterval {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConsolidationInterval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for interval in ConsolidationInterval::ALL {
            assert_eq!(
                ConsolidationInterval::parse(interval.as_str()),
                Ok(interval)
            );
            assert_eq!(interval.to_string().parse(), Ok(interval));
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_expected_message() {
        let error = ConsolidationInterval::parse("PT10M").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid consolidation interval \"PT10M\": expected PT5M, PT15M, PT1H, PT3H or P1D"
        );
        assert!(ConsolidationInterval::parse("pt5m").is_err());
        assert!(ConsolidationInterval::parse("").is_err());
    }

    #[test]
    fn lengths() {
        assert_eq!(ConsolidationInterval::PT5M.length_micros(), 300_000_000);
        assert_eq!(ConsolidationInterval::PT15M.length_micros(), 900_000_000);
        assert_eq!(ConsolidationInterval::PT1H.length_micros(), 3_600_000_000);
        assert_eq!(ConsolidationInterval::PT3H.length_micros(), 10_800_000_000);
        assert_eq!(ConsolidationInterval::P1D.length_micros(), 86_400_000_000);
    }

    #[test]
    fn start_of_floors_to_utc_boundaries() {
        // 2025-11-13T02:13:20.123456Z
        let timestamp_micros = 1_763_000_000_123_456;
        // 2025-11-13T00:00:00Z
        assert_eq!(
            ConsolidationInterval::P1D.start_of(timestamp_micros),
            1_762_992_000_000_000
        );
        // 2025-11-13T00:00:00Z as well: 3-hour buckets start at 00, 03, 06... UTC
        assert_eq!(
            ConsolidationInterval::PT3H.start_of(timestamp_micros),
            1_762_992_000_000_000
        );
        // 2025-11-13T02:10:00Z
        assert_eq!(
            ConsolidationInterval::PT5M.start_of(timestamp_micros),
            1_763_000_000_000_000 - 200_000_000
        );
        let start = ConsolidationInterval::PT15M.start_of(timestamp_micros);
        assert_eq!(ConsolidationInterval::PT15M.start_of(start), start);
        assert_eq!(ConsolidationInterval::PT15M.start_of(0), 0);
    }

    #[test]
    fn serde_uses_the_name() {
        let bytes = postcard::to_allocvec(&ConsolidationInterval::PT1H).unwrap();
        assert_eq!(bytes, b"\x04PT1H");
        let back: ConsolidationInterval = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ConsolidationInterval::PT1H);
        assert!(postcard::from_bytes::<ConsolidationInterval>(b"\x04PT2H").is_err());
    }
}

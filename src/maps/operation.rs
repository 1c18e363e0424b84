//! What a partition's map carries in the log and answers: [`MapOperation`]s (set, delete),
//! their [`MapOutcome`]s, [`MapQuery`]s and [`MapAnswer`]s, and the [`MapChange`] every
//! committed change becomes, numbered by the map's next revision.
//!
//! The postcard encodings are the log and wire formats: variants are only ever appended.

use crate::maps::value::{MapKey, MapValue};
use serde::{Deserialize, Serialize};

/// A write to a map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapOperation {
    Set { key: MapKey, value: MapValue },
    Delete { key: MapKey },
}

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapOutcome {
    /// The change took this revision.
    Changed { revision: u64 },
    /// A delete of a key the map did not hold: no change, no revision (the map's is given).
    Missing { revision: u64 },
    /// The map would grow past its size limit; nothing changed.
    Full { entries_bytes: u64 },
}

/// A committed change to a map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapChange {
    pub revision: u64,
    pub key: MapKey,
    pub kind: ChangeKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Set { value: MapValue },
    Delete { old_value: MapValue },
}

/// A read of a map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapQuery {
    Get {
        key: MapKey,
    },
    /// Every entry, with the revision they are at.
    Entries,
    /// What a feed needs next: the changes after revision `after`, or the whole map when
    /// `after` is `None` or its history was compacted.
    Feed {
        after: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapAnswer {
    Value {
        value: Option<MapValue>,
        revision: u64,
    },
    Entries(MapEntries),
    Feed(FeedRead),
}

/// A whole map at one revision, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntries {
    pub revision: u64,
    pub entries: Vec<(MapKey, MapValue)>,
}

/// What a replica answers a feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedRead {
    /// The changes right after the asked revision, in order (at most a read's worth; none
    /// when the map is still there), and the map's revision.
    Changes {
        changes: Vec<MapChange>,
        revision: u64,
    },
    /// The whole map: no revision was asked for, or the changes after it were compacted.
    Snapshot(MapEntries),
    /// This replica has not applied the asked revision yet.
    Behind { revision: u64 },
}

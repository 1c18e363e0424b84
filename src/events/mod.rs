//! The AllData event store: write-once events, keyed by time, replicated across zones and
//! regions by the event coordinator (`crate::coordinator`).

mod interval;
pub(crate) mod json;
mod key;
pub mod log;
mod store;

pub use interval::{ConsolidationInterval, InvalidConsolidationInterval};
pub use json::{check_event_json, InvalidJson, JSON_DEPTH_MAX};
pub use key::{
    EventKey, KeyError, KeyGenerator, MalformedKey, KEY_TIMESTAMP_MICROS_LIMIT, RESERVATION_MICROS,
};
pub use store::{
    CommitReport, EventStore, IntervalClosed, IntervalSummary, StageOutcome, StoreConfig,
    StoreError, StoreStats,
};

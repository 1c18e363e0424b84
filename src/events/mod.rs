//! The AllData event store: write-once events, keyed by time, replicated across zones and
//! regions by the event coordinator (`crate::coordinator`).

mod key;

pub use key::{EventKey, KeyGenerator, MalformedKey, RESERVATION_MICROS};

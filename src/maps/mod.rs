//! Shared maps (the distributed-map system): each partition holds one map of JSON values by
//! text key whose committed changes carry revisions (`machine`), with the checked keys and
//! values (`value`) and the operations, queries and changes a map's log and feeds carry
//! (`operation`).

pub mod machine;
pub mod operation;
pub mod value;

pub use machine::{MapImage, MapStateMachine};
pub use operation::{
    ChangeKind, FeedRead, MapAnswer, MapChange, MapEntries, MapOperation, MapOutcome, MapQuery,
};
pub use value::{InvalidMapData, MapKey, MapValue};

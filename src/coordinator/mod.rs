//! The event coordinator: for each event a node receives, the replica write that places it,
//! counts acknowledgements against the request's commit level, and "gets it done" by
//! re-spreading failed replicas to unused peers until the replication factor holds.

mod commit_level;
mod replica_write;

pub use commit_level::CommitLevel;
pub use replica_write::{PutError, ReplicaWrite, WriteAction};

//! The event coordinator: for each event a node receives, the replica write that places it,
//! counts acknowledgements against the request's commit level, and "gets it done" by
//! re-spreading failed replicas to unused peers until the replication factor holds.
//! `event_coordinator` is one node's coordinator whole (its store, peers, writes, repairs);
//! `replica_write` one write's state machine; `commit_level` the levels a client asks for.
//!
//! For Borough's named partitions: `cluster_machine` is the state machine a cluster node's
//! partitions run (the directory in the system partition, the key-value store elsewhere);
//! `cluster` a node's membership (bootstrap, joins, the directory's group, creating the
//! replicas the directory places on it); `router` the routing of any request for a partition
//! name to the partition's leader; `moves` the next step of a partition's move towards the
//! replica set the ring gives it.

pub mod cluster;
pub mod cluster_machine;
mod commit_level;
mod event_coordinator;
pub mod moves;
pub mod placement;
mod replica_write;
pub mod router;

pub use commit_level::CommitLevel;
pub use event_coordinator::{
    CoordinatorConfig, CoordinatorCounters, CoordinatorOutput, EventCoordinator, PlantedBug,
};
pub use replica_write::{PutError, ReplicaWrite, WriteAction};

#[cfg(test)]
mod tests;

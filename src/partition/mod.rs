//! Borough partitions: each one a Raft group whose state machine is any kind that implements
//! [`state_machine::StateMachine`] (the ordered key-value store, `kv_store`, is the first).
//! `command` is what the log carries, `replica_store` the state of every partition of a node
//! in one embedded database (applied points and at-most-once sessions for every kind alike),
//! `raft_log` the node-wide Raft log, `envelope` a round's messages to a peer, `route` a
//! request routed to a partition's leader by another node and its answer, and `host` the
//! driver of every group in rounds.

pub mod command;
pub mod envelope;
pub mod host;
pub mod kv_store;
mod pending;
pub mod raft_log;
pub mod replica_store;
pub mod route;
pub mod state_machine;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A partition's id: also its key prefix in the node's shared tables. Ids stay below
/// `u64::MAX` (the tables bound a partition's keys by the next id), which decoding checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PartitionId(pub u64);

impl<'de> Deserialize<'de> for PartitionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = u64::deserialize(deserializer)?;
        if id == u64::MAX {
            return Err(serde::de::Error::custom(
                "partition id u64::MAX is reserved",
            ));
        }
        Ok(PartitionId(id))
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "p{}", self.0)
    }
}

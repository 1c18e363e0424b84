//! Borough partitions: each one a Raft group whose state machine is an ordered key-value
//! store. `command` is what the log carries, `kv_store` the state machines of all partitions
//! of a node in one embedded database.

pub mod command;
pub mod host;
pub mod kv_store;
mod pending;
pub mod raft_log;

#[cfg(test)]
mod host_tests;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A partition's id: also its key prefix in the node's shared tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u64);

impl fmt::Display for PartitionId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "p{}", self.0)
    }
}

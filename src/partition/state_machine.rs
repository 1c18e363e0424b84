//! The replicated state machine a partition runs: the one trait the partition host drives.
//!
//! Every partition of a node keeps its state in the node's one redb database
//! (`partitions.redb`), beside what the host keeps for all kinds alike (each partition's
//! applied point, the at-most-once session table: see `replica_store`). The host opens the
//! write transaction of a round and hands it to the state machine, so a command's effect, the
//! partition's applied point and its session window always commit together.
//!
//! What an implementation must keep:
//! - determinism: applying the same commands in the same order from the same state gives the
//!   same state and outcomes on every replica (no clock, no randomness; what it keeps in memory
//!   it derives from its tables, loads in `open_tables`, and changes only beside them);
//! - a partition's state lives under its id only: nothing a partition applies, installs or
//!   replaces touches another partition's keys;
//! - `apply` is all or nothing per command inside the transaction it is given (an error
//!   aborts the round's transaction and poisons the host), and a command that passed
//!   `validate` never fails for its own content: a refusal is an outcome, not an error;
//! - `install_snapshot` replaces the partition's whole state with the image; an image that
//!   passed `check_image` installs;
//! - `check_image` refuses anything `install_snapshot` could not take, since images come from
//!   peers.

use crate::partition::PartitionId;
use crate::seams::DiskError;
use redb::{ReadTransaction, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

/// Errors of the partition store and its state machines.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateMachineError {
    /// The wording Borough has always used for a missing key.
    #[error("Key not found in database")]
    KeyNotFound,
    #[error("partition {0} is not on this node")]
    UnknownPartition(PartitionId),
    #[error("the partition store is poisoned by an earlier write failure ({0}); restart the node")]
    Poisoned(String),
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("corrupt partition store: {0}")]
    Corrupt(String),
}

/// An error of the embedded engine, as a state machine reports it.
pub fn engine_error(error: impl Into<redb::Error>) -> StateMachineError {
    StateMachineError::Engine(error.into().to_string())
}

/// One kind of replicated state. Implementations: the key-value store
/// (`crate::partition::kv_store::KvStateMachine`), the cluster directory
/// (`crate::directory::DirectoryStateMachine`) and the simulator's counter.
pub trait StateMachine: fmt::Debug {
    /// A write, as its command carries it in the log. Its postcard encoding is the log
    /// format: only ever extended, never reordered.
    type Operation: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned;
    /// What applying a write tells its proposer. Outcomes, queries and answers travel
    /// between nodes as postcard when a request is routed (`crate::partition::route`).
    type Outcome: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned;
    /// A read.
    type Query: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned;
    /// A read's answer.
    type Answer: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned;

    /// Creates this kind's tables (in a new database, or checks an existing one has them),
    /// and loads whatever it keeps in memory from them.
    fn open_tables(&mut self, transaction: &WriteTransaction) -> Result<(), StateMachineError>;

    /// Checks a write before it is proposed: what passes here always applies.
    fn validate(&self, operation: &Self::Operation) -> Result<(), String>;

    /// Applies one committed write of `partition`, the entry at `index`.
    fn apply(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        index: u64,
        operation: &Self::Operation,
    ) -> Result<Self::Outcome, StateMachineError>;

    /// Answers a read from the partition's state at its applied index (the host serves a
    /// read only once the partition applied up to the read's index).
    fn read(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
        query: &Self::Query,
    ) -> Result<Self::Answer, StateMachineError>;

    /// The partition's whole state, as an image a replica installs.
    fn take_snapshot(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<Vec<u8>, StateMachineError>;

    /// Checks an image received from a peer before it is installed (a plain function: every
    /// Raft group checks received images with it).
    fn check_image(image: &[u8]) -> Result<(), String>;

    /// Replaces the partition's state with `image`.
    fn install_snapshot(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        image: &[u8],
    ) -> Result<(), StateMachineError>;

    /// Deletes everything the partition holds here: its replica left this node.
    fn remove_partition(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
    ) -> Result<(), StateMachineError>;

    /// For the canary bug `split_batches` only: the pieces a write would be if it were not
    /// atomic (a batch's operations one by one). A kind without batches keeps it whole.
    fn split_for_canary(&self, operation: Self::Operation) -> Vec<Self::Operation> {
        vec![operation]
    }

    /// The bytes of keys and values the partition holds: what moving it would copy.
    fn size_bytes(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<u64, StateMachineError>;
}

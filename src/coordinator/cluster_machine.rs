//! The state machine a cluster node's partitions run: the directory in the system partition
//! and the key-value store in every named partition, behind the one `StateMachine` trait.
//!
//! Invariants: a directory command takes effect only in [`SYSTEM_PARTITION`] and a key-value
//! command only outside it; a misplaced command (which only a forged or mistaken proposal can
//! make) is refused the same way by every replica and changes nothing. A partition's image
//! carries both kinds' images, so one that holds either kind moves whole.

use crate::directory::{
    DirectoryAnswer, DirectoryOperation, DirectoryOutcome, DirectoryQuery, DirectoryStateMachine,
    SYSTEM_PARTITION,
};
use crate::partition::command::KvOperation;
use crate::partition::kv_store::{KvStateMachine, ReadAnswer, ReadRequest, WriteOutcome};
use crate::partition::state_machine::{StateMachine, StateMachineError};
use crate::partition::PartitionId;
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

/// A write of either kind. The variant order is the log format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterOperation {
    Kv(KvOperation),
    Directory(DirectoryOperation),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterOutcome {
    Kv(WriteOutcome),
    Directory(DirectoryOutcome),
    /// A directory command outside the system partition, or a key-value command inside it.
    Misplaced,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterQuery {
    Kv(ReadRequest),
    Directory(DirectoryQuery),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterAnswer {
    Kv(ReadAnswer),
    Directory(DirectoryAnswer),
}

/// Both kinds' images of one partition (the kind it does not run is empty).
#[derive(Debug, Serialize, Deserialize)]
struct ClusterImage {
    #[serde(with = "serde_bytes")]
    kv: Vec<u8>,
    #[serde(with = "serde_bytes")]
    directory: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct ClusterStateMachine {
    kv: KvStateMachine,
    directory: DirectoryStateMachine,
}

impl ClusterStateMachine {
    pub fn directory(&self) -> &DirectoryStateMachine {
        &self.directory
    }

    pub fn directory_mut(&mut self) -> &mut DirectoryStateMachine {
        &mut self.directory
    }
}

fn image_error(error: postcard::Error) -> StateMachineError {
    StateMachineError::Corrupt(format!("partition image: {error}"))
}

impl StateMachine for ClusterStateMachine {
    type Operation = ClusterOperation;
    type Outcome = ClusterOutcome;
    type Query = ClusterQuery;
    type Answer = ClusterAnswer;

    fn open_tables(&mut self, transaction: &WriteTransaction) -> Result<(), StateMachineError> {
        self.kv.open_tables(transaction)?;
        self.directory.open_tables(transaction)
    }

    fn validate(&self, operation: &ClusterOperation) -> Result<(), String> {
        match operation {
            ClusterOperation::Kv(operation) => self.kv.validate(operation),
            ClusterOperation::Directory(operation) => self.directory.validate(operation),
        }
    }

    fn apply(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        index: u64,
        operation: &ClusterOperation,
    ) -> Result<ClusterOutcome, StateMachineError> {
        let in_system = partition == SYSTEM_PARTITION;
        Ok(match operation {
            ClusterOperation::Kv(operation) if !in_system => {
                ClusterOutcome::Kv(self.kv.apply(transaction, partition, index, operation)?)
            }
            ClusterOperation::Directory(operation) if in_system => ClusterOutcome::Directory(
                self.directory
                    .apply(transaction, partition, index, operation)?,
            ),
            ClusterOperation::Kv(_) | ClusterOperation::Directory(_) => ClusterOutcome::Misplaced,
        })
    }

    fn read(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
        query: &ClusterQuery,
    ) -> Result<ClusterAnswer, StateMachineError> {
        match query {
            ClusterQuery::Kv(query) => self
                .kv
                .read(transaction, partition, query)
                .map(ClusterAnswer::Kv),
            ClusterQuery::Directory(query) => self
                .directory
                .read(transaction, partition, query)
                .map(ClusterAnswer::Directory),
        }
    }

    fn take_snapshot(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<Vec<u8>, StateMachineError> {
        let image = ClusterImage {
            kv: self.kv.take_snapshot(transaction, partition)?,
            directory: self.directory.take_snapshot(transaction, partition)?,
        };
        Ok(postcard::to_stdvec(&image).expect("images serialise"))
    }

    fn check_image(image: &[u8]) -> Result<(), String> {
        let image: ClusterImage =
            postcard::from_bytes(image).map_err(|error| format!("partition image: {error}"))?;
        KvStateMachine::check_image(&image.kv)?;
        DirectoryStateMachine::check_image(&image.directory)
    }

    fn install_snapshot(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        image: &[u8],
    ) -> Result<(), StateMachineError> {
        let image: ClusterImage = postcard::from_bytes(image).map_err(image_error)?;
        self.kv
            .install_snapshot(transaction, partition, &image.kv)?;
        self.directory
            .install_snapshot(transaction, partition, &image.directory)
    }

    fn remove_partition(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
    ) -> Result<(), StateMachineError> {
        self.kv.remove_partition(transaction, partition)?;
        self.directory.remove_partition(transaction, partition)
    }

    fn split_for_canary(&self, operation: ClusterOperation) -> Vec<ClusterOperation> {
        match operation {
            ClusterOperation::Kv(operation) => self
                .kv
                .split_for_canary(operation)
                .into_iter()
                .map(ClusterOperation::Kv)
                .collect(),
            operation => vec![operation],
        }
    }

    fn size_bytes(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<u64, StateMachineError> {
        Ok(self.kv.size_bytes(transaction, partition)?
            + self.directory.size_bytes(transaction, partition)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{ClusterName, ClusterSettings, Member, PartitionName};
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    fn bootstrap() -> ClusterOperation {
        ClusterOperation::Directory(DirectoryOperation::Bootstrap {
            settings: ClusterSettings::new(ClusterName::new("test").unwrap()),
            first: Member::for_test(1, "z"),
        })
    }

    fn put() -> ClusterOperation {
        ClusterOperation::Kv(KvOperation::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        })
    }

    #[test]
    fn each_kind_applies_only_where_it_belongs() {
        let database = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let mut machine = ClusterStateMachine::default();
        let user = PartitionId(3);
        let transaction = database.begin_write().unwrap();
        machine.open_tables(&transaction).unwrap();
        let outcomes: Vec<ClusterOutcome> = [
            (SYSTEM_PARTITION, put()),
            (user, bootstrap()),
            (SYSTEM_PARTITION, bootstrap()),
            (user, put()),
        ]
        .iter()
        .enumerate()
        .map(|(index, (partition, operation))| {
            machine
                .apply(&transaction, *partition, index as u64 + 1, operation)
                .unwrap()
        })
        .collect();
        transaction.commit().unwrap();
        assert_eq!(outcomes[0], ClusterOutcome::Misplaced);
        assert_eq!(outcomes[1], ClusterOutcome::Misplaced);
        assert_eq!(
            outcomes[2],
            ClusterOutcome::Directory(DirectoryOutcome::Bootstrapped)
        );
        assert_eq!(outcomes[3], ClusterOutcome::Kv(WriteOutcome::Put));
        assert!(machine.directory().directory(user).is_none());
        let read = database.begin_read().unwrap();
        let get = ClusterQuery::Kv(ReadRequest::Get { key: b"k".to_vec() });
        assert_eq!(
            machine.read(&read, SYSTEM_PARTITION, &get),
            Err(StateMachineError::KeyNotFound)
        );
        assert_eq!(
            machine.read(&read, user, &get),
            Ok(ClusterAnswer::Kv(ReadAnswer::Value(b"v".to_vec())))
        );
        let lookup =
            ClusterQuery::Directory(DirectoryQuery::Partition(PartitionName::new("p").unwrap()));
        assert_eq!(
            machine.read(&read, SYSTEM_PARTITION, &lookup),
            Ok(ClusterAnswer::Directory(DirectoryAnswer::Partition(None)))
        );

        // Images carry both kinds, and are checked as both.
        for partition in [SYSTEM_PARTITION, user] {
            let image = machine.take_snapshot(&read, partition).unwrap();
            assert_eq!(ClusterStateMachine::check_image(&image), Ok(()));
        }
        assert!(ClusterStateMachine::check_image(b"\x01\x00").is_err());
    }
}

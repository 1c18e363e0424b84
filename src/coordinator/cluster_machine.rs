//! The state machine a cluster node's partitions run: the directory in the system partition,
//! and the key-value store and the shared map in every named partition, behind the one
//! `StateMachine` trait.
//!
//! Invariants: a directory command takes effect only in [`SYSTEM_PARTITION`], and key-value
//! and map commands only outside it; a misplaced command (which only a forged or mistaken
//! proposal can make) is refused the same way by every replica and changes nothing. A
//! partition's image carries every kind's image, so one that holds any kind moves whole; the
//! map's rides behind the others only when the partition has a map, so images of partitions
//! without one keep their bytes.

use crate::directory::{
    DirectoryAnswer, DirectoryOperation, DirectoryOutcome, DirectoryQuery, DirectoryStateMachine,
    SYSTEM_PARTITION,
};
use crate::maps::{MapAnswer, MapOperation, MapOutcome, MapQuery, MapStateMachine};
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
    Map(MapOperation),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterOutcome {
    Kv(WriteOutcome),
    Directory(DirectoryOutcome),
    /// A directory command outside the system partition, or a key-value or map command
    /// inside it.
    Misplaced,
    Map(MapOutcome),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterQuery {
    Kv(ReadRequest),
    Directory(DirectoryQuery),
    Map(MapQuery),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterAnswer {
    Kv(ReadAnswer),
    Directory(DirectoryAnswer),
    Map(MapAnswer),
}

/// The key-value and directory images of one partition (the kind it does not run is empty);
/// the map's image follows it when the partition has a map.
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
    maps: MapStateMachine,
}

/// Splits an image into its key-value and directory part and the map's image, if any.
fn split_image(image: &[u8]) -> Result<(ClusterImage, Option<Vec<u8>>), String> {
    let (base, rest): (ClusterImage, &[u8]) =
        postcard::take_from_bytes(image).map_err(|error| format!("partition image: {error}"))?;
    if rest.is_empty() {
        return Ok((base, None));
    }
    let maps: Vec<u8> =
        postcard::from_bytes(rest).map_err(|error| format!("the map's image: {error}"))?;
    Ok((base, Some(maps)))
}

impl ClusterStateMachine {
    pub fn maps_mut(&mut self) -> &mut MapStateMachine {
        &mut self.maps
    }

    pub fn directory(&self) -> &DirectoryStateMachine {
        &self.directory
    }

    pub fn directory_mut(&mut self) -> &mut DirectoryStateMachine {
        &mut self.directory
    }
}

impl StateMachine for ClusterStateMachine {
    type Operation = ClusterOperation;
    type Outcome = ClusterOutcome;
    type Query = ClusterQuery;
    type Answer = ClusterAnswer;

    fn open_tables(&mut self, transaction: &WriteTransaction) -> Result<(), StateMachineError> {
        self.kv.open_tables(transaction)?;
        self.directory.open_tables(transaction)?;
        self.maps.open_tables(transaction)
    }

    fn validate(&self, operation: &ClusterOperation) -> Result<(), String> {
        match operation {
            ClusterOperation::Kv(operation) => self.kv.validate(operation),
            ClusterOperation::Directory(operation) => self.directory.validate(operation),
            ClusterOperation::Map(operation) => self.maps.validate(operation),
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
            ClusterOperation::Map(operation) if !in_system => {
                ClusterOutcome::Map(self.maps.apply(transaction, partition, index, operation)?)
            }
            ClusterOperation::Kv(_) | ClusterOperation::Directory(_) | ClusterOperation::Map(_) => {
                ClusterOutcome::Misplaced
            }
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
            ClusterQuery::Map(query) => self
                .maps
                .read(transaction, partition, query)
                .map(ClusterAnswer::Map),
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
        let mut bytes = postcard::to_stdvec(&image).expect("images serialise");
        let maps = self.maps.take_snapshot(transaction, partition)?;
        if !MapStateMachine::is_empty_image(&maps) {
            bytes = postcard::to_extend(&maps, bytes).expect("images serialise");
        }
        Ok(bytes)
    }

    fn check_image(image: &[u8]) -> Result<(), String> {
        let (image, maps) = split_image(image)?;
        KvStateMachine::check_image(&image.kv)?;
        DirectoryStateMachine::check_image(&image.directory)?;
        match maps {
            Some(maps) => MapStateMachine::check_image(&maps),
            None => Ok(()),
        }
    }

    fn install_snapshot(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        image: &[u8],
    ) -> Result<(), StateMachineError> {
        let (image, maps) = split_image(image).map_err(StateMachineError::Corrupt)?;
        self.kv
            .install_snapshot(transaction, partition, &image.kv)?;
        self.directory
            .install_snapshot(transaction, partition, &image.directory)?;
        let maps = maps.unwrap_or_else(MapStateMachine::empty_image);
        self.maps.install_snapshot(transaction, partition, &maps)
    }

    fn remove_partition(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
    ) -> Result<(), StateMachineError> {
        self.kv.remove_partition(transaction, partition)?;
        self.directory.remove_partition(transaction, partition)?;
        self.maps.remove_partition(transaction, partition)
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
            + self.directory.size_bytes(transaction, partition)?
            + self.maps.size_bytes(transaction, partition)?)
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

//! The directory as a [`StateMachine`]: its rows in the node's partition database, a copy in
//! memory that the node reads without a transaction (routing, watching), and the queue of
//! changes the node has not looked at yet.
//!
//! Invariants: the copy in memory is always what the rows say as of the last applied command
//! (it is loaded from the rows at open and changed only beside them, in the same apply or
//! install); every change applied is queued once, and an installed snapshot queues
//! `Replaced`; a partition's directory rows live under its id only.

use crate::directory::member::{ClusterSettings, Member};
use crate::directory::names::PartitionName;
use crate::directory::state::{
    check_operation, Directory, DirectoryChange, DirectoryImage, DirectoryOperation,
    DirectoryOutcome, PartitionEntry,
};
use crate::partition::state_machine::{engine_error, StateMachine, StateMachineError};
use crate::partition::PartitionId;
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per partition: its settings and next partition id.
const META: TableDefinition<u64, &[u8]> = TableDefinition::new("directory_meta");
const MEMBERS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("directory_members");
const PARTITIONS: TableDefinition<(u64, &[u8]), &[u8]> =
    TableDefinition::new("directory_partitions");

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    settings: Option<ClusterSettings>,
    next_partition_id: u64,
}

/// A read of the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryQuery {
    Whole,
    Partition(PartitionName),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryAnswer {
    Whole(DirectoryImage),
    Partition(Option<PartitionEntry>),
}

#[derive(Debug, Default)]
pub struct DirectoryStateMachine {
    directories: BTreeMap<PartitionId, Directory>,
    changes: Vec<(PartitionId, DirectoryChange)>,
}

impl DirectoryStateMachine {
    /// Whether a database holds the directory's tables (a kind that runs a directory only in
    /// some deployments opens them only where they exist, so its other databases stay as
    /// they were).
    pub fn tables_exist(transaction: &WriteTransaction) -> Result<bool, StateMachineError> {
        Ok(transaction
            .list_tables()
            .map_err(engine_error)?
            .any(|table| table.name() == META.name()))
    }

    /// The directory `partition` applied, if it ever applied a directory command.
    pub fn directory(&self, partition: PartitionId) -> Option<&Directory> {
        self.directories.get(&partition)
    }

    /// The changes applied since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<(PartitionId, DirectoryChange)> {
        std::mem::take(&mut self.changes)
    }
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StateMachineError {
    StateMachineError::Corrupt(format!("directory {what}: {error}"))
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    postcard::to_stdvec(value).expect("directory rows serialise")
}

/// Reads one partition's directory from its rows, checked as an image from outside is.
fn load(
    meta: &impl ReadableTable<u64, &'static [u8]>,
    members: &impl ReadableTable<(u64, u32), &'static [u8]>,
    partitions: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    partition: PartitionId,
) -> Result<Option<DirectoryImage>, StateMachineError> {
    let Some(meta) = meta.get(partition.0).map_err(engine_error)? else {
        return Ok(None);
    };
    let meta: Meta = postcard::from_bytes(meta.value()).map_err(|error| corrupt("meta", error))?;
    let mut image = DirectoryImage {
        settings: meta.settings,
        members: Vec::new(),
        partitions: Vec::new(),
        next_partition_id: meta.next_partition_id,
    };
    let member_rows = members
        .range((partition.0, 0)..=(partition.0, u32::MAX))
        .map_err(engine_error)?;
    for row in member_rows {
        let (_, member) = row.map_err(engine_error)?;
        image
            .members
            .push(postcard::from_bytes(member.value()).map_err(|error| corrupt("member", error))?);
    }
    let empty: &[u8] = &[];
    let partition_rows = partitions
        .range((partition.0, empty)..(partition.0 + 1, empty))
        .map_err(engine_error)?;
    for row in partition_rows {
        let (_, entry) = row.map_err(engine_error)?;
        image.partitions.push(
            postcard::from_bytes(entry.value()).map_err(|error| corrupt("partition", error))?,
        );
    }
    image.check().map_err(|problem| corrupt("rows", problem))?;
    Ok(Some(image))
}

impl DirectoryStateMachine {
    fn write_meta(
        transaction: &WriteTransaction,
        partition: PartitionId,
        directory: &Directory,
    ) -> Result<(), StateMachineError> {
        let mut meta = transaction.open_table(META).map_err(engine_error)?;
        let row = Meta {
            settings: directory.settings().cloned(),
            next_partition_id: directory.next_partition_id(),
        };
        meta.insert(partition.0, encode(&row).as_slice())
            .map_err(engine_error)?;
        Ok(())
    }

    fn write_member(
        transaction: &WriteTransaction,
        partition: PartitionId,
        member: &Member,
    ) -> Result<(), StateMachineError> {
        let mut members = transaction.open_table(MEMBERS).map_err(engine_error)?;
        members
            .insert((partition.0, member.id.0), encode(member).as_slice())
            .map_err(engine_error)?;
        Ok(())
    }

    fn write_partition(
        transaction: &WriteTransaction,
        partition: PartitionId,
        entry: &PartitionEntry,
    ) -> Result<(), StateMachineError> {
        let mut partitions = transaction.open_table(PARTITIONS).map_err(engine_error)?;
        partitions
            .insert(
                (partition.0, entry.name.as_bytes()),
                encode(entry).as_slice(),
            )
            .map_err(engine_error)?;
        Ok(())
    }

    /// Removes every row of `partition`.
    fn clear(
        transaction: &WriteTransaction,
        partition: PartitionId,
    ) -> Result<(), StateMachineError> {
        let mut meta = transaction.open_table(META).map_err(engine_error)?;
        meta.remove(partition.0).map_err(engine_error)?;
        let mut members = transaction.open_table(MEMBERS).map_err(engine_error)?;
        members
            .retain_in((partition.0, 0)..=(partition.0, u32::MAX), |_, _| false)
            .map_err(engine_error)?;
        let mut partitions = transaction.open_table(PARTITIONS).map_err(engine_error)?;
        let empty: &[u8] = &[];
        partitions
            .retain_in((partition.0, empty)..(partition.0 + 1, empty), |_, _| false)
            .map_err(engine_error)?;
        Ok(())
    }
}

impl StateMachine for DirectoryStateMachine {
    type Operation = DirectoryOperation;
    type Outcome = DirectoryOutcome;
    type Query = DirectoryQuery;
    type Answer = DirectoryAnswer;

    fn open_tables(&mut self, transaction: &WriteTransaction) -> Result<(), StateMachineError> {
        let meta = transaction.open_table(META).map_err(engine_error)?;
        let members = transaction.open_table(MEMBERS).map_err(engine_error)?;
        let partitions = transaction.open_table(PARTITIONS).map_err(engine_error)?;
        let mut ids = Vec::new();
        for row in meta.iter().map_err(engine_error)? {
            let (id, _) = row.map_err(engine_error)?;
            ids.push(PartitionId(id.value()));
        }
        self.directories.clear();
        for id in ids {
            if let Some(image) = load(&meta, &members, &partitions, id)? {
                self.directories.insert(id, Directory::from_image(image));
            }
        }
        self.changes.clear();
        Ok(())
    }

    fn validate(&self, operation: &DirectoryOperation) -> Result<(), String> {
        check_operation(operation)
    }

    fn apply(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        _index: u64,
        operation: &DirectoryOperation,
    ) -> Result<DirectoryOutcome, StateMachineError> {
        let directory = self.directories.entry(partition).or_default();
        let (outcome, changes) = directory.apply(operation);
        for change in &changes {
            match change {
                DirectoryChange::Settings | DirectoryChange::Replaced => {}
                DirectoryChange::Member(id) => {
                    if let Some(member) = directory.member(*id) {
                        Self::write_member(transaction, partition, member)?;
                    }
                }
                DirectoryChange::Partition(name) => {
                    if let Some(entry) = directory.partition(name) {
                        Self::write_partition(transaction, partition, entry)?;
                    }
                }
            }
        }
        if !changes.is_empty() {
            // Settings and the next partition id: small, and cheaper rewritten than tracked.
            Self::write_meta(transaction, partition, directory)?;
        }
        // Only a bootstrap starts a directory; a refused command leaves no empty one behind.
        if directory.settings().is_none() {
            self.directories.remove(&partition);
        }
        self.changes
            .extend(changes.into_iter().map(|change| (partition, change)));
        Ok(outcome)
    }

    fn read(
        &self,
        _transaction: &ReadTransaction,
        partition: PartitionId,
        query: &DirectoryQuery,
    ) -> Result<DirectoryAnswer, StateMachineError> {
        let directory = self.directories.get(&partition);
        Ok(match query {
            DirectoryQuery::Whole => {
                DirectoryAnswer::Whole(directory.map(Directory::image).unwrap_or_default())
            }
            DirectoryQuery::Partition(name) => DirectoryAnswer::Partition(
                directory.and_then(|directory| directory.partition(name).cloned()),
            ),
        })
    }

    fn take_snapshot(
        &self,
        _transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<Vec<u8>, StateMachineError> {
        let image = self
            .directories
            .get(&partition)
            .map(Directory::image)
            .unwrap_or_default();
        Ok(encode(&image))
    }

    fn check_image(image: &[u8]) -> Result<(), String> {
        let image: DirectoryImage =
            postcard::from_bytes(image).map_err(|error| format!("directory image: {error}"))?;
        image.check()
    }

    fn install_snapshot(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        image: &[u8],
    ) -> Result<(), StateMachineError> {
        let image: DirectoryImage =
            postcard::from_bytes(image).map_err(|error| corrupt("image", error))?;
        image.check().map_err(|problem| corrupt("image", problem))?;
        Self::clear(transaction, partition)?;
        let directory = Directory::from_image(image);
        if directory.image() != DirectoryImage::default() {
            Self::write_meta(transaction, partition, &directory)?;
            for member in directory.members() {
                Self::write_member(transaction, partition, member)?;
            }
            for entry in directory.partitions() {
                Self::write_partition(transaction, partition, entry)?;
            }
            self.directories.insert(partition, directory);
        } else {
            self.directories.remove(&partition);
        }
        self.changes.push((partition, DirectoryChange::Replaced));
        Ok(())
    }

    fn remove_partition(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
    ) -> Result<(), StateMachineError> {
        Self::clear(transaction, partition)?;
        self.directories.remove(&partition);
        Ok(())
    }

    fn size_bytes(
        &self,
        _transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<u64, StateMachineError> {
        Ok(self
            .directories
            .get(&partition)
            .map_or(0, |directory| encode(&directory.image()).len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::member::MemberState;
    use crate::directory::names::ClusterName;
    use crate::ids::NodeId;
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    const DIRECTORY: PartitionId = PartitionId(0);
    const OTHER: PartitionId = PartitionId(5);

    fn database() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn opened(database: &Database) -> DirectoryStateMachine {
        let mut machine = DirectoryStateMachine::default();
        let transaction = database.begin_write().unwrap();
        machine.open_tables(&transaction).unwrap();
        transaction.commit().unwrap();
        machine
    }

    fn member(id: u32) -> Member {
        Member::for_test(id, &format!("zone-{id}"))
    }

    fn apply_all(
        database: &Database,
        machine: &mut DirectoryStateMachine,
        partition: PartitionId,
        operations: &[DirectoryOperation],
    ) -> Vec<DirectoryOutcome> {
        let transaction = database.begin_write().unwrap();
        let outcomes = operations
            .iter()
            .enumerate()
            .map(|(index, operation)| {
                machine
                    .apply(&transaction, partition, index as u64 + 1, operation)
                    .unwrap()
            })
            .collect();
        transaction.commit().unwrap();
        outcomes
    }

    fn cluster_operations() -> Vec<DirectoryOperation> {
        let cluster_name = ClusterName::new("test").unwrap();
        let mut operations = vec![DirectoryOperation::Bootstrap {
            settings: ClusterSettings::new(cluster_name.clone()),
            first: member(1),
        }];
        for id in 2..=4 {
            operations.push(DirectoryOperation::Join {
                cluster_name: cluster_name.clone(),
                member: member(id),
            });
        }
        for index in 0..20 {
            operations.push(DirectoryOperation::CreatePartition {
                name: PartitionName::new(format!("p{index}")).unwrap(),
            });
        }
        operations.push(DirectoryOperation::SetMemberState {
            id: NodeId(4),
            state: MemberState::Leaving,
        });
        operations
    }

    #[test]
    fn a_reopened_machine_reads_what_was_applied() {
        let database = database();
        let mut machine = opened(&database);
        apply_all(&database, &mut machine, DIRECTORY, &cluster_operations());
        let changes = machine.take_changes();
        assert_eq!(changes.len(), 2 + 3 + 20 + 1);
        assert!(changes.iter().all(|(partition, _)| *partition == DIRECTORY));
        assert!(machine.take_changes().is_empty(), "changes are taken once");
        let applied = machine.directory(DIRECTORY).unwrap().image();
        assert_eq!(applied.partitions.len(), 20);

        let reopened = opened(&database);
        assert_eq!(reopened.directory(DIRECTORY).unwrap().image(), applied);
        assert!(reopened.directory(OTHER).is_none());
        let transaction = database.begin_read().unwrap();
        let name = PartitionName::new("p3").unwrap();
        assert_eq!(
            reopened
                .read(
                    &transaction,
                    DIRECTORY,
                    &DirectoryQuery::Partition(name.clone())
                )
                .unwrap(),
            DirectoryAnswer::Partition(applied.partitions.iter().find(|e| e.name == name).cloned())
        );
        assert!(reopened.size_bytes(&transaction, DIRECTORY).unwrap() > 0);
    }

    #[test]
    fn a_refused_command_leaves_no_directory_behind() {
        let database = database();
        let mut machine = opened(&database);
        let outcomes = apply_all(
            &database,
            &mut machine,
            OTHER,
            &[DirectoryOperation::CreatePartition {
                name: PartitionName::new("p").unwrap(),
            }],
        );
        assert!(matches!(outcomes[0], DirectoryOutcome::Refused(_)));
        assert!(machine.directory(OTHER).is_none());
        assert!(machine.take_changes().is_empty());
        // A partition without a directory still gives an image its peers accept.
        let image = machine
            .take_snapshot(&database.begin_read().unwrap(), OTHER)
            .unwrap();
        assert_eq!(DirectoryStateMachine::check_image(&image), Ok(()));
    }

    #[test]
    fn snapshots_move_a_directory_whole() {
        let source = database();
        let mut machine = opened(&source);
        apply_all(&source, &mut machine, DIRECTORY, &cluster_operations());
        let image = machine
            .take_snapshot(&source.begin_read().unwrap(), DIRECTORY)
            .unwrap();
        assert_eq!(DirectoryStateMachine::check_image(&image), Ok(()));

        // The receiver had a different directory of its own, and one in another partition.
        let target = database();
        let mut receiver = opened(&target);
        let mut own = cluster_operations();
        own.truncate(6);
        apply_all(&target, &mut receiver, DIRECTORY, &own);
        apply_all(&target, &mut receiver, OTHER, &own);
        receiver.take_changes();
        let transaction = target.begin_write().unwrap();
        receiver
            .install_snapshot(&transaction, DIRECTORY, &image)
            .unwrap();
        transaction.commit().unwrap();
        assert_eq!(
            receiver.take_changes(),
            vec![(DIRECTORY, DirectoryChange::Replaced)]
        );
        let expected = machine.directory(DIRECTORY).unwrap().image();
        assert_eq!(receiver.directory(DIRECTORY).unwrap().image(), expected);
        let reopened = opened(&target);
        assert_eq!(reopened.directory(DIRECTORY).unwrap().image(), expected);
        assert_eq!(reopened.directory(OTHER).unwrap().partitions().count(), 2);

        // An empty image empties the partition's directory.
        let empty = encode(&DirectoryImage::default());
        let transaction = target.begin_write().unwrap();
        receiver
            .install_snapshot(&transaction, DIRECTORY, &empty)
            .unwrap();
        transaction.commit().unwrap();
        assert!(receiver.directory(DIRECTORY).is_none());
        assert!(opened(&target).directory(DIRECTORY).is_none());
    }

    #[test]
    fn images_from_peers_are_checked() {
        assert!(DirectoryStateMachine::check_image(&[0xff, 0xff, 0xff]).is_err());
        let mut image = DirectoryImage::default();
        image.members.push(member(1));
        assert!(DirectoryStateMachine::check_image(&encode(&image)).is_err());
        let target = database();
        let mut receiver = opened(&target);
        let transaction = target.begin_write().unwrap();
        assert!(matches!(
            receiver.install_snapshot(&transaction, DIRECTORY, &encode(&image)),
            Err(StateMachineError::Corrupt(_))
        ));
    }
}

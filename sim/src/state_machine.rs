//! The state machine the simulator's nodes run in their partitions: production's key-value
//! store and a counter, side by side behind the one `StateMachine` trait, so a scenario can
//! drive either kind (or both) under the same Raft checkers. The counter is the proof that a
//! second kind runs on the partition host unchanged: it keeps one integer per partition,
//! adds to it, and reads it.
//!
//! Each kind keeps its own tables; a partition's snapshot image carries both kinds' images
//! (an untouched kind's image is empty), and each is checked by its own kind.
//!
//! In a scenario of named partitions the system partition also runs the cluster directory
//! (production's `DirectoryStateMachine`). Its tables are opened only in databases that have
//! them and its image rides behind the others only where a directory exists, so scenarios
//! without one store and send exactly the bytes they always did.

use borough::coordinator::cluster::ClusterKinds;
use borough::directory::{DirectoryOperation, DirectoryOutcome, DirectoryStateMachine};
use borough::node::NodeOutput;
use borough::partition::command::KvOperation;
use borough::partition::kv_store::{KvStateMachine, ReadAnswer, ReadRequest, WriteOutcome};
use borough::partition::state_machine::{engine_error, StateMachine, StateMachineError};
use borough::partition::PartitionId;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

/// A node of the simulator: production's node, its partitions running [`SimStateMachine`].
pub type Node = borough::node::Node<SimStateMachine>;
/// What a node of the simulator answers.
pub type SimNodeOutput = NodeOutput<SimOutcome, SimAnswer>;

const COUNTERS: TableDefinition<u64, u64> = TableDefinition::new("simulated_counters");

/// A counter's write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterOperation {
    /// Adds `amount` (saturating at `u64::MAX`).
    Add { amount: u64 },
}

/// A write of either kind. The variant order is the log format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimOperation {
    Kv(KvOperation),
    Counter(CounterOperation),
    Directory(DirectoryOperation),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimOutcome {
    Kv(WriteOutcome),
    /// The counter's value once the add applied.
    Counter(u64),
    Directory(DirectoryOutcome),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimQuery {
    Kv(ReadRequest),
    /// The counter's value.
    Counter,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimAnswer {
    Kv(ReadAnswer),
    Counter(u64),
}

/// Both kinds' images of one partition.
#[derive(Debug, Serialize, Deserialize)]
struct SimImage {
    #[serde(with = "serde_bytes")]
    kv: Vec<u8>,
    counter: u64,
}

#[derive(Debug, Default)]
pub struct SimStateMachine {
    kv: KvStateMachine,
    directory: DirectoryStateMachine,
}

fn counter_value(
    table: &impl ReadableTable<u64, u64>,
    partition: PartitionId,
) -> Result<u64, StateMachineError> {
    Ok(table
        .get(partition.0)
        .map_err(engine_error)?
        .map_or(0, |value| value.value()))
}

/// Numbered partitions are placed by the scenario; named ones through the directory.
impl ClusterKinds for SimStateMachine {
    fn directory_machine(&self) -> Option<&DirectoryStateMachine> {
        Some(&self.directory)
    }

    fn directory_machine_mut(&mut self) -> Option<&mut DirectoryStateMachine> {
        Some(&mut self.directory)
    }

    fn directory_operation(operation: DirectoryOperation) -> Option<SimOperation> {
        Some(SimOperation::Directory(operation))
    }

    fn directory_outcome(outcome: &SimOutcome) -> Option<&DirectoryOutcome> {
        match outcome {
            SimOutcome::Directory(outcome) => Some(outcome),
            _ => None,
        }
    }

    fn kv_operation(operation: KvOperation) -> SimOperation {
        SimOperation::Kv(operation)
    }

    fn kv_query(query: ReadRequest) -> SimQuery {
        SimQuery::Kv(query)
    }

    fn kv_outcome(outcome: SimOutcome) -> Option<WriteOutcome> {
        match outcome {
            SimOutcome::Kv(outcome) => Some(outcome),
            _ => None,
        }
    }

    fn kv_answer(answer: SimAnswer) -> Option<ReadAnswer> {
        match answer {
            SimAnswer::Kv(answer) => Some(answer),
            SimAnswer::Counter(_) => None,
        }
    }
}

/// Splits an image into the kv and counter part and the directory's image, if it carries
/// one behind them.
fn split_image(image: &[u8]) -> Result<(SimImage, Option<Vec<u8>>), String> {
    let (base, rest): (SimImage, &[u8]) =
        postcard::take_from_bytes(image).map_err(|error| error.to_string())?;
    if rest.is_empty() {
        return Ok((base, None));
    }
    let directory: Vec<u8> =
        postcard::from_bytes(rest).map_err(|error| format!("the directory's image: {error}"))?;
    Ok((base, Some(directory)))
}

impl StateMachine for SimStateMachine {
    type Operation = SimOperation;
    type Outcome = SimOutcome;
    type Query = SimQuery;
    type Answer = SimAnswer;

    fn open_tables(&mut self, transaction: &WriteTransaction) -> Result<(), StateMachineError> {
        self.kv.open_tables(transaction)?;
        transaction.open_table(COUNTERS).map_err(engine_error)?;
        if DirectoryStateMachine::tables_exist(transaction)? {
            self.directory.open_tables(transaction)?;
        }
        Ok(())
    }

    fn validate(&self, operation: &SimOperation) -> Result<(), String> {
        match operation {
            SimOperation::Kv(operation) => self.kv.validate(operation),
            SimOperation::Counter(CounterOperation::Add { .. }) => Ok(()),
            SimOperation::Directory(operation) => self.directory.validate(operation),
        }
    }

    fn apply(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        index: u64,
        operation: &SimOperation,
    ) -> Result<SimOutcome, StateMachineError> {
        match operation {
            SimOperation::Kv(operation) => self
                .kv
                .apply(transaction, partition, index, operation)
                .map(SimOutcome::Kv),
            SimOperation::Counter(CounterOperation::Add { amount }) => {
                let mut counters = transaction.open_table(COUNTERS).map_err(engine_error)?;
                let value = counter_value(&counters, partition)?.saturating_add(*amount);
                counters.insert(partition.0, value).map_err(engine_error)?;
                Ok(SimOutcome::Counter(value))
            }
            SimOperation::Directory(operation) => self
                .directory
                .apply(transaction, partition, index, operation)
                .map(SimOutcome::Directory),
        }
    }

    fn read(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
        query: &SimQuery,
    ) -> Result<SimAnswer, StateMachineError> {
        match query {
            SimQuery::Kv(query) => self
                .kv
                .read(transaction, partition, query)
                .map(SimAnswer::Kv),
            SimQuery::Counter => {
                let counters = transaction.open_table(COUNTERS).map_err(engine_error)?;
                counter_value(&counters, partition).map(SimAnswer::Counter)
            }
        }
    }

    fn take_snapshot(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<Vec<u8>, StateMachineError> {
        let kv = self.kv.take_snapshot(transaction, partition)?;
        let counters = transaction.open_table(COUNTERS).map_err(engine_error)?;
        let counter = counter_value(&counters, partition)?;
        let mut image = postcard::to_stdvec(&SimImage { kv, counter }).expect("images serialise");
        if self.directory.directory(partition).is_some() {
            let directory = self.directory.take_snapshot(transaction, partition)?;
            image = postcard::to_extend(&directory, image).expect("images serialise");
        }
        Ok(image)
    }

    fn check_image(image: &[u8]) -> Result<(), String> {
        let (image, directory) = split_image(image)?;
        KvStateMachine::check_image(&image.kv)?;
        match directory {
            Some(directory) => DirectoryStateMachine::check_image(&directory),
            None => Ok(()),
        }
    }

    fn install_snapshot(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
        image: &[u8],
    ) -> Result<(), StateMachineError> {
        let (image, directory) = split_image(image)
            .map_err(|error| StateMachineError::Corrupt(format!("simulated image: {error}")))?;
        match directory {
            Some(directory) => {
                self.directory
                    .install_snapshot(transaction, partition, &directory)?
            }
            // An image without a directory replaces one that had it with none.
            None if self.directory.directory(partition).is_some() => {
                let empty = self.directory_image_of_nothing();
                self.directory
                    .install_snapshot(transaction, partition, &empty)?;
            }
            None => {}
        }
        self.kv
            .install_snapshot(transaction, partition, &image.kv)?;
        let mut counters = transaction.open_table(COUNTERS).map_err(engine_error)?;
        if image.counter == 0 {
            counters.remove(partition.0).map_err(engine_error)?;
        } else {
            counters
                .insert(partition.0, image.counter)
                .map_err(engine_error)?;
        }
        Ok(())
    }

    fn remove_partition(
        &mut self,
        transaction: &WriteTransaction,
        partition: PartitionId,
    ) -> Result<(), StateMachineError> {
        if self.directory.directory(partition).is_some() {
            self.directory.remove_partition(transaction, partition)?;
        }
        self.kv.remove_partition(transaction, partition)?;
        let mut counters = transaction.open_table(COUNTERS).map_err(engine_error)?;
        counters.remove(partition.0).map_err(engine_error)?;
        Ok(())
    }

    fn split_for_canary(&self, operation: SimOperation) -> Vec<SimOperation> {
        match operation {
            SimOperation::Kv(operation) => self
                .kv
                .split_for_canary(operation)
                .into_iter()
                .map(SimOperation::Kv)
                .collect(),
            operation => vec![operation],
        }
    }

    fn size_bytes(
        &self,
        transaction: &ReadTransaction,
        partition: PartitionId,
    ) -> Result<u64, StateMachineError> {
        let counters = transaction.open_table(COUNTERS).map_err(engine_error)?;
        let counter_bytes = if counters.get(partition.0).map_err(engine_error)?.is_some() {
            8
        } else {
            0
        };
        Ok(self.kv.size_bytes(transaction, partition)?
            + counter_bytes
            + self.directory.size_bytes(transaction, partition)?)
    }
}

impl SimStateMachine {
    /// The image of an empty directory.
    fn directory_image_of_nothing(&self) -> Vec<u8> {
        postcard::to_stdvec(&borough::directory::DirectoryImage::default())
            .expect("images serialise")
    }
}

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
//! (production's `DirectoryStateMachine`), and named partitions production's shared map
//! (`MapStateMachine`). Their tables are opened only in databases that have them (or, for
//! maps, in scenarios that use them) and their images ride behind the others only where a
//! directory or a map exists, so scenarios without them store and send exactly the bytes
//! they always did.

use borough::coordinator::cluster::ClusterKinds;
use borough::directory::{DirectoryOperation, DirectoryOutcome, DirectoryStateMachine};
use borough::maps::{MapAnswer, MapOperation, MapOutcome, MapQuery, MapStateMachine};
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
    Map(MapOperation),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimOutcome {
    Kv(WriteOutcome),
    /// The counter's value once the add applied.
    Counter(u64),
    Directory(DirectoryOutcome),
    Map(MapOutcome),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimQuery {
    Kv(ReadRequest),
    /// The counter's value.
    Counter,
    Map(MapQuery),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimAnswer {
    Kv(ReadAnswer),
    Counter(u64),
    Map(MapAnswer),
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
    maps: MapStateMachine,
    /// Whether the map tables are open (a scenario that never uses maps never opens them).
    maps_open: bool,
    /// Every map change this replica applied, with its revision, for the feed checker's
    /// record of the committed history (drained by the world after each step).
    applied_maps: std::cell::RefCell<Vec<(PartitionId, u64, MapOperation)>>,
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
            _ => None,
        }
    }

    fn map_operation(operation: MapOperation) -> Option<SimOperation> {
        Some(SimOperation::Map(operation))
    }

    fn map_query(query: MapQuery) -> Option<SimQuery> {
        Some(SimQuery::Map(query))
    }

    fn map_outcome(outcome: SimOutcome) -> Option<MapOutcome> {
        match outcome {
            SimOutcome::Map(outcome) => Some(outcome),
            _ => None,
        }
    }

    fn map_answer(answer: SimAnswer) -> Option<MapAnswer> {
        match answer {
            SimAnswer::Map(answer) => Some(answer),
            _ => None,
        }
    }

    fn take_touched_maps(&mut self) -> std::collections::BTreeSet<PartitionId> {
        self.maps.take_touched()
    }
}

/// What rides behind an image's kv and counter part.
struct Extras {
    directory: Option<Vec<u8>>,
    maps: Option<Vec<u8>>,
}

/// Splits an image into the kv and counter part, the directory's image (an empty one stands
/// for none when a map's follows) and the map's image.
fn split_image(image: &[u8]) -> Result<(SimImage, Extras), String> {
    let (base, rest): (SimImage, &[u8]) =
        postcard::take_from_bytes(image).map_err(|error| error.to_string())?;
    let mut extras = Extras {
        directory: None,
        maps: None,
    };
    if rest.is_empty() {
        return Ok((base, extras));
    }
    let (directory, rest): (Vec<u8>, &[u8]) = postcard::take_from_bytes(rest)
        .map_err(|error| format!("the directory's image: {error}"))?;
    if !directory.is_empty() {
        extras.directory = Some(directory);
    }
    if !rest.is_empty() {
        let maps: Vec<u8> =
            postcard::from_bytes(rest).map_err(|error| format!("the map's image: {error}"))?;
        extras.maps = Some(maps);
    }
    Ok((base, extras))
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
        // A node that ever held a map keeps its tables across restarts: open them again,
        // or its images and reads would leave its maps out.
        if self.maps_open || MapStateMachine::tables_exist(transaction)? {
            self.maps.open_tables(transaction)?;
            self.maps_open = true;
        }
        Ok(())
    }

    fn validate(&self, operation: &SimOperation) -> Result<(), String> {
        match operation {
            SimOperation::Kv(operation) => self.kv.validate(operation),
            SimOperation::Counter(CounterOperation::Add { .. }) => Ok(()),
            SimOperation::Directory(operation) => self.directory.validate(operation),
            SimOperation::Map(operation) => self.maps.validate(operation),
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
            SimOperation::Map(operation) => {
                if !self.maps_open {
                    self.maps.open_tables(transaction)?;
                    self.maps_open = true;
                }
                let outcome = self.maps.apply(transaction, partition, index, operation)?;
                if let MapOutcome::Changed { revision } = outcome {
                    self.applied_maps
                        .borrow_mut()
                        .push((partition, revision, operation.clone()));
                }
                Ok(SimOutcome::Map(outcome))
            }
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
            SimQuery::Map(query) if self.maps_open => self
                .maps
                .read(transaction, partition, query)
                .map(SimAnswer::Map),
            // No map was ever written here: every map is empty.
            SimQuery::Map(query) => Ok(SimAnswer::Map(empty_map_answer(query))),
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
        let maps = if self.maps_open {
            Some(self.maps.take_snapshot(transaction, partition)?)
                .filter(|maps| !MapStateMachine::is_empty_image(maps))
        } else {
            None
        };
        if self.directory.directory(partition).is_some() {
            let directory = self.directory.take_snapshot(transaction, partition)?;
            image = postcard::to_extend(&directory, image).expect("images serialise");
        } else if maps.is_some() {
            image = postcard::to_extend(&Vec::<u8>::new(), image).expect("images serialise");
        }
        if let Some(maps) = maps {
            image = postcard::to_extend(&maps, image).expect("images serialise");
        }
        Ok(image)
    }

    fn check_image(image: &[u8]) -> Result<(), String> {
        let (image, extras) = split_image(image)?;
        KvStateMachine::check_image(&image.kv)?;
        if let Some(directory) = extras.directory {
            DirectoryStateMachine::check_image(&directory)?;
        }
        match extras.maps {
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
        let (image, extras) = split_image(image)
            .map_err(|error| StateMachineError::Corrupt(format!("simulated image: {error}")))?;
        match extras.maps {
            Some(maps) => {
                if !self.maps_open {
                    self.maps.open_tables(transaction)?;
                    self.maps_open = true;
                }
                self.maps.install_snapshot(transaction, partition, &maps)?;
            }
            None if self.maps_open => {
                self.maps.install_snapshot(
                    transaction,
                    partition,
                    &MapStateMachine::empty_image(),
                )?;
            }
            None => {}
        }
        match extras.directory {
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
        if self.maps_open {
            self.maps.remove_partition(transaction, partition)?;
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
        let map_bytes = if self.maps_open {
            self.maps.size_bytes(transaction, partition)?
        } else {
            0
        };
        Ok(self.kv.size_bytes(transaction, partition)?
            + counter_bytes
            + map_bytes
            + self.directory.size_bytes(transaction, partition)?)
    }
}

/// What an empty map answers (for a node that never opened the map tables).
fn empty_map_answer(query: &MapQuery) -> MapAnswer {
    use borough::maps::{FeedRead, MapEntries};
    match query {
        MapQuery::Get { .. } => MapAnswer::Value {
            value: None,
            revision: 0,
        },
        MapQuery::Entries => MapAnswer::Entries(MapEntries::default()),
        MapQuery::Feed { after: None } => {
            MapAnswer::Feed(FeedRead::Snapshot(MapEntries::default()))
        }
        MapQuery::Feed { after: Some(0) } => MapAnswer::Feed(FeedRead::Changes {
            changes: Vec::new(),
            revision: 0,
        }),
        MapQuery::Feed { after: Some(_) } => MapAnswer::Feed(FeedRead::Behind { revision: 0 }),
    }
}

impl SimStateMachine {
    /// The map changes applied since the last call: (partition, revision, operation).
    pub fn take_applied_maps(&self) -> Vec<(PartitionId, u64, MapOperation)> {
        std::mem::take(&mut *self.applied_maps.borrow_mut())
    }

    /// The image of an empty directory.
    fn directory_image_of_nothing(&self) -> Vec<u8> {
        postcard::to_stdvec(&borough::directory::DirectoryImage::default())
            .expect("images serialise")
    }
}

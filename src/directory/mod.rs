//! The cluster directory: what every node must agree on, replicated by the system Raft group
//! (partition [`SYSTEM_PARTITION`]): the cluster's name and settings, its members (id,
//! addresses, zone, state) and its partition table (name, id, replica set, generation).
//!
//! Nodes learn the directory by applying its group's log (as voters or learners), never by
//! guessing: a partition's group is created only from an entry the directory committed, so
//! two nodes can never create two groups for one partition. `names` holds the validated
//! names, `member` the member record and settings, `state` the state and its transition
//! function, `machine` the state machine the partition host drives, `messages` what nodes
//! say to each other to join.

pub mod machine;
pub mod member;
pub mod messages;
pub mod names;
pub mod state;

pub use machine::{DirectoryAnswer, DirectoryQuery, DirectoryStateMachine};
pub use member::{ClusterSettings, Member, MemberState};
pub use messages::{ClusterMessage, JoinAnswer};
pub use names::{Address, ClusterName, PartitionName};
pub use state::{
    Directory, DirectoryChange, DirectoryImage, DirectoryOperation, DirectoryOutcome,
    DirectoryRefusal, PartitionEntry, SYSTEM_PARTITION,
};

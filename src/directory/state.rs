//! The directory's state and its one transition function: what every node must agree on
//! (the cluster's settings, its members, its partition table), and how each committed
//! directory command changes it.
//!
//! Invariants, kept by [`Directory::apply`] and checked on every image by
//! [`DirectoryImage::check`]:
//! - nothing but `Bootstrap` changes a directory that was not bootstrapped, and `Bootstrap`
//!   changes nothing in one that was;
//! - a member id names one member for the cluster's life: a member that left never returns
//!   under its id, and no two members that have not left share a peer address;
//! - a partition name maps to one partition id forever, ids are never reused (the next id
//!   only grows, and the system partition's id is never given out), and creating a name that
//!   exists returns the existing entry (so concurrent creations agree on one group);
//! - a partition's replica set is non-empty, holds distinct members of the directory, and its
//!   generation starts at 1 and grows with every change of the set;
//! - `apply` is deterministic: the ring is derived from the members alone.

use crate::directory::member::{ClusterSettings, Member, MemberState};
use crate::directory::names::{ClusterName, PartitionName};
use crate::ids::NodeId;
use crate::partition::PartitionId;
use crate::placement::ring::Ring;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The partition the directory itself runs in. No named partition ever gets this id.
pub const SYSTEM_PARTITION: PartitionId = PartitionId(0);
/// The first id given to a named partition.
pub const FIRST_PARTITION_ID: u64 = 1;
/// The most members a cluster may have had (left ones included).
pub const MEMBERS_MAX: usize = 1024;
/// The most partitions a cluster holds: its directory stays a few megabytes.
pub const PARTITIONS_MAX: usize = 100_000;

/// A named partition: where it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    pub name: PartitionName,
    pub id: PartitionId,
    /// The members holding its replicas, the ring's owner first.
    pub replicas: Vec<NodeId>,
    /// Grows with every change of `replicas`; a request routed with an older one is stale.
    pub generation: u64,
    /// The replica set the partition is moving away from (the union of every set since it
    /// last settled, when a move was re-aimed before it finished); empty once its group runs
    /// on `replicas` alone. Until then the nodes here may still hold (and lead) it.
    pub previous: Vec<NodeId>,
}

impl PartitionEntry {
    /// Whether a move is under way: the group may still include `previous`.
    pub fn is_moving(&self) -> bool {
        !self.previous.is_empty()
    }

    /// Every node that may hold a replica now: the replicas, then the ones it is leaving.
    pub fn holders(&self) -> Vec<NodeId> {
        let mut holders = self.replicas.clone();
        for node in &self.previous {
            if !holders.contains(node) {
                holders.push(*node);
            }
        }
        holders
    }
}

/// A directory command. The variant order is the log format: only ever appended to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryOperation {
    /// Names a new cluster, fixes its settings, and makes `first` its first member.
    Bootstrap {
        settings: ClusterSettings,
        first: Member,
    },
    /// Makes `member` a member (active), or updates a member's addresses and place.
    Join {
        cluster_name: ClusterName,
        member: Member,
    },
    /// Creates the partition `name` unless it exists.
    CreatePartition { name: PartitionName },
    /// Moves a member to `state` (active and leaving both ways; left for good).
    SetMemberState { id: NodeId, state: MemberState },
    /// Aims partition `name` at a new replica set (the placement driver does, on the
    /// directory's leader). Applies only at `generation`, so a stale driver's command
    /// changes nothing.
    MovePartition {
        name: PartitionName,
        generation: u64,
        replicas: Vec<NodeId>,
    },
    /// Records that partition `name`'s group runs on its replica set of `generation` alone
    /// (its leader says so once that configuration committed): the nodes it left may delete
    /// their replicas.
    FinishMove {
        name: PartitionName,
        generation: u64,
    },
}

/// What a directory command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryOutcome {
    Bootstrapped,
    Joined(Member),
    /// The partition, and whether this command created it.
    Partition {
        entry: PartitionEntry,
        created: bool,
    },
    MemberState(Member),
    Refused(DirectoryRefusal),
}

/// Why a directory command changed nothing. An outcome, not an error: every replica refuses
/// the same command the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DirectoryRefusal {
    #[error("the cluster has no directory yet: it was never bootstrapped")]
    NotBootstrapped,
    #[error("the cluster \"{0}\" is bootstrapped already")]
    AlreadyBootstrapped(ClusterName),
    #[error("this is cluster \"{ours}\"; a node of cluster \"{theirs}\" cannot join it")]
    WrongCluster {
        ours: ClusterName,
        theirs: ClusterName,
    },
    #[error("node id {id} is taken by another node, the member at {address}")]
    NodeIdTaken { id: NodeId, address: String },
    #[error("address {address} is already the address of member {id}")]
    AddressTaken { address: String, id: NodeId },
    #[error(
        "member {0} left the cluster; its data dir cannot join again (an empty one can, as a \
         new member under the same id)"
    )]
    MemberLeft(NodeId),
    #[error(
        "member {0} left the cluster and partitions still list it; a new node under its id \
         can join once their moves finish"
    )]
    LeftMemberStillHeld(NodeId),
    #[error("{0} is not a member of the cluster")]
    UnknownMember(NodeId),
    #[error("the cluster has no active member to place a partition on")]
    NoActiveMembers,
    #[error("the cluster holds its limit of {MEMBERS_MAX} members")]
    TooManyMembers,
    #[error("the cluster holds its limit of {PARTITIONS_MAX} partitions")]
    TooManyPartitions,
    #[error("partition {0} does not exist")]
    UnknownPartition(PartitionName),
    #[error("partition {name} is at generation {current}, not {given}")]
    StaleGeneration {
        name: PartitionName,
        current: u64,
        given: u64,
    },
    #[error("invalid directory command: {0}")]
    Invalid(String),
}

/// What a command changed, for the node watching the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectoryChange {
    Settings,
    Member(NodeId),
    Partition(PartitionName),
    /// A snapshot replaced the whole directory: read it again.
    Replaced,
}

/// The directory's whole state, as snapshots carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryImage {
    pub settings: Option<ClusterSettings>,
    pub members: Vec<Member>,
    pub partitions: Vec<PartitionEntry>,
    pub next_partition_id: u64,
}

/// The image of a directory never bootstrapped.
impl Default for DirectoryImage {
    fn default() -> Self {
        Self {
            settings: None,
            members: Vec::new(),
            partitions: Vec::new(),
            next_partition_id: FIRST_PARTITION_ID,
        }
    }
}

impl DirectoryImage {
    /// Checks an image from a peer or the disk: everything [`Directory::apply`] keeps.
    pub fn check(&self) -> Result<(), String> {
        if let Some(settings) = &self.settings {
            settings.check()?;
        } else if !self.members.is_empty() || !self.partitions.is_empty() {
            return Err("members or partitions in a directory never bootstrapped".into());
        }
        if self.members.len() > MEMBERS_MAX || self.partitions.len() > PARTITIONS_MAX {
            return Err("more members or partitions than a directory holds".into());
        }
        let mut members = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for member in &self.members {
            if !members.insert(member.id) {
                return Err(format!("member {} twice", member.id));
            }
            if member.state != MemberState::Left && !addresses.insert(&member.peer_address) {
                return Err(format!("address {} twice", member.peer_address));
            }
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for entry in &self.partitions {
            let fresh_id = entry.id.0 >= FIRST_PARTITION_ID && entry.id.0 < self.next_partition_id;
            if !names.insert(&entry.name) || !ids.insert(entry.id) || !fresh_id {
                return Err(format!(
                    "partition {} has a duplicate or unissued id",
                    entry.name
                ));
            }
            let distinct: BTreeSet<&NodeId> = entry.replicas.iter().collect();
            let known = entry.replicas.iter().all(|member| members.contains(member));
            if entry.replicas.is_empty() || distinct.len() != entry.replicas.len() || !known {
                return Err(format!("partition {} has a bad replica set", entry.name));
            }
            if entry.generation == 0 {
                return Err(format!("partition {} has generation 0", entry.name));
            }
            let previous: BTreeSet<&NodeId> = entry.previous.iter().collect();
            let previous_known = entry.previous.iter().all(|node| members.contains(node));
            if previous.len() != entry.previous.len() || !previous_known {
                return Err(format!("partition {} has a bad previous set", entry.name));
            }
        }
        if self.next_partition_id < FIRST_PARTITION_ID || self.next_partition_id == u64::MAX {
            return Err(format!(
                "next partition id {} is out of range",
                self.next_partition_id
            ));
        }
        Ok(())
    }
}

/// The directory of one cluster, as one replica of its group applied it.
#[derive(Clone, Debug)]
pub struct Directory {
    settings: Option<ClusterSettings>,
    members: BTreeMap<NodeId, Member>,
    partitions: BTreeMap<PartitionName, PartitionEntry>,
    names_by_id: BTreeMap<PartitionId, PartitionName>,
    next_partition_id: u64,
    /// The ring of the active members, rebuilt whenever a member changes.
    ring: Ring,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            settings: None,
            members: BTreeMap::new(),
            partitions: BTreeMap::new(),
            names_by_id: BTreeMap::new(),
            next_partition_id: FIRST_PARTITION_ID,
            ring: Ring::new(std::iter::empty(), 1),
        }
    }
}

impl Directory {
    /// The directory an image describes; the image must have passed its check.
    pub fn from_image(image: DirectoryImage) -> Self {
        let mut directory = Directory {
            settings: image.settings,
            next_partition_id: image.next_partition_id,
            ..Directory::default()
        };
        for member in image.members {
            directory.members.insert(member.id, member);
        }
        for entry in image.partitions {
            directory.names_by_id.insert(entry.id, entry.name.clone());
            directory.partitions.insert(entry.name.clone(), entry);
        }
        directory.rebuild_ring();
        directory
    }

    pub fn image(&self) -> DirectoryImage {
        DirectoryImage {
            settings: self.settings.clone(),
            members: self.members.values().cloned().collect(),
            partitions: self.partitions.values().cloned().collect(),
            next_partition_id: self.next_partition_id,
        }
    }

    pub fn settings(&self) -> Option<&ClusterSettings> {
        self.settings.as_ref()
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn partitions(&self) -> impl Iterator<Item = &PartitionEntry> {
        self.partitions.values()
    }

    pub fn partition(&self, name: &PartitionName) -> Option<&PartitionEntry> {
        self.partitions.get(name)
    }

    pub fn partition_by_id(&self, id: PartitionId) -> Option<&PartitionEntry> {
        self.partitions.get(self.names_by_id.get(&id)?)
    }

    pub fn next_partition_id(&self) -> u64 {
        self.next_partition_id
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// The replica set the ring gives `name` over the active members now, its owner first.
    pub fn ring_replicas(&self, name: &PartitionName) -> Vec<NodeId> {
        let replicas = self
            .settings
            .as_ref()
            .map_or(0, |settings| settings.replicas);
        self.ring.replica_set(name.as_bytes(), replicas.into())
    }

    /// Partitions whose move has not finished.
    pub fn moving_count(&self) -> usize {
        self.partitions
            .values()
            .filter(|entry| entry.is_moving())
            .count()
    }

    fn rebuild_ring(&mut self) {
        let virtual_nodes = self
            .settings
            .as_ref()
            .map_or(1, |settings| settings.virtual_nodes);
        let active = self
            .members
            .values()
            .filter(|member| member.state == MemberState::Active)
            .map(|member| (member.id, member.location.clone()));
        self.ring = Ring::new(active, virtual_nodes);
    }

    /// Applies one committed command: its outcome, and what it changed.
    pub fn apply(
        &mut self,
        operation: &DirectoryOperation,
    ) -> (DirectoryOutcome, Vec<DirectoryChange>) {
        if let Err(problem) = check_operation(operation) {
            return refused(DirectoryRefusal::Invalid(problem));
        }
        match operation {
            DirectoryOperation::Bootstrap { settings, first } => self.bootstrap(settings, first),
            DirectoryOperation::Join {
                cluster_name,
                member,
            } => self.join(cluster_name, member),
            DirectoryOperation::CreatePartition { name } => self.create_partition(name),
            DirectoryOperation::SetMemberState { id, state } => self.set_member_state(*id, *state),
            DirectoryOperation::MovePartition {
                name,
                generation,
                replicas,
            } => self.move_partition(name, *generation, replicas),
            DirectoryOperation::FinishMove { name, generation } => {
                self.finish_move(name, *generation)
            }
        }
    }

    /// The entry of `name` at `generation`, or why a command for it is refused.
    fn entry_at(
        &mut self,
        name: &PartitionName,
        generation: u64,
    ) -> Result<&mut PartitionEntry, DirectoryRefusal> {
        if self.settings.is_none() {
            return Err(DirectoryRefusal::NotBootstrapped);
        }
        let Some(entry) = self.partitions.get_mut(name) else {
            return Err(DirectoryRefusal::UnknownPartition(name.clone()));
        };
        if entry.generation != generation {
            return Err(DirectoryRefusal::StaleGeneration {
                name: name.clone(),
                current: entry.generation,
                given: generation,
            });
        }
        Ok(entry)
    }

    fn move_partition(
        &mut self,
        name: &PartitionName,
        generation: u64,
        replicas: &[NodeId],
    ) -> (DirectoryOutcome, Vec<DirectoryChange>) {
        // Only active members take new replicas (one that is already a replica may stay).
        let entry_replicas = self
            .partitions
            .get(name)
            .map(|entry| entry.replicas.clone())
            .unwrap_or_default();
        let unfit = replicas.iter().find(|node| {
            let active = self
                .members
                .get(node)
                .is_some_and(|member| member.state == MemberState::Active);
            !active && !entry_replicas.contains(node)
        });
        if let Some(node) = unfit {
            return refused(DirectoryRefusal::Invalid(format!(
                "{node} is not an active member and cannot take a replica"
            )));
        }
        let entry = match self.entry_at(name, generation) {
            Ok(entry) => entry,
            Err(refusal) => return refused(refusal),
        };
        if entry.replicas == replicas {
            let outcome = DirectoryOutcome::Partition {
                entry: entry.clone(),
                created: false,
            };
            return (outcome, Vec::new());
        }
        for node in std::mem::take(&mut entry.replicas) {
            if !entry.previous.contains(&node) {
                entry.previous.push(node);
            }
        }
        entry.replicas = replicas.to_vec();
        entry.generation += 1;
        let outcome = DirectoryOutcome::Partition {
            entry: entry.clone(),
            created: false,
        };
        (outcome, vec![DirectoryChange::Partition(name.clone())])
    }

    fn finish_move(
        &mut self,
        name: &PartitionName,
        generation: u64,
    ) -> (DirectoryOutcome, Vec<DirectoryChange>) {
        let entry = match self.entry_at(name, generation) {
            Ok(entry) => entry,
            Err(refusal) => return refused(refusal),
        };
        let changed = entry.is_moving();
        entry.previous.clear();
        let outcome = DirectoryOutcome::Partition {
            entry: entry.clone(),
            created: false,
        };
        let changes = if changed {
            vec![DirectoryChange::Partition(name.clone())]
        } else {
            Vec::new()
        };
        (outcome, changes)
    }

    fn bootstrap(
        &mut self,
        settings: &ClusterSettings,
        first: &Member,
    ) -> (DirectoryOutcome, Vec<DirectoryChange>) {
        if let Some(ours) = &self.settings {
            return refused(DirectoryRefusal::AlreadyBootstrapped(
                ours.cluster_name.clone(),
            ));
        }
        self.settings = Some(settings.clone());
        let first = Member {
            state: MemberState::Active,
            ..first.clone()
        };
        let id = first.id;
        self.members.insert(id, first);
        self.rebuild_ring();
        (
            DirectoryOutcome::Bootstrapped,
            vec![DirectoryChange::Settings, DirectoryChange::Member(id)],
        )
    }

    fn join(
        &mut self,
        cluster_name: &ClusterName,
        member: &Member,
    ) -> (DirectoryOutcome, Vec<DirectoryChange>) {
        let Some(settings) = &self.settings else {
            return refused(DirectoryRefusal::NotBootstrapped);
        };
        if &settings.cluster_name != cluster_name {
            return refused(DirectoryRefusal::WrongCluster {
                ours: settings.cluster_name.clone(),
                theirs: cluster_name.clone(),
            });
        }
        let address_holder = self.members.values().find(|other| {
            other.id != member.id
                && other.state != MemberState::Left
                && other.peer_address == member.peer_address
        });
        if let Some(holder) = address_holder {
            return refused(DirectoryRefusal::AddressTaken {
                address: member.peer_address.to_string(),
                id: holder.id,
            });
        }
        let state = match self.members.get(&member.id) {
            // The same data dir never comes back; a new one (another instance) may take
            // the id over once no partition lists the old one (its replicas are gone).
            Some(existing) if existing.state == MemberState::Left => {
                if existing.instance == member.instance {
                    return refused(DirectoryRefusal::MemberLeft(member.id));
                }
                let held = self
                    .partitions
                    .values()
                    .any(|entry| entry.holders().contains(&member.id));
                if held {
                    return refused(DirectoryRefusal::LeftMemberStillHeld(member.id));
                }
                MemberState::Active
            }
            Some(existing) if existing.instance != member.instance => {
                return refused(DirectoryRefusal::NodeIdTaken {
                    id: member.id,
                    address: existing.peer_address.to_string(),
                });
            }
            Some(existing) => existing.state,
            None if self.members.len() >= MEMBERS_MAX => {
                return refused(DirectoryRefusal::TooManyMembers);
            }
            None => MemberState::Active,
        };
        let joined = Member {
            state,
            ..member.clone()
        };
        if self.members.get(&member.id) != Some(&joined) {
            self.members.insert(member.id, joined.clone());
            self.rebuild_ring();
        }
        (
            DirectoryOutcome::Joined(joined),
            vec![DirectoryChange::Member(member.id)],
        )
    }

    fn create_partition(
        &mut self,
        name: &PartitionName,
    ) -> (DirectoryOutcome, Vec<DirectoryChange>) {
        if self.settings.is_none() {
            return refused(DirectoryRefusal::NotBootstrapped);
        }
        if let Some(entry) = self.partitions.get(name) {
            let outcome = DirectoryOutcome::Partition {
                entry: entry.clone(),
                created: false,
            };
            return (outcome, Vec::new());
        }
        if self.partitions.len() >= PARTITIONS_MAX {
            return refused(DirectoryRefusal::TooManyPartitions);
        }
        let replicas = self.ring_replicas(name);
        if replicas.is_empty() {
            return refused(DirectoryRefusal::NoActiveMembers);
        }
        let entry = PartitionEntry {
            name: name.clone(),
            id: PartitionId(self.next_partition_id),
            replicas,
            generation: 1,
            previous: Vec::new(),
        };
        self.next_partition_id += 1;
        self.names_by_id.insert(entry.id, name.clone());
        self.partitions.insert(name.clone(), entry.clone());
        (
            DirectoryOutcome::Partition {
                entry,
                created: true,
            },
            vec![DirectoryChange::Partition(name.clone())],
        )
    }

    fn set_member_state(
        &mut self,
        id: NodeId,
        state: MemberState,
    ) -> (DirectoryOutcome, Vec<DirectoryChange>) {
        if self.settings.is_none() {
            return refused(DirectoryRefusal::NotBootstrapped);
        }
        let Some(member) = self.members.get_mut(&id) else {
            return refused(DirectoryRefusal::UnknownMember(id));
        };
        if member.state == MemberState::Left && state != MemberState::Left {
            return refused(DirectoryRefusal::MemberLeft(id));
        }
        let changed = member.state != state;
        member.state = state;
        let outcome = DirectoryOutcome::MemberState(member.clone());
        if !changed {
            return (outcome, Vec::new());
        }
        self.rebuild_ring();
        (outcome, vec![DirectoryChange::Member(id)])
    }
}

fn refused(refusal: DirectoryRefusal) -> (DirectoryOutcome, Vec<DirectoryChange>) {
    (DirectoryOutcome::Refused(refusal), Vec::new())
}

/// Checks what decoding alone does not: settings ranges.
pub fn check_operation(operation: &DirectoryOperation) -> Result<(), String> {
    match operation {
        DirectoryOperation::Bootstrap { settings, .. } => settings.check(),
        DirectoryOperation::MovePartition { replicas, .. } => {
            let distinct: BTreeSet<&NodeId> = replicas.iter().collect();
            if replicas.is_empty() || distinct.len() != replicas.len() {
                return Err("a replica set is non-empty and names each node once".into());
            }
            if replicas.len() > usize::from(u8::MAX) {
                return Err(format!(
                    "{} replicas is more than a set holds",
                    replicas.len()
                ));
            }
            Ok(())
        }
        DirectoryOperation::Join { .. }
        | DirectoryOperation::CreatePartition { .. }
        | DirectoryOperation::SetMemberState { .. }
        | DirectoryOperation::FinishMove { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::names::Address;
    use proptest::prelude::*;

    fn member(id: u32, zone: &str) -> Member {
        Member::for_test(id, zone)
    }

    fn cluster() -> ClusterName {
        ClusterName::new("test").unwrap()
    }

    fn name(text: &str) -> PartitionName {
        PartitionName::new(text).unwrap()
    }

    fn bootstrapped(members: &[Member]) -> Directory {
        let mut directory = Directory::default();
        let (outcome, _) = directory.apply(&DirectoryOperation::Bootstrap {
            settings: ClusterSettings::new(cluster()),
            first: members[0].clone(),
        });
        assert_eq!(outcome, DirectoryOutcome::Bootstrapped);
        for member in &members[1..] {
            let (outcome, _) = directory.apply(&DirectoryOperation::Join {
                cluster_name: cluster(),
                member: member.clone(),
            });
            assert_eq!(outcome, DirectoryOutcome::Joined(member.clone()));
        }
        directory
    }

    fn create(directory: &mut Directory, text: &str) -> (PartitionEntry, bool) {
        match directory
            .apply(&DirectoryOperation::CreatePartition { name: name(text) })
            .0
        {
            DirectoryOutcome::Partition { entry, created } => (entry, created),
            other => panic!("{other:?}"),
        }
    }

    fn refusal(directory: &mut Directory, operation: DirectoryOperation) -> DirectoryRefusal {
        let before = directory.image();
        match directory.apply(&operation) {
            (DirectoryOutcome::Refused(refusal), changes) => {
                assert!(changes.is_empty());
                assert_eq!(directory.image(), before, "a refusal changes nothing");
                refusal
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_but_a_bootstrap_changes_an_empty_directory() {
        let mut directory = Directory::default();
        assert_eq!(
            refusal(
                &mut directory,
                DirectoryOperation::CreatePartition { name: name("p") }
            ),
            DirectoryRefusal::NotBootstrapped
        );
        assert_eq!(
            refusal(
                &mut directory,
                DirectoryOperation::Join {
                    cluster_name: cluster(),
                    member: member(1, "a")
                }
            ),
            DirectoryRefusal::NotBootstrapped
        );
        let mut directory = bootstrapped(&[member(1, "a")]);
        let again = DirectoryOperation::Bootstrap {
            settings: ClusterSettings::new(ClusterName::new("other").unwrap()),
            first: member(2, "b"),
        };
        assert_eq!(
            refusal(&mut directory, again),
            DirectoryRefusal::AlreadyBootstrapped(cluster())
        );
    }

    #[test]
    fn joins_are_checked_and_idempotent() {
        let mut directory = bootstrapped(&[member(1, "a"), member(2, "b")]);
        // A restart joins again with new addresses: the member is updated in place.
        let mut moved = member(2, "b");
        moved.http_address = Address::new("10.0.1.2:8080").unwrap();
        let (outcome, changes) = directory.apply(&DirectoryOperation::Join {
            cluster_name: cluster(),
            member: moved.clone(),
        });
        assert_eq!(outcome, DirectoryOutcome::Joined(moved.clone()));
        assert_eq!(changes, vec![DirectoryChange::Member(NodeId(2))]);
        assert_eq!(directory.member(NodeId(2)), Some(&moved));

        let join = |member: Member| DirectoryOperation::Join {
            cluster_name: cluster(),
            member,
        };
        let wrong_cluster = DirectoryOperation::Join {
            cluster_name: ClusterName::new("other").unwrap(),
            member: member(3, "c"),
        };
        assert!(matches!(
            refusal(&mut directory, wrong_cluster),
            DirectoryRefusal::WrongCluster { .. }
        ));
        let mut impostor = member(2, "b");
        impostor.instance = 7;
        assert_eq!(
            refusal(&mut directory, join(impostor)),
            DirectoryRefusal::NodeIdTaken {
                id: NodeId(2),
                address: "10.0.0.2:7001".into()
            }
        );
        let mut same_address = member(3, "c");
        same_address.peer_address = member(1, "a").peer_address;
        assert_eq!(
            refusal(&mut directory, join(same_address)),
            DirectoryRefusal::AddressTaken {
                address: "10.0.0.1:7001".into(),
                id: NodeId(1)
            }
        );
        let leave = DirectoryOperation::SetMemberState {
            id: NodeId(2),
            state: MemberState::Left,
        };
        assert!(matches!(
            directory.apply(&leave).0,
            DirectoryOutcome::MemberState(_)
        ));
        assert_eq!(
            refusal(&mut directory, join(moved)),
            DirectoryRefusal::MemberLeft(NodeId(2))
        );
        let back = DirectoryOperation::SetMemberState {
            id: NodeId(2),
            state: MemberState::Active,
        };
        assert_eq!(
            refusal(&mut directory, back),
            DirectoryRefusal::MemberLeft(NodeId(2))
        );
        // The address of a member that left is free again.
        let mut reuse = member(4, "b");
        reuse.peer_address = member(2, "b").peer_address;
        assert!(matches!(
            directory.apply(&join(reuse)).0,
            DirectoryOutcome::Joined(_)
        ));
    }

    #[test]
    fn a_partition_is_created_once_on_the_ring_zones_first() {
        let members: Vec<Member> = (1..=6)
            .map(|id| member(id, ["a", "b", "c"][(id as usize - 1) % 3]))
            .collect();
        let mut directory = bootstrapped(&members);
        let (entry, created) = create(&mut directory, "user:42");
        assert!(created);
        assert_eq!(entry.id, PartitionId(FIRST_PARTITION_ID));
        assert_eq!(entry.generation, 1);
        assert_eq!(entry.replicas.len(), 3);
        let zones: BTreeSet<&str> = entry
            .replicas
            .iter()
            .map(|id| directory.member(*id).unwrap().location.zone.as_str())
            .collect();
        assert_eq!(zones.len(), 3, "one replica per zone");
        // A second creation of the name returns the first, whatever changed since.
        let join = DirectoryOperation::Join {
            cluster_name: cluster(),
            member: member(7, "d"),
        };
        directory.apply(&join);
        let (again, created) = create(&mut directory, "user:42");
        assert!(!created);
        assert_eq!(again, entry);
        let (other, _) = create(&mut directory, "user:43");
        assert_eq!(other.id, PartitionId(FIRST_PARTITION_ID + 1));
        assert_eq!(directory.partition_by_id(other.id), Some(&other));
    }

    #[test]
    fn small_clusters_get_fewer_replicas_and_leaving_members_none() {
        let mut directory = bootstrapped(&[member(1, "a")]);
        assert_eq!(create(&mut directory, "p").0.replicas, vec![NodeId(1)]);
        directory.apply(&DirectoryOperation::Join {
            cluster_name: cluster(),
            member: member(2, "b"),
        });
        directory.apply(&DirectoryOperation::SetMemberState {
            id: NodeId(1),
            state: MemberState::Leaving,
        });
        for index in 0..50 {
            let (entry, _) = create(&mut directory, &format!("q{index}"));
            assert_eq!(entry.replicas, vec![NodeId(2)]);
        }
        directory.apply(&DirectoryOperation::SetMemberState {
            id: NodeId(2),
            state: MemberState::Left,
        });
        assert_eq!(
            refusal(
                &mut directory,
                DirectoryOperation::CreatePartition { name: name("r") }
            ),
            DirectoryRefusal::NoActiveMembers
        );
    }

    #[test]
    fn bad_settings_are_refused_by_every_replica() {
        let mut settings = ClusterSettings::new(cluster());
        settings.replicas = 0;
        let operation = DirectoryOperation::Bootstrap {
            settings,
            first: member(1, "a"),
        };
        assert!(check_operation(&operation).is_err());
        let mut directory = Directory::default();
        assert!(matches!(
            refusal(&mut directory, operation),
            DirectoryRefusal::Invalid(_)
        ));
    }

    #[test]
    fn corrupt_images_are_refused() {
        let mut directory = bootstrapped(&[member(1, "a"), member(2, "b")]);
        create(&mut directory, "p");
        let good = directory.image();
        assert_eq!(good.check(), Ok(()));
        assert_eq!(Directory::from_image(good.clone()).image(), good);
        let breakages: Vec<fn(&mut DirectoryImage)> = vec![
            |image| image.members.push(image.members[0].clone()),
            |image| image.members[1].peer_address = image.members[0].peer_address.clone(),
            |image| image.partitions[0].replicas = vec![NodeId(9)],
            |image| image.partitions[0].replicas = vec![NodeId(1), NodeId(1)],
            |image| image.partitions[0].replicas.clear(),
            |image| image.partitions[0].generation = 0,
            |image| image.partitions[0].id = SYSTEM_PARTITION,
            |image| image.next_partition_id = 1,
            |image| image.settings = None,
            |image| image.settings.as_mut().unwrap().directory_voters = 2,
        ];
        for (index, breakage) in breakages.iter().enumerate() {
            let mut image = good.clone();
            breakage(&mut image);
            assert!(image.check().is_err(), "breakage {index} passed");
        }
    }

    fn arbitrary_operation() -> impl Strategy<Value = DirectoryOperation> {
        prop_oneof![
            (1u32..8, 0usize..3, 0u64..2).prop_map(|(id, zone, instance)| {
                let mut member = member(id, ["a", "b", "c"][zone]);
                member.instance += instance;
                DirectoryOperation::Join {
                    cluster_name: cluster(),
                    member,
                }
            }),
            (0u8..20).prop_map(|index| DirectoryOperation::CreatePartition {
                name: name(&format!("p{index}"))
            }),
            (1u32..8, 0usize..3).prop_map(|(id, state)| DirectoryOperation::SetMemberState {
                id: NodeId(id),
                state: [MemberState::Active, MemberState::Leaving, MemberState::Left][state],
            }),
            (
                0u8..20,
                1u64..4,
                proptest::collection::btree_set(1u32..8, 0..4)
            )
                .prop_map(|(index, generation, replicas)| {
                    DirectoryOperation::MovePartition {
                        name: name(&format!("p{index}")),
                        generation,
                        replicas: replicas.into_iter().map(NodeId).collect(),
                    }
                }),
            (0u8..20, 1u64..4).prop_map(|(index, generation)| DirectoryOperation::FinishMove {
                name: name(&format!("p{index}")),
                generation,
            }),
        ]
    }

    #[test]
    fn a_member_that_left_comes_back_only_as_a_new_instance_once_nothing_lists_it() {
        let members = [member(1, "a"), member(2, "b"), member(3, "c")];
        let mut directory = bootstrapped(&members);
        let (entry, _) = create(&mut directory, "p");
        assert!(entry.replicas.contains(&NodeId(2)));
        directory.apply(&DirectoryOperation::SetMemberState {
            id: NodeId(2),
            state: MemberState::Left,
        });
        let join = |member: Member| DirectoryOperation::Join {
            cluster_name: cluster(),
            member,
        };
        // The same data dir: never.
        assert_eq!(
            refusal(&mut directory, join(members[1].clone())),
            DirectoryRefusal::MemberLeft(NodeId(2))
        );
        // A new data dir while a partition still lists the old one: not yet.
        let mut fresh = members[1].clone();
        fresh.instance += 1;
        assert_eq!(
            refusal(&mut directory, join(fresh.clone())),
            DirectoryRefusal::LeftMemberStillHeld(NodeId(2))
        );
        let away: Vec<NodeId> = entry
            .replicas
            .iter()
            .copied()
            .filter(|node| *node != NodeId(2))
            .collect();
        directory.apply(&DirectoryOperation::MovePartition {
            name: name("p"),
            generation: entry.generation,
            replicas: away,
        });
        // Moving away: the old replica still holds it.
        assert_eq!(
            refusal(&mut directory, join(fresh.clone())),
            DirectoryRefusal::LeftMemberStillHeld(NodeId(2))
        );
        directory.apply(&DirectoryOperation::FinishMove {
            name: name("p"),
            generation: entry.generation + 1,
        });
        let (outcome, _) = directory.apply(&join(fresh.clone()));
        assert_eq!(outcome, DirectoryOutcome::Joined(fresh.clone()));
        let back = directory.member(NodeId(2)).unwrap();
        assert_eq!(back.state, MemberState::Active);
        assert_eq!(back.instance, fresh.instance);
        // And the old one stays out.
        assert_eq!(
            refusal(&mut directory, join(members[1].clone())),
            DirectoryRefusal::NodeIdTaken {
                id: NodeId(2),
                address: members[1].peer_address.to_string()
            }
        );
    }

    #[test]
    fn a_move_is_fenced_by_generation_and_remembers_where_it_came_from() {
        let members = [
            member(1, "a"),
            member(2, "b"),
            member(3, "c"),
            member(4, "a"),
        ];
        let mut directory = bootstrapped(&members);
        let (entry, _) = create(&mut directory, "p");
        assert_eq!(entry.generation, 1);
        assert!(!entry.is_moving());
        let target = vec![NodeId(4), entry.replicas[1]];
        let aim = |generation, replicas: &Vec<NodeId>| DirectoryOperation::MovePartition {
            name: name("p"),
            generation,
            replicas: replicas.clone(),
        };
        // A driver that read an older generation changes nothing.
        assert_eq!(
            refusal(&mut directory, aim(0, &target)),
            DirectoryRefusal::StaleGeneration {
                name: name("p"),
                current: 1,
                given: 0
            }
        );
        let (outcome, changes) = directory.apply(&aim(1, &target));
        let DirectoryOutcome::Partition { entry: moved, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(changes, vec![DirectoryChange::Partition(name("p"))]);
        assert_eq!(moved.generation, 2);
        assert_eq!(moved.replicas, target);
        assert_eq!(moved.previous, entry.replicas);
        assert!(moved.holders().contains(&NodeId(4)));
        assert!(entry
            .replicas
            .iter()
            .all(|node| moved.holders().contains(node)));
        // Re-aimed before it finished: the previous set keeps every node that may hold it.
        let again = vec![NodeId(3)];
        let (outcome, _) = directory.apply(&aim(2, &again));
        let DirectoryOutcome::Partition { entry: reaimed, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(reaimed.generation, 3);
        for node in entry.replicas.iter().chain(&target) {
            assert!(reaimed.holders().contains(node), "{node} forgotten");
        }
        // Finishing an older generation's move changes nothing; the current one settles it.
        let finish = |generation| DirectoryOperation::FinishMove {
            name: name("p"),
            generation,
        };
        assert!(matches!(
            refusal(&mut directory, finish(2)),
            DirectoryRefusal::StaleGeneration { current: 3, .. }
        ));
        directory.apply(&finish(3));
        let settled = directory.partition(&name("p")).unwrap();
        assert!(!settled.is_moving());
        assert_eq!(settled.holders(), again);
        assert_eq!(directory.moving_count(), 0);
        // Only active members take a replica.
        directory.apply(&DirectoryOperation::SetMemberState {
            id: NodeId(2),
            state: MemberState::Leaving,
        });
        assert!(matches!(
            refusal(&mut directory, aim(3, &vec![NodeId(2)])),
            DirectoryRefusal::Invalid(_)
        ));
        assert!(matches!(
            refusal(&mut directory, aim(3, &vec![NodeId(9)])),
            DirectoryRefusal::Invalid(_)
        ));
        assert!(matches!(
            refusal(&mut directory, aim(3, &vec![])),
            DirectoryRefusal::Invalid(_)
        ));
    }

    proptest! {
        /// Two replicas applying the same commands agree on every outcome; every state is a
        /// valid image; a name never changes its id.
        #[test]
        fn replicas_agree_and_names_keep_their_ids(
            operations in proptest::collection::vec(arbitrary_operation(), 0..60),
        ) {
            let mut first = bootstrapped(&[member(1, "a")]);
            let mut second = bootstrapped(&[member(1, "a")]);
            let mut ids: BTreeMap<PartitionName, PartitionId> = BTreeMap::new();
            for operation in &operations {
                let (outcome, changes) = first.apply(operation);
                prop_assert_eq!(second.apply(operation), (outcome.clone(), changes));
                prop_assert_eq!(first.image().check(), Ok(()));
                if let DirectoryOutcome::Partition { entry, .. } = outcome {
                    let id = *ids.entry(entry.name.clone()).or_insert(entry.id);
                    prop_assert_eq!(id, entry.id);
                }
            }
            // A replica rebuilt from an image goes on exactly like the others.
            let mut rebuilt = Directory::from_image(first.image());
            for operation in &operations {
                prop_assert_eq!(rebuilt.apply(operation), first.apply(operation));
            }
        }
    }
}

//! A member of the cluster as the directory records it, and the settings every member
//! follows.

use crate::directory::names::{Address, ClusterName};
use crate::ids::{Location, NodeId};
use crate::placement::ring::{VIRTUAL_NODES_DEFAULT, VIRTUAL_NODES_MAX};
use serde::{Deserialize, Serialize};

/// The most replicas a partition may have.
pub const REPLICAS_MAX: u8 = 7;
/// Replicas per partition when none is asked for.
pub const REPLICAS_DEFAULT: u8 = 3;
/// Voters of the directory's own group when none is asked for.
pub const DIRECTORY_VOTERS_DEFAULT: u8 = 3;
/// The directory's group may have 1, 3 or 5 voters: an odd count, small enough that every
/// directory change stays cheap.
pub const DIRECTORY_VOTERS_ALLOWED: [u8; 3] = [1, 3, 5];

/// Where a member is in its life. Only active members are on the ring; a member that left
/// never comes back under its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    Active,
    /// Its replicas are moving away; it still serves them until they have.
    Leaving,
    Left,
}

impl MemberState {
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Drawn once, when the node's data directory is created: a node that joins under an id
    /// held by another instance is a second node given the same id by mistake.
    pub instance: u64,
    /// Where its peers reach it (`--listen`, or `--advertise` when given).
    pub peer_address: Address,
    /// Where its HTTP API listens.
    pub http_address: Address,
    pub location: Location,
    pub state: MemberState,
}

impl Member {
    /// An active member for tests: `id` at 10.0.0.`id` (peer port 7001, HTTP port 8080), in
    /// `zone` of "region", instance 1000 + `id`.
    #[cfg(test)]
    pub(crate) fn for_test(id: u32, zone: &str) -> Member {
        let address = |port: u16| {
            Address::new(format!("10.0.0.{id}:{port}")).expect("a test address is valid")
        };
        Member {
            id: NodeId(id),
            instance: 1000 + u64::from(id),
            peer_address: address(7001),
            http_address: address(8080),
            location: Location::new("region", zone),
            state: MemberState::Active,
        }
    }
}

/// What every member of a cluster follows, fixed when the cluster is bootstrapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub cluster_name: ClusterName,
    /// Replicas per partition (fewer while the cluster has fewer active members).
    pub replicas: u8,
    /// Points per member on the ring.
    pub virtual_nodes: u32,
    /// Voters of the directory's own group.
    pub directory_voters: u8,
}

impl ClusterSettings {
    pub fn new(cluster_name: ClusterName) -> Self {
        Self {
            cluster_name,
            replicas: REPLICAS_DEFAULT,
            virtual_nodes: VIRTUAL_NODES_DEFAULT,
            directory_voters: DIRECTORY_VOTERS_DEFAULT,
        }
    }

    /// Checks settings that came from outside (a command, an image).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=REPLICAS_MAX).contains(&self.replicas) {
            return Err(format!(
                "{} replicas per partition: from 1 to {REPLICAS_MAX} are allowed",
                self.replicas
            ));
        }
        if !(1..=VIRTUAL_NODES_MAX).contains(&self.virtual_nodes) {
            return Err(format!(
                "{} virtual nodes per member: from 1 to {VIRTUAL_NODES_MAX} are allowed",
                self.virtual_nodes
            ));
        }
        if !DIRECTORY_VOTERS_ALLOWED.contains(&self.directory_voters) {
            return Err(format!(
                "{} directory voters: 1, 3 or 5 are allowed",
                self.directory_voters
            ));
        }
        Ok(())
    }
}

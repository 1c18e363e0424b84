//! Identities of nodes and their places: node id, zone and region.
//!
//! A node id is a small integer, stable for the node's life and unique in the cluster; zones
//! and regions are names from configuration. Keys embed the node id, so two nodes may never
//! share one.
//!
//! Both are validated where they are decoded (from a peer, a client or the disk): a node id is
//! in `1..=NodeId::MAX` (0 names no node, and `u32::MAX` is [`NodeId::UNATTRIBUTED`], which
//! never travels), and a zone or region name is 1 to 64 printable ASCII characters.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The highest id a node may have.
    pub const MAX: u32 = u32::MAX - 1;
    /// The sender a driver gives to messages that arrive without a node identity (the
    /// AllData HTTP peer protocol); its answers go back to the waiting request, not the
    /// network. No node may have this id, and it is refused on the wire.
    pub const UNATTRIBUTED: NodeId = NodeId(u32::MAX);

    /// Checks an id that came from outside (config, peer, disk).
    pub fn checked(id: u32) -> Result<NodeId, InvalidNodeId> {
        if (1..=Self::MAX).contains(&id) {
            Ok(NodeId(id))
        } else {
            Err(InvalidNodeId(id))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("node id {0} is out of range: node ids go from 1 to {max}", max = NodeId::MAX)]
pub struct InvalidNodeId(pub u32);

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        NodeId::checked(u32::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "n{}", self.0)
    }
}

/// The longest zone or region name.
pub const PLACE_NAME_BYTES_MAX: usize = 64;

/// Checks a zone or region name: 1 to 64 printable ASCII characters, no spaces.
pub fn check_place_name(name: &str) -> Result<(), InvalidPlaceName> {
    let printable = name.bytes().all(|byte| byte.is_ascii_graphic());
    if name.is_empty() || name.len() > PLACE_NAME_BYTES_MAX || !printable {
        return Err(InvalidPlaceName(name.chars().take(80).collect()));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "zone or region name {0:?} is invalid: it must be 1 to {PLACE_NAME_BYTES_MAX} printable \
     ASCII characters without spaces"
)]
pub struct InvalidPlaceName(pub String);

/// Where a node runs: its zone, inside a region.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    pub region: String,
    pub zone: String,
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            region: String,
            zone: String,
        }
        let raw = Raw::deserialize(deserializer)?;
        check_place_name(&raw.region).map_err(serde::de::Error::custom)?;
        check_place_name(&raw.zone).map_err(serde::de::Error::custom)?;
        Ok(Location {
            region: raw.region,
            zone: raw.zone,
        })
    }
}

impl Location {
    pub fn new(region: impl Into<String>, zone: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            zone: zone.into(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.region, self.zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_from_outside_are_checked() {
        for good in [1u32, 7, NodeId::MAX] {
            let bytes = postcard::to_stdvec(&NodeId(good)).unwrap();
            assert_eq!(postcard::from_bytes::<NodeId>(&bytes), Ok(NodeId(good)));
        }
        for bad in [0u32, u32::MAX] {
            let bytes = postcard::to_stdvec(&bad).unwrap();
            assert!(postcard::from_bytes::<NodeId>(&bytes).is_err(), "{bad}");
            assert!(NodeId::checked(bad).is_err());
        }
    }

    #[test]
    fn place_names_from_outside_are_checked() {
        let good = Location::new("eu-west", "zone-1");
        let bytes = postcard::to_stdvec(&good).unwrap();
        assert_eq!(postcard::from_bytes::<Location>(&bytes), Ok(good));
        for (region, zone) in [
            ("", "z"),
            ("r", "with space"),
            ("r", "tab\tzone"),
            ("é", "z"),
            ("r", &"z".repeat(65)),
        ] {
            let bytes = postcard::to_stdvec(&Location::new(region, zone)).unwrap();
            assert!(
                postcard::from_bytes::<Location>(&bytes).is_err(),
                "{region:?}/{zone:?}"
            );
        }
    }
}

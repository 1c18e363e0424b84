//! The names a directory holds, each checked where it is decoded (from a client, a peer or
//! the disk): a cluster's name, a partition's name and a member's addresses. A value of these
//! types is always valid; the only ways in are the checked constructors and `Deserialize`,
//! which runs the same checks.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest cluster name.
pub const CLUSTER_NAME_BYTES_MAX: usize = 64;
/// The longest partition name.
pub const PARTITION_NAME_BYTES_MAX: usize = 256;
/// The longest `HOST:PORT` address.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// The cluster name when none is given.
pub const CLUSTER_NAME_DEFAULT: &str = "borough";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error(
        "cluster name {0:?} is invalid: it must be 1 to {CLUSTER_NAME_BYTES_MAX} printable \
         ASCII characters without spaces"
    )]
    ClusterName(String),
    #[error("a partition name must not be empty")]
    EmptyPartitionName,
    #[error("partition name of {0} bytes is over the limit of {PARTITION_NAME_BYTES_MAX}")]
    PartitionNameTooLong(usize),
    #[error(
        "address {0:?} is invalid: it must be HOST:PORT, at most {ADDRESS_BYTES_MAX} printable \
         ASCII characters, with a port from 1 to 65535"
    )]
    Address(String),
}

/// A cluster's name: 1 to 64 printable ASCII characters without spaces. Nodes of clusters
/// with different names never talk.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        let printable = name.bytes().all(|byte| byte.is_ascii_graphic());
        if name.is_empty() || name.len() > CLUSTER_NAME_BYTES_MAX || !printable {
            return Err(InvalidName::ClusterName(name.chars().take(80).collect()));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClusterName {
    fn default() -> Self {
        Self(CLUSTER_NAME_DEFAULT.to_string())
    }
}

impl<'de> Deserialize<'de> for ClusterName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ClusterName::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A partition's name, as applications give it: 1 to 256 bytes of anything.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PartitionName(#[serde(with = "serde_bytes")] Vec<u8>);

impl PartitionName {
    pub fn new(name: impl Into<Vec<u8>>) -> Result<Self, InvalidName> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidName::EmptyPartitionName);
        }
        if name.len() > PARTITION_NAME_BYTES_MAX {
            return Err(InvalidName::PartitionNameTooLong(name.len()));
        }
        Ok(Self(name))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PartitionName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
        PartitionName::new(bytes.into_vec()).map_err(serde::de::Error::custom)
    }
}

/// Shown as text when it is UTF-8 without control characters, else escaped.
impl fmt::Display for PartitionName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) if !text.chars().any(char::is_control) => formatter.write_str(text),
            _ => write!(formatter, "{}", self.0.escape_ascii()),
        }
    }
}

impl fmt::Debug for PartitionName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "\"{self}\"")
    }
}

/// A `HOST:PORT` a member is reached at (its peer listener or its HTTP API), as the member
/// advertised it. Resolving it is the production shell's business.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Address(String);

impl Address {
    pub fn new(address: impl Into<String>) -> Result<Self, InvalidName> {
        let address = address.into();
        let printable = address.bytes().all(|byte| byte.is_ascii_graphic());
        let port_ok = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0)
        });
        if address.len() > ADDRESS_BYTES_MAX || !printable || !port_ok {
            return Err(InvalidName::Address(address.chars().take(80).collect()));
        }
        Ok(Self(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Address::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_outside_are_checked() {
        assert!(ClusterName::new("borough").is_ok());
        for bad in ["", "two words", "é", &"c".repeat(65)] {
            assert!(ClusterName::new(bad).is_err(), "{bad:?}");
            let bytes = postcard::to_stdvec(bad).unwrap();
            assert!(postcard::from_bytes::<ClusterName>(&bytes).is_err());
        }
        assert!(PartitionName::new(vec![0u8, 255]).is_ok());
        assert_eq!(
            PartitionName::new(Vec::new()),
            Err(InvalidName::EmptyPartitionName)
        );
        assert_eq!(
            PartitionName::new(vec![b'p'; 257]),
            Err(InvalidName::PartitionNameTooLong(257))
        );
        let too_long = postcard::to_stdvec(&serde_bytes::Bytes::new(&[b'p'; 257])).unwrap();
        assert!(postcard::from_bytes::<PartitionName>(&too_long).is_err());
        let good = PartitionName::new("user:42").unwrap();
        let bytes = postcard::to_stdvec(&good).unwrap();
        assert_eq!(postcard::from_bytes::<PartitionName>(&bytes), Ok(good));
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        for good in ["127.0.0.1:7001", "node-1.example:80", "[::1]:65535"] {
            assert!(Address::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "host",
            ":80",
            "host:0",
            "host:65536",
            "host:http",
            "a b:1",
        ] {
            assert!(Address::new(bad).is_err(), "{bad}");
            let bytes = postcard::to_stdvec(bad).unwrap();
            assert!(postcard::from_bytes::<Address>(&bytes).is_err());
        }
    }

    #[test]
    fn partition_names_show_as_text_or_escaped() {
        assert_eq!(
            PartitionName::new("user:42").unwrap().to_string(),
            "user:42"
        );
        assert_eq!(
            PartitionName::new(vec![b'a', 0, 0xff]).unwrap().to_string(),
            "a\\x00\\xff"
        );
    }
}

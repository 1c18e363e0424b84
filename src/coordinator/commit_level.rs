//! Commit levels: how many durable replicas a client waits for.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CommitLevel {
    One,
    Quorum,
    All,
}

impl CommitLevel {
    pub const EVERY: [CommitLevel; 3] = [CommitLevel::One, CommitLevel::Quorum, CommitLevel::All];

    /// Durable replicas needed before the client is answered: 1, floor(RF/2)+1, or RF.
    pub fn required(self, replication_factor: u32) -> u32 {
        assert!(
            replication_factor > 0,
            "replication factor must be positive"
        );
        match self {
            CommitLevel::One => 1,
            CommitLevel::Quorum => replication_factor / 2 + 1,
            CommitLevel::All => replication_factor,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CommitLevel::One => "ONE",
            CommitLevel::Quorum => "QUORUM",
            CommitLevel::All => "ALL",
        }
    }
}

impl fmt::Display for CommitLevel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown commit level {0:?}: expected ONE, QUORUM or ALL")]
pub struct UnknownCommitLevel(pub String);

impl FromStr for CommitLevel {
    type Err = UnknownCommitLevel;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ONE" => Ok(CommitLevel::One),
            "QUORUM" => Ok(CommitLevel::Quorum),
            "ALL" => Ok(CommitLevel::All),
            other => Err(UnknownCommitLevel(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_counts() {
        let quorum: Vec<u32> = (1..=6).map(|rf| CommitLevel::Quorum.required(rf)).collect();
        assert_eq!(quorum, vec![1, 2, 2, 3, 3, 4]);
        assert_eq!(CommitLevel::One.required(5), 1);
        assert_eq!(CommitLevel::All.required(5), 5);
    }

    #[test]
    fn parses_names_only() {
        assert_eq!("QUORUM".parse(), Ok(CommitLevel::Quorum));
        assert!("quorum".parse::<CommitLevel>().is_err());
    }
}

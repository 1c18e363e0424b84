//! What nodes say to each other about membership: a node that wants to be a member asks any
//! member, and is answered once its directory command applied.
//!
//! Invariant: texts are bounded ([`ANSWER_TEXT_BYTES_MAX`]); a member record decodes only as
//! a validated `Member` (names, addresses and places are checked by their types).

use crate::directory::{ClusterName, Member};
use serde::{Deserialize, Serialize};

/// The longest reason a join answer carries.
pub const ANSWER_TEXT_BYTES_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterMessage {
    /// From a node that wants to be a member, to any member.
    JoinRequest {
        cluster_name: ClusterName,
        member: Member,
    },
    JoinAnswer(JoinAnswer),
    /// From the directory's leader to a node the directory marks left (drained, or declared
    /// dead while it was away): `instance` is the one that left. It deletes its replicas and
    /// stops; its data dir can only rejoin as a new node.
    Departed {
        instance: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinAnswer {
    Accepted,
    /// Not now (no directory leader, no answer in time): ask again.
    Retry(String),
    /// Never: the node must not ask again as it is (another cluster, its id taken).
    Refused(String),
}

impl JoinAnswer {
    /// A retry with its reason cut to the bound.
    pub fn retry(reason: impl Into<String>) -> Self {
        JoinAnswer::Retry(bounded(reason.into()))
    }

    /// A refusal with its reason cut to the bound.
    pub fn refused(reason: impl Into<String>) -> Self {
        JoinAnswer::Refused(bounded(reason.into()))
    }
}

fn bounded(mut text: String) -> String {
    if text.len() > ANSWER_TEXT_BYTES_MAX {
        let mut end = ANSWER_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl ClusterMessage {
    /// Checks a decoded message: what its types alone cannot say.
    pub fn check(&self) -> Result<(), String> {
        match self {
            ClusterMessage::JoinAnswer(JoinAnswer::Retry(text) | JoinAnswer::Refused(text))
                if text.len() > ANSWER_TEXT_BYTES_MAX =>
            {
                Err(format!(
                    "a join answer of {} bytes, more than {ANSWER_TEXT_BYTES_MAX}",
                    text.len()
                ))
            }
            _ => Ok(()),
        }
    }
}

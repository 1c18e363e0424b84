//! What a feed tells its subscribers: [`FeedEvent`]s, handed out as [`FeedDelivery`]s (one
//! event, shared, to every subscription it is for), and the [`SubscriptionId`]s that name
//! subscriptions on one node.

use crate::maps::{MapChange, MapEntries};
use std::sync::Arc;

/// A subscription on one node (numbers start over at every start of the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u64);

/// One message of a feed, in the order a subscription receives them: a `Ready` (or, for a
/// subscription that resumed from a revision still in the history, `Resumed`), then every
/// change after it; a `Ready` again whenever the changes a subscription needs were
/// compacted away; `Resync` last, when it was cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// The whole map at its revision.
    Ready(MapEntries),
    /// The subscription resumed at this revision: every change after it follows.
    Resumed { revision: u64 },
    /// A committed change (set or delete), at its revision.
    Change(MapChange),
    /// The subscription was cut off after the event of `revision`; resume from it.
    Resync { revision: u64, reason: String },
}

impl FeedEvent {
    /// The revision a subscriber is at once it took this event.
    pub fn revision(&self) -> u64 {
        match self {
            FeedEvent::Ready(entries) => entries.revision,
            FeedEvent::Resumed { revision } | FeedEvent::Resync { revision, .. } => *revision,
            FeedEvent::Change(change) => change.revision,
        }
    }

    /// About the bytes the event holds (what a subscriber's buffer counts).
    pub fn size_bytes(&self) -> usize {
        const OVERHEAD_BYTES: usize = 32;
        OVERHEAD_BYTES
            + match self {
                FeedEvent::Ready(entries) => entries
                    .entries
                    .iter()
                    .map(|(key, value)| key.as_str().len() + value.len() + OVERHEAD_BYTES)
                    .sum(),
                FeedEvent::Resumed { .. } => 0,
                FeedEvent::Change(change) => {
                    change.key.as_str().len()
                        + match &change.kind {
                            crate::maps::ChangeKind::Set { value } => value.len(),
                            crate::maps::ChangeKind::Delete { old_value } => old_value.len(),
                        }
                }
                FeedEvent::Resync { reason, .. } => reason.len(),
            }
    }
}

/// A change's kind, borrowed: the value set, or the value deleted.
#[derive(Clone, Copy, Debug)]
pub enum ChangeKindView<'a> {
    Set(&'a crate::maps::MapValue),
    Delete(&'a crate::maps::MapValue),
}

impl<'a> ChangeKindView<'a> {
    pub fn of(change: &'a MapChange) -> Self {
        match &change.kind {
            crate::maps::ChangeKind::Set { value } => ChangeKindView::Set(value),
            crate::maps::ChangeKind::Delete { old_value } => ChangeKindView::Delete(old_value),
        }
    }
}

/// One event for several subscriptions of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedDelivery {
    pub subscriptions: Vec<SubscriptionId>,
    pub event: Arc<FeedEvent>,
}

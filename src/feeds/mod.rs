//! Change feeds of shared maps: the node's hub of subscriptions (`hub`), the events it hands
//! out (`event`), and the bounded buffer a subscriber's connection keeps (`buffer`).

pub mod buffer;
pub mod event;
pub mod hub;

pub use buffer::{FeedBuffer, FeedBufferLimits, Pushed};
pub use event::{ChangeKindView, FeedDelivery, FeedEvent, SubscriptionId};
pub use hub::{FeedConfig, FeedCounters, FeedError, FeedHub, FeedPlantedBug};

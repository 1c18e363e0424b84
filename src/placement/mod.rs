//! Placement: which peers hold an event's replicas, and in which order to try the rest.
//!
//! `plan` is a pure function of the peer table, the strategy, the set of suspected peers and
//! the random stream it is given, so a seed replays the same placement. Its invariants, each
//! checked by property tests:
//! - the coordinator itself comes first, and no node appears twice;
//! - the first `replication_factor` entries are the targets; the rest are spares in fallback
//!   order (other zones, then other regions, then the coordinator's own zone);
//! - `other_zone_replicas` targets sit in distinct other zones of the coordinator's region when
//!   that many such zones exist, then fill from those zones' other peers; likewise
//!   `other_region_replicas` over other regions;
//! - suspected peers are never excluded, only tried after healthy ones of the same group, so a
//!   false suspicion can cost a constraint only when no healthy peer could meet it.

mod peers;
mod plan;
pub mod ring;

pub use peers::PeerTable;
pub use plan::{plan, PlacementError, ReplicaPlan, ReplicationStrategy};
pub use ring::Ring;

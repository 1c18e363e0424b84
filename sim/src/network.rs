//! The simulated network: latency, loss, duplication, reordering and partitions.
//!
//! Every message gets its own latency drawn from the link's range (so messages reorder), may be
//! lost or duplicated while flaky links are on, and is dropped if its link is cut when it is
//! sent or when it arrives. Partitions are directed cuts between nodes: a symmetric partition
//! cuts both directions, a one-way partition one. Zone and region outages are cuts around the
//! group. Healing removes every cut and every flaky-link setting.

use borough::ids::NodeId;
use borough::seams::{Network, Rng};
use borough::wire::Message;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// Messages sent during one node step, drained by the world after the step.
pub type Outbox = Rc<RefCell<Vec<(NodeId, NodeId, Message)>>>;

/// The `Network` seam as one node sees it.
#[derive(Debug)]
pub struct SimNetworkHandle {
    pub from: NodeId,
    pub outbox: Outbox,
}

impl Network<Message> for SimNetworkHandle {
    fn send(&mut self, to: NodeId, message: Message) {
        self.outbox.borrow_mut().push((self.from, to, message));
    }
}

#[derive(Clone, Debug, Default)]
pub struct FlakyLinks {
    pub loss_ratio: f64,
    pub duplicate_ratio: f64,
    pub extra_delay_micros_max: u64,
}

/// Link conditions and cuts.
#[derive(Debug, Default)]
pub struct NetworkModel {
    /// Directed cuts (from, to), counted: overlapping faults may cut the same link, and the
    /// link comes back only when the last of them ends.
    cuts: BTreeMap<(NodeId, NodeId), u32>,
    pub flaky: FlakyLinks,
}

impl NetworkModel {
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        !self.cuts.is_empty() && self.cuts.contains_key(&(from, to))
    }

    /// Cuts every link from `group` to the rest, and back when `both_ways`.
    pub fn isolate(&mut self, group: &BTreeSet<NodeId>, everyone: &[NodeId], both_ways: bool) {
        for inside in group {
            for outside in everyone.iter().filter(|node| !group.contains(node)) {
                *self.cuts.entry((*inside, *outside)).or_default() += 1;
                if both_ways {
                    *self.cuts.entry((*outside, *inside)).or_default() += 1;
                }
            }
        }
    }

    /// Undoes one `isolate` with the same arguments.
    pub fn reconnect(&mut self, group: &BTreeSet<NodeId>, everyone: &[NodeId], both_ways: bool) {
        for inside in group {
            for outside in everyone.iter().filter(|node| !group.contains(node)) {
                self.uncut(*inside, *outside);
                if both_ways {
                    self.uncut(*outside, *inside);
                }
            }
        }
    }

    /// Cuts the directed link `from` → `to` (once more, if already cut).
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        *self.cuts.entry((from, to)).or_default() += 1;
    }

    /// Undoes one `cut` of the directed link `from` → `to`.
    pub fn uncut(&mut self, from: NodeId, to: NodeId) {
        if let Some(count) = self.cuts.get_mut(&(from, to)) {
            *count -= 1;
            if *count == 0 {
                self.cuts.remove(&(from, to));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cuts.clear();
        self.flaky = FlakyLinks::default();
    }

    pub fn cut_count(&self) -> usize {
        self.cuts.len()
    }

    /// Decides a sent message's fate: the delays of each copy to deliver (none if lost).
    pub fn transmit(
        &self,
        from: NodeId,
        to: NodeId,
        base_delay_micros: u64,
        rng: &mut dyn Rng,
    ) -> Vec<u64> {
        if self.is_cut(from, to) || rng.chance(self.flaky.loss_ratio) {
            return Vec::new();
        }
        let extra = |rng: &mut dyn Rng| {
            if self.flaky.extra_delay_micros_max == 0 {
                0
            } else {
                rng.in_range(0, self.flaky.extra_delay_micros_max)
            }
        };
        let mut delays = vec![base_delay_micros + extra(rng)];
        if rng.chance(self.flaky.duplicate_ratio) {
            delays.push(base_delay_micros + extra(rng));
        }
        delays
    }
}

//! Client requests a host has not answered yet, found by request id, by partition and by
//! deadline: a round that applies entries to a few partitions, and a tick with few expiries,
//! cost only what they touch, however many requests wait elsewhere.
//!
//! Invariant: the three indexes hold exactly the same requests; a request's partition and
//! deadline never change while it waits (only [`Pending`]'s other fields may be updated in
//! place).

use crate::partition::PartitionId;
use std::collections::{BTreeMap, BTreeSet};

/// What the indexes need of a waiting request.
pub trait Pending {
    fn partition(&self) -> PartitionId;
    fn deadline_tick(&self) -> u64;
}

#[derive(Debug)]
pub struct PendingRequests<T> {
    by_id: BTreeMap<u64, T>,
    by_partition: BTreeSet<(PartitionId, u64)>,
    by_deadline: BTreeSet<(u64, u64)>,
}

impl<T> Default for PendingRequests<T> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_partition: BTreeSet::new(),
            by_deadline: BTreeSet::new(),
        }
    }
}

impl<T: Pending> PendingRequests<T> {
    pub fn insert(&mut self, request_id: u64, request: T) {
        self.by_partition.insert((request.partition(), request_id));
        self.by_deadline
            .insert((request.deadline_tick(), request_id));
        let previous = self.by_id.insert(request_id, request);
        assert!(
            previous.is_none(),
            "request id {request_id} is already waiting"
        );
    }

    pub fn remove(&mut self, request_id: u64) -> Option<T> {
        let request = self.by_id.remove(&request_id)?;
        self.by_partition.remove(&(request.partition(), request_id));
        self.by_deadline
            .remove(&(request.deadline_tick(), request_id));
        Some(request)
    }

    pub fn get(&self, request_id: u64) -> Option<&T> {
        self.by_id.get(&request_id)
    }

    /// For fields other than the partition and the deadline.
    pub fn get_mut(&mut self, request_id: u64) -> Option<&mut T> {
        self.by_id.get_mut(&request_id)
    }

    /// The requests waiting on `partition`, by id.
    pub fn of_partition(&self, partition: PartitionId) -> impl Iterator<Item = (u64, &T)> + '_ {
        self.by_partition
            .range((partition, 0)..=(partition, u64::MAX))
            .map(|(_, request_id)| (*request_id, &self.by_id[request_id]))
    }

    /// The ids of requests whose deadline is at or before `tick`, in id order.
    pub fn expired(&self, tick: u64) -> Vec<u64> {
        let mut expired: Vec<u64> = self
            .by_deadline
            .range(..=(tick, u64::MAX))
            .map(|(_, request_id)| *request_id)
            .collect();
        expired.sort_unstable();
        expired
    }

    /// Every waiting request's id, in order, leaving none.
    pub fn take_all(&mut self) -> Vec<u64> {
        self.by_partition.clear();
        self.by_deadline.clear();
        std::mem::take(&mut self.by_id).into_keys().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Request(PartitionId, u64);

    impl Pending for Request {
        fn partition(&self) -> PartitionId {
            self.0
        }
        fn deadline_tick(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn the_indexes_agree_through_inserts_and_removals() {
        let mut pending = PendingRequests::default();
        pending.insert(3, Request(PartitionId(1), 50));
        pending.insert(1, Request(PartitionId(2), 10));
        pending.insert(2, Request(PartitionId(1), 10));
        let of_one: Vec<u64> = pending
            .of_partition(PartitionId(1))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(of_one, vec![2, 3]);
        assert_eq!(pending.expired(10), vec![1, 2]);
        assert!(pending.remove(2).is_some());
        assert!(pending.remove(2).is_none());
        assert_eq!(pending.expired(100), vec![1, 3]);
        assert_eq!(pending.take_all(), vec![1, 3]);
        assert!(pending.get(1).is_none() && pending.expired(100).is_empty());
        assert_eq!(pending.of_partition(PartitionId(1)).count(), 0);
    }
}

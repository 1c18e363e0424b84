//! Unit tests of one node's event coordinator, driven by hand: the time and the random
//! stream given with each input, peers' answers written as messages, group commits by
//! `flush`, on the in-memory test disk with its crash and sync-failure model.

use super::{
    CommitLevel, CoordinatorConfig, CoordinatorOutput, EventCoordinator, PlantedBug, PutError,
};
use crate::events::EventKey;
use crate::ids::{Location, NodeId};
use crate::random::SeededRng;
use crate::storage::test_disk::TestDisk;
use crate::wire::{Message, RefusalReason};
use std::sync::Arc;

/// A plausible wall clock, inside the store's open consolidation intervals.
const NOW_MICROS: u64 = 1_700_000_000_000_000;
const LOCAL: NodeId = NodeId(1);

fn place(zone: u32) -> Location {
    Location::new("region-1", format!("zone-{zone}"))
}

struct Harness {
    coordinator: EventCoordinator,
    disk: Arc<TestDisk>,
    rng: SeededRng,
}

/// A coordinator on node 1 (zone 1) with peers 2..=`nodes`, each up in its own zone.
fn harness(nodes: u32, planted_bug: Option<PlantedBug>) -> Harness {
    let disk = TestDisk::new();
    let mut config = CoordinatorConfig::new(LOCAL, place(1));
    config.planted_bug = planted_bug;
    let mut coordinator = EventCoordinator::open(config, disk.clone(), NOW_MICROS).unwrap();
    for peer in 2..=nodes {
        coordinator.peers_mut().add_peer(NodeId(peer), place(peer));
    }
    Harness {
        coordinator,
        disk,
        rng: SeededRng::from_seed(7),
    }
}

impl Harness {
    fn put(&mut self, request_id: u64, level: CommitLevel) -> Option<EventKey> {
        self.coordinator.put_event(
            NOW_MICROS,
            &mut self.rng,
            request_id,
            br#"{"reading":1}"#.to_vec(),
            Some(level),
        )
    }

    fn answers(&mut self) -> Vec<(u64, Result<EventKey, PutError>)> {
        self.coordinator
            .take_outputs()
            .into_iter()
            .filter_map(|output| match output {
                CoordinatorOutput::PutAnswered { request_id, result } => Some((request_id, result)),
                CoordinatorOutput::IntervalClosed(_) => None,
            })
            .collect()
    }

    /// The peers sent a `Replicate`, in order.
    fn replicated_to(&mut self) -> Vec<NodeId> {
        self.coordinator
            .take_sends()
            .into_iter()
            .filter(|(_, message)| matches!(message, Message::Replicate { .. }))
            .map(|(to, _)| to)
            .collect()
    }

    fn succeed(&mut self, from: NodeId, key: &EventKey, write_id: u64) {
        self.coordinator.handle_message(
            NOW_MICROS,
            from,
            Message::ReplicateResult {
                write_id,
                key: key.clone(),
                outcome: Ok(()),
            },
        );
    }
}

fn peer_event(counter: u32) -> (EventKey, Message) {
    let key = EventKey::from_parts(NOW_MICROS - 1_000, NodeId(2), counter);
    let message = Message::Replicate {
        write_id: 40 + u64::from(counter),
        key: key.clone(),
        event: br#"{"from":"peer"}"#.to_vec(),
    };
    (key, message)
}

#[test]
fn a_put_is_answered_only_after_its_group_commit_and_its_level_of_replicas() {
    let mut node = harness(3, None);
    let key = node.put(7, CommitLevel::Quorum).expect("a key is issued");
    let mut targets = node.replicated_to();
    targets.sort();
    assert_eq!(targets, vec![NodeId(2), NodeId(3)]);
    assert!(node.coordinator.has_staged_writes());
    // A peer's success alone is one replica of the two QUORUM needs: the local replica is
    // only staged, not durable.
    node.succeed(NodeId(2), &key, 1);
    assert_eq!(node.answers(), vec![]);
    node.coordinator.flush(NOW_MICROS);
    assert_eq!(node.answers(), vec![(7, Ok(key.clone()))]);
    assert!(node.coordinator.store().get(&key).unwrap().is_some());
    assert_eq!(node.coordinator.counters().group_commits, 1);
}

#[test]
fn even_a_put_at_one_waits_for_the_local_sync_unless_the_canary_says_otherwise() {
    let mut node = harness(3, None);
    let key = node.put(1, CommitLevel::One).unwrap();
    assert_eq!(node.answers(), vec![], "answered before its sync");
    node.coordinator.flush(NOW_MICROS);
    assert_eq!(node.answers(), vec![(1, Ok(key))]);

    // The planted bug is what the durability checker must catch: the answer comes first.
    let mut broken = harness(3, Some(PlantedBug::AcknowledgeBeforeDurable));
    let key = broken.put(1, CommitLevel::One).unwrap();
    assert_eq!(broken.answers(), vec![(1, Ok(key))]);
}

#[test]
fn a_level_the_nodes_up_cannot_meet_fails_before_anything_is_written() {
    let mut node = harness(1, None);
    node.coordinator.peers_mut().add_unplaced(NodeId(2));
    node.coordinator.peers_mut().add_unplaced(NodeId(3));
    assert_eq!(node.put(3, CommitLevel::All), None);
    let answers = node.answers();
    assert!(
        matches!(
            answers.as_slice(),
            [(
                3,
                Err(PutError::NotEnoughNodesUp {
                    required: 3,
                    up: 1,
                    ..
                })
            )]
        ),
        "{answers:?}"
    );
    assert!(node.coordinator.take_sends().is_empty());
    assert!(!node.coordinator.has_staged_writes());
    assert_eq!(node.coordinator.active_writes(), 0);
}

#[test]
fn a_replica_that_times_out_is_replaced_by_the_spare_and_suspected() {
    let mut node = harness(4, None);
    let key = node.put(1, CommitLevel::Quorum).unwrap();
    let first = node.replicated_to();
    assert_eq!(first.len(), 2);
    let spare = (2..=4)
        .map(NodeId)
        .find(|peer| !first.contains(peer))
        .unwrap();
    node.coordinator.flush(NOW_MICROS);
    node.succeed(first[0], &key, 1);
    assert_eq!(node.answers(), vec![(1, Ok(key.clone()))]);
    // The other target never answers: past its deadline the spare takes its place.
    let deadline = NOW_MICROS + node.coordinator.config().replica_timeout_micros;
    assert!(node.coordinator.next_deadline_micros() <= deadline);
    node.coordinator
        .handle_deadlines(deadline - 1, &mut node.rng);
    assert!(
        node.replicated_to().is_empty(),
        "replaced before its deadline"
    );
    node.coordinator.handle_deadlines(deadline, &mut node.rng);
    assert_eq!(node.replicated_to(), vec![spare]);
    let counters = node.coordinator.counters();
    assert_eq!((counters.replica_failures, counters.respreads), (1, 1));
    // Once the spare holds it, the write reaches its replication factor and ends.
    node.succeed(spare, &key, 1);
    assert_eq!(node.coordinator.active_writes(), 0);
}

#[test]
fn a_peer_replica_is_answered_after_its_group_commit_and_refused_when_the_sync_fails() {
    let mut node = harness(3, None);
    let (key, message) = peer_event(1);
    node.coordinator
        .handle_message(NOW_MICROS, NodeId(2), message);
    assert!(
        node.coordinator.take_sends().is_empty(),
        "answered before its sync"
    );
    node.coordinator.flush(NOW_MICROS);
    assert_eq!(
        node.coordinator.take_sends(),
        vec![(
            NodeId(2),
            Message::ReplicateResult {
                write_id: 41,
                key,
                outcome: Ok(()),
            }
        )]
    );

    node.disk.fail_syncs(true);
    let (_, message) = peer_event(2);
    node.coordinator
        .handle_message(NOW_MICROS, NodeId(2), message);
    node.coordinator.flush(NOW_MICROS);
    let sends = node.coordinator.take_sends();
    assert!(
        matches!(
            sends.as_slice(),
            [(NodeId(2), Message::ReplicateResult { outcome: Err(refusal), .. })]
                if refusal.reason == RefusalReason::Unavailable
        ),
        "{sends:?}"
    );
    assert!(node.coordinator.is_poisoned());
    // A poisoned store takes no client write either.
    assert_eq!(node.put(9, CommitLevel::One), None);
    assert!(matches!(
        node.answers().as_slice(),
        [(9, Err(PutError::StoreUnavailable(_)))]
    ));
}

#[test]
fn an_event_held_unconfirmed_is_repaired_after_the_delay_and_a_confirmed_one_is_not() {
    let mut node = harness(3, None);
    let (short, message) = peer_event(1);
    node.coordinator
        .handle_message(NOW_MICROS, NodeId(2), message);
    let (confirmed, message) = peer_event(2);
    node.coordinator
        .handle_message(NOW_MICROS, NodeId(2), message);
    node.coordinator.flush(NOW_MICROS);
    node.coordinator.take_sends();
    node.coordinator.handle_message(
        NOW_MICROS,
        NodeId(2),
        Message::Confirm {
            keys: vec![confirmed.clone()],
        },
    );
    node.coordinator.flush(NOW_MICROS);
    let config = node.coordinator.config().clone();
    // The first repair round only notes when this node first saw the event unconfirmed.
    let first_round = NOW_MICROS + config.repair_interval_micros;
    node.coordinator
        .handle_deadlines(first_round, &mut node.rng);
    assert!(node.replicated_to().is_empty());
    assert_eq!(node.coordinator.counters().repairs, 0);
    let due = first_round + config.repair_delay_micros;
    node.coordinator.handle_deadlines(due, &mut node.rng);
    let sends = node.coordinator.take_sends();
    let repairs: Vec<(NodeId, u64, &EventKey)> = sends
        .iter()
        .filter_map(|(to, message)| match message {
            Message::Replicate { write_id, key, .. } => Some((*to, *write_id, key)),
            _ => None,
        })
        .collect();
    assert_eq!(repairs.len(), 2, "{sends:?}");
    assert!(repairs.iter().all(|(_, _, key)| **key == short));
    assert_eq!(node.coordinator.counters().repairs, 1);
    // Both peers store it: the replication factor is reached and every holder is told.
    for (peer, write_id, _) in repairs.clone() {
        node.succeed(peer, &short, write_id);
    }
    let confirms: Vec<NodeId> = node
        .coordinator
        .take_sends()
        .into_iter()
        .filter(
            |(_, message)| matches!(message, Message::Confirm { keys } if keys == std::slice::from_ref(&short)),
        )
        .map(|(to, _)| to)
        .collect();
    assert_eq!(confirms, vec![NodeId(2), NodeId(3)]);
    assert_eq!(node.coordinator.active_writes(), 0);
    node.coordinator.flush(due);
    // Confirmed here too: no later round repairs it again.
    for round in 1..=3 {
        node.coordinator
            .handle_deadlines(due + round * config.repair_delay_micros, &mut node.rng);
    }
    assert!(node.replicated_to().is_empty());
    assert_eq!(node.coordinator.counters().repairs, 1);
}

#[test]
fn a_repair_that_reaches_no_peer_is_tried_again_in_a_later_round() {
    let mut node = harness(3, None);
    let (_, message) = peer_event(1);
    node.coordinator
        .handle_message(NOW_MICROS, NodeId(2), message);
    node.coordinator.flush(NOW_MICROS);
    node.coordinator.take_sends();
    let config = node.coordinator.config().clone();
    let mut now = NOW_MICROS;
    for _ in 0..6 {
        now += config.repair_interval_micros;
        node.coordinator.handle_deadlines(now, &mut node.rng);
    }
    // Every repair's peers time out and no spare is left, so it ends; the next round starts
    // another, never two at once.
    assert!(node.coordinator.counters().repairs >= 2);
    assert!(node.coordinator.active_writes() <= 1);
}

#[test]
fn messages_from_a_peer_about_another_write_change_nothing() {
    let mut node = harness(3, None);
    let key = node.put(1, CommitLevel::All).unwrap();
    node.replicated_to();
    node.coordinator.flush(NOW_MICROS);
    // A result naming the right write but another key, and one for an unknown write.
    let (other_key, _) = peer_event(5);
    node.succeed(NodeId(2), &other_key, 1);
    node.succeed(NodeId(3), &key, 99);
    assert_eq!(node.answers(), vec![]);
    node.succeed(NodeId(2), &key, 1);
    node.succeed(NodeId(3), &key, 1);
    assert_eq!(node.answers(), vec![(1, Ok(key))]);
}

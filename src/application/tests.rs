//! The handler runtime on a small in-memory cluster of partition hosts (one partition, three
//! replicas): what a handler sees of its partition, and what its caller is told when the
//! handler panics, misses its deadline, or loses its partition's leadership mid-request.

use crate::application::{
    handler_fn, Handler, HandlerContext, HandlerError, HandlerRequest, HandlerRuntime,
};
use crate::coordinator::router::{Router, RouterConfig};
use crate::ids::NodeId;
use crate::partition::host::{HostConfig, PartitionHost, PartitionStart};
use crate::partition::kv_store::{KvStateMachine, ReadRequest};
use crate::partition::route::{ByteAnswer, RouteMessage, RouteRefusal, RouteRefusalKind};
use crate::partition::PartitionId;
use crate::raft::Role;
use crate::storage::test_disk::TestDisk;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

const PARTITION: PartitionId = PartitionId(0);
/// The node the requests come from (a member that routes them).
const ORIGIN: NodeId = NodeId(9);
const SESSION: u64 = 77;

type Answer = Result<ByteAnswer, RouteRefusal>;

struct Cluster {
    hosts: BTreeMap<NodeId, PartitionHost<KvStateMachine>>,
    runtimes: BTreeMap<NodeId, HandlerRuntime>,
    router: Router<KvStateMachine>,
    /// Answers to ORIGIN, by request id.
    answers: BTreeMap<u64, Answer>,
    now_micros: u64,
}

impl Cluster {
    fn new(handler: Arc<dyn Handler>) -> Self {
        let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut cluster = Cluster {
            hosts: BTreeMap::new(),
            runtimes: BTreeMap::new(),
            router: Router::new(RouterConfig::default()),
            answers: BTreeMap::new(),
            now_micros: 0,
        };
        for id in &ids {
            let mut host = PartitionHost::open(
                *id,
                TestDisk::new(),
                HostConfig::default(),
                7,
                KvStateMachine,
            )
            .unwrap();
            host.create_partition(
                PARTITION,
                PartitionStart::Bootstrap {
                    voters: ids.clone(),
                },
            )
            .unwrap();
            cluster.hosts.insert(*id, host);
            let mut runtime = HandlerRuntime::default();
            runtime.set_handler(Arc::clone(&handler));
            cluster.runtimes.insert(*id, runtime);
        }
        for _ in 0..300 {
            if cluster.leader().is_some() {
                cluster.tick(3);
                return cluster;
            }
            cluster.tick(1);
        }
        panic!("no leader was elected");
    }

    fn leader(&self) -> Option<NodeId> {
        self.hosts
            .iter()
            .filter(|(_, host)| {
                host.status(PARTITION)
                    .is_some_and(|status| status.role == Role::Leader)
            })
            .max_by_key(|(_, host)| host.status(PARTITION).map(|status| status.term))
            .map(|(id, _)| *id)
    }

    /// Runs hosts and runtimes and delivers messages until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            let mut sent = Vec::new();
            for (id, host) in self.hosts.iter_mut() {
                let runtime = self.runtimes.get_mut(id).unwrap();
                if runtime.has_ready() {
                    runtime.run(host, &mut self.router, self.now_micros);
                    moved = true;
                }
                host.process();
                for output in host.take_outputs() {
                    let _ = runtime.take_host_output::<KvStateMachine>(output);
                }
                if runtime.has_ready() {
                    moved = true;
                }
                for (to, envelope) in host.take_envelopes() {
                    sent.push((*id, to, envelope));
                }
                for (to, message) in host.take_route_messages() {
                    if let (
                        ORIGIN,
                        RouteMessage::Answer {
                            proposer_session,
                            request_id,
                            result,
                        },
                    ) = (to, message)
                    {
                        assert_eq!(proposer_session, SESSION);
                        assert!(
                            self.answers.insert(request_id, result).is_none(),
                            "request {request_id} was answered twice"
                        );
                    }
                }
            }
            moved |= !sent.is_empty();
            for (from, to, envelope) in sent {
                if let Some(host) = self.hosts.get_mut(&to) {
                    host.receive(from, envelope);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    fn tick(&mut self, ticks: u32) {
        for _ in 0..ticks {
            self.now_micros += 10_000;
            for (id, host) in self.hosts.iter_mut() {
                host.tick();
                let runtime = self.runtimes.get_mut(id).unwrap();
                runtime.run(host, &mut self.router, self.now_micros);
            }
            self.settle();
        }
    }

    /// Sends request `request_id` with `body` to `node`'s runtime.
    fn send(&mut self, node: NodeId, request_id: u64, body: &str, timeout_micros: u64) {
        let message = RouteMessage::Handle {
            partition: PARTITION,
            name: b"accounts".to_vec(),
            proposer_session: SESSION,
            request_id,
            timeout_micros,
            body: body.as_bytes().to_vec(),
        };
        let host = self.hosts.get_mut(&node).unwrap();
        self.runtimes
            .get_mut(&node)
            .unwrap()
            .serve(host, ORIGIN, message, self.now_micros);
        self.settle();
    }

    fn value_at(&mut self, node: NodeId, key: &str) -> Option<Vec<u8>> {
        self.hosts
            .get(&node)
            .unwrap()
            .read_applied(PARTITION, &ReadRequest::Get { key: key.into() })
            .ok()
            .map(|answer| match answer {
                crate::partition::kv_store::ReadAnswer::Value(value) => value,
                other => panic!("a get answered {other:?}"),
            })
    }
}

fn refusal(answer: Option<&Answer>) -> &RouteRefusal {
    match answer {
        Some(Err(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Puts the body under key "k" and replies with what a read of "k" then finds.
fn put_then_get() -> impl Handler {
    handler_fn(|request, context| async move {
        let partition = context.partition();
        partition.put("k", request.body).await?;
        let read = partition.get("k").await?.unwrap_or_default();
        let missing = partition.get("never written").await?;
        assert!(missing.is_none());
        Ok(read)
    })
}

#[test]
fn a_handler_reads_what_it_wrote_and_the_write_is_on_every_replica() {
    let mut cluster = Cluster::new(Arc::new(put_then_get()));
    let leader = cluster.leader().unwrap();
    cluster.send(leader, 1, "hello", 5_000_000);
    assert_eq!(
        cluster.answers.get(&1),
        Some(&Ok(ByteAnswer(b"hello".to_vec())))
    );
    cluster.tick(3);
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        assert_eq!(
            cluster.value_at(node, "k"),
            Some(b"hello".to_vec()),
            "{node}"
        );
    }
}

#[test]
fn a_follower_turns_a_request_away_with_the_leader_it_knows() {
    let mut cluster = Cluster::new(Arc::new(put_then_get()));
    let leader = cluster.leader().unwrap();
    let follower = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|node| *node != leader)
        .unwrap();
    cluster.send(follower, 1, "hello", 5_000_000);
    assert_eq!(
        refusal(cluster.answers.get(&1)).kind,
        RouteRefusalKind::NotLeader {
            leader: Some(leader)
        }
    );
    assert_eq!(cluster.value_at(leader, "k"), None, "it never ran");
}

#[test]
fn a_panicking_handler_fails_its_request_and_the_node_goes_on() {
    let handler = handler_fn(|request, context| async move {
        if request.body == b"panic" {
            panic!("a planted handler panic");
        }
        context.partition().put("k", request.body.clone()).await?;
        Ok(request.body)
    });
    let mut cluster = Cluster::new(Arc::new(handler));
    let leader = cluster.leader().unwrap();
    cluster.send(leader, 1, "panic", 5_000_000);
    let failed = refusal(cluster.answers.get(&1));
    assert_eq!(failed.kind, RouteRefusalKind::HandlerFailed);
    assert!(
        failed.message.contains("a planted handler panic"),
        "{failed:?}"
    );
    cluster.send(leader, 2, "after", 5_000_000);
    assert_eq!(
        cluster.answers.get(&2),
        Some(&Ok(ByteAnswer(b"after".to_vec())))
    );
    assert_eq!(cluster.runtimes[&leader].counters().panicked, 1);
}

#[test]
fn a_handler_refusal_reaches_its_caller_as_is() {
    let handler =
        handler_fn(
            |_, _| async move { Err::<Vec<u8>, _>(HandlerError::refused("no such account")) },
        );
    let mut cluster = Cluster::new(Arc::new(handler));
    let leader = cluster.leader().unwrap();
    cluster.send(leader, 1, "", 5_000_000);
    let refused = refusal(cluster.answers.get(&1));
    assert_eq!(refused.kind, RouteRefusalKind::HandlerRefused);
    assert_eq!(refused.message, "no such account");
}

/// A future that is pending until its gate opens.
struct Gate(Rc<Cell<bool>>);

impl Future for Gate {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0.get() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

thread_local! {
    /// The gate of the handler under test (a handler is `Send + Sync`; its futures are not).
    static GATE: Rc<Cell<bool>> = Rc::new(Cell::new(false));
}

/// Writes "a", waits for the gate, writes "b".
async fn write_wait_write(
    _: HandlerRequest,
    context: HandlerContext,
) -> Result<Vec<u8>, HandlerError> {
    let partition = context.partition();
    partition.put("a", "1").await?;
    Gate(GATE.with(Rc::clone)).await;
    partition.put("b", "2").await?;
    Ok(b"done".to_vec())
}

#[test]
fn a_handler_that_misses_its_deadline_fails_and_says_whether_it_wrote() {
    GATE.with(|gate| gate.set(false));
    let mut cluster = Cluster::new(Arc::new(handler_fn(write_wait_write)));
    let leader = cluster.leader().unwrap();
    cluster.send(leader, 1, "", 200_000);
    assert!(cluster.answers.is_empty(), "it waits for its gate");
    cluster.tick(25);
    let late = refusal(cluster.answers.get(&1));
    // It wrote "a" before the deadline: its caller cannot be told it did nothing.
    assert_eq!(late.kind, RouteRefusalKind::OutcomeUnknown, "{late:?}");
    assert!(
        late.message.contains("did not reply within 200 ms"),
        "{late:?}"
    );
    assert_eq!(cluster.value_at(leader, "a"), Some(b"1".to_vec()));
    assert_eq!(cluster.runtimes[&leader].load(), (0, 0), "the task is gone");
}

/// Writes "a", then the leader moves to another node, then the gate opens.
fn lose_leadership_mid_request(handler: Arc<dyn Handler>) -> (Cluster, NodeId) {
    GATE.with(|gate| gate.set(false));
    let mut cluster = Cluster::new(handler);
    let leader = cluster.leader().unwrap();
    cluster.send(leader, 1, "", 5_000_000);
    assert_eq!(cluster.value_at(leader, "a"), Some(b"1".to_vec()));
    let successor = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|node| *node != leader)
        .unwrap();
    cluster
        .hosts
        .get_mut(&leader)
        .unwrap()
        .transfer_leadership(PARTITION, successor)
        .unwrap();
    cluster.tick(20);
    assert_eq!(cluster.leader(), Some(successor));
    GATE.with(|gate| gate.set(true));
    // The gate is no access: the test wakes the task as an access would.
    cluster
        .runtimes
        .get_mut(&leader)
        .unwrap()
        .ready
        .extend(1..=1);
    cluster.tick(3);
    (cluster, successor)
}

#[test]
fn a_handler_that_wrote_and_lost_its_leader_leaves_the_outcome_unknown() {
    let (mut cluster, successor) =
        lose_leadership_mid_request(Arc::new(handler_fn(write_wait_write)));
    let unknown = refusal(cluster.answers.get(&1));
    assert_eq!(
        unknown.kind,
        RouteRefusalKind::OutcomeUnknown,
        "{unknown:?}"
    );
    assert_eq!(
        cluster.value_at(successor, "b"),
        None,
        "no write after the leader moved"
    );
}

#[test]
fn an_idempotent_handler_that_lost_its_leader_is_sent_to_the_new_one() {
    let handler = Arc::new(handler_fn(write_wait_write).idempotent());
    let (mut cluster, successor) = lose_leadership_mid_request(handler);
    assert_eq!(
        refusal(cluster.answers.get(&1)).kind,
        RouteRefusalKind::NotLeader {
            leader: Some(successor)
        }
    );
    assert_eq!(
        cluster.value_at(successor, "b"),
        None,
        "no write after the leader moved"
    );
}

#[test]
fn one_at_a_time_requests_of_a_partition_queue_behind_the_running_one() {
    GATE.with(|gate| gate.set(false));
    let mut cluster = Cluster::new(Arc::new(handler_fn(write_wait_write).one_at_a_time()));
    let leader = cluster.leader().unwrap();
    cluster.send(leader, 1, "", 5_000_000);
    cluster.send(leader, 2, "", 5_000_000);
    assert_eq!(
        cluster.runtimes[&leader].load(),
        (1, 1),
        "one runs, one waits"
    );
    GATE.with(|gate| gate.set(true));
    cluster
        .runtimes
        .get_mut(&leader)
        .unwrap()
        .ready
        .extend(1..=1);
    cluster.tick(3);
    assert_eq!(
        cluster.answers.get(&1),
        Some(&Ok(ByteAnswer(b"done".to_vec())))
    );
    assert_eq!(
        cluster.answers.get(&2),
        Some(&Ok(ByteAnswer(b"done".to_vec())))
    );
}

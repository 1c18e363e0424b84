//! The TCP peer transport over turmoil's simulated network: the transport's own paths, with a
//! plain channel standing in for the node.
//!
//! - framing: messages of every kind (one of them 1 MiB) sent from A arrive at B intact and in
//!   order, and B reports A up with the location A announced in its hello; a message to an
//!   unknown peer is dropped and counted;
//! - a partition: B reports A down once it has been silent for the down-after time, A's
//!   connection is re-established after the repair, B reports A up again and new messages
//!   arrive (messages sent during the partition may be lost, never reordered);
//! - a crash: B crashes for ten seconds (A's writes stall, its dials time out) and restarts;
//!   A redials it, and what A queued while B was down reaches the new B in order;
//! - backpressure: a peer that accepts and never reads; A's sends never block, its memory
//!   stays bounded (the queue drops and counts what does not fit) and the stalled connection
//!   is torn down and redialled;
//! - refused input: an oversized, malformed, empty or future-version frame closes the inbound
//!   connection and is counted as refused; a connection that never says hello is closed after
//!   the hello timeout, and one whose first frame is garbage is closed too; a refused first
//!   frame is counted like any other;
//! - silence: an inbound connection that says hello and then goes silent without closing is
//!   closed once it has been silent for the down-after time.
//!
//! Every test runs on a fixed turmoil seed with bounded simulated time.
#![cfg(feature = "sim")]

use borough::events::EventKey;
use borough::ids::{Location, NodeId};
use borough::production::driver::{NodeHandle, NodeInput, PeerSender};
use borough::production::membership::Membership;
use borough::production::metrics::Metrics;
use borough::production::peer_frame::{encode_frame, PeerHello, PeerInfo, FRAME_BYTES_MAX};
use borough::production::tcp_transport::{
    PeerNet, TcpTransport, COALESCED_WRITE_BYTES_MAX, OUTBOUND_QUEUE_FRAMES,
};
use borough::wire::Frame;
use borough::wire::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const PEER_PORT: u16 = 7400;
const NODE_A: NodeId = NodeId(1);
const NODE_B: NodeId = NodeId(2);
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
const PEER_DOWN_AFTER: Duration = Duration::from_secs(1);
/// Segments in flight per turmoil TCP direction before a writer blocks (turmoil's default).
const TCP_CAPACITY_SEGMENTS: usize = 64;
const MAX_LINK_LATENCY: Duration = Duration::from_millis(10);
/// The transport's write stall limit (`WRITE_TIMEOUT`, private to the transport).
const WRITE_STALL_LIMIT: Duration = Duration::from_secs(5);
/// The transport's hello limit (`HELLO_TIMEOUT`, private to the transport).
const HELLO_LIMIT: Duration = Duration::from_secs(5);
/// Large enough that a node inbox never pushes back in these tests.
const INBOX_CAPACITY: usize = 65_536;
const KEY_TIMESTAMP_MICROS: u64 = 1_700_000_000_000_000;

/// Dials with turmoil's simulated TCP.
struct TurmoilNet;

impl PeerNet for TurmoilNet {
    type Stream = turmoil::net::TcpStream;

    async fn connect(&self, address: SocketAddr) -> std::io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(address).await
    }
}

/// What the stand-in node was told, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Observed {
    PeerUp { id: NodeId, location: Location },
    PeerDown { id: NodeId },
    Message { from: NodeId, message: Message },
}

/// Everything one host's stand-in node observed, tagged with the host's incarnation (1 for the
/// first run, 2 after the first restart...). Shared with the test body: turmoil runs every host
/// on the test's thread.
type Journal = Arc<Mutex<Vec<(u32, Observed)>>>;

fn location_of(node: NodeId) -> Location {
    Location::new("region-1", format!("zone-{}", node.0))
}

fn peer_address(host: &str) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(host), PEER_PORT)
}

fn peer_info(node: NodeId, host: &str) -> PeerInfo {
    PeerInfo {
        id: node,
        location: location_of(node),
        peer_address: peer_address(host),
        http_address: SocketAddr::new(turmoil::lookup(host), 8080),
    }
}

fn builder(simulation_duration: Duration) -> turmoil::Builder {
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(7)
        .simulation_duration(simulation_duration)
        .max_message_latency(MAX_LINK_LATENCY)
        .tcp_capacity(TCP_CAPACITY_SEGMENTS);
    builder
}

/// A message that carries a counter, so order and loss are visible at the receiver.
fn numbered(counter: u64) -> Message {
    Message::ReplicateResult {
        write_id: counter,
        key: EventKey::from_parts(KEY_TIMESTAMP_MICROS, NODE_A, counter as u32),
        outcome: Ok(()),
    }
}

fn counter_of(message: &Message) -> Option<u64> {
    match message {
        Message::ReplicateResult {
            write_id,
            outcome: Ok(()),
            ..
        } => Some(*write_id),
        _ => None,
    }
}

/// A counter from the metrics' Prometheus text: the transport's counters other than dropped
/// frames have no getter.
fn metric(metrics: &Metrics, name: &str) -> u64 {
    let text = metrics.render(None);
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"));
    line.split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("metric line {line:?} has no value"))
}

fn reconnects(metrics: &Metrics) -> u64 {
    metric(metrics, "borough_peer_reconnects_total")
}

fn refused_frames(metrics: &Metrics) -> u64 {
    metric(metrics, "borough_peer_frames_refused_total")
}

/// Starts a transport on the current turmoil host: it listens on [`PEER_PORT`], knows
/// `peers`, and hands what it receives to a stand-in node that records into `journal`.
async fn start_transport(
    local: NodeId,
    local_host: &str,
    peers: &[(NodeId, &str)],
    metrics: Arc<Metrics>,
    journal: Journal,
    incarnation: u32,
) -> Arc<TcpTransport<TurmoilNet>> {
    let membership = Arc::new(Membership::new(local, PEER_DOWN_AFTER));
    for (peer, host) in peers {
        membership.learn(*peer, peer_address(host));
    }
    let transport = TcpTransport::new(
        TurmoilNet,
        peer_info(local, local_host),
        membership,
        metrics,
        HEARTBEAT_INTERVAL,
    );
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PEER_PORT))
        .await
        .expect("the peer port is free");
    let (inbox, inputs) = mpsc::channel(INBOX_CAPACITY);
    transport.start(NodeHandle::from_sender(inbox));
    tokio::spawn(record_inputs(inputs, journal, incarnation));
    let accepting = Arc::clone(&transport);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(Arc::clone(&accepting).serve_inbound(stream));
        }
    });
    transport
}

async fn record_inputs(mut inputs: mpsc::Receiver<NodeInput>, journal: Journal, incarnation: u32) {
    while let Some(input) = inputs.recv().await {
        let observed = match input {
            NodeInput::PeerUp { id, location, .. } => Observed::PeerUp { id, location },
            NodeInput::PeerDown { id, .. } => Observed::PeerDown { id },
            NodeInput::PeerMessage { from, message } => Observed::Message { from, message },
            _ => continue,
        };
        journal.lock().unwrap().push((incarnation, observed));
    }
}

/// The counters of the numbered messages from A in `journal`, in arrival order.
fn counters_received(journal: &Journal, incarnation: u32) -> Vec<u64> {
    journal
        .lock()
        .unwrap()
        .iter()
        .filter(|(seen_in, _)| *seen_in == incarnation)
        .filter_map(|(_, observed)| match observed {
            Observed::Message {
                from: NODE_A,
                message,
            } => counter_of(message),
            _ => None,
        })
        .collect()
}

fn observed(journal: &Journal) -> Vec<Observed> {
    journal
        .lock()
        .unwrap()
        .iter()
        .map(|(_, observed)| observed.clone())
        .collect()
}

/// Waits (in simulated time) until `condition` holds; false if it did not within `limit`.
async fn wait_until(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Steps the simulation until `condition` holds, panicking after `limit` of simulated time.
fn step_until(
    sim: &mut turmoil::Sim<'_>,
    limit: Duration,
    what: &str,
    condition: impl Fn() -> bool,
) {
    let deadline = sim.elapsed() + limit;
    while !condition() {
        assert!(
            sim.elapsed() < deadline,
            "{what}: not reached within {limit:?} of simulated time"
        );
        sim.step().expect("the simulation steps");
    }
}

fn step_for(sim: &mut turmoil::Sim<'_>, duration: Duration) {
    let until = sim.elapsed() + duration;
    while sim.elapsed() < until {
        sim.step().expect("the simulation steps");
    }
}

/// Host B: a transport that knows A, recording into `journal`; restartable.
fn transport_host(
    sim: &mut turmoil::Sim<'_>,
    metrics: Arc<Metrics>,
    journal: Journal,
    incarnations: Arc<AtomicU32>,
) {
    sim.host("b", move || {
        let metrics = Arc::clone(&metrics);
        let journal = Arc::clone(&journal);
        let incarnation = incarnations.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let _transport =
                start_transport(NODE_B, "b", &[(NODE_A, "a")], metrics, journal, incarnation).await;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
}

#[test]
fn messages_arrive_intact_and_in_order_after_a_hello_with_the_location() {
    let mut sim = builder(Duration::from_secs(20)).build();
    let journal_b = Journal::default();
    let metrics_a = Arc::new(Metrics::default());
    transport_host(
        &mut sim,
        Arc::new(Metrics::default()),
        Arc::clone(&journal_b),
        Arc::default(),
    );

    // Every message kind, one with an event of the 1 MiB maximum (many reads per frame), one
    // with a thousand keys, one refused replica; then a numbered run to check order.
    let mut sent = vec![
        Message::Replicate {
            write_id: 1,
            key: EventKey::from_parts(KEY_TIMESTAMP_MICROS, NODE_A, 1),
            // The largest event a replica carries: one JSON string of 1 MiB.
            event: format!("\"{}\"", "x".repeat(1024 * 1024 - 2)).into_bytes(),
        },
        Message::Confirm {
            keys: (0..1000)
                .map(|counter| EventKey::from_parts(KEY_TIMESTAMP_MICROS, NODE_A, counter))
                .collect(),
        },
        Message::ReplicateResult {
            write_id: 2,
            key: EventKey::from_parts(KEY_TIMESTAMP_MICROS, NODE_A, 2),
            outcome: Err(borough::wire::ReplicaRefusal::new(
                borough::wire::RefusalReason::Unavailable,
                "disk full",
            )),
        },
    ];
    sent.extend((0..200).map(numbered));

    let client_journal = Journal::default();
    let client_metrics = Arc::clone(&metrics_a);
    let expected = sent.clone();
    let journal = Arc::clone(&journal_b);
    sim.client("a", async move {
        let transport = start_transport(
            NODE_A,
            "a",
            &[(NODE_B, "b")],
            Arc::clone(&client_metrics),
            client_journal,
            1,
        )
        .await;
        // Queued before the connection is up: they wait in the bounded queue.
        for message in expected.clone() {
            transport.send(NODE_B, message);
        }
        let count = expected.len();
        let arrived = wait_until(Duration::from_secs(10), || {
            counters_received(&journal, 1).len() == 200 && observed(&journal).len() > count
        })
        .await;
        assert!(arrived, "B received {:?}", observed(&journal).len());
        // A peer nobody knows has no queue: dropped and counted, not buffered.
        let dropped_before = client_metrics.dropped_frames();
        transport.send(NodeId(99), numbered(0));
        assert_eq!(client_metrics.dropped_frames(), dropped_before + 1);
        Ok(())
    });
    sim.run().expect("the simulation completes");

    let observed = observed(&journal_b);
    assert_eq!(
        observed[0],
        Observed::PeerUp {
            id: NODE_A,
            location: location_of(NODE_A),
        },
        "B hears of A's location from its hello before any message"
    );
    let messages: Vec<Message> = observed
        .iter()
        .filter_map(|observed| match observed {
            Observed::Message { from, message } => {
                assert_eq!(*from, NODE_A);
                Some(message.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(messages, sent, "intact and in order");
    assert_eq!(
        observed.len(),
        sent.len() + 1,
        "nothing but the one PeerUp and the messages"
    );
    assert_eq!(
        metrics_a.dropped_frames(),
        1,
        "only the unknown peer's message"
    );
    assert_eq!(reconnects(&metrics_a), 0);
}

/// True once `journal` shows A going down and then coming back up.
fn went_down_and_came_back(journal: &Journal) -> bool {
    let observed = observed(journal);
    let Some(down) = observed
        .iter()
        .position(|observed| *observed == Observed::PeerDown { id: NODE_A })
    else {
        return false;
    };
    observed[down..]
        .iter()
        .any(|observed| matches!(observed, Observed::PeerUp { id: NODE_A, .. }))
}

fn assert_strictly_increasing(counters: &[u64], what: &str) {
    assert!(
        counters.windows(2).all(|pair| pair[0] < pair[1]),
        "{what}: counters out of order or repeated: {counters:?}"
    );
}

#[test]
fn a_partition_takes_the_peer_down_and_the_connection_comes_back_after_repair() {
    let mut sim = builder(Duration::from_secs(60)).build();
    let journal_b = Journal::default();
    let metrics_a = Arc::new(Metrics::default());
    transport_host(
        &mut sim,
        Arc::new(Metrics::default()),
        Arc::clone(&journal_b),
        Arc::default(),
    );

    let client_metrics = Arc::clone(&metrics_a);
    let journal = Arc::clone(&journal_b);
    sim.client("a", async move {
        let transport = start_transport(
            NODE_A,
            "a",
            &[(NODE_B, "b")],
            client_metrics,
            Journal::default(),
            1,
        )
        .await;
        for counter in 0..5 {
            transport.send(NODE_B, numbered(counter));
        }
        let arrived = wait_until(Duration::from_secs(5), || {
            counters_received(&journal, 1).len() == 5
        })
        .await;
        assert!(arrived, "before the partition: {:?}", observed(&journal));

        turmoil::partition("a", "b");
        // Written into a connection whose segments the partition drops: may be lost.
        for counter in 5..25 {
            transport.send(NODE_B, numbered(counter));
        }
        // B last heard A at most a heartbeat (plus latency) before the partition, so it
        // must not call A down much before the down-after time...
        tokio::time::sleep(PEER_DOWN_AFTER - HEARTBEAT_INTERVAL - 2 * MAX_LINK_LATENCY).await;
        let is_down = || observed(&journal).contains(&Observed::PeerDown { id: NODE_A });
        assert!(!is_down(), "A called down too early");
        // ...and must once its failure detector has run past it.
        let went_down = wait_until(2 * HEARTBEAT_INTERVAL + 2 * MAX_LINK_LATENCY, is_down).await;
        assert!(went_down, "B never called A down: {:?}", observed(&journal));

        turmoil::repair("a", "b");
        // New messages until one gets through: the old connection is a black hole (turmoil
        // does not retransmit), so A must notice its writes stall and redial.
        let repaired_at = tokio::time::Instant::now();
        let mut counter = 1000;
        while !counters_received(&journal, 1)
            .iter()
            .any(|received| *received >= 1000)
        {
            assert!(
                repaired_at.elapsed() < Duration::from_secs(30),
                "no message after the repair: {:?}",
                observed(&journal)
            );
            transport.send(NODE_B, numbered(counter));
            counter += 1;
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        }
        for counter in 2000..2010 {
            transport.send(NODE_B, numbered(counter));
        }
        let arrived = wait_until(Duration::from_secs(5), || {
            counters_received(&journal, 1).ends_with(&(2000..2010).collect::<Vec<_>>())
        })
        .await;
        assert!(
            arrived,
            "after the repair: {:?}",
            counters_received(&journal, 1)
        );
        Ok(())
    });
    sim.run().expect("the simulation completes");

    let counters = counters_received(&journal_b, 1);
    assert_eq!(counters[..5], [0, 1, 2, 3, 4]);
    assert_strictly_increasing(&counters, "across the partition");
    assert!(
        went_down_and_came_back(&journal_b),
        "B saw A down, then up again: {:?}",
        observed(&journal_b)
    );
    let observed = observed(&journal_b);
    let up_again = observed
        .iter()
        .rposition(|observed| matches!(observed, Observed::PeerUp { .. }))
        .unwrap();
    assert_eq!(
        observed[up_again],
        Observed::PeerUp {
            id: NODE_A,
            location: location_of(NODE_A),
        }
    );
    let first_after_repair = observed
        .iter()
        .position(|observed| match observed {
            Observed::Message { message, .. } => counter_of(message).is_some_and(|c| c >= 1000),
            _ => false,
        })
        .unwrap();
    assert!(
        up_again < first_after_repair,
        "up again before new messages"
    );
    assert!(reconnects(&metrics_a) >= 1, "A redialled");
}

#[test]
fn a_crashed_peer_is_redialled_and_messages_flow_to_its_restart() {
    let mut sim = builder(Duration::from_secs(60)).build();
    let journal_b = Journal::default();
    let metrics_a = Arc::new(Metrics::default());
    let incarnations = Arc::new(AtomicU32::new(0));
    transport_host(
        &mut sim,
        Arc::new(Metrics::default()),
        Arc::clone(&journal_b),
        Arc::clone(&incarnations),
    );

    // A sends a numbered message every 50 ms until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let next_counter = Arc::new(AtomicU64::new(0));
    let client_metrics = Arc::clone(&metrics_a);
    let client_stop = Arc::clone(&stop);
    let client_counter = Arc::clone(&next_counter);
    sim.client("a", async move {
        let transport = start_transport(
            NODE_A,
            "a",
            &[(NODE_B, "b")],
            client_metrics,
            Journal::default(),
            1,
        )
        .await;
        while !client_stop.load(Ordering::SeqCst) {
            let counter = client_counter.fetch_add(1, Ordering::SeqCst);
            transport.send(NODE_B, numbered(counter));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    });

    step_until(
        &mut sim,
        Duration::from_secs(5),
        "B's first run hears A",
        || counters_received(&journal_b, 1).len() >= 5,
    );
    sim.crash("b");
    assert!(!sim.is_host_running("b"));
    // A crashed turmoil host takes no delivery, so A's writes go unanswered until its window
    // fills and the write timeout gives up on the connection; then its dials time out and
    // back off. Ten seconds covers both.
    step_for(&mut sim, Duration::from_secs(10));
    let sent_before_restart = next_counter.load(Ordering::SeqCst);
    sim.bounce("b");
    assert_eq!(incarnations.load(Ordering::SeqCst), 2);
    step_until(
        &mut sim,
        Duration::from_secs(20),
        "B's restart hears A",
        || counters_received(&journal_b, 2).len() >= 5,
    );
    stop.store(true, Ordering::SeqCst);
    sim.run().expect("A stops");

    let before_crash = counters_received(&journal_b, 1);
    let after_restart = counters_received(&journal_b, 2);
    assert_strictly_increasing(&before_crash, "before the crash");
    assert_strictly_increasing(&after_restart, "after the restart");
    assert!(
        after_restart[0] > *before_crash.last().unwrap(),
        "the restart sees only messages the first run did not: {before_crash:?} {after_restart:?}"
    );
    // Once A gave up on the dead connection, what it sent waited in the queue for the restart.
    assert!(
        after_restart[0] < sent_before_restart,
        "messages sent while B was down reach its restart: {after_restart:?}"
    );
    assert!(
        after_restart.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "nothing lost once reconnected: {after_restart:?}"
    );
    let restart_first = journal_b
        .lock()
        .unwrap()
        .iter()
        .find(|(incarnation, _)| *incarnation == 2)
        .map(|(_, observed)| observed.clone());
    assert_eq!(
        restart_first,
        Some(Observed::PeerUp {
            id: NODE_A,
            location: location_of(NODE_A),
        }),
        "the restarted B hears A's hello first"
    );
    assert!(reconnects(&metrics_a) >= 1, "A redialled");
}

/// Host B as a peer that accepts every connection and never reads from it.
fn never_reading_host(sim: &mut turmoil::Sim<'_>, accepted: Arc<AtomicU32>) {
    sim.host("b", move || {
        let accepted = Arc::clone(&accepted);
        async move {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PEER_PORT)).await?;
            let mut held = Vec::new();
            loop {
                let (stream, _) = listener.accept().await?;
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        }
    });
}

#[test]
fn a_peer_that_never_reads_costs_a_bounded_queue_and_a_redial() {
    const ROUNDS: u64 = 8;
    const MESSAGES_PER_ROUND: u64 = 1500;
    const EVENT_BYTES: usize = 32 * 1024;
    let mut sim = builder(Duration::from_secs(30)).build();
    let accepted = Arc::new(AtomicU32::new(0));
    never_reading_host(&mut sim, Arc::clone(&accepted));

    let metrics_a = Arc::new(Metrics::default());
    let client_metrics = Arc::clone(&metrics_a);
    sim.client("a", async move {
        let metrics = client_metrics;
        let transport = start_transport(
            NODE_A,
            "a",
            &[(NODE_B, "b")],
            Arc::clone(&metrics),
            Journal::default(),
            1,
        )
        .await;
        let mut sent = 0;
        for round in 0..ROUNDS {
            let started = tokio::time::Instant::now();
            for _ in 0..MESSAGES_PER_ROUND {
                let write_id = sent;
                transport.send(
                    NODE_B,
                    Message::Replicate {
                        write_id,
                        key: EventKey::from_parts(KEY_TIMESTAMP_MICROS, NODE_A, write_id as u32),
                        // A JSON string: a node refuses to send an event its peer would refuse.
                        event: format!("\"{}\"", "r".repeat(EVENT_BYTES - 2)).into_bytes(),
                    },
                );
                sent += 1;
            }
            assert_eq!(
                tokio::time::Instant::now(),
                started,
                "sending never waits for the peer"
            );
            // What A holds for B: the queue, plus per connection what the socket took (at most
            // its window, in writes here) and the write a stall is stuck on, each write at
            // most the frames one coalesced write carries. The rest was dropped.
            let connections = reconnects(&metrics) as usize + 1;
            let frames_per_write = COALESCED_WRITE_BYTES_MAX / EVENT_BYTES + 1;
            let held = (sent - metrics.dropped_frames()) as usize;
            assert!(
                held <= OUTBOUND_QUEUE_FRAMES
                    + connections * (TCP_CAPACITY_SEGMENTS + 1) * frames_per_write,
                "round {round}: {held} frames accepted for a peer that never reads"
            );
            assert!(
                metrics.dropped_frames() > 0,
                "round {round}: nothing dropped"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // The first connection stalled as soon as its window filled; the write timeout has
        // passed since, so A has given up on it and dialled again.
        let redialled = wait_until(WRITE_STALL_LIMIT, || reconnects(&metrics) >= 1).await;
        assert!(redialled, "the stalled connection was never dropped");
        Ok(())
    });
    sim.run().expect("the simulation completes");
    assert!(accepted.load(Ordering::SeqCst) >= 2, "B was dialled again");
}

/// A raw connection from the current host to B's peer port.
async fn connect_to_b() -> turmoil::net::TcpStream {
    turmoil::net::TcpStream::connect(peer_address("b"))
        .await
        .expect("B listens")
}

fn hello_from_a() -> Vec<u8> {
    encode_frame(&Frame::Hello(PeerHello {
        sender: peer_info(NODE_A, "a"),
        known_peers: Vec::new(),
    }))
    .unwrap()
}

fn message_frame(message: Message) -> Vec<u8> {
    encode_frame(&Frame::Message(message)).unwrap()
}

/// Whether B closed `stream` within `limit`. B never writes on an inbound connection, so any
/// read that returns is the end of the connection (a FIN or a reset).
async fn closed_within(stream: &mut turmoil::net::TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(read)) => panic!("B wrote {read} bytes on an inbound connection"),
        Err(_) => false,
    }
}

#[test]
fn refused_frames_close_the_connection_and_are_counted() {
    let mut sim = builder(Duration::from_secs(30)).build();
    let journal_b = Journal::default();
    let metrics_b = Arc::new(Metrics::default());
    transport_host(
        &mut sim,
        Arc::clone(&metrics_b),
        Arc::clone(&journal_b),
        Arc::default(),
    );

    let metrics = Arc::clone(&metrics_b);
    let journal = Arc::clone(&journal_b);
    sim.client("a", async move {
        // Byte for byte after a good hello and a good message; postcard writes the u16
        // version and the body's variant index as one-byte varints here.
        let mut length_over_the_limit = (FRAME_BYTES_MAX + 1).to_be_bytes().to_vec();
        // The length alone is refused; the body is never sent (nor read).
        length_over_the_limit.truncate(4);
        let cases: [(&str, Vec<u8>); 4] = [
            ("oversized", length_over_the_limit),
            ("empty", vec![0, 0, 0, 0]),
            ("malformed", vec![0, 0, 0, 3, 2, 0x17, 0]),
            ("future version", vec![0, 0, 0, 2, 3, 1]),
        ];
        for (index, (case, bad_frame)) in cases.into_iter().enumerate() {
            let refused_before = refused_frames(&metrics);
            let mut stream = connect_to_b().await;
            stream.write_all(&hello_from_a()).await?;
            stream
                .write_all(&message_frame(numbered(index as u64)))
                .await?;
            stream.write_all(&bad_frame).await?;
            assert!(
                closed_within(&mut stream, Duration::from_secs(1)).await,
                "{case}: connection left open"
            );
            assert_eq!(
                refused_frames(&metrics),
                refused_before + 1,
                "{case}: counted as refused"
            );
            assert_eq!(
                counters_received(&journal, 1).last(),
                Some(&(index as u64)),
                "{case}: the good message before it was delivered"
            );
        }

        // A second hello on one connection is a protocol error: closed.
        let mut stream = connect_to_b().await;
        stream.write_all(&hello_from_a()).await?;
        stream.write_all(&hello_from_a()).await?;
        assert!(
            closed_within(&mut stream, Duration::from_secs(1)).await,
            "second hello: connection left open"
        );

        // Anything but a hello first, garbage included, is closed at once.
        for (case, first_frame) in [
            ("message before hello", message_frame(numbered(100))),
            (
                "oversized first frame",
                (FRAME_BYTES_MAX + 1).to_be_bytes().to_vec(),
            ),
            ("malformed first frame", vec![0, 0, 0, 3, 2, 0x17, 0]),
        ] {
            let mut stream = connect_to_b().await;
            stream.write_all(&first_frame).await?;
            assert!(
                closed_within(&mut stream, Duration::from_secs(1)).await,
                "{case}: connection left open"
            );
        }

        // A connection that never says anything is closed after the hello timeout, no sooner.
        let mut stream = connect_to_b().await;
        assert!(
            !closed_within(&mut stream, HELLO_LIMIT - Duration::from_millis(500)).await,
            "silent connection closed before the hello timeout"
        );
        assert!(
            closed_within(&mut stream, Duration::from_secs(1)).await,
            "silent connection left open past the hello timeout"
        );
        Ok(())
    });
    sim.run().expect("the simulation completes");
    assert_eq!(
        counters_received(&journal_b, 1),
        [0, 1, 2, 3],
        "only the good messages reached the node"
    );
}

// A first frame that is refused (here oversized) is counted like one after the hello.
#[test]
fn a_refused_first_frame_is_counted() {
    let mut sim = builder(Duration::from_secs(10)).build();
    let metrics_b = Arc::new(Metrics::default());
    transport_host(
        &mut sim,
        Arc::clone(&metrics_b),
        Journal::default(),
        Arc::default(),
    );
    sim.client("a", async move {
        let mut stream = connect_to_b().await;
        stream
            .write_all(&(FRAME_BYTES_MAX + 1).to_be_bytes())
            .await?;
        assert!(closed_within(&mut stream, Duration::from_secs(1)).await);
        Ok(())
    });
    sim.run().expect("the simulation completes");
    assert_eq!(refused_frames(&metrics_b), 1);
}

// A peer that goes silent without closing (it lost power, or a partition ate its FIN) must
// not hold the reader task and its socket forever: B never writes on inbound connections, so
// TCP would never notice. Heartbeats come every heartbeat interval, so silence past the
// down-after time means the connection is dead.
#[test]
fn an_inbound_connection_silent_past_the_down_after_time_is_closed() {
    let mut sim = builder(Duration::from_secs(30)).build();
    transport_host(
        &mut sim,
        Arc::new(Metrics::default()),
        Journal::default(),
        Arc::default(),
    );
    sim.client("a", async move {
        let mut stream = connect_to_b().await;
        stream.write_all(&hello_from_a()).await?;
        assert!(
            closed_within(&mut stream, 10 * PEER_DOWN_AFTER).await,
            "a silent connection is held open"
        );
        Ok(())
    });
    sim.run().expect("the simulation completes");
}

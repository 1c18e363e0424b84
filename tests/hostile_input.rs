//! Real `borough` processes on loopback, tried as a hostile peer and a careless client would:
//! forged and fuzzed peer frames, a data directory holding a record with invalid values,
//! floods of idle and half-sent HTTP connections under a low file limit, deeply nested JSON,
//! a hello that tries to take over a peer that is up, forged gossip, and the answers a client
//! needs to retry safely. Each test asserts that the node keeps serving, and that what it
//! refused changed nothing.

// Tests measure wall time and run threads; the disallowed-methods lint guards the core.
#![allow(clippy::disallowed_methods)]

mod cluster_support;

/// The program `cluster_support` starts.
const BINARY: &str = env!("CARGO_BIN_EXE_borough");

use borough::events::EventKey;
use borough::ids::{Location, NodeId};
use borough::partition::envelope::RaftEnvelope;
use borough::production::peer_frame::{encode_frame, PeerHello, PeerInfo};
use borough::raft::{Entry, EntryKind, Message as RaftMessage, MessageBody};
use borough::seams::{Rng, SeededRng};
use borough::wire::{self, Frame, FrameKind, Message};
use cluster_support::{http_request, Cluster, REQUEST_TIMEOUT};
use serde::Serialize;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const PUT_TIMEOUT: Duration = Duration::from_secs(35);

fn put(address: SocketAddr, commit: &str, body: &[u8]) -> cluster_support::HttpResponse {
    http_request(
        address,
        "POST",
        &format!("/events?commit={commit}"),
        Some(body),
        PUT_TIMEOUT,
    )
    .unwrap_or_else(|failure| panic!("{failure}"))
}

fn get(address: SocketAddr, target: &str) -> cluster_support::HttpResponse {
    http_request(address, "GET", target, None, REQUEST_TIMEOUT)
        .unwrap_or_else(|failure| panic!("{failure}"))
}

/// A put that must succeed; returns the key.
fn put_ok(address: SocketAddr, body: &[u8]) -> String {
    let response = put(address, "ONE", body);
    assert_eq!(response.status, 201, "{}", response.describe());
    response.json().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn metric(address: SocketAddr, name: &str) -> u64 {
    let text = get(address, "/metrics").body_text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// The node serves: a put and the read of its key back, byte for byte.
fn assert_serving(address: SocketAddr, marker: &str) {
    let body = format!("{{\"still_serving\":\"{marker}\"}}");
    let key = put_ok(address, body.as_bytes());
    let read = get(address, &format!("/events/{key}"));
    assert_eq!(read.status, 200, "{}", read.describe());
    assert_eq!(read.body, body.as_bytes());
}

fn hello(from: u32, peer_address: SocketAddr, known_peers: Vec<(NodeId, SocketAddr)>) -> Vec<u8> {
    encode_frame(&Frame::Hello(PeerHello {
        sender: PeerInfo {
            id: NodeId(from),
            location: Location::new("region-1", "zone-hostile"),
            peer_address,
            http_address: peer_address,
        },
        known_peers,
    }))
    .unwrap()
}

/// A frame payload behind its 4-byte length, as the TCP transport frames it.
fn length_prefixed(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A message frame whose fields were never checked: what a hostile peer can write.
fn forged<T: Serialize>(body: &T) -> Vec<u8> {
    let payload = postcard::to_extend(body, wire::header(FrameKind::Message)).unwrap();
    length_prefixed(&payload)
}

#[derive(Serialize)]
enum Unchecked {
    Replicate {
        write_id: u64,
        key: String,
        #[serde(with = "serde_bytes")]
        event: Vec<u8>,
    },
    #[allow(dead_code)]
    ReplicateResult,
    Confirm {
        keys: Vec<String>,
    },
}

/// Writes `frames` and waits until the node closes the connection (or `within` passes).
fn send_until_closed(peer: SocketAddr, frames: &[Vec<u8>], within: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect(peer) else {
        return false;
    };
    for frame in frames {
        if stream.write_all(frame).is_err() {
            return true;
        }
    }
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 64];
    // The node never writes on an inbound peer connection: a read ends only when it closes.
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// One connection that said hello and sent `"x"` as an event key used to panic the node
/// thread (a replica) or poison the store for good (a confirmation). Now each frame is
/// refused at the edge, the connection closed, the node serves, and restarts on its data.
#[test]
fn forged_keys_from_a_peer_change_nothing_and_the_store_reopens() {
    let mut cluster = Cluster::start(1);
    let (http, peer) = (cluster.http(0), cluster.peer(0));
    let before = put_ok(http, br#"{"before":"forged frames"}"#);
    let own = SocketAddr::from(([127, 0, 0, 1], 1));
    let forged_replica = forged(&Unchecked::Replicate {
        write_id: 1,
        key: "x".into(),
        event: b"{}".to_vec(),
    });
    let forged_confirm = forged(&Unchecked::Confirm {
        keys: vec!["x".into()],
    });
    for (case, frame) in [("replicate", forged_replica), ("confirm", forged_confirm)] {
        assert!(
            send_until_closed(
                peer,
                &[hello(77, own, Vec::new()), frame],
                Duration::from_secs(5)
            ),
            "{case}: the connection was left open"
        );
        assert_serving(http, case);
    }
    assert!(metric(http, "borough_peer_frames_refused_total") >= 2);
    let health = get(http, "/health").json().unwrap();
    assert_eq!(health["status"], "ok", "{health}");

    // SIGKILL and restart on the same data dir: the store opens and holds what it held.
    cluster.kill(0);
    cluster.restart(0);
    cluster
        .wait_until_healthy(cluster_support::STARTUP_TIMEOUT)
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(get(http, &format!("/events/{before}")).status, 200);
    assert_serving(http, "after restart");
}

/// Frames built from the real message types with random fields, and then with random bytes
/// changed, over many connections: the node refuses what it must and keeps serving.
#[test]
fn a_fuzzed_stream_of_frames_leaves_the_node_serving() {
    let mut cluster = Cluster::start(1);
    let (http, peer) = (cluster.http(0), cluster.peer(0));
    let mut rng = SeededRng::from_seed(0xF022);
    let own = SocketAddr::from(([127, 0, 0, 1], 2));
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let mut connections = 0;
    let mut frames_sent = 0;
    while frames_sent < 3000 {
        let sender = 100 + rng.below(50) as u32;
        let mut frames = vec![hello(sender, own, Vec::new())];
        for _ in 0..20 {
            let message = random_message(&mut rng, sender, now_micros);
            // Unchecked: random fields break the rules a node's own encoder enforces.
            let mut payload = wire::encode_message_unchecked(&message).unwrap();
            if rng.chance(0.5) {
                mutate(&mut rng, &mut payload);
            }
            let frame = length_prefixed(&payload);
            frames.push(frame);
            frames_sent += 1;
        }
        send_until_closed(peer, &frames, Duration::from_millis(200));
        connections += 1;
    }
    eprintln!("{frames_sent} fuzzed frames over {connections} connections");
    // The node refused frames at the edge (closing those connections), and messages it
    // will not take (Raft traffic, with no partitions served here).
    let refused_frames = metric(http, "borough_peer_frames_refused_total");
    let refused_messages = metric(http, "borough_peer_messages_refused_total");
    eprintln!("refused: {refused_frames} frames, {refused_messages} messages");
    assert!(refused_frames >= 100, "{refused_frames} frames refused");
    assert!(refused_messages >= 1, "{refused_messages} messages refused");
    assert_serving(http, "after fuzzing");
    let health = get(http, "/health").json().unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    cluster.kill(0);
    cluster.restart(0);
    cluster
        .wait_until_healthy(cluster_support::STARTUP_TIMEOUT)
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert_serving(http, "after fuzzing and a restart");
}

fn random_key(rng: &mut SeededRng, now_micros: u64) -> EventKey {
    let timestamp = now_micros - 60_000_000 + rng.below(120_000_000);
    EventKey::from_parts(
        timestamp,
        NodeId(1 + rng.below(200) as u32),
        rng.next_u64() as u32,
    )
}

fn random_u64(rng: &mut SeededRng) -> u64 {
    match rng.below(4) {
        0 => rng.below(10),
        1 => rng.next_u64(),
        2 => u64::MAX - rng.below(3),
        _ => 1 << rng.below(64),
    }
}

fn random_message(rng: &mut SeededRng, sender: u32, now_micros: u64) -> Message {
    match rng.below(4) {
        0 => Message::Replicate {
            write_id: rng.next_u64(),
            key: random_key(rng, now_micros),
            event: format!("{{\"fuzz\":{}}}", rng.next_u64()).into_bytes(),
        },
        1 => Message::ReplicateResult {
            write_id: rng.next_u64(),
            key: random_key(rng, now_micros),
            outcome: Ok(()),
        },
        2 => Message::Confirm {
            keys: (0..rng.below(20))
                .map(|_| random_key(rng, now_micros))
                .collect(),
        },
        _ => {
            let body = match rng.below(4) {
                0 => MessageBody::Vote {
                    last_log_index: random_u64(rng),
                    last_log_term: random_u64(rng),
                    transfer: rng.chance(0.5),
                },
                1 => MessageBody::Append {
                    prev_log_index: random_u64(rng),
                    prev_log_term: random_u64(rng),
                    entries: (0..rng.below(4))
                        .map(|offset| Entry {
                            term: random_u64(rng),
                            index: random_u64(rng).wrapping_add(offset),
                            kind: EntryKind::Command(vec![7; rng.below(64) as usize]),
                        })
                        .collect(),
                    leader_commit: random_u64(rng),
                },
                2 => MessageBody::Heartbeat {
                    leader_commit: random_u64(rng),
                    read_round: random_u64(rng),
                    quiesce: rng.chance(0.5),
                },
                _ => MessageBody::ReadIndexResponse {
                    context: random_u64(rng),
                    index: random_u64(rng),
                },
            };
            Message::Raft(RaftEnvelope {
                messages: vec![(
                    borough::partition::PartitionId(rng.below(8)),
                    RaftMessage {
                        from: NodeId(sender),
                        to: NodeId(1 + rng.below(3) as u32),
                        term: random_u64(rng),
                        body,
                    },
                )],
            })
        }
    }
}

fn mutate(rng: &mut SeededRng, payload: &mut [u8]) {
    for _ in 0..1 + rng.below(4) {
        if payload.is_empty() {
            return;
        }
        let at = rng.below(payload.len() as u64) as usize;
        payload[at] = rng.below(256) as u8;
    }
}

/// A data directory whose event log holds a checksummed record with a malformed key (what a
/// forged confirmation used to write) opens, skips the record loudly, and serves.
#[test]
fn a_data_directory_holding_a_record_with_invalid_values_opens() {
    let mut cluster = Cluster::start(1);
    let http = cluster.http(0);
    let key = put_ok(http, br#"{"kept":true}"#);
    cluster.kill(0);
    let data = cluster.nodes[0].data_dir();
    let mut segments: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("log-") && name.ends_with(".wal")
        })
        .collect();
    segments.sort();
    let segment = segments.last().expect("an event log segment");
    #[derive(Serialize)]
    enum Record {
        #[allow(dead_code)]
        Event,
        Confirm {
            keys: Vec<String>,
        },
    }
    let payload = postcard::to_stdvec(&Record::Confirm {
        keys: vec!["x".into()],
    })
    .unwrap();
    let mut record = (payload.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(segment)
        .unwrap();
    file.write_all(&record).unwrap();
    file.sync_all().unwrap();
    drop(file);

    cluster.restart(0);
    cluster
        .wait_until_healthy(cluster_support::STARTUP_TIMEOUT)
        .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.log_tails()));
    assert_eq!(get(http, &format!("/events/{key}")).status, 200);
    assert_serving(http, "after the invalid record");
    let log = std::fs::read_to_string(cluster.nodes[0].log_path()).unwrap();
    assert!(
        log.contains("passed its checksum but holds invalid values"),
        "the skip was not logged:\n{}",
        cluster.log_tails()
    );
}

/// Under `ulimit -n 1024`, 1,100 idle connections used to stop a node answering anything.
/// Now connections beyond the cap are answered 503 at once, the idle ones are closed after
/// the header-read timeout, a half-sent request is not held, and the node serves again.
#[test]
fn idle_and_half_sent_connections_cannot_starve_the_node() {
    // This test's own process holds 1,400 sockets at once: raise its soft limit (up to the
    // hard one) so it runs under a default `ulimit -n 1024` too.
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.map_or(4096, |hard| hard.min(4096));
    if limit.current.is_some_and(|soft| soft < wanted) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(wanted),
                maximum: limit.maximum,
            },
        );
    }
    let raised = getrlimit(Resource::Nofile).current;
    assert!(
        raised.is_none_or(|soft| soft >= 2048),
        "this test needs 2,048 open files and the hard limit allows {raised:?}"
    );
    // A header-read timeout long enough that no held connection is closed (and its slot
    // reused) before every connection of the flood was accepted, even on a loaded machine.
    let header_read_timeout = Duration::from_secs(8);
    let cluster = Cluster::start_limited(
        1,
        &[
            "--http-header-read-timeout-ms",
            "8000",
            "--http-connections-max",
            "512",
            "--peer-connections-max",
            "100",
        ],
        Some(1024),
    );
    let http = cluster.http(0);
    // Silent connections to the peer port: beyond the cap they are closed at once (well
    // before the 5 s a connection has to say hello).
    let peers: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(cluster.peer(0)).expect("the kernel accepts it"))
        .collect();
    let (closed, _) = classify(peers, Duration::from_secs(3), |answer| answer.is_empty());
    assert!(
        closed.len() >= 200,
        "{} peer connections closed",
        closed.len()
    );

    let streams: Vec<TcpStream> = (0..1100)
        .map(|_| TcpStream::connect(http).expect("the kernel accepts the connection"))
        .collect();
    let flooded_at = Instant::now();
    let (refused, idle) = classify(streams, Duration::from_secs(5), |answer| {
        answer.starts_with(b"HTTP/1.1 503")
    });
    assert!(
        idle.len() <= 512,
        "{} idle connections held, over the cap",
        idle.len()
    );
    assert!(refused.len() >= 1100 - 512, "{} refused", refused.len());
    // Within the header-read timeout the held ones are closed by the node.
    for mut stream in idle {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut buffer = [0u8; 16];
        assert!(
            matches!(stream.read(&mut buffer), Ok(0) | Err(_)),
            "an idle connection was kept"
        );
    }
    assert!(flooded_at.elapsed() < header_read_timeout + Duration::from_secs(5));
    drop(refused);
    assert_serving(http, "after the idle flood");

    // A request head that never ends is not held either.
    let mut half = TcpStream::connect(http).unwrap();
    half.write_all(b"POST /events HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    let _ = half.read(&mut buffer);
    assert!(
        started.elapsed() < header_read_timeout + Duration::from_secs(4),
        "a half-sent request was held for {:?}",
        started.elapsed()
    );
    assert!(metric(http, "borough_connections_refused_total") >= 588);
    assert_serving(http, "after a half-sent request");
}

/// Sorts connections by what the server did within `within`: those whose first bytes (or
/// end of stream, as an empty answer) satisfy `matches`, and the rest, still silent.
fn classify(
    streams: Vec<TcpStream>,
    within: Duration,
    matches: impl Fn(&[u8]) -> bool,
) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let deadline = Instant::now() + within;
    let mut matched = Vec::new();
    let mut pending = streams;
    for stream in &pending {
        stream.set_nonblocking(true).unwrap();
    }
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for mut stream in pending {
            let mut answer = [0u8; 12];
            match stream.read(&mut answer) {
                Ok(read) if matches(&answer[..read]) => matched.push(stream),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => still.push(stream),
                _ => still.push(stream),
            }
        }
        pending = still;
        std::thread::sleep(Duration::from_millis(50));
    }
    (matched, pending)
}

/// JSON nested 100,000 deep used to be stored with 201; the limit is 64 levels.
#[test]
fn deeply_nested_json_is_refused_and_numbers_come_back_byte_for_byte() {
    let cluster = Cluster::start(1);
    let http = cluster.http(0);
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let response = put(http, "ONE", deep.as_bytes());
    assert_eq!(response.status, 400, "{}", response.describe());
    assert!(
        response.body_text().contains("nested deeper than 64"),
        "{}",
        response.describe()
    );
    let at_limit = format!("{}1{}", "[".repeat(64), "]".repeat(64));
    assert_eq!(put(http, "ONE", at_limit.as_bytes()).status, 201);

    // Byte-exact on every read path, the merged scan included.
    let body = br#"{"big": 123456789012345678901234567890, "f": 1.10, "b": 1}"#;
    let key = put_ok(http, body);
    let read = get(http, &format!("/events/{key}"));
    assert_eq!(read.body, body);
    let scan = get(http, "/events?limit=100").body_text();
    assert!(
        scan.contains(&format!(
            r#""key":"{key}","event":{}"#,
            std::str::from_utf8(body).unwrap()
        )),
        "the scan changed the event: {scan}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_borough"))
        .args([
            "event",
            "scan",
            "--node",
            &http.to_string(),
            "--limit",
            "100",
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("123456789012345678901234567890, \"f\": 1.10"),
        "{printed}"
    );
}

/// A hello claiming the id of a peer that is up is refused when it would move its peer
/// address, its client address or its place: each would hand the peer's traffic, merged
/// reads or placement to whoever claims its id.
#[test]
fn a_hello_cannot_take_over_a_peer_that_is_up() {
    let cluster = Cluster::start(2);
    let (http_1, peer_1) = (cluster.http(0), cluster.peer(0));
    let node_2 = cluster.nodes[1].id;
    let impostor = SocketAddr::from(([127, 0, 0, 1], 9));
    let real_peer_address = cluster.peer(1);
    let takeovers = [
        hello(node_2, impostor, Vec::new()),
        // The real peer address, but another client address and place.
        encode_frame(&Frame::Hello(PeerHello {
            sender: PeerInfo {
                id: NodeId(node_2),
                location: Location::new("region-1", "zone-elsewhere"),
                peer_address: real_peer_address,
                http_address: impostor,
            },
            known_peers: Vec::new(),
        }))
        .unwrap(),
    ];
    for (case, frame) in takeovers.into_iter().enumerate() {
        assert!(
            send_until_closed(peer_1, &[frame], Duration::from_secs(5)),
            "takeover {case}: the connection was left open"
        );
        let health = get(http_1, "/health").json().unwrap();
        let seen = health["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|peer| peer["id"] == node_2)
            .cloned()
            .expect("node 2 listed");
        assert_eq!(
            seen["peer_address"],
            real_peer_address.to_string(),
            "{health}"
        );
        assert_eq!(
            seen["http_address"],
            cluster.http(1).to_string(),
            "{health}"
        );
        assert_eq!(seen["zone"], cluster.nodes[1].zone, "{health}");
        assert_eq!(seen["up"], true, "{health}");
    }
    assert!(metric(http_1, "borough_peer_frames_refused_total") >= 2);
    assert_serving(http_1, "after takeover attempts");
}

/// A forged hello listing 1,000 peers reaches one node's directory, in a bounded number,
/// and is passed on to no other node. The HTTP transport repeats hellos every heartbeat, so
/// node 1 has every chance to pass the forged peers to node 2.
#[test]
fn forged_gossip_stays_on_the_node_it_reached() {
    let cluster = Cluster::start_with(2, &["--transport", "http"]);
    let (http_1, peer_1) = (cluster.http(0), cluster.peer(0));
    let forged_list: Vec<Value> = (1000..2000u32)
        .map(|id| serde_json::json!([id, format!("127.0.0.1:{}", 20_000 + id)]))
        .collect();
    let hello = serde_json::json!({
        "sender": {
            "id": 999,
            "location": {"region": "region-1", "zone": "zone-forged"},
            "peer_address": "127.0.0.1:10",
            "http_address": "127.0.0.1:10",
        },
        "known_peers": forged_list,
    });
    let response = http_request(
        peer_1,
        "POST",
        "/peer/hello",
        Some(hello.to_string().as_bytes()),
        REQUEST_TIMEOUT,
    )
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.describe());
    // Several hello rounds between the real nodes (every 750 ms).
    std::thread::sleep(Duration::from_secs(4));
    let forged_on = |address: SocketAddr| {
        get(address, "/health").json().unwrap()["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|peer| peer["id"].as_u64().is_some_and(|id| id >= 1000))
            .count()
    };
    let on_node_1 = forged_on(http_1);
    assert!(
        on_node_1 <= 64,
        "node 1 holds {on_node_1} peers learned from one hello"
    );
    assert_eq!(
        forged_on(cluster.http(1)),
        0,
        "the forged peers reached node 2"
    );
    assert_serving(http_1, "after forged gossip");
}

/// Every answer to a put that may have stored the event carries its key, so a client can
/// check before it retries: here two replicas stop answering (SIGSTOP) before anyone has
/// counted them down, and QUORUM fails with 503 and the key, which the coordinator holds.
#[test]
fn a_failed_put_that_may_have_stored_the_event_names_its_key() {
    // A long down-after: the stopped nodes still count as up while the put runs.
    let cluster = Cluster::start_with(
        3,
        &[
            "--replica-timeout-ms",
            "300",
            "--peer-down-after-ms",
            "60000",
        ],
    );
    let http = cluster.http(0);
    cluster.nodes[1].signal("STOP");
    cluster.nodes[2].signal("STOP");
    let response = put(http, "QUORUM", br#"{"maybe":"stored"}"#);
    cluster.nodes[1].signal("CONT");
    cluster.nodes[2].signal("CONT");
    assert_eq!(response.status, 503, "{}", response.describe());
    let answer = response.json().unwrap();
    let key = answer["key"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("may still exist"),
        "{answer}"
    );
    let read = get(http, &format!("/events/{key}?scope=local"));
    assert_eq!(
        read.status,
        200,
        "the coordinator's copy: {}",
        read.describe()
    );
}

/// `--node-id 0` and the reserved id are refused before anything starts; `borough status`
/// takes `HOST:PORT`; the `peers_up` metric agrees with `/health` from the first second.
#[test]
fn an_operator_meets_clear_refusals_and_consistent_numbers() {
    for id in ["0", "4294967295"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_borough"))
            .args(["start", "--node-id", id, "--data-dir", "/nonexistent/never"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("is out of range"), "{stderr}");
    }
    // A long down-after: peers are heard rarely, and a metric set on that rhythm would lag.
    let cluster = Cluster::start_with(3, &["--peer-down-after-ms", "20000"]);
    let http = cluster.http(0);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_borough"))
        .args(["status", "--node", &http.to_string()])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("\"node_id\":1"), "{printed}");
    let health = get(http, "/health").json().unwrap();
    let up = health["peers_up"].as_array().unwrap().len() as u64;
    assert_eq!(metric(http, "borough_peers_up"), up, "{health}");
}

/// The AllData peer endpoint answers a sender's mistakes with 4xx, not 500: a key too old or
/// too far in the future 422, another event under a stored key 409, an event over the size
/// limit 413, malformed JSON 400, another method 405 with `Allow`.
#[test]
fn the_http_peer_endpoint_answers_each_refusal_with_its_own_status() {
    let cluster = Cluster::start_with(1, &["--transport", "http", "--body-bytes-max", "1000"]);
    let peer = cluster.peer(0);
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let key_at = |micros: u64, counter: u32| EventKey::from_parts(micros, NodeId(9), counter);
    let replica = |key: &EventKey, event: &str| {
        let body = format!("{{\"key\":\"{key}\",\"event\":{event}}}");
        http_request(
            peer,
            "POST",
            "/peer/events",
            Some(body.as_bytes()),
            REQUEST_TIMEOUT,
        )
        .unwrap_or_else(|failure| panic!("{failure}"))
    };
    let hour = 3_600_000_000;
    let fresh = key_at(now_micros, 1);
    let cases = [
        (replica(&fresh, r#"{"a":1}"#), 201),
        (replica(&fresh, r#"{"a":1}"#), 201),
        (replica(&fresh, r#"{"a":2}"#), 409),
        (replica(&key_at(now_micros - 3 * hour, 2), "{}"), 422),
        (replica(&key_at(now_micros + 3 * hour, 3), "{}"), 422),
        (
            replica(&key_at(now_micros, 4), &format!("\"{}\"", "x".repeat(1500))),
            413,
        ),
    ];
    for (index, (response, expected)) in cases.iter().enumerate() {
        assert_eq!(
            response.status,
            *expected,
            "case {index}: {}",
            response.describe()
        );
    }
    let malformed = http_request(
        peer,
        "POST",
        "/peer/events",
        Some(b"{\"key\": 1"),
        REQUEST_TIMEOUT,
    )
    .unwrap();
    assert_eq!(malformed.status, 400, "{}", malformed.describe());
    let wrong_method = http_request(peer, "GET", "/peer/events", None, REQUEST_TIMEOUT).unwrap();
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
}

/// Every flag of `borough start` has a description, and the README lists every one.
#[test]
fn every_start_flag_is_described_and_listed_in_the_readme() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_borough"))
        .args(["start", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let lines: Vec<&str> = help.lines().collect();
    let mut flags = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(flag) = trimmed.strip_prefix("--") else {
            continue;
        };
        let name = format!("--{}", flag.split([' ', '=']).next().unwrap());
        if name == "--help" {
            continue;
        }
        let described = lines
            .get(index + 1)
            .is_some_and(|next| !next.trim().is_empty());
        assert!(described, "{name} has no description:\n{help}");
        assert!(readme.contains(&format!("`{name}")), "README lacks {name}");
        flags.push(name);
    }
    assert!(flags.len() >= 20, "only {flags:?}");
}

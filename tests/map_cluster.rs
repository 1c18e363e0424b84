//! Shared maps against real processes: a 3-node `borough start` cluster on loopback, driven
//! over its HTTP API, its Server-Sent Event feed and its WebSocket.
//!
//! - a writer sets and deletes keys of one map through random nodes while a watcher follows
//!   the map's event stream; the map's leader is killed with SIGKILL and restarted meanwhile,
//!   and the watcher resumes (on another node when its own died) from its last revision. The
//!   watcher's stream must be a ready and then every revision once, in order; folded, it is
//!   the map every node serves at the end; every acknowledged write is in it at the revision
//!   it was acknowledged with;
//! - bad input (values that are not JSON, nested too deep, too large; bad keys and
//!   revisions; malformed WebSocket messages) gets a 4xx or an `error` message naming the
//!   problem and changes nothing.

#![allow(clippy::disallowed_methods)]

mod cluster_support;

/// The program `cluster_support` starts.
const BINARY: &str = env!("CARGO_BIN_EXE_borough");

use cluster_support::{http_request, Cluster, REQUEST_TIMEOUT};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAP: &str = "board";

/// Writes by revision: the key, and the value set (`None` for a delete).
type Writes = BTreeMap<u64, (String, Option<Value>)>;
const KEYS: u64 = 8;

fn leader_of(cluster: &Cluster, name: &str) -> Option<usize> {
    let info = http_request(
        cluster.http(0),
        "GET",
        &format!("/partitions/{name}"),
        None,
        REQUEST_TIMEOUT,
    )
    .ok()?
    .json()
    .ok()?;
    let leader = info["leader"].as_u64()?;
    (0..cluster.size()).find(|index| {
        http_request(
            cluster.http(*index),
            "GET",
            "/health",
            None,
            REQUEST_TIMEOUT,
        )
        .ok()
        .and_then(|response| response.json().ok())
        .and_then(|health| health["node_id"].as_u64().or(health["id"].as_u64()))
            == Some(leader)
    })
}

/// One event of the watcher's stream.
#[derive(Clone, Debug)]
enum Seen {
    Ready(u64, BTreeMap<String, Value>),
    Resumed(u64),
    Set(u64, String, Value),
    Delete(u64, String),
}

/// Follows the map's event stream from `node`, appending to `seen`, until the connection
/// ends or `stop` is set. Returns the last revision seen.
fn follow(
    address: SocketAddr,
    from: Option<u64>,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
) -> Option<u64> {
    let mut last = from;
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
        return last;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let target = match from {
        Some(revision) => format!("/maps/{MAP}/events?from_revision={revision}"),
        None => format!("/maps/{MAP}/events"),
    };
    if stream
        .write_all(
            format!(
                "GET {target} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .is_err()
    {
        return last;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut headers_done = false;
    let mut silent_since = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // A read that timed out keeps what it read of the line: the next one completes it.
        if line.ends_with('\n') {
            line.clear();
        }
        match reader.read_line(&mut line) {
            Ok(0) => return last,
            Ok(_) => silent_since = Instant::now(),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // A killed node's socket may never say so: give up after a long silence.
                if silent_since.elapsed() > Duration::from_secs(20) {
                    return last;
                }
                continue;
            }
            Err(_) => return last,
        }
        if !headers_done {
            if line == "\r\n" {
                headers_done = true;
            } else if line.starts_with("HTTP/1.1") && !line.contains(" 200 ") {
                return last;
            }
            continue;
        }
        // Chunked framing lines (sizes) and blank lines carry nothing for us.
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        let Ok(message) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let revision = message["revision"].as_u64().unwrap_or(0);
        let event = match message["type"].as_str() {
            Some("ready") => {
                let entries = message["entries"]
                    .as_object()
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|(key, value)| (key.clone(), value.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                Seen::Ready(revision, entries)
            }
            Some("resumed") => Seen::Resumed(revision),
            Some("set") => Seen::Set(
                revision,
                message["key"].as_str().unwrap_or("").to_string(),
                message["value"].clone(),
            ),
            Some("delete") => {
                Seen::Delete(revision, message["key"].as_str().unwrap_or("").to_string())
            }
            _ => continue,
        };
        last = Some(revision);
        seen.lock().unwrap().push(event);
    }
    last
}

#[test]
fn a_watcher_sees_every_change_once_across_a_leader_kill() {
    let mut cluster = Cluster::start_joined(3);
    let addresses: Vec<SocketAddr> = (0..3).map(|index| cluster.http(index)).collect();
    let created = http_request(
        addresses[0],
        "PUT",
        &format!("/maps/{MAP}/keys/k0"),
        Some(b"0"),
        REQUEST_TIMEOUT,
    )
    .expect("first write");
    assert_eq!(created.status, 200, "{}", created.describe());

    let stop = Arc::new(AtomicBool::new(false));
    let stop_watching = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watching = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (stop, seen, addresses) = (
            Arc::clone(&stop_watching),
            Arc::clone(&seen),
            addresses.clone(),
        );
        let watching = Arc::clone(&watching);
        std::thread::spawn(move || {
            let mut from = None;
            let mut node = 1;
            let mut connections = 0;
            while !stop.load(Ordering::Relaxed) {
                connections += 1;
                watching.store(node % 3, Ordering::Relaxed);
                from = follow(addresses[node % 3], from, &seen, &stop);
                node += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            connections
        })
    };
    // Acknowledged writes: revision -> (key, value or None for a delete).
    let acknowledged: Arc<Mutex<Writes>> = Arc::default();
    let writer = {
        let (stop, acknowledged, addresses) = (
            Arc::clone(&stop),
            Arc::clone(&acknowledged),
            addresses.clone(),
        );
        std::thread::spawn(move || {
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let key = format!("k{}", sequence % KEYS);
                let address = addresses[(sequence % 3) as usize];
                let delete = sequence.is_multiple_of(7);
                let value = serde_json::json!({ "n": sequence });
                let body = value.to_string();
                let (method, body) = if delete {
                    ("DELETE", None)
                } else {
                    ("PUT", Some(body.as_bytes()))
                };
                if let Ok(response) = http_request(
                    address,
                    method,
                    &format!("/maps/{MAP}/keys/{key}"),
                    body,
                    Duration::from_secs(8),
                ) {
                    if response.status == 200 {
                        let revision = response.json().unwrap()["revision"].as_u64().unwrap();
                        acknowledged
                            .lock()
                            .unwrap()
                            .insert(revision, (key, (!delete).then_some(value)));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    let victim = leader_of(&cluster, MAP).unwrap_or(1);
    cluster.kill(victim);
    std::thread::sleep(Duration::from_secs(4));
    cluster.restart(victim);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Every node serves the same map at the end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let finals: Vec<Value> = loop {
        let finals: Vec<Value> = addresses
            .iter()
            .filter_map(|address| {
                http_request(
                    *address,
                    "GET",
                    &format!("/maps/{MAP}"),
                    None,
                    REQUEST_TIMEOUT,
                )
                .ok()
            })
            .filter(|response| response.status == 200)
            .filter_map(|response| response.json().ok())
            .collect();
        if finals.len() == 3 && finals.iter().all(|map| map == &finals[0]) {
            break finals;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed on the map: {finals:?}\n{}",
            cluster.log_tails()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let final_revision = finals[0]["revision"].as_u64().unwrap();
    // Let the watcher catch up, then stop it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = seen
            .lock()
            .unwrap()
            .iter()
            .next_back()
            .map(|event| match event {
                Seen::Ready(revision, _)
                | Seen::Resumed(revision)
                | Seen::Set(revision, ..)
                | Seen::Delete(revision, _) => *revision,
            });
        if last == Some(final_revision) {
            break;
        }
        if Instant::now() > deadline {
            let replicas: Vec<String> = addresses
                .iter()
                .map(|address| {
                    http_request(
                        *address,
                        "GET",
                        &format!("/partitions/{MAP}/replica"),
                        None,
                        REQUEST_TIMEOUT,
                    )
                    .map(|response| response.body_text())
                    .unwrap_or_else(|error| error)
                })
                .collect();
            panic!(
                "the watcher stopped at {last:?} of {final_revision}; replicas: {replicas:?}; watching node {}\n{}",
                watching.load(Ordering::Relaxed),
                cluster.log_tails()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_watching.store(true, Ordering::Relaxed);
    let connections = watcher.join().unwrap();

    // The stream: a ready, then each revision once, in order (resumes at the revision held).
    let seen = seen.lock().unwrap().clone();
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    let mut at: Option<u64> = None;
    let mut by_revision: BTreeMap<u64, (String, Option<Value>)> = BTreeMap::new();
    for event in &seen {
        match event {
            Seen::Ready(revision, map) => {
                assert!(
                    at.is_none_or(|at| *revision >= at),
                    "a ready went back to {revision} from {at:?}"
                );
                entries = map.clone();
                at = Some(*revision);
            }
            Seen::Resumed(revision) => {
                assert_eq!(Some(*revision), at, "resumed somewhere else than held")
            }
            Seen::Set(revision, key, value) => {
                assert_eq!(
                    at.map(|at| at + 1),
                    Some(*revision),
                    "a gap or a duplicate at a set: {seen:?}"
                );
                entries.insert(key.clone(), value.clone());
                by_revision.insert(*revision, (key.clone(), Some(value.clone())));
                at = Some(*revision);
            }
            Seen::Delete(revision, key) => {
                assert_eq!(
                    at.map(|at| at + 1),
                    Some(*revision),
                    "a gap or a duplicate at a delete"
                );
                assert!(
                    entries.remove(key).is_some(),
                    "deleted {key}, which the watcher did not hold"
                );
                by_revision.insert(*revision, (key.clone(), None));
                at = Some(*revision);
            }
        }
    }
    let served: BTreeMap<String, Value> = finals[0]["entries"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    assert_eq!(entries, served, "the watcher's map differs from the nodes'");
    let acknowledged = acknowledged.lock().unwrap();
    assert!(
        acknowledged.len() > 50,
        "too few writes acknowledged: {}",
        acknowledged.len()
    );
    let first_seen = seen.iter().find_map(|event| match event {
        Seen::Ready(revision, _) => Some(*revision),
        _ => None,
    });
    for (revision, write) in acknowledged.iter() {
        if first_seen.is_some_and(|first| *revision > first) {
            assert_eq!(
                by_revision.get(revision),
                Some(write),
                "acknowledged write at revision {revision}"
            );
        }
    }
    assert!(
        connections >= 2,
        "the watcher never had to resume ({connections} connection)"
    );
}

#[test]
fn bad_map_input_is_refused_and_changes_nothing() {
    let cluster = Cluster::start_joined(1);
    let node = cluster.http(0);
    let request = |method: &str, target: &str, body: Option<&[u8]>| {
        http_request(node, method, target, body, REQUEST_TIMEOUT).expect("the node answers")
    };
    assert_eq!(request("PUT", "/maps/m/keys/a", Some(b"1")).status, 200);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let large = format!("\"{}\"", "x".repeat(300 * 1024));
    for (target, body, status) in [
        ("/maps/m/keys/a", b"{\"unclosed\": ".to_vec(), 400),
        ("/maps/m/keys/a", b"1 2".to_vec(), 400),
        ("/maps/m/keys/a", deep.into_bytes(), 400),
        ("/maps/m/keys/a", large.into_bytes(), 400),
        ("/maps/m/keys/%FF", b"1".to_vec(), 400),
        (
            &*format!("/maps/m/keys/{}", "k".repeat(2000)),
            b"1".to_vec(),
            400,
        ),
        (
            &*format!("/maps/{}/keys/a", "n".repeat(300)),
            b"1".to_vec(),
            400,
        ),
    ] {
        let response = request("PUT", target, Some(&body));
        assert_eq!(
            response.status,
            status,
            "PUT {} -> {}",
            &target[..target.len().min(40)],
            response.describe()
        );
        assert!(response.json().unwrap()["error"].is_string());
    }
    let too_large = vec![b'1'; 2 * 1024 * 1024];
    assert_eq!(
        request("PUT", "/maps/m/keys/a", Some(&too_large)).status,
        413
    );
    assert_eq!(
        request("GET", "/maps/m/events?from_revision=minus-one", None).status,
        400
    );
    assert_eq!(
        request("GET", "/maps/m/ws?from_revision=1.5", None).status,
        400
    );
    assert_eq!(request("GET", "/maps/m/keys/nothing", None).status, 404);
    assert_eq!(request("DELETE", "/maps/m/keys/nothing", None).status, 404);

    // The WebSocket: malformed messages get an error naming the problem; a good one an ack.
    let (mut socket, _) = tokio_tungstenite::tungstenite::connect(format!("ws://{node}/maps/m/ws"))
        .expect("WebSocket");
    let next_reply = |socket: &mut tokio_tungstenite::tungstenite::WebSocket<_>| loop {
        let message = socket.read().expect("a message");
        let Ok(text) = message.to_text() else {
            continue;
        };
        let value: Value = serde_json::from_str(text).expect("JSON");
        if matches!(value["type"].as_str(), Some("error" | "ack")) {
            return value;
        }
    };
    use tokio_tungstenite::tungstenite::Message;
    for bad in [
        "not json",
        "{\"type\":\"set\",\"key\":\"a\",\"id\":1}",
        "{\"type\":\"set\",\"key\":\"\",\"value\":1,\"id\":2}",
        "{\"type\":\"drop\",\"key\":\"a\",\"id\":3}",
        &format!(
            "{{\"type\":\"set\",\"key\":\"a\",\"value\":{}}}",
            "[".repeat(100) + &"]".repeat(100)
        ),
    ] {
        socket.send(Message::text(bad)).unwrap();
        let reply = next_reply(&mut socket);
        assert_eq!(reply["type"], "error", "{bad} -> {reply}");
        assert!(reply["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()));
    }
    socket.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(next_reply(&mut socket)["type"], "error");
    socket
        .send(Message::text(
            "{\"type\":\"set\",\"key\":\"b\",\"value\":{\"ok\":true},\"id\":9}",
        ))
        .unwrap();
    let ack = next_reply(&mut socket);
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_u64()),
        (Some("ack"), Some(9)),
        "{ack}"
    );

    // Nothing bad took effect: the map holds a = 1 and b from the one good message.
    let map = request("GET", "/maps/m", None).json().unwrap();
    assert_eq!(
        map["entries"],
        serde_json::json!({ "a": 1, "b": { "ok": true } }),
        "{map}"
    );
    assert_eq!(map["revision"], 2);
}

/// A subscriber that stops reading is cut off at its bound: once it reads again it finds the
/// events it was given, then a `resync` naming the last one's revision, then the close; and
/// resuming from that revision brings everything after it.
#[test]
fn a_subscriber_that_stops_reading_is_cut_off_with_a_resync() {
    use tokio_tungstenite::tungstenite::Message;
    let cluster = Cluster::start_joined_with(1, &["--feed-buffer-kib", "64"]);
    let node = cluster.http(0);
    let put = |key: &str, body: &[u8]| {
        let response = http_request(
            node,
            "PUT",
            &format!("/maps/slow/keys/{key}"),
            Some(body),
            REQUEST_TIMEOUT,
        )
        .expect("the node answers");
        assert_eq!(response.status, 200, "{}", response.describe());
    };
    put("seed", b"0");
    let (mut socket, _) =
        tokio_tungstenite::tungstenite::connect(format!("ws://{node}/maps/slow/ws"))
            .expect("WebSocket");
    // Far more than the socket buffers and the subscriber's 64 KiB: 200 values of 60 KiB.
    let value = format!("\"{}\"", "v".repeat(60 * 1024));
    for index in 0..200 {
        put(&format!("k{}", index % 10), value.as_bytes());
    }
    let mut last_revision = None;
    let mut resync = None;
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => {
                let message: Value = serde_json::from_str(text.as_str()).expect("JSON");
                if message["type"] == "resync" {
                    resync = Some(message);
                } else {
                    assert!(resync.is_none(), "an event after the resync: {message}");
                    last_revision = message["revision"].as_u64();
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let resync = resync.expect("the slow subscriber was cut off with a resync");
    assert_eq!(resync["revision"].as_u64(), last_revision, "{resync}");
    let last = last_revision.expect("it had events before the cut");
    assert!(last < 201, "it was cut off before the end ({last})");
    // Resuming from the resync's revision brings every change after it: from the history,
    // or (these values are large, and the history keeps about 2 MiB) the whole map again.
    let (mut socket, _) = tokio_tungstenite::tungstenite::connect(format!(
        "ws://{node}/maps/slow/ws?from_revision={last}"
    ))
    .expect("WebSocket");
    let mut next = last + 1;
    while next <= 201 {
        let Ok(Message::Text(text)) = socket.read() else {
            continue;
        };
        let message: Value = serde_json::from_str(text.as_str()).expect("JSON");
        match message["type"].as_str() {
            Some("resumed") => assert_eq!(message["revision"].as_u64(), Some(last)),
            Some("ready") => {
                assert_eq!(
                    message["revision"].as_u64(),
                    Some(201),
                    "the whole map, at its end"
                );
                assert_eq!(
                    message["entries"].as_object().map(|entries| entries.len()),
                    Some(11)
                );
                break;
            }
            Some("set") => {
                assert_eq!(message["revision"].as_u64(), Some(next), "in order, no gap");
                next += 1;
            }
            other => panic!(
                "unexpected {other:?}: {}",
                &text.as_str()[..80.min(text.len())]
            ),
        }
    }
}

//! Named partitions against real processes: `borough start` nodes on loopback forming a
//! cluster with `--join`, driven over their HTTP API.
//!
//! - three and five nodes: concurrent clients put, delete, get and scan keys of two named
//!   partitions through random nodes while the leader of one partition is killed with
//!   SIGKILL and restarted on its data dir; the recorded history (ranges as a read of every
//!   key they cover) goes through the simulator's linearizability checker, which must find
//!   no anomaly; the partition serves writes again after the kill, and the restarted node
//!   catches up;
//! - bad input over HTTP (oversized names and keys, malformed batches and scans) gets a 4xx
//!   that names the problem and changes nothing.
//!
//! A write that got no clear answer (a timeout, a 5xx) is recorded as indeterminate: it may
//! or may not have taken effect. A request the node never received (connection refused) is
//! left out. Every wait is bounded; a failure prints the tail of every node's log.

#![allow(clippy::disallowed_methods)]

mod cluster_support;

/// The program `cluster_support` starts.
const BINARY: &str = env!("CARGO_BIN_EXE_borough");

use borough_sim::checkers::linearizability::{
    check_history, CheckOutcome, Operation, OperationInput, OperationOutput,
    DEFAULT_MAX_STEPS_PER_KEY,
};
use cluster_support::{http_request, Cluster, REQUEST_TIMEOUT};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: [&str; 2] = ["accounts", "user:42"];
const KEYS: [&str; 4] = ["a", "b", "c", "d"];
const CLIENTS: u64 = 6;
/// A routed request ends within the router's bound (5 s); this leaves room for the HTTP
/// round trip.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// The partition must take a write again within this after its leader is killed.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// What a client saw of one request.
enum Seen {
    /// Never reached a node: nothing happened.
    NotSent,
    Done(OperationOutput),
    /// A read with no answer: it constrains nothing.
    NoRead,
}

fn classify_write(result: Result<cluster_support::HttpResponse, String>) -> Seen {
    match result {
        Ok(response) if matches!(response.status, 200 | 204) => Seen::Done(OperationOutput::Ok),
        Ok(response) if (400..500).contains(&response.status) => {
            panic!("a well-formed write was refused: {}", response.describe())
        }
        Ok(_) => Seen::Done(OperationOutput::Indeterminate),
        Err(failure) if failure.contains("refused") => Seen::NotSent,
        Err(_) => Seen::Done(OperationOutput::Indeterminate),
    }
}

struct History {
    started: Instant,
    operations: Mutex<Vec<Operation>>,
    /// Writes acknowledged, per partition, after the kill (liveness).
    acknowledged_after_kill: Mutex<Vec<(String, Instant)>>,
}

impl History {
    fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.started).as_micros() as u64
    }
}

fn history_key(partition: &str, key: &str) -> Vec<u8> {
    format!("{partition}/{key}").into_bytes()
}

/// One client: random operations on random keys of random partitions through random nodes.
fn client(
    client_id: u64,
    addresses: Vec<SocketAddr>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ client_id.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut draw = move |below: u64| {
        // xorshift: a test's own reproducible stream.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let node = addresses[draw(addresses.len() as u64) as usize];
        let partition = PARTITIONS[draw(PARTITIONS.len() as u64) as usize];
        let key = KEYS[draw(KEYS.len() as u64) as usize];
        let path = format!("/partitions/{}/keys/{key}", partition.replace(':', "%3A"));
        let call = Instant::now();
        let kill_seen = killed.load(Ordering::Relaxed);
        let choice = draw(10);
        let (input, seen) = match choice {
            0..=3 => {
                let value = format!("c{client_id}-{sequence}");
                let result =
                    http_request(node, "PUT", &path, Some(value.as_bytes()), CLIENT_TIMEOUT);
                (
                    OperationInput::Put {
                        key: history_key(partition, key),
                        value: value.into_bytes(),
                    },
                    classify_write(result),
                )
            }
            4 => {
                let result = http_request(node, "DELETE", &path, None, CLIENT_TIMEOUT);
                (
                    OperationInput::Delete {
                        key: history_key(partition, key),
                    },
                    classify_write(result),
                )
            }
            5..=7 => {
                let result = http_request(node, "GET", &path, None, CLIENT_TIMEOUT);
                let seen = match result {
                    Ok(response) if response.status == 200 => {
                        Seen::Done(OperationOutput::Value(Some(response.body)))
                    }
                    Ok(response) if response.status == 404 => {
                        assert!(
                            response.body_text().contains("Key not found in database"),
                            "{}",
                            response.describe()
                        );
                        Seen::Done(OperationOutput::Value(None))
                    }
                    Ok(response) if (400..500).contains(&response.status) => {
                        panic!("a well-formed get was refused: {}", response.describe())
                    }
                    _ => Seen::NoRead,
                };
                (
                    OperationInput::Get {
                        key: history_key(partition, key),
                    },
                    seen,
                )
            }
            _ => {
                // A range over every key: a read of each key it covers, at its times.
                let scan = format!("/partitions/{}/keys", partition.replace(':', "%3A"));
                let result = http_request(node, "GET", &scan, None, CLIENT_TIMEOUT);
                let returned = Instant::now();
                if let Ok(response) = result {
                    if response.status == 200 {
                        let page = response.json().expect("a page is JSON");
                        assert!(page["next"].is_null(), "four keys fit one page: {page}");
                        let pairs = page["pairs"].as_array().expect("pairs").clone();
                        let mut operations = history.operations.lock().unwrap();
                        for key in KEYS {
                            let value = pairs
                                .iter()
                                .find(|pair| pair["key"] == key)
                                .map(|pair| pair["value"].as_str().unwrap().as_bytes().to_vec());
                            operations.push(Operation {
                                client: client_id,
                                call_micros: history.micros(call),
                                return_micros: Some(history.micros(returned)),
                                input: OperationInput::Get {
                                    key: history_key(partition, key),
                                },
                                output: OperationOutput::Value(value),
                            });
                        }
                        // Sorted by key: the page is in key order.
                        let keys: Vec<&str> = pairs
                            .iter()
                            .map(|pair| pair["key"].as_str().unwrap())
                            .collect();
                        let mut sorted = keys.clone();
                        sorted.sort();
                        assert_eq!(keys, sorted);
                    } else if (400..500).contains(&response.status) {
                        panic!("a well-formed scan was refused: {}", response.describe());
                    }
                }
                continue;
            }
        };
        let returned = Instant::now();
        let output = match seen {
            Seen::NotSent | Seen::NoRead => continue,
            Seen::Done(output) => output,
        };
        let is_write = !matches!(input, OperationInput::Get { .. });
        if kill_seen && is_write && output == OperationOutput::Ok {
            history
                .acknowledged_after_kill
                .lock()
                .unwrap()
                .push((partition.to_string(), returned));
        }
        let return_micros =
            (output != OperationOutput::Indeterminate).then(|| history.micros(returned));
        history.operations.lock().unwrap().push(Operation {
            client: client_id,
            call_micros: history.micros(call),
            return_micros,
            input,
            output,
        });
    }
}

/// The node index that leads `partition`, as node `via`'s info says.
fn leader_of(cluster: &Cluster, partition: &str) -> Option<usize> {
    for via in 0..cluster.size() {
        if !cluster.nodes[via].is_running() {
            continue;
        }
        let path = format!("/partitions/{}", partition.replace(':', "%3A"));
        let Ok(response) = http_request(cluster.http(via), "GET", &path, None, REQUEST_TIMEOUT)
        else {
            continue;
        };
        let Ok(info) = response.json() else {
            continue;
        };
        if let Some(leader) = info["leader"].as_u64() {
            return cluster
                .nodes
                .iter()
                .position(|node| u64::from(node.id) == leader);
        }
    }
    None
}

fn applied_indexes(cluster: &Cluster, partition: &str) -> Vec<Option<u64>> {
    let path = format!("/partitions/{}", partition.replace(':', "%3A"));
    let Ok(response) = http_request(cluster.http(0), "GET", &path, None, REQUEST_TIMEOUT) else {
        return Vec::new();
    };
    let info: Value = response.json().unwrap_or(Value::Null);
    info["replicas"]
        .as_array()
        .map(|replicas| {
            replicas
                .iter()
                .map(|replica| replica["applied_index"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

fn linearizable_through_a_leader_kill(size: usize) {
    let mut cluster = Cluster::start_joined(size);
    let addresses: Vec<SocketAddr> = (0..size).map(|index| cluster.http(index)).collect();
    let history = Arc::new(History {
        started: Instant::now(),
        operations: Mutex::new(Vec::new()),
        acknowledged_after_kill: Mutex::new(Vec::new()),
    });
    // Create the partitions first, so the kill finds a leader; these puts are history too.
    for partition in PARTITIONS {
        let path = format!("/partitions/{}/keys/a", partition.replace(':', "%3A"));
        let call = Instant::now();
        let response = http_request(addresses[0], "PUT", &path, Some(b"initial"), CLIENT_TIMEOUT)
            .unwrap_or_else(|failure| panic!("{failure}{}", cluster.log_tails()));
        assert_eq!(
            response.status,
            204,
            "{}{}",
            response.describe(),
            cluster.log_tails()
        );
        history.operations.lock().unwrap().push(Operation {
            client: CLIENTS,
            call_micros: history.micros(call),
            return_micros: Some(history.micros(Instant::now())),
            input: OperationInput::Put {
                key: history_key(partition, "a"),
                value: b"initial".to_vec(),
            },
            output: OperationOutput::Ok,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client_id| {
            let (addresses, history, stop, killed) = (
                addresses.clone(),
                Arc::clone(&history),
                Arc::clone(&stop),
                Arc::clone(&killed),
            );
            std::thread::spawn(move || client(client_id, addresses, history, stop, killed))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let victim = leader_of(&cluster, PARTITIONS[0])
        .unwrap_or_else(|| panic!("no leader of {}{}", PARTITIONS[0], cluster.log_tails()));
    let kill_at = Instant::now();
    cluster.kill(victim);
    killed.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(victim);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    for handle in clients {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
    let operations = history.operations.lock().unwrap().clone();
    let completed = operations
        .iter()
        .filter(|operation| !operation.is_indeterminate())
        .count();
    assert!(
        completed > 200,
        "only {completed} operations completed{}",
        cluster.log_tails()
    );
    // The killed leader's partition took writes again, in bounded time.
    let first_after = history
        .acknowledged_after_kill
        .lock()
        .unwrap()
        .iter()
        .filter(|(partition, _)| partition == PARTITIONS[0])
        .map(|(_, at)| *at)
        .min()
        .unwrap_or_else(|| {
            panic!(
                "no write to {} after the kill{}",
                PARTITIONS[0],
                cluster.log_tails()
            )
        });
    assert!(
        first_after.duration_since(kill_at) < FAILOVER_BOUND,
        "the first write after the kill took {:?}",
        first_after.duration_since(kill_at)
    );
    match check_history(&operations, DEFAULT_MAX_STEPS_PER_KEY) {
        CheckOutcome::Linearizable => {}
        other => panic!(
            "the history of {} operations ({completed} completed) is not linearizable: {other:#?}",
            operations.len()
        ),
    }
    // The restarted node catches up: every replica applies as far as the others.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let applied = applied_indexes(&cluster, PARTITIONS[0]);
        let all_known = applied.len() == size.min(3) && applied.iter().all(Option::is_some);
        if all_known && applied.windows(2).all(|pair| pair[0] == pair[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas of {} did not converge: {applied:?}{}",
            PARTITIONS[0],
            cluster.log_tails()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{size} nodes: {} operations, {completed} completed, first write {:?} after the kill",
        operations.len(),
        first_after.duration_since(kill_at)
    );
}

#[test]
fn three_nodes_stay_linearizable_through_a_leader_kill() {
    linearizable_through_a_leader_kill(3);
}

#[test]
fn five_nodes_stay_linearizable_through_a_leader_kill() {
    linearizable_through_a_leader_kill(5);
}

/// A method, a path, a body, the status expected, and words the error must hold.
type BadRequest = (String, String, Option<Vec<u8>>, u16, &'static str);

#[test]
fn bad_input_gets_a_4xx_that_names_the_problem_and_changes_nothing() {
    let cluster = Cluster::start_joined(1);
    let node = cluster.http(0);
    let request = |method: &str, path: &str, body: Option<&[u8]>| {
        http_request(node, method, path, body, REQUEST_TIMEOUT).expect("the node answers")
    };
    let long_name = "n".repeat(300);
    let long_key = "k".repeat(5000);
    let nested = "[".repeat(10_000);
    let cases: Vec<BadRequest> = vec![
        (
            "PUT".into(),
            format!("/partitions/{long_name}/keys/k"),
            Some(b"v".to_vec()),
            400,
            "over the limit of 256",
        ),
        (
            "PUT".into(),
            format!("/partitions/p/keys/{long_key}"),
            Some(b"v".to_vec()),
            400,
            "over the limit of 4096",
        ),
        (
            "POST".into(),
            "/partitions/p/batch".into(),
            Some(b"[{\"type\":\"put\"".to_vec()),
            400,
            "a batch is a JSON list",
        ),
        (
            "POST".into(),
            "/partitions/p/batch".into(),
            Some(nested.into_bytes()),
            400,
            "a batch is a JSON list",
        ),
        (
            "POST".into(),
            "/partitions/p/batch".into(),
            Some(b"[{\"type\":\"get\",\"key\":\"a\"}]".to_vec()),
            400,
            "is not \"put\" or \"del\"",
        ),
        (
            "POST".into(),
            "/partitions/p/batch".into(),
            Some(b"[]".to_vec()),
            400,
            "at least one operation",
        ),
        (
            "GET".into(),
            "/partitions/p/keys?gt=a&gte=b".into(),
            None,
            400,
            "given twice",
        ),
        (
            "GET".into(),
            "/partitions/p/keys?continue=forged".into(),
            None,
            400,
            "not a token",
        ),
        (
            "GET".into(),
            "/partitions/p/keys?limit=-1".into(),
            None,
            400,
            "not a positive number",
        ),
        (
            "PUT".into(),
            "/partitions/p/keys/k".into(),
            Some(vec![b'v'; 1024 * 1024 + 1]),
            413,
            "larger than the limit",
        ),
    ];
    for (method, path, body, status, words) in cases {
        let response = request(&method, &path, body.as_deref());
        assert_eq!(
            response.status,
            status,
            "{method} {}: {}",
            &path[..path.len().min(80)],
            response.describe()
        );
        let error = response.json().expect("a JSON error")["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.contains(words),
            "{method}: {error:?} does not say {words:?}"
        );
    }
    // Nothing was written: the partition "p" was never created by a refused request.
    let info = request("GET", "/partitions/p", None);
    assert_eq!(info.status, 404, "{}", info.describe());
    let cluster_view = request("GET", "/cluster", None).json().unwrap();
    assert_eq!(cluster_view["partition_count"], 0, "{cluster_view}");
}

//! Nodes joining and leaving under load, against real processes: `borough start` nodes on
//! loopback. Node 1 founds the cluster; nodes 2..5 join one at a time while clients put and
//! get keys of six named partitions through random nodes; then nodes 5, 4 and 3 drain one at
//! a time (`POST /cluster/leave`) and their processes stop by themselves. While the last
//! node's join moves partitions, node 2 is killed with SIGKILL and started again.
//!
//! Every answer is recorded. At the end: no request failed (every write 2xx, every read 200
//! or 404), the slowest request is under its bound, the history is linearizable, every
//! partition has `min(3, members)` replicas on the members left with no move under way, and
//! every drained node exited cleanly. A request whose connection the kill cut is not a
//! failure (its put is recorded as of unknown outcome); one that another node answered
//! badly is. The figures are printed (`--nocapture`).
//!
//! `BOROUGH_MEMBERSHIP_NODES` and `BOROUGH_MEMBERSHIP_PARTITIONS` (5 and 6 by default) set
//! the size: `bench/grow-and-shrink.sh` runs it with 15 nodes, draining down to 2.

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
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: [&str; 3] = ["a", "b", "c"];
const CLIENTS: u64 = 3;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// No request may take longer, moves or not.
const SLOWEST_BOUND: Duration = Duration::from_secs(5);
/// A join or a drain must settle within this.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn size_from(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

struct Shared {
    partitions: Vec<String>,
    started: Instant,
    /// The nodes clients may send to: running, and not draining.
    targets: Mutex<Vec<SocketAddr>>,
    operations: Mutex<Vec<Operation>>,
    failures: Mutex<Vec<String>>,
    /// Requests through a node that was killed, which got no answer.
    cut_by_kill: Mutex<u64>,
    /// Nodes killed, and when: a request through one that was sent before its kill and got
    /// no answer is not a failure (clients send nothing there until it is back).
    killed: Mutex<BTreeMap<SocketAddr, Instant>>,
    latencies: Mutex<Vec<Duration>>,
}

impl Shared {
    fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.started).as_micros() as u64
    }
}

fn client(client_id: u64, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut state = 0x51_7cc1_b727_220a_u64 ^ client_id.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut draw = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let targets = shared.targets.lock().unwrap().clone();
        let node = targets[draw(targets.len() as u64) as usize];
        let partition = &shared.partitions[draw(shared.partitions.len() as u64) as usize];
        let key = KEYS[draw(KEYS.len() as u64) as usize];
        let path = format!("/partitions/{partition}/keys/{key}");
        let history_key = format!("{partition}/{key}").into_bytes();
        let call = Instant::now();
        let (input, result) = if draw(2) == 0 {
            let value = format!("c{client_id}-{sequence}");
            let result = http_request(node, "PUT", &path, Some(value.as_bytes()), CLIENT_TIMEOUT);
            let input = OperationInput::Put {
                key: history_key,
                value: value.into_bytes(),
            };
            (input, result)
        } else {
            let result = http_request(node, "GET", &path, None, CLIENT_TIMEOUT);
            (OperationInput::Get { key: history_key }, result)
        };
        let returned = Instant::now();
        let took = returned - call;
        let output = match (&input, result) {
            (OperationInput::Put { .. }, Ok(response))
                if response.status == 204 || response.status == 200 =>
            {
                OperationOutput::Ok
            }
            (OperationInput::Get { .. }, Ok(response)) if response.status == 200 => {
                OperationOutput::Value(Some(response.body))
            }
            (OperationInput::Get { .. }, Ok(response)) if response.status == 404 => {
                OperationOutput::Value(None)
            }
            (input, outcome) => {
                let cut = outcome.is_err()
                    && shared
                        .killed
                        .lock()
                        .unwrap()
                        .get(&node)
                        .is_some_and(|killed| call <= *killed);
                let what = match outcome {
                    Ok(response) => response.describe(),
                    Err(error) => error,
                };
                if cut {
                    *shared.cut_by_kill.lock().unwrap() += 1;
                } else {
                    shared
                        .failures
                        .lock()
                        .unwrap()
                        .push(format!("{input:?} through {node}: {what}"));
                }
                if matches!(input, OperationInput::Put { .. }) {
                    shared.operations.lock().unwrap().push(Operation {
                        client: client_id,
                        call_micros: shared.micros(call),
                        return_micros: None,
                        input: input.clone(),
                        output: OperationOutput::Indeterminate,
                    });
                }
                continue;
            }
        };
        shared.latencies.lock().unwrap().push(took);
        shared.operations.lock().unwrap().push(Operation {
            client: client_id,
            call_micros: shared.micros(call),
            return_micros: Some(shared.micros(returned)),
            input,
            output,
        });
    }
}

fn cluster_view(address: SocketAddr) -> Option<Value> {
    let response = http_request(address, "GET", "/cluster", None, REQUEST_TIMEOUT).ok()?;
    (response.status == 200)
        .then(|| response.json().ok())
        .flatten()
}

/// The moves the directory applied so far: each raised its partition's generation by one.
fn moves_so_far(cluster: &Cluster, via: usize) -> u64 {
    cluster_view(cluster.http(via))
        .and_then(|view| view["partitions"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|partition| partition["generation"].as_u64())
        .map(|generation| generation - 1)
        .sum()
}

/// Waits until `via` sees `members` active members, every one of `partitions` partitions on
/// `min(3, members)` of them, and no move under way.
fn wait_settled(cluster: &Cluster, via: usize, members: usize, partitions: usize) -> Duration {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < SETTLE_TIMEOUT {
        if let Some(view) = cluster_view(cluster.http(via)) {
            let active = view["members"].as_array().map_or(0, |all| {
                all.iter()
                    .filter(|member| member["state"] == "active")
                    .count()
            });
            let listed = view["partitions"].as_array().cloned().unwrap_or_default();
            let placed = listed.len() == partitions
                && listed.iter().all(|partition| {
                    partition["replicas"].as_array().map_or(0, Vec::len) == members.min(3)
                });
            if active == members && placed && view["moving_count"] == 0 {
                return started.elapsed();
            }
            last = view;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "not settled on {members} members within {SETTLE_TIMEOUT:?}: {last:#}\n{}",
        cluster.log_tails()
    );
}

/// Kills node `index + 1` with SIGKILL while moves are under way (clients stop sending to
/// it first, but requests in flight are cut), starts it again on its data dir, and gives it
/// back to the clients once it answers. Returns the time from the kill to that.
fn kill_and_restart_during_moves(cluster: &mut Cluster, shared: &Shared, index: usize) -> Duration {
    let address = cluster.http(index);
    // The join's first moves are admitted within a few hundred milliseconds.
    std::thread::sleep(Duration::from_millis(500));
    shared
        .targets
        .lock()
        .unwrap()
        .retain(|target| *target != address);
    let killed = Instant::now();
    shared.killed.lock().unwrap().insert(address, killed);
    cluster.kill(index);
    std::thread::sleep(Duration::from_secs(1));
    cluster.restart(index);
    while cluster_view(address).is_none_or(|view| view["membership"] != "member") {
        assert!(
            killed.elapsed() < SETTLE_TIMEOUT,
            "node {} did not come back after its kill\n{}",
            index + 1,
            cluster.log_tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    shared.targets.lock().unwrap().push(address);
    killed.elapsed()
}

#[test]
fn nodes_join_and_drain_under_load_with_no_failed_request() {
    let nodes = size_from("BOROUGH_MEMBERSHIP_NODES", 5).max(3);
    let partition_count = size_from("BOROUGH_MEMBERSHIP_PARTITIONS", 6).max(1);
    let partitions: Vec<String> = (0..partition_count)
        .map(|index| format!("p{index}"))
        .collect();
    let mut cluster = Cluster::prepare_joined(nodes);
    cluster.launch(0);
    cluster
        .wait_until_healthy(cluster_support::STARTUP_TIMEOUT)
        .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.log_tails()));
    let shared = Arc::new(Shared {
        partitions: partitions.clone(),
        started: Instant::now(),
        targets: Mutex::new(vec![cluster.http(0)]),
        operations: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        cut_by_kill: Mutex::new(0),
        killed: Mutex::new(BTreeMap::new()),
        latencies: Mutex::new(Vec::new()),
    });
    // The partitions exist before the load starts (a first request creates each); these
    // first writes are in the history too.
    for partition in &partitions {
        let path = format!("/partitions/{partition}/keys/a");
        let call = Instant::now();
        let response = http_request(cluster.http(0), "PUT", &path, Some(b"v0"), CLIENT_TIMEOUT)
            .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.log_tails()));
        assert_eq!(response.status, 204, "{}", response.describe());
        shared.operations.lock().unwrap().push(Operation {
            client: CLIENTS,
            call_micros: shared.micros(call),
            return_micros: Some(shared.micros(Instant::now())),
            input: OperationInput::Put {
                key: format!("{partition}/a").into_bytes(),
                value: b"v0".to_vec(),
            },
            output: OperationOutput::Ok,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::spawn(move || client(id, shared, stop))
        })
        .collect();
    // Node 2 by default; `BOROUGH_MEMBERSHIP_KILL=1` kills the founder, which leads the
    // directory's group.
    let victim = size_from("BOROUGH_MEMBERSHIP_KILL", 2).clamp(1, nodes - 1) - 1;
    let mut joins = Vec::new();
    let mut restart_took = Duration::ZERO;
    for index in 1..nodes {
        let moves_before = moves_so_far(&cluster, 0);
        cluster.launch(index);
        if index == nodes - 1 {
            restart_took = kill_and_restart_during_moves(&mut cluster, &shared, victim);
        }
        let settled = wait_settled(&cluster, 0, index + 1, partition_count);
        joins.push((settled, moves_so_far(&cluster, 0) - moves_before));
        shared.targets.lock().unwrap().push(cluster.http(index));
    }
    let mut drains = Vec::new();
    for index in (2..nodes).rev() {
        let moves_before = moves_so_far(&cluster, 0);
        let address = cluster.http(index);
        shared
            .targets
            .lock()
            .unwrap()
            .retain(|target| *target != address);
        let asked = Instant::now();
        let response = http_request(address, "POST", "/cluster/leave", None, REQUEST_TIMEOUT)
            .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.log_tails()));
        assert_eq!(response.status, 202, "{}", response.describe());
        let status = loop {
            if let Some(status) = cluster.nodes[index].exited() {
                break status;
            }
            assert!(
                asked.elapsed() < SETTLE_TIMEOUT,
                "node {} did not stop after leaving\n{}",
                index + 1,
                cluster.log_tails()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(status, "exit status: 0", "node {} exited badly", index + 1);
        let stopped = asked.elapsed();
        wait_settled(&cluster, 0, index, partition_count);
        drains.push((stopped, moves_so_far(&cluster, 0) - moves_before));
    }
    // A little more load on the two nodes left, then the clients stop.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client panicked");
    }
    let failures = shared.failures.lock().unwrap().clone();
    let mut latencies = shared.latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    let answered = latencies.len();
    let slowest = latencies.last().copied().unwrap_or_default();
    let percentile = |fraction: f64| {
        latencies
            .get(((answered as f64 * fraction) as usize).min(answered.saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let cut_by_kill = *shared.cut_by_kill.lock().unwrap();
    let moves: u64 = joins.iter().chain(&drains).map(|(_, moves)| moves).sum();
    let settling: Duration = joins.iter().chain(&drains).map(|(took, _)| *took).sum();
    println!(
        "membership under load, {nodes} nodes and {partition_count} partitions: {answered} requests answered, {} failed, p50 {:?}, p99 {:?}, slowest {slowest:?}",
        failures.len(),
        percentile(0.50),
        percentile(0.99),
    );
    println!(
        "  node {} killed (SIGKILL) while node {nodes} joined: {cut_by_kill} requests through it cut, answering again {restart_took:?} after the kill",
        victim + 1
    );
    for (number, (took, moves)) in joins.iter().enumerate() {
        println!(
            "  join of node {}: {moves} moves, settled in {took:?}",
            number + 2
        );
    }
    for (number, (took, moves)) in drains.iter().enumerate() {
        println!(
            "  drain of node {}: {moves} moves, stopped after {took:?}",
            nodes - number
        );
    }
    println!(
        "  {moves} moves in all, {:?} of settling per move (moves run up to 8 at once)",
        settling / u32::try_from(moves.max(1)).unwrap_or(u32::MAX)
    );
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    assert!(answered > 100, "only {answered} requests answered");
    assert!(
        slowest < SLOWEST_BOUND,
        "the slowest request took {slowest:?}"
    );
    let operations = shared.operations.lock().unwrap().clone();
    match check_history(&operations, DEFAULT_MAX_STEPS_PER_KEY) {
        CheckOutcome::Linearizable => {}
        other => panic!("the history is not linearizable: {other:?}"),
    }
    // The two nodes left hold every partition, and read back every last write.
    let view = cluster_view(cluster.http(0)).expect("node 1 answers");
    for partition in view["partitions"].as_array().into_iter().flatten() {
        let mut replicas: Vec<u64> = partition["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        replicas.sort_unstable();
        assert_eq!(replicas, vec![1, 2], "{partition}");
    }
}

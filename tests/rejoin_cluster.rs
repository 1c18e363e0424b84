//! A node declared dead while it was away comes back as a new member, against real
//! processes: three `borough start` nodes on loopback with `--dead-after-s 2`; node 3 is
//! paused (SIGSTOP) until the directory's leader declares it dead and its replicas are
//! rebuilt on nodes 1 and 2; then it is resumed. It learns that it left, deletes its
//! replicas, empties its data dir and starts over in the same process (same pid), joins
//! again under its id as a new instance, and takes its share of the partitions back. Every
//! acknowledged write reads back through every node at the end.

#![allow(clippy::disallowed_methods)]

mod cluster_support;

/// The program `cluster_support` starts.
const BINARY: &str = env!("CARGO_BIN_EXE_borough");

use cluster_support::{http_request, Cluster, REQUEST_TIMEOUT};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PARTITIONS: usize = 4;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn cluster_view(address: SocketAddr) -> Option<Value> {
    let response = http_request(address, "GET", "/cluster", None, REQUEST_TIMEOUT).ok()?;
    (response.status == 200)
        .then(|| response.json().ok())
        .flatten()
}

fn member(view: &Value, id: u64) -> Option<&Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|member| member["id"] == id)
}

/// Waits until `done` holds for node `via`'s view of the cluster; panics with the last view.
fn wait_for(cluster: &Cluster, via: usize, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < SETTLE_TIMEOUT {
        if let Some(view) = cluster_view(cluster.http(via)) {
            if done(&view) {
                return view;
            }
            last = view;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "not within {SETTLE_TIMEOUT:?}: {what}: {last:#}\n{}",
        cluster.log_tails()
    );
}

/// Every listed partition on `replicas` replicas, none moving, and all `PARTITIONS` listed.
fn settled_on(view: &Value, replicas: usize) -> bool {
    let listed = view["partitions"].as_array().cloned().unwrap_or_default();
    listed.len() == PARTITIONS
        && view["moving_count"] == 0
        && listed
            .iter()
            .all(|partition| partition["replicas"].as_array().map_or(0, Vec::len) == replicas)
}

fn put(cluster: &Cluster, via: usize, partition: usize, value: &str) {
    let path = format!("/partitions/p{partition}/keys/k");
    let response = http_request(
        cluster.http(via),
        "PUT",
        &path,
        Some(value.as_bytes()),
        REQUEST_TIMEOUT,
    )
    .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.log_tails()));
    assert_eq!(response.status, 204, "{}", response.describe());
}

/// Three nodes that joined node 1's cluster, each with `--dead-after-s 2`, all active.
fn start_three() -> Cluster {
    let mut cluster = Cluster::prepare_joined_with(3, &["--dead-after-s", "2"]);
    for index in 0..3 {
        cluster.launch(index);
    }
    cluster
        .wait_until_healthy(cluster_support::STARTUP_TIMEOUT)
        .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.log_tails()));
    wait_for(&cluster, 0, "three active members", |view| {
        (1..=3).all(|id| member(view, id).is_some_and(|member| member["state"] == "active"))
    });
    cluster
}

#[test]
fn a_node_declared_dead_while_away_starts_over_and_rejoins_as_a_new_member() {
    let mut cluster = start_three();
    for partition in 0..PARTITIONS {
        put(&cluster, 0, partition, "before");
    }
    let before = wait_for(&cluster, 0, "every partition on 3 replicas", |view| {
        settled_on(view, 3)
    });
    let pid = cluster.nodes[2].pid();

    cluster.nodes[2].signal("STOP");
    let paused = Instant::now();
    wait_for(&cluster, 0, "node 3 declared dead", |view| {
        member(view, 3).is_some_and(|member| member["state"] == "left")
    });
    let declared_after = paused.elapsed();
    wait_for(
        &cluster,
        0,
        "every partition rebuilt on nodes 1 and 2",
        |view| settled_on(view, 2),
    );
    // Writes while node 3 is away.
    for partition in 0..PARTITIONS {
        put(&cluster, 1, partition, "while-away");
    }

    cluster.nodes[2].signal("CONT");
    let resumed = Instant::now();
    let after = wait_for(
        &cluster,
        0,
        "node 3 back as a new member, with its share",
        |view| {
            member(view, 3)
                .is_some_and(|member| member["state"] == "active" && member["replicas"] != 0)
                && settled_on(view, 3)
        },
    );
    let rejoined_after = resumed.elapsed();
    assert!(
        cluster.nodes[2].exited().is_none(),
        "node 3 started over in its own process\n{}",
        cluster.log_tails()
    );
    assert_eq!(cluster.nodes[2].pid(), pid);
    let log = cluster.nodes[2].log_tail(400);
    assert!(
        log.contains("starts over on an empty data dir"),
        "node 3's log says it started over:\n{log}"
    );
    // It emptied its data dir and joined through a member it knew.
    let marker = std::fs::read_to_string(cluster.nodes[2].data_dir().join("REJOIN"))
        .expect("node 3 left a REJOIN marker");
    assert!(marker.starts_with("joined "), "{marker:?}");
    // The last acknowledged write of every partition reads back through every node,
    // node 3's new replicas included.
    for via in 0..3 {
        for partition in 0..PARTITIONS {
            let path = format!("/partitions/p{partition}/keys/k");
            let response = http_request(cluster.http(via), "GET", &path, None, REQUEST_TIMEOUT)
                .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.log_tails()));
            assert_eq!(response.status, 200, "{}", response.describe());
            assert_eq!(
                response.body,
                b"while-away",
                "p{partition} through node {}",
                via + 1
            );
        }
    }
    println!(
        "node 3 paused: declared dead after {declared_after:?}; resumed: back as a new member with its share after {rejoined_after:?}"
    );
    println!(
        "members before: {}; after: {}",
        before["members"], after["members"]
    );
}

/// A node that drained by its own `leave` is not a dead one: started again on its data dir,
/// it finds it left, stops again at once, and never joins as a new member. (Here its Raft
/// log replays the "leaving" state too, which alone keeps it from starting over; the
/// `LEAVING` marker covers a node whose log was compacted past it.)
#[test]
fn a_drained_node_started_again_stops_instead_of_rejoining() {
    let mut cluster = start_three();
    put(&cluster, 0, 0, "kept");
    let response = http_request(
        cluster.http(2),
        "POST",
        "/cluster/leave",
        None,
        REQUEST_TIMEOUT,
    )
    .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.log_tails()));
    assert_eq!(response.status, 202, "{}", response.describe());
    let exited = |cluster: &mut Cluster| {
        let started = Instant::now();
        loop {
            if let Some(status) = cluster.nodes[2].exited() {
                return status;
            }
            assert!(
                started.elapsed() < SETTLE_TIMEOUT,
                "node 3 did not stop\n{}",
                cluster.log_tails()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(exited(&mut cluster), "exit status: 0");
    cluster.kill(2); // reaps the exited process
    cluster.restart(2);
    assert_eq!(
        exited(&mut cluster),
        "exit status: 0",
        "started again, the drained node stops again"
    );
    assert!(!cluster.nodes[2].data_dir().join("REJOIN").exists());
    let view = cluster_view(cluster.http(0)).expect("node 1 answers");
    assert_eq!(member(&view, 3).unwrap()["state"], "left", "{view:#}");
}

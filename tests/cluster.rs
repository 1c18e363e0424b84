//! Real-process cluster tests: `borough start` nodes on loopback, driven over their HTTP API.
//!
//! - three nodes: writes at each commit level (ONE, QUORUM, ALL) answer 201 with a key and a
//!   Location, read back from another node, and reach the replication factor; bad requests
//!   (malformed JSON, an oversized body, a bad commit level, wrong methods, malformed keys)
//!   get 400 / 404 / 405 and change nothing;
//! - three and five nodes: one node is killed with SIGKILL while a writer puts QUORUM events
//!   to the others, then restarted on the same data dir and ports; every acknowledged event
//!   is then readable from every node and held by three nodes.
//!
//! - three nodes over the AllData HTTP peer transport: every replica holds the very bytes the
//!   client sent (key order, number spelling and white space kept).
//!
//! Every wait is bounded; a failure prints the tail of every node's log.

// Tests measure wall time and run a writer thread; the disallowed-methods lint guards the
// deterministic core, not the tests.
#![allow(clippy::disallowed_methods)]

mod cluster_support;

/// The program `cluster_support` starts.
const BINARY: &str = env!("CARGO_BIN_EXE_borough");

use cluster_support::{http_request, Cluster, HttpResponse, REPLICATION_FACTOR, REQUEST_TIMEOUT};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A put waits at most for the replica timeout (2 s by default) plus a local fsync.
const PUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the replication factor being restored and every event becoming readable.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on every survivor noticing a killed peer (peer_down_after_ms is 3000 by default).
const DOWN_DETECTION_TIMEOUT: Duration = Duration::from_secs(15);
const SCAN_PAGE_LIMIT: usize = 10_000;
const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Pause between a writer's puts: enough events to matter, few enough to read all back.
const WRITER_PAUSE: Duration = Duration::from_millis(10);

// ---- API helpers ----

/// Puts an event; on 201 checks the `{"key"}` body and the Location header and returns the
/// key, otherwise returns the status (when there was an answer) and a description.
fn put_event(
    address: SocketAddr,
    commit_level: Option<&str>,
    event: &Value,
) -> Result<String, (Option<u16>, String)> {
    let target = match commit_level {
        Some(level) => format!("/events?commit={level}"),
        None => "/events".to_string(),
    };
    let body = serde_json::to_vec(event).expect("serialisable event");
    let response = http_request(address, "POST", &target, Some(&body), PUT_TIMEOUT)
        .map_err(|failure| (None, failure))?;
    if response.status != 201 {
        return Err((
            Some(response.status),
            format!("POST {target} on {address}: {}", response.describe()),
        ));
    }
    let answer = response.json().map_err(|failure| (Some(201), failure))?;
    let key = answer["key"]
        .as_str()
        .unwrap_or_else(|| panic!("201 without a string key: {answer}"))
        .to_string();
    assert_eq!(
        response.header("location"),
        Some(format!("/events/{key}").as_str()),
        "Location header of the 201 for {key}"
    );
    Ok(key)
}

fn get_event(address: SocketAddr, key: &str, local_only: bool) -> Result<HttpResponse, String> {
    let scope = if local_only { "?scope=local" } else { "" };
    http_request(
        address,
        "GET",
        &format!("/events/{key}{scope}"),
        None,
        REQUEST_TIMEOUT,
    )
}

/// Every event a node answers for a scan (the whole cluster, or `scope=local`), paging until
/// a page is short. A cluster scan that reports unreachable peers is an error: it is partial.
fn scan_all(address: SocketAddr, local_only: bool) -> Result<BTreeMap<String, Value>, String> {
    let mut events = BTreeMap::new();
    let mut from: Option<String> = None;
    loop {
        let mut target = format!("/events?limit={SCAN_PAGE_LIMIT}");
        if local_only {
            target.push_str("&scope=local");
        }
        if let Some(from) = &from {
            target.push_str(&format!("&from={from}"));
        }
        let response = http_request(address, "GET", &target, None, REQUEST_TIMEOUT)?;
        if response.status != 200 {
            return Err(format!(
                "GET {target} on {address}: {}",
                response.describe()
            ));
        }
        let answer = response.json()?;
        if let Some(unreachable) = answer.get("unreachable_peers") {
            return Err(format!(
                "GET {target} on {address}: partial scan, unreachable peers {unreachable}"
            ));
        }
        let page = answer["events"]
            .as_array()
            .ok_or_else(|| format!("GET {target} on {address}: no events array: {answer}"))?;
        let mut previous_key: Option<String> = None;
        let mut new_events = 0;
        for scanned in page {
            let key = scanned["key"]
                .as_str()
                .ok_or_else(|| format!("scanned event without a key: {scanned}"))?
                .to_string();
            if let Some(previous_key) = &previous_key {
                if *previous_key >= key {
                    return Err(format!(
                        "GET {target} on {address}: keys out of order: {previous_key} then {key}"
                    ));
                }
            }
            previous_key = Some(key.clone());
            // `from` is inclusive, so the first key of a next page repeats the last one.
            if events.insert(key, scanned["event"].clone()).is_none() {
                new_events += 1;
            }
        }
        if page.len() < SCAN_PAGE_LIMIT || new_events == 0 {
            return Ok(events);
        }
        from = previous_key;
    }
}

/// The node's answer to an event read must be the event as written.
fn check_read(response: &HttpResponse, key: &str, expected: &Value) -> Result<(), String> {
    if response.status != 200 {
        return Err(format!("GET /events/{key}: {}", response.describe()));
    }
    let content_type = response.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(format!("GET /events/{key}: content-type {content_type:?}"));
    }
    let event = response.json()?;
    if event != *expected {
        return Err(format!("GET /events/{key}: got {event}, wrote {expected}"));
    }
    Ok(())
}

/// How many nodes hold each key locally, from a local scan of every running node; also
/// checks that every held copy of an expected event is the event as written.
fn holder_counts(
    cluster: &Cluster,
    expected: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, usize>, String> {
    let mut counts: BTreeMap<String, usize> = expected.keys().map(|key| (key.clone(), 0)).collect();
    for index in 0..cluster.size() {
        if !cluster.nodes[index].is_running() {
            continue;
        }
        let local = scan_all(cluster.http(index), true)?;
        for (key, event) in local {
            if let Some(written) = expected.get(&key) {
                if event != *written {
                    return Err(format!(
                        "node {} holds {key} as {event}, written as {written}",
                        cluster.nodes[index].id
                    ));
                }
                *counts.entry(key).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

/// Waits until every expected event is held by the replication factor's count of nodes and
/// is readable, as written, from every running node.
fn wait_until_replicated_and_readable(
    cluster: &Cluster,
    expected: &BTreeMap<String, Value>,
) -> Result<(), String> {
    let deadline = Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let problem = match holder_counts(cluster, expected) {
            Err(failure) => Some(failure),
            Ok(counts) => {
                let short: Vec<String> = counts
                    .iter()
                    .filter(|(_, count)| **count < REPLICATION_FACTOR)
                    .map(|(key, count)| format!("{key} on {count}"))
                    .collect();
                if short.is_empty() {
                    unreadable(cluster, expected)
                } else {
                    Some(format!(
                        "{} of {} events are short of {REPLICATION_FACTOR} holders, for \
                         example {:?}; health: {}",
                        short.len(),
                        expected.len(),
                        &short[..short.len().min(5)],
                        health_summary(cluster)
                    ))
                }
            }
        };
        match problem {
            None => return Ok(()),
            Some(problem) if Instant::now() >= deadline => {
                return Err(format!(
                    "not converged within {CONVERGENCE_TIMEOUT:?}: {problem}"
                ))
            }
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The first failures of reading every expected event from every running node.
fn unreadable(cluster: &Cluster, expected: &BTreeMap<String, Value>) -> Option<String> {
    let mut failures = Vec::new();
    let mut failure_count = 0;
    for index in 0..cluster.size() {
        if !cluster.nodes[index].is_running() {
            continue;
        }
        for (key, event) in expected {
            let outcome = get_event(cluster.http(index), key, false)
                .and_then(|response| check_read(&response, key, event));
            if let Err(failure) = outcome {
                failure_count += 1;
                if failures.len() < 5 {
                    failures.push(format!("node {}: {failure}", cluster.nodes[index].id));
                }
            }
        }
    }
    (failure_count > 0).then(|| format!("{failure_count} failed reads, first: {failures:?}"))
}

fn health_summary(cluster: &Cluster) -> String {
    let mut parts = Vec::new();
    for index in 0..cluster.size() {
        if !cluster.nodes[index].is_running() {
            continue;
        }
        let answer = http_request(cluster.http(index), "GET", "/health", None, REQUEST_TIMEOUT)
            .map(|response| response.body_text())
            .unwrap_or_else(|failure| failure);
        parts.push(format!("node {}: {answer}", cluster.nodes[index].id));
    }
    parts.join("; ")
}

/// The cluster's events as every node sees them: the cluster scan and the local scan of each.
fn cluster_state(cluster: &Cluster) -> Vec<(String, BTreeSet<String>)> {
    let mut state = Vec::new();
    for index in 0..cluster.size() {
        let id = cluster.nodes[index].id;
        for local_only in [false, true] {
            let keys = scan_all(cluster.http(index), local_only)
                .unwrap_or_else(|failure| panic!("scan of node {id}: {failure}"))
                .into_keys()
                .collect();
            let scope = if local_only { "local" } else { "cluster" };
            state.push((format!("node {id} {scope} scan"), keys));
        }
    }
    state
}

/// A refusal must have the expected status and a JSON `{"error": ...}` body.
fn check_json_error(
    response: Result<HttpResponse, String>,
    expected_status: u16,
    what: &str,
) -> Result<(), String> {
    let response = response.map_err(|failure| format!("{what}: {failure}"))?;
    if response.status != expected_status {
        return Err(format!(
            "{what}: expected {expected_status}, got {}",
            response.describe()
        ));
    }
    let body = response
        .json()
        .map_err(|failure| format!("{what}: {failure}"))?;
    if !body["error"].is_string() {
        return Err(format!("{what}: no error message in {body}"));
    }
    Ok(())
}

/// A wrong method must get 405 with an Allow header naming the right one.
fn check_method_not_allowed(
    address: SocketAddr,
    method: &str,
    target: &str,
    allowed_method: &str,
) -> Result<(), String> {
    let response = http_request(address, method, target, Some(b"{\"a\":1}"), REQUEST_TIMEOUT)?;
    if response.status != 405 {
        return Err(format!(
            "{method} {target}: expected 405, got {}",
            response.describe()
        ));
    }
    let allow = response
        .header("allow")
        .ok_or_else(|| format!("{method} {target}: 405 without an Allow header"))?;
    let body = response
        .json()
        .map_err(|failure| format!("{method} {target}: {failure}"))?;
    if !body["error"].is_string() {
        return Err(format!("{method} {target}: no error message in {body}"));
    }
    if !allow
        .split(',')
        .any(|method| method.trim().eq_ignore_ascii_case(allowed_method))
    {
        return Err(format!(
            "{method} {target}: Allow {allow:?} lacks {allowed_method}"
        ));
    }
    Ok(())
}

// ---- Tests ----

#[test]
fn three_nodes_write_at_every_commit_level_and_refuse_bad_requests() {
    let cluster = Cluster::start(3);
    let mut written: BTreeMap<String, Value> = BTreeMap::new();

    for level in ["ONE", "QUORUM", "ALL"] {
        for writer in 0..cluster.size() {
            let event = json!({
                "commit_level": level,
                "writer_node": cluster.nodes[writer].id,
                "nested": {"list": [1, 2.5, "three", null, true]},
            });
            let key = put_event(cluster.http(writer), Some(level), &event)
                .unwrap_or_else(|(_, failure)| panic!("{failure}"));
            // Read through another node: it must find the event on its peers when it lacks it.
            let reader = (writer + 1) % cluster.size();
            let response = get_event(cluster.http(reader), &key, false)
                .unwrap_or_else(|failure| panic!("{failure}"));
            check_read(&response, &key, &event)
                .unwrap_or_else(|failure| panic!("read from node {reader}: {failure}"));

            // The acknowledgement promises this many durable copies already.
            let required = match level {
                "ONE" => 1,
                "QUORUM" => REPLICATION_FACTOR / 2 + 1,
                _ => REPLICATION_FACTOR,
            };
            let holders = (0..cluster.size())
                .filter(|index| {
                    get_event(cluster.http(*index), &key, true)
                        .map(|response| response.status == 200)
                        .unwrap_or(false)
                })
                .count();
            assert!(
                holders >= required,
                "{level} put {key} acknowledged, but only {holders} nodes hold it locally"
            );
            written.insert(key, event);
        }
    }

    // The default commit level (the node's QUORUM) works too.
    let event = json!({"commit_level": "default"});
    let key =
        put_event(cluster.http(0), None, &event).unwrap_or_else(|(_, failure)| panic!("{failure}"));
    written.insert(key, event);

    wait_until_replicated_and_readable(&cluster, &written)
        .unwrap_or_else(|failure| panic!("{failure}"));
    // Every node's cluster scan answers exactly the written events, in key order.
    for index in 0..cluster.size() {
        let scanned =
            scan_all(cluster.http(index), false).unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(
            scanned, written,
            "cluster scan of node {}",
            cluster.nodes[index].id
        );
    }

    // Every bad request is tried and every problem reported at once, so one run shows them all.
    let before = cluster_state(&cluster);
    let address = cluster.http(1);
    let post = |target: &str, body: &[u8]| {
        http_request(address, "POST", target, Some(body), REQUEST_TIMEOUT)
    };
    let mut outcomes: Vec<Result<(), String>> = Vec::new();
    let bad_bodies: [(&str, &[u8]); 5] = [
        ("unterminated JSON", b"{\"unterminated\": "),
        ("not JSON", b"not json"),
        ("an empty body", b""),
        ("trailing characters", b"{\"a\": 1} extra"),
        // JSON text is UTF-8 (RFC 8259); these bytes are not.
        ("a JSON string of invalid UTF-8", b"\"\xff\xfe\""),
    ];
    for (what, body) in bad_bodies {
        outcomes.push(check_json_error(post("/events", body), 400, what));
    }
    // Valid JSON one KiB over the limit: refused for its size alone.
    let mut oversized = Vec::with_capacity(BODY_BYTES_MAX + 1024 + 2);
    oversized.push(b'"');
    oversized.resize(BODY_BYTES_MAX + 1024 + 1, b'a');
    oversized.push(b'"');
    outcomes.push(check_json_error(
        post("/events", &oversized),
        400,
        "a body over 1 MiB",
    ));
    outcomes.push(check_json_error(
        post("/events?commit=MOST", b"{\"a\": 1}"),
        400,
        "an unknown commit level",
    ));

    let some_key = written.keys().next().expect("a written key").clone();
    for (method, target, allowed_method) in [
        ("PUT", "/events".to_string(), "POST"),
        ("DELETE", "/events".to_string(), "POST"),
        ("PATCH", "/events".to_string(), "POST"),
        ("POST", format!("/events/{some_key}"), "GET"),
        ("DELETE", format!("/events/{some_key}"), "GET"),
    ] {
        outcomes.push(check_method_not_allowed(
            address,
            method,
            &target,
            allowed_method,
        ));
    }

    outcomes.push(check_json_error(
        get_event(address, "not-a-key", false),
        400,
        "a malformed key",
    ));
    let absent_key = "00000000000000001-00000001-00000001";
    outcomes.push(check_json_error(
        get_event(address, absent_key, false),
        404,
        "an absent key",
    ));

    outcomes.push(
        http_request(address, "GET", "/metrics", None, REQUEST_TIMEOUT).and_then(|metrics| {
            if metrics.status == 200 && metrics.body_text().contains("borough_http_requests_total")
            {
                Ok(())
            } else {
                Err(format!(
                    "/metrics: no borough_http_requests_total in {}",
                    metrics.describe()
                ))
            }
        }),
    );

    // Give any stray write time to land before checking that nothing changed.
    std::thread::sleep(Duration::from_millis(500));
    let after = cluster_state(&cluster);
    for ((scope, keys_before), (_, keys_after)) in before.iter().zip(&after) {
        if keys_before != keys_after {
            let added: Vec<&String> = keys_after.difference(keys_before).collect();
            let removed: Vec<&String> = keys_before.difference(keys_after).collect();
            outcomes.push(Err(format!(
                "{scope} changed after the bad requests: added {added:?}, removed {removed:?}"
            )));
        }
    }
    let problems: Vec<String> = outcomes.into_iter().filter_map(Result::err).collect();
    assert!(
        problems.is_empty(),
        "bad requests were not refused cleanly:\n{}",
        problems.join("\n")
    );
}

/// What the writer saw: acknowledged events and refused or failed puts, each with its time.
#[derive(Debug, Default)]
struct WriterLog {
    acknowledged: Vec<(Instant, String, Value)>,
    refused: Vec<(Instant, Option<u16>, String)>,
}

/// Stops the writer however the test ends, a failed assertion included.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Puts QUORUM events round-robin to `targets` until `stop` is set.
fn spawn_writer(
    targets: Vec<(u32, SocketAddr)>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut sequence: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let (target_id, address) = targets[sequence as usize % targets.len()];
            let event = json!({
                "writer_sequence": sequence,
                "coordinator": target_id,
                "padding": "x".repeat(64),
            });
            let outcome = put_event(address, Some("QUORUM"), &event);
            let now = Instant::now();
            let mut log = log.lock().expect("writer log");
            match outcome {
                Ok(key) => log.acknowledged.push((now, key, event)),
                Err((status, failure)) => log.refused.push((now, status, failure)),
            }
            drop(log);
            sequence += 1;
            std::thread::sleep(WRITER_PAUSE);
        }
    })
}

/// Kills one node with SIGKILL under a QUORUM write load on the others, restarts it on the
/// same data dir and ports, and checks that no acknowledged event is lost and that the
/// replication factor is restored.
fn acknowledged_events_survive_kill_and_restart(size: usize) {
    let mut cluster = Cluster::start(size);
    let victim = 1;
    let victim_id = cluster.nodes[victim].id;
    let targets: Vec<(u32, SocketAddr)> = (0..size)
        .filter(|index| *index != victim)
        .map(|index| (cluster.nodes[index].id, cluster.http(index)))
        .collect();
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let log = Arc::new(Mutex::new(WriterLog::default()));
    let writer_started_at = Instant::now();
    let writer = spawn_writer(targets, stop.0.clone(), log.clone());
    let stop_writer = || stop.0.store(true, Ordering::Relaxed);

    std::thread::sleep(Duration::from_secs(1));
    // Events acknowledged at ALL are durable on the victim and confirmed, so no holder repairs
    // them: they are back on three nodes only if the victim's disk kept them across SIGKILL.
    for sequence in 0..5 {
        let event = json!({"durable_on_every_node": sequence});
        let key = put_event(cluster.http(0), Some("ALL"), &event)
            .unwrap_or_else(|(_, failure)| panic!("ALL put before the kill: {failure}"));
        log.lock()
            .expect("writer log")
            .acknowledged
            .push((Instant::now(), key, event));
    }
    let killed_at = Instant::now();
    cluster.kill(victim);
    let seen_down = cluster.wait_until_seen_down(victim_id, DOWN_DETECTION_TIMEOUT);
    let seen_down_at = Instant::now();
    if let Err(failure) = seen_down {
        stop_writer();
        let _ = writer.join();
        panic!("the survivors did not notice node {victim_id} down: {failure}");
    }
    // A commit level the nodes that are up cannot meet fails at once, saying so; one they
    // can meet succeeds.
    let all_started = Instant::now();
    let all_put = put_event(cluster.http(0), Some("ALL"), &json!({"while_down": "ALL"}));
    let all_took = all_started.elapsed();
    if size - 1 < REPLICATION_FACTOR {
        match &all_put {
            Err((Some(503), failure)) => assert!(
                failure.contains("only 2 nodes are up") && failure.contains("nothing was written"),
                "{failure}"
            ),
            other => panic!("ALL with {} of {size} nodes up: {other:?}", size - 1),
        }
        assert!(
            all_took < Duration::from_secs(1),
            "the ALL refusal took {all_took:?}, not at once"
        );
    } else {
        let key = all_put.unwrap_or_else(|(_, failure)| panic!("ALL with a spare node: {failure}"));
        log.lock().expect("writer log").acknowledged.push((
            Instant::now(),
            key,
            json!({"while_down": "ALL"}),
        ));
    }
    // Keep writing while the cluster knows the node is gone.
    std::thread::sleep(Duration::from_secs(1));
    let restarted_at = Instant::now();
    cluster.restart(victim);
    let healthy = cluster.wait_until_healthy(cluster_support::STARTUP_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    stop_writer();
    writer.join().expect("writer thread");
    if let Err(failure) = healthy {
        panic!("node {victim_id} did not rejoin after its restart: {failure}");
    }

    let log = log.lock().expect("writer log");
    let count_between = |from: Instant, to: Instant| {
        log.acknowledged
            .iter()
            .filter(|(at, _, _)| *at >= from && *at < to)
            .count()
    };
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for (_, status, _) in &log.refused {
        let status = status.map_or("no answer".to_string(), |status| status.to_string());
        *refusals.entry(status).or_default() += 1;
    }
    eprintln!(
        "{size} nodes: {} acknowledged ({} before the kill, {} while down and unnoticed, {} \
         while noticed down, {} after the restart); refused by status: {refusals:?}",
        log.acknowledged.len(),
        count_between(writer_started_at, killed_at),
        count_between(killed_at, seen_down_at),
        count_between(seen_down_at, restarted_at),
        count_between(restarted_at, Instant::now()),
    );
    if let Some((_, status, failure)) = log.refused.first() {
        eprintln!("first refusal: {status:?} {failure}");
    }
    assert!(
        count_between(writer_started_at, killed_at) > 0,
        "no event acknowledged before the kill"
    );
    let refused_while_down: Vec<&(Instant, Option<u16>, String)> = log
        .refused
        .iter()
        .filter(|(at, _, _)| *at >= seen_down_at && *at < restarted_at)
        .collect();
    // QUORUM needs floor(RF/2)+1 = 2 nodes up, so it goes on with one node down, in a
    // cluster of three too; the missing replica is repaired when the node returns.
    assert!(
        count_between(seen_down_at, restarted_at) > 0,
        "no event acknowledged while node {victim_id} was known down, with {} nodes left: \
         {:?}",
        size - 1,
        &refused_while_down[..refused_while_down.len().min(5)]
    );

    let acknowledged: BTreeMap<String, Value> = log
        .acknowledged
        .iter()
        .map(|(_, key, event)| (key.clone(), event.clone()))
        .collect();
    assert_eq!(
        acknowledged.len(),
        log.acknowledged.len(),
        "a key was acknowledged twice"
    );
    drop(log);
    wait_until_replicated_and_readable(&cluster, &acknowledged)
        .unwrap_or_else(|failure| panic!("{failure}"));
}

#[test]
fn three_nodes_keep_acknowledged_events_through_kill_and_restart() {
    acknowledged_events_survive_kill_and_restart(3);
}

#[test]
fn five_nodes_keep_acknowledged_events_through_kill_and_restart() {
    acknowledged_events_survive_kill_and_restart(5);
}

#[test]
fn the_http_peer_transport_keeps_the_clients_exact_bytes_on_every_replica() {
    let cluster = Cluster::start_with(3, &["--transport", "http"]);
    // Key order, a number beyond f64, a trailing zero and white space: a JSON round trip
    // through a parsed value would change every one of them.
    let body = br#"{"b": 1,  "a": 123456789012345678901234567890, "c": 1.10}"#;
    let response = http_request(
        cluster.http(0),
        "POST",
        "/events?commit=ALL",
        Some(body),
        PUT_TIMEOUT,
    )
    .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(response.status, 201, "{}", response.describe());
    let key = response.json().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    for index in 0..cluster.size() {
        let stored = get_event(cluster.http(index), &key, true)
            .unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(stored.status, 200, "node {index}: {}", stored.describe());
        assert_eq!(
            stored.body_text().as_bytes(),
            body,
            "node {index} holds other bytes than the client sent"
        );
    }
}

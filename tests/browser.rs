//! Shared maps in a real browser: headless Chromium, driven over WebDriver (`chromedriver`),
//! runs the web console (`/#map=board`, which opens the map with the browser client
//! `/maps/client.js` and exposes it as `window.boroughMap`) against a real 3-node cluster of
//! `borough start` processes.
//!
//! - two pages on two nodes converge: what one page sets the other sees, a delete from one
//!   reaches the other, a plain HTTP write from the test reaches both, and a burst of
//!   interleaved writes from both pages ends with both maps identical to each other and to
//!   `GET /maps/board`;
//! - two pages converge across a node kill: each page writes in a loop while the node page A
//!   came from (the one leading the map's partition when the test starts, so the kill is a
//!   leader failover too) is killed with SIGKILL and restarted; page A reconnects to another
//!   node and resumes; every acknowledged write is in the final map, a write refused with a
//!   definite error is not, and both pages end identical to each other and to
//!   `GET /maps/board`;
//! - after each convergence the console shows the cluster's three members and every entry
//!   of the map, and a screenshot of it is kept in `target/browser-artifacts/`.
//!
//! Every page records each `set` and `delete` event it saw with the map's revision then
//! (`window.events`), and every `ready`/`resumed` message of its feed: one map's changes are
//! numbered consecutively, so after its first `ready` a page must see each revision exactly
//! once, in order, up to its final one, and replaying its events over the entries it was
//! ready with must give its final entries. A fresh `ready` after that (a resync after a
//! compacted gap) must not happen with fewer changes than the history holds.
//!
//! `chromedriver` and Chromium must be installed (Debian's `chromium chromium-driver`;
//! `.ci/run` installs them): without them these tests fail, saying so. Every wait polls
//! with a deadline; the tests run one at a time, each with its own cluster and browsers.

#![allow(clippy::disallowed_methods)]

mod browser_support;
mod cluster_support;

/// The program `cluster_support` starts.
const BINARY: &str = env!("CARGO_BIN_EXE_borough");

use browser_support::{artifacts_directory, Browser, Page};
use cluster_support::{http_request, Cluster, REQUEST_TIMEOUT};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAP: &str = "board";
/// A change made on one page shows on the other within this.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Both pages and the cluster agree within this once nothing writes.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(20);
/// A page whose node was killed is connected to another one within this (the client waits
/// 100 ms, then 200 ms, ... before each attempt).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The page writers of the kill test end within this.
const WRITERS_TIMEOUT: Duration = Duration::from_secs(40);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Writes each page makes in the kill test, one every `WRITE_INTERVAL_MS`.
const WRITES_PER_PAGE: u64 = 150;
const WRITE_INTERVAL_MS: u64 = 20;

/// One test at a time: each runs three nodes and two Chromiums, which is all two cores take
/// without making the timings of the others meaningless.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `check` until it gives a value, for at most `timeout`; panics with `what` and the
/// last problem otherwise.
fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(problem) => {
                if Instant::now() >= deadline {
                    panic!("not within {timeout:?}: {what}; last: {problem}");
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn node_url(cluster: &Cluster, index: usize) -> String {
    format!("http://{}", cluster.http(index))
}

// ---- the cluster's side ----

/// `GET /maps/board` through `address`: (revision, entries).
fn server_map(address: SocketAddr) -> Result<(u64, Map<String, Value>), String> {
    let response = http_request(
        address,
        "GET",
        &format!("/maps/{MAP}"),
        None,
        REQUEST_TIMEOUT,
    )?;
    if response.status != 200 {
        return Err(format!("GET /maps/{MAP}: {}", response.describe()));
    }
    let body = response.json()?;
    let revision = body["revision"]
        .as_u64()
        .ok_or_else(|| format!("no revision in {body}"))?;
    let entries = body["entries"]
        .as_object()
        .cloned()
        .ok_or_else(|| format!("no entries in {body}"))?;
    Ok((revision, entries))
}

/// `PUT /maps/board/keys/{key}` through `address`; the change's revision.
fn http_put(cluster: &Cluster, index: usize, key: &str, value: &Value) -> u64 {
    let body = value.to_string();
    let path = format!("/maps/{MAP}/keys/{key}");
    let response = http_request(
        cluster.http(index),
        "PUT",
        &path,
        Some(body.as_bytes()),
        REQUEST_TIMEOUT,
    )
    .unwrap_or_else(|failure| panic!("PUT {path}: {failure}"));
    assert_eq!(response.status, 200, "PUT {path}: {}", response.describe());
    let answer = response.json().expect("a write's answer is JSON");
    answer["revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("PUT {path} answered no revision: {answer}"))
}

// ---- the page's side ----

/// Installs the event recorder on the page's map, waits until the map is ready, and returns
/// the revision and entries it was ready with (the baseline of its event log).
const RECORDER: &str = r#"
const done = arguments[arguments.length - 1];
const map = window.boroughMap;
window.events = [];
window.feed = [];
window.statuses = [];
window.pageErrors = [];
window.readyRevision = null;
window.addEventListener("error", (event) => window.pageErrors.push(String(event.message)));
window.addEventListener("unhandledrejection", (event) =>
  window.pageErrors.push("unhandled rejection: " + String(event.reason && event.reason.message || event.reason)));
const consoleError = console.error.bind(console);
console.error = (...args) => { window.pageErrors.push(args.map(String).join(" ")); consoleError(...args); };
map.on("set", (value, key, m) => window.events.push(["set", key, m.revision, value]));
map.on("delete", (oldValue, key, m) => window.events.push(["delete", key, m.revision, null]));
map.on("status", (status) => window.statuses.push(
  [status.state, status.node, status.revision, status.detail === undefined ? null : String(status.detail)]));
// The feed's own messages, to tell a first `ready` from a fresh one after a gap.
if (typeof map._receive === "function") {
  const receive = map._receive;
  map._receive = function (message) {
    if (message && ["ready", "resumed", "resync"].includes(message.type)) {
      window.feed.push([message.type, message.revision, window.readyRevision !== null]);
    }
    return receive.call(this, message);
  };
}
map.ready((m) => {
  window.readyRevision = m.revision;
  done({ revision: m.revision, entries: Object.fromEntries(m.entries()), node: m.node });
});
"#;

/// The page's map as it stands.
const MAP_STATE: &str = r#"
const map = window.boroughMap;
return {
  revision: map.revision,
  entries: Object.fromEntries(map.entries()),
  size: map.size,
  connected: map.connected,
  node: map.node,
};
"#;

/// What the recorder saw.
const RECORDED: &str = r#"
return {
  readyRevision: window.readyRevision,
  events: window.events,
  feed: window.feed,
  statuses: window.statuses,
  pageErrors: window.pageErrors,
};
"#;

const SET: &str = r#"
const [key, value, done] = arguments;
window.boroughMap.set(key, value).then(
  (revision) => done({ revision }),
  (error) => done({ error: String(error && error.message || error) }));
"#;

const DELETE: &str = r#"
const [key, done] = arguments;
window.boroughMap.delete(key).then(
  (revision) => done({ revision }),
  (error) => done({ error: String(error && error.message || error) }));
"#;

/// Fires every write of `arguments[0]` (`[type, key, value]`) at once, without waiting for
/// one before the next, and answers each outcome once all settled.
const BURST: &str = r#"
const [writes, done] = arguments;
const map = window.boroughMap;
Promise.allSettled(writes.map(([type, key, value]) =>
  type === "set" ? map.set(key, value) : map.delete(key)))
  .then((outcomes) => done(outcomes.map((outcome) => outcome.status === "fulfilled"
    ? { revision: outcome.value }
    : { error: String(outcome.reason && outcome.reason.message || outcome.reason) })));
"#;

/// Starts a writer in the page: `set(prefix + n, n)` every `interval` ms for n in
/// 0..count, recording which writes were acknowledged (with their revision) and which failed.
const WRITER: &str = r#"
const [prefix, count, interval] = arguments;
const writer = window.writer = { acked: {}, failed: {}, sent: 0, settled: 0, done: false };
let n = 0;
const timer = setInterval(() => {
  if (n >= count) { clearInterval(timer); return; }
  const key = prefix + n;
  const value = n;
  n += 1;
  writer.sent += 1;
  window.boroughMap.set(key, value).then(
    (revision) => { writer.acked[key] = revision; },
    (error) => { writer.failed[key] = String(error && error.message || error); },
  ).finally(() => {
    writer.settled += 1;
    if (writer.settled === count) writer.done = true;
  });
}, interval);
return true;
"#;

const WRITER_PROGRESS: &str = r#"
const writer = window.writer;
return {
  sent: writer.sent,
  settled: writer.settled,
  acked: Object.keys(writer.acked).length,
  failed: Object.keys(writer.failed).length,
  done: writer.done,
  firstFailures: Object.entries(writer.failed).slice(0, 3),
};
"#;

#[derive(Debug, Clone, PartialEq)]
struct MapState {
    revision: u64,
    entries: Map<String, Value>,
    size: usize,
    connected: bool,
    node: String,
}

fn map_state(page: &Page) -> MapState {
    let state = page.execute(MAP_STATE, Vec::new());
    MapState {
        revision: state["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("page {}: no revision: {state}", page.label)),
        entries: state["entries"].as_object().cloned().unwrap_or_default(),
        size: state["size"].as_u64().unwrap_or_default() as usize,
        connected: state["connected"] == true,
        node: state["node"].as_str().unwrap_or_default().to_string(),
    }
}

/// The map's revision and entries when the page's recorder was installed and it was ready.
#[derive(Debug)]
struct Baseline {
    revision: u64,
    entries: Map<String, Value>,
}

/// Waits for the console's module to open the map, installs the recorder, and waits until
/// the map is ready.
fn record(page: &Page) -> Baseline {
    page.wait_for(
        "the console opened the map as window.boroughMap",
        "return !!window.boroughMap;",
        "return { href: location.href, status: (document.querySelector('#map-status') || {}).textContent };",
        PROPAGATION_TIMEOUT,
    );
    let ready = page.execute_async(RECORDER, Vec::new());
    Baseline {
        revision: ready["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("page {}: ready without a revision: {ready}", page.label)),
        entries: ready["entries"].as_object().cloned().unwrap_or_default(),
    }
}

/// A write from the page; its revision, or the error it was refused with.
fn page_set(page: &Page, key: &str, value: Value) -> Result<u64, String> {
    outcome(page.execute_async(SET, vec![json!(key), value]))
}

fn page_delete(page: &Page, key: &str) -> Result<u64, String> {
    outcome(page.execute_async(DELETE, vec![json!(key)]))
}

fn outcome(answer: Value) -> Result<u64, String> {
    match answer["revision"].as_u64() {
        Some(revision) => Ok(revision),
        None => Err(answer["error"].as_str().unwrap_or("no answer").to_string()),
    }
}

/// Waits until the page's map has `key` at `value` (`None`: has no `key`).
fn wait_for_value(page: &Page, key: &str, value: Option<&Value>) {
    poll(
        &format!("page {} shows {key} = {value:?}", page.label),
        PROPAGATION_TIMEOUT,
        || {
            let state = map_state(page);
            if state.entries.get(key) == value {
                Ok(())
            } else {
                Err(format!(
                    "at revision {} it has {key} = {:?}",
                    state.revision,
                    state.entries.get(key)
                ))
            }
        },
    );
}

/// Waits until both pages show the same map as `GET /maps/board` through `via` (and have
/// their feeds connected); returns that map.
fn wait_for_convergence(pages: [&Page; 2], via: SocketAddr) -> MapState {
    poll(
        "both pages show the map the cluster has",
        CONVERGENCE_TIMEOUT,
        || {
            let (revision, entries) = server_map(via)?;
            let mut states = Vec::new();
            for page in pages {
                let state = map_state(page);
                if state.revision != revision || state.entries != entries || !state.connected {
                    return Err(format!(
                        "the cluster is at revision {revision} with {} entries; page {} at {} \
                         with {} entries (connected {} via {}), differing in {:?}",
                        entries.len(),
                        page.label,
                        state.revision,
                        state.entries.len(),
                        state.connected,
                        state.node,
                        differing_keys(&entries, &state.entries)
                    ));
                }
                states.push(state);
            }
            Ok(states.swap_remove(0))
        },
    )
}

fn differing_keys(left: &Map<String, Value>, right: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = left
        .keys()
        .chain(right.keys())
        .filter(|key| left.get(*key) != right.get(*key))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys.truncate(20);
    keys
}

/// Checks what the page recorded against its final map: each revision after the one it was
/// ready at exactly once and in order, the events replayed over its baseline giving the
/// final entries, and no fresh `ready` after the first.
fn check_event_log(page: &Page, baseline: &Baseline, final_state: &MapState) {
    let recorded = page.execute(RECORDED, Vec::new());
    let label = &page.label;
    let events = recorded["events"].as_array().cloned().unwrap_or_default();
    let revisions: Vec<u64> = events
        .iter()
        .map(|event| event[2].as_u64().unwrap_or(u64::MAX))
        .collect();
    let expected: Vec<u64> = (baseline.revision + 1..=final_state.revision).collect();
    if revisions != expected {
        let seen: std::collections::BTreeSet<u64> = revisions.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .filter(|revision| !seen.contains(revision))
            .copied()
            .take(20)
            .collect();
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for revision in &revisions {
            *counts.entry(*revision).or_default() += 1;
        }
        let repeated: Vec<u64> = counts
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(revision, _)| *revision)
            .take(20)
            .collect();
        let out_of_order = revisions.windows(2).position(|pair| pair[0] >= pair[1]);
        panic!(
            "page {label}: its events are not revisions {}..={} each once in order: {} events, \
             missing {missing:?}, repeated {repeated:?}, first out of order at {out_of_order:?}; \
             feed {}; statuses {}; page errors {}",
            baseline.revision + 1,
            final_state.revision,
            revisions.len(),
            recorded["feed"],
            recorded["statuses"],
            recorded["pageErrors"],
        );
    }
    let mut replayed = baseline.entries.clone();
    for event in &events {
        let key = event[1].as_str().unwrap_or_default().to_string();
        match event[0].as_str() {
            Some("set") => {
                replayed.insert(key, event[3].clone());
            }
            Some("delete") => {
                assert!(
                    replayed.remove(&key).is_some(),
                    "page {label}: a delete of {key}, which it did not have, at revision {}",
                    event[2]
                );
            }
            other => panic!("page {label}: an event of type {other:?}"),
        }
    }
    assert_eq!(
        replayed, final_state.entries,
        "page {label}: its events replayed over what it was ready with are not its map"
    );
    let feed = recorded["feed"].as_array().cloned().unwrap_or_default();
    let fresh_readies: Vec<&Value> = feed
        .iter()
        .filter(|message| message[0] == "ready" && message[2] == true)
        .collect();
    assert!(
        fresh_readies.is_empty(),
        "page {label}: its feed sent the whole map again (a gap it could not replay) with far \
         fewer changes than the history holds: {fresh_readies:?}; feed {feed:?}"
    );
    let resyncs = feed.iter().filter(|message| message[0] == "resync").count();
    assert_eq!(resyncs, 0, "page {label}: cut off: {feed:?}");
    assert_eq!(
        recorded["pageErrors"],
        json!([]),
        "page {label}: errors in the page"
    );
}

/// The console of a converged page: the cluster panel lists the three members, the map
/// editor shows every entry (and the map's revision), and a screenshot is saved.
fn check_console(page: &Page, state: &MapState, test: &str) {
    let label = page.label.clone();
    // The cluster panel refreshes every second (and may just have come back from its node).
    poll(
        &format!("page {label}'s console lists 3 active members"),
        PROPAGATION_TIMEOUT,
        || {
            let members = page.count("#zones .member");
            let active = page.count("#zones .member .badge.active");
            if members == 3 && active == 3 {
                Ok(())
            } else {
                Err(format!("{members} members, {active} active"))
            }
        },
    );
    assert!(
        page.count(&format!("#partitions tbody tr[data-partition=\"{MAP}\"]")) == 1,
        "page {label}: the partitions table has no row for {MAP}"
    );
    let rows = page.count("#entries tbody tr");
    assert_eq!(
        rows, state.size,
        "page {label}: the map editor shows {rows} rows for {} entries",
        state.size
    );
    let keys = page.execute(
        "return [...document.querySelectorAll('#entries tbody tr')].map((row) => row.dataset.key);",
        Vec::new(),
    );
    let expected_keys: Vec<&String> = state.entries.keys().collect();
    assert_eq!(
        keys,
        json!(expected_keys),
        "page {label}: the editor's rows"
    );
    let status = page.execute(
        "return document.querySelector('#map-status').textContent;",
        Vec::new(),
    );
    let status = status.as_str().unwrap_or_default();
    assert!(
        status.contains(&format!("revision {}", state.revision))
            && status.contains(&format!("{} key", state.size))
            && status.contains("live"),
        "page {label}: the map status says {status:?}, not live at revision {} with {} keys",
        state.revision,
        state.size
    );
    let path = artifacts_directory().join(format!("{test}-{label}.png"));
    let bytes = page.screenshot(&path);
    let png = std::fs::read(&path).expect("read the screenshot back");
    assert!(
        bytes > 0 && png.len() == bytes && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "page {label}: {} is not a PNG ({bytes} bytes)",
        path.display()
    );
    eprintln!(
        "page {label}: screenshot {} ({bytes} bytes)",
        path.display()
    );
}

// ---- the tests ----

#[test]
fn two_pages_on_two_nodes_converge() {
    let _serial = serial();
    let started = Instant::now();
    // The browser first: without chromedriver the test fails at once, saying what to install.
    let browser = Browser::start();
    let cluster = Cluster::start_joined(3);
    // The map's partition exists (a first write creates it), with keys to delete later.
    for n in 1..=4 {
        http_put(&cluster, 2, &format!("seed-{n}"), &json!({ "n": n }));
    }
    let page_a = browser.open("A", &format!("{}/#map={MAP}", node_url(&cluster, 0)));
    let page_b = browser.open("B", &format!("{}/#map={MAP}", node_url(&cluster, 1)));
    let baseline_a = record(&page_a);
    let baseline_b = record(&page_b);
    eprintln!(
        "pages ready at revisions {} and {} after {:?}",
        baseline_a.revision,
        baseline_b.revision,
        started.elapsed()
    );

    // A sets; B sees it.
    let value = json!({ "by": "A", "text": "hello from A" });
    let revision = page_set(&page_a, "from-a", value.clone())
        .unwrap_or_else(|error| panic!("page A's set failed: {error}"));
    assert!(revision > baseline_a.revision);
    wait_for_value(&page_b, "from-a", Some(&value));

    // B deletes a key set before either page opened; A sees it go.
    assert!(map_state(&page_a).entries.contains_key("seed-2"));
    page_delete(&page_b, "seed-2").unwrap_or_else(|error| panic!("page B's delete: {error}"));
    wait_for_value(&page_a, "seed-2", None);

    // A write over plain HTTP through the third node reaches both pages.
    let from_http = json!(["plain", "http", 3]);
    http_put(&cluster, 2, "from-http", &from_http);
    wait_for_value(&page_a, "from-http", Some(&from_http));
    wait_for_value(&page_b, "from-http", Some(&from_http));

    // Both pages write at once, on the same keys, without waiting between writes: both end
    // with the order the cluster committed.
    let burst = |page: &str| -> Value {
        let writes: Vec<Value> = (0..24)
            .map(|n| match n % 6 {
                5 => json!(["delete", format!("shared-{}", n % 4)]),
                _ => json!(["set", format!("shared-{}", n % 4), { "page": page, "n": n }]),
            })
            .chain((0..8).map(|n| json!(["set", format!("{page}-own-{n}"), n])))
            .collect();
        json!(writes)
    };
    let outcomes: Vec<Value> = {
        let burst_a = burst("A");
        let burst_b = burst("B");
        // Page A's burst starts, then B's runs while A's are in flight.
        page_a.execute(
            "const [writes] = arguments; window.burstA = []; \
             for (const [type, key, value] of writes) \
               window.burstA.push((type === 'set' ? window.boroughMap.set(key, value) \
                 : window.boroughMap.delete(key)).then((revision) => ({ revision }), \
                 (error) => ({ error: String(error && error.message || error) }))); \
             return true;",
            vec![burst_a],
        );
        let outcome_b = page_b.execute_async(BURST, vec![burst_b]);
        let outcome_a = page_a.execute_async(
            "const done = arguments[0]; Promise.all(window.burstA).then(done);",
            Vec::new(),
        );
        [outcome_a, outcome_b]
            .into_iter()
            .flat_map(|outcomes| outcomes.as_array().cloned().unwrap_or_default())
            .collect()
    };
    for outcome in &outcomes {
        let error = outcome["error"].as_str().unwrap_or_default();
        // A delete of a key the other page deleted first is "not found"; nothing else fails
        // while every node is up.
        assert!(
            outcome["revision"].is_u64() || error.contains("not found"),
            "a burst write failed with every node up: {outcome}"
        );
    }

    let converged = wait_for_convergence([&page_a, &page_b], cluster.http(2));
    for index in 0..3 {
        let (revision, entries) = server_map(cluster.http(index)).unwrap();
        assert_eq!(
            (revision, &entries),
            (converged.revision, &converged.entries),
            "GET /maps/{MAP} through node {}",
            index + 1
        );
    }
    assert!(!converged.entries.contains_key("seed-2"));
    assert_eq!(converged.entries["from-a"], value);
    assert_eq!(converged.entries["from-http"], from_http);
    for page in ["A", "B"] {
        for n in 0..8 {
            assert_eq!(converged.entries[&format!("{page}-own-{n}")], json!(n));
        }
    }
    check_event_log(&page_a, &baseline_a, &converged);
    check_event_log(&page_b, &baseline_b, &converged);
    eprintln!(
        "converged at revision {} with {} entries after {:?}",
        converged.revision,
        converged.size,
        started.elapsed()
    );

    check_console(&page_a, &converged, "two_pages_on_two_nodes_converge");
    check_console(&page_b, &converged, "two_pages_on_two_nodes_converge");
    page_a.close();
    page_b.close();
    eprintln!(
        "two_pages_on_two_nodes_converge took {:?}",
        started.elapsed()
    );
}

#[derive(Debug)]
struct WriterOutcome {
    acked: BTreeMap<String, u64>,
    failed: BTreeMap<String, String>,
}

fn writer_progress(page: &Page) -> Value {
    page.execute(WRITER_PROGRESS, Vec::new())
}

fn writer_outcome(page: &Page) -> WriterOutcome {
    let writer = page.execute("return window.writer;", Vec::new());
    let acked = writer["acked"]
        .as_object()
        .map(|acked| {
            acked
                .iter()
                .map(|(key, revision)| (key.clone(), revision.as_u64().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let failed = writer["failed"]
        .as_object()
        .map(|failed| {
            failed
                .iter()
                .map(|(key, error)| (key.clone(), error.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    WriterOutcome { acked, failed }
}

/// The index of the node that leads the map's partition, as any node's
/// `GET /partitions/board` says.
fn leader_index(cluster: &Cluster) -> Result<usize, String> {
    let mut problems = Vec::new();
    for via in 0..cluster.size() {
        if !cluster.nodes[via].is_running() {
            continue;
        }
        let path = format!("/partitions/{MAP}");
        let info = match http_request(cluster.http(via), "GET", &path, None, REQUEST_TIMEOUT)
            .and_then(|response| response.json())
        {
            Ok(info) => info,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        if let Some(leader) = info["leader"].as_u64() {
            if let Some(index) = cluster
                .nodes
                .iter()
                .position(|node| u64::from(node.id) == leader)
            {
                return Ok(index);
            }
        }
        problems.push(format!("node {} says {info}", via + 1));
    }
    Err(problems.join("; "))
}

#[test]
fn pages_converge_across_a_node_kill() {
    let _serial = serial();
    let started = Instant::now();
    let browser = Browser::start();
    let mut cluster = Cluster::start_joined(3);
    http_put(&cluster, 2, "seed", &json!("before the pages"));
    // Page A comes from the node that leads the map's partition: its kill moves page A's feed
    // and the map's leadership at once.
    let victim = poll(
        "the map's partition has a leader",
        PROPAGATION_TIMEOUT,
        || leader_index(&cluster),
    );
    let other = (victim + 1) % cluster.size();
    let origin_a = node_url(&cluster, victim);
    let page_a = browser.open("A", &format!("{origin_a}/#map={MAP}"));
    let page_b = browser.open("B", &format!("{}/#map={MAP}", node_url(&cluster, other)));
    let baseline_a = record(&page_a);
    let baseline_b = record(&page_b);
    assert_eq!(map_state(&page_a).node, origin_a);

    for (page, prefix) in [(&page_a, "page-A-"), (&page_b, "page-B-")] {
        page.execute(
            WRITER,
            vec![
                json!(prefix),
                json!(WRITES_PER_PAGE),
                json!(WRITE_INTERVAL_MS),
            ],
        );
    }
    // Kill page A's node once its writes flow.
    poll(
        "page A's writer has 30 writes acknowledged",
        WRITERS_TIMEOUT,
        || {
            let progress = writer_progress(&page_a);
            if progress["acked"].as_u64().unwrap_or_default() >= 30 {
                Ok(())
            } else if progress["done"] == true {
                panic!("page A's writer ended with fewer than 30 writes acknowledged: {progress}")
            } else {
                Err(progress.to_string())
            }
        },
    );
    let acked_before_kill = writer_progress(&page_a)["acked"]
        .as_u64()
        .unwrap_or_default();
    let kill_at = Instant::now();
    let still_leads = leader_index(&cluster) == Ok(victim);
    cluster.kill(victim);
    eprintln!(
        "killed node {} (page A's; the map's leader: {still_leads}) after {:?}, page A had \
         {acked_before_kill} writes acknowledged",
        victim + 1,
        started.elapsed()
    );

    // Page A finds another node and its writes are acknowledged again.
    let moved_to = poll(
        "page A reconnected to another node",
        RECONNECT_TIMEOUT,
        || {
            let state = map_state(&page_a);
            if state.connected && state.node != origin_a {
                Ok(state.node)
            } else {
                Err(format!("connected {} via {}", state.connected, state.node))
            }
        },
    );
    eprintln!(
        "page A reconnected to {moved_to} {:?} after the kill",
        kill_at.elapsed()
    );
    // Its writes go on through the other node (once the map has a leader again)...
    poll(
        "page A's writes are acknowledged again after the kill",
        WRITERS_TIMEOUT,
        || {
            let progress = writer_progress(&page_a);
            let acked = progress["acked"].as_u64().unwrap_or_default();
            if acked >= acked_before_kill + 20 || progress["done"] == true {
                Ok(())
            } else {
                Err(progress.to_string())
            }
        },
    );
    let acked_while_down = writer_progress(&page_a)["acked"]
        .as_u64()
        .unwrap_or_default();
    // ...and the killed node comes back on its data dir.
    cluster.restart(victim);
    cluster
        .wait_until_healthy(Duration::from_secs(30))
        .unwrap_or_else(|failure| panic!("node {} did not come back: {failure}", victim + 1));
    eprintln!(
        "node {} restarted and healthy {:?} after the kill; page A had {acked_while_down} \
         writes acknowledged when it was restarted",
        victim + 1,
        kill_at.elapsed()
    );

    for page in [&page_a, &page_b] {
        poll(
            &format!("page {}'s writer settled all its writes", page.label),
            WRITERS_TIMEOUT,
            || {
                let progress = writer_progress(page);
                if progress["done"] == true {
                    Ok(())
                } else {
                    Err(progress.to_string())
                }
            },
        );
    }
    let converged = wait_for_convergence([&page_a, &page_b], cluster.http(other));
    for index in 0..3 {
        let (revision, entries) = server_map(cluster.http(index)).unwrap();
        assert_eq!(
            (revision, &entries),
            (converged.revision, &converged.entries),
            "GET /maps/{MAP} through node {}",
            index + 1
        );
    }
    eprintln!(
        "converged at revision {} with {} entries after {:?}",
        converged.revision,
        converged.size,
        started.elapsed()
    );

    for (page, prefix) in [(&page_a, "page-A-"), (&page_b, "page-B-")] {
        let outcome = writer_outcome(page);
        let label = &page.label;
        let mut unknown = 0;
        for (key, error) in &outcome.failed {
            if error.contains("unknown") {
                unknown += 1;
            } else {
                // A definite refusal changed nothing.
                assert!(
                    !converged.entries.contains_key(key),
                    "page {label}: {key} was refused ({error}) yet is in the map"
                );
            }
        }
        eprintln!(
            "page {label}: {} writes acknowledged, {} failed ({unknown} with an unknown \
             outcome): {:?}",
            outcome.acked.len(),
            outcome.failed.len(),
            outcome.failed.values().take(5).collect::<Vec<_>>()
        );
        assert_eq!(
            outcome.acked.len() + outcome.failed.len(),
            WRITES_PER_PAGE as usize,
            "page {label}: every write settled once"
        );
        for (key, revision) in &outcome.acked {
            let n: u64 = key
                .strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a writer key {key}"));
            assert_eq!(
                converged.entries.get(key),
                Some(&json!(n)),
                "page {label}: {key} was acknowledged at revision {revision} but the map has \
                 {:?}",
                converged.entries.get(key)
            );
            assert!(*revision <= converged.revision);
        }
    }
    // Page A's writes went on through another node after its own was killed.
    let acked_a = writer_outcome(&page_a).acked.len() as u64;
    assert!(
        acked_while_down > acked_before_kill,
        "page A had {acked_before_kill} writes acknowledged at the kill, {acked_while_down} \
         before its node came back and {acked_a} in the end"
    );

    check_event_log(&page_a, &baseline_a, &converged);
    check_event_log(&page_b, &baseline_b, &converged);
    check_console(&page_a, &converged, "pages_converge_across_a_node_kill");
    check_console(&page_b, &converged, "pages_converge_across_a_node_kill");
    page_a.close();
    page_b.close();
    eprintln!(
        "pages_converge_across_a_node_kill took {:?}",
        started.elapsed()
    );
}

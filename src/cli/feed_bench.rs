//! `borough bench-feeds`: the fan-out of change feeds. One writer sets keys of one map at a
//! fixed rate (open loop: a write leaves on schedule whether or not the last was answered)
//! while many subscribers follow the map, spread over the nodes: Borough's WebSocket feed
//! (`/maps/{name}/ws`), or etcd's watch through its v3 JSON gateway (`POST /v3/watch` on a
//! key prefix), for the comparison. Each value carries the wall time it was sent at, so
//! every delivery gives a latency: p50 / p99 / max over all deliveries of the measured
//! window, and how many of the deliveries due arrived. For its own local cluster it also
//! prints each node's resident memory (now and at its peak).

use crate::cli::bench::{normalise_urls, percentile_ms, LocalCluster, LOCAL_CLUSTER_NODE_COUNT};
use crate::production::HttpClient;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::Method;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct FeedBenchFlags {
    /// Client HTTP API URL of a Borough node; repeat for each (subscribers are spread over
    /// them, the writer uses the first). Without --target or --etcd, a local 3-node cluster.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// An etcd member's client URL (its v3 JSON gateway); repeat for each.
    #[arg(long = "etcd", value_name = "URL", conflicts_with = "targets")]
    pub etcd_targets: Vec<String>,
    /// Subscribers (WebSockets, or etcd watch streams).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Writes per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Bytes of padding in each value.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 15)]
    pub duration_s: u64,
    /// Unmeasured seconds of writes before.
    #[arg(long, default_value_t = 3)]
    pub warmup_s: u64,
}

/// Keys the writer cycles through (one map; an etcd key prefix).
const KEYS: u64 = 16;
/// Writes in flight at most; a write due while this many wait is counted as skipped.
const WRITES_IN_FLIGHT_MAX: usize = 512;

#[allow(clippy::disallowed_methods)] // the benchmark measures wall time
fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// The sent-at stamp in a value `{"t":MICROS,...}`.
fn stamp_of(text: &str) -> Option<u64> {
    let start = text.find("\"t\":")? + 4;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// What the subscribers measured: each delivery of a value sent in the window, as its
/// sent-at stamp and its latency.
#[derive(Debug, Default)]
struct Deliveries {
    deliveries: Vec<(u64, u64)>,
}

/// Deliveries that arrive this long after the window still count (a slow system's late
/// deliveries are latency, not loss).
const LATE_DELIVERIES_GRACE: Duration = Duration::from_secs(10);

pub async fn run(flags: FeedBenchFlags) -> Result<(), String> {
    let client = HttpClient::new();
    let etcd = !flags.etcd_targets.is_empty();
    let mut local = None;
    let targets = if etcd {
        normalise_urls(&flags.etcd_targets)
    } else if flags.targets.is_empty() {
        let mut cluster = LocalCluster::start(LOCAL_CLUSTER_NODE_COUNT, None)?;
        cluster.wait_until_ready(&client).await?;
        let urls = cluster.http_urls();
        local = Some(cluster);
        urls
    } else {
        normalise_urls(&flags.targets)
    };
    let run_tag = wall_micros() % 1_000_000_007;
    let map = format!("feed-bench-{run_tag}");
    let prefix = format!("feed-bench-{run_tag}/");
    if !etcd {
        // Creates the map's partition before anyone subscribes.
        let url = format!("{}/maps/{map}/keys/k0", targets[0]);
        client
            .request(
                Method::PUT,
                &url,
                None,
                b"0".to_vec(),
                Duration::from_secs(30),
            )
            .await
            .map_err(|error| error.to_string())?;
    }
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let measure_until = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let deliveries = Arc::new(Mutex::new(Deliveries::default()));
    let connected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..flags.subscribers {
        let target = targets[index % targets.len()].clone();
        let context = SubscriberContext {
            measure_from: Arc::clone(&measure_from),
            measure_until: Arc::clone(&measure_until),
            stop: Arc::clone(&stop),
            deliveries: Arc::clone(&deliveries),
            connected: Arc::clone(&connected),
        };
        let (map, prefix) = (map.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = if etcd {
                etcd_subscriber(&target, &prefix, context).await
            } else {
                borough_subscriber(&target, &map, context).await
            };
            if let Err(problem) = outcome {
                eprintln!("bench-feeds: a subscriber of {target} failed: {problem}");
            }
        }));
    }
    let connect_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (connected.load(Ordering::Relaxed) as usize) < flags.subscribers {
        if tokio::time::Instant::now() > connect_deadline {
            return Err(format!(
                "only {} of {} subscribers connected within 60 s",
                connected.load(Ordering::Relaxed),
                flags.subscribers
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The writer: open loop at the rate.
    let writer_target = targets[0].clone();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT_MAX));
    let write_errors = Arc::new(AtomicU64::new(0));
    // The stamps of the writes acknowledged: a delivery is due for each, to every subscriber.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut skipped = 0u64;
    let mut sent_in_window = 0u64;
    let period = Duration::from_micros(1_000_000 / flags.rate.max(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = tokio::time::Instant::now();
    let warmup_end = started + Duration::from_secs(flags.warmup_s);
    let end = warmup_end + Duration::from_secs(flags.duration_s);
    let padding = "x".repeat(flags.value_bytes);
    let mut sequence = 0u64;
    let mut window_open = false;
    loop {
        ticker.tick().await;
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        if !window_open && now >= warmup_end {
            window_open = true;
            measure_from.store(wall_micros(), Ordering::Relaxed);
        }
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        sequence += 1;
        if window_open {
            sent_in_window += 1;
        }
        let stamp = wall_micros();
        let value = format!("{{\"t\":{stamp},\"p\":\"{padding}\"}}");
        let key = sequence % KEYS;
        let (url, body) = if etcd {
            let body = format!(
                "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                STANDARD.encode(format!("{prefix}{key}")),
                STANDARD.encode(&value)
            );
            (format!("{writer_target}/v3/kv/put"), body)
        } else {
            (format!("{writer_target}/maps/{map}/keys/k{key}"), value)
        };
        let method = if etcd { Method::POST } else { Method::PUT };
        let (client, errors) = (client.clone(), Arc::clone(&write_errors));
        let acknowledged = Arc::clone(&acknowledged);
        tokio::spawn(async move {
            let answer = client
                .request(
                    method,
                    &url,
                    Some("application/json"),
                    body.into_bytes(),
                    Duration::from_secs(10),
                )
                .await;
            if matches!(answer, Ok(ref response) if response.status.is_success()) {
                acknowledged
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .push(stamp);
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    measure_until.store(wall_micros(), Ordering::Relaxed);
    // Let the last deliveries arrive.
    tokio::time::sleep(LATE_DELIVERIES_GRACE).await;
    stop.store(true, Ordering::Relaxed);
    let memory = local.as_ref().map(node_memory);
    for task in &tasks {
        task.abort();
    }
    let deliveries = std::mem::take(
        &mut *deliveries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()),
    );
    let mut acknowledged = std::mem::take(
        &mut *acknowledged
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()),
    );
    let from = measure_from.load(Ordering::Relaxed);
    let until = measure_until.load(Ordering::Relaxed);
    acknowledged.retain(|stamp| *stamp >= from && *stamp <= until);
    acknowledged.sort_unstable();
    // Latency over every delivery of the window; the share over acknowledged writes only (a
    // failed write may or may not have been committed).
    let mut latencies: Vec<u64> = deliveries
        .deliveries
        .iter()
        .map(|(_, latency)| *latency)
        .collect();
    latencies.sort_unstable();
    let delivered_acknowledged = deliveries
        .deliveries
        .iter()
        .filter(|(stamp, _)| acknowledged.binary_search(stamp).is_ok())
        .count();
    let due = acknowledged.len() as u64 * flags.subscribers as u64;
    let system = if etcd { "etcd" } else { "borough" };
    let mut line = format!(
        "system={system} subscribers={} rate={} writes={sent_in_window} acknowledged={} write_errors={} skipped={skipped} deliveries={} due={due} delivered_share={:.4} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        flags.subscribers,
        flags.rate,
        acknowledged.len(),
        write_errors.load(Ordering::Relaxed),
        latencies.len(),
        if due == 0 {
            0.0
        } else {
            delivered_acknowledged as f64 / due as f64
        },
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
        percentile_ms(&latencies, 1.0),
    );
    if let Some(memory) = memory {
        line.push_str(&format!(" node_rss_mib={memory}"));
    }
    println!("{line}");
    Ok(())
}

struct SubscriberContext {
    measure_from: Arc<AtomicU64>,
    measure_until: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deliveries: Arc<Mutex<Deliveries>>,
    connected: Arc<AtomicU64>,
}

impl SubscriberContext {
    /// Records the deliveries of one message batch (stamps of values sent in the window).
    fn record(&self, stamps: &[u64]) {
        let now = wall_micros();
        let from = self.measure_from.load(Ordering::Relaxed);
        let until = self.measure_until.load(Ordering::Relaxed);
        let mut deliveries = self
            .deliveries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for stamp in stamps {
            if *stamp >= from && *stamp <= until {
                deliveries
                    .deliveries
                    .push((*stamp, now.saturating_sub(*stamp)));
            }
        }
    }
}

async fn borough_subscriber(
    target: &str,
    map: &str,
    context: SubscriberContext,
) -> Result<(), String> {
    let url = format!("{}/maps/{map}/ws", target.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|error| error.to_string())?;
    context.connected.fetch_add(1, Ordering::Relaxed);
    while let Some(message) = socket.next().await {
        if context.stop.load(Ordering::Relaxed) {
            break;
        }
        let message = message.map_err(|error| error.to_string())?;
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            if text.as_str().starts_with("{\"type\":\"set\"") {
                if let Some(stamp) = stamp_of(text.as_str()) {
                    context.record(&[stamp]);
                }
            }
        }
    }
    Ok(())
}

async fn etcd_subscriber(
    target: &str,
    prefix: &str,
    context: SubscriberContext,
) -> Result<(), String> {
    // The range end of a prefix: its last byte plus one.
    let mut range_end = prefix.as_bytes().to_vec();
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }
    let body = format!(
        "{{\"create_request\":{{\"key\":\"{}\",\"range_end\":\"{}\"}}}}",
        STANDARD.encode(prefix),
        STANDARD.encode(&range_end)
    );
    let uri: hyper::Uri = format!("{target}/v3/watch")
        .parse()
        .map_err(|error: hyper::http::uri::InvalidUri| error.to_string())?;
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<hyper::body::Bytes>>(connector);
    let request = hyper::Request::builder()
        .method(Method::POST)
        .uri(uri)
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .map_err(|error| error.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|error| error.to_string())?;
    let mut body = response.into_body();
    let mut pending = Vec::new();
    let mut created = false;
    while let Some(frame) = body.frame().await {
        if context.stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(data) = frame.map_err(|error| error.to_string())?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        // The gateway writes one JSON object per line.
        while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(message) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            if !created {
                created = true;
                context.connected.fetch_add(1, Ordering::Relaxed);
            }
            let mut stamps = Vec::new();
            for event in message["result"]["events"].as_array().into_iter().flatten() {
                let Some(value) = event["kv"]["value"].as_str() else {
                    continue;
                };
                if let Ok(value) = STANDARD.decode(value) {
                    if let Some(stamp) = stamp_of(&String::from_utf8_lossy(&value)) {
                        stamps.push(stamp);
                    }
                }
            }
            context.record(&stamps);
        }
    }
    Ok(())
}

/// Each local node's resident memory, now and at its peak, as `now/peak` MiB.
fn node_memory(cluster: &LocalCluster) -> String {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id()))
                .unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|kib| kib.parse::<u64>().ok())
                    .map_or(0, |kib| kib / 1024)
            };
            format!("{}/{}", field("VmRSS:"), field("VmHWM:"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

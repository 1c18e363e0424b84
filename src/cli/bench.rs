//! `borough bench`: the HTTP load generator. It owns the benchmark's flags, the closed-loop
//! load (N tasks, each sending one write at a time), the latency and throughput figures, and a
//! throwaway local 3-node cluster for when no target is given.
//!
//! The same client drives either Borough (`POST /events?commit=LEVEL` with a JSON body of exactly
//! `--value-bytes` bytes) or an etcd cluster through its v3 JSON gateway (`POST /v3/kv/put` with a
//! `--value-bytes` value), so the two systems are measured alike. Requests go round-robin across
//! the targets. A request counts when it completes inside the measured window (after the
//! warm-up); a non-success status or a transport error counts as an error, and only successful
//! requests enter the latency figures.
//!
//! `--workload echo` and `--workload swap` measure request handlers: `POST
//! /partitions/p{N}/requests` to the built-in `echo` handler (a JSON object of about
//! `--value-bytes`), or to the built-in `kv` handler's `swap` (one linearizable read and one
//! write of key `k{task}`), spread over `--partitions` partitions. A local cluster is started
//! with the matching `--handler`; given targets must run it.
//!
//! `--workload kv` measures named partitions instead: QUORUM puts (`PUT
//! /partitions/p{N}/keys/k{task}`), then linearizable gets of keys that exist, spread over
//! `--partitions` partitions; against etcd the same keys through `/v3/kv/put` and
//! `/v3/kv/range` (linearizable by default). Before measuring, one key of every partition is
//! written (which creates the partitions) and is what the gets read.

use crate::production::http_client::{HttpClient, HttpResponse};
use hyper::StatusCode;
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a started local cluster gets to answer /health with every peer up.
const LOCAL_CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const LOCAL_CLUSTER_NODE_COUNT: u32 = 3;
/// After a transport error (refused connection, reset) a task waits this long before its next
/// request, so a dead target does not turn the benchmark into a busy loop.
const TRANSPORT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The commit level(s) to measure.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchCommitLevel {
    #[value(name = "ONE")]
    One,
    #[value(name = "QUORUM")]
    Quorum,
    #[value(name = "ALL")]
    All,
    /// ONE, then QUORUM, then ALL.
    #[value(name = "every")]
    Every,
}

impl BenchCommitLevel {
    fn levels(self) -> Vec<&'static str> {
        match self {
            Self::One => vec!["ONE"],
            Self::Quorum => vec!["QUORUM"],
            Self::All => vec!["ALL"],
            Self::Every => vec!["ONE", "QUORUM", "ALL"],
        }
    }
}

/// Flags of `borough bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchFlags {
    /// Client HTTP API URL of a running Borough node (e.g. http://127.0.0.1:7480); repeat for
    /// each. With no --target and no --etcd, the bench starts its own local 3-node cluster.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// Concurrent requests in flight (one task each, closed loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Size of each written value in bytes (the whole JSON body for Borough).
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Measured seconds per commit level.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Unmeasured seconds of load before each measurement.
    #[arg(long, default_value_t = 1)]
    pub warmup_s: u64,
    /// ONE, QUORUM, ALL, or every (each in turn). With --etcd only labels the run.
    #[arg(long, value_enum, ignore_case = true, default_value = "every")]
    pub commit_level: BenchCommitLevel,
    /// Drive an etcd cluster through its v3 JSON gateway at this client URL instead
    /// (e.g. http://127.0.0.1:23790); repeat for each member.
    #[arg(long = "etcd", value_name = "URL", conflicts_with = "targets")]
    pub etcd_targets: Vec<String>,
    /// events: event writes at each commit level; kv: puts, then linearizable gets, of
    /// named partitions.
    #[arg(long, value_enum, default_value = "events")]
    pub workload: BenchWorkload,
    /// Named partitions the kv workload spreads its keys over.
    #[arg(long, default_value_t = 1000)]
    pub partitions: u64,
}

/// What `borough bench` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchWorkload {
    Events,
    Kv,
    /// The built-in `echo` handler.
    Echo,
    /// The built-in `kv` handler's `swap`: a read and a write.
    Swap,
}

impl BenchWorkload {
    /// The handler a local cluster runs for this workload.
    fn handler(self) -> Option<&'static str> {
        match self {
            BenchWorkload::Echo => Some("echo"),
            BenchWorkload::Swap => Some("kv"),
            BenchWorkload::Events | BenchWorkload::Kv => None,
        }
    }
}

/// Which system a run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchSystem {
    Borough,
    Etcd,
}

impl fmt::Display for BenchSystem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Borough => formatter.write_str("borough"),
            Self::Etcd => formatter.write_str("etcd"),
        }
    }
}

/// The figures of one measured run (one system, one commit level).
#[derive(Clone, Debug)]
pub struct BenchRun {
    pub system: BenchSystem,
    /// `event-put`, `kv-put` or `kv-get`.
    pub operation: &'static str,
    /// ONE, QUORUM or ALL; for etcd the level the run was labelled with (etcd's Raft commit is
    /// a majority commit, i.e. QUORUM).
    pub commit_level: String,
    pub concurrency: usize,
    pub value_bytes: usize,
    /// Successful requests completed inside the window.
    pub successes: u64,
    /// Failed requests (non-success status, transport error, timeout) inside the window.
    pub errors: u64,
    pub events_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl BenchRun {
    /// The one-line summary `borough bench` prints, `name=value` pairs separated by spaces.
    pub fn line(&self) -> String {
        format!(
            "system={} operation={} commit={} concurrency={} value_bytes={} events_per_s={:.1} p50_ms={:.2} \
             p90_ms={:.2} p99_ms={:.2} max_ms={:.2} errors={} requests={}",
            self.system,
            self.operation,
            self.commit_level,
            self.concurrency,
            self.value_bytes,
            self.events_per_s,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.errors,
            self.successes + self.errors,
        )
    }
}

/// Every run of one `borough bench`, in the order measured.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub runs: Vec<BenchRun>,
}

/// Runs the benchmark described by `flags`, printing one line per run on stdout (progress and
/// diagnostics on stderr), and returns the figures. Must be called inside a multi-threaded tokio
/// runtime. A local cluster it started is killed before it returns, on success or error.
pub async fn run_bench(flags: BenchFlags) -> Result<BenchReport, String> {
    if flags.concurrency == 0 {
        return Err("--concurrency must be at least 1".to_string());
    }
    if flags.value_bytes == 0 {
        return Err("--value-bytes must be at least 1".to_string());
    }
    if flags.duration_s == 0 {
        return Err("--duration-s must be at least 1".to_string());
    }
    if flags.partitions == 0 {
        return Err("--partitions must be at least 1".to_string());
    }
    let client = HttpClient::new();
    if !flags.etcd_targets.is_empty() {
        let targets = normalise_urls(&flags.etcd_targets);
        check_etcd_targets(&client, &targets).await?;
        if flags.workload == BenchWorkload::Kv {
            return run_kv(&client, &flags, &targets, true).await;
        }
        // etcd has one commit rule; with `every` it is measured once, labelled QUORUM.
        let label = match flags.commit_level {
            BenchCommitLevel::Every => "QUORUM",
            level => level.levels()[0],
        };
        let run = measure(&client, &flags, Workload::Etcd, &targets, label).await?;
        println!("{}", run.line());
        return Ok(BenchReport { runs: vec![run] });
    }

    let mut local_cluster = None;
    let targets = if flags.targets.is_empty() {
        eprintln!(
            "bench: no --target given; starting a local {LOCAL_CLUSTER_NODE_COUNT}-node cluster"
        );
        let cluster = LocalCluster::start(LOCAL_CLUSTER_NODE_COUNT, flags.workload.handler())?;
        let urls = cluster.http_urls();
        // Kept alive (and killed on drop) for the whole function, including early error returns.
        let cluster = local_cluster.insert(cluster);
        cluster.wait_until_ready(&client).await?;
        eprintln!("bench: local cluster ready at {}", urls.join(" "));
        urls
    } else {
        let targets = normalise_urls(&flags.targets);
        check_borough_targets(&client, &targets).await?;
        targets
    };
    if flags.workload == BenchWorkload::Kv {
        let report = run_kv(&client, &flags, &targets, false).await;
        drop(local_cluster);
        return report;
    }
    if let Some(workload) = match flags.workload {
        BenchWorkload::Echo => Some(Workload::HandlerEcho),
        BenchWorkload::Swap => Some(Workload::HandlerSwap),
        BenchWorkload::Events | BenchWorkload::Kv => None,
    } {
        prepare_partitions(&client, &flags, &targets, workload).await?;
        let run = measure(&client, &flags, workload, &targets, "LINEARIZABLE").await?;
        println!("{}", run.line());
        drop(local_cluster);
        return Ok(BenchReport { runs: vec![run] });
    }

    let mut report = BenchReport::default();
    for level in flags.commit_level.levels() {
        let run = measure(&client, &flags, Workload::Borough, &targets, level).await?;
        println!("{}", run.line());
        report.runs.push(run);
    }
    drop(local_cluster);
    Ok(report)
}

/// The kv workload: writes one key of every partition, then measures puts and gets.
async fn run_kv(
    client: &HttpClient,
    flags: &BenchFlags,
    targets: &[String],
    etcd: bool,
) -> Result<BenchReport, String> {
    let prepare = if etcd {
        Workload::EtcdKvPut
    } else {
        Workload::KvPut
    };
    prepare_partitions(client, flags, targets, prepare).await?;
    let mut report = BenchReport::default();
    let (put, get) = if etcd {
        (Workload::EtcdKvPut, Workload::EtcdKvGet)
    } else {
        (Workload::KvPut, Workload::KvGet)
    };
    for (workload, label) in [(put, "QUORUM"), (get, "LINEARIZABLE")] {
        let run = measure(client, flags, workload, targets, label).await?;
        println!("{}", run.line());
        report.runs.push(run);
    }
    Ok(report)
}

/// Sends one request of `workload` to every partition (a put of key `k0` for kv: what the
/// gets read), which creates the partitions, 64 at a time, retrying each for a while: a new
/// cluster may still be forming.
async fn prepare_partitions(
    client: &HttpClient,
    flags: &BenchFlags,
    targets: &[String],
    workload: Workload,
) -> Result<(), String> {
    eprintln!(
        "bench: writing one key of each of {} partitions first",
        flags.partitions
    );
    let value = vec![b'a'; flags.value_bytes];
    let mut tasks = JoinSet::new();
    let workers: u64 = 64;
    for worker in 0..workers {
        let client = client.clone();
        let targets = targets.to_vec();
        let value = value.clone();
        let partitions = flags.partitions;
        tasks.spawn(async move {
            let mut partition = worker;
            while partition < partitions {
                let target = &targets[(partition as usize) % targets.len()];
                let (method, url, body) = kv_request(workload, target, partition, 0, &value);
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let outcome = client
                        .request(
                            method.clone(),
                            &url,
                            Some("application/json"),
                            body.clone(),
                            REQUEST_TIMEOUT,
                        )
                        .await;
                    match outcome {
                        Ok(response) if is_success(workload, &response) => break,
                        _ if attempts < 100 => tokio::time::sleep(Duration::from_millis(100)).await,
                        Ok(response) => {
                            return Err(format!(
                                "preparing {url}: {}: {}",
                                response.status,
                                response.body_text()
                            ))
                        }
                        Err(error) => return Err(format!("preparing {url}: {error}")),
                    }
                }
                partition += workers;
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|error| format!("a prepare task failed: {error}"))??;
    }
    Ok(())
}

/// The request of a kv workload: key `k{key}` of partition `p{partition}`.
fn kv_request(
    workload: Workload,
    target: &str,
    partition: u64,
    key: usize,
    value: &[u8],
) -> (hyper::Method, String, Vec<u8>) {
    match workload {
        Workload::KvPut => (
            hyper::Method::PUT,
            format!("{target}/partitions/p{partition}/keys/k{key}"),
            value.to_vec(),
        ),
        Workload::KvGet => (
            hyper::Method::GET,
            format!("{target}/partitions/p{partition}/keys/k0"),
            Vec::new(),
        ),
        Workload::EtcdKvPut => {
            let mut body = br#"{"key":""#.to_vec();
            body.extend_from_slice(&base64_encode(format!("p{partition}/k{key}").as_bytes()));
            body.extend_from_slice(br#"","value":""#);
            body.extend_from_slice(&base64_encode(value));
            body.extend_from_slice(br#""}"#);
            (hyper::Method::POST, format!("{target}/v3/kv/put"), body)
        }
        Workload::EtcdKvGet => {
            let mut body = br#"{"key":""#.to_vec();
            body.extend_from_slice(&base64_encode(format!("p{partition}/k0").as_bytes()));
            body.extend_from_slice(br#""}"#);
            (hyper::Method::POST, format!("{target}/v3/kv/range"), body)
        }
        Workload::HandlerEcho => {
            let mut body = format!("{{\"task\":{key},\"value\":\"").into_bytes();
            body.extend_from_slice(value);
            body.extend_from_slice(b"\"}");
            (
                hyper::Method::POST,
                format!("{target}/partitions/p{partition}/requests"),
                body,
            )
        }
        Workload::HandlerSwap => {
            let mut body =
                format!("{{\"op\":\"swap\",\"key\":\"k{key}\",\"value\":\"").into_bytes();
            body.extend_from_slice(value);
            body.extend_from_slice(b"\"}");
            (
                hyper::Method::POST,
                format!("{target}/partitions/p{partition}/requests"),
                body,
            )
        }
        Workload::Borough | Workload::Etcd => {
            unreachable!("event workloads do not name partitions")
        }
    }
}

/// What one request looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Borough,
    Etcd,
    KvPut,
    KvGet,
    EtcdKvPut,
    EtcdKvGet,
    HandlerEcho,
    HandlerSwap,
}

impl Workload {
    /// Whether its requests name a partition (and a key).
    fn is_kv(self) -> bool {
        !matches!(self, Workload::Borough | Workload::Etcd)
    }

    fn operation(self) -> &'static str {
        match self {
            Workload::Borough | Workload::Etcd => "event-put",
            Workload::KvPut | Workload::EtcdKvPut => "kv-put",
            Workload::KvGet | Workload::EtcdKvGet => "kv-get",
            Workload::HandlerEcho => "handler-echo",
            Workload::HandlerSwap => "handler-swap",
        }
    }

    fn system(self) -> BenchSystem {
        match self {
            Workload::Borough
            | Workload::KvPut
            | Workload::KvGet
            | Workload::HandlerEcho
            | Workload::HandlerSwap => BenchSystem::Borough,
            Workload::Etcd | Workload::EtcdKvPut | Workload::EtcdKvGet => BenchSystem::Etcd,
        }
    }
}

/// What one load task brings back.
#[derive(Debug, Default)]
struct TaskTally {
    latencies_micros: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn measure(
    client: &HttpClient,
    flags: &BenchFlags,
    workload: Workload,
    targets: &[String],
    commit_level: &str,
) -> Result<BenchRun, String> {
    eprintln!(
        "bench: {} {} commit={commit_level} concurrency={} value_bytes={}: {} s warm-up, {} s measured",
        workload.system(),
        workload.operation(),
        flags.concurrency,
        flags.value_bytes,
        flags.warmup_s,
        flags.duration_s
    );
    let urls: Vec<String> = targets
        .iter()
        .map(|target| match workload {
            Workload::Borough => format!("{target}/events?commit={commit_level}"),
            Workload::Etcd => format!("{target}/v3/kv/put"),
            // Kv requests name their partition and key: the target's base is kept.
            _ => target.clone(),
        })
        .collect();
    let value = match workload {
        Workload::Borough => json_body_of_length(flags.value_bytes),
        Workload::Etcd => base64_encode(&vec![b'a'; flags.value_bytes]),
        _ => vec![b'a'; flags.value_bytes],
    };
    let partitions = flags.partitions;
    let start = Instant::now();
    let measure_start = start + Duration::from_secs(flags.warmup_s);
    let measure_end = measure_start + Duration::from_secs(flags.duration_s);

    let mut tasks = JoinSet::new();
    for task_index in 0..flags.concurrency {
        let client = client.clone();
        let urls = urls.clone();
        let value = value.clone();
        tasks.spawn(async move {
            let mut tally = TaskTally::default();
            let mut request_index: u64 = 0;
            let mut target_index = task_index % urls.len();
            loop {
                let sent_at = Instant::now();
                if sent_at >= measure_end {
                    break;
                }
                let outcome = if workload.is_kv() {
                    // Spread over the partitions: task by task, request by request.
                    let partition = (task_index as u64)
                        .wrapping_mul(7919)
                        .wrapping_add(request_index)
                        % partitions;
                    let (method, url, body) =
                        kv_request(workload, &urls[target_index], partition, task_index, &value);
                    client
                        .request(
                            method,
                            &url,
                            Some("application/json"),
                            body,
                            REQUEST_TIMEOUT,
                        )
                        .await
                } else {
                    let body = match workload {
                        Workload::Etcd => etcd_put_body(task_index, request_index, &value),
                        _ => value.clone(),
                    };
                    client
                        .post_json(&urls[target_index], body, REQUEST_TIMEOUT)
                        .await
                };
                let done_at = Instant::now();
                target_index = (target_index + 1) % urls.len();
                request_index += 1;
                let in_window = sent_at >= measure_start && done_at <= measure_end;
                let failure = match outcome {
                    Ok(response) if is_success(workload, &response) => None,
                    Ok(response) => Some((
                        format!("{}: {}", response.status, response.body_text().trim()),
                        false,
                    )),
                    Err(error) => Some((error.to_string(), true)),
                };
                match failure {
                    None => {
                        if in_window {
                            let micros = done_at.duration_since(sent_at).as_micros();
                            tally
                                .latencies_micros
                                .push(u64::try_from(micros).unwrap_or(u64::MAX));
                        }
                    }
                    Some((message, transport)) => {
                        if in_window {
                            tally.errors += 1;
                        }
                        if tally.first_error.is_none() {
                            tally.first_error = Some(message);
                        }
                        if transport {
                            tokio::time::sleep(TRANSPORT_ERROR_PAUSE).await;
                        }
                    }
                }
            }
            tally
        });
    }

    let mut latencies_micros = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.map_err(|error| format!("a load task failed: {error}"))?;
        latencies_micros.extend(tally.latencies_micros);
        errors += tally.errors;
        if first_error.is_none() {
            first_error = tally.first_error;
        }
    }
    latencies_micros.sort_unstable();
    if let Some(error) = &first_error {
        eprintln!("bench: first error: {error}");
    }
    let measured_s = flags.duration_s as f64;
    let successes = latencies_micros.len() as u64;
    Ok(BenchRun {
        system: workload.system(),
        operation: workload.operation(),
        commit_level: commit_level.to_string(),
        concurrency: flags.concurrency,
        value_bytes: flags.value_bytes,
        successes,
        errors,
        events_per_s: successes as f64 / measured_s,
        p50_ms: percentile_ms(&latencies_micros, 0.50),
        p90_ms: percentile_ms(&latencies_micros, 0.90),
        p99_ms: percentile_ms(&latencies_micros, 0.99),
        max_ms: percentile_ms(&latencies_micros, 1.0),
    })
}

fn is_success(workload: Workload, response: &HttpResponse) -> bool {
    match workload {
        Workload::Borough => response.status == StatusCode::CREATED,
        Workload::KvPut => response.status == StatusCode::NO_CONTENT,
        Workload::Etcd
        | Workload::KvGet
        | Workload::EtcdKvPut
        | Workload::EtcdKvGet
        | Workload::HandlerEcho
        | Workload::HandlerSwap => response.status == StatusCode::OK,
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds; 0 when there are none.
pub(crate) fn percentile_ms(sorted_micros: &[u64], fraction: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let rank = (fraction * sorted_micros.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_micros.len()) - 1;
    sorted_micros[index] as f64 / 1000.0
}

/// A valid JSON document of exactly `length` bytes: `{"d":"aaa…"}` from 8 bytes up, a run of
/// `1` digits (a JSON number) below that.
fn json_body_of_length(length: usize) -> Vec<u8> {
    const ENVELOPE: &[u8] = br#"{"d":""}"#;
    if length < ENVELOPE.len() {
        return vec![b'1'; length];
    }
    let mut body = Vec::with_capacity(length);
    body.extend_from_slice(br#"{"d":""#);
    body.resize(length - 2, b'a');
    body.extend_from_slice(br#""}"#);
    body
}

/// etcd's gateway body for one put: a distinct key per request, the shared value.
fn etcd_put_body(task_index: usize, request_index: u64, value_base64: &[u8]) -> Vec<u8> {
    let key = format!("bench/{task_index:05}/{request_index:012}");
    let mut body = Vec::with_capacity(value_base64.len() + 64);
    body.extend_from_slice(br#"{"key":""#);
    body.extend_from_slice(&base64_encode(key.as_bytes()));
    body.extend_from_slice(br#"","value":""#);
    body.extend_from_slice(value_base64);
    body.extend_from_slice(br#""}"#);
    body
}

/// Standard base64 with padding (what etcd's gateway expects for `bytes` fields).
fn base64_encode(input: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut output = Vec::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        output.push(ALPHABET[(group >> 18) as usize & 63]);
        output.push(ALPHABET[(group >> 12) as usize & 63]);
        output.push(if chunk.len() > 1 {
            ALPHABET[(group >> 6) as usize & 63]
        } else {
            b'='
        });
        output.push(if chunk.len() > 2 {
            ALPHABET[group as usize & 63]
        } else {
            b'='
        });
    }
    output
}

pub(crate) fn normalise_urls(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|url| url.trim_end_matches('/').to_string())
        .collect()
}

async fn check_borough_targets(client: &HttpClient, targets: &[String]) -> Result<(), String> {
    for target in targets {
        let response = client
            .get(&format!("{target}/health"), Duration::from_secs(5))
            .await
            .map_err(|error| format!("target {target} does not answer /health: {error}"))?;
        if response.status != StatusCode::OK {
            return Err(format!(
                "target {target} /health answered {}: {}",
                response.status,
                response.body_text()
            ));
        }
    }
    Ok(())
}

async fn check_etcd_targets(client: &HttpClient, targets: &[String]) -> Result<(), String> {
    for target in targets {
        let response = client
            .get(&format!("{target}/health"), Duration::from_secs(5))
            .await
            .map_err(|error| format!("etcd {target} does not answer /health: {error}"))?;
        if response.status != StatusCode::OK {
            return Err(format!(
                "etcd {target} /health answered {}: {}",
                response.status,
                response.body_text()
            ));
        }
    }
    Ok(())
}

/// One node of the local cluster.
#[derive(Debug)]
pub(crate) struct LocalNode {
    node_id: u32,
    http_address: SocketAddr,
    log_path: PathBuf,
    pub(crate) child: Child,
}

/// A throwaway cluster of this binary's `start`, on loopback ports picked by the OS, with its
/// data under a fresh temporary directory. Dropping it kills the nodes and removes the directory.
#[derive(Debug)]
pub(crate) struct LocalCluster {
    directory: PathBuf,
    pub(crate) nodes: Vec<LocalNode>,
}

impl LocalCluster {
    pub(crate) fn start(node_count: u32, handler: Option<&str>) -> Result<Self, String> {
        let executable = std::env::current_exe()
            .map_err(|error| format!("cannot find the borough executable: {error}"))?;
        let directory = fresh_temporary_directory()?;
        let mut cluster = Self {
            directory,
            nodes: Vec::new(),
        };
        // Bind every port before releasing any, so the picks are distinct.
        let listeners = (0..node_count * 2)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("cannot pick a free loopback port: {error}"))?;
        let addresses = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("cannot pick a free loopback port: {error}"))?;
        drop(listeners);
        let http_addresses = &addresses[..node_count as usize];
        let peer_addresses = &addresses[node_count as usize..];
        for index in 0..node_count as usize {
            let node_id = index as u32 + 1;
            let data_directory = cluster.directory.join(format!("node-{node_id}"));
            let log_path = cluster.directory.join(format!("node-{node_id}.log"));
            let log_file = std::fs::File::create(&log_path)
                .map_err(|error| format!("cannot create {}: {error}", log_path.display()))?;
            let mut command = Command::new(&executable);
            command
                .arg("start")
                .arg("--node-id")
                .arg(node_id.to_string())
                .arg("--http")
                .arg(http_addresses[index].to_string())
                .arg("--listen")
                .arg(peer_addresses[index].to_string())
                .arg("--data-dir")
                .arg(&data_directory)
                .arg("--zone")
                .arg(format!("bench-zone-{node_id}"))
                .arg("--replication-factor")
                .arg(node_count.min(3).to_string());
            for (other_index, other_address) in peer_addresses.iter().enumerate() {
                if other_index != index {
                    command
                        .arg("--peer")
                        .arg(format!("{}@{other_address}", other_index + 1));
                }
            }
            if let Some(handler) = handler {
                command.arg("--handler").arg(handler);
            }
            // Named partitions: node 1 founds the cluster, the others join it.
            if index > 0 {
                command.arg("--join").arg(peer_addresses[0].to_string());
            }
            // Per-request info logs would cost the nodes CPU the benchmark wants.
            #[allow(clippy::disallowed_methods)] // the benchmark passes the operator's RUST_LOG on
            let operator_log = std::env::var_os("RUST_LOG");
            if operator_log.is_none() {
                command.env("RUST_LOG", "warn");
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(|error| format!("cannot start {} start: {error}", executable.display()))?;
            cluster.nodes.push(LocalNode {
                node_id,
                http_address: http_addresses[index],
                log_path,
                child,
            });
        }
        Ok(cluster)
    }

    pub(crate) fn http_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("http://{}", node.http_address))
            .collect()
    }

    /// Waits until every node answers /health 200 with all its peers up and takes a write.
    pub(crate) async fn wait_until_ready(&mut self, client: &HttpClient) -> Result<(), String> {
        let deadline = Instant::now() + LOCAL_CLUSTER_READY_TIMEOUT;
        let peers_expected = self.nodes.len().saturating_sub(1);
        let mut last_problem = String::from("no answer yet");
        let mut ready = vec![false; self.nodes.len()];
        while Instant::now() < deadline {
            for (index, node) in self.nodes.iter_mut().enumerate() {
                if ready[index] {
                    continue;
                }
                if let Ok(Some(status)) = node.child.try_wait() {
                    return Err(format!(
                        "local node {} exited ({status}) before it was ready; its log:\n{}",
                        node.node_id,
                        log_tail(&node.log_path)
                    ));
                }
                let url = format!("http://{}", node.http_address);
                match node_readiness(client, &url, peers_expected).await {
                    Ok(()) => ready[index] = true,
                    Err(problem) => last_problem = format!("node {}: {problem}", node.node_id),
                }
            }
            if ready.iter().all(|&node_ready| node_ready) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                format!(
                    "--- node {} log:\n{}",
                    node.node_id,
                    log_tail(&node.log_path)
                )
            })
            .collect();
        Err(format!(
            "the local cluster was not ready within {} s ({last_problem})\n{}",
            LOCAL_CLUSTER_READY_TIMEOUT.as_secs(),
            logs.join("\n")
        ))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Ok once the node answers /health 200 listing `peers_expected` peers up and takes an
/// `ALL` write (so placement knows every peer's zone).
async fn node_readiness(
    client: &HttpClient,
    url: &str,
    peers_expected: usize,
) -> Result<(), String> {
    let response = client
        .get(&format!("{url}/health"), Duration::from_secs(2))
        .await
        .map_err(|error| error.to_string())?;
    if response.status != StatusCode::OK {
        return Err(format!("/health {}", response.status));
    }
    let health: serde_json::Value =
        serde_json::from_slice(&response.body).map_err(|error| error.to_string())?;
    let peers_up = health["peers_up"].as_array().map_or(0, Vec::len);
    if peers_up < peers_expected {
        return Err(format!("{peers_up} of {peers_expected} peers up"));
    }
    let response = client
        .post_json(
            &format!("{url}/events?commit=ALL"),
            br#"{"bench":"ready"}"#.to_vec(),
            Duration::from_secs(5),
        )
        .await
        .map_err(|error| error.to_string())?;
    if response.status != StatusCode::CREATED {
        return Err(format!(
            "probe write {}: {}",
            response.status,
            response.body_text().trim()
        ));
    }
    Ok(())
}

/// A new, empty directory under the system's temporary directory.
fn fresh_temporary_directory() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    let process_id = std::process::id();
    for attempt in 0..1000 {
        let candidate = base.join(format!("borough-bench-{process_id}-{attempt}"));
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(format!("cannot create {}: {error}", candidate.display()));
            }
        }
    }
    Err(format!(
        "cannot create a fresh directory under {}",
        base.display()
    ))
}

/// The last few kilobytes of a node's log, for error messages.
fn log_tail(path: &Path) -> String {
    const TAIL_BYTES: usize = 4096;
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(TAIL_BYTES);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_has_the_exact_length_and_parses() {
        for length in 1..300 {
            let body = json_body_of_length(length);
            assert_eq!(body.len(), length);
            serde_json::from_slice::<serde_json::Value>(&body).expect("valid JSON");
        }
    }

    #[test]
    fn base64_matches_known_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input), expected.as_bytes());
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let micros: Vec<u64> = (1..=100).map(|value| value * 1000).collect();
        assert_eq!(percentile_ms(&micros, 0.50), 50.0);
        assert_eq!(percentile_ms(&micros, 0.99), 99.0);
        assert_eq!(percentile_ms(&micros, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn etcd_body_is_json_with_base64_fields() {
        let body = etcd_put_body(3, 7, &base64_encode(b"value"));
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(parsed["value"], "dmFsdWU=");
        assert!(parsed["key"].as_str().is_some());
    }
}

//! Support for the real-process cluster tests (`tests/cluster.rs`): a tiny blocking HTTP/1.1
//! client over `std::net::TcpStream`, and a guard that runs `borough start` processes on
//! loopback with free ports and temporary data dirs, kills them all when dropped, and prints
//! the tail of every node's log when a test fails.
//!
//! The client is written here rather than taken from the crate so the tests depend on nothing
//! but the binary's wire behaviour. The program it starts is the including test's `BINARY`
//! (`borough`, or an application's own binary such as `borough-ledger`).

// Tests measure wall time and run a writer thread; the disallowed-methods lint guards the
// deterministic core, not the tests.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The region every test node is in; zones differ per node.
pub const REGION: &str = "region-1";
pub const REPLICATION_FACTOR: usize = 3;
/// How long a freshly started cluster may take until every node sees every peer.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout for control requests (health, scans, reads).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 40;
const START_ATTEMPTS: u32 = 3;

// ---- HTTP ----

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(header_name, _)| *header_name == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|error| {
            format!(
                "status {} body is not JSON ({error}): {:.300}",
                self.status,
                self.body_text()
            )
        })
    }

    /// One line for failure messages.
    pub fn describe(&self) -> String {
        format!("{} {:.300}", self.status, self.body_text())
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
pub fn http_request(
    address: SocketAddr,
    method: &str,
    target: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let context = |what: &str, error: std::io::Error| {
        format!("{method} {target} on {address}: {what}: {error}")
    };
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|error| context("connect", error))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| context("socket timeouts", error))?;
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAccept: */*\r\n"
    )
    .into_bytes();
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "POST" || method == "PUT" {
        request.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);

    // Write from another thread: a server may answer (and stop reading) before it has the
    // whole body, as it should for an oversized one, and the answer must still be read.
    let mut writer_stream = stream
        .try_clone()
        .map_err(|error| context("clone socket", error))?;
    let writer = std::thread::spawn(move || {
        let outcome = writer_stream.write_all(&request);
        let _ = writer_stream.flush();
        outcome
    });
    let mut received = Vec::new();
    let read_outcome = stream.read_to_end(&mut received);
    let write_outcome = writer
        .join()
        .map_err(|_| "writer thread panicked".to_string())?;
    let _ = stream.shutdown(Shutdown::Both);
    match parse_response(&received) {
        Ok(response) => Ok(response),
        Err(parse_error) => {
            let mut message = format!("{method} {target} on {address}: {parse_error}");
            if let Err(error) = read_outcome {
                message.push_str(&format!("; read: {error}"));
            }
            if let Err(error) = write_outcome {
                message.push_str(&format!("; write: {error}"));
            }
            Err(message)
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_response(received: &[u8]) -> Result<HttpResponse, String> {
    let head_end = find(received, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "incomplete response head ({} bytes received)",
            received.len()
        )
    })?;
    let head = std::str::from_utf8(&received[..head_end]).map_err(|error| error.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let rest = &received[head_end + 4..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(header_name, _)| header_name == name)
            .map(|(_, value)| value.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|value| value.contains("chunked")) {
        decode_chunked(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad content-length {length:?}"))?;
        if rest.len() < length {
            return Err(format!("body cut short: {} of {length} bytes", rest.len()));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("chunk size line cut short")?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|error| error.to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("chunk cut short".to_string());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

// ---- Processes ----

/// Reserves `count` distinct free loopback ports: all are bound at once (so they differ),
/// then released for the nodes to take.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("bound address").port())
        .collect()
}

#[derive(Debug)]
pub struct ClusterNode {
    pub id: u32,
    pub zone: String,
    pub http_address: SocketAddr,
    pub peer_address: SocketAddr,
    /// Holds `data/` and `node.log` (the process's stdout and stderr, every run appended).
    directory: TempDir,
    child: Option<Child>,
    arguments: Vec<String>,
    /// Run under `ulimit -n` this low, when set.
    open_files_max: Option<u32>,
}

impl ClusterNode {
    pub fn data_dir(&self) -> PathBuf {
        self.directory.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.directory.path().join("node.log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the node log");
        let log_for_stdout: File = log.try_clone().expect("clone the node log handle");
        let mut command = match self.open_files_max {
            None => Command::new(super::BINARY),
            Some(limit) => {
                // The shell sets the limit, then becomes the node (same pid, so kill works).
                let mut command = Command::new("sh");
                command.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                    super::BINARY,
                ]);
                command
            }
        };
        let child = command
            .args(&self.arguments)
            .stdin(Stdio::null())
            .stdout(log_for_stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start borough node {}: {error}", self.id));
        self.child = Some(child);
    }

    /// SIGKILL on Unix: no shutdown path runs, unsynced state is whatever the OS kept.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the running process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the node is running");
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node is running").id()
    }

    /// The exit status when the process has ended on its own.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(error) => Some(format!("unknown ({error})")),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_mentions_address_in_use(&self) -> bool {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("in use")
    }
}

/// Running `borough start` processes; every one is killed when this is dropped.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
}

impl Cluster {
    /// Starts `size` nodes (ids 1..=size, zones zone-1..zone-size, one region, replication
    /// factor 3, or `size` when smaller), each given every other node as a peer, and waits until every node sees every
    /// peer up. Retries with new ports when one was taken between reserving and binding it.
    pub fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &[])
    }

    /// As [`Cluster::start`], with `extra_arguments` given to every node's `borough start`.
    pub fn start_with(size: usize, extra_arguments: &[&str]) -> Cluster {
        Cluster::start_limited(size, extra_arguments, None)
    }

    /// As [`Cluster::start_with`], each node under `ulimit -n open_files_max` when set.
    pub fn start_limited(
        size: usize,
        extra_arguments: &[&str],
        open_files_max: Option<u32>,
    ) -> Cluster {
        Cluster::start_checked(size, extra_arguments, open_files_max, false)
    }

    /// As [`Cluster::start`], and a cluster of named partitions: node 1 founds it, every
    /// other node joins through node 1 (`--join`); waits until every node is a member that
    /// lists them all, and the directory has its voters.
    pub fn start_joined(size: usize) -> Cluster {
        Cluster::start_checked(size, &[], None, true)
    }

    /// [`Cluster::start_joined`], every node given `extra_arguments` too.
    pub fn start_joined_with(size: usize, extra_arguments: &[&str]) -> Cluster {
        Cluster::start_checked(size, extra_arguments, None, true)
    }

    fn start_checked(
        size: usize,
        extra_arguments: &[&str],
        open_files_max: Option<u32>,
        join: bool,
    ) -> Cluster {
        let mut last_failure = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Cluster::spawn(size, extra_arguments, open_files_max, join);
            let mut ready = cluster.wait_until_healthy(STARTUP_TIMEOUT);
            if join && ready.is_ok() {
                ready = cluster.wait_until_members(STARTUP_TIMEOUT);
            }
            match ready {
                Ok(()) => return cluster,
                Err(failure) => {
                    let port_taken = cluster
                        .nodes
                        .iter()
                        .any(ClusterNode::log_mentions_address_in_use);
                    last_failure = format!("{failure}\n{}", cluster.log_tails());
                    if !port_taken {
                        break;
                    }
                    eprintln!("cluster start attempt {attempt}: a port was taken, retrying");
                }
            }
        }
        panic!("the {size}-node cluster did not become healthy: {last_failure}");
    }

    fn spawn(
        size: usize,
        extra_arguments: &[&str],
        open_files_max: Option<u32>,
        join: bool,
    ) -> Cluster {
        let mut cluster = Cluster::configure(size, extra_arguments, open_files_max, join);
        for node in &mut cluster.nodes {
            node.spawn();
        }
        cluster
    }

    /// A cluster of named partitions whose nodes are configured (node 1 founds it, the
    /// others join through node 1) but not started: [`Cluster::launch`] starts each.
    pub fn prepare_joined(size: usize) -> Cluster {
        Cluster::configure(size, &[], None, true)
    }

    /// [`Cluster::prepare_joined`], every node given `extra_arguments` too.
    pub fn prepare_joined_with(size: usize, extra_arguments: &[&str]) -> Cluster {
        Cluster::configure(size, extra_arguments, None, true)
    }

    /// Starts a configured node that never ran.
    pub fn launch(&mut self, index: usize) {
        assert!(!self.nodes[index].is_running());
        self.nodes[index].spawn();
    }

    fn configure(
        size: usize,
        extra_arguments: &[&str],
        open_files_max: Option<u32>,
        join: bool,
    ) -> Cluster {
        let ports = free_ports(2 * size);
        let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut nodes: Vec<ClusterNode> = (0..size)
            .map(|index| ClusterNode {
                id: index as u32 + 1,
                zone: format!("zone-{}", index + 1),
                http_address: address(ports[2 * index]),
                peer_address: address(ports[2 * index + 1]),
                directory: tempfile::Builder::new()
                    .prefix("borough-cluster-test-")
                    .tempdir()
                    .expect("temporary node directory"),
                child: None,
                arguments: Vec::new(),
                open_files_max,
            })
            .collect();
        let peers: Vec<(u32, SocketAddr)> = nodes
            .iter()
            .map(|node| (node.id, node.peer_address))
            .collect();
        for node in &mut nodes {
            let mut arguments = vec![
                "start".to_string(),
                "--node-id".to_string(),
                node.id.to_string(),
                "--http".to_string(),
                node.http_address.to_string(),
                "--listen".to_string(),
                node.peer_address.to_string(),
                "--data-dir".to_string(),
                node.data_dir().display().to_string(),
                "--zone".to_string(),
                node.zone.clone(),
                "--region".to_string(),
                REGION.to_string(),
                "--replication-factor".to_string(),
                REPLICATION_FACTOR.min(size).to_string(),
            ];
            arguments.extend(extra_arguments.iter().map(|argument| argument.to_string()));
            for (peer_id, peer_address) in &peers {
                if *peer_id != node.id {
                    arguments.push("--peer".to_string());
                    arguments.push(format!("{peer_id}@{peer_address}"));
                }
            }
            if join && node.id != 1 {
                arguments.push("--join".to_string());
                arguments.push(peers[0].1.to_string());
            }
            node.arguments = arguments;
        }
        Cluster { nodes }
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub fn http(&self, index: usize) -> SocketAddr {
        self.nodes[index].http_address
    }

    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    pub fn peer(&self, index: usize) -> SocketAddr {
        self.nodes[index].peer_address
    }

    /// Starts a killed node again with the same id, ports and data dir.
    pub fn restart(&mut self, index: usize) {
        assert!(
            !self.nodes[index].is_running(),
            "node {} is still running",
            self.nodes[index].id
        );
        self.nodes[index].spawn();
    }

    /// Node ids a node's `/health` lists as up, if it answers 200 with status ok.
    pub fn peers_up(&self, index: usize) -> Result<BTreeSet<u32>, String> {
        let node = &self.nodes[index];
        let response = http_request(node.http_address, "GET", "/health", None, REQUEST_TIMEOUT)?;
        if response.status != 200 {
            return Err(format!("node {} /health: {}", node.id, response.describe()));
        }
        let health = response.json()?;
        if health["status"] != "ok" || health["node_id"] != node.id {
            return Err(format!("node {} /health: {health}", node.id));
        }
        let peers_up = health["peers_up"]
            .as_array()
            .ok_or_else(|| format!("node {} /health has no peers_up array: {health}", node.id))?;
        Ok(peers_up
            .iter()
            .filter_map(|id| id.as_u64().map(|id| id as u32))
            .collect())
    }

    /// Waits until every running node answers `/health` and lists every other running node as
    /// up. Fails early when a process exits.
    pub fn wait_until_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        self.wait_until_views(timeout, |cluster, index| {
            let expected: BTreeSet<u32> = cluster
                .nodes
                .iter()
                .filter(|other| other.is_running() && other.id != cluster.nodes[index].id)
                .map(|other| other.id)
                .collect();
            let peers_up = cluster.peers_up(index)?;
            if expected.is_subset(&peers_up) {
                Ok(())
            } else {
                Err(format!(
                    "node {} sees peers {peers_up:?} up, expected {expected:?}",
                    cluster.nodes[index].id
                ))
            }
        })
    }

    /// Waits until every running node's `/cluster` says it is a member, lists every node as
    /// an active member, and shows a directory leader with min(3, size) voters.
    pub fn wait_until_members(&mut self, timeout: Duration) -> Result<(), String> {
        let size = self.nodes.len();
        self.wait_until_views(timeout, |cluster, index| {
            let node = &cluster.nodes[index];
            let response =
                http_request(node.http_address, "GET", "/cluster", None, REQUEST_TIMEOUT)?;
            let view = response.json()?;
            let members = view["members"].as_array().map_or(0, |members| {
                members
                    .iter()
                    .filter(|member| member["state"] == "active")
                    .count()
            });
            let voters = view["directory_voters"].as_array().map_or(0, Vec::len);
            if view["membership"] == "member"
                && members == size
                && voters == size.min(3)
                && !view["directory_leader"].is_null()
            {
                Ok(())
            } else {
                Err(format!("node {} /cluster: {view}", node.id))
            }
        })
    }

    /// Waits until every running node no longer lists `down_id` as up.
    pub fn wait_until_seen_down(&mut self, down_id: u32, timeout: Duration) -> Result<(), String> {
        self.wait_until_views(timeout, |cluster, index| {
            let peers_up = cluster.peers_up(index)?;
            if peers_up.contains(&down_id) {
                Err(format!(
                    "node {} still sees node {down_id} up: {peers_up:?}",
                    cluster.nodes[index].id
                ))
            } else {
                Ok(())
            }
        })
    }

    fn wait_until_views(
        &mut self,
        timeout: Duration,
        check: impl Fn(&Cluster, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut problems = Vec::new();
            for index in 0..self.nodes.len() {
                if !self.nodes[index].is_running() {
                    continue;
                }
                if let Some(status) = self.nodes[index].exited() {
                    return Err(format!(
                        "node {} exited with {status}",
                        self.nodes[index].id
                    ));
                }
                if let Err(problem) = check(self, index) {
                    problems.push(problem);
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not reached within {:?}: {}",
                    timeout,
                    problems.join("; ")
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            text.push_str(&format!(
                "\n---- node {} ({}, http {}, peer {}, {}) log tail: {} ----\n{}\n",
                node.id,
                node.zone,
                node.http_address,
                node.peer_address,
                if node.is_running() {
                    "running"
                } else {
                    "stopped"
                },
                node.log_path().display(),
                node.log_tail(LOG_TAIL_LINES)
            ));
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster test failed; node logs:{}", self.log_tails());
        }
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

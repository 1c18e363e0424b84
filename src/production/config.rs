//! The node's configuration: a TOML file, then command-line flags over it, then defaults.
//!
//! With nothing given, a node runs alone: node id 1, its client API on 127.0.0.1:7480, its
//! peer port on 127.0.0.1:7481, data under `./borough-data`, replication factor 1. With peers
//! and no replication factor, the factor is 3, or the cluster's size when smaller. Unknown
//! keys in the file are errors that name the key; every value is checked before anything
//! starts, so a bad config changes nothing.

use crate::coordinator::CommitLevel;
use crate::directory::{ClusterName, ClusterSettings};
use crate::ids::{Location, NodeId};
use crate::placement::ReplicationStrategy;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:7480";
pub const DEFAULT_PEER_ADDRESS: &str = "127.0.0.1:7481";
pub const DEFAULT_DATA_DIR: &str = "borough-data";
/// The page cache of the partitions' database unless configured: room for a working set of a
/// few hundred thousand small keys.
pub const DEFAULT_PARTITION_CACHE_MIB: u64 = 256;
pub const PARTITION_CACHE_MIB_MAX: u64 = 1 << 20;
/// A member unheard this long is declared dead and its replicas rebuilt elsewhere.
pub const DEFAULT_DEAD_AFTER_S: u64 = 300;
/// Below this, a restart or a long pause would be taken for a death.
pub const DEAD_AFTER_S_MIN: u64 = 2;
pub const DEAD_AFTER_S_MAX: u64 = 30 * 24 * 3_600;

/// How replicas travel between nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Length-prefixed, versioned postcard frames over one TCP connection per peer.
    #[default]
    Tcp,
    /// The AllData peer protocol: a JSON `{"key", "event"}` POST per replica, 201 on success.
    Http,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (coloured on a terminal).
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A peer from the config: its id and its peer-port address. Zone and region are learned from
/// the peer itself when it first answers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAddress {
    pub id: u32,
    pub address: SocketAddr,
}

impl std::str::FromStr for PeerAddress {
    type Err = String;

    /// `ID@HOST:PORT`, for example `2@127.0.0.1:7491`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (id, address) = text
            .split_once('@')
            .ok_or_else(|| format!("peer {text:?} is not ID@HOST:PORT"))?;
        let id = id
            .parse()
            .map_err(|_| format!("peer {text:?}: {id:?} is not a node id"))?;
        let address = address
            .parse()
            .map_err(|error| format!("peer {text:?}: {address:?} is not HOST:PORT ({error})"))?;
        Ok(Self { id, address })
    }
}

/// The longest replica call timeout accepted: ten minutes.
pub const HTTP_PEER_TIMEOUT_MS_MAX: u64 = 600_000;

/// Options of the AllData HTTP peer client: each may be overridden per call.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpPeerOptions {
    /// Method of the replica call; POST unless configured otherwise.
    pub method: String,
    /// Path of the peer's event endpoint.
    pub path: String,
    /// Port of the peer's HTTP peer endpoint; the peer's configured peer port when unset.
    pub port: Option<u16>,
    pub timeout_ms: u64,
}

impl Default for HttpPeerOptions {
    fn default() -> Self {
        Self {
            method: "POST".to_string(),
            path: "/peer/events".to_string(),
            port: None,
            timeout_ms: 2_000,
        }
    }
}

/// The config file's shape. Every field is optional; flags override them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub node_id: Option<u32>,
    pub http: Option<SocketAddr>,
    pub listen: Option<SocketAddr>,
    /// The address peers should use to reach this node's peer port, when `listen` is a
    /// wildcard such as 0.0.0.0.
    pub advertise: Option<SocketAddr>,
    pub advertise_http: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub zone: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub peers: Vec<PeerAddress>,
    pub replication_factor: Option<u32>,
    pub other_zone_replicas: Option<u32>,
    pub other_region_replicas: Option<u32>,
    pub commit_level: Option<String>,
    pub transport: Option<TransportKind>,
    pub http_peer: Option<HttpPeerOptions>,
    pub log_format: Option<LogFormat>,
    pub replica_timeout_ms: Option<u64>,
    pub peer_down_after_ms: Option<u64>,
    pub body_bytes_max: Option<usize>,
    pub http_connections_max: Option<usize>,
    pub http_header_read_timeout_ms: Option<u64>,
    pub http_idle_timeout_ms: Option<u64>,
    pub http_request_timeout_ms: Option<u64>,
    pub peer_connections_max: Option<usize>,
    pub cluster_name: Option<String>,
    pub join: Option<SocketAddr>,
    pub replicas: Option<u8>,
    pub directory_voters: Option<u8>,
    pub partition_cache_mib: Option<u64>,
    pub dead_after_s: Option<u64>,
    pub handler: Option<String>,
    pub feed_subscriptions_max: Option<usize>,
    pub feed_buffer_kib: Option<usize>,
    pub feed_memory_mib: Option<usize>,
}

/// The flags of `borough start`; each overrides the config file's value of the same name.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StartFlags {
    /// TOML config file with any of the settings below (same names, `_` for `-`); flags
    /// override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id, unique in the cluster, from 1 to 4294967294 [default: 1]. Event keys
    /// embed it.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u32>,
    /// Address of the client HTTP API [default: 127.0.0.1:7480].
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<SocketAddr>,
    /// Address of the peer port [default: 127.0.0.1:7481].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// The peer address other nodes dial [default: the --listen address]; needed when
    /// --listen is a wildcard such as 0.0.0.0.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<SocketAddr>,
    /// The client API address other nodes use for merged reads [default: the --http
    /// address]; needed when --http is a wildcard.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_http: Option<SocketAddr>,
    /// Data directory [default: ./borough-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's zone, 1 to 64 printable ASCII characters [default: zone-1].
    #[arg(long)]
    pub zone: Option<String>,
    /// This node's region, 1 to 64 printable ASCII characters [default: region-1].
    #[arg(long)]
    pub region: Option<String>,
    /// A peer as ID@HOST:PORT (its peer port); repeat for each. Added to the file's peers.
    /// Every node may be given the same full list, itself included.
    #[arg(long = "peer", value_name = "ID@HOST:PORT")]
    pub peers: Vec<PeerAddress>,
    /// Replicas of each event [default: 3, or the cluster's size when smaller].
    #[arg(long, value_name = "N")]
    pub replication_factor: Option<u32>,
    /// Replicas placed in other zones of this node's region [default: 0].
    #[arg(long, value_name = "N")]
    pub other_zone_replicas: Option<u32>,
    /// Replicas placed in other regions [default: 0]. Replicas go local, other zones, other
    /// regions, then this node's zone, up to the replication factor.
    #[arg(long, value_name = "N")]
    pub other_region_replicas: Option<u32>,
    /// Default commit level: ONE, QUORUM or ALL [default: QUORUM].
    #[arg(long, value_name = "LEVEL")]
    pub commit_level: Option<String>,
    /// Peer transport [default: tcp].
    #[arg(long, value_enum)]
    pub transport: Option<TransportKind>,
    /// Log format on standard error [default: human].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// A replica that has not answered by then is replaced ("get it done") [default: 2000,
    /// at most 600000].
    #[arg(long, value_name = "MS")]
    pub replica_timeout_ms: Option<u64>,
    /// A peer silent this long is counted down [default: 3000, from 100 to 3600000].
    #[arg(long, value_name = "MS")]
    pub peer_down_after_ms: Option<u64>,
    /// Largest client request body, and so event [default: 1048576, at most 1048576].
    #[arg(long, value_name = "BYTES")]
    pub body_bytes_max: Option<usize>,
    /// HTTP connections open at once, per server; one more is answered 503 [default: 512].
    #[arg(long, value_name = "N")]
    pub http_connections_max: Option<usize>,
    /// Time a connection has to send a complete request head [default: 10000].
    #[arg(long, value_name = "MS")]
    pub http_header_read_timeout_ms: Option<u64>,
    /// A connection on which nothing moves this long is closed [default: 60000].
    #[arg(long, value_name = "MS")]
    pub http_idle_timeout_ms: Option<u64>,
    /// Time to receive and answer one request, or 408 [default: 45000]; a put waits for its
    /// commit level three quarters of it, at most 30 s, then answers 504 with its key.
    #[arg(long, value_name = "MS")]
    pub http_request_timeout_ms: Option<u64>,
    /// Inbound peer connections open at once (TCP transport); one more is closed
    /// [default: 256].
    #[arg(long, value_name = "N")]
    pub peer_connections_max: Option<usize>,
    /// The cluster's name [default: borough]: a node of another cluster cannot join it.
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Join the cluster of the member whose peer port (its --listen) is HOST:PORT. Without
    /// it, a new data dir founds a cluster of its own (a working single-node cluster). Give
    /// the same flags again at a restart.
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<SocketAddr>,
    /// Replicas of each named partition, 1 to 7, set when the cluster is founded [default:
    /// 3; fewer while the cluster has fewer members].
    #[arg(long, value_name = "N")]
    pub replicas: Option<u8>,
    /// Voters of the cluster directory's own group, 1, 3 or 5, set when the cluster is
    /// founded [default: 3, in distinct zones when there are enough].
    #[arg(long, value_name = "N")]
    pub directory_voters: Option<u8>,
    /// Memory for the page cache of the partitions' database, in MiB [default: 256, from 1
    /// to 1048576]. Below the partitions' working set, applies read pages from the disk.
    #[arg(long, value_name = "MIB")]
    pub partition_cache_mib: Option<u64>,
    /// Seconds a member may go unheard before the directory's leader declares it dead and
    /// rebuilds its replicas on the others [default: 300, from 2 to 2592000]. The directory
    /// leader's own setting is the one that counts. A node declared dead that comes back is
    /// told so, deletes its data and stops.
    #[arg(long, value_name = "SECONDS")]
    pub dead_after_s: Option<u64>,
    /// The request handler this node runs for `POST /partitions/{name}/requests` (`echo`,
    /// `kv`, or one an application's binary adds). Every node of a cluster should run the
    /// same one. Without it, requests for handlers are refused.
    #[arg(long, value_name = "NAME")]
    pub handler: Option<String>,
    /// Change-feed subscriptions (WebSocket and event-stream watchers of maps) this node
    /// serves at once; one more is refused [default: 10000, from 1 to 1000000].
    #[arg(long, value_name = "N")]
    pub feed_subscriptions_max: Option<usize>,
    /// What one feed subscriber may have queued and not yet taken, in KiB; a subscriber
    /// further behind is cut off with a `resync` message [default: 1024, from 1 to 65536].
    #[arg(long, value_name = "KIB")]
    pub feed_buffer_kib: Option<usize>,
    /// What all feed subscribers of this node may have queued together, in MiB; past it, a
    /// subscriber with anything queued is cut off instead of queueing more [default: 256,
    /// from 1 to 65536].
    #[arg(long, value_name = "MIB")]
    pub feed_memory_mib: Option<usize>,
}

/// Everything a node needs to start, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellConfig {
    pub node_id: NodeId,
    pub http: SocketAddr,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub advertise_http: SocketAddr,
    pub data_dir: PathBuf,
    pub location: Location,
    pub peers: Vec<PeerAddress>,
    pub replication_factor: u32,
    pub strategy: ReplicationStrategy,
    pub commit_level: CommitLevel,
    pub transport: TransportKind,
    pub http_peer: HttpPeerOptions,
    pub log_format: LogFormat,
    pub replica_timeout_ms: u64,
    /// A peer silent this long is skipped by placement until it is heard again.
    pub peer_down_after_ms: u64,
    pub partition_cache_mib: u64,
    /// A member unheard this long is declared dead (see [`DEFAULT_DEAD_AFTER_S`]).
    pub dead_after_s: u64,
    /// Largest client request body (and so event) accepted.
    pub body_bytes_max: usize,
    pub http_limits: crate::production::http_server::HttpLimits,
    pub peer_connections_max: usize,
    /// What this node founds a cluster with (the name also checks a join).
    pub cluster: ClusterSettings,
    /// The peer address of a member to join through.
    pub join: Option<SocketAddr>,
    /// The name of the request handler this node runs.
    pub handler: Option<String>,
    /// Bounds of the change feeds this node serves.
    pub feeds: FeedLimits,
}

/// How many feed subscribers a node serves, and what they may have queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedLimits {
    pub subscriptions_max: usize,
    /// Per subscriber.
    pub buffer_bytes_max: usize,
    /// All subscribers together.
    pub memory_bytes_max: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            subscriptions_max: 10_000,
            buffer_bytes_max: 1024 * 1024,
            memory_bytes_max: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("config file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Value(String),
}

pub fn parse_commit_level(text: &str) -> Result<CommitLevel, String> {
    match text.to_ascii_uppercase().as_str() {
        "ONE" => Ok(CommitLevel::One),
        "QUORUM" => Ok(CommitLevel::Quorum),
        "ALL" => Ok(CommitLevel::All),
        _ => Err(format!(
            "commit level {text:?} is not one of ONE, QUORUM, ALL"
        )),
    }
}

pub fn read_config_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Unreadable {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    toml::from_str(&text).map_err(|error| ConfigError::Invalid {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

impl ShellConfig {
    /// The file (if any), then the flags, then defaults; checked as a whole.
    pub fn resolve(flags: &StartFlags) -> Result<ShellConfig, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_config_file(path)?,
            None => ConfigFile::default(),
        };
        Self::merge(file, flags)
    }

    pub fn merge(file: ConfigFile, flags: &StartFlags) -> Result<ShellConfig, ConfigError> {
        let value = |reason: String| ConfigError::Value(reason);
        let node_id = NodeId::checked(flags.node_id.or(file.node_id).unwrap_or(1))
            .map_err(|invalid| value(invalid.to_string()))?;
        let http = flags
            .http
            .or(file.http)
            .unwrap_or_else(|| DEFAULT_HTTP_ADDRESS.parse().expect("valid default"));
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_PEER_ADDRESS.parse().expect("valid default"));
        if http == listen {
            return Err(value(format!(
                "the client API and the peer port cannot share {http}"
            )));
        }
        let advertise = flags.advertise.or(file.advertise).unwrap_or(listen);
        let advertise_http = flags.advertise_http.or(file.advertise_http).unwrap_or(http);
        // Peers dial what this node advertises: a wildcard would have them dial themselves.
        for (name, address) in [("advertise", advertise), ("advertise_http", advertise_http)] {
            if address.ip().is_unspecified() {
                return Err(value(format!(
                    "{name} {address} is a wildcard address that peers cannot dial; set {name} \
                     to this node's reachable address (needed when listening on a wildcard)"
                )));
            }
        }
        let mut peers = file.peers;
        for peer in &flags.peers {
            if let Some(existing) = peers.iter().find(|known| known.id == peer.id) {
                if existing.address != peer.address {
                    return Err(value(format!(
                        "peer {} is given two addresses: {} and {}",
                        peer.id, existing.address, peer.address
                    )));
                }
                continue;
            }
            peers.push(peer.clone());
        }
        // Every node may be given the same full list: its own entry is dropped when the
        // address is its own, and refused when it names some other address.
        if let Some(me) = peers.iter().find(|peer| peer.id == node_id.0) {
            if me.address != listen && me.address != advertise {
                return Err(value(format!(
                    "peer {}@{} has this node's own id but not its peer address {listen}",
                    me.id, me.address
                )));
            }
        }
        peers.retain(|peer| peer.id != node_id.0);
        peers.sort_by_key(|peer| peer.id);
        for peer in &peers {
            NodeId::checked(peer.id).map_err(|invalid| {
                value(format!("peer {}@{}: {invalid}", peer.id, peer.address))
            })?;
        }
        let cluster_size = peers.len() as u32 + 1;
        let replication_factor = flags
            .replication_factor
            .or(file.replication_factor)
            .unwrap_or(cluster_size.min(3));
        if replication_factor == 0 {
            return Err(value("replication factor must be at least 1".to_string()));
        }
        let strategy = ReplicationStrategy {
            other_zone_replicas: flags
                .other_zone_replicas
                .or(file.other_zone_replicas)
                .unwrap_or(0),
            other_region_replicas: flags
                .other_region_replicas
                .or(file.other_region_replicas)
                .unwrap_or(0),
        };
        // A replication factor below 1 + other_zone + other_region is allowed: replicas go
        // local, other zones, other regions, own zone, until the factor is reached.
        let commit_level = match flags.commit_level.as_ref().or(file.commit_level.as_ref()) {
            Some(text) => parse_commit_level(text).map_err(value)?,
            None => CommitLevel::Quorum,
        };
        let http_peer = file.http_peer.unwrap_or_default();
        if http_peer.method.parse::<hyper::Method>().is_err() || http_peer.method.is_empty() {
            return Err(value(format!(
                "http_peer.method {:?} is not an HTTP method",
                http_peer.method
            )));
        }
        // The peer endpoint takes a body, and the peer router serves it under this method.
        if !matches!(http_peer.method.as_str(), "POST" | "PUT" | "PATCH") {
            return Err(value(format!(
                "http_peer.method {:?} must be POST, PUT or PATCH (the replica call carries the event)",
                http_peer.method
            )));
        }
        if !http_peer.path.starts_with('/') {
            return Err(value(format!(
                "http_peer.path {:?} must start with /",
                http_peer.path
            )));
        }
        if http_peer.path.chars().any(|character| {
            matches!(character, '{' | '}' | '*' | '?' | '#') || character.is_whitespace()
        }) {
            return Err(value(format!(
                "http_peer.path {:?} must be a plain path (no {{, }}, *, ?, # or spaces)",
                http_peer.path
            )));
        }
        if crate::production::http_api::PEER_ROUTES.contains(&http_peer.path.as_str()) {
            return Err(value(format!(
                "http_peer.path {:?} is a built-in peer route",
                http_peer.path
            )));
        }
        if !(1..=HTTP_PEER_TIMEOUT_MS_MAX).contains(&http_peer.timeout_ms) {
            return Err(value(format!(
                "http_peer.timeout_ms {} must be in 1..={HTTP_PEER_TIMEOUT_MS_MAX}",
                http_peer.timeout_ms
            )));
        }
        let zone = flags
            .zone
            .clone()
            .or(file.zone)
            .unwrap_or_else(|| "zone-1".to_string());
        let region = flags
            .region
            .clone()
            .or(file.region)
            .unwrap_or_else(|| "region-1".to_string());
        for name in [&zone, &region] {
            crate::ids::check_place_name(name).map_err(|invalid| value(invalid.to_string()))?;
        }
        let replica_timeout_ms = flags
            .replica_timeout_ms
            .or(file.replica_timeout_ms)
            .unwrap_or(2_000);
        if !(1..=600_000).contains(&replica_timeout_ms) {
            return Err(value(format!(
                "replica_timeout_ms {replica_timeout_ms} must be in 1..=600000"
            )));
        }
        let body_bytes_max = flags
            .body_bytes_max
            .or(file.body_bytes_max)
            .unwrap_or(1024 * 1024);
        if body_bytes_max == 0 || body_bytes_max > 1024 * 1024 {
            return Err(value(format!(
                "body_bytes_max {body_bytes_max} must be in 1..={}",
                1024 * 1024
            )));
        }
        let defaults = crate::production::http_server::HttpLimits::default();
        let milliseconds = |flag: Option<u64>, file: Option<u64>, default: std::time::Duration| {
            flag.or(file)
                .map_or(default, std::time::Duration::from_millis)
        };
        let http_limits = crate::production::http_server::HttpLimits {
            connections_max: flags
                .http_connections_max
                .or(file.http_connections_max)
                .unwrap_or(defaults.connections_max),
            header_read_timeout: milliseconds(
                flags.http_header_read_timeout_ms,
                file.http_header_read_timeout_ms,
                defaults.header_read_timeout,
            ),
            idle_timeout: milliseconds(
                flags.http_idle_timeout_ms,
                file.http_idle_timeout_ms,
                defaults.idle_timeout,
            ),
            request_timeout: milliseconds(
                flags.http_request_timeout_ms,
                file.http_request_timeout_ms,
                defaults.request_timeout,
            ),
        };
        if !(1..=65_536).contains(&http_limits.connections_max) {
            return Err(value(format!(
                "http_connections_max {} must be in 1..=65536",
                http_limits.connections_max
            )));
        }
        for (name, limit) in [
            (
                "http_header_read_timeout_ms",
                http_limits.header_read_timeout,
            ),
            ("http_idle_timeout_ms", http_limits.idle_timeout),
            ("http_request_timeout_ms", http_limits.request_timeout),
        ] {
            if limit.is_zero() || limit > std::time::Duration::from_secs(3600) {
                return Err(value(format!("{name} must be in 1..=3600000")));
            }
        }
        let peer_connections_max = flags
            .peer_connections_max
            .or(file.peer_connections_max)
            .unwrap_or(256);
        if !(1..=65_536).contains(&peer_connections_max) {
            return Err(value(format!(
                "peer_connections_max {peer_connections_max} must be in 1..=65536"
            )));
        }
        let cluster_name = flags
            .cluster_name
            .clone()
            .or(file.cluster_name)
            .unwrap_or_else(|| "borough".to_string());
        let cluster_name = ClusterName::new(cluster_name)
            .map_err(|invalid| value(format!("cluster name: {invalid}")))?;
        let mut cluster = ClusterSettings::new(cluster_name);
        if let Some(replicas) = flags.replicas.or(file.replicas) {
            cluster.replicas = replicas;
        }
        if let Some(voters) = flags.directory_voters.or(file.directory_voters) {
            cluster.directory_voters = voters;
        }
        cluster.check().map_err(value)?;
        let join = flags.join.or(file.join);
        let transport = flags.transport.or(file.transport).unwrap_or_default();
        if join.is_some() && transport == TransportKind::Http {
            return Err(value(
                "--join needs the tcp transport: named partitions replicate over it".to_string(),
            ));
        }
        if join.is_some_and(|join| join == advertise || join == listen) {
            return Err(value(format!(
                "--join {} is this node's own peer address; give a member's",
                join.unwrap_or(listen)
            )));
        }
        if http_limits.idle_timeout <= http_limits.request_timeout {
            return Err(value(
                "http_idle_timeout_ms must be longer than http_request_timeout_ms (a request \
                 that waits for its answer moves no bytes)"
                    .to_string(),
            ));
        }
        let partition_cache_mib = flags
            .partition_cache_mib
            .or(file.partition_cache_mib)
            .unwrap_or(DEFAULT_PARTITION_CACHE_MIB);
        if !(1..=PARTITION_CACHE_MIB_MAX).contains(&partition_cache_mib) {
            return Err(value(format!(
                "partition_cache_mib {partition_cache_mib} is out of range (1 to \
                 {PARTITION_CACHE_MIB_MAX})"
            )));
        }
        let dead_after_s = flags
            .dead_after_s
            .or(file.dead_after_s)
            .unwrap_or(DEFAULT_DEAD_AFTER_S);
        if !(DEAD_AFTER_S_MIN..=DEAD_AFTER_S_MAX).contains(&dead_after_s) {
            return Err(value(format!(
                "dead_after_s {dead_after_s} is out of range ({DEAD_AFTER_S_MIN} to \
                 {DEAD_AFTER_S_MAX})"
            )));
        }
        let feeds = FeedLimits {
            subscriptions_max: flags
                .feed_subscriptions_max
                .or(file.feed_subscriptions_max)
                .unwrap_or(FeedLimits::default().subscriptions_max),
            buffer_bytes_max: flags
                .feed_buffer_kib
                .or(file.feed_buffer_kib)
                .map_or(FeedLimits::default().buffer_bytes_max, |kib| {
                    kib.saturating_mul(1024)
                }),
            memory_bytes_max: flags
                .feed_memory_mib
                .or(file.feed_memory_mib)
                .map_or(FeedLimits::default().memory_bytes_max, |mib| {
                    mib.saturating_mul(1024 * 1024)
                }),
        };
        if !(1..=1_000_000).contains(&feeds.subscriptions_max) {
            return Err(value(format!(
                "feed_subscriptions_max {} must be in 1..=1000000",
                feeds.subscriptions_max
            )));
        }
        if !(1024..=64 * 1024 * 1024).contains(&feeds.buffer_bytes_max) {
            return Err(value("feed_buffer_kib must be in 1..=65536".to_string()));
        }
        if !(1024 * 1024..=64 * 1024 * 1024 * 1024).contains(&feeds.memory_bytes_max) {
            return Err(value("feed_memory_mib must be in 1..=65536".to_string()));
        }
        Ok(ShellConfig {
            node_id,
            http,
            listen,
            advertise,
            advertise_http,
            data_dir: flags
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            location: Location::new(region, zone),
            peers,
            replication_factor,
            strategy,
            commit_level,
            transport,
            http_peer,
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            replica_timeout_ms,
            peer_down_after_ms: flags
                .peer_down_after_ms
                .or(file.peer_down_after_ms)
                .unwrap_or(3_000)
                .clamp(100, 3_600_000),
            partition_cache_mib,
            dead_after_s,
            body_bytes_max,
            http_limits,
            peer_connections_max,
            cluster,
            join,
            handler: flags.handler.clone().or(file.handler),
            feeds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_config_runs_one_node_on_the_documented_ports() {
        let config = ShellConfig::resolve(&StartFlags::default()).unwrap();
        assert_eq!(config.node_id, NodeId(1));
        assert_eq!(config.http.to_string(), "127.0.0.1:7480");
        assert_eq!(config.listen.to_string(), "127.0.0.1:7481");
        assert_eq!(config.data_dir, PathBuf::from("borough-data"));
        assert_eq!(config.replication_factor, 1);
        assert_eq!(config.commit_level, CommitLevel::Quorum);
    }

    #[test]
    fn the_partition_cache_defaults_and_refuses_impossible_sizes() {
        let config = ShellConfig::resolve(&StartFlags::default()).unwrap();
        assert_eq!(config.partition_cache_mib, DEFAULT_PARTITION_CACHE_MIB);
        let file: ConfigFile = toml::from_str("partition_cache_mib = 64").unwrap();
        let config = ShellConfig::merge(file, &StartFlags::default()).unwrap();
        assert_eq!(config.partition_cache_mib, 64);
        for mib in [0, PARTITION_CACHE_MIB_MAX + 1] {
            let flags = StartFlags {
                partition_cache_mib: Some(mib),
                ..StartFlags::default()
            };
            let refusal = ShellConfig::resolve(&flags).unwrap_err().to_string();
            assert!(
                refusal.contains(&format!("partition_cache_mib {mib} is out of range")),
                "{refusal}"
            );
        }
    }

    #[test]
    fn dead_after_defaults_to_five_minutes_and_refuses_what_a_restart_would_trip() {
        let config = ShellConfig::resolve(&StartFlags::default()).unwrap();
        assert_eq!(config.dead_after_s, 300);
        let file: ConfigFile = toml::from_str("dead_after_s = 60").unwrap();
        assert_eq!(
            ShellConfig::merge(file, &StartFlags::default())
                .unwrap()
                .dead_after_s,
            60
        );
        for seconds in [0, 1, DEAD_AFTER_S_MAX + 1] {
            let flags = StartFlags {
                dead_after_s: Some(seconds),
                ..StartFlags::default()
            };
            let refusal = ShellConfig::resolve(&flags).unwrap_err().to_string();
            assert!(
                refusal.contains(&format!("dead_after_s {seconds} is out of range")),
                "{refusal}"
            );
        }
    }

    #[test]
    fn impossible_node_ids_are_refused_for_the_node_and_its_peers() {
        for id in [0, u32::MAX] {
            let flags = StartFlags {
                node_id: Some(id),
                ..StartFlags::default()
            };
            let refusal = ShellConfig::resolve(&flags).unwrap_err().to_string();
            assert!(
                refusal.contains(&format!("node id {id} is out of range")),
                "{refusal}"
            );
        }
        for id in [0u64, 4294967295] {
            let file: ConfigFile = toml::from_str(&format!(
                r#"peers = [{{ id = {id}, address = "127.0.0.1:9005" }}]"#
            ))
            .unwrap();
            let refusal = ShellConfig::merge(file, &StartFlags::default())
                .unwrap_err()
                .to_string();
            assert!(refusal.contains("is out of range"), "{refusal}");
        }
    }

    #[test]
    fn a_replication_factor_below_the_strategy_is_allowed_and_places_are_checked() {
        let flags = StartFlags {
            replication_factor: Some(3),
            other_zone_replicas: Some(2),
            other_region_replicas: Some(1),
            ..StartFlags::default()
        };
        let config = ShellConfig::resolve(&flags).unwrap();
        assert_eq!(config.replication_factor, 3);
        assert_eq!(config.strategy.other_zone_replicas, 2);
        for zone in ["", "two words", &"z".repeat(65)] {
            let flags = StartFlags {
                zone: Some(zone.to_string()),
                ..StartFlags::default()
            };
            assert!(ShellConfig::resolve(&flags).is_err(), "{zone:?}");
        }
    }

    #[test]
    fn http_limits_default_and_are_checked() {
        let config = ShellConfig::resolve(&StartFlags::default()).unwrap();
        assert_eq!(
            config.http_limits,
            crate::production::http_server::HttpLimits::default()
        );
        let flags = StartFlags {
            http_connections_max: Some(0),
            ..StartFlags::default()
        };
        assert!(ShellConfig::resolve(&flags).is_err());
        let flags = StartFlags {
            http_idle_timeout_ms: Some(1000),
            http_request_timeout_ms: Some(2000),
            ..StartFlags::default()
        };
        let refusal = ShellConfig::resolve(&flags).unwrap_err().to_string();
        assert!(refusal.contains("longer than"), "{refusal}");
    }

    #[test]
    fn flags_override_the_file_and_peers_set_the_default_factor() {
        let file: ConfigFile = toml::from_str(
            r#"
            node_id = 4
            zone = "a"
            commit_level = "ONE"
            peers = [{ id = 5, address = "127.0.0.1:9005" }]
            "#,
        )
        .unwrap();
        let flags = StartFlags {
            zone: Some("b".into()),
            peers: vec!["6@127.0.0.1:9006".parse().unwrap()],
            ..StartFlags::default()
        };
        let config = ShellConfig::merge(file, &flags).unwrap();
        assert_eq!(config.node_id, NodeId(4));
        assert_eq!(config.location.zone, "b");
        assert_eq!(config.commit_level, CommitLevel::One);
        assert_eq!(config.peers.len(), 2);
        assert_eq!(config.replication_factor, 3);
    }

    #[test]
    fn http_peer_settings_and_wildcard_advertising_are_validated() {
        let refused = |text: &str| {
            let file: ConfigFile = toml::from_str(text).unwrap();
            ShellConfig::merge(file, &StartFlags::default())
                .unwrap_err()
                .to_string()
        };
        for (text, expected) in [
            ("[http_peer]\nmethod = \"GET\"", "must be POST"),
            ("[http_peer]\npath = \"/peer/hello\"", "built-in"),
            ("[http_peer]\npath = \"/peer/{key}\"", "plain path"),
            ("[http_peer]\ntimeout_ms = 0", "timeout_ms"),
            (
                "[http_peer]\ntimeout_ms = 9223372036854775807",
                "timeout_ms",
            ),
            ("listen = \"0.0.0.0:7481\"", "advertise"),
            ("http = \"[::]:7480\"", "advertise_http"),
        ] {
            let refusal = refused(text);
            assert!(refusal.contains(expected), "{text}: {refusal}");
        }
        let file: ConfigFile = toml::from_str(
            "listen = \"0.0.0.0:7481\"\nadvertise = \"10.0.0.5:7481\"\n[http_peer]\nmethod = \"PUT\"",
        )
        .unwrap();
        let config = ShellConfig::merge(file, &StartFlags::default()).unwrap();
        assert_eq!(config.advertise.to_string(), "10.0.0.5:7481");
        assert_eq!(config.http_peer.method, "PUT");
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let unknown = toml::from_str::<ConfigFile>("nodeid = 3").unwrap_err();
        assert!(unknown.to_string().contains("nodeid"), "{unknown}");
        let flags = StartFlags {
            commit_level: Some("MOST".into()),
            ..StartFlags::default()
        };
        let error = ShellConfig::merge(ConfigFile::default(), &flags).unwrap_err();
        assert!(error.to_string().contains("MOST"), "{error}");
        let own = StartFlags {
            peers: vec!["1@127.0.0.1:9001".parse().unwrap()],
            ..StartFlags::default()
        };
        assert!(ShellConfig::merge(ConfigFile::default(), &own).is_err());
        let full_list = StartFlags {
            listen: Some("127.0.0.1:9001".parse().unwrap()),
            peers: vec![
                "1@127.0.0.1:9001".parse().unwrap(),
                "2@127.0.0.1:9002".parse().unwrap(),
            ],
            ..StartFlags::default()
        };
        let config = ShellConfig::merge(ConfigFile::default(), &full_list).unwrap();
        assert_eq!(config.peers.len(), 1, "its own entry is dropped");
        assert_eq!(config.replication_factor, 2);
        assert!("2-127.0.0.1:1".parse::<PeerAddress>().is_err());
    }
}

//! Starts a node: binds its ports, opens (recovers) its store on its own thread, starts the
//! peer transport and serves the HTTP API until shutdown.
//!
//! Ports are bound before the store is opened, so a port in use fails fast and touches no
//! data. Shutdown (Ctrl-C or SIGTERM) stops taking requests; every acknowledged write is
//! already durable, so nothing more has to be flushed.

use crate::coordinator::cluster::{ClusterConfig, ClusterStart};
use crate::coordinator::placement::PlacementConfig;
use crate::directory::{Address, Member, MemberState};
use crate::ids::NodeId;
use crate::node::{NodeConfig, PartitionsConfig};
use crate::production::config::{ShellConfig, TransportKind};
use crate::production::driver::{spawn_node, PeerSender};
use crate::production::handlers::HandlerRegistry;
use crate::production::http_api::{client_router, peer_router, ApiState};
use crate::production::http_client::HttpClient;
use crate::production::http_server::serve_http;
use crate::production::http_transport::{HttpPeerClient, HttpTransport};
use crate::production::membership::Membership;
use crate::production::metrics::Metrics;
use crate::production::peer_frame::PeerInfo;
use crate::production::tcp_transport::{accept_peers, TcpTransport, TokioNet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Inputs the node thread queues before client calls are refused as overloaded.
const NODE_INBOX_CAPACITY: usize = 16 * 1024;

/// Applied entries between checkpoints of the partitions' database. A checkpoint writes every
/// page the applies dirtied since the last one (the engine buffers them until a durable
/// commit), so its cost grows with the pages touched, which a put load over 1,000
/// partitions saturates within a few thousand entries: at 4,096 a node stalled 12-58 ms
/// every 0.7 s, and the stalls set the p99; at 32,768 they come 8 times less often, at about
/// the same length. The price is a longer Raft log (about 10 MiB per node of 256-byte puts).
const CHECKPOINT_APPLIED_ENTRIES: u64 = 32_768;

/// How the server ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// On the shutdown signal, or after a drain: the process exits.
    Stopped,
    /// The node left its cluster without a drain of its own (declared dead while away):
    /// the data dir is marked to be emptied, and the process starts over
    /// ([`crate::production::rejoin`]).
    StartOver,
}

/// A node that started serving: a way in to it, and where it listens.
#[derive(Clone, Debug)]
pub struct Started {
    pub node: crate::production::driver::NodeHandle,
    pub id: NodeId,
    pub http: std::net::SocketAddr,
    pub peer: std::net::SocketAddr,
}

/// What a binary or an embedding application adds to a node's configuration.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// The request handlers `config.handler` names one of.
    pub handlers: HandlerRegistry,
    /// Told once the node serves.
    pub started: Option<tokio::sync::oneshot::Sender<Started>>,
}

/// Runs the node until `shutdown` completes, with the built-in handlers.
pub async fn serve(
    config: ShellConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Served, String> {
    serve_with(
        config,
        ServeOptions {
            handlers: HandlerRegistry::builtin(),
            started: None,
        },
        shutdown,
    )
    .await
}

/// Runs the node until `shutdown` completes.
pub async fn serve_with(
    mut config: ShellConfig,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Served, String> {
    let handler = config
        .handler
        .as_deref()
        .map(|name| options.handlers.contained(name))
        .transpose()?;
    config.feeds.subscriptions_max = feed_subscriptions_within_open_files(&config);
    let http_listener = TcpListener::bind(config.http)
        .await
        .map_err(|error| format!("cannot listen for clients on {}: {error}", config.http))?;
    let peer_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| format!("cannot listen for peers on {}: {error}", config.listen))?;
    let bound_http = http_listener
        .local_addr()
        .map_err(|error| error.to_string())?;
    let bound_peer = peer_listener
        .local_addr()
        .map_err(|error| error.to_string())?;
    // A port of 0 means "any": advertise what was actually bound.
    let advertise = if config.advertise == config.listen {
        bound_peer
    } else {
        config.advertise
    };
    let advertise_http = if config.advertise_http == config.http {
        bound_http
    } else {
        config.advertise_http
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|error| {
        format!(
            "cannot create data dir {}: {error}",
            config.data_dir.display()
        )
    })?;

    // Two processes on one data dir would interleave their logs: the second one refuses.
    let lock_path = config.data_dir.join("LOCK");
    let data_dir_lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| format!("cannot open {}: {error}", lock_path.display()))?;
    data_dir_lock.try_lock().map_err(|error| {
        format!(
            "data dir {} is in use by another borough process ({error})",
            config.data_dir.display()
        )
    })?;
    // A data dir that left its cluster starts over: emptied, it joins as a new member.
    if let Some(through) = crate::production::rejoin::prepare(&config.data_dir)? {
        // The marker's member is fresher than the command line's (which may have left).
        config.join = Some(through);
    }

    let peer_down_after = Duration::from_millis(config.peer_down_after_ms);
    let heartbeat_interval = (peer_down_after / 4).max(Duration::from_millis(50));
    let membership = Arc::new(Membership::new(config.node_id, peer_down_after));
    for peer in &config.peers {
        membership.learn_configured(NodeId(peer.id), peer.address, tokio::time::Instant::now());
    }
    let metrics = Arc::new(Metrics::default());
    let local = PeerInfo {
        id: config.node_id,
        location: config.location.clone(),
        peer_address: advertise,
        http_address: advertise_http,
    };
    let client = HttpClient::new();

    let mut node_config = NodeConfig::new(config.node_id, config.location.clone());
    node_config.coordinator.replication_factor = config.replication_factor;
    node_config.coordinator.strategy = config.strategy;
    node_config.coordinator.default_commit_level = config.commit_level;
    node_config.coordinator.replica_timeout_micros = config.replica_timeout_ms * 1_000;
    node_config.coordinator.store.max_event_bytes = config.body_bytes_max;
    let instance = node_instance(&config.data_dir)?;
    let address = |address: std::net::SocketAddr| {
        Address::new(address.to_string()).map_err(|invalid| format!("address {address}: {invalid}"))
    };
    let mut partitions = PartitionsConfig::default();
    partitions.host.checkpoint_applied_entries = CHECKPOINT_APPLIED_ENTRIES;
    partitions.host.store_cache_bytes = usize::try_from(config.partition_cache_mib << 20)
        .map_err(|_| "partition_cache_mib is larger than this machine can address".to_string())?;
    let ticks_per_second = 1_000_000 / partitions.tick_micros.max(1);
    node_config.partitions = Some(partitions);
    node_config.feeds.subscriptions_max = config.feeds.subscriptions_max;
    node_config.cluster = Some(ClusterConfig {
        member: Member {
            id: config.node_id,
            instance,
            peer_address: address(advertise)?,
            http_address: address(advertise_http)?,
            location: config.location.clone(),
            state: MemberState::Active,
        },
        cluster_name: config.cluster.cluster_name.clone(),
        start: match config.join {
            Some(_) => ClusterStart::Join { seed: None },
            None => ClusterStart::Bootstrap(config.cluster.clone()),
        },
        // One join request a second while no answer comes.
        join_retry_ticks: 100,
        placement: PlacementConfig {
            dead_after_ticks: config.dead_after_s.saturating_mul(ticks_per_second),
            ..PlacementConfig::default()
        },
    });

    enum Transport {
        Tcp(Arc<TcpTransport<TokioNet>>),
        Http(Arc<HttpTransport>),
    }
    let transport = match config.transport {
        TransportKind::Tcp => Transport::Tcp(TcpTransport::new(
            TokioNet,
            local.clone(),
            Arc::clone(&membership),
            Arc::clone(&metrics),
            heartbeat_interval,
        )),
        TransportKind::Http => Transport::Http(HttpTransport::new(
            HttpPeerClient::new(client.clone(), config.http_peer.clone()),
            local.clone(),
            Arc::clone(&membership),
            Arc::clone(&metrics),
            heartbeat_interval,
        )),
    };
    let sender: Arc<dyn PeerSender> = match &transport {
        Transport::Tcp(tcp) => tcp.clone(),
        Transport::Http(http) => http.clone(),
    };
    let data_dir = config.data_dir.clone();
    let members: Vec<NodeId> = config.peers.iter().map(|peer| NodeId(peer.id)).collect();
    let opened = tokio::task::spawn_blocking(move || {
        spawn_node(
            node_config,
            data_dir,
            members,
            sender,
            NODE_INBOX_CAPACITY,
            handler,
        )
    })
    .await
    .map_err(|error| format!("opening the node failed: {error}"))?;
    let (node, _node_thread) = opened.map_err(|error| {
        format!(
            "cannot open the store in {}: {error}",
            config.data_dir.display()
        )
    })?;

    let state = ApiState {
        node: node.clone(),
        local_id: config.node_id,
        membership: Arc::clone(&membership),
        metrics: Arc::clone(&metrics),
        client,
        body_bytes_max: config.body_bytes_max,
        put_answer_timeout: put_answer_timeout(config.http_limits.request_timeout),
        data_dir: config.data_dir.clone(),
        feed_memory: crate::production::feed_sink::FeedMemory::new(config.feeds),
    };
    match transport {
        Transport::Tcp(tcp) => {
            tcp.start(node.clone());
            if let Some(join) = config.join {
                tokio::spawn(find_seed(Arc::clone(&tcp), node.clone(), join));
            }
            tokio::spawn(accept_peers(
                tcp,
                peer_listener,
                config.peer_connections_max,
            ));
        }
        Transport::Http(http) => {
            http.start(node.clone());
            let router = peer_router(
                state.clone(),
                &config.http_peer.path,
                &config.http_peer.method,
                local.clone(),
            );
            tokio::spawn(serve_http(
                peer_listener,
                router,
                config.http_limits,
                Arc::clone(&metrics),
                std::future::pending(),
            ));
        }
    }
    tracing::info!(
        node = %config.node_id,
        http = %bound_http,
        peer = %bound_peer,
        transport = ?config.transport,
        data_dir = %config.data_dir.display(),
        peers = config.peers.len(),
        replication_factor = config.replication_factor,
        handler = config.handler.as_deref().unwrap_or("none"),
        "borough node listening"
    );
    if let Some(started) = options.started {
        let _ = started.send(Started {
            node: state.node.clone(),
            id: config.node_id,
            http: bound_http,
            peer: bound_peer,
        });
    }
    // The server stops on the shutdown signal, or once the node left its cluster and
    // nothing depends on it any more (`borough leave`).
    let (start_over_sender, start_over) = tokio::sync::oneshot::channel();
    let drained = wait_until_drained(
        state.node.clone(),
        start_over_sender,
        config.data_dir.clone(),
    );
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            () = drained => {}
        }
    };
    serve_http(
        http_listener,
        client_router(state),
        config.http_limits,
        Arc::clone(&metrics),
        stop,
    )
    .await;
    tracing::info!(node = %config.node_id, "shut down");
    let served = match start_over.await {
        Ok(through) => {
            crate::production::rejoin::write(
                &config.data_dir,
                crate::production::rejoin::Rejoin::Pending(through),
            )?;
            Served::StartOver
        }
        Err(_) => Served::Stopped,
    };
    drop(data_dir_lock);
    Ok(served)
}

/// Learns the id of the member at `join` (it dials back after a hello), tells the node to
/// join through it, and ends the process if the cluster refuses it for good (another
/// cluster's name, its id taken): a node that can never be a member should not look alive.
async fn find_seed(
    tcp: Arc<TcpTransport<TokioNet>>,
    node: crate::production::driver::NodeHandle,
    join: std::net::SocketAddr,
) {
    let mut attempts: u64 = 0;
    loop {
        if let Some(seed) = tcp.peer_at(join) {
            tracing::info!(%seed, address = %join, "joining the cluster through this member");
            let _ = node
                .submit(crate::production::driver::NodeInput::JoinThrough { seed })
                .await;
            break;
        }
        if attempts > 0 && attempts.is_multiple_of(10) {
            tracing::warn!(
                address = %join,
                seconds = attempts,
                "no member has answered from the --join address yet: is it a member's peer \
                 address (its --listen)? A node whose id another member holds is not answered \
                 (the member's log says so)"
            );
        }
        tcp.introduce(join);
        attempts += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(view) = node.cluster().await else {
            return;
        };
        if view.membership == "member" {
            tracing::info!(cluster = ?view.cluster_name, "this node is a member of the cluster");
            return;
        }
        if let Some(reason) = view.membership.strip_prefix("refused: ") {
            tracing::error!(%reason, "the cluster refused this node; stopping");
            eprintln!("borough: the cluster at {join} refused this node: {reason}");
            std::process::exit(2);
        }
    }
}

/// Completes once the node left its cluster and holds no replica (never for a node outside
/// a cluster). When it left without a drain of its own, it first sends `start_over` the
/// peer address of an active member to join again through.
async fn wait_until_drained(
    node: crate::production::driver::NodeHandle,
    start_over: tokio::sync::oneshot::Sender<std::net::SocketAddr>,
    data_dir: std::path::PathBuf,
) {
    use crate::production::rejoin;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let view = node.cluster().await;
        if let Ok(view) = &view {
            let leaving = view
                .members
                .iter()
                .any(|member| member.id == view.node && member.state == "leaving");
            if leaving {
                if let Err(failure) = rejoin::mark_leaving(&data_dir) {
                    tracing::error!(%failure, "cannot record that this node drains");
                }
            }
        }
        match view {
            Ok(view) if view.drained && view.rejoin_as_new && !rejoin::is_leaving(&data_dir) => {
                let through = view
                    .members
                    .iter()
                    .filter(|member| member.id != view.node && member.state == "active")
                    .find_map(|member| member.peer_address.parse().ok());
                let Some(through) = through else {
                    // Nobody to join through yet: its copy of the directory may still move.
                    continue;
                };
                tracing::warn!(
                    %through,
                    "the cluster let this node go (declared dead while away): it starts over on an empty data dir and joins again as a new member"
                );
                let _ = start_over.send(through);
                return;
            }
            Ok(view) if view.drained => {
                tracing::info!("this node left the cluster and holds no replica: stopping");
                return;
            }
            Ok(_) => {}
            Err(_) => std::future::pending::<()>().await,
        }
    }
}

/// This data dir's instance number: drawn when it is first used, kept in `instance`, so
/// the cluster tells a restarted member from another node started under its id.
fn node_instance(data_dir: &std::path::Path) -> Result<u64, String> {
    let path = data_dir.join("instance");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|error| {
            format!(
                "{} is damaged ({error}); it holds this node's instance number",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            use crate::seams::Rng;
            let instance = crate::production::os_seeded_rng().next_u64();
            let temporary = data_dir.join("instance.new");
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::File::create(&temporary)?;
                file.write_all(format!("{instance}\n").as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&temporary, &path)?;
                std::fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(|error| format!("cannot write {}: {error}", path.display()))?;
            Ok(instance)
        }
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// How long a put waits for its commit level before the client is answered 504 with the key:
/// 30 s, or less when the request timeout would cut the request first (a 408 could not say
/// which key the write took).
fn put_answer_timeout(request_timeout: Duration) -> Duration {
    (request_timeout * 3 / 4).min(Duration::from_secs(30))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

/// Open files kept for everything but feed connections: data files, the log, peers' and
/// clients' sockets beyond their own caps.
const OPEN_FILES_RESERVE: u64 = 256;

/// Raises the process's open-files limit to its hard limit (at most 1,048,576), and returns
/// how many feed subscriptions fit in it: a feed's WebSocket holds a socket after it leaves
/// the HTTP connection cap, so the node must not take more than its files allow (it would
/// then fail to open its own data files). A smaller number than configured is logged.
#[allow(clippy::disallowed_methods)] // the shell's own process limits
fn feed_subscriptions_within_open_files(config: &ShellConfig) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.map_or(1 << 20, |hard| hard.min(1 << 20));
    if limit.current.is_some_and(|soft| soft < wanted) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(wanted),
                maximum: limit.maximum,
            },
        );
    }
    let Some(open_files) = getrlimit(Resource::Nofile).current else {
        return config.feeds.subscriptions_max;
    };
    let others = OPEN_FILES_RESERVE
        + config.http_limits.connections_max as u64
        + config.peer_connections_max as u64;
    let fits = usize::try_from(open_files.saturating_sub(others)).unwrap_or(usize::MAX);
    if fits < config.feeds.subscriptions_max {
        tracing::warn!(
            open_files,
            configured = config.feeds.subscriptions_max,
            serving = fits.max(1),
            "the open-files limit allows fewer feed subscriptions than configured; raise `ulimit -n`"
        );
        return fits.max(1);
    }
    config.feeds.subscriptions_max
}

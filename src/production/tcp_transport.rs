//! The TCP peer transport: one outbound connection per peer carrying this node's frames, and
//! inbound connections carrying each peer's frames to the node.
//!
//! Invariants:
//! - every peer has an outbound queue bounded in frames and in bytes; when it is full (peer
//!   slow, down or partitioned) new messages to it are dropped and counted, never buffered
//!   without bound: the node's protocol already treats the network as lossy and re-spreads
//!   on timeout;
//! - a lost connection is re-dialled with exponential backoff (50 ms doubling to 5 s), and
//!   every new connection starts with a hello, so the receiver knows who is talking;
//! - inbound frames over the size limit, malformed or of an unknown version close the
//!   connection and are counted, the first frame included; an inbound connection silent for
//!   longer than the down-after time is closed; a reader hands messages to the node with
//!   backpressure (it stops reading its socket while the node's inbox is full);
//! - frames queued together leave in one write (up to [`COALESCED_WRITE_BYTES_MAX`]) and are
//!   read through a buffer: under load a write or read call carries many frames, not one
//!   frame in two reads. Frames stay whole and in order either way.
//! - the socket types come from a [`PeerNet`], so the same code runs over tokio's TCP in
//!   production and over turmoil's simulated TCP in tests.

use crate::ids::NodeId;
use crate::production::driver::{NodeHandle, NodeInput, PeerSender};
use crate::production::membership::{report, Membership};
use crate::production::metrics::Metrics;
use crate::production::peer_frame::{encode_frame, read_frame, PeerHello, PeerInfo};
use crate::wire::Frame;
use crate::wire::Message;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Frames queued per peer before new ones are dropped.
pub const OUTBOUND_QUEUE_FRAMES: usize = 1024;
/// Bytes queued per peer before new frames are dropped: a slow peer holds at most this much
/// memory, however large its frames (up to 4 MiB each) are.
pub const OUTBOUND_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One peer's outbound queue and the bytes waiting in it.
#[derive(Clone, Debug)]
struct OutboundQueue {
    frames: mpsc::Sender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
}
/// Bytes of queued frames one socket write may carry.
pub const COALESCED_WRITE_BYTES_MAX: usize = 256 * 1024;

/// The inbound reader's buffer.
const READ_BUFFER_BYTES: usize = 64 * 1024;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How the transport opens connections: tokio's TCP in production, turmoil's in tests.
pub trait PeerNet: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn connect(
        &self,
        address: SocketAddr,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Real TCP with Nagle off (frames are small and latency-bound).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNet;

impl PeerNet for TokioNet {
    type Stream = tokio::net::TcpStream;

    async fn connect(&self, address: SocketAddr) -> std::io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

pub struct TcpTransport<N: PeerNet> {
    net: Arc<N>,
    local: PeerInfo,
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    outbound: Mutex<BTreeMap<NodeId, OutboundQueue>>,
    /// Set once the node is open; frames can only be handed to it from then on.
    node: OnceLock<NodeHandle>,
    runtime: tokio::runtime::Handle,
    heartbeat_interval: Duration,
    /// Itself, for the calls that start connection tasks from a plain reference.
    this: std::sync::Weak<Self>,
}

impl<N: PeerNet> std::fmt::Debug for TcpTransport<N> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TcpTransport")
            .field("local", &self.local.id)
            .finish_non_exhaustive()
    }
}

impl<N: PeerNet> TcpTransport<N> {
    /// Must be called inside the runtime the transport's tasks will run on.
    pub fn new(
        net: N,
        local: PeerInfo,
        membership: Arc<Membership>,
        metrics: Arc<Metrics>,
        heartbeat_interval: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            net: Arc::new(net),
            local,
            membership,
            metrics,
            outbound: Mutex::new(BTreeMap::new()),
            node: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
            heartbeat_interval,
            this: this.clone(),
        })
    }

    /// Connects to every known peer and starts the failure detector. Call once the node is
    /// open; inbound connections are served with [`TcpTransport::serve_inbound`].
    pub fn start(self: &Arc<Self>, node: NodeHandle) {
        if self.node.set(node.clone()).is_err() {
            panic!("TcpTransport::start called twice");
        }
        for id in self.membership.dialled_peers() {
            self.connect_to(id);
        }
        let transport = Arc::clone(self);
        self.runtime.spawn(async move {
            let mut ticks = tokio::time::interval(transport.heartbeat_interval);
            loop {
                ticks.tick().await;
                for transition in transport.membership.expire(Instant::now()) {
                    report(&node, transition).await;
                }
            }
        });
    }

    /// Says hello to whoever listens at `address` (a member to join through, whose id is not
    /// known yet): it dials back with its own hello, which tells this node who it is.
    pub fn introduce(self: &Arc<Self>, address: SocketAddr) {
        let transport = Arc::clone(self);
        self.runtime.spawn(async move {
            let stream =
                tokio::time::timeout(CONNECT_TIMEOUT, transport.net.connect(address)).await;
            let Ok(Ok(mut stream)) = stream else {
                tracing::info!(%address, "the member to join through does not answer yet");
                return;
            };
            let hello = Frame::Hello(PeerHello {
                sender: transport.local.clone(),
                known_peers: Vec::new(),
            });
            let Ok(hello) = encode_frame(&hello) else {
                return;
            };
            if write_with_timeout(&mut stream, &hello).await.is_ok() {
                // Held open a moment, so the hello is read before the connection ends.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// The id of the peer that listens at `address`, once it said hello.
    pub fn peer_at(&self, address: SocketAddr) -> Option<NodeId> {
        self.membership
            .views()
            .into_iter()
            .find(|view| view.peer_address == address)
            .map(|view| view.id)
    }

    fn lock_outbound(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, OutboundQueue>> {
        self.outbound
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the connection task for `peer`, once.
    fn connect_to(self: &Arc<Self>, peer: NodeId) {
        let (sender, queue) = mpsc::channel(OUTBOUND_QUEUE_FRAMES);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        {
            let mut outbound = self.lock_outbound();
            if outbound.contains_key(&peer) {
                return;
            }
            outbound.insert(
                peer,
                OutboundQueue {
                    frames: sender,
                    queued_bytes: Arc::clone(&queued_bytes),
                },
            );
        }
        let transport = Arc::clone(self);
        self.runtime
            .spawn(async move { transport.connection_loop(peer, queue, queued_bytes).await });
    }

    async fn connection_loop(
        self: Arc<Self>,
        peer: NodeId,
        mut queue: mpsc::Receiver<Vec<u8>>,
        queued_bytes: Arc<AtomicUsize>,
    ) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(address) = self.membership.peer_address(peer) else {
                // Forgotten (a second-hand peer that never said hello): stop dialling, and
                // let a later hello start a new connection task.
                self.lock_outbound().remove(&peer);
                return;
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, self.net.connect(address)).await {
                Ok(Ok(stream)) => {
                    tracing::debug!(%peer, %address, "connected");
                    backoff = BACKOFF_MIN;
                    let reason = self
                        .send_frames(peer, address, stream, &mut queue, &queued_bytes)
                        .await;
                    match reason {
                        None => return,
                        Some(reason) => {
                            self.metrics.count_reconnect();
                            tracing::info!(%peer, %address, %reason, "connection lost; redialling")
                        }
                    }
                }
                Ok(Err(error)) => tracing::debug!(%peer, %address, %error, "connect failed"),
                Err(_) => tracing::debug!(%peer, %address, "connect timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Writes the hello, then queued frames and heartbeats until the connection fails
    /// (returns why), the peer is forgotten or moved (returns why, and the loop that redials
    /// notices), or the queue closes (returns `None`).
    async fn send_frames(
        &self,
        peer: NodeId,
        address: SocketAddr,
        mut stream: N::Stream,
        queue: &mut mpsc::Receiver<Vec<u8>>,
        queued_bytes: &AtomicUsize,
    ) -> Option<String> {
        let hello = Frame::Hello(PeerHello {
            sender: self.local.clone(),
            known_peers: self.membership.known_peers(),
        });
        // The directory is capped (`PEERS_MAX`) so a hello fits in a frame; should one not,
        // this connection fails and is redialled rather than taking the task down.
        let hello = match encode_frame(&hello) {
            Ok(hello) => hello,
            Err(error) => {
                tracing::error!(%error, "cannot encode the hello");
                return Some(format!("hello not sent: {error}"));
            }
        };
        if let Err(reason) = write_with_timeout(&mut stream, &hello).await {
            return Some(reason);
        }
        let heartbeat = encode_frame(&Frame::Heartbeat).expect("a heartbeat is tiny");
        let mut ticks = tokio::time::interval(self.heartbeat_interval);
        loop {
            let bytes = tokio::select! {
                frame = queue.recv() => match frame {
                    Some(mut frames) => {
                        queued_bytes.fetch_sub(frames.len(), Ordering::Relaxed);
                        // What queued meanwhile goes in the same write.
                        while frames.len() < COALESCED_WRITE_BYTES_MAX {
                            let Ok(frame) = queue.try_recv() else {
                                break;
                            };
                            queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
                            frames.extend_from_slice(&frame);
                        }
                        frames
                    }
                    None => return None,
                },
                _ = ticks.tick() => {
                    if self.membership.peer_address(peer) != Some(address) {
                        return Some("the peer was forgotten or moved".to_string());
                    }
                    heartbeat.clone()
                }
            };
            if let Err(reason) = write_with_timeout(&mut stream, &bytes).await {
                return Some(reason);
            }
        }
    }

    /// Reads one inbound connection until it ends. The first frame must be a hello.
    pub async fn serve_inbound<S: AsyncRead + Unpin>(self: Arc<Self>, stream: S) {
        let Some(node) = self.node.get().cloned() else {
            return;
        };
        let mut stream = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        let sender = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream)).await {
            Ok(Ok(Some(Frame::Hello(PeerHello {
                sender,
                known_peers,
            })))) => {
                // The sender first: a hello that would move a peer that is up is refused
                // before anything it lists is learned.
                match self.membership.hello(
                    sender.id,
                    sender.peer_address,
                    sender.http_address,
                    sender.location.clone(),
                    Instant::now(),
                ) {
                    Ok(transition) => {
                        self.connect_to(sender.id);
                        if let Some(transition) = transition {
                            report(&node, transition).await;
                        }
                    }
                    Err(refused) => {
                        self.metrics.count_bad_frame();
                        tracing::warn!(peer = %sender.id, %refused, "hello refused; connection closed");
                        return;
                    }
                }
                for (id, address) in known_peers {
                    if self.membership.learn(id, address) {
                        tracing::info!(peer = %id, %address, "learned of a peer");
                        self.connect_to(id);
                    }
                }
                sender.id
            }
            Ok(Ok(Some(_))) => {
                tracing::warn!("inbound connection did not start with a hello; closed");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                self.metrics.count_bad_frame();
                tracing::warn!(%error, "inbound connection refused");
                return;
            }
            Err(_) => {
                tracing::warn!("inbound connection sent no hello in time; closed");
                return;
            }
        };
        // The sender heartbeats every interval, so silence past the down-after time means the
        // connection is dead (its host lost power, or a partition ate the FIN). This side never
        // writes on an inbound connection, so without a deadline TCP would never notice.
        let idle_limit = self.membership.peer_down_after();
        loop {
            let body = match tokio::time::timeout(idle_limit, read_frame(&mut stream)).await {
                Ok(Ok(Some(body))) => body,
                Ok(Ok(None)) => return,
                Ok(Err(error)) => {
                    self.metrics.count_bad_frame();
                    tracing::warn!(peer = %sender, %error, "closing connection");
                    return;
                }
                Err(_) => {
                    tracing::info!(
                        peer = %sender,
                        idle_ms = idle_limit.as_millis() as u64,
                        "inbound connection silent past the down-after time; closed"
                    );
                    return;
                }
            };
            if let Some(transition) = self.membership.heard(sender, Instant::now()) {
                report(&node, transition).await;
            }
            match body {
                Frame::Message(message) => {
                    let input = NodeInput::PeerMessage {
                        from: sender,
                        message,
                    };
                    if node.submit(input).await.is_err() {
                        return;
                    }
                }
                Frame::Heartbeat => {}
                Frame::Hello(_) => {
                    tracing::warn!(peer = %sender, "second hello on one connection; closed");
                    return;
                }
            }
        }
    }
}

async fn write_with_timeout<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "write stalled for {} ms",
            WRITE_TIMEOUT.as_millis()
        )),
    }
}

impl<N: PeerNet> PeerSender for TcpTransport<N> {
    fn learn_member(&self, id: NodeId, peer_address: SocketAddr) {
        if self.membership.peer_address(id).is_none()
            && self
                .membership
                .learn_configured(id, peer_address, Instant::now())
        {
            if let Some(transport) = self.this.upgrade() {
                transport.connect_to(id);
            }
        }
    }

    fn send(&self, to: NodeId, message: Message) {
        let queue = self.lock_outbound().get(&to).cloned();
        let Some(queue) = queue else {
            self.metrics.count_dropped_frame();
            return;
        };
        let bytes = match encode_frame(&Frame::Message(message)) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(peer = %to, %error, "message not sent");
                self.metrics.count_dropped_frame();
                return;
            }
        };
        let frame_bytes = bytes.len();
        let queued = queue.queued_bytes.fetch_add(frame_bytes, Ordering::Relaxed);
        if queued + frame_bytes > OUTBOUND_QUEUE_BYTES_MAX || queue.frames.try_send(bytes).is_err()
        {
            queue.queued_bytes.fetch_sub(frame_bytes, Ordering::Relaxed);
            self.metrics.count_dropped_frame();
        }
    }
}

/// Accepts peer connections on `listener` forever, at most `connections_max` open at once:
/// one more is closed at once and counted, so connections that say nothing (each is held
/// until the hello timeout) cannot exhaust the process's file descriptors.
pub async fn accept_peers(
    transport: Arc<TcpTransport<TokioNet>>,
    listener: tokio::net::TcpListener,
    connections_max: usize,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(connections_max));
    loop {
        match listener.accept().await {
            Ok((stream, address)) => {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    transport.metrics.count_refused_connection();
                    tracing::warn!(%address, limit = connections_max, "too many peer connections open; closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let transport = Arc::clone(&transport);
                tokio::spawn(async move {
                    transport.serve_inbound(stream).await;
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

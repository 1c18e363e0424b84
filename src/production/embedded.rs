//! A Borough node inside an application's own process: build it from its configuration
//! ([`NodeBuilder`], the same settings as `borough start`), give it the application's
//! request handler, start it, then use it ([`BoroughNode`]): `request` a partition's handler
//! (routed to its leader from here), reach a partition's keys directly
//! ([`BoroughNode::partition`]), ask `whoami`, and `stop`. A node joins a cluster through
//! [`NodeBuilder::join`], given a member's peer address.
//!
//! It runs on the caller's tokio runtime: the node's own thread, its sockets and its HTTP API
//! as `borough start` runs them, so other processes and the command line reach it too.
//!
//! Invariant: a `BoroughNode` answers only with what its node answered; once stopped (or
//! dropped) its node is asked to shut down and every later call fails with "the node has
//! stopped".

use crate::application::Handler;
use crate::coordinator::cluster_machine::{
    ClusterAnswer, ClusterOperation, ClusterOutcome, ClusterQuery,
};
use crate::coordinator::router::{RouteError, RoutedOutcome, RoutedRequest};
use crate::directory::PartitionName;
use crate::ids::NodeId;
use crate::partition::command::{BatchOperation, KvOperation};
use crate::partition::host::RequestError;
use crate::partition::kv_store::{Page, RangeQuery, ReadAnswer, ReadRequest, WriteOutcome};
use crate::partition::state_machine::StateMachineError;
use crate::production::config::{ShellConfig, StartFlags};
use crate::production::driver::{DriverError, NodeHandle, PartitionPlacement};
use crate::production::handlers::HandlerRegistry;
use crate::production::server::{serve_with, ServeOptions, Served, Started};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;

/// The name the application's handler is registered under.
const APPLICATION_HANDLER: &str = "application";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The cluster did not serve the request (see [`RouteError`]).
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Node(#[from] DriverError),
    #[error("invalid partition name: {0}")]
    Name(String),
    #[error("the partition answered {0}")]
    Unexpected(String),
}

/// Builds a node: the settings of `borough start` (a config file, then these flags), and
/// the application's handler.
#[derive(Debug)]
pub struct NodeBuilder {
    flags: StartFlags,
    handlers: HandlerRegistry,
}

impl NodeBuilder {
    /// From `borough start`'s flags (their defaults: one node founding its own cluster on
    /// 127.0.0.1:7480 and :7481, data in `./borough-data`).
    pub fn new(flags: StartFlags) -> Self {
        Self {
            flags,
            handlers: HandlerRegistry::builtin(),
        }
    }

    /// The request handler the node runs for the partitions it leads.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handlers = self.handlers.with(APPLICATION_HANDLER, handler);
        self.flags.handler = Some(APPLICATION_HANDLER.to_string());
        self
    }

    pub fn node_id(mut self, id: u32) -> Self {
        self.flags.node_id = Some(id);
        self
    }

    /// The client API's address ([`BoroughNode::whoami`] says which port was bound).
    pub fn http(mut self, address: SocketAddr) -> Self {
        self.flags.http = Some(address);
        self
    }

    /// The peer port's address.
    pub fn listen(mut self, address: SocketAddr) -> Self {
        self.flags.listen = Some(address);
        self
    }

    pub fn data_dir(mut self, directory: impl Into<PathBuf>) -> Self {
        self.flags.data_dir = Some(directory.into());
        self
    }

    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.flags.zone = Some(zone.into());
        self
    }

    /// Joins the cluster of the member whose peer port is `address`, instead of founding one.
    pub fn join(mut self, address: SocketAddr) -> Self {
        self.flags.join = Some(address);
        self
    }

    /// Starts the node on the current tokio runtime; returns once it serves.
    pub async fn start(self) -> Result<BoroughNode, String> {
        let config = ShellConfig::resolve(&self.flags).map_err(|error| error.to_string())?;
        let (started_sender, started) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            handlers: self.handlers,
            started: Some(started_sender),
        };
        let serving = tokio::spawn(serve_with(config, options, async move {
            let _ = stopped.await;
        }));
        match started.await {
            Ok(started) => Ok(BoroughNode {
                started,
                stop: Some(stop),
                serving: Some(serving),
            }),
            Err(_) => match serving.await {
                Ok(Err(reason)) => Err(reason),
                Ok(Ok(_)) => Err("the node stopped before it served".to_string()),
                Err(error) => Err(format!("the node failed to start: {error}")),
            },
        }
    }
}

/// Who and where a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Whoami {
    pub id: NodeId,
    /// Its client API (HTTP).
    pub http: SocketAddr,
    /// Its peer port: what another node joins through.
    pub peer: SocketAddr,
}

/// A running node (see the module doc).
#[derive(Debug)]
pub struct BoroughNode {
    started: Started,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<Result<Served, String>>>,
}

fn partition_name(name: &str) -> Result<PartitionName, NodeError> {
    PartitionName::new(name).map_err(|invalid| NodeError::Name(invalid.to_string()))
}

impl BoroughNode {
    pub fn whoami(&self) -> Whoami {
        Whoami {
            id: self.started.id,
            http: self.started.http,
            peer: self.started.peer,
        }
    }

    /// Sends `body` to the handler of partition `partition` (on its leader, wherever that
    /// is) and returns its reply; waits `timeout` at most.
    pub async fn request(
        &self,
        partition: &str,
        body: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, NodeError> {
        let name = partition_name(partition)?;
        let timeout_micros = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
        match self
            .started
            .node
            .request(name, body.into(), timeout_micros)
            .await??
        {
            RoutedOutcome::Replied(reply) => Ok(reply),
            other => Err(NodeError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Partition `name`'s keys, reached directly (routed to its leader, like any request).
    pub fn partition(&self, name: &str) -> Result<PartitionClient, NodeError> {
        Ok(PartitionClient {
            node: self.started.node.clone(),
            name: partition_name(name)?,
        })
    }

    /// Shuts the node down (as on SIGTERM) and waits until it stopped.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.serving.take() {
            Some(serving) => serving
                .await
                .map_err(|error| format!("the node failed: {error}"))?
                .map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for BoroughNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One partition's keys, from a [`BoroughNode`].
#[derive(Clone, Debug)]
pub struct PartitionClient {
    node: NodeHandle,
    name: PartitionName,
}

impl PartitionClient {
    async fn routed(
        &self,
        request: RoutedRequest<ClusterOperation, ClusterQuery>,
    ) -> Result<RoutedOutcome<ClusterOutcome, ClusterAnswer>, NodeError> {
        Ok(self.node.routed(self.name.clone(), request).await??)
    }

    async fn write(&self, operation: KvOperation) -> Result<WriteOutcome, NodeError> {
        match self
            .routed(RoutedRequest::Write(ClusterOperation::Kv(operation)))
            .await?
        {
            RoutedOutcome::Wrote(ClusterOutcome::Kv(outcome)) => Ok(outcome),
            other => Err(NodeError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn read(&self, query: ReadRequest) -> Result<ReadAnswer, NodeError> {
        match self
            .routed(RoutedRequest::Read(ClusterQuery::Kv(query)))
            .await?
        {
            RoutedOutcome::Read(ClusterAnswer::Kv(answer)) => Ok(answer),
            other => Err(NodeError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The value of `key` (a linearizable read), `None` when it has none.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, NodeError> {
        match self.read(ReadRequest::Get { key: key.into() }).await {
            Ok(ReadAnswer::Value(value)) => Ok(Some(value)),
            Ok(other) => Err(NodeError::Unexpected(format!("{other:?}"))),
            Err(NodeError::Route(RouteError::Request(RequestError::State(
                StateMachineError::KeyNotFound,
            )))) => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), NodeError> {
        self.write(KvOperation::Put {
            key: key.into(),
            value: value.into(),
        })
        .await
        .map(|_| ())
    }

    /// Deletes `key`; whether it had a value.
    pub async fn del(&self, key: impl Into<Vec<u8>>) -> Result<bool, NodeError> {
        match self.write(KvOperation::Delete { key: key.into() }).await? {
            WriteOutcome::Deleted(existed) => Ok(existed),
            other => Err(NodeError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Puts and deletes that apply together or not at all.
    pub async fn batch(&self, operations: Vec<BatchOperation>) -> Result<(), NodeError> {
        self.write(KvOperation::Batch(operations)).await.map(|_| ())
    }

    /// One page of a range; `page.next` reads the rest (the partition's iterator).
    pub async fn range(&self, query: RangeQuery) -> Result<Page, NodeError> {
        match self.read(ReadRequest::Range(query)).await? {
            ReadAnswer::Page(page) => Ok(page),
            other => Err(NodeError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Its replicas (with their members), this node's replica's view, and the leader.
    pub async fn info(&self) -> Result<Option<PartitionPlacement>, NodeError> {
        Ok(self.node.placement(self.name.clone()).await?)
    }
}

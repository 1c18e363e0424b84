//! How a running handler reaches data: its [`HandlerContext`] gives it its own partition
//! ([`HandlerContext::partition`]), any other by name ([`HandlerContext::other_partition`])
//! and other partitions' handlers ([`HandlerContext::request`]). Each access is a future that
//! files the access in the task's mailbox when first polled; the runtime carries it out
//! (locally on the leader, or routed) and files the result, and the future returns it when
//! polled again.
//!
//! Invariants: an access is filed once, with an id unique in its node's runtime, and
//! resolves at most once; the futures never block and never reach the node themselves, so a
//! handler runs only when the runtime polls it, in the runtime's order.

use crate::application::handler::PartitionError;
use crate::ids::NodeId;
use crate::partition::command::{BatchOperation, KvOperation};
use crate::partition::kv_store::{
    KeyBound, Page, Pair, RangeQuery, ReadAnswer, ReadRequest, WriteOutcome,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// Which partition an access is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The handler's own partition: served here, as its leader, or refused.
    Own,
    /// Another partition, by name: routed to its leader like any request.
    Other(String),
}

/// One access a handler asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read {
        target: Target,
        query: ReadRequest,
    },
    Write {
        target: Target,
        operation: KvOperation,
    },
    Info {
        target: Target,
    },
    /// Another partition's handler.
    Request {
        partition: String,
        body: Vec<u8>,
    },
}

impl Access {
    pub(crate) fn writes(&self) -> bool {
        matches!(self, Access::Write { .. } | Access::Request { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AccessAnswer {
    Wrote(WriteOutcome),
    Read(ReadAnswer),
    Info(PartitionInfo),
    Replied(Vec<u8>),
    /// A get found no such key.
    NotFound,
}

pub(crate) type AccessResult = Result<AccessAnswer, PartitionError>;

/// A partition as the node running the handler knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub name: String,
    pub id: u64,
    /// Its replica set in this node's copy of the directory, the ring's owner first.
    pub replicas: Vec<NodeId>,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// For the handler's own partition (this node's replica): its Raft term and indexes.
    pub term: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_index: Option<u64>,
}

/// An access filed by a task, for the runtime to carry out.
#[derive(Debug)]
pub(crate) struct Filed {
    pub(crate) task: u64,
    pub(crate) access_id: u64,
    pub(crate) access: Access,
}

/// What a node's runtime and its tasks' futures share.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    next_access_id: u64,
    pub(crate) filed: Vec<Filed>,
    pub(crate) results: BTreeMap<u64, AccessResult>,
    pub(crate) now_micros: u64,
}

pub(crate) type SharedMailbox = Rc<RefCell<Mailbox>>;

/// The future of one access.
struct AccessFuture {
    mailbox: SharedMailbox,
    task: u64,
    access: Option<Access>,
    access_id: Option<u64>,
}

impl Future for AccessFuture {
    type Output = AccessResult;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<AccessResult> {
        let this = self.get_mut();
        let mut mailbox = this.mailbox.borrow_mut();
        match this.access_id {
            None => {
                let Some(access) = this.access.take() else {
                    return Poll::Ready(Err(PartitionError::Failed(
                        "an access polled after it resolved".into(),
                    )));
                };
                mailbox.next_access_id += 1;
                let access_id = mailbox.next_access_id;
                this.access_id = Some(access_id);
                mailbox.filed.push(Filed {
                    task: this.task,
                    access_id,
                    access,
                });
                Poll::Pending
            }
            Some(access_id) => match mailbox.results.remove(&access_id) {
                Some(result) => Poll::Ready(result),
                None => Poll::Pending,
            },
        }
    }
}

/// What a handler is given with its request.
#[derive(Clone)]
pub struct HandlerContext {
    mailbox: SharedMailbox,
    task: u64,
    partition: String,
}

impl std::fmt::Debug for HandlerContext {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HandlerContext")
            .field("task", &self.task)
            .field("partition", &self.partition)
            .finish()
    }
}

impl HandlerContext {
    pub(crate) fn new(mailbox: SharedMailbox, task: u64, partition: String) -> Self {
        Self {
            mailbox,
            task,
            partition,
        }
    }

    async fn access(&self, access: Access) -> AccessResult {
        AccessFuture {
            mailbox: Rc::clone(&self.mailbox),
            task: self.task,
            access: Some(access),
            access_id: None,
        }
        .await
    }

    /// The handler's own partition, read and written here on its leader.
    pub fn partition(&self) -> PartitionAccess {
        PartitionAccess {
            context: self.clone(),
            target: Target::Own,
        }
    }

    /// Another partition by name, reached like any request (routed to its leader; created
    /// when the name is new).
    pub fn other_partition(&self, name: &str) -> PartitionAccess {
        let target = if name == self.partition {
            Target::Own
        } else {
            Target::Other(name.to_string())
        };
        PartitionAccess {
            context: self.clone(),
            target,
        }
    }

    /// Sends `body` to the handler of partition `name` (wherever it leads) and returns its
    /// reply. A handler that runs one request at a time must not wait for itself.
    pub async fn request(&self, name: &str, body: Vec<u8>) -> Result<Vec<u8>, PartitionError> {
        let access = Access::Request {
            partition: name.to_string(),
            body,
        };
        match self.access(access).await? {
            AccessAnswer::Replied(reply) => Ok(reply),
            other => Err(unexpected(&other)),
        }
    }

    /// The node's clock, as of when the runtime last polled the handler (microseconds).
    pub fn now_micros(&self) -> u64 {
        self.mailbox.borrow().now_micros
    }

    /// The name of the partition the request is for.
    pub fn partition_name(&self) -> &str {
        &self.partition
    }
}

fn unexpected(answer: &AccessAnswer) -> PartitionError {
    PartitionError::Failed(format!(
        "an access got an answer of another kind: {answer:?}"
    ))
}

/// A partition as a handler reaches it. Reads are linearizable; a write returns once it
/// committed through Raft and applied.
#[derive(Clone, Debug)]
pub struct PartitionAccess {
    context: HandlerContext,
    target: Target,
}

impl PartitionAccess {
    async fn read(&self, query: ReadRequest) -> Result<ReadAnswer, PartitionError> {
        let access = Access::Read {
            target: self.target.clone(),
            query,
        };
        match self.context.access(access).await? {
            AccessAnswer::Read(answer) => Ok(answer),
            other => Err(unexpected(&other)),
        }
    }

    async fn write(&self, operation: KvOperation) -> Result<WriteOutcome, PartitionError> {
        let access = Access::Write {
            target: self.target.clone(),
            operation,
        };
        match self.context.access(access).await? {
            AccessAnswer::Wrote(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    /// The value of `key`, or `None` when it has none.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, PartitionError> {
        let access = Access::Read {
            target: self.target.clone(),
            query: ReadRequest::Get { key: key.into() },
        };
        match self.context.access(access).await? {
            AccessAnswer::Read(ReadAnswer::Value(value)) => Ok(Some(value)),
            AccessAnswer::NotFound => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), PartitionError> {
        self.write(KvOperation::Put {
            key: key.into(),
            value: value.into(),
        })
        .await
        .map(|_| ())
    }

    /// Deletes `key`; whether it had a value.
    pub async fn del(&self, key: impl Into<Vec<u8>>) -> Result<bool, PartitionError> {
        match self.write(KvOperation::Delete { key: key.into() }).await? {
            WriteOutcome::Deleted(existed) => Ok(existed),
            other => Err(PartitionError::Failed(format!(
                "a delete answered {other:?}"
            ))),
        }
    }

    /// Puts and deletes that apply together or not at all.
    pub async fn batch(&self, operations: Vec<BatchOperation>) -> Result<(), PartitionError> {
        self.write(KvOperation::Batch(operations)).await.map(|_| ())
    }

    /// One page of a range (see [`RangeQuery`]); `page.next` reads the rest.
    pub async fn range(&self, query: RangeQuery) -> Result<Page, PartitionError> {
        match self.read(ReadRequest::Range(query)).await? {
            ReadAnswer::Page(page) => Ok(page),
            other => Err(PartitionError::Failed(format!(
                "a range answered {other:?}"
            ))),
        }
    }

    /// The pairs with keys in `[start, end)` (`None`: unbounded), in key order, at most
    /// `limit`, read page by page (each page linearizable on its own).
    pub async fn entries(
        &self,
        start: Option<Vec<u8>>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Pair>, PartitionError> {
        let mut query = Some(RangeQuery {
            start: start.map_or(KeyBound::Unbounded, KeyBound::Included),
            end: end.map_or(KeyBound::Unbounded, KeyBound::Excluded),
            limit,
            reverse: false,
        });
        let mut pairs = Vec::new();
        while let Some(next) = query.take() {
            let page = self.range(next).await?;
            pairs.extend(page.pairs);
            query = page.next;
        }
        Ok(pairs)
    }

    /// How many keys it holds, and their bytes with their values'.
    pub async fn size(&self) -> Result<(u64, u64), PartitionError> {
        match self.read(ReadRequest::Size).await? {
            ReadAnswer::Size { keys, bytes } => Ok((keys, bytes)),
            other => Err(PartitionError::Failed(format!("a size answered {other:?}"))),
        }
    }

    /// Its replicas, leader, and (for the handler's own partition) Raft term and indexes.
    pub async fn info(&self) -> Result<PartitionInfo, PartitionError> {
        let access = Access::Info {
            target: self.target.clone(),
        };
        match self.context.access(access).await? {
            AccessAnswer::Info(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }
}

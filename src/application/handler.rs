//! What an application implements: a [`Handler`] turns a request for a partition into a reply.
//! It runs on the partition's leader, on the node's own executor (see `runtime`), and reaches
//! its partition and the others through the [`HandlerContext`] it is given.
//!
//! Invariants: a handler never sees a write succeed before it committed through Raft, and
//! every read it makes is linearizable (the context's accesses keep both); what a handler
//! declares about itself ([`Handler::idempotent`], [`Handler::one_at_a_time`]) is what the
//! node relies on to retry it or to keep its requests of one partition apart.

use crate::application::context::HandlerContext;
use std::future::Future;
use std::pin::Pin;

/// What a handler's `handle` returns: a future the node's executor drives. It need not be
/// `Send`: it runs on the node's thread only.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, HandlerError>>>>;

/// A request as its handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerRequest {
    /// The partition's name, as the caller gave it.
    pub partition: String,
    pub body: Vec<u8>,
    /// When the caller stops waiting, on this node's clock (microseconds); the node drops
    /// the handler then. [`HandlerContext::now_micros`] reads the same clock.
    pub deadline_micros: u64,
}

/// An application's request handler. One instance serves every partition of a node; state
/// belongs in the partitions (a handler's memory is not replicated).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: HandlerRequest, context: HandlerContext) -> HandlerFuture;

    /// Running a request twice has the effect of running it once. Only then is a request
    /// whose partition changed leader mid-request run again at the new leader; otherwise,
    /// once it wrote, its caller is told the outcome is unknown.
    fn idempotent(&self) -> bool {
        false
    }

    /// Requests of one partition run one at a time on its leader, in the order they arrived,
    /// so a handler may read, decide and write without another request in between (its
    /// partition's data can still change through the plain key-value path).
    fn one_at_a_time(&self) -> bool {
        false
    }
}

/// Why an access to a partition failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// This node stopped leading the handler's partition (or a newer term began) while the
    /// handler ran: its reads and writes there fail from then on.
    #[error("this node no longer leads partition {partition:?}: its leader changed while the handler ran")]
    NotLeader { partition: String },
    /// A write was proposed but its fate is not known (it may apply later).
    #[error("no answer in time: the write may or may not have been applied")]
    OutcomeUnknown,
    /// The access itself is wrong (an empty key, a value over the limit, a bad name).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Another partition's handler refused the request ([`HandlerContext::request`]); its
    /// message.
    #[error("another partition's handler refused: {0}")]
    Refused(String),
    /// Anything else: no leader reachable, a store out of service, the node overloaded.
    #[error("{0}")]
    Failed(String),
}

/// Why a handler did not reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The handler's own refusal: its caller gets the message as it is.
    #[error("{0}")]
    Refused(String),
    /// An access failed and the handler passed the failure on (`?`).
    #[error(transparent)]
    Partition(#[from] PartitionError),
}

impl HandlerError {
    pub fn refused(message: impl Into<String>) -> Self {
        HandlerError::Refused(message.into())
    }
}

/// A handler made of a function (or closure) returning a future, with its declarations.
pub struct FnHandler<F> {
    function: F,
    idempotent: bool,
    one_at_a_time: bool,
}

impl<F> std::fmt::Debug for FnHandler<F> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FnHandler")
            .field("idempotent", &self.idempotent)
            .field("one_at_a_time", &self.one_at_a_time)
            .finish()
    }
}

/// Makes a handler of `function`: `handler_fn(|request, context| async move { ... })`.
pub fn handler_fn<F, Reply>(function: F) -> FnHandler<F>
where
    F: Fn(HandlerRequest, HandlerContext) -> Reply + Send + Sync + 'static,
    Reply: Future<Output = Result<Vec<u8>, HandlerError>> + 'static,
{
    FnHandler {
        function,
        idempotent: false,
        one_at_a_time: false,
    }
}

impl<F> FnHandler<F> {
    /// Declares the handler idempotent (see [`Handler::idempotent`]).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Declares that its requests of one partition run one at a time (see
    /// [`Handler::one_at_a_time`]).
    pub fn one_at_a_time(mut self) -> Self {
        self.one_at_a_time = true;
        self
    }
}

impl<F, Reply> Handler for FnHandler<F>
where
    F: Fn(HandlerRequest, HandlerContext) -> Reply + Send + Sync + 'static,
    Reply: Future<Output = Result<Vec<u8>, HandlerError>> + 'static,
{
    fn handle(&self, request: HandlerRequest, context: HandlerContext) -> HandlerFuture {
        Box::pin((self.function)(request, context))
    }

    fn idempotent(&self) -> bool {
        self.idempotent
    }

    fn one_at_a_time(&self) -> bool {
        self.one_at_a_time
    }
}

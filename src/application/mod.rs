//! The application server: request handlers that run on a partition's leader, next to its
//! data. An application implements [`Handler`] (or makes one with [`handler_fn`]); the node
//! routes each request for a partition to its leader, where the runtime (`runtime`) runs the
//! handler on the node's own deterministic executor, so the same handler runs seed for seed
//! inside the simulator. The built-in handlers (`builtin`) are what `borough start
//! --handler` offers.
//!
//! Invariants: see `runtime` (where a handler runs, and what its caller is told) and
//! `context` (how its accesses resolve).

pub mod builtin;
pub mod context;
pub mod handler;
pub mod runtime;
#[cfg(test)]
mod tests;

pub use context::{HandlerContext, PartitionAccess, PartitionInfo};
pub use handler::{
    handler_fn, FnHandler, Handler, HandlerError, HandlerFuture, HandlerRequest, PartitionError,
};
pub use runtime::{HandlerCounters, HandlerPlantedBug, HandlerRuntime, HandlerRuntimeConfig};

//! The request handlers a `borough` binary offers (`borough start --handler NAME`): the
//! built-in ones and an application's own ([`HandlerRegistry`]), and how a handler's panic is
//! contained in the production shell: the process exits on any other panic
//! (`fail_fast`), but not on one raised while a handler runs, which fails only its request.
//!
//! Invariant: the "a handler runs" flag is set exactly while a handler's code runs on this
//! thread (making, polling or dropping its future), and cleared on the way out, unwinding
//! included.

use crate::application::builtin::{builtin_handler, BUILTIN_HANDLERS};
use crate::application::{Handler, HandlerContext, HandlerFuture, HandlerRequest};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

thread_local! {
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is running a handler's code now (the panic hook asks).
pub fn in_handler() -> bool {
    IN_HANDLER.with(Cell::get)
}

/// Sets the flag for its lifetime.
struct HandlerRuns {
    was: bool,
}

impl HandlerRuns {
    fn enter() -> Self {
        Self {
            was: IN_HANDLER.with(|flag| flag.replace(true)),
        }
    }
}

impl Drop for HandlerRuns {
    fn drop(&mut self) {
        let was = self.was;
        IN_HANDLER.with(|flag| flag.set(was));
    }
}

/// A handler whose code runs with the flag set.
struct Contained {
    inner: Arc<dyn Handler>,
}

struct ContainedFuture {
    inner: Option<HandlerFuture>,
}

impl Future for ContainedFuture {
    type Output = <HandlerFuture as Future>::Output;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let _runs = HandlerRuns::enter();
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll(context),
            None => Poll::Pending,
        }
    }
}

impl Drop for ContainedFuture {
    fn drop(&mut self) {
        let inner = self.inner.take();
        let _runs = HandlerRuns::enter();
        drop(inner);
    }
}

impl Handler for Contained {
    fn handle(&self, request: HandlerRequest, context: HandlerContext) -> HandlerFuture {
        let inner = {
            let _runs = HandlerRuns::enter();
            self.inner.handle(request, context)
        };
        Box::pin(ContainedFuture { inner: Some(inner) })
    }

    fn idempotent(&self) -> bool {
        self.inner.idempotent()
    }

    fn one_at_a_time(&self) -> bool {
        self.inner.one_at_a_time()
    }
}

/// The handlers a binary offers, by name.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_list()
            .entries(self.handlers.keys())
            .finish()
    }
}

impl HandlerRegistry {
    /// The built-in handlers (`echo`, `kv`).
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        for name in BUILTIN_HANDLERS {
            if let Some(handler) = builtin_handler(name) {
                registry.handlers.insert((*name).to_string(), handler);
            }
        }
        registry
    }

    /// Adds (or replaces) the handler called `name`.
    pub fn with(mut self, name: &str, handler: impl Handler) -> Self {
        self.handlers.insert(name.to_string(), Arc::new(handler));
        self
    }

    pub fn names(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    /// The handler called `name`, its panics contained, or why there is none.
    pub fn contained(&self, name: &str) -> Result<Arc<dyn Handler>, String> {
        let inner = self.handlers.get(name).ok_or_else(|| {
            format!(
                "no request handler called {name:?} (this binary offers: {})",
                self.names().join(", ")
            )
        })?;
        Ok(Arc::new(Contained {
            inner: Arc::clone(inner),
        }))
    }
}

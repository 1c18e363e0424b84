//! The `borough` binary: the command line (`borough::cli`) with the built-in request
//! handlers on offer.

use borough::production::handlers::HandlerRegistry;
use std::process::ExitCode;

// A node allocates and frees many small buffers per request (frames, pages, bodies); the
// system allocator spent about a seventh of a node's time on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    borough::cli::main_with(HandlerRegistry::builtin())
}

//! `borough-ledger`: the `borough` command line with the ledger's handler on offer
//! (`borough-ledger start --handler ledger`), besides the built-in ones.

use borough::production::handlers::HandlerRegistry;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    borough::cli::main_with(
        HandlerRegistry::builtin().with("ledger", borough_ledger::ledger_handler()),
    )
}

//! Modules of the `borough` binary that are not the library's: what only the command line
//! needs. Like the production shell, they may touch the OS (processes, sockets, wall time).

pub mod bench;
pub mod kv;

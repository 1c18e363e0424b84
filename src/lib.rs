//! Borough: a partitioned, replicated database and application server, built simulation-first.
//!
//! The core (everything but `production`) is sans-IO and deterministic: it reaches time, the
//! network, the disk and randomness only through the traits in `seams`, so the simulator in
//! `borough-sim` runs the very code production runs and replays any seed bit for bit.

pub mod application;
pub mod cli;
pub mod coordinator;
pub mod directory;
pub mod events;
pub mod feeds;
pub mod ids;
pub mod maps;
pub mod node;
pub mod partition;
pub mod placement;
pub mod production;
pub mod raft;
pub mod random;
pub mod seams;
pub mod storage;
pub mod wire;

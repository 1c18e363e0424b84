//! Borough's deterministic simulator: the real node code, a seeded virtual world around it,
//! fault injectors, and checkers that judge the outcome.
//!
//! One seed determines a run: the cluster shape and knobs drawn from the scenario's ranges, the
//! fault schedule, the workload, every latency and every disk fault. `runner::run_seed` runs
//! one; the `borough-sim` binary runs, replays and sweeps them.

pub mod checkers;
pub mod clock;
pub mod disk;
pub mod faults;
pub mod network;
pub mod raft_bench;
pub mod run_config;
pub mod runner;
pub mod scenario;
pub mod state_machine;
pub mod trace;
pub mod workload;
pub mod world;

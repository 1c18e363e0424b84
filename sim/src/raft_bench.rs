//! The Raft benchmark: one simulated 3-node cluster hosting N partitions of 3 replicas, a kv
//! write load spread over them, no faults. It reports simulated seconds per wall second, Raft
//! messages and network envelopes per committed entry, syncs per committed entry, and the
//! memory a quiet group costs (heap growth per group replica, with the simulated disks'
//! in-memory file images left out, since a real disk holds those).

use crate::runner::run_world;
use crate::scenario::Scenario;
use crate::world::World;
use std::path::Path;

/// What one benchmark run measured.
#[derive(Clone, Debug)]
pub struct RaftBenchFigures {
    pub groups: u64,
    pub simulated_seconds: f64,
    pub wall_seconds: f64,
    pub committed_entries: u64,
    pub raft_messages: u64,
    pub envelopes: u64,
    pub syncs: u64,
    pub nodes: u64,
    /// Live heap bytes after the run, less what the simulated disks hold.
    pub heap_bytes: u64,
}

impl RaftBenchFigures {
    pub fn line(&self) -> String {
        let per_entry = |count: u64| count as f64 / self.committed_entries.max(1) as f64;
        format!(
            "groups={} sim_s={:.1} wall_s={:.2} ratio={:.0}x committed_entries={} raft_messages_per_entry={:.2} envelopes_per_entry={:.2} syncs_per_entry_per_node={:.3} resident_mib={:.1}",
            self.groups,
            self.simulated_seconds,
            self.wall_seconds,
            self.simulated_seconds / self.wall_seconds,
            self.committed_entries,
            per_entry(self.raft_messages),
            per_entry(self.envelopes),
            per_entry(self.syncs) / self.nodes.max(1) as f64,
            self.heap_bytes as f64 / (1024.0 * 1024.0)
        )
    }
}

/// The benchmark's scenario for `groups` partitions and `writes_per_s` writes across them.
pub fn scenario(groups: u64, writes_per_s: u64, seconds: u64) -> Scenario {
    let rate_section = if writes_per_s == 0 {
        String::new()
    } else {
        format!(
            "[[workload]]\nkind = \"kv\"\nrate_per_s = {writes_per_s}\nkeys_per_partition = 16\nread_ratio = 0.0\ndelete_ratio = 0.0\nclient_timeout_ms = 2000\n"
        )
    };
    let text = format!(
        "[scenario]\ntier = \"slow\"\nseeds = 1\nexpect = \"pass\"\nsafety_duration_ms = {}\nliveness_duration_ms = 2000\n\n[cluster]\nregions = 1\nzones_per_region = 3\nnodes_per_zone = 1\n\n[knobs]\n\n[partitions]\ncount = {groups}\nreplicas = 3\n\n{rate_section}",
        seconds * 1000
    );
    Scenario::parse(Path::new("raft-bench.toml"), &text).expect("the bench scenario is valid")
}

/// Runs the benchmark once; `heap_bytes` reads the process's live heap (the caller's
/// allocator counts it).
pub fn run(
    groups: u64,
    writes_per_s: u64,
    seconds: u64,
    heap_bytes: impl Fn() -> u64,
) -> RaftBenchFigures {
    let scenario = scenario(groups, writes_per_s, seconds);
    let (world, wall_seconds): (World, f64) = run_world(&scenario, 1);
    let raft_messages = world.raft_messages_sent;
    let envelopes = world.raft_envelopes_sent;
    let disk_bytes: u64 = world.nodes.iter().map(|node| node.disk.held_bytes()).sum();
    RaftBenchFigures {
        groups,
        simulated_seconds: world.now_micros() as f64 / 1e6,
        wall_seconds,
        committed_entries: world.raft.committed_entries(),
        raft_messages,
        envelopes,
        syncs: world.nodes.iter().map(|node| node.disk.stats().syncs).sum(),
        nodes: world.nodes.len() as u64,
        heap_bytes: heap_bytes().saturating_sub(disk_bytes),
    }
}

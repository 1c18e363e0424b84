//! Running scenarios: one seed, one seed twice (the determinism check), and sweeps.

use crate::checkers::atomicity::{KvRequest, KvResponse};
use crate::checkers::Checker;
use crate::run_config::RunConfig;
use crate::scenario::{Expectation, Scenario, ScenarioSection};
use crate::workload::PutOutcome;
use crate::world::{Violation, World};
use std::fmt::Write as _;

/// What one run did; everything but `wall_seconds` is a function of the seed.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub scenario: String,
    pub seed: u64,
    pub shape: String,
    pub trace_hash: u64,
    pub trace_records: u64,
    pub simulated_seconds: f64,
    pub wall_seconds: f64,
    pub puts: usize,
    pub acknowledged: usize,
    pub failed: usize,
    pub indeterminate: usize,
    pub refused: u64,
    pub messages_delivered: u64,
    pub steps: u64,
    pub fault_occurrences: u64,
    pub intervals_closed: usize,
    pub syncs: u64,
    /// The kv workload: operations in the checked history, of which answered, indeterminate;
    /// refused on the spot; entries applied and elections won across the cluster.
    pub kv_operations: usize,
    pub kv_answered: usize,
    pub kv_indeterminate: usize,
    pub kv_refused: u64,
    /// Of the checked operations: batches, and range reads answered (of which cut short by
    /// their limit).
    pub kv_batches: usize,
    pub kv_ranges: usize,
    /// The counter workload: calls made, of which answered with a value; refused on the spot.
    pub counter_calls: usize,
    pub counter_answered: usize,
    pub counter_refused: u64,
    pub ledger_calls: usize,
    pub ledger_replied: usize,
    pub ledger_statements: usize,
    pub ledger_refused: u64,
    pub map_writes: u64,
    pub map_changes: usize,
    /// Feed events subscribers took, their connections, and the `Ready`s and resumes
    /// among their first events.
    pub feed_events: u64,
    pub feed_connections: u64,
    pub feed_readies: u64,
    pub feed_resumes: u64,
    pub feed_local_reads: u64,
    pub feed_relay_reads: u64,
    pub kv_ranges_at_limit: usize,
    pub raft_applies: u64,
    pub raft_elections: u64,
    pub linearizability_unknown_keys: u64,
    /// What the Raft faults did: snapshots installed (all nodes, all lives), crashes while
    /// a snapshot was arriving, membership changes accepted, rolling restarts, bits rotted,
    /// and nodes whose partition store was found damaged at the end.
    pub snapshots_installed: u64,
    pub snapshot_crashes: u64,
    pub vote_crashes: u64,
    pub first_commit_crashes: u64,
    pub timer_stalls: u64,
    pub membership_changes: u64,
    pub rolling_restarts: u64,
    pub bits_rotted: u64,
    pub damaged_replicas: usize,
    /// Runs with `[membership]`: what joined, drained and died, and what clients saw.
    pub membership: Option<String>,
    /// The garbage peer: frames sent, refused (by the codec or the node), and replays.
    pub garbage_sent: u64,
    pub garbage_refused: u64,
    pub garbage_replays: u64,
    /// A canary's run stopped at the first violation from its named checker.
    pub stopped_when_caught: bool,
    pub violations: Vec<Violation>,
}

impl RunSummary {
    pub fn passed_checks(&self) -> bool {
        self.violations.is_empty()
    }

    /// Whether the run met its scenario's expectation: no violation, or for a canary one
    /// from the checker it names (`caught_by`); another checker firing is not a catch. A run
    /// that did not replay identically, panicked or ran out of budget meets none: a canary's
    /// failure is only evidence if it is reproducible and came from a checker.
    pub fn met(&self, scenario: &ScenarioSection) -> bool {
        if self
            .violations
            .iter()
            .any(|violation| violation.checker.judges_the_run())
        {
            return false;
        }
        match scenario.expect {
            Expectation::Pass => self.passed_checks(),
            Expectation::Fail => self
                .violations
                .iter()
                .any(|violation| Some(violation.checker) == scenario.caught_by),
        }
    }

    /// A stable, human-readable digest of the run (no wall time), for snapshots and review.
    pub fn report(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "scenario: {} seed: {}", self.scenario, self.seed);
        let _ = writeln!(text, "shape: {}", self.shape);
        let _ = writeln!(
            text,
            "trace: {:016x} ({} records)",
            self.trace_hash, self.trace_records
        );
        let _ = writeln!(text, "simulated_s: {:.3}", self.simulated_seconds);
        let _ = writeln!(
            text,
            "puts: {} acknowledged: {} failed: {} indeterminate: {} refused: {}",
            self.puts, self.acknowledged, self.failed, self.indeterminate, self.refused
        );
        let _ = writeln!(
            text,
            "messages: {} steps: {} faults: {} intervals_closed: {} syncs: {}",
            self.messages_delivered,
            self.steps,
            self.fault_occurrences,
            self.intervals_closed,
            self.syncs
        );
        // Only runs with partitions print this line, so event-store snapshots are unchanged.
        if self.kv_operations > 0 || self.raft_applies > 0 {
            let _ = writeln!(
                text,
                "kv: {} checked ({} answered, {} indeterminate; {} batches, {} range reads, {} at their limit) refused: {} applies: {} elections: {} unknown_keys: {}",
                self.kv_operations,
                self.kv_answered,
                self.kv_indeterminate,
                self.kv_batches,
                self.kv_ranges,
                self.kv_ranges_at_limit,
                self.kv_refused,
                self.raft_applies,
                self.raft_elections,
                self.linearizability_unknown_keys
            );
            if self.map_writes > 0 {
                let _ = writeln!(
                    text,
                    "maps: {} writes, {} changes committed; feeds: {} events over {} connections ({} readies, {} resumes; {} local reads, {} relayed)",
                    self.map_writes,
                    self.map_changes,
                    self.feed_events,
                    self.feed_connections,
                    self.feed_readies,
                    self.feed_resumes,
                    self.feed_local_reads,
                    self.feed_relay_reads
                );
            }
            if self.ledger_calls > 0 {
                let _ = writeln!(
                    text,
                    "ledger: {} calls ({} replied, {} statements checked) refused: {}",
                    self.ledger_calls,
                    self.ledger_replied,
                    self.ledger_statements,
                    self.ledger_refused
                );
            }
            if self.counter_calls > 0 {
                let _ = writeln!(
                    text,
                    "counter: {} calls ({} answered with a value) refused: {}",
                    self.counter_calls, self.counter_answered, self.counter_refused
                );
            }
            let _ = writeln!(
                text,
                "raft faults: snapshots_installed: {} snapshot_crashes: {} vote_crashes: {} first_commit_crashes: {} timer_stalls: {} membership_changes: {} rolling_restarts: {} bits_rotted: {} damaged_replicas: {}",
                self.snapshots_installed,
                self.snapshot_crashes,
                self.vote_crashes,
                self.first_commit_crashes,
                self.timer_stalls,
                self.membership_changes,
                self.rolling_restarts,
                self.bits_rotted,
                self.damaged_replicas
            );
        }
        if let Some(membership) = &self.membership {
            let _ = writeln!(text, "membership: {membership}");
        }
        // Only runs with a garbage peer print this line, so other snapshots are unchanged.
        if self.garbage_sent > 0 {
            let _ = writeln!(
                text,
                "garbage peer: sent: {} refused: {} replays: {}",
                self.garbage_sent, self.garbage_refused, self.garbage_replays
            );
        }
        if self.stopped_when_caught {
            let _ = writeln!(text, "stopped: caught by the checker the canary names");
        }
        for violation in &self.violations {
            let _ = writeln!(
                text,
                "violation: [{}] {}",
                violation.checker, violation.message
            );
        }
        text
    }
}

/// Runs one seed and hands back the world as it ended, with the wall seconds it took.
#[allow(clippy::disallowed_methods)] // wall time is measured for the report, never fed to the run
pub fn run_world(scenario: &Scenario, seed: u64) -> (World, f64) {
    let started = std::time::Instant::now();
    let mut world = World::new(RunConfig::draw(scenario, seed));
    world.run();
    (world, started.elapsed().as_secs_f64())
}

#[allow(clippy::disallowed_methods)] // wall time is measured for the report, never fed to the run
pub fn run_seed(scenario: &Scenario, seed: u64) -> RunSummary {
    let started = std::time::Instant::now();
    let config = RunConfig::draw(scenario, seed);
    let shape = config.describe();
    let mut world = World::new(config);
    world.run();
    let history = &world.history;
    RunSummary {
        scenario: scenario.name.clone(),
        seed,
        shape,
        trace_hash: world.trace.hash(),
        trace_records: world.trace.records(),
        simulated_seconds: world.now_micros() as f64 / 1e6,
        wall_seconds: started.elapsed().as_secs_f64(),
        puts: history.puts.len(),
        acknowledged: history.count(|outcome| matches!(outcome, PutOutcome::Acknowledged { .. })),
        failed: history.count(|outcome| matches!(outcome, PutOutcome::Failed { .. })),
        indeterminate: history
            .count(|outcome| matches!(outcome, PutOutcome::Indeterminate | PutOutcome::Pending)),
        refused: history.refused,
        messages_delivered: world.messages_delivered,
        steps: world.steps,
        fault_occurrences: world.fault_state.occurrences,
        intervals_closed: world.interval_closures.len(),
        syncs: world.nodes.iter().map(|node| node.disk.stats().syncs).sum(),
        kv_operations: world.kv_history.records.len(),
        kv_answered: world
            .kv_history
            .count(|record| record.call.response != KvResponse::Indeterminate),
        kv_indeterminate: world
            .kv_history
            .count(|record| record.call.response == KvResponse::Indeterminate),
        kv_refused: world.kv_history.refused,
        counter_calls: world.counter_history.calls.len(),
        counter_answered: world.counter_history.count(|call| {
            matches!(
                call.response,
                crate::workload::counter::CounterResponse::Value { .. }
            )
        }),
        counter_refused: world.counter_history.refused,
        ledger_calls: world.ledger_history.calls.len(),
        ledger_replied: world.ledger_history.count(|call| {
            matches!(
                call.response,
                crate::workload::ledger::LedgerResponse::Replied { .. }
            )
        }),
        ledger_statements: world.ledger_history.count(|call| {
            call.request == borough_ledger::LedgerRequest::Statement
                && matches!(
                    call.response,
                    crate::workload::ledger::LedgerResponse::Replied { .. }
                )
        }),
        ledger_refused: world.ledger_history.refused,
        map_writes: world.maps_history.writes_sent,
        map_changes: world.maps_history.changes_committed(),
        feed_events: world
            .maps_history
            .subscribers
            .iter()
            .map(|s| s.events)
            .sum(),
        feed_connections: world
            .maps_history
            .subscribers
            .iter()
            .map(|s| s.connections)
            .sum(),
        feed_readies: world
            .maps_history
            .subscribers
            .iter()
            .map(|s| s.readies)
            .sum(),
        feed_resumes: world
            .maps_history
            .subscribers
            .iter()
            .map(|s| s.resumes)
            .sum(),
        feed_local_reads: world.maps_history.local_reads_at_end,
        feed_relay_reads: world.maps_history.relay_reads_at_end,
        kv_batches: world
            .kv_history
            .count(|record| matches!(record.call.request, KvRequest::Batch(_))),
        kv_ranges: world
            .kv_history
            .count(|record| matches!(record.call.response, KvResponse::Pairs(_))),
        kv_ranges_at_limit: world.kv_history.count(|record| {
            matches!(
                (&record.call.request, &record.call.response),
                (KvRequest::Range { limit, .. }, KvResponse::Pairs(pairs)) if pairs.len() == *limit
            )
        }),
        raft_applies: world.raft.applies,
        raft_elections: world.raft.elections_won,
        linearizability_unknown_keys: world.linearizability_unknown_keys,
        snapshots_installed: world.snapshots_installed(),
        snapshot_crashes: world.fault_state.snapshot_crashes,
        vote_crashes: world.fault_state.vote_crashes,
        timer_stalls: world.fault_state.timer_stalls,
        first_commit_crashes: world.fault_state.first_commit_crashes,
        membership_changes: world.fault_state.membership_changes,
        rolling_restarts: world.fault_state.rolling_restarts,
        bits_rotted: world.fault_state.bits_rotted,
        damaged_replicas: world
            .nodes
            .iter()
            .filter(|node| {
                node.node()
                    .is_some_and(|node| node.partitions_damaged().is_some())
            })
            .count(),
        membership: world
            .config
            .membership
            .as_ref()
            .map(|_| membership_line(&world)),
        garbage_sent: world.garbage.sent,
        garbage_refused: world.garbage.refused,
        garbage_replays: world.garbage.replays,
        stopped_when_caught: world.stopped_when_caught,
        violations: world.violations.clone(),
    }
}

/// The membership figures of a run: joins, drains (and how long they took), kills, the
/// moves the directory applied, and the slowest kv request.
fn membership_line(world: &World) -> String {
    let state = &world.nodes_state;
    let mut drains = state.drain_micros.clone();
    drains.sort_unstable();
    let drain_ms = |quantile: f64| {
        if drains.is_empty() {
            return 0;
        }
        let index = ((drains.len() - 1) as f64 * quantile).round() as usize;
        drains[index] / 1000
    };
    // Every applied move raised its partition's generation by one.
    let moves: u64 = crate::checkers::placement::freshest_directory(world)
        .map(|directory| {
            directory
                .partitions()
                .map(|entry| entry.generation - 1)
                .sum()
        })
        .unwrap_or(0);
    let (answered, slowest_micros) = crate::checkers::placement::request_figures(world);
    format!(
        "joins: {} drains: {} (p50 {} ms, max {} ms) kills: {} moves: {moves} kv_answered: {answered} slowest_kv_ms: {}",
        state.joins,
        state.drains,
        drain_ms(0.5),
        drain_ms(1.0),
        state.kills,
        slowest_micros / 1000
    )
}

/// Runs the seed twice; the second summary's violations gain one if the traces differ.
pub fn run_seed_twice(scenario: &Scenario, seed: u64) -> RunSummary {
    let first = run_seed(scenario, seed);
    let mut second = run_seed(scenario, seed);
    if first.trace_hash != second.trace_hash {
        second.violations.push(Violation {
            at_micros: 0,
            checker: Checker::Determinism,
            message: format!(
                "the same seed produced two traces: {:016x} then {:016x}",
                first.trace_hash, second.trace_hash
            ),
        });
    }
    second
}

/// Runs the seed (twice when asked, the determinism check) and turns a panic into a failed
/// run with a `panic` violation, so a sweep reports it with its replay command and goes on.
pub fn run_guarded(scenario: &Scenario, seed: u64, twice: bool) -> RunSummary {
    guarded(scenario, seed, || {
        if twice {
            run_seed_twice(scenario, seed)
        } else {
            run_seed(scenario, seed)
        }
    })
}

fn guarded(scenario: &Scenario, seed: u64, run: impl FnOnce() -> RunSummary) -> RunSummary {
    // A world that panicked is dropped whole; nothing of it is looked at again.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic without a message)".to_string());
        RunSummary {
            scenario: scenario.name.clone(),
            seed,
            violations: vec![Violation {
                at_micros: 0,
                checker: Checker::Panic,
                message: format!("the run panicked: {message}"),
            }],
            ..RunSummary::default()
        }
    })
}

/// The command that replays a run.
pub fn replay_command(scenario: &Scenario, seed: u64) -> String {
    format!(
        "cargo run --release -p borough-sim -- run {} --seed {seed}",
        scenario.path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::RunBudget;
    use std::path::Path;

    fn scenario(expect: &str) -> Scenario {
        let text = format!(
            r#"
[scenario]
tier = "fast"
seeds = 1
expect = "{expect}"
safety_duration_ms = 1000
liveness_duration_ms = 2000

[cluster]
regions = 1
zones_per_region = 3
nodes_per_zone = 1

[knobs]

[[workload]]
kind = "events"
rate_per_s = 100

[checks]
liveness_bound_ms = 0
"#
        );
        Scenario::parse(Path::new("budget.toml"), &text).unwrap()
    }

    #[test]
    fn a_run_past_its_budget_fails_with_the_reason() {
        let scenario = scenario("pass");
        let mut world = World::new(RunConfig::draw(&scenario, 1));
        world.budget = RunBudget {
            events_max: 500,
            ..RunBudget::default()
        };
        world.run();
        let budget: Vec<_> = world
            .violations
            .iter()
            .filter(|violation| violation.checker == Checker::RunBudget)
            .collect();
        assert_eq!(budget.len(), 1, "{:?}", world.violations);
        assert!(budget[0].message.contains("more than 500 events"));
        assert!(world.steps <= 501, "the run stopped at its budget");
    }

    #[test]
    fn a_panic_is_a_failed_run_that_names_it() {
        let scenario = scenario("pass");
        let summary = guarded(&scenario, 9, || panic!("a planted panic"));
        assert_eq!(summary.seed, 9);
        assert_eq!(summary.violations[0].checker, Checker::Panic);
        assert!(summary.violations[0].message.contains("a planted panic"));
        assert!(!summary.met(&scenario.file.scenario));
    }

    #[test]
    fn a_canary_counts_only_its_own_checker() {
        let mut canary = scenario("pass").file.scenario;
        canary.expect = Expectation::Fail;
        canary.caught_by = Some(Checker::Linearizability);
        let caught_by = |checker| RunSummary {
            violations: vec![Violation {
                at_micros: 0,
                checker,
                message: String::new(),
            }],
            ..RunSummary::default()
        };
        assert!(caught_by(Checker::Linearizability).met(&canary));
        assert!(!caught_by(Checker::RaftLiveness).met(&canary));
        assert!(!RunSummary::default().met(&canary));
    }
}

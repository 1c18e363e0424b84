//! The simulation suite: every `fast`-tier scenario for its `seeds` count, the first seed run
//! twice (the determinism check), and snapshots of a few pinned runs so a behaviour change
//! shows up in review. Runs under `cargo test --features sim`.
#![cfg(feature = "sim")]

use borough_sim::runner::{replay_command, run_seed, run_seed_twice, run_world};
use borough_sim::scenario::{find_scenarios, Scenario, Tier};
use std::path::{Path, PathBuf};

fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

/// The seeds `cargo test` runs for a scenario: `0..seeds`, then its pinned regressions.
fn seeds_of(scenario: &Scenario) -> Vec<u64> {
    let mut seeds: Vec<u64> = (0..scenario.file.scenario.seeds).collect();
    seeds.extend(&scenario.file.scenario.pinned_seeds);
    seeds
}

/// Runs the scenario's seeds (the first one twice when `first_twice`) and describes every run
/// that missed its expectation, with the command that replays it.
fn missed_runs(scenario: &Scenario, first_twice: bool) -> Vec<String> {
    let mut missed = Vec::new();
    for (index, seed) in seeds_of(scenario).into_iter().enumerate() {
        let summary = if first_twice && index == 0 {
            run_seed_twice(scenario, seed)
        } else {
            run_seed(scenario, seed)
        };
        if !summary.met(&scenario.file.scenario) {
            missed.push(format!(
                "{}replay: {}",
                summary.report(),
                replay_command(scenario, seed)
            ));
        }
    }
    missed
}

fn run_fast_scenario(name: &str) {
    let scenario = Scenario::load(&scenario_path(name)).expect("scenario parses");
    assert_eq!(
        scenario.file.scenario.tier,
        Tier::Fast,
        "{name} is not a fast-tier scenario"
    );
    let missed = missed_runs(&scenario, true);
    assert!(
        missed.is_empty(),
        "{name} missed its expectation ({:?}):\n{}",
        scenario.file.scenario.expect,
        missed.join("\n")
    );
}

macro_rules! fast_scenarios {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                run_fast_scenario($file);
            }
        )*

        const LISTED: &[&str] = &[$($file),*];
    };
}

fast_scenarios! {
    no_faults => "no-faults",
    crash_restart => "crash-restart",
    minority_partition => "minority-partition",
    zone_outage => "zone-outage",
    region_outage => "region-outage",
    disk_corruption => "disk-corruption",
    clock_skew => "clock-skew",
    interval_rotation => "interval-rotation",
    swarm => "swarm",
    canary_ack_before_durable => "canary-ack-before-durable",
    garbage_peer => "garbage-peer",
    canary_trust_any_sender => "canary-trust-any-sender",
    canary_quorum_of_one => "canary-quorum-of-one",
    canary_forget_key_reservation => "canary-forget-key-reservation",
    canary_replicate_only_to_commit_level => "canary-replicate-only-to-commit-level",
    canary_ignore_zone_spread => "canary-ignore-zone-spread",
    canary_repair_timer_not_advanced => "canary-repair-timer-not-advanced",
    canary_repair_reuses_first_event => "canary-repair-reuses-first-event",
    canary_forget_replayed_interval_counts => "canary-forget-replayed-interval-counts",
    canary_answer_only_past_required => "canary-answer-only-past-required",
    canary_torn_tails_are_damage => "canary-torn-tails-are-damage",
    raft_no_faults => "raft/raft-no-faults",
    raft_crash_restart => "raft/raft-crash-restart",
    raft_partitions => "raft/raft-partitions",
    raft_flaky_links => "raft/raft-flaky-links",
    raft_clock_skew => "raft/raft-clock-skew",
    raft_rolling_restarts => "raft/raft-rolling-restarts",
    raft_majority_partitions => "raft/raft-majority-partitions",
    raft_zone_outage => "raft/raft-zone-outage",
    raft_disk_faults => "raft/raft-disk-faults",
    raft_membership_changes => "raft/raft-membership-changes",
    raft_snapshot_crash => "raft/raft-snapshot-crash",
    raft_swarm => "raft/raft-swarm",
    raft_counter => "raft/raft-counter",
    raft_restart_storm => "raft/raft-restart-storm",
    raft_canary_vote_without_log_check => "raft/raft-canary-vote-without-log-check",
    raft_canary_forget_vote => "raft/raft-canary-forget-vote",
    raft_vote_crashes => "raft/raft-vote-crashes",
    raft_canary_commit_previous_term => "raft/raft-canary-commit-previous-term",
    raft_canary_ack_before_sync => "raft/raft-canary-ack-before-sync",
    raft_leader_churn => "raft/raft-leader-churn",
    raft_canary_read_without_quorum => "raft/raft-canary-read-without-quorum",
    raft_canary_apply_copies => "raft/raft-canary-apply-copies",
    raft_canary_vote_without_log_check_default_knobs =>
        "raft/raft-canary-vote-without-log-check-default-knobs",
    raft_canary_forget_vote_default_knobs => "raft/raft-canary-forget-vote-default-knobs",
    raft_canary_commit_previous_term_default_knobs =>
        "raft/raft-canary-commit-previous-term-default-knobs",
    raft_canary_ack_before_sync_default_knobs =>
        "raft/raft-canary-ack-before-sync-default-knobs",
    raft_canary_split_batches => "raft/raft-canary-split-batches",
    raft_canary_elect_with_half_votes => "raft/raft-canary-elect-with-half-votes",
    raft_canary_incomplete_leader => "raft/raft-canary-incomplete-leader",
    raft_canary_elect_with_half_votes_default_knobs =>
        "raft/raft-canary-elect-with-half-votes-default-knobs",
    raft_canary_skip_log_sync => "raft/raft-canary-skip-log-sync",
    raft_canary_ignore_append_rejections => "raft/raft-canary-ignore-append-rejections",
    raft_canary_poison_on_missing_key => "raft/raft-canary-poison-on-missing-key",
    raft_canary_stamp_local_requests_with_term =>
        "raft/raft-canary-stamp-local-requests-with-term",
    named_no_faults => "named/named-no-faults",
    named_faults => "named/named-faults",
    named_canary_read_without_quorum => "named/named-canary-read-without-quorum",
    handlers_ledger_faults => "handlers/ledger-faults",
    handlers_ledger_canary_read_follower_without_read_index =>
        "handlers/ledger-canary-read-follower-without-read-index",
    maps_feeds_faults => "maps/feeds-faults",
    maps_feeds_compaction => "maps/feeds-compaction",
    maps_feeds_canary_skip_delta_on_resume => "maps/feeds-canary-skip-delta-on-resume",
    membership_growth_and_shrink => "membership/growth-and-shrink",
    membership_nemesis => "membership/membership-nemesis",
    membership_canary_promote_before_caught_up =>
        "membership/membership-canary-promote-before-caught-up",
    membership_canary_leave_joint_before_commit =>
        "membership/membership-canary-leave-joint-before-commit",
}

/// Every pinned regression in `scenarios/regressions/`, whatever its tier.
#[test]
fn regressions() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join("regressions");
    let mut missed = Vec::new();
    for path in find_scenarios(&folder).expect("regressions folder") {
        let scenario = Scenario::load(&path).expect("scenario parses");
        assert!(
            !scenario.file.scenario.pinned_seeds.is_empty(),
            "{} pins no seed",
            path.display()
        );
        missed.extend(missed_runs(&scenario, false));
    }
    assert!(
        missed.is_empty(),
        "regressions came back:\n{}",
        missed.join("\n")
    );
}

#[test]
fn every_fast_scenario_has_a_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let regressions = root.join("regressions");
    for path in find_scenarios(&root).expect("scenarios folder") {
        let scenario = Scenario::load(&path).expect("scenario parses");
        if scenario.file.scenario.tier == Tier::Fast && !path.starts_with(&regressions) {
            let relative = path
                .strip_prefix(&root)
                .expect("under the scenarios folder")
                .with_extension("");
            let name = relative.to_string_lossy().replace('\\', "/");
            assert!(
                LISTED.contains(&name.as_str()),
                "{} is fast-tier but tests/scenarios.rs does not run it",
                path.display()
            );
        }
    }
}

/// Pinned runs: the summary, trace hash included, is part of the review.
#[test]
fn pinned_run_summaries() {
    for (name, seed) in [
        ("no-faults", 1),
        ("crash-restart", 2),
        ("swarm", 3),
        ("raft/raft-swarm", 1),
        ("raft/raft-counter", 1),
        ("named/named-faults", 1),
    ] {
        let scenario = Scenario::load(&scenario_path(name)).expect("scenario parses");
        let summary = run_seed(&scenario, seed);
        let pinned = name.replace('/', "-");
        insta::assert_snapshot!(format!("{pinned}-seed{seed}"), summary.report());
    }
}

/// The at-most-once session table stays bounded: over a run of well over a hundred restarts
/// (each a new proposer session), every partition on every node remembers at most one
/// session per proposer node. Before sessions were incarnations that retire their
/// predecessors, every restart added one for good.
#[test]
fn sessions_stay_bounded_over_a_hundred_restarts() {
    let scenario = Scenario::load(&scenario_path("raft/raft-restart-storm")).expect("parses");
    let (world, _) = run_world(&scenario, 0);
    assert!(
        world.violations.is_empty(),
        "{}",
        replay_command(&scenario, 0)
    );
    let restarts: u64 = world.nodes.iter().map(|node| node.incarnation).sum();
    assert!(restarts >= 100, "only {restarts} restarts");
    let nodes = world.nodes.len();
    let mut partitions_seen = 0;
    for sim_node in &world.nodes {
        let Some(host) = sim_node.node().and_then(|node| node.partitions()) else {
            continue;
        };
        for partition in host.partitions() {
            let sessions = host.session_count(partition).expect("a partition here");
            assert!(
                (1..=nodes).contains(&sessions),
                "{partition} on {} remembers {sessions} sessions after {restarts} restarts",
                sim_node.id
            );
            partitions_seen += 1;
        }
    }
    assert!(
        partitions_seen > 0,
        "no partition was up at the end to look at"
    );
}

/// The Raft fault scenarios do what they are named after, not only pass: over a few seeds
/// snapshots arrive and crashes hit them, replicas move, nodes restart in turn, and rotted
/// Raft logs are refused.
#[test]
fn raft_fault_scenarios_exercise_their_faults() {
    let totals = |name: &str| {
        let scenario = Scenario::load(&scenario_path(name)).expect("scenario parses");
        (0..3)
            .map(|seed| run_seed(&scenario, seed))
            .fold([0u64; 8], |mut totals, summary| {
                totals[0] += summary.snapshots_installed;
                totals[1] += summary.snapshot_crashes;
                totals[2] += summary.membership_changes;
                totals[3] += summary.rolling_restarts;
                totals[4] += summary.damaged_replicas as u64;
                totals[5] += summary.vote_crashes;
                totals[6] += summary.first_commit_crashes;
                totals[7] += summary.timer_stalls;
                totals
            })
    };
    let snapshot = totals("raft/raft-snapshot-crash");
    assert!(
        snapshot[0] > 0 && snapshot[1] > 0,
        "snapshots: {snapshot:?}"
    );
    let membership = totals("raft/raft-membership-changes");
    assert!(membership[2] >= 10, "membership: {membership:?}");
    let rolling = totals("raft/raft-rolling-restarts");
    assert!(rolling[3] >= 9, "rolling restarts: {rolling:?}");
    let disk = totals("raft/raft-disk-faults");
    assert!(disk[4] > 0, "damaged replicas refused: {disk:?}");
    let votes = totals("raft/raft-vote-crashes");
    assert!(votes[5] >= 3, "crashes right after a vote: {votes:?}");
    let churn = totals("raft/raft-leader-churn");
    assert!(
        churn[6] >= 30,
        "crashes at a new leader's first commit: {churn:?}"
    );
    let partitions = totals("raft/raft-partitions");
    assert!(
        partitions[7] >= 3,
        "cut-off leaders with stalled timers: {partitions:?}"
    );
}

/// The kv workload's batches and range reads are really in the checked histories: batches,
/// range reads with pairs in them, and range reads cut short by their limit, in every Raft
/// scenario with the default mix.
#[test]
fn kv_histories_hold_batches_and_range_reads() {
    for name in [
        "raft/raft-no-faults",
        "raft/raft-partitions",
        "raft/raft-swarm",
        "named/named-no-faults",
    ] {
        let scenario = Scenario::load(&scenario_path(name)).expect("scenario parses");
        let summary = run_seed(&scenario, 1);
        assert!(
            summary.kv_batches >= 20 && summary.kv_ranges >= 20 && summary.kv_ranges_at_limit >= 5,
            "{name}: {} batches, {} range reads, {} at their limit",
            summary.kv_batches,
            summary.kv_ranges,
            summary.kv_ranges_at_limit
        );
    }
}

/// A canary's run ends at its named checker's first violation (that catch is all it exists
/// to show); a run that must pass is never cut short.
#[test]
fn canary_runs_stop_at_their_catch_and_others_run_to_the_end() {
    let canary =
        Scenario::load(&scenario_path("raft/raft-canary-apply-copies")).expect("scenario parses");
    let caught = run_seed(&canary, 0);
    assert!(caught.met(&canary.file.scenario), "{}", caught.report());
    assert!(caught.stopped_when_caught, "{}", caught.report());
    let caught_by = canary
        .file
        .scenario
        .caught_by
        .expect("a canary names its checker");
    assert_eq!(
        caught.violations.last().map(|violation| violation.checker),
        Some(caught_by),
        "the run stops at the step of its first catch: {}",
        caught.report()
    );
    let passing = Scenario::load(&scenario_path("raft/raft-no-faults")).expect("scenario parses");
    let full = run_seed(&passing, 0);
    assert!(!full.stopped_when_caught);
    assert!(full.passed_checks(), "{}", full.report());
}

/// The interval checks are not vacuous: the rotation scenario is long enough that intervals
/// close on every seed it runs (a run that closes none would check nothing).
#[test]
fn interval_rotation_closes_intervals_on_every_seed() {
    let scenario = Scenario::load(&scenario_path("interval-rotation")).expect("scenario parses");
    for seed in seeds_of(&scenario) {
        let summary = run_seed(&scenario, seed);
        assert!(
            summary.intervals_closed >= 3,
            "seed {seed}: {} intervals closed",
            summary.intervals_closed
        );
    }
}

//! `borough-sim`: run, replay, sweep and benchmark scenarios.
//!
//! - `borough-sim run SCENARIO.toml --seed N [--twice]` prints `seed=N` first and a
//!   `result: pass|fail ...` line last; a failure is preceded by its violations and the one
//!   command that replays it.
//! - `borough-sim sweep PATH --seeds A..B [--twice] [--jobs N]` runs every scenario under PATH
//!   for each seed (one run per core at once) and keeps a debug log only for runs that missed
//!   their expectation (replayed with logs on); `--twice` also fails a seed whose two runs
//!   leave different traces.
//! - `borough-sim bench SCENARIO.toml --seeds A..B` reports simulated seconds per wall second.
//! - `borough-sim check-bench --operations 10000,100000 --keys 1,50` times the
//!   linearizability checker on generated histories, correct and with one read corrupted.
//! - `borough-sim raft-bench --groups 1,100,10000` benchmarks Raft partitions: speed,
//!   messages and syncs per committed entry, and the memory of a quiet group.

use borough_sim::runner::{replay_command, run_guarded, run_seed, RunSummary};
use borough_sim::scenario::{find_scenarios, Expectation, Scenario};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

// A simulation allocates and frees a small buffer per message, record and disk write; the
// system allocator spent a fifth of a swarm run on that. Allocation never steers behaviour
// (no address-ordered collections), so traces are unchanged. `Cap` (with no cap) counts the
// live heap bytes, for raft-bench's exact memory figure.
#[global_allocator]
static ALLOCATOR: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

/// Live heap bytes of this process (as asked for, before the allocator's rounding).
fn heap_bytes() -> u64 {
    ALLOCATOR.allocated() as u64
}

#[derive(Parser)]
#[command(
    name = "borough-sim",
    version,
    about = "Borough's deterministic simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario for one seed.
    Run {
        scenario: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Run the seed twice and fail if the two trace hashes differ.
        #[arg(long)]
        twice: bool,
    },
    /// Run every scenario under PATH (a file or a folder) for each seed in A..B.
    Sweep {
        path: PathBuf,
        #[arg(long, value_parser = parse_seeds, default_value = "0..100")]
        seeds: Range<u64>,
        /// Where logs of runs that missed their expectation go.
        #[arg(long, default_value = "sim-failures")]
        failures: PathBuf,
        /// Run every seed twice and count a run whose two traces differ as missed.
        #[arg(long)]
        twice: bool,
        /// Runs at once (each run is single-threaded and deterministic on its own); the
        /// default is one per core.
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Benchmark Raft partitions: for each group count, a 3-node cluster under a write load,
    /// then the same cluster idle (for the memory of a quiet group).
    RaftBench {
        /// Group counts, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
        groups: Vec<u64>,
        /// Simulated seconds of load per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Writes per second across all groups.
        #[arg(long, default_value_t = 2000)]
        writes_per_s: u64,
    },
    /// Time the linearizability checker on generated histories (8 clients, overlapping
    /// operations, 1% crashed or timed out): each correct one, then with one read corrupted.
    CheckBench {
        /// History lengths, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        operations: Vec<usize>,
        /// Key counts, comma separated (1 is the hardest: every operation conflicts).
        #[arg(long, value_delimiter = ',', default_value = "1,50")]
        keys: Vec<u64>,
    },
    /// Measure simulated seconds per wall second.
    Bench {
        scenario: PathBuf,
        #[arg(long, value_parser = parse_seeds, default_value = "0..3")]
        seeds: Range<u64>,
    },
}

fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or("seeds are written A..B (B excluded)")?;
    let start: u64 = start.parse().map_err(|_| format!("bad seed {start:?}"))?;
    let end: u64 = end.parse().map_err(|_| format!("bad seed {end:?}"))?;
    if start >= end {
        return Err(format!("empty seed range {text}"));
    }
    Ok(start..end)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            scenario,
            seed,
            twice,
        } => run(&scenario, seed, twice),
        Command::Sweep {
            path,
            seeds,
            failures,
            twice,
            jobs,
        } => sweep(&path, seeds, &failures, twice, jobs),
        Command::Bench { scenario, seeds } => bench(&scenario, seeds),
        Command::RaftBench {
            groups,
            seconds,
            writes_per_s,
        } => raft_bench(&groups, seconds, writes_per_s),
        Command::CheckBench { operations, keys } => check_bench(&operations, &keys),
    }
}

#[allow(clippy::disallowed_methods)] // wall time is what this measures
fn check_bench(operation_counts: &[usize], key_counts: &[u64]) -> ExitCode {
    use borough_sim::checkers::linearizability::{
        check_history, corrupt_a_read, generate_register_history, CheckOutcome,
        DEFAULT_MAX_STEPS_PER_KEY,
    };
    let mut wrong = false;
    for &operations in operation_counts {
        for &keys in key_counts {
            let mut history = generate_register_history(42, 8, keys, operations);
            let started = std::time::Instant::now();
            let correct = check_history(&history, DEFAULT_MAX_STEPS_PER_KEY);
            let correct_seconds = started.elapsed().as_secs_f64();
            corrupt_a_read(&mut history);
            let started = std::time::Instant::now();
            let broken = check_history(&history, DEFAULT_MAX_STEPS_PER_KEY);
            let broken_seconds = started.elapsed().as_secs_f64();
            let verdict = |outcome: &CheckOutcome| match outcome {
                CheckOutcome::Linearizable => "linearizable",
                CheckOutcome::NotLinearizable { .. } => "not_linearizable",
                CheckOutcome::Unknown { .. } => "unknown (search budget spent)",
            };
            // Wrong is a false verdict; giving up on a hard key is honest, and reported.
            wrong |= correct != CheckOutcome::Linearizable || broken == CheckOutcome::Linearizable;
            println!(
                "operations={operations} keys={keys} correct: {} in {correct_seconds:.3} s; one read corrupted: {} in {broken_seconds:.3} s",
                verdict(&correct),
                verdict(&broken),
            );
        }
    }
    if wrong {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Resident memory of this process, from `/proc/self/statm` (0 where it does not exist).
fn resident_bytes() -> u64 {
    const PAGE_BYTES: u64 = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE_BYTES)
}

fn raft_bench(groups: &[u64], seconds: u64, writes_per_s: u64) -> ExitCode {
    use borough_sim::raft_bench;
    // Memory first: the same clusters with no load, every group quiet by the end.
    for &count in groups {
        let idle = raft_bench::measure_quiet_memory(count, seconds, heap_bytes, resident_bytes);
        println!("{}", idle.line());
    }
    for &count in groups {
        let loaded = raft_bench::run(count, writes_per_s, seconds);
        println!("load: {}", loaded.line());
    }
    ExitCode::SUCCESS
}

fn load(path: &Path) -> Result<Scenario, ExitCode> {
    Scenario::load(path).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })
}

fn init_logs(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(borough_sim::trace::SimulatedTime)
        .with_writer(std::io::stderr)
        .init();
}

fn result_line(summary: &RunSummary, met: bool) -> String {
    format!(
        "result: {} seed={} trace={:016x} unknown_keys={} sim_s={:.3} wall_s={:.3}",
        if met { "pass" } else { "fail" },
        summary.seed,
        summary.trace_hash,
        summary.linearizability_unknown_keys,
        summary.simulated_seconds,
        summary.wall_seconds
    )
}

fn run(path: &Path, seed: u64, twice: bool) -> ExitCode {
    println!("seed={seed}");
    let scenario = match load(path) {
        Ok(scenario) => scenario,
        Err(code) => return code,
    };
    init_logs("warn");
    let summary = run_guarded(&scenario, seed, twice);
    print!("{}", summary.report());
    let met = summary.met(&scenario.file.scenario);
    if !met {
        match (
            scenario.file.scenario.expect,
            scenario.file.scenario.caught_by,
        ) {
            (Expectation::Fail, Some(checker)) => {
                println!("the scenario expects {checker} to catch its planted bug, and it did not")
            }
            _ => println!("the run broke a guarantee (violations above)"),
        }
        println!("replay: {}", replay_command(&scenario, seed));
    }
    println!("{}", result_line(&summary, met));
    if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sweep(
    path: &Path,
    seeds: Range<u64>,
    failures: &Path,
    twice: bool,
    jobs: Option<usize>,
) -> ExitCode {
    let paths = match find_scenarios(path) {
        Ok(paths) if !paths.is_empty() => paths,
        Ok(_) => {
            eprintln!("error: no scenario files under {}", path.display());
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("error: {}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut scenarios = Vec::new();
    for path in &paths {
        match load(path) {
            Ok(scenario) => scenarios.push(scenario),
            Err(code) => return code,
        }
    }
    let runs: Vec<(usize, u64)> = (0..scenarios.len())
        .flat_map(|scenario| seeds.clone().map(move |seed| (scenario, seed)))
        .collect();
    let progress = ProgressBar::new(runs.len() as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} runs, {msg} [{elapsed_precise} < {eta}]",
        )
        .expect("a valid template"),
    );
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, runs.len().max(1));
    let next_run = std::sync::atomic::AtomicUsize::new(0);
    // Runs share nothing: each builds its own world from (scenario, seed), so running them
    // side by side changes no trace.
    #[allow(clippy::disallowed_methods)]
    let (passed, failed, unknown_keys) = std::thread::scope(|scope| {
        // Per run: the line describing it if it missed, and its unknown linearizability keys.
        let (results, received) = std::sync::mpsc::channel::<(Option<String>, u64)>();
        for _ in 0..jobs {
            let results = results.clone();
            let (runs, scenarios, next_run) = (&runs, &scenarios, &next_run);
            #[allow(clippy::disallowed_methods)] // see the scope above
            scope.spawn(move || loop {
                let run = next_run.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(scenario_index, seed)) = runs.get(run) else {
                    break;
                };
                let scenario = &scenarios[scenario_index];
                let summary = run_guarded(scenario, seed, twice);
                let missed = (!summary.met(&scenario.file.scenario))
                    .then(|| failure_line(scenario, seed, &summary, failures));
                if results
                    .send((missed, summary.linearizability_unknown_keys))
                    .is_err()
                {
                    break;
                }
            });
        }
        drop(results);
        let (mut passed, mut failed, mut unknown_keys) = (0u64, 0u64, 0u64);
        for (missed, unknown) in received {
            unknown_keys += unknown;
            match missed {
                None => passed += 1,
                Some(line) => {
                    failed += 1;
                    // A hidden bar (no terminal) drops println; failures must always show.
                    if progress.is_hidden() {
                        println!("{line}");
                    } else {
                        progress.println(line);
                    }
                }
            }
            progress.set_message(format!("{failed} failed"));
            progress.inc(1);
        }
        (passed, failed, unknown_keys)
    });
    progress.finish_and_clear();
    println!(
        "swept: {} runs, {passed} passed, {failed} failed, linearizability unknown keys: {unknown_keys}",
        passed + failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What a sweep prints for a run that missed its expectation, after keeping its log.
fn failure_line(scenario: &Scenario, seed: u64, summary: &RunSummary, failures: &Path) -> String {
    let log = keep_failure_log(scenario, seed, failures);
    let first = summary
        .violations
        .first()
        .map(|violation| format!("[{}] {}", violation.checker, violation.message));
    let why = match (scenario.file.scenario.caught_by, first) {
        (Some(checker), first) => format!(
            "{checker} did not catch the planted bug{}",
            first.map_or(String::new(), |first| format!(
                " (first violation: {first})"
            ))
        ),
        (None, first) => first.unwrap_or_default(),
    };
    format!(
        "FAIL {} seed={seed}: {why}\n  replay: {}\n  log: {log}",
        scenario.name,
        replay_command(scenario, seed)
    )
}

/// Replays the failing seed with debug logs into a file: the run is deterministic, so the
/// replay is the failure, and passing runs never pay for logging.
fn keep_failure_log(scenario: &Scenario, seed: u64, failures: &Path) -> String {
    let path = failures.join(format!("{}-seed{seed}.log", scenario.name));
    if let Err(error) = std::fs::create_dir_all(failures) {
        return format!("(not kept: {error})");
    }
    let file = match std::fs::File::create(&path) {
        Ok(file) => file,
        Err(error) => return format!("(not kept: {error})"),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("debug"))
        .with_timer(borough_sim::trace::SimulatedTime)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .finish();
    let summary =
        tracing::subscriber::with_default(subscriber, || run_guarded(scenario, seed, false));
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, summary.report().as_bytes()));
    path.display().to_string()
}

fn bench(path: &Path, seeds: Range<u64>) -> ExitCode {
    let scenario = match load(path) {
        Ok(scenario) => scenario,
        Err(code) => return code,
    };
    let (mut simulated, mut wall, mut puts, mut messages) = (0.0, 0.0, 0usize, 0u64);
    for seed in seeds.clone() {
        let summary = run_seed(&scenario, seed);
        println!(
            "seed={seed} {} sim_s={:.1} wall_s={:.2} ratio={:.0}x puts={} messages={} syncs={}{}",
            summary.shape,
            summary.simulated_seconds,
            summary.wall_seconds,
            summary.simulated_seconds / summary.wall_seconds,
            summary.puts,
            summary.messages_delivered,
            summary.syncs,
            if summary.met(&scenario.file.scenario) {
                ""
            } else {
                " (missed its expectation)"
            }
        );
        simulated += summary.simulated_seconds;
        wall += summary.wall_seconds;
        puts += summary.puts;
        messages += summary.messages_delivered;
    }
    println!(
        "bench: {} seeds {}..{}: {:.1} simulated s in {:.2} wall s = {:.0}x real time ({} puts, {} messages, {:.0} messages per wall second)",
        scenario.name,
        seeds.start,
        seeds.end,
        simulated,
        wall,
        simulated / wall,
        puts,
        messages,
        messages as f64 / wall
    );
    ExitCode::SUCCESS
}

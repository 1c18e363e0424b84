//! Scenarios as data: the TOML format, its validation, and drawing one run's values from a seed.
//!
//! A value written as a number is fixed; written as `[min, max]` it is drawn from the seed
//! (swarm testing). Knobs and the cluster shape are drawn once per run; a fault's ranges are
//! drawn again at every occurrence. Unknown keys are errors that name the key and the file.
//! The format is documented in `scenarios/README.md`.

use crate::checkers::Checker;
use borough::coordinator::CommitLevel;
use borough::coordinator::PlantedBug;
use borough::events::ConsolidationInterval;
use borough::seams::Rng;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A number, fixed or drawn from an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Drawn<T> {
    Fixed(T),
    Range(T, T),
}

impl Drawn<u64> {
    pub fn draw(&self, rng: &mut dyn Rng) -> u64 {
        match *self {
            Drawn::Fixed(value) => value,
            Drawn::Range(low, high) => rng.in_range(low, high),
        }
    }

    pub fn max(&self) -> u64 {
        match *self {
            Drawn::Fixed(value) | Drawn::Range(_, value) => value,
        }
    }

    pub fn min(&self) -> u64 {
        match *self {
            Drawn::Fixed(value) | Drawn::Range(value, _) => value,
        }
    }
}

impl Drawn<f64> {
    pub fn draw(&self, rng: &mut dyn Rng) -> f64 {
        match *self {
            Drawn::Fixed(value) => value,
            Drawn::Range(low, high) => low + (high - low) * rng.unit(),
        }
    }
}

impl<'de, T> Deserialize<'de> for Drawn<T>
where
    T: Deserialize<'de> + PartialOrd + Copy + fmt::Debug,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            Fixed(T),
            Range(Vec<T>),
        }
        match Raw::<T>::deserialize(deserializer)
            .map_err(|_| de::Error::custom("expected a number or a [min, max] range"))?
        {
            Raw::Fixed(value) => Ok(Drawn::Fixed(value)),
            Raw::Range(values) => match values[..] {
                [low, high] if low <= high => Ok(Drawn::Range(low, high)),
                [low, high] => Err(de::Error::custom(format!(
                    "range [{low:?}, {high:?}] has min > max"
                ))),
                _ => Err(de::Error::custom("a range is written [min, max]")),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Fast,
    Slow,
    Rare,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expectation {
    Pass,
    Fail,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSection {
    pub tier: Tier,
    /// Seeds `cargo test --features sim` runs (0..seeds).
    pub seeds: u64,
    /// Seeds that once failed (regressions): `cargo test` runs them too.
    #[serde(default)]
    pub pinned_seeds: Vec<u64>,
    pub expect: Expectation,
    /// A canary's checker: the one that must catch its planted bug. Another checker firing
    /// does not count, so a canary proves that checker sees the rule its bug breaks.
    #[serde(default)]
    pub caught_by: Option<Checker>,
    /// Faults are injected during this phase.
    pub safety_duration_ms: Drawn<u64>,
    /// Faults are healed; the cluster must converge within this phase.
    pub liveness_duration_ms: Drawn<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub regions: Drawn<u64>,
    pub zones_per_region: Drawn<u64>,
    pub nodes_per_zone: Drawn<u64>,
}

fn default_latency() -> Drawn<u64> {
    Drawn::Range(1, 5)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnobsSection {
    #[serde(default = "default_replication_factor")]
    pub replication_factor: Drawn<u64>,
    #[serde(default = "zero")]
    pub other_zone_replicas: Drawn<u64>,
    #[serde(default = "zero")]
    pub other_region_replicas: Drawn<u64>,
    #[serde(default = "default_replica_timeout")]
    pub replica_timeout_ms: Drawn<u64>,
    #[serde(default = "default_repair_delay")]
    pub repair_delay_ms: Drawn<u64>,
    /// One-way message latency inside a region, drawn per message.
    #[serde(default = "default_latency")]
    pub latency_ms: Drawn<u64>,
    /// Extra one-way latency between regions, drawn per message.
    #[serde(default = "default_cross_region_latency")]
    pub cross_region_latency_ms: Drawn<u64>,
    /// Time from a flush being due to its sync completing, drawn per flush.
    #[serde(default = "default_fsync_latency")]
    pub fsync_latency_ms: Drawn<u64>,
    #[serde(default = "default_interval")]
    pub consolidation_interval: String,
    /// Log records between checkpoints into the embedded engine.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: Drawn<u64>,
    /// A bug planted on purpose: the scenario must then fail.
    #[serde(default)]
    pub planted_bug: Option<String>,
}

fn default_replication_factor() -> Drawn<u64> {
    Drawn::Fixed(3)
}
fn zero() -> Drawn<u64> {
    Drawn::Fixed(0)
}
fn default_replica_timeout() -> Drawn<u64> {
    Drawn::Fixed(500)
}
fn default_repair_delay() -> Drawn<u64> {
    Drawn::Fixed(2_000)
}
fn default_cross_region_latency() -> Drawn<u64> {
    Drawn::Range(20, 60)
}
fn default_fsync_latency() -> Drawn<u64> {
    Drawn::Range(1, 4)
}
fn default_interval() -> String {
    "PT5M".to_string()
}
fn default_checkpoint_records() -> Drawn<u64> {
    Drawn::Fixed(2048)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSection {
    /// `events`: clients putting events at random nodes; `kv`: clients reading and writing
    /// keys of the Raft partitions through random nodes.
    pub kind: String,
    pub rate_per_s: Drawn<u64>,
    #[serde(default = "default_event_bytes")]
    pub event_bytes: Drawn<u64>,
    #[serde(default = "every_commit_level")]
    pub commit_levels: Vec<String>,
    #[serde(default = "default_client_timeout")]
    pub client_timeout_ms: Drawn<u64>,
    /// `kv`: distinct keys per partition (few keys, many conflicts).
    #[serde(default = "default_keys_per_partition")]
    pub keys_per_partition: Drawn<u64>,
    /// `kv`: the share of operations that are reads.
    #[serde(default = "default_read_ratio")]
    pub read_ratio: Drawn<f64>,
    /// `kv`: the share of writes that are deletes.
    #[serde(default = "default_delete_ratio")]
    pub delete_ratio: Drawn<f64>,
    /// `kv`: the share of writes that are batches (2 to 4 keys, applied together).
    #[serde(default = "default_batch_ratio")]
    pub batch_ratio: Drawn<f64>,
    /// `kv`: the share of reads that are range reads (random bounds, limit and direction).
    #[serde(default = "default_range_ratio")]
    pub range_ratio: Drawn<f64>,
    /// `ledger`: a canary's bug planted in the nodes' handler runtime.
    #[serde(default)]
    pub handler_planted_bug: Option<String>,
    /// `maps`: feed subscribers per map, each on a random node, leaving and resuming.
    #[serde(default = "default_subscribers_per_map")]
    pub subscribers_per_map: Drawn<u64>,
    /// `maps`: a canary's bug planted in the nodes' feed hub.
    #[serde(default)]
    pub feed_planted_bug: Option<String>,
    /// `maps`: how long a subscriber that left stays away before it resumes (long enough,
    /// and the changes it missed are compacted away: it gets the whole map again).
    #[serde(default = "default_subscriber_away_ms")]
    pub subscriber_away_ms: Drawn<u64>,
}

fn default_subscriber_away_ms() -> Drawn<u64> {
    Drawn::Range(20, 400)
}

fn default_subscribers_per_map() -> Drawn<u64> {
    Drawn::Fixed(3)
}

fn default_keys_per_partition() -> Drawn<u64> {
    Drawn::Fixed(8)
}
fn default_read_ratio() -> Drawn<f64> {
    Drawn::Fixed(0.5)
}
fn default_delete_ratio() -> Drawn<f64> {
    Drawn::Fixed(0.1)
}
fn default_batch_ratio() -> Drawn<f64> {
    Drawn::Fixed(0.2)
}
fn default_range_ratio() -> Drawn<f64> {
    Drawn::Fixed(0.3)
}

/// Raft partitions on every node: how many, how many replicas each, and the Raft knobs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsSection {
    pub count: Drawn<u64>,
    /// Voters per partition, placed on consecutive nodes.
    #[serde(default = "default_partition_replicas")]
    pub replicas: Drawn<u64>,
    #[serde(default = "default_tick")]
    pub tick_ms: Drawn<u64>,
    #[serde(default = "default_election_timeout_ticks")]
    pub election_timeout_ticks: Drawn<u64>,
    #[serde(default = "default_heartbeat_interval_ticks")]
    pub heartbeat_interval_ticks: Drawn<u64>,
    /// Applied entries between checkpoints of the state machines (and log compaction).
    #[serde(default = "default_partition_checkpoint")]
    pub checkpoint_applied_entries: Drawn<u64>,
    /// Entries a log keeps behind its last checkpoint, for followers catching up after a
    /// snapshot.
    #[serde(default = "default_log_catch_up_entries")]
    pub log_catch_up_entries: Drawn<u64>,
    #[serde(default = "yes")]
    pub pre_vote: bool,
    #[serde(default = "yes")]
    pub check_quorum: bool,
    /// Idle ticks before a group goes quiet (0: never).
    #[serde(default = "default_quiesce_after_ticks")]
    pub quiesce_after_ticks: Drawn<u64>,
    /// Bytes per InstallSnapshot chunk (the Raft default when absent); small chunks make a
    /// transfer take many round trips, so crashes land in the middle of them.
    #[serde(default)]
    pub snapshot_chunk_bytes: Option<Drawn<u64>>,
    /// Entries per append message (the Raft default when absent); with a few, a follower
    /// catching up gets an old leader's entries apart from the new leader's own, which is
    /// where committing an old-term entry by counting shows (Raft Figure 8).
    #[serde(default)]
    pub append_entries_max: Option<Drawn<u64>>,
    /// Appends in flight to one follower (the Raft default when absent); with one, catching a
    /// follower up takes a round trip per message, long enough for faults to land in.
    #[serde(default)]
    pub inflight_max: Option<Drawn<u64>>,
    /// A Raft bug planted on purpose: `vote_without_log_check`,
    /// `commit_previous_term_by_counting`, `forget_vote_on_restart`,
    /// `read_without_quorum_round`, `elect_with_half_the_votes`, `ignore_append_rejections`,
    /// `stamp_local_requests_with_term`, `leave_joint_before_commit`, `acknowledge_before_sync`,
    /// `apply_command_copies`,
    /// `split_batches`, `skip_log_sync` or `poison_on_missing_key`.
    #[serde(default)]
    pub planted_bug: Option<String>,
    /// Named partitions, as the cluster binary runs them: node 1 founds a cluster, every
    /// other node joins through it, the directory (a system Raft group) places each name on
    /// `replicas` nodes when its first request creates it, and kv clients reach partitions
    /// "partition 0" .. "partition {count - 1}" through any node, which routes to the
    /// leader. Numbered partitions placed by the scenario otherwise.
    #[serde(default)]
    pub named: bool,
}

fn default_partition_replicas() -> Drawn<u64> {
    Drawn::Fixed(3)
}
fn default_tick() -> Drawn<u64> {
    Drawn::Fixed(10)
}
fn default_election_timeout_ticks() -> Drawn<u64> {
    Drawn::Fixed(10)
}
fn default_heartbeat_interval_ticks() -> Drawn<u64> {
    Drawn::Fixed(2)
}
fn default_quiesce_after_ticks() -> Drawn<u64> {
    Drawn::Fixed(40)
}
fn default_partition_checkpoint() -> Drawn<u64> {
    Drawn::Fixed(256)
}
fn default_log_catch_up_entries() -> Drawn<u64> {
    Drawn::Fixed(64)
}

fn default_event_bytes() -> Drawn<u64> {
    Drawn::Range(16, 256)
}
fn every_commit_level() -> Vec<String> {
    vec!["ONE".into(), "QUORUM".into(), "ALL".into()]
}
fn default_client_timeout() -> Drawn<u64> {
    Drawn::Fixed(5_000)
}

/// One fault injector. Which fields apply depends on `kind`; see `scenarios/README.md`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSection {
    pub kind: FaultKind,
    /// Time between occurrences, drawn per occurrence.
    #[serde(default)]
    pub every_ms: Option<Drawn<u64>>,
    /// How long one occurrence lasts, drawn per occurrence.
    #[serde(default)]
    pub duration_ms: Option<Drawn<u64>>,
    /// Crashes: nodes down at once, at most.
    #[serde(default)]
    pub max_nodes: Option<u64>,
    /// Zone and region outages: also cut the power (crash), not only the network.
    #[serde(default)]
    pub power_loss: Option<bool>,
    /// Flaky links and disk faults: a probability per message or operation.
    #[serde(default)]
    pub loss_ratio: Option<Drawn<f64>>,
    #[serde(default)]
    pub duplicate_ratio: Option<Drawn<f64>>,
    /// Flaky links: extra delay, drawn per message, which reorders messages.
    #[serde(default)]
    pub delay_ms: Option<Drawn<u64>>,
    #[serde(default)]
    pub read_corruption_ratio: Option<Drawn<f64>>,
    #[serde(default)]
    pub sync_failure_ratio: Option<Drawn<f64>>,
    /// Clock skew: fixed offset per node and drift in parts per million.
    #[serde(default)]
    pub offset_ms: Option<Drawn<u64>>,
    #[serde(default)]
    pub drift_ppm: Option<Drawn<u64>>,
    /// Clock jumps: size of one jump, forwards or backwards.
    #[serde(default)]
    pub jump_ms: Option<Drawn<u64>>,
    /// Disk faults: how many nodes (chosen at the start) suffer them; every node when absent.
    #[serde(default)]
    pub nodes: Option<u64>,
    /// Rolling restarts: move each Raft leadership off the node before stopping it.
    #[serde(default)]
    pub drain_leaders: Option<bool>,
    /// Leader isolation: the cut-off leader's timers stall while it is cut off (a starved
    /// timer loop), so it goes on believing it leads, and serving its clients, until it hears
    /// of the new term: check-quorum never gets the tick to depose it.
    #[serde(default)]
    pub stall_timers: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Crash,
    Partition,
    OneWayPartition,
    /// Cut the node leading the most Raft partitions off from everyone (both ways).
    IsolateLeader,
    /// Cut the node leading the most Raft partitions off one way: it hears, is not heard.
    OneWayIsolateLeader,
    ZoneOutage,
    RegionOutage,
    FlakyLinks,
    DiskCorruption,
    TornWrites,
    FsyncFailure,
    ClockSkew,
    ClockJump,
    Pause,
    /// Restart the nodes one after another, in id order, each once the previous is back.
    RollingRestart,
    /// Every node still reaches a majority, but no two nodes the same one (nodes in a random
    /// ring, each cut from those farther than its nearest neighbours).
    MajoritiesRing,
    /// Two halves cut from each other but both reach one bridge node.
    Bridge,
    /// Flip one bit of a synced log file of the disk-fault victims, persistently.
    BitRot,
    /// Move one replica of a random Raft partition to another node: add a learner, promote
    /// it, demote a voter, remove it (one step per occurrence).
    MembershipChange,
    /// Power loss of a node that is receiving a Raft snapshot.
    CrashDuringSnapshot,
    /// Power loss of a node in the middle of a group commit: its writes are issued, its
    /// fsync has not returned. Once armed per `every_ms`, the next flush that syncs, on a
    /// node no crash fault holds down, within `max_nodes` (shared with the other crash
    /// faults). What it wrote is lost, or on a disk with `torn_writes` kept, whole or in part
    /// (torn at a sector).
    CrashDuringSync,
    /// Power loss of a node right after it grants a Raft vote (the vote durable, the
    /// candidate still campaigning): once armed per `every_ms`, the next vote granted.
    CrashAfterVote,
    /// Power loss of a new Raft leader the moment it first advances its commit index in its
    /// term: its followers may hold what it committed but not yet its own entries.
    CrashAfterFirstCommit,
    /// A hostile process on the network sends one frame per occurrence: random bytes, copies
    /// of real frames (changed or not), frames in a member's name with a provable violation,
    /// and late replays (see `faults::garbage`).
    GarbagePeer,
}

impl FaultKind {
    /// Faults of the disk, which `nodes` may confine to some nodes.
    pub fn is_disk_fault(self) -> bool {
        matches!(
            self,
            FaultKind::DiskCorruption
                | FaultKind::TornWrites
                | FaultKind::FsyncFailure
                | FaultKind::BitRot
        )
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksSection {
    #[serde(default = "yes")]
    pub no_acknowledged_loss: bool,
    #[serde(default = "yes")]
    pub write_once: bool,
    #[serde(default = "yes")]
    pub replication_factor_restored: bool,
    #[serde(default = "yes")]
    pub placement: bool,
    /// Every put issued this long after healing must succeed.
    #[serde(default = "default_liveness_bound")]
    pub liveness_bound_ms: u64,
    /// Every kv request must succeed (a definite answer), however the cluster moves.
    #[serde(default)]
    pub every_request_succeeds: bool,
    /// And none may take longer than this.
    #[serde(default)]
    pub request_ms_max: Option<u64>,
}

fn yes() -> bool {
    true
}
fn default_liveness_bound() -> u64 {
    5_000
}

impl Default for ChecksSection {
    fn default() -> Self {
        Self {
            no_acknowledged_loss: true,
            write_once: true,
            replication_factor_restored: true,
            placement: true,
            liveness_bound_ms: default_liveness_bound(),
            every_request_succeeds: false,
            request_ms_max: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub scenario: ScenarioSection,
    pub cluster: ClusterSection,
    pub knobs: KnobsSection,
    #[serde(default)]
    pub partitions: Option<PartitionsSection>,
    #[serde(default)]
    pub workload: Vec<WorkloadSection>,
    #[serde(default)]
    pub fault: Vec<FaultSection>,
    #[serde(default)]
    pub checks: ChecksSection,
    #[serde(default)]
    pub membership: Option<MembershipSection>,
}

/// Whole nodes joining and leaving a cluster of named partitions (see `faults::nodes`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipSection {
    /// Nodes running at the start (node 1 founds the cluster); the others wait as spares.
    pub initial_nodes: Drawn<u64>,
    /// Growth: a spare joins at each step while fewer than this many run...
    #[serde(default)]
    pub grow_to: Option<Drawn<u64>>,
    /// ...then members drain, one at a time, until this many remain (node 1 stays).
    #[serde(default)]
    pub shrink_to: Option<Drawn<u64>>,
    /// The nemesis instead: each step joins a spare, drains a member, or kills one for good.
    #[serde(default)]
    pub nemesis: bool,
    /// Time between two steps.
    pub step_every_ms: Drawn<u64>,
    /// How long a member may go unheard before the directory declares it dead.
    #[serde(default = "default_dead_after")]
    pub dead_after_ms: Drawn<u64>,
    /// The fewest active members the nemesis leaves (it drains or kills only above it).
    #[serde(default = "default_members_min")]
    pub members_min: u64,
    /// Partitions moving at once (the placement driver's `moves_max`).
    #[serde(default = "default_moves_max")]
    pub moves_max: Drawn<u64>,
    /// A placement bug planted on purpose: `promote_before_caught_up`.
    #[serde(default)]
    pub planted_bug: Option<String>,
}

fn default_dead_after() -> Drawn<u64> {
    Drawn::Fixed(3000)
}
fn default_members_min() -> u64 {
    3
}
fn default_moves_max() -> Drawn<u64> {
    Drawn::Fixed(8)
}

/// A parsed, validated scenario and where it came from.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub path: PathBuf,
    pub file: ScenarioFile,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.display().to_string(),
            message,
        };
        // toml's message names the unknown key and its line.
        let file: ScenarioFile =
            toml::from_str(text).map_err(|error| invalid(error.to_string()))?;
        validate(&file).map_err(invalid)?;
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".to_string());
        Ok(Self {
            name,
            path: path.to_path_buf(),
            file,
        })
    }
}

fn validate(file: &ScenarioFile) -> Result<(), String> {
    match (file.scenario.expect, file.scenario.caught_by) {
        (Expectation::Fail, None) => {
            return Err(
                "a canary (expect = \"fail\") names the checker that must catch it: caught_by"
                    .into(),
            )
        }
        (Expectation::Fail, Some(checker)) if checker.judges_the_run() => {
            return Err(format!(
                "caught_by = \"{checker}\" judges the run, not the rule a planted bug breaks"
            ))
        }
        (Expectation::Pass, Some(_)) => {
            return Err("caught_by is for canaries (expect = \"fail\") only".into())
        }
        _ => {}
    }
    ConsolidationInterval::parse(&file.knobs.consolidation_interval)
        .map_err(|error| error.to_string())?;
    check_liveness_window(file)?;
    if let Some(bug) = &file.knobs.planted_bug {
        parse_planted_bug(bug)?;
    }
    if let Some(partitions) = &file.partitions {
        if let Some(bug) = &partitions.planted_bug {
            parse_raft_planted_bug(bug)?;
        }
        if partitions.replicas.max() == 0 || partitions.tick_ms.max() == 0 {
            return Err("partitions.replicas and partitions.tick_ms must be at least 1".into());
        }
        if partitions.heartbeat_interval_ticks.max() == 0 {
            return Err("partitions.heartbeat_interval_ticks must be at least 1".into());
        }
        let lowest_election = match partitions.election_timeout_ticks {
            Drawn::Fixed(value) | Drawn::Range(value, _) => value,
        };
        if lowest_election <= partitions.heartbeat_interval_ticks.max() {
            return Err(
                "partitions.election_timeout_ticks must exceed heartbeat_interval_ticks".into(),
            );
        }
    }
    let named = file
        .partitions
        .as_ref()
        .is_some_and(|section| section.named);
    if let Some(membership) = &file.membership {
        if !named {
            return Err(
                "[membership] moves whole nodes of a cluster: it needs named partitions".into(),
            );
        }
        if let Some(bug) = &membership.planted_bug {
            parse_placement_planted_bug(bug)?;
        }
        if membership.initial_nodes.max() == 0 || membership.step_every_ms.max() == 0 {
            return Err("membership.initial_nodes and step_every_ms must be at least 1".into());
        }
        if !membership.nemesis && membership.grow_to.is_none() {
            return Err("[membership] is either a growth (grow_to) or the nemesis".into());
        }
    }
    if named {
        if file
            .workload
            .iter()
            .any(|workload| workload.kind == "counter")
        {
            return Err("named partitions run the key-value store: no counter workload".into());
        }
        if file
            .fault
            .iter()
            .any(|fault| fault.kind == FaultKind::MembershipChange)
        {
            return Err("named partitions are placed by the directory: no membership fault".into());
        }
    }
    for workload in &file.workload {
        if let Some(bug) = &workload.handler_planted_bug {
            parse_handler_planted_bug(bug)?;
        }
        if let Some(bug) = &workload.feed_planted_bug {
            parse_feed_planted_bug(bug)?;
        }
        if workload.kind == "maps" {
            if !named {
                return Err(
                    "a maps workload needs named partitions ([partitions] named = true)".into(),
                );
            }
            continue;
        }
        if workload.kind == "ledger" {
            if !named {
                return Err(
                    "a ledger workload needs named partitions ([partitions] named = true)".into(),
                );
            }
            continue;
        }
        if workload.kind == "kv" || workload.kind == "counter" {
            if file.partitions.is_none() {
                return Err(format!(
                    "a {} workload needs a [partitions] section",
                    workload.kind
                ));
            }
            // A range answer is checked whole, so it must fit one page.
            let keys_max = borough::partition::kv_store::PAGE_PAIRS_MAX as u64;
            if workload.keys_per_partition.max() > keys_max {
                return Err(format!(
                    "keys_per_partition may be at most {keys_max}: one page of a range"
                ));
            }
            continue;
        }
        if workload.kind != "events" {
            return Err(format!(
                "unknown workload kind {:?}: expected \"events\", \"kv\", \"counter\", \"ledger\" or \"maps\"",
                workload.kind
            ));
        }
        if workload.commit_levels.is_empty() {
            return Err("workload.commit_levels may not be empty".into());
        }
        for level in &workload.commit_levels {
            level
                .parse::<CommitLevel>()
                .map_err(|error| error.to_string())?;
        }
    }
    if file.cluster.regions.max() == 0
        || file.cluster.zones_per_region.max() == 0
        || file.cluster.nodes_per_zone.max() == 0
    {
        return Err("the cluster needs at least one region, zone and node".into());
    }
    if file.knobs.replication_factor.max() == 0 {
        return Err("knobs.replication_factor must be at least 1".into());
    }
    for fault in &file.fault {
        let needs_every = !matches!(
            fault.kind,
            FaultKind::ClockSkew
                | FaultKind::TornWrites
                | FaultKind::FlakyLinks
                | FaultKind::DiskCorruption
                | FaultKind::FsyncFailure
        );
        if needs_every && fault.every_ms.is_none() {
            return Err(format!("fault {:?} needs every_ms", fault.kind));
        }
        let needs_partitions = matches!(
            fault.kind,
            FaultKind::MembershipChange
                | FaultKind::CrashDuringSnapshot
                | FaultKind::CrashAfterVote
                | FaultKind::CrashAfterFirstCommit
        );
        if needs_partitions && file.partitions.is_none() {
            return Err(format!(
                "fault {:?} needs a [partitions] section",
                fault.kind
            ));
        }
    }
    Ok(())
}

/// Shortest stretch of calls that liveness and placement are judged on.
pub const LIVENESS_WINDOW_MS_MIN: u64 = 1_000;

/// Liveness (and placement) are judged on the calls issued from `liveness_bound_ms` after
/// healing until the workload stops, half way through the healed phase. A scenario whose
/// window is shorter would pass while judging almost nothing (every Raft scenario once did,
/// with a bound of 5 s and a workload that stopped 4 s after healing), so it is refused.
/// Canaries that name another checker are exempt: their liveness is not the point.
fn check_liveness_window(file: &ScenarioFile) -> Result<(), String> {
    let judged = match file.scenario.caught_by {
        None => true,
        Some(checker) => matches!(
            checker,
            Checker::Liveness | Checker::RaftLiveness | Checker::Placement
        ),
    };
    if !judged || file.workload.is_empty() {
        return Ok(());
    }
    let workload_after_healing_ms = file.scenario.liveness_duration_ms.min() / 2;
    let bound_ms = file.checks.liveness_bound_ms;
    if workload_after_healing_ms < bound_ms + LIVENESS_WINDOW_MS_MIN {
        return Err(format!(
            "liveness is judged on calls issued from checks.liveness_bound_ms ({bound_ms}) after \
             healing until the workload stops, at half of liveness_duration_ms \
             ({workload_after_healing_ms}): make that window at least {LIVENESS_WINDOW_MS_MIN} ms \
             (a longer liveness_duration_ms or a shorter bound)"
        ));
    }
    Ok(())
}

pub fn parse_planted_bug(name: &str) -> Result<PlantedBug, String> {
    match name {
        "acknowledge_before_durable" => Ok(PlantedBug::AcknowledgeBeforeDurable),
        "trust_any_sender" => Ok(PlantedBug::TrustAnySender),
        "quorum_of_one" => Ok(PlantedBug::QuorumOfOne),
        "forget_key_reservation" => Ok(PlantedBug::ForgetKeyReservation),
        "replicate_only_to_commit_level" => Ok(PlantedBug::ReplicateOnlyToCommitLevel),
        "ignore_zone_spread" => Ok(PlantedBug::IgnoreZoneSpread),
        "repair_timer_not_advanced" => Ok(PlantedBug::RepairTimerNotAdvanced),
        "repair_reuses_first_event" => Ok(PlantedBug::RepairReusesFirstEvent),
        "forget_replayed_interval_counts" => Ok(PlantedBug::ForgetReplayedIntervalCounts),
        "answer_only_past_required" => Ok(PlantedBug::AnswerOnlyPastRequired),
        "torn_tails_are_damage" => Ok(PlantedBug::TornTailsAreDamage),
        other => Err(format!(
            "unknown planted_bug {other:?}: expected \"acknowledge_before_durable\", \
             \"trust_any_sender\", \"quorum_of_one\", \"forget_key_reservation\", \
             \"replicate_only_to_commit_level\", \"ignore_zone_spread\", \
             \"repair_timer_not_advanced\", \"repair_reuses_first_event\", \
             \"forget_replayed_interval_counts\", \"answer_only_past_required\" or \
             \"torn_tails_are_damage\""
        )),
    }
}

/// A Raft bug a canary plants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftCanary {
    Raft(borough::raft::RaftPlantedBug),
    /// Acknowledge appends and votes before the log is synced.
    AcknowledgeBeforeSync,
    /// The state machine applies copies of commands as if new.
    ApplyCommandCopies,
    /// A batch is proposed as one entry per operation.
    SplitBatches,
    /// The Raft log is written but never synced.
    SkipLogSync,
    /// A read that finds no key poisons the host.
    PoisonOnMissingKey,
}

pub fn parse_handler_planted_bug(
    name: &str,
) -> Result<borough::application::HandlerPlantedBug, String> {
    use borough::application::HandlerPlantedBug;
    match name {
        "read_follower_without_read_index" => Ok(HandlerPlantedBug::ReadFollowerWithoutReadIndex),
        other => Err(format!(
            "unknown workload.handler_planted_bug {other:?}: expected \"read_follower_without_read_index\""
        )),
    }
}

pub fn parse_feed_planted_bug(name: &str) -> Result<borough::feeds::FeedPlantedBug, String> {
    use borough::feeds::FeedPlantedBug;
    match name {
        "skip_delta_on_resume" => Ok(FeedPlantedBug::SkipDeltaOnResume),
        other => Err(format!(
            "unknown workload.feed_planted_bug {other:?}: expected \"skip_delta_on_resume\""
        )),
    }
}

pub fn parse_placement_planted_bug(
    name: &str,
) -> Result<borough::coordinator::placement::PlacementPlantedBug, String> {
    use borough::coordinator::placement::PlacementPlantedBug;
    match name {
        "promote_before_caught_up" => Ok(PlacementPlantedBug::PromoteBeforeCaughtUp),
        other => Err(format!(
            "unknown membership.planted_bug {other:?}: expected \"promote_before_caught_up\""
        )),
    }
}

pub fn parse_raft_planted_bug(name: &str) -> Result<RaftCanary, String> {
    use borough::raft::RaftPlantedBug;
    match name {
        "vote_without_log_check" => Ok(RaftCanary::Raft(RaftPlantedBug::VoteWithoutLogCheck)),
        "commit_previous_term_by_counting" => Ok(RaftCanary::Raft(
            RaftPlantedBug::CommitPreviousTermByCounting,
        )),
        "forget_vote_on_restart" => Ok(RaftCanary::Raft(RaftPlantedBug::ForgetVoteOnRestart)),
        "read_without_quorum_round" => {
            Ok(RaftCanary::Raft(RaftPlantedBug::ReadWithoutQuorumRound))
        }
        "elect_with_half_the_votes" => {
            Ok(RaftCanary::Raft(RaftPlantedBug::ElectWithHalfTheVotes))
        }
        "ignore_append_rejections" => {
            Ok(RaftCanary::Raft(RaftPlantedBug::IgnoreAppendRejections))
        }
        "stamp_local_requests_with_term" => Ok(RaftCanary::Raft(
            RaftPlantedBug::StampLocalRequestsWithTerm,
        )),
        "leave_joint_before_commit" => {
            Ok(RaftCanary::Raft(RaftPlantedBug::LeaveJointBeforeCommit))
        }
        "acknowledge_before_sync" => Ok(RaftCanary::AcknowledgeBeforeSync),
        "apply_command_copies" => Ok(RaftCanary::ApplyCommandCopies),
        "split_batches" => Ok(RaftCanary::SplitBatches),
        "skip_log_sync" => Ok(RaftCanary::SkipLogSync),
        "poison_on_missing_key" => Ok(RaftCanary::PoisonOnMissingKey),
        other => Err(format!(
            "unknown partitions.planted_bug {other:?}: expected \"vote_without_log_check\", \"commit_previous_term_by_counting\", \"forget_vote_on_restart\", \"read_without_quorum_round\", \"elect_with_half_the_votes\", \"ignore_append_rejections\", \"stamp_local_requests_with_term\", \"leave_joint_before_commit\", \"acknowledge_before_sync\", \"apply_command_copies\", \"split_batches\", \"skip_log_sync\" or \"poison_on_missing_key\""
        )),
    }
}

/// Every `*.toml` under `path` (a file or a folder, recursively), sorted.
pub fn find_scenarios(path: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut found = Vec::new();
    if path.is_file() {
        found.push(path.to_path_buf());
    } else {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() {
                found.extend(find_scenarios(&entry)?);
            } else if entry
                .extension()
                .is_some_and(|extension| extension == "toml")
            {
                found.push(entry);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use borough::seams::SeededRng;

    const MINIMAL: &str = r#"
[scenario]
tier = "fast"
seeds = 3
expect = "pass"
safety_duration_ms = [1000, 2000]
liveness_duration_ms = 5000

[cluster]
regions = 1
zones_per_region = 3
nodes_per_zone = [1, 2]

[knobs]
"#;

    #[test]
    fn parses_fixed_and_ranges() {
        let scenario = Scenario::parse(Path::new("minimal.toml"), MINIMAL).unwrap();
        assert_eq!(scenario.name, "minimal");
        assert_eq!(
            scenario.file.scenario.safety_duration_ms,
            Drawn::Range(1000, 2000)
        );
        let mut rng = SeededRng::from_seed(1);
        let drawn = scenario.file.cluster.nodes_per_zone.draw(&mut rng);
        assert!((1..=2).contains(&drawn));
    }

    #[test]
    fn a_canary_names_a_checker_of_the_system() {
        let canary = |line: &str| MINIMAL.replace("expect = \"pass\"", line);
        let parsed = Scenario::parse(
            Path::new("c.toml"),
            &canary("expect = \"fail\"\ncaught_by = \"linearizability\""),
        )
        .unwrap();
        assert_eq!(
            parsed.file.scenario.caught_by,
            Some(Checker::Linearizability)
        );
        for (line, expected) in [
            ("expect = \"fail\"", "names the checker"),
            (
                "expect = \"fail\"\ncaught_by = \"determinism\"",
                "judges the run",
            ),
            (
                "expect = \"fail\"\ncaught_by = \"lineariz\"",
                "unknown variant",
            ),
            ("expect = \"pass\"\ncaught_by = \"codec\"", "for canaries"),
        ] {
            let error = Scenario::parse(Path::new("c.toml"), &canary(line))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    /// Liveness is judged on calls issued from the bound until the workload stops, half way
    /// through the healed phase: a scenario whose window is under a second is refused, unless
    /// it is a canary naming another checker.
    #[test]
    fn a_liveness_window_too_short_to_judge_anything_is_refused() {
        let with = |expect: &str, liveness_ms: u64, bound_ms: u64| {
            let text = MINIMAL.replace("expect = \"pass\"", expect).replace(
                "liveness_duration_ms = 5000",
                &format!("liveness_duration_ms = {liveness_ms}"),
            );
            format!(
                "{text}\n[[workload]]\nkind = \"events\"\nrate_per_s = 10\n\n[checks]\nliveness_bound_ms = {bound_ms}\n"
            )
        };
        let parse = |text: String| Scenario::parse(Path::new("w.toml"), &text);
        // Every Raft scenario once: 8 s healed, workload stopping 4 s in, bound 5 s.
        let error = parse(with("expect = \"pass\"", 8000, 5000))
            .unwrap_err()
            .to_string();
        assert!(error.contains("liveness is judged"), "{error}");
        assert!(parse(with("expect = \"pass\"", 8000, 3000)).is_ok());
        assert!(parse(with("expect = \"pass\"", 8000, 3001)).is_err());
        let canary = |checker: &str| format!("expect = \"fail\"\ncaught_by = \"{checker}\"");
        assert!(parse(with(&canary("atomicity"), 8000, 5000)).is_ok());
        assert!(parse(with(&canary("raft_liveness"), 8000, 5000)).is_err());
        assert!(parse(with(&canary("placement"), 8000, 5000)).is_err());
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let text = format!("{MINIMAL}\nreplication_factr = 3\n");
        let error = Scenario::parse(Path::new("scenarios/typo.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(error.contains("scenarios/typo.toml"), "{error}");
        assert!(error.contains("replication_factr"), "{error}");
    }

    #[test]
    fn bad_ranges_and_values_are_refused() {
        for (extra, needle) in [
            ("replication_factor = [3, 1]", "min > max"),
            ("replication_factor = [1, 2, 3]", "[min, max]"),
            ("consolidation_interval = \"PT2M\"", "PT2M"),
            ("planted_bug = \"nothing\"", "nothing"),
        ] {
            let text = format!("{MINIMAL}{extra}\n");
            let error = Scenario::parse(Path::new("x.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{extra}: {error}");
        }
    }
}

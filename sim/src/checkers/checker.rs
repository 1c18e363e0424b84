//! The names of the checkers: every violation carries one, and a canary names the one that
//! must catch its planted bug (`caught_by`), so a name is a type, not a free string.

use serde::Deserialize;
use std::fmt;

/// A checker: one rule of the system that a run is judged against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checker {
    // The event store.
    WriteOnce,
    NoAcknowledgedLoss,
    AcknowledgementHonesty,
    ReplicationFactorRestored,
    Placement,
    Liveness,
    Intervals,
    KeysIncreasing,
    // Raft partitions.
    StateMachineSafety,
    ElectionSafety,
    OneVotePerTerm,
    UpToDateVotes,
    LeaderCompleteness,
    CommitSafety,
    AtMostOnce,
    RaftDurability,
    RaftLiveness,
    Linearizability,
    Atomicity,
    /// What the example ledger application promises (`workload::ledger`).
    Ledger,
    /// Change feeds of shared maps (`workload::maps`).
    Feeds,
    // Moving partitions between nodes.
    PlacementConverged,
    CaughtUpPromotions,
    JointConsensus,
    RequestsSucceed,
    // The whole node.
    Recovery,
    Codec,
    GarbageRefused,
    NoPoison,
    BusyLoop,
    // The run itself.
    Determinism,
    RunBudget,
    Panic,
}

impl Checker {
    /// Every checker, in declaration order.
    pub const ALL: [Checker; 33] = [
        Checker::WriteOnce,
        Checker::NoAcknowledgedLoss,
        Checker::AcknowledgementHonesty,
        Checker::ReplicationFactorRestored,
        Checker::Placement,
        Checker::Liveness,
        Checker::Intervals,
        Checker::KeysIncreasing,
        Checker::StateMachineSafety,
        Checker::ElectionSafety,
        Checker::OneVotePerTerm,
        Checker::UpToDateVotes,
        Checker::LeaderCompleteness,
        Checker::CommitSafety,
        Checker::AtMostOnce,
        Checker::RaftDurability,
        Checker::RaftLiveness,
        Checker::Linearizability,
        Checker::Atomicity,
        Checker::Ledger,
        Checker::Feeds,
        Checker::PlacementConverged,
        Checker::CaughtUpPromotions,
        Checker::JointConsensus,
        Checker::RequestsSucceed,
        Checker::Recovery,
        Checker::Codec,
        Checker::GarbageRefused,
        Checker::NoPoison,
        Checker::BusyLoop,
        Checker::Determinism,
        Checker::RunBudget,
        Checker::Panic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Checker::WriteOnce => "write_once",
            Checker::NoAcknowledgedLoss => "no_acknowledged_loss",
            Checker::AcknowledgementHonesty => "acknowledgement_honesty",
            Checker::ReplicationFactorRestored => "replication_factor_restored",
            Checker::Placement => "placement",
            Checker::Liveness => "liveness",
            Checker::Intervals => "intervals",
            Checker::KeysIncreasing => "keys_increasing",
            Checker::StateMachineSafety => "state_machine_safety",
            Checker::ElectionSafety => "election_safety",
            Checker::OneVotePerTerm => "one_vote_per_term",
            Checker::UpToDateVotes => "up_to_date_votes",
            Checker::LeaderCompleteness => "leader_completeness",
            Checker::CommitSafety => "commit_safety",
            Checker::AtMostOnce => "at_most_once",
            Checker::RaftDurability => "raft_durability",
            Checker::RaftLiveness => "raft_liveness",
            Checker::Linearizability => "linearizability",
            Checker::Atomicity => "atomicity",
            Checker::Ledger => "ledger",
            Checker::Feeds => "feeds",
            Checker::PlacementConverged => "placement_converged",
            Checker::CaughtUpPromotions => "caught_up_promotions",
            Checker::JointConsensus => "joint_consensus",
            Checker::RequestsSucceed => "requests_succeed",
            Checker::Recovery => "recovery",
            Checker::Codec => "codec",
            Checker::GarbageRefused => "garbage_refused",
            Checker::NoPoison => "no_poison",
            Checker::BusyLoop => "busy_loop",
            Checker::Determinism => "determinism",
            Checker::RunBudget => "run_budget",
            Checker::Panic => "panic",
        }
    }

    /// Checkers of the run rather than of the system: a canary caught only by one of these
    /// proves nothing about the rule its bug breaks.
    pub fn judges_the_run(self) -> bool {
        matches!(
            self,
            Checker::Determinism | Checker::RunBudget | Checker::Panic
        )
    }
}

impl fmt::Display for Checker {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Named {
        checker: Checker,
    }

    #[test]
    fn names_are_what_scenarios_write_and_all_are_listed() {
        let mut names = std::collections::BTreeSet::new();
        for checker in Checker::ALL {
            let parsed: Named = toml::from_str(&format!("checker = \"{checker}\"")).unwrap();
            assert_eq!(parsed.checker, checker);
            assert!(names.insert(checker.name()), "{checker} listed twice");
        }
        assert!(toml::from_str::<Named>("checker = \"no_such_checker\"").is_err());
    }
}

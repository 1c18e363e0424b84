//! A group's view of its log: the snapshot it starts from, the entries after it, and how far
//! they are committed, durable and handed out for applying.
//!
//! Invariants (checked by assertions, since breaking one is a bug, not an operating error):
//! - `entries` hold the contiguous indexes `snapshot_index + 1 ..= last_index`;
//! - `applied <= committed`, `applied <= persisted`, and `snapshot_index <= applied`;
//! - a committed entry is never truncated: a conflicting suffix starts above `committed`;
//! - `persisted` only names a prefix that the driver confirmed durable and that is still ours
//!   (truncation pulls it back).

use crate::raft::entry::{Entry, SnapshotMeta};
use std::collections::VecDeque;

/// What a follower's append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Append {
    /// The log does not hold the previous entry the leader named: nothing changed.
    Mismatch,
    /// The log now matches the leader's up to `last_new`.
    Appended {
        last_new: u64,
        truncated_from: Option<u64>,
    },
    /// The append would replace the committed entry at `index`: refused, nothing changed.
    ContradictsCommitted { index: u64 },
}

#[derive(Clone, Debug)]
pub struct RaftLog {
    snapshot_index: u64,
    snapshot_term: u64,
    entries: VecDeque<Entry>,
    committed: u64,
    /// The highest index handed out for applying.
    applied: u64,
    /// The highest index known durable on this node.
    persisted: u64,
    /// The first index not yet handed to the driver for persisting.
    unpersisted_from: u64,
}

impl RaftLog {
    /// A log recovered from durable state: a snapshot point and the entries after it, all of
    /// them durable; `committed` and `applied` as recovered (clamped into the log).
    pub fn recovered(
        snapshot_index: u64,
        snapshot_term: u64,
        entries: Vec<Entry>,
        committed: u64,
        applied: u64,
    ) -> Self {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot_index + 1 + offset as u64,
                "recovered entries must follow the snapshot contiguously"
            );
        }
        let last_index = snapshot_index + entries.len() as u64;
        let committed = committed.clamp(snapshot_index, last_index);
        let applied = applied.clamp(snapshot_index, committed);
        Self {
            snapshot_index,
            snapshot_term,
            entries: entries.into(),
            committed,
            applied,
            persisted: last_index,
            unpersisted_from: last_index + 1,
        }
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries
            .back()
            .map_or(self.snapshot_term, |entry| entry.term)
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// The term of the entry at `index`, if this log still knows it (not compacted away, not
    /// beyond the end).
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    pub fn matches(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to date as this
    /// one (Raft §5.4.1): a later last term, or the same last term and at least as long.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries the leader created; they must follow the last index.
    pub fn append(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            assert_eq!(entry.index, self.last_index() + 1, "appends are contiguous");
            assert!(
                entry.term >= self.last_term(),
                "terms never decrease along a log"
            );
            self.entries.push_back(entry);
        }
    }

    /// A follower's append (Raft §5.3): if this log holds `prev_index` with `prev_term`, drops
    /// any conflicting suffix, appends what is new and says which index is now the last known
    /// to match the leader's log, and the first truncated index when a suffix was dropped.
    /// `entries` must follow `prev_index` contiguously (the wire codec checks that). An append
    /// that would replace a committed entry is refused and changes nothing: no correct leader
    /// sends one, so it comes from a broken or lying peer.
    pub fn try_append(&mut self, prev_index: u64, prev_term: u64, entries: Vec<Entry>) -> Append {
        if !self.matches(prev_index, prev_term) {
            return Append::Mismatch;
        }
        // Look before changing anything: the first entry that differs decides.
        let conflict = entries
            .iter()
            .find_map(|entry| match self.term(entry.index) {
                Some(term) if term != entry.term => Some(entry.index),
                _ => None,
            });
        if let Some(index) = conflict {
            if index <= self.committed {
                return Append::ContradictsCommitted { index };
            }
        }
        let last_new = prev_index + entries.len() as u64;
        let mut truncated_from = None;
        for entry in entries {
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    self.truncate_from(entry.index);
                    truncated_from = Some(entry.index);
                    self.entries.push_back(entry);
                }
                None if entry.index == self.last_index() + 1 => self.entries.push_back(entry),
                // Below the snapshot (compacted, so committed and matching): nothing to do.
                None if entry.index <= self.snapshot_index => {}
                None => {
                    // Entries out of sequence: only a malformed message has them.
                    debug_assert!(false, "entries must follow the previous index contiguously");
                    break;
                }
            }
        }
        Append::Appended {
            last_new,
            truncated_from,
        }
    }

    fn truncate_from(&mut self, index: u64) {
        assert!(
            index > self.snapshot_index,
            "cannot truncate into the snapshot"
        );
        self.entries
            .truncate((index - self.snapshot_index - 1) as usize);
        self.persisted = self.persisted.min(index - 1);
        self.unpersisted_from = self.unpersisted_from.min(index);
    }

    /// Up to `entries_max` entries and `bytes_max` worth of them from `from` on (at least one
    /// when any exist), or `None` when `from` is compacted away.
    pub fn entries_from(
        &self,
        from: u64,
        entries_max: usize,
        bytes_max: usize,
    ) -> Option<Vec<Entry>> {
        if from <= self.snapshot_index {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut index = from;
        while let Some(entry) = self.entry(index) {
            bytes += entry.payload_bytes();
            if !batch.is_empty() && (bytes > bytes_max || batch.len() >= entries_max) {
                break;
            }
            batch.push(entry.clone());
            index += 1;
        }
        Some(batch)
    }

    /// The entries the driver has not been given for persisting yet; from now on they count
    /// as handed over (confirmed by [`RaftLog::persisted_to`]).
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        let from = self.unpersisted_from.max(self.first_index());
        let entries: Vec<Entry> = (from..=self.last_index())
            .filter_map(|index| self.entry(index).cloned())
            .collect();
        self.unpersisted_from = self.last_index() + 1;
        entries
    }

    pub fn has_unpersisted(&self) -> bool {
        self.unpersisted_from <= self.last_index()
    }

    /// The driver made the log durable up to (`index`, `term`). Ignored when that entry has
    /// been replaced since (the confirmation is for a suffix we no longer hold).
    pub fn persisted_to(&mut self, index: u64, term: u64) {
        if index > self.persisted && self.matches(index, term) {
            self.persisted = index;
        }
    }

    pub fn commit_to(&mut self, index: u64) -> bool {
        assert!(
            index <= self.last_index(),
            "commit {index} beyond the last index {}",
            self.last_index()
        );
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Committed, durable entries not yet handed out for applying, up to `bytes_max` worth
    /// (at least one); they count as applied from now on.
    pub fn take_committed(&mut self, bytes_max: usize) -> Vec<Entry> {
        let until = self.committed.min(self.persisted);
        let mut batch = Vec::new();
        let mut bytes = 0;
        while self.applied < until {
            let entry = self
                .entry(self.applied + 1)
                .expect("committed entries above the snapshot are held")
                .clone();
            bytes += entry.payload_bytes();
            if !batch.is_empty() && bytes > bytes_max {
                break;
            }
            batch.push(entry);
            self.applied += 1;
        }
        batch
    }

    pub fn has_committed_to_apply(&self) -> bool {
        self.applied < self.committed.min(self.persisted)
    }

    /// The largest index at or below `index` whose term is at most `term`, with that term: the
    /// fast back-off hint (every entry above it conflicts with a log whose entry at `index`
    /// has `term`).
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Some(found) if found <= term => return (index, found),
                Some(_) => index -= 1,
                // Compacted: everything at or below the snapshot is committed and matches.
                None => return (index, 0),
            }
        }
    }

    /// Replaces the whole log by a snapshot point: every entry is dropped, and the snapshot's
    /// index counts as committed, applied and durable.
    pub fn restore(&mut self, meta: &SnapshotMeta) {
        assert!(
            meta.index > self.committed,
            "a snapshot must move the log forward"
        );
        self.entries.clear();
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.committed = meta.index;
        self.applied = meta.index;
        self.persisted = meta.index;
        self.unpersisted_from = meta.index + 1;
    }

    /// Frees the entry buffer's spare room (a busy log's buffer is sized for its peak).
    pub fn release_idle_buffers(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// Drops the entries up to `index` (which the application has captured in a snapshot).
    pub fn compact(&mut self, index: u64) {
        assert!(
            index <= self.applied,
            "compacting to {index} beyond applied {}",
            self.applied
        );
        if index <= self.snapshot_index {
            return;
        }
        let term = self.term(index).expect("an applied index is in the log");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::entry::EntryKind;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Empty,
        }
    }

    fn log_of_terms(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(offset, term)| entry(offset as u64 + 1, *term))
            .collect();
        RaftLog::recovered(0, 0, entries, 0, 0)
    }

    #[test]
    fn a_conflicting_suffix_is_replaced_and_persisted_pulled_back() {
        let mut log = log_of_terms(&[1, 1, 2, 2]);
        assert_eq!(log.persisted(), 4);
        let appended = log.try_append(2, 1, vec![entry(3, 3)]);
        assert_eq!(
            appended,
            Append::Appended {
                last_new: 3,
                truncated_from: Some(3)
            }
        );
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.last_term(), 3);
        assert_eq!(log.persisted(), 2);
        assert_eq!(log.take_unpersisted(), vec![entry(3, 3)]);
    }

    #[test]
    fn an_append_that_does_not_match_changes_nothing() {
        let mut log = log_of_terms(&[1, 1]);
        assert_eq!(log.try_append(2, 2, vec![entry(3, 2)]), Append::Mismatch);
        assert_eq!(log.try_append(5, 1, vec![]), Append::Mismatch);
        assert_eq!(log.last_index(), 2);
    }

    #[test]
    fn a_stale_append_inside_the_log_truncates_nothing() {
        let mut log = log_of_terms(&[1, 1, 1, 1]);
        // The leader resends entries 2..=3 that we already hold: entry 4 must stay.
        assert_eq!(
            log.try_append(1, 1, vec![entry(2, 1), entry(3, 1)]),
            Append::Appended {
                last_new: 3,
                truncated_from: None
            }
        );
        assert_eq!(log.last_index(), 4);
    }

    #[test]
    fn an_append_that_would_replace_a_committed_entry_is_refused() {
        let mut log = log_of_terms(&[1, 1, 1]);
        log.commit_to(3);
        assert_eq!(
            log.try_append(1, 1, vec![entry(2, 1), entry(3, 2), entry(4, 2)]),
            Append::ContradictsCommitted { index: 3 }
        );
        assert_eq!(log.last_index(), 3, "nothing changed");
        assert_eq!(log.term(3), Some(1));
    }

    #[test]
    fn up_to_date_compares_last_term_then_length() {
        let log = log_of_terms(&[1, 2, 2]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3));
        assert!(!log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(9, 1));
    }

    #[test]
    fn conflict_hint_skips_a_whole_term() {
        let log = log_of_terms(&[1, 1, 4, 4, 4, 5]);
        // The leader's entry at 6 has term 3: everything with a term above 3 conflicts.
        assert_eq!(log.find_conflict_by_term(6, 3), (2, 1));
        assert_eq!(log.find_conflict_by_term(9, 5), (6, 5));
    }

    #[test]
    fn committed_entries_wait_for_durability_and_compaction_keeps_the_term() {
        let mut log = log_of_terms(&[1]);
        log.append(vec![entry(2, 1), entry(3, 1)]);
        log.commit_to(3);
        assert_eq!(
            log.take_committed(usize::MAX).len(),
            1,
            "only entry 1 is durable"
        );
        let handed = log.take_unpersisted();
        assert_eq!(handed.len(), 2);
        log.persisted_to(3, 1);
        assert_eq!(log.take_committed(usize::MAX).len(), 2);
        log.compact(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(1), None);
        assert_eq!(log.entries_from(2, usize::MAX, usize::MAX), None);
        assert_eq!(
            log.entries_from(3, usize::MAX, usize::MAX).unwrap().len(),
            1
        );
    }
}

//! Multi-key operations of the kv history: batches and range reads, the per-key projection
//! the linearizability search judges, and the `atomicity` check of what a projection cannot
//! express.
//!
//! Owns the history a kv workload records (`KvCall`: a get, a put or delete, a batch, a range
//! read, with what the client was told) and two judgements of it:
//! - `project` turns every call into per-key operations. A batch becomes one write per key,
//!   all with the batch's interval; a range read becomes one get per key it covered. A batch
//!   takes effect at one instant on every key, so once any read has returned one of its
//!   values, all of its writes are known to have happened before that read returned: the
//!   projection ends each of its per-key intervals there, and an unanswered batch a read saw
//!   becomes one that took effect. This is how a batch applied key by key is caught by the
//!   per-key search: a later read of another of its keys must see it.
//! - `check` judges range reads as the single instant they must be. An answer must be in the
//!   query's order, inside its bounds and within its limit. And every value it returns is
//!   read at one point `r`, after each write it saw (so after that write's call) and after its
//!   own call; any acknowledged write that returned before that lower bound happened before
//!   `r`, and so did every write of a batch the read saw on another key. A value on a key is
//!   refuted when one of those writes came strictly after it (the write returned before the
//!   other's call), and "not found" when a put among them cannot have been followed by any
//!   delete before the read returned.
//!
//! Invariants kept: both judgements are sound, never a guess. Writes are told apart by their
//! values (unique per key across the history, a batch writing each key once); a bound is used
//! only when real time forces it, and an unanswered write may have happened or not, so it only
//! ever excuses. The outcome depends on the history alone.

use crate::checkers::linearizability::{Bytes, Operation, OperationInput, OperationOutput};
use std::collections::BTreeMap;

/// One key's write: a put, or a delete when `value` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyWrite {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvRequest {
    Get {
        key: Vec<u8>,
    },
    Write(KeyWrite),
    /// Writes to distinct keys that take effect together.
    Batch(Vec<KeyWrite>),
    /// A range read: `keys` are the keys of the workload's key space inside the query's
    /// bounds, in the query's order (reversed for a reverse query), of which the answer holds
    /// those present, up to `limit`.
    Range {
        keys: Vec<Vec<u8>>,
        limit: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResponse {
    /// The client does not know whether or when the call took effect (writes only: a read
    /// without an answer constrains nothing and is left out of the history).
    Indeterminate,
    /// A write or batch that took effect.
    Written,
    /// What a get saw; `None` is "not found".
    Value(Option<Vec<u8>>),
    /// What a range read returned, in the order it returned it.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
}

/// One client call as the workload saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCall {
    pub id: u64,
    pub call_micros: u64,
    /// `None`: no answer came.
    pub return_micros: Option<u64>,
    pub request: KvRequest,
    pub response: KvResponse,
}

impl KvCall {
    fn answered_at(&self) -> Option<u64> {
        match self.response {
            KvResponse::Indeterminate => None,
            _ => self.return_micros,
        }
    }

    fn writes(&self) -> &[KeyWrite] {
        match &self.request {
            KvRequest::Write(write) => std::slice::from_ref(write),
            KvRequest::Batch(writes) => writes,
            KvRequest::Get { .. } | KvRequest::Range { .. } => &[],
        }
    }

    /// The (key, value) pairs a read saw.
    fn observed(&self) -> Vec<(&[u8], &[u8])> {
        match (&self.request, &self.response) {
            (KvRequest::Get { key }, KvResponse::Value(Some(value))) => {
                vec![(key.as_slice(), value.as_slice())]
            }
            (KvRequest::Range { .. }, KvResponse::Pairs(pairs)) => pairs
                .iter()
                .map(|(key, value)| (key.as_slice(), value.as_slice()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The writes of the history, told apart by (key, value), with the latest instant each is
/// known to have taken effect by: its answer, or the return of the first read that saw it.
struct Writes<'a> {
    by_value: BTreeMap<(&'a [u8], &'a [u8]), usize>,
    /// Per call index: the earliest return of a read that saw one of its values.
    seen_by: BTreeMap<usize, u64>,
}

impl<'a> Writes<'a> {
    fn index(calls: &'a [KvCall]) -> Self {
        let mut by_value = BTreeMap::new();
        for (index, call) in calls.iter().enumerate() {
            for write in call.writes() {
                if let Some(value) = &write.value {
                    by_value.insert((write.key.as_slice(), value.as_slice()), index);
                }
            }
        }
        let mut seen_by: BTreeMap<usize, u64> = BTreeMap::new();
        for call in calls {
            let Some(returned) = call.return_micros else {
                continue;
            };
            for observed in call.observed() {
                if let Some(&writer) = by_value.get(&observed) {
                    let entry = seen_by.entry(writer).or_insert(returned);
                    *entry = (*entry).min(returned);
                }
            }
        }
        Writes { by_value, seen_by }
    }

    /// When the write of call `index` is known to have taken effect by, if it is.
    fn effective_by(&self, calls: &[KvCall], index: usize) -> Option<u64> {
        let answered = calls[index].answered_at();
        let seen = self.seen_by.get(&index).copied();
        match (answered, seen) {
            (Some(answered), Some(seen)) => Some(answered.min(seen)),
            (answered, seen) => answered.or(seen),
        }
    }
}

/// How batches are projected onto their keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    /// Each key's write alone, with the batch's own interval: what the per-key search judges
    /// as linearizability.
    KeyByKey,
    /// A batch's writes known done once any read saw one of them: the same search then
    /// judges batches as atomic (see the module docs).
    BatchesTied,
}

/// Every call as per-key operations for the linearizability search (see the module docs).
pub fn project(calls: &[KvCall], projection: Projection) -> Vec<Operation> {
    let writes = Writes::index(calls);
    let mut operations = Vec::new();
    for (index, call) in calls.iter().enumerate() {
        let operation = |input, return_micros, output| Operation {
            client: call.id,
            call_micros: call.call_micros,
            return_micros,
            input,
            output,
        };
        match (&call.request, &call.response) {
            (KvRequest::Get { key }, KvResponse::Value(value)) => operations.push(operation(
                OperationInput::Get { key: key.clone() },
                call.return_micros,
                OperationOutput::Value(value.clone()),
            )),
            (KvRequest::Get { .. } | KvRequest::Range { .. }, _) => {}
            (KvRequest::Write(_) | KvRequest::Batch(_), _) => {
                let batch = matches!(call.request, KvRequest::Batch(_));
                // Only a batch's effect is tied across keys; a single write is judged on its
                // own key, where the search already weighs every read of it.
                let effective_by = if batch && projection == Projection::BatchesTied {
                    writes.effective_by(calls, index)
                } else {
                    call.answered_at()
                };
                let (return_micros, output) = match effective_by {
                    Some(at) => (Some(at), OperationOutput::Ok),
                    None => (None, OperationOutput::Indeterminate),
                };
                for write in call.writes() {
                    let input = match &write.value {
                        Some(value) => OperationInput::Put {
                            key: write.key.clone(),
                            value: value.clone(),
                        },
                        None => OperationInput::Delete {
                            key: write.key.clone(),
                        },
                    };
                    operations.push(operation(input, return_micros, output.clone()));
                }
            }
        }
        if let (KvRequest::Range { keys, .. }, KvResponse::Pairs(pairs)) =
            (&call.request, &call.response)
        {
            let Some(covered) = covered_keys(call, keys, pairs) else {
                continue;
            };
            for key in covered {
                let seen = pairs
                    .iter()
                    .find(|(pair_key, _)| pair_key == key)
                    .map(|(_, value)| value.clone());
                operations.push(operation(
                    OperationInput::Get { key: key.clone() },
                    call.return_micros,
                    OperationOutput::Value(seen),
                ));
            }
        }
    }
    operations
}

/// The keys a range answer speaks for: all of the query's when it came back short of its
/// limit, else those up to its last pair. `None` when the answer is malformed (`check` says
/// why).
fn covered_keys<'a>(
    call: &KvCall,
    keys: &'a [Vec<u8>],
    pairs: &[(Vec<u8>, Vec<u8>)],
) -> Option<&'a [Vec<u8>]> {
    shape_error(call, keys, pairs).is_none().then(|| {
        let limit = match &call.request {
            KvRequest::Range { limit, .. } => *limit,
            _ => usize::MAX,
        };
        match pairs.last() {
            Some((last, _)) if pairs.len() >= limit => {
                let end = keys
                    .iter()
                    .position(|key| key == last)
                    .unwrap_or(keys.len());
                &keys[..=end.min(keys.len().saturating_sub(1))]
            }
            _ => keys,
        }
    })
}

/// Why a range answer cannot be right whatever the history: a key outside the query's bounds,
/// out of the query's order or twice, or more pairs than the limit.
fn shape_error(call: &KvCall, keys: &[Vec<u8>], pairs: &[(Vec<u8>, Vec<u8>)]) -> Option<String> {
    let KvRequest::Range { limit, .. } = &call.request else {
        return None;
    };
    if pairs.len() > *limit {
        return Some(format!(
            "{} pairs came back for a limit of {limit}",
            pairs.len()
        ));
    }
    let mut previous: Option<usize> = None;
    for (key, _) in pairs {
        let Some(position) = keys.iter().position(|candidate| candidate == key) else {
            return Some(format!("{} is outside the query's bounds", Bytes(key)));
        };
        if previous.is_some_and(|previous| position <= previous) {
            return Some(format!(
                "{} came back out of the query's order or twice",
                Bytes(key)
            ));
        }
        previous = Some(position);
    }
    None
}

/// A write known to have taken effect: by when, when it was called, whether it was a put,
/// and its call's index in the history (fields in that order: they sort by `effective_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct KnownWrite {
    effective_by: u64,
    call_micros: u64,
    is_put: bool,
    index: usize,
}

/// The latest-called of some writes: (its call time, its call's index).
type Latest = Option<(u64, usize)>;

/// One key's writes, for the question "which write known to precede an instant started
/// last?": sorted by the instant each is known to have taken effect by, with the running
/// latest call among them (puts alone, and all writes).
struct KeyTimeline {
    effective_by: Vec<u64>,
    latest_write: Vec<(u64, usize)>,
    latest_put: Vec<Latest>,
    /// Every delete: (call, known to have taken effect by, or never known).
    deletes: Vec<(u64, Option<u64>)>,
}

impl KeyTimeline {
    fn build(entries: &mut [KnownWrite], deletes: Vec<(u64, Option<u64>)>) -> Self {
        entries.sort_unstable();
        let mut timeline = KeyTimeline {
            effective_by: Vec::new(),
            latest_write: Vec::new(),
            latest_put: Vec::new(),
            deletes,
        };
        let mut latest_write: Latest = None;
        let mut latest_put: Latest = None;
        for &KnownWrite {
            effective_by,
            call_micros,
            is_put,
            index,
        } in entries.iter()
        {
            if latest_write.is_none_or(|(call, _)| call_micros > call) {
                latest_write = Some((call_micros, index));
            }
            if is_put && latest_put.is_none_or(|(call, _)| call_micros > call) {
                latest_put = Some((call_micros, index));
            }
            timeline.effective_by.push(effective_by);
            timeline.latest_write.push(latest_write.expect("set above"));
            timeline.latest_put.push(latest_put);
        }
        timeline
    }

    /// The latest-called write (and put) known to have taken effect strictly before `instant`.
    fn before(&self, instant: u64) -> (Latest, Latest) {
        let count = self.effective_by.partition_point(|at| *at < instant);
        match count.checked_sub(1) {
            Some(last) => (Some(self.latest_write[last]), self.latest_put[last]),
            None => (None, None),
        }
    }
}

/// Judges every range read of the history; returns one message per refuted read.
pub fn check(calls: &[KvCall]) -> Vec<String> {
    let writes = Writes::index(calls);
    let mut entries: BTreeMap<&[u8], Vec<KnownWrite>> = BTreeMap::new();
    let mut deletes: BTreeMap<&[u8], Vec<(u64, Option<u64>)>> = BTreeMap::new();
    for (index, call) in calls.iter().enumerate() {
        let effective_by = writes.effective_by(calls, index);
        for write in call.writes() {
            if let Some(at) = effective_by {
                entries.entry(&write.key).or_default().push(KnownWrite {
                    effective_by: at,
                    call_micros: call.call_micros,
                    is_put: write.value.is_some(),
                    index,
                });
            }
            if write.value.is_none() {
                deletes
                    .entry(&write.key)
                    .or_default()
                    .push((call.call_micros, effective_by.or(call.return_micros)));
            }
        }
    }
    let mut timelines: BTreeMap<&[u8], KeyTimeline> = BTreeMap::new();
    for (key, mut key_entries) in entries {
        let key_deletes = deletes.remove(key).unwrap_or_default();
        timelines.insert(key, KeyTimeline::build(&mut key_entries, key_deletes));
    }
    for (key, key_deletes) in deletes {
        timelines.insert(key, KeyTimeline::build(&mut [], key_deletes));
    }
    let mut violations = Vec::new();
    for call in calls {
        if let Some(message) = check_range(calls, &writes, &timelines, call) {
            violations.push(format!("range read by client {}: {message}", call.id));
        }
    }
    violations
}

fn check_range(
    calls: &[KvCall],
    writes: &Writes<'_>,
    timelines: &BTreeMap<&[u8], KeyTimeline>,
    call: &KvCall,
) -> Option<String> {
    let (KvRequest::Range { keys, .. }, KvResponse::Pairs(pairs)) = (&call.request, &call.response)
    else {
        return None;
    };
    let returned = call.return_micros?;
    if let Some(error) = shape_error(call, keys, pairs) {
        return Some(format!("a malformed answer: {error}"));
    }
    let covered = covered_keys(call, keys, pairs)?;
    // What the read saw, and the instant it was read at is after each of those writes' calls.
    let seen: Vec<(&[u8], Option<usize>)> = pairs
        .iter()
        .map(|(key, value)| {
            (
                key.as_slice(),
                writes
                    .by_value
                    .get(&(key.as_slice(), value.as_slice()))
                    .copied(),
            )
        })
        .collect();
    let mut lower_bound = (call.call_micros, None);
    for (_, writer) in &seen {
        if let Some(writer) = *writer {
            if calls[writer].call_micros > lower_bound.0 {
                lower_bound = (calls[writer].call_micros, Some(writer));
            }
        }
    }
    for key in covered {
        let timeline = timelines.get(key.as_slice());
        let (mut latest_write, mut latest_put) = timeline
            .map(|timeline| timeline.before(lower_bound.0))
            .unwrap_or((None, None));
        // A batch the read saw on any key took effect on all of its keys before the read.
        for (_, writer) in &seen {
            let Some(writer) = *writer else { continue };
            if !matches!(calls[writer].request, KvRequest::Batch(_)) {
                continue;
            }
            for write in calls[writer].writes() {
                if &write.key != key {
                    continue;
                }
                let candidate = (calls[writer].call_micros, writer);
                if latest_write.is_none_or(|(call, _)| candidate.0 > call) {
                    latest_write = Some(candidate);
                }
                if write.value.is_some() && latest_put.is_none_or(|(call, _)| candidate.0 > call) {
                    latest_put = Some(candidate);
                }
            }
        }
        let why = |later: usize| {
            let seen_batch = seen
                .iter()
                .any(|(seen_key, writer)| *writer == Some(later) && *seen_key != key.as_slice());
            let reason = if seen_batch {
                "the read saw that batch on another key".to_string()
            } else {
                let done = writes.effective_by(calls, later).unwrap_or_default();
                let read_from = match lower_bound.1 {
                    Some(writer) => format!(
                        "the read saw client {}'s write, called at {}us",
                        calls[writer].id, calls[writer].call_micros
                    ),
                    None => format!("the read was called at {}us", call.call_micros),
                };
                format!("it was done by {done}us and {read_from}")
            };
            format!(
                "client {} wrote {} (called {}us) before the read: {reason}",
                calls[later].id,
                Bytes(key),
                calls[later].call_micros
            )
        };
        match seen
            .iter()
            .find(|(seen_key, _)| *seen_key == key.as_slice())
        {
            Some((_, Some(writer))) => {
                let Some((later_call, later)) = latest_write else {
                    continue;
                };
                let writer_done = writes.effective_by(calls, *writer);
                if later != *writer && writer_done.is_some_and(|done| done < later_call) {
                    return Some(format!(
                        "it returned {} as written by client {}, whose write was overwritten: {}",
                        Bytes(key),
                        calls[*writer].id,
                        why(later)
                    ));
                }
            }
            // A value nobody wrote: the per-key search refutes it.
            Some((_, None)) => {}
            None => {
                let Some((put_call, put)) = latest_put else {
                    continue;
                };
                let deletable = timeline.is_some_and(|timeline| {
                    timeline.deletes.iter().any(|(delete_call, delete_by)| {
                        *delete_call < returned && delete_by.is_none_or(|by| by > put_call)
                    })
                });
                if !deletable {
                    return Some(format!(
                        "it found no {} though {}, and no delete of it could have come between",
                        Bytes(key),
                        why(put)
                    ));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::linearizability::{check_history, CheckOutcome};

    fn key(name: &str) -> Vec<u8> {
        name.as_bytes().to_vec()
    }

    fn put(id: u64, call: u64, returned: Option<u64>, name: &str, value: &str) -> KvCall {
        KvCall {
            id,
            call_micros: call,
            return_micros: returned,
            request: KvRequest::Write(KeyWrite {
                key: key(name),
                value: Some(key(value)),
            }),
            response: if returned.is_some() {
                KvResponse::Written
            } else {
                KvResponse::Indeterminate
            },
        }
    }

    fn batch(id: u64, call: u64, returned: Option<u64>, writes: &[(&str, Option<&str>)]) -> KvCall {
        KvCall {
            id,
            call_micros: call,
            return_micros: returned,
            request: KvRequest::Batch(
                writes
                    .iter()
                    .map(|(name, value)| KeyWrite {
                        key: key(name),
                        value: value.map(key),
                    })
                    .collect(),
            ),
            response: if returned.is_some() {
                KvResponse::Written
            } else {
                KvResponse::Indeterminate
            },
        }
    }

    fn get(id: u64, call: u64, returned: u64, name: &str, seen: Option<&str>) -> KvCall {
        KvCall {
            id,
            call_micros: call,
            return_micros: Some(returned),
            request: KvRequest::Get { key: key(name) },
            response: KvResponse::Value(seen.map(key)),
        }
    }

    /// A range over `keys` (in that order) with limit `limit` that returned `pairs`.
    fn range(
        id: u64,
        call: u64,
        returned: u64,
        keys: &[&str],
        limit: usize,
        pairs: &[(&str, &str)],
    ) -> KvCall {
        KvCall {
            id,
            call_micros: call,
            return_micros: Some(returned),
            request: KvRequest::Range {
                keys: keys.iter().map(|name| key(name)).collect(),
                limit,
            },
            response: KvResponse::Pairs(
                pairs
                    .iter()
                    .map(|(name, value)| (key(name), key(value)))
                    .collect(),
            ),
        }
    }

    fn linearizable(calls: &[KvCall]) -> bool {
        check_history(&project(calls, Projection::BatchesTied), 1_000_000)
            == CheckOutcome::Linearizable
    }

    fn linearizable_key_by_key(calls: &[KvCall]) -> bool {
        check_history(&project(calls, Projection::KeyByKey), 1_000_000)
            == CheckOutcome::Linearizable
    }

    #[test]
    fn a_range_read_that_sees_half_a_batch_is_refuted() {
        let history = [
            put(1, 0, Some(10), "a", "a1"),
            put(2, 0, Some(10), "b", "b1"),
            batch(3, 20, Some(40), &[("a", Some("a3")), ("b", Some("b3"))]),
            range(4, 25, 35, &["a", "b"], 10, &[("a", "a3"), ("b", "b1")]),
        ];
        let violations = check(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("overwritten"), "{violations:?}");
        // Each key alone is fine: only the check of the read as one instant refutes it.
        assert!(linearizable(&history));
        // Seeing the whole batch, or none of it, is fine.
        let mut whole = history.clone();
        whole[3] = range(4, 25, 35, &["a", "b"], 10, &[("a", "a3"), ("b", "b3")]);
        assert!(check(&whole).is_empty());
        let mut none = history.clone();
        none[3] = range(4, 25, 35, &["a", "b"], 10, &[("a", "a1"), ("b", "b1")]);
        assert!(check(&none).is_empty());
    }

    #[test]
    fn a_half_seen_batch_that_deleted_the_other_key_is_refuted_and_a_racing_write_excuses() {
        let history = [
            put(1, 0, Some(10), "b", "b1"),
            batch(2, 20, None, &[("a", Some("a2")), ("b", None)]),
            range(3, 25, 35, &["a", "b"], 10, &[("a", "a2"), ("b", "b1")]),
        ];
        assert_eq!(check(&history).len(), 1);
        // "Not found" after a batch put b2 is excused by a delete of b that may have come
        // between (called before the read returned, not known done before the batch's call).
        let racing = [
            put(1, 0, Some(10), "b", "b1"),
            batch(2, 20, Some(30), &[("a", Some("a2")), ("b", Some("b2"))]),
            put(3, 22, None, "b", "b3"),
            KvCall {
                request: KvRequest::Write(KeyWrite {
                    key: key("b"),
                    value: None,
                }),
                ..put(4, 21, Some(50), "b", "unused")
            },
            range(5, 25, 60, &["a", "b"], 10, &[("a", "a2")]),
        ];
        assert!(check(&racing).is_empty(), "{:?}", check(&racing));
        let mut no_delete = racing.to_vec();
        no_delete.remove(3);
        assert_eq!(check(&no_delete).len(), 1, "b2 was put before the read");
    }

    #[test]
    fn read_skew_across_single_writes_is_refuted() {
        // b1 is overwritten by b2 before a2 is even called; a read that saw a2 must see b2.
        let history = [
            put(1, 0, Some(10), "b", "b1"),
            put(2, 20, Some(30), "b", "b2"),
            put(3, 40, Some(50), "a", "a2"),
            range(4, 5, 60, &["a", "b"], 10, &[("a", "a2"), ("b", "b1")]),
        ];
        assert_eq!(check(&history).len(), 1);
        // Had a2 been called before b2 returned, the read could sit between them.
        let mut concurrent = history.clone();
        concurrent[2] = put(3, 25, Some(50), "a", "a2");
        assert!(check(&concurrent).is_empty());
    }

    #[test]
    fn malformed_range_answers_are_refuted() {
        let out_of_order = range(1, 0, 10, &["a", "b"], 10, &[("b", "x"), ("a", "y")]);
        let outside = range(1, 0, 10, &["a", "b"], 10, &[("c", "x")]);
        let over_limit = range(1, 0, 10, &["a", "b"], 1, &[("a", "x"), ("b", "y")]);
        let twice = range(1, 0, 10, &["a", "b"], 10, &[("a", "x"), ("a", "y")]);
        for malformed in [out_of_order, outside, over_limit, twice] {
            let violations = check(&[malformed]);
            assert!(violations[0].contains("malformed"), "{violations:?}");
        }
    }

    #[test]
    fn a_limited_range_speaks_only_for_the_keys_up_to_its_last_pair() {
        let history = [
            put(1, 0, Some(10), "a", "a1"),
            put(2, 0, Some(10), "c", "c1"),
            // Limit 1: the answer says nothing of c.
            range(3, 20, 30, &["a", "b", "c"], 1, &[("a", "a1")]),
        ];
        assert!(check(&history).is_empty());
        assert!(linearizable(&history));
        // Without the limit, c missing is refuted (by the per-key search and by the check).
        let mut whole = history.clone();
        whole[2] = range(3, 20, 30, &["a", "b", "c"], 5, &[("a", "a1")]);
        assert!(!linearizable(&whole));
        assert_eq!(check(&whole).len(), 1);
    }

    #[test]
    fn a_batch_seen_on_one_key_is_known_done_on_the_others() {
        // A get sees the batch on a; a later get of b must see it too. The batch never
        // answered, so without tying its keys the search could leave b's write out.
        let history = [
            put(1, 0, Some(10), "b", "b1"),
            batch(2, 20, None, &[("a", Some("a2")), ("b", Some("b2"))]),
            get(3, 25, 30, "a", Some("a2")),
            get(4, 40, 50, "b", Some("b1")),
        ];
        assert!(!linearizable(&history));
        assert!(
            linearizable_key_by_key(&history),
            "only tying the batch refutes it"
        );
        let mut fine = history.clone();
        fine[3] = get(4, 40, 50, "b", Some("b2"));
        assert!(linearizable(&fine));
        // A single put is not tied to anything: its own key's search judges it.
        let single = [
            put(1, 0, Some(10), "b", "b1"),
            put(2, 20, None, "a", "a2"),
            get(3, 25, 30, "a", Some("a2")),
            get(4, 40, 50, "b", Some("b1")),
        ];
        assert!(linearizable(&single));
    }
}

//! The ledger workload: clients on random nodes send requests to the example ledger
//! application's own handler (`borough_ledger`, the code its binary runs) for a few books
//! (named partitions `ledger-N`): they open accounts, transfer money under ids they choose
//! (and send some transfers again, as a client that lost an answer would), and read whole
//! statements. The check holds every answer to what the ledger promises:
//! - each statement is consistent: every account holds its opening balance plus what the
//!   statement's recorded transfers moved, so the book's total is its accounts' opening
//!   balances (no money created or lost);
//! - each statement lists every transfer acknowledged before it was asked for, lists only
//!   transfers asked for before it answered, each with what was asked;
//! - a transfer id is answered "applied" at most once (a retry never applies twice).
//!
//! Violations are reported under `ledger`.

use crate::checkers::Checker;
use crate::run_config::WorkloadConfig;
use crate::state_machine::{SimAnswer, SimOutcome};
use crate::world::{Event, Violation, World};
use borough::coordinator::router::{RoutedOutcome, RouterAnswer};
use borough::directory::PartitionName;
use borough::ids::NodeId;
use borough::seams::Rng;
use borough_ledger::{LedgerRequest, TransferRecord};
use std::collections::{BTreeMap, BTreeSet};

/// Every account opens with this much.
pub const OPENING_BALANCE: u64 = 1000;

/// What became of a call.
#[derive(Clone, Debug, PartialEq)]
pub enum LedgerResponse {
    Pending,
    Replied {
        body: serde_json::Value,
        at_micros: u64,
    },
    /// Refused by the handler or the cluster; a transfer may still have applied (an
    /// unknown outcome), so it constrains nothing.
    Failed(String),
    /// No answer in time.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct LedgerCall {
    pub node: NodeId,
    pub book: u64,
    pub request: LedgerRequest,
    pub call_micros: u64,
    pub response: LedgerResponse,
}

#[derive(Debug, Default)]
pub struct LedgerHistory {
    pub calls: BTreeMap<u64, LedgerCall>,
    pending: BTreeMap<(NodeId, u64), u64>,
    next_id: u64,
    /// Accounts whose opening was acknowledged, per book.
    opened: BTreeMap<u64, BTreeSet<u64>>,
    /// Transfers sent, by id, with their book: a retry resends one of them as it was.
    sent: Vec<(u64, LedgerRequest)>,
    pub refused: u64,
}

impl LedgerHistory {
    fn settle(&mut self, history_id: u64, response: LedgerResponse) {
        if let Some(call) = self.calls.get_mut(&history_id) {
            if call.response == LedgerResponse::Pending {
                call.response = response;
            }
        }
    }

    pub fn node_crashed(&mut self, node: NodeId) {
        for history_id in crate::workload::take_pending_at(&mut self.pending, node) {
            self.settle(history_id, LedgerResponse::Unknown);
        }
    }

    pub fn time_out(&mut self, history_id: u64) {
        self.pending.retain(|_, id| *id != history_id);
        self.settle(history_id, LedgerResponse::Unknown);
    }

    pub fn count(&self, predicate: impl Fn(&LedgerCall) -> bool) -> usize {
        self.calls.values().filter(|call| predicate(call)).count()
    }
}

pub fn book_name(book: u64) -> String {
    format!("ledger-{book}")
}

fn account_name(account: u64) -> String {
    format!("a{account}")
}

/// The next request of a client of `book`.
fn next_request(
    world: &mut World,
    workload: &WorkloadConfig,
    book: u64,
    history_id: u64,
) -> LedgerRequest {
    let accounts = workload.keys_per_partition.max(2);
    let opened = world
        .ledger_history
        .opened
        .get(&book)
        .cloned()
        .unwrap_or_default();
    if (opened.len() as u64) < accounts && (opened.len() < 2 || world.rng.chance(0.3)) {
        let closed: Vec<u64> = (0..accounts)
            .filter(|account| !opened.contains(account))
            .collect();
        let account = closed[world.draw(0, closed.len() as u64 - 1) as usize];
        return LedgerRequest::Open {
            account: account_name(account),
            balance: OPENING_BALANCE,
        };
    }
    if world.rng.chance(workload.read_ratio) {
        return LedgerRequest::Statement;
    }
    let sent: Vec<&LedgerRequest> = world
        .ledger_history
        .sent
        .iter()
        .filter(|(sent_book, _)| *sent_book == book)
        .map(|(_, request)| request)
        .collect();
    if !sent.is_empty() && world.rng.chance(0.15) {
        let pick = world.rng.in_range(0, sent.len() as u64 - 1) as usize;
        return sent[pick].clone();
    }
    let opened: Vec<u64> = opened.into_iter().collect();
    let from = opened[world.draw(0, opened.len() as u64 - 1) as usize];
    let mut to = opened[world.draw(0, opened.len() as u64 - 1) as usize];
    if to == from {
        to = opened[(opened
            .iter()
            .position(|account| *account == from)
            .unwrap_or(0)
            + 1)
            % opened.len()];
    }
    let request = LedgerRequest::Transfer {
        id: format!("t{history_id}"),
        from: account_name(from),
        to: account_name(to),
        amount: world.rng.in_range(1, 400),
    };
    world.ledger_history.sent.push((book, request.clone()));
    request
}

pub fn client_operation(world: &mut World, index: usize) {
    if world.workload_stopped {
        return;
    }
    let workload: WorkloadConfig = world.config.workloads[index].clone();
    let rate = workload.rate_per_s.max(1);
    let next = world.now_micros() + world.draw(0, 2 * (1_000_000 / rate));
    world.schedule(next, Event::ClientLedger { workload: index });
    let Some(partitions) = world.config.partitions.clone() else {
        return;
    };
    let book = world.draw(0, partitions.count - 1);
    let target = world.draw(0, world.nodes.len() as u64 - 1) as usize;
    let history_id = world.ledger_history.next_id;
    world.ledger_history.next_id += 1;
    let request = next_request(world, &workload, book, history_id);
    let now = world.now_micros();
    if !world.nodes[target].is_up() || world.nodes[target].paused_until > now {
        world.ledger_history.refused += 1;
        return;
    }
    let Ok(body) = serde_json::to_vec(&request) else {
        return;
    };
    let Ok(name) = PartitionName::new(book_name(book)) else {
        return;
    };
    let timeout_micros = workload.client_timeout_micros;
    let mut started = None;
    world.with_node(target, |node| {
        started = Some(node.request(name, body, timeout_micros));
    });
    let Some(Ok(request_id)) = started else {
        world.ledger_history.refused += 1;
        return;
    };
    let node = world.nodes[target].id;
    tracing::debug!(history_id, %node, request_id, book, ?request, "ledger call");
    world.ledger_history.calls.insert(
        history_id,
        LedgerCall {
            node,
            book,
            request,
            call_micros: now,
            response: LedgerResponse::Pending,
        },
    );
    world
        .ledger_history
        .pending
        .insert((node, request_id), history_id);
    world.trace.record(now, "ledger", history_id, book);
    world.schedule(now + timeout_micros, Event::LedgerTimeout { history_id });
    if let Some(answer) = crate::workload::kv::take_early_routed(world, node, request_id) {
        on_routed_answer(world, node, answer);
    }
}

/// A routed answer: the ledger's when it answers one of its calls; any other is handed back.
pub fn on_routed_answer(
    world: &mut World,
    node: NodeId,
    answer: RouterAnswer<SimOutcome, SimAnswer>,
) -> Option<RouterAnswer<SimOutcome, SimAnswer>> {
    let Some(history_id) = world
        .ledger_history
        .pending
        .remove(&(node, answer.request_id))
    else {
        return Some(answer);
    };
    let at_micros = world.now_micros();
    let response = match answer.result {
        Ok(RoutedOutcome::Replied(body)) => match serde_json::from_slice(&body) {
            Ok(body) => LedgerResponse::Replied { body, at_micros },
            Err(error) => LedgerResponse::Failed(format!("a reply that is not JSON: {error}")),
        },
        Ok(other) => LedgerResponse::Failed(format!("answered {other:?}")),
        Err(error) => LedgerResponse::Failed(error.to_string()),
    };
    if let (Some(call), LedgerResponse::Replied { .. }) =
        (world.ledger_history.calls.get(&history_id), &response)
    {
        if let LedgerRequest::Open { account, .. } = &call.request {
            let book = call.book;
            if let Some(number) = account.strip_prefix('a').and_then(|text| text.parse().ok()) {
                world
                    .ledger_history
                    .opened
                    .entry(book)
                    .or_default()
                    .insert(number);
            }
        }
    }
    world.ledger_history.settle(history_id, response);
    None
}

/// Holds every answer to the ledger's promises (see the module doc).
pub fn check(world: &mut World) {
    let found = violations(&world.ledger_history.calls);
    let at_micros = world.now_micros();
    for message in found.into_iter().take(5) {
        world.violations.push(Violation {
            at_micros,
            checker: Checker::Ledger,
            message,
        });
    }
}

fn transfer_of(request: &LedgerRequest) -> Option<(&str, TransferRecord)> {
    match request {
        LedgerRequest::Transfer {
            id,
            from,
            to,
            amount,
        } => Some((
            id.as_str(),
            TransferRecord {
                from: from.clone(),
                to: to.clone(),
                amount: *amount,
            },
        )),
        _ => None,
    }
}

fn violations(calls: &BTreeMap<u64, LedgerCall>) -> Vec<String> {
    let mut found = Vec::new();
    // Per book: each transfer id's content and first call, and when it was acknowledged.
    let mut asked: BTreeMap<(u64, String), (TransferRecord, u64)> = BTreeMap::new();
    let mut acknowledged: BTreeMap<(u64, String), u64> = BTreeMap::new();
    let mut applied_answers: BTreeMap<(u64, String), u32> = BTreeMap::new();
    for call in calls.values() {
        let Some((id, record)) = transfer_of(&call.request) else {
            continue;
        };
        let key = (call.book, id.to_string());
        let first = asked
            .entry(key.clone())
            .or_insert((record, call.call_micros));
        first.1 = first.1.min(call.call_micros);
        if let LedgerResponse::Replied { body, at_micros } = &call.response {
            let when = acknowledged.entry(key.clone()).or_insert(*at_micros);
            *when = (*when).min(*at_micros);
            if body["applied"] == serde_json::Value::Bool(true) {
                *applied_answers.entry(key).or_default() += 1;
            }
        }
    }
    for ((book, id), count) in &applied_answers {
        if *count > 1 {
            found.push(format!(
                "book {book}: transfer {id} was answered \"applied\" {count} times: a retry applied it again"
            ));
        }
    }
    for call in calls.values() {
        let (LedgerRequest::Statement, LedgerResponse::Replied { body, at_micros }) =
            (&call.request, &call.response)
        else {
            continue;
        };
        let book = call.book;
        let Some(accounts) = body["accounts"].as_object() else {
            found.push(format!("book {book}: a statement without accounts: {body}"));
            continue;
        };
        let transfers = body["transfers"].as_object().cloned().unwrap_or_default();
        let mut expected: BTreeMap<String, i128> = accounts
            .keys()
            .map(|name| (name.clone(), i128::from(OPENING_BALANCE)))
            .collect();
        for (id, recorded) in &transfers {
            let Ok(recorded) = serde_json::from_value::<TransferRecord>(recorded.clone()) else {
                found.push(format!("book {book}: transfer {id} recorded as {recorded}"));
                continue;
            };
            match asked.get(&(book, id.clone())) {
                None => found.push(format!(
                    "book {book}: the statement answered at {at_micros} us lists transfer {id}, which no client asked for"
                )),
                Some((asked_record, first_call)) => {
                    if *asked_record != recorded {
                        found.push(format!(
                            "book {book}: transfer {id} recorded as {recorded:?}, asked as {asked_record:?}"
                        ));
                    }
                    if *first_call > *at_micros {
                        found.push(format!(
                            "book {book}: the statement answered at {at_micros} us lists transfer {id}, first asked for at {first_call} us"
                        ));
                    }
                }
            }
            *expected
                .entry(recorded.from.clone())
                .or_insert(i128::MIN / 2) -= i128::from(recorded.amount);
            *expected.entry(recorded.to.clone()).or_insert(i128::MIN / 2) +=
                i128::from(recorded.amount);
        }
        for (name, balance) in accounts {
            let held = balance.as_u64().map_or(-1, i128::from);
            let should = expected.get(name).copied().unwrap_or(-1);
            if held != should {
                found.push(format!(
                    "book {book}: the statement called at {} us at {} says account {name} holds {held}, but its opening balance and the statement's own transfers make {should} (money created or lost)",
                    call.call_micros, call.node
                ));
            }
        }
        for ((acknowledged_book, id), when) in &acknowledged {
            if *acknowledged_book == book && *when < call.call_micros && !transfers.contains_key(id)
            {
                found.push(format!(
                    "book {book}: transfer {id}, acknowledged at {when} us, is missing from the statement called at {} us at {}",
                    call.call_micros, call.node
                ));
            }
        }
    }
    found
}

//! The ledger against real processes: three `borough-ledger start --handler ledger` nodes on
//! loopback. Clients transfer money between the accounts of one book through random nodes,
//! sending a transfer again under its id until it gets a clear answer, while the book's
//! leader is killed with SIGKILL and restarted on its data dir. Afterwards a statement read
//! through every node must show:
//! - the book's total unchanged (no money created or lost);
//! - every acknowledged transfer recorded, and balances equal to the opening balances plus
//!   what the recorded transfers moved (none applied twice);
//! - only transfers some client asked for, as it asked;
//! - every acknowledged transfer in the audit trail (`bank-audit`).
//!
//! It also checks that transfers are acknowledged again after the kill, and that the node
//! goes on after a handler refuses a request.

#![allow(clippy::disallowed_methods)]

#[path = "../../../tests/cluster_support/mod.rs"]
mod cluster_support;

/// The program `cluster_support` starts.
const BINARY: &str = env!("CARGO_BIN_EXE_borough-ledger");

use borough_ledger::{LedgerRequest, TransferRecord};
use cluster_support::{http_request, Cluster, HttpResponse};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BOOK: &str = "bank";
const ACCOUNTS: u64 = 4;
const OPENING_BALANCE: u64 = 1000;
const CLIENTS: u64 = 4;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// Sends of one transfer at most before the client gives up on it.
const SENDS_MAX: u32 = 20;

fn send(node: SocketAddr, request: &LedgerRequest) -> Result<HttpResponse, String> {
    let body = serde_json::to_vec(request).expect("a request encodes");
    http_request(
        node,
        "POST",
        &format!("/partitions/{BOOK}/requests?timeout_ms=5000"),
        Some(&body),
        CLIENT_TIMEOUT,
    )
}

/// Sends `request` through the nodes in turn until one answers 200 or 422.
fn until_answered(addresses: &[SocketAddr], request: &LedgerRequest) -> HttpResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut turn = 0;
    loop {
        let node = addresses[turn % addresses.len()];
        turn += 1;
        match send(node, request) {
            Ok(response) if matches!(response.status, 200 | 422) => return response,
            Ok(response) => eprintln!("{request:?} through {node}: {}", response.describe()),
            Err(failure) => eprintln!("{request:?} through {node}: {failure}"),
        }
        assert!(
            Instant::now() < deadline,
            "{request:?} got no answer in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[derive(Default)]
struct Outcomes {
    /// Every transfer asked for, by id.
    asked: BTreeMap<String, TransferRecord>,
    /// Transfers answered 200, with when, and how many of those answers said "applied".
    acknowledged: BTreeMap<String, (Instant, u32)>,
}

fn client(
    client_id: u64,
    addresses: Vec<SocketAddr>,
    outcomes: Arc<Mutex<Outcomes>>,
    stop: Arc<AtomicBool>,
) {
    let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ client_id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut draw = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let from = draw(ACCOUNTS);
        let to = (from + 1 + draw(ACCOUNTS - 1)) % ACCOUNTS;
        let id = format!("c{client_id}-{sequence}");
        let record = TransferRecord {
            from: format!("a{from}"),
            to: format!("a{to}"),
            amount: 1 + draw(50),
        };
        let request = LedgerRequest::Transfer {
            id: id.clone(),
            from: record.from.clone(),
            to: record.to.clone(),
            amount: record.amount,
        };
        outcomes
            .lock()
            .expect("outcomes")
            .asked
            .insert(id.clone(), record);
        // The same id again until a clear answer: the ledger applies it once.
        for _ in 0..SENDS_MAX {
            let node = addresses[draw(addresses.len() as u64) as usize];
            match send(node, &request) {
                Ok(response) if response.status == 200 => {
                    let applied = response
                        .json()
                        .map(|body| body["applied"] == Value::Bool(true))
                        .unwrap_or(false);
                    let mut outcomes = outcomes.lock().expect("outcomes");
                    let entry = outcomes
                        .acknowledged
                        .entry(id.clone())
                        .or_insert((Instant::now(), 0));
                    entry.1 += u32::from(applied);
                    break;
                }
                Ok(response) if response.status == 422 => break,
                Ok(response) if (400..500).contains(&response.status) => {
                    panic!(
                        "a well-formed transfer was refused: {}",
                        response.describe()
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// The node index whose HTTP address serves `leader` (node ids are 1-based indexes).
fn leader_of_book(cluster: &Cluster) -> Option<usize> {
    let response = http_request(
        cluster.http(0),
        "GET",
        &format!("/partitions/{BOOK}"),
        None,
        Duration::from_secs(5),
    )
    .ok()?;
    let leader = response.json().ok()?["leader"].as_u64()?;
    Some(leader as usize - 1)
}

#[test]
fn transfers_survive_a_kill_of_the_leader_and_apply_once() {
    let mut cluster = Cluster::start_joined_with(3, &["--handler", "ledger"]);
    let addresses: Vec<SocketAddr> = (0..cluster.size())
        .map(|index| cluster.http(index))
        .collect();
    for account in 0..ACCOUNTS {
        let opened = until_answered(
            &addresses,
            &LedgerRequest::Open {
                account: format!("a{account}"),
                balance: OPENING_BALANCE,
            },
        );
        assert_eq!(opened.status, 200, "{}", opened.describe());
    }
    // A refusal is the handler's answer, and the node goes on.
    let refused = until_answered(
        &addresses,
        &LedgerRequest::Transfer {
            id: "too-much".into(),
            from: "a0".into(),
            to: "a1".into(),
            amount: OPENING_BALANCE * 10,
        },
    );
    assert_eq!(refused.status, 422, "{}", refused.describe());
    assert!(
        refused.body_text().contains("less than"),
        "{}",
        refused.describe()
    );

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client_id| {
            let (addresses, outcomes, stop) =
                (addresses.clone(), Arc::clone(&outcomes), Arc::clone(&stop));
            std::thread::spawn(move || client(client_id, addresses, outcomes, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let leader = leader_of_book(&cluster).expect("the book has a leader");
    cluster.kill(leader);
    let killed_at = Instant::now();
    eprintln!(
        "killed node {} (the book's leader) with SIGKILL",
        leader + 1
    );
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(leader);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client thread");
    }

    let outcomes = outcomes.lock().expect("outcomes");
    let after_kill = outcomes
        .acknowledged
        .values()
        .filter(|(when, _)| *when > killed_at)
        .count();
    eprintln!(
        "transfers asked: {}, acknowledged: {}, acknowledged after the kill: {after_kill}",
        outcomes.asked.len(),
        outcomes.acknowledged.len()
    );
    assert!(
        after_kill > 0,
        "no transfer was acknowledged after the leader's kill"
    );
    for (id, (_, applied)) in &outcomes.acknowledged {
        assert!(
            *applied <= 1,
            "transfer {id} was answered \"applied\" {applied} times"
        );
    }

    // The statement, read through every node, the restarted one included.
    for node in &addresses {
        let statement = loop {
            match send(*node, &LedgerRequest::Statement) {
                Ok(response) if response.status == 200 => break response.json().expect("JSON"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let accounts = statement["accounts"].as_object().expect("accounts");
        let transfers = statement["transfers"].as_object().expect("transfers");
        let mut expected: BTreeMap<String, i64> = (0..ACCOUNTS)
            .map(|account| (format!("a{account}"), OPENING_BALANCE as i64))
            .collect();
        for (id, recorded) in transfers {
            let recorded: TransferRecord =
                serde_json::from_value(recorded.clone()).expect("a transfer record");
            assert_eq!(
                outcomes.asked.get(id),
                Some(&recorded),
                "transfer {id} is recorded as no client asked"
            );
            *expected.get_mut(&recorded.from).expect("an account") -= recorded.amount as i64;
            *expected.get_mut(&recorded.to).expect("an account") += recorded.amount as i64;
        }
        for id in outcomes.acknowledged.keys() {
            assert!(
                transfers.contains_key(id),
                "acknowledged transfer {id} is missing"
            );
        }
        let mut total = 0;
        for (name, should) in &expected {
            let held = accounts[name].as_i64().expect("a balance");
            assert_eq!(held, *should, "account {name} through {node}");
            total += held;
        }
        assert_eq!(
            total,
            (ACCOUNTS * OPENING_BALANCE) as i64,
            "the book's total"
        );
    }
    // The audit trail holds every acknowledged transfer.
    for id in outcomes.acknowledged.keys() {
        let response = loop {
            match http_request(
                addresses[0],
                "GET",
                &format!("/partitions/{BOOK}-audit/keys/transfer%2F{id}"),
                None,
                Duration::from_secs(5),
            ) {
                Ok(response) if matches!(response.status, 200 | 404) => break response,
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        assert_eq!(
            response.status, 200,
            "transfer {id} is not in the audit trail"
        );
    }
}

//! A ledger as a Borough application: each partition is a book of accounts (balances under
//! `account/NAME`), and its handler moves money between accounts of the same book. Every
//! transfer carries an id chosen by the client; the book records it under `transfer/ID` in
//! the same atomic batch as the two balances, so a transfer applies once however often it
//! is sent (the handler is declared idempotent, and the node may run it again at a new
//! leader), and the sum of a book's balances never changes. Each transfer is also written
//! to the book's audit trail, another partition (`BOOK-audit`), under `transfer/ID`.
//!
//! Requests are JSON objects with an `op`:
//! - `{"op":"open","account":"alice","balance":100}`: opens an account (again with the same
//!   balance: a no-op; with another: refused);
//! - `{"op":"transfer","id":"t-1","from":"alice","to":"bob","amount":10}`: moves `amount`
//!   if `from` holds it; replies `{"applied":true}` the first time and `{"applied":false}`
//!   (with the recorded transfer) for a repeat of the same id;
//! - `{"op":"balance","account":"alice"}` and `{"op":"book"}` (every account, and the sum);
//! - `{"op":"statement"}`: every account and every recorded transfer, read together.
//!
//! Invariants: a book's requests run one at a time on its leader (`one_at_a_time`), so a
//! transfer's read of both balances and its batch see nothing in between; a transfer id is
//! recorded exactly when its balances moved.

use borough::application::{handler_fn, Handler, HandlerContext, HandlerError, HandlerRequest};
use borough::partition::command::BatchOperation;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A ledger request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LedgerRequest {
    Open {
        account: String,
        balance: u64,
    },
    Transfer {
        id: String,
        from: String,
        to: String,
        amount: u64,
    },
    Balance {
        account: String,
    },
    Book,
    /// Every account and every recorded transfer, read together.
    Statement,
}

/// A transfer as the book records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub from: String,
    pub to: String,
    pub amount: u64,
}

/// Longest account name or transfer id.
pub const NAME_BYTES_MAX: usize = 256;
/// The most accounts `book` lists.
pub const BOOK_ACCOUNTS_MAX: usize = 10_000;

pub fn account_key(account: &str) -> String {
    format!("account/{account}")
}

pub fn transfer_key(id: &str) -> String {
    format!("transfer/{id}")
}

/// The audit trail's partition for book `book`.
pub fn audit_partition(book: &str) -> String {
    format!("{book}-audit")
}

fn check_name(what: &str, name: &str) -> Result<(), HandlerError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(HandlerError::refused(format!(
            "{what} must be 1 to {NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

fn parse_balance(account: &str, bytes: &[u8]) -> Result<u64, HandlerError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| HandlerError::refused(format!("account {account}'s balance is damaged")))
}

fn reply(value: serde_json::Value) -> Result<Vec<u8>, HandlerError> {
    serde_json::to_vec(&value).map_err(|error| HandlerError::refused(error.to_string()))
}

async fn balance_of(context: &HandlerContext, account: &str) -> Result<Option<u64>, HandlerError> {
    match context.partition().get(account_key(account)).await? {
        Some(bytes) => Ok(Some(parse_balance(account, &bytes)?)),
        None => Ok(None),
    }
}

async fn handle(request: HandlerRequest, context: HandlerContext) -> Result<Vec<u8>, HandlerError> {
    let parsed: LedgerRequest = serde_json::from_slice(&request.body)
        .map_err(|error| HandlerError::refused(format!("not a ledger request: {error}")))?;
    let book = context.partition();
    match parsed {
        LedgerRequest::Open { account, balance } => {
            check_name("an account name", &account)?;
            match balance_of(&context, &account).await? {
                Some(existing) if existing == balance => reply(json!({ "opened": false })),
                Some(_) => Err(HandlerError::refused(format!(
                    "account {account} is open already"
                ))),
                None => {
                    book.put(account_key(&account), balance.to_string()).await?;
                    reply(json!({ "opened": true }))
                }
            }
        }
        LedgerRequest::Balance { account } => match balance_of(&context, &account).await? {
            Some(balance) => reply(json!({ "account": account, "balance": balance })),
            None => Err(HandlerError::refused(format!("no account {account}"))),
        },
        LedgerRequest::Book => {
            let pairs = book
                .entries(
                    Some(b"account/".to_vec()),
                    Some(b"account0".to_vec()),
                    BOOK_ACCOUNTS_MAX,
                )
                .await?;
            let mut accounts = serde_json::Map::new();
            let mut total: u64 = 0;
            for (key, value) in pairs {
                let name = String::from_utf8_lossy(&key["account/".len()..]).into_owned();
                let balance = parse_balance(&name, &value)?;
                total = total.saturating_add(balance);
                accounts.insert(name, json!(balance));
            }
            reply(json!({ "accounts": accounts, "total": total }))
        }
        LedgerRequest::Statement => {
            let pairs = book.entries(None, None, usize::MAX).await?;
            let mut accounts = serde_json::Map::new();
            let mut transfers = serde_json::Map::new();
            for (key, value) in pairs {
                let key = String::from_utf8_lossy(&key).into_owned();
                if let Some(name) = key.strip_prefix("account/") {
                    accounts.insert(name.to_string(), json!(parse_balance(name, &value)?));
                } else if let Some(id) = key.strip_prefix("transfer/") {
                    let record: serde_json::Value = serde_json::from_slice(&value)
                        .map_err(|error| HandlerError::refused(error.to_string()))?;
                    transfers.insert(id.to_string(), record);
                }
            }
            reply(json!({ "accounts": accounts, "transfers": transfers }))
        }
        LedgerRequest::Transfer {
            id,
            from,
            to,
            amount,
        } => {
            check_name("a transfer id", &id)?;
            let audit = context.other_partition(&audit_partition(&request.partition));
            if let Some(recorded) = book.get(transfer_key(&id)).await? {
                // A repeat: the transfer applied before. Its audit entry is written again, in
                // case the first run stopped between the two.
                audit.put(transfer_key(&id), recorded.clone()).await?;
                let record: serde_json::Value = serde_json::from_slice(&recorded)
                    .map_err(|error| HandlerError::refused(error.to_string()))?;
                return reply(json!({ "applied": false, "transfer": record }));
            }
            if from == to {
                return Err(HandlerError::refused("a transfer needs two accounts"));
            }
            let Some(from_balance) = balance_of(&context, &from).await? else {
                return Err(HandlerError::refused(format!("no account {from}")));
            };
            let Some(to_balance) = balance_of(&context, &to).await? else {
                return Err(HandlerError::refused(format!("no account {to}")));
            };
            if from_balance < amount {
                return Err(HandlerError::refused(format!(
                    "account {from} holds {from_balance}, less than {amount}"
                )));
            }
            let Some(to_after) = to_balance.checked_add(amount) else {
                return Err(HandlerError::refused(format!(
                    "account {to} would overflow"
                )));
            };
            let record = serde_json::to_vec(&TransferRecord {
                from: from.clone(),
                to: to.clone(),
                amount,
            })
            .map_err(|error| HandlerError::refused(error.to_string()))?;
            book.batch(vec![
                BatchOperation::Put {
                    key: account_key(&from).into_bytes(),
                    value: (from_balance - amount).to_string().into_bytes(),
                },
                BatchOperation::Put {
                    key: account_key(&to).into_bytes(),
                    value: to_after.to_string().into_bytes(),
                },
                BatchOperation::Put {
                    key: transfer_key(&id).into_bytes(),
                    value: record.clone(),
                },
            ])
            .await?;
            audit.put(transfer_key(&id), record).await?;
            reply(json!({ "applied": true }))
        }
    }
}

/// The ledger's request handler.
pub fn ledger_handler() -> impl Handler {
    handler_fn(handle).idempotent().one_at_a_time()
}

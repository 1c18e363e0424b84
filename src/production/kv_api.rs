//! The HTTP API of named partitions and the cluster: any node takes any request and routes it
//! to the partition's leader.
//!
//! Routes: `PUT`, `GET`, `DELETE /partitions/{name}/keys/{key}` (the value is the raw body),
//! `GET /partitions/{name}/keys?start=&end=&gt=&gte=&lt=&lte=&limit=&reverse=&continue=` (a
//! page of pairs in key order, or its reverse, with the token that reads on),
//! `POST /partitions/{name}/batch` (a JSON list of `{"type": "put"|"del", "key", "value"}`,
//! applied atomically), `GET /partitions/{name}` (info), `GET /partitions/{name}/replica`
//! (this node's replica, for info), `GET /cluster`.
//!
//! Names and keys are bytes: percent-encoded in paths; in JSON a text field (`key`) when
//! they are UTF-8, else its base64 twin (`key_base64`).
//!
//! Invariants: every request is decoded and checked (sizes, shapes) before the node sees it,
//! so bad input gets a 4xx naming the problem and changes nothing; a missing key is 404 with
//! `{"error": "Key not found in database"}`; a request the cluster could not serve says why
//! (5xx), and a write whose outcome is unknown says so (504), never a success.

use crate::coordinator::cluster_machine::{
    ClusterAnswer, ClusterOperation, ClusterOutcome, ClusterQuery,
};
use crate::coordinator::router::{RouteError, RoutedOutcome, RoutedRequest};
use crate::directory::PartitionName;
use crate::partition::command::{BatchOperation, KvOperation, KEY_BYTES_MAX};
use crate::partition::host::RequestError;
use crate::partition::kv_store::{KeyBound, RangeQuery, ReadAnswer, ReadRequest, WriteOutcome};
use crate::partition::state_machine::StateMachineError;
use crate::production::driver::{ReplicaView, RoutedResult};
use crate::production::http_api::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long info waits for each replica's own view.
const REPLICA_VIEW_TIMEOUT: Duration = Duration::from_secs(1);

pub fn kv_routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/partitions/{name}/keys/{key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/partitions/{name}/keys", get(scan))
        .route("/partitions/{name}/batch", post(batch))
        .route(
            "/partitions/{name}/requests",
            post(crate::production::request_api::request),
        )
        .route("/partitions/{name}", get(info))
        .route("/partitions/{name}/replica", get(replica))
        .route("/cluster", get(cluster))
        .route("/cluster/leave", post(leave))
}

/// Drains this node out of its cluster: 202 at once; its replicas then move away, the
/// directory marks it left, and the process stops (`GET /cluster` shows the progress).
async fn leave(State(state): State<ApiState>) -> Response {
    // Before the node is asked: a drain must never be mistaken for a death later.
    if let Err(failure) = crate::production::rejoin::mark_leaving(&state.data_dir) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, failure);
    }
    match state.node.leave().await {
        Ok(Ok(())) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "leaving": true,
                "detail": "this node's replicas move away; it stops once the cluster no longer needs it"
            })),
        )
            .into_response(),
        Ok(Err(reason)) => error(StatusCode::CONFLICT, reason),
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, failure),
    }
}

pub(super) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// A request's body, or the answer to a body that is too large (413) or unreadable (400).
pub(super) fn read_body(
    body: Result<Bytes, BytesRejection>,
    what: &str,
    body_bytes_max: usize,
) -> Result<Bytes, Refusal> {
    match body {
        Ok(body) => Ok(body),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is larger than the limit of {body_bytes_max} bytes"),
        )),
        Err(rejection) => Err(refuse(StatusCode::BAD_REQUEST, rejection.body_text())),
    }
}

/// A refusal decided on the way to an answer; small, so `Result`s carrying it stay small.
pub(super) struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

pub(super) fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Refusal {
    Refusal(status, message.to_string())
}

/// Segment `index` of the request's path, percent-decoded to bytes (any bytes: the router's
/// own parameters would insist on UTF-8). Every route here is `/partitions/{name}/...`, so
/// the name is segment 2 and a key segment 4.
pub(super) fn path_bytes(uri: &Uri, index: usize) -> Result<Vec<u8>, Refusal> {
    let raw = uri
        .path()
        .split('/')
        .nth(index)
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "the path is too short"))?;
    Ok(percent_encoding::percent_decode_str(raw).collect())
}

pub(super) fn partition_name(params: &Uri) -> Result<PartitionName, Refusal> {
    let bytes = path_bytes(params, 2)?;
    PartitionName::new(bytes).map_err(|invalid| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("partition name: {invalid}"),
        )
    })
}

fn check_key(key: &[u8]) -> Result<(), Refusal> {
    if key.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, "keys must not be empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "key of {} bytes is over the limit of {KEY_BYTES_MAX}",
                key.len()
            ),
        ));
    }
    Ok(())
}

fn path_key(params: &Uri) -> Result<Vec<u8>, Refusal> {
    let key = path_bytes(params, 4)?;
    check_key(&key)?;
    Ok(key)
}

/// The status and body of a request the cluster did not serve.
pub(super) fn route_error(error_value: RouteError) -> Response {
    let status = match &error_value {
        RouteError::Request(RequestError::State(StateMachineError::KeyNotFound)) => {
            StatusCode::NOT_FOUND
        }
        RouteError::Request(RequestError::Invalid(_)) => StatusCode::BAD_REQUEST,
        RouteError::Request(RequestError::OutcomeUnknown) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, error_value)
}

pub(super) async fn routed(
    state: &ApiState,
    name: PartitionName,
    request: RoutedRequest<ClusterOperation, ClusterQuery>,
) -> Result<RoutedOutcome<ClusterOutcome, ClusterAnswer>, Response> {
    let result: RoutedResult = state
        .node
        .routed(name, request)
        .await
        .map_err(|failure| error(StatusCode::SERVICE_UNAVAILABLE, failure))?;
    result.map_err(route_error)
}

fn unexpected(what: impl std::fmt::Debug) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the partition answered {what:?}"),
    )
}

async fn get_key(State(state): State<ApiState>, params: Uri) -> Response {
    let (name, key) = match (partition_name(&params), path_key(&params)) {
        (Ok(name), Ok(key)) => (name, key),
        (Err(refusal), _) | (_, Err(refusal)) => return refusal.into_response(),
    };
    let read = RoutedRequest::Read(ClusterQuery::Kv(ReadRequest::Get { key }));
    match routed(&state, name, read).await {
        Ok(RoutedOutcome::Read(ClusterAnswer::Kv(ReadAnswer::Value(value)))) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            value,
        )
            .into_response(),
        Ok(other) => unexpected(other),
        Err(response) => response,
    }
}

fn write_answer(
    outcome: Result<RoutedOutcome<ClusterOutcome, ClusterAnswer>, Response>,
) -> Response {
    match outcome {
        Ok(RoutedOutcome::Wrote(ClusterOutcome::Kv(WriteOutcome::Put | WriteOutcome::Batch))) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(RoutedOutcome::Wrote(ClusterOutcome::Kv(WriteOutcome::Deleted(existed)))) => {
            (StatusCode::OK, Json(json!({ "deleted": existed }))).into_response()
        }
        Ok(other) => unexpected(other),
        Err(response) => response,
    }
}

async fn put_key(
    State(state): State<ApiState>,
    params: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (name, key) = match (partition_name(&params), path_key(&params)) {
        (Ok(name), Ok(key)) => (name, key),
        (Err(refusal), _) | (_, Err(refusal)) => return refusal.into_response(),
    };
    let value = match read_body(body, "value", state.body_bytes_max) {
        Ok(value) => value.to_vec(),
        Err(refusal) => return refusal.into_response(),
    };
    let write = RoutedRequest::Write(ClusterOperation::Kv(KvOperation::Put { key, value }));
    write_answer(routed(&state, name, write).await)
}

async fn delete_key(State(state): State<ApiState>, params: Uri) -> Response {
    let (name, key) = match (partition_name(&params), path_key(&params)) {
        (Ok(name), Ok(key)) => (name, key),
        (Err(refusal), _) | (_, Err(refusal)) => return refusal.into_response(),
    };
    let write = RoutedRequest::Write(ClusterOperation::Kv(KvOperation::Delete { key }));
    write_answer(routed(&state, name, write).await)
}

/// Bytes in JSON: `field` as text, or `field_base64` when they are not UTF-8.
fn put_bytes(object: &mut Map<String, Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            object.insert(field.to_string(), Value::String(text.to_string()));
        }
        Err(_) => {
            object.insert(
                format!("{field}_base64"),
                Value::String(STANDARD.encode(bytes)),
            );
        }
    }
}

/// One element of a batch body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchElement {
    #[serde(rename = "type")]
    kind: String,
    key: Option<String>,
    key_base64: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
}

/// Bytes from a JSON element's text field or its base64 twin (exactly one of them).
fn element_bytes(
    index: usize,
    field: &str,
    text: Option<String>,
    base64: Option<String>,
) -> Result<Option<Vec<u8>>, String> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(format!(
            "operation {index}: give {field} or {field}_base64, not both"
        )),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(encoded)) => STANDARD
            .decode(encoded.as_bytes())
            .map(Some)
            .map_err(|invalid| format!("operation {index}: {field}_base64: {invalid}")),
        (None, None) => Ok(None),
    }
}

fn batch_operations(body: &[u8]) -> Result<Vec<BatchOperation>, String> {
    let elements: Vec<BatchElement> = serde_json::from_slice(body).map_err(|invalid| {
        format!("a batch is a JSON list of {{\"type\", \"key\", \"value\"}}: {invalid}")
    })?;
    if elements.is_empty() {
        return Err("a batch needs at least one operation".to_string());
    }
    let mut operations = Vec::with_capacity(elements.len());
    for (index, element) in elements.into_iter().enumerate() {
        let key = element_bytes(index, "key", element.key, element.key_base64)?
            .ok_or_else(|| format!("operation {index} has no key"))?;
        let value = element_bytes(index, "value", element.value, element.value_base64)?;
        let operation = match (element.kind.as_str(), value) {
            ("put", Some(value)) => BatchOperation::Put { key, value },
            ("put", None) => return Err(format!("operation {index}: a put needs a value")),
            ("del", None) => BatchOperation::Delete { key },
            ("del", Some(_)) => return Err(format!("operation {index}: a del takes no value")),
            (other, _) => {
                return Err(format!(
                    "operation {index}: type {other:?} is not \"put\" or \"del\""
                ))
            }
        };
        operations.push(operation);
    }
    Ok(operations)
}

async fn batch(
    State(state): State<ApiState>,
    params: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let name = match partition_name(&params) {
        Ok(name) => name,
        Err(refusal) => return refusal.into_response(),
    };
    let body = match read_body(body, "batch", state.body_bytes_max) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let operations = match batch_operations(&body) {
        Ok(operations) => operations,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let write = RoutedRequest::Write(ClusterOperation::Kv(KvOperation::Batch(operations)));
    write_answer(routed(&state, name, write).await)
}

/// A bound from the query: `field` as text (percent-decoded by the query parser), or
/// `field_base64`.
fn query_key(query: &BTreeMap<String, String>, field: &str) -> Result<Option<Vec<u8>>, String> {
    let text = query.get(field).cloned();
    let encoded = query.get(&format!("{field}_base64")).cloned();
    let key = match (text, encoded) {
        (Some(_), Some(_)) => return Err(format!("give {field} or {field}_base64, not both")),
        (Some(text), None) => Some(text.into_bytes()),
        (None, Some(encoded)) => Some(
            STANDARD
                .decode(encoded.as_bytes())
                .map_err(|invalid| format!("{field}_base64: {invalid}"))?,
        ),
        (None, None) => None,
    };
    if let Some(key) = &key {
        if key.len() > KEY_BYTES_MAX {
            return Err(format!(
                "{field} of {} bytes is over the key limit of {KEY_BYTES_MAX}",
                key.len()
            ));
        }
    }
    Ok(key)
}

const SCAN_FIELDS: [&str; 14] = [
    "start",
    "start_base64",
    "end",
    "end_base64",
    "gt",
    "gt_base64",
    "gte",
    "gte_base64",
    "lt",
    "lt_base64",
    "lte",
    "lte_base64",
    "limit",
    "reverse",
];

/// The range a scan's query asks for: `start` is `gte`, `end` is `lt` (LevelDOWN's options
/// otherwise), or a continuation token from an earlier page.
fn range_query(query: &BTreeMap<String, String>) -> Result<RangeQuery, String> {
    if let Some(token) = query.get("continue") {
        if query.len() > 1 {
            return Err("continue carries the whole range; give it alone".to_string());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .map_err(|_| "continue is not a token this API gave".to_string())?;
        let range: RangeQuery = postcard::from_bytes(&bytes)
            .map_err(|_| "continue is not a token this API gave".to_string())?;
        for bound in [&range.start, &range.end] {
            if let KeyBound::Included(key) | KeyBound::Excluded(key) = bound {
                if key.len() > KEY_BYTES_MAX {
                    return Err("continue is not a token this API gave".to_string());
                }
            }
        }
        return Ok(range);
    }
    if let Some(unknown) = query
        .keys()
        .find(|field| !SCAN_FIELDS.contains(&field.as_str()))
    {
        return Err(format!(
            "unknown parameter {unknown:?}; a scan takes start, end, gt, gte, lt, lte (each also \
             as _base64), limit, reverse and continue"
        ));
    }
    let lower = [
        ("start", query_key(query, "start")?, true),
        ("gte", query_key(query, "gte")?, true),
        ("gt", query_key(query, "gt")?, false),
    ];
    let upper = [
        ("end", query_key(query, "end")?, false),
        ("lt", query_key(query, "lt")?, false),
        ("lte", query_key(query, "lte")?, true),
    ];
    let pick = |bounds: [(&str, Option<Vec<u8>>, bool); 3], side: &str| {
        let given: Vec<_> = bounds
            .into_iter()
            .filter_map(|(name, key, included)| key.map(|key| (name, key, included)))
            .collect();
        match given.len() {
            0 => Ok(KeyBound::Unbounded),
            1 => {
                let (_, key, included) = given.into_iter().next().expect("one bound");
                Ok(if included {
                    KeyBound::Included(key)
                } else {
                    KeyBound::Excluded(key)
                })
            }
            _ => Err(format!(
                "the {side} end is given twice ({}); give one",
                given
                    .iter()
                    .map(|(name, _, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    };
    let limit = match query.get("limit") {
        None => usize::MAX,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if limit > 0 => limit,
            _ => return Err(format!("limit {text:?} is not a positive number")),
        },
    };
    let reverse = match query.get("reverse").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("reverse {other:?} is not true or false")),
    };
    Ok(RangeQuery {
        start: pick(lower, "lower")?,
        end: pick(upper, "upper")?,
        limit,
        reverse,
    })
}

async fn scan(
    State(state): State<ApiState>,
    params: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let name = match partition_name(&params) {
        Ok(name) => name,
        Err(refusal) => return refusal.into_response(),
    };
    let range = match range_query(&query) {
        Ok(range) => range,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let read = RoutedRequest::Read(ClusterQuery::Kv(ReadRequest::Range(range)));
    match routed(&state, name, read).await {
        Ok(RoutedOutcome::Read(ClusterAnswer::Kv(ReadAnswer::Page(page)))) => {
            let pairs: Vec<Value> = page
                .pairs
                .iter()
                .map(|(key, value)| {
                    let mut pair = Map::new();
                    put_bytes(&mut pair, "key", key);
                    put_bytes(&mut pair, "value", value);
                    Value::Object(pair)
                })
                .collect();
            let next = page.next.as_ref().and_then(|next| {
                postcard::to_allocvec(next)
                    .ok()
                    .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
            });
            Json(json!({ "pairs": pairs, "next": next })).into_response()
        }
        Ok(other) => unexpected(other),
        Err(response) => response,
    }
}

/// This node's own replica of the partition (for info, which asks every replica).
async fn replica(State(state): State<ApiState>, params: Uri) -> Response {
    let name = match partition_name(&params) {
        Ok(name) => name,
        Err(refusal) => return refusal.into_response(),
    };
    match state.node.placement(name).await {
        Ok(Some(placement)) => match placement.local {
            Some(view) => Json(view).into_response(),
            None => error(StatusCode::NOT_FOUND, "no replica of this partition here"),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, "no partition of that name"),
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, failure),
    }
}

fn name_json(object: &mut Map<String, Value>, name: &PartitionName) {
    put_bytes(object, "name", name.as_bytes());
}

async fn info(State(state): State<ApiState>, params: Uri) -> Response {
    let name = match partition_name(&params) {
        Ok(name) => name,
        Err(refusal) => return refusal.into_response(),
    };
    let placement = match state.node.placement(name.clone()).await {
        Ok(Some(placement)) => placement,
        // Info never creates a partition: the name is looked up, not written.
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "no partition of that name (a partition is created by its first write or read)",
            )
        }
        Err(failure) => return error(StatusCode::SERVICE_UNAVAILABLE, failure),
    };
    // The size, read linearizably through the leader (which also tells who leads).
    let size = routed(
        &state,
        name.clone(),
        RoutedRequest::Read(ClusterQuery::Kv(ReadRequest::Size)),
    )
    .await;
    let mut replicas = Vec::new();
    let mut views: BTreeMap<u32, ReplicaView> = BTreeMap::new();
    for (id, member) in &placement.replicas {
        let mut replica = Map::new();
        replica.insert("id".into(), json!(id.0));
        let Some(member) = member else {
            replica.insert("error".into(), json!("not in the directory"));
            replicas.push(Value::Object(replica));
            continue;
        };
        replica.insert("peer_address".into(), json!(member.peer_address));
        replica.insert("http_address".into(), json!(member.http_address));
        replica.insert("zone".into(), json!(member.zone));
        replica.insert("region".into(), json!(member.region));
        let view = if id.0 == state.local_id.0 {
            placement
                .local
                .clone()
                .ok_or("no replica here yet".to_string())
        } else {
            let url = format!(
                "http://{}/partitions/{}/replica",
                member.http_address,
                percent_encoding::percent_encode(
                    name.as_bytes(),
                    percent_encoding::NON_ALPHANUMERIC
                )
            );
            match state.client.get(&url, REPLICA_VIEW_TIMEOUT).await {
                Ok(response) if response.status == StatusCode::OK => {
                    serde_json::from_slice::<ReplicaView>(&response.body)
                        .map_err(|invalid| format!("a malformed answer: {invalid}"))
                }
                Ok(response) => Err(format!(
                    "answered {}: {}",
                    response.status,
                    response.body_text()
                )),
                Err(failure) => Err(format!("unreachable: {failure}")),
            }
        };
        match view {
            Ok(view) => {
                replica.insert("role".into(), json!(view.role));
                replica.insert("term".into(), json!(view.term));
                replica.insert("commit_index".into(), json!(view.commit_index));
                replica.insert("applied_index".into(), json!(view.applied_index));
                views.insert(id.0, view);
            }
            Err(reason) => {
                replica.insert("role".into(), json!("unknown"));
                replica.insert("error".into(), json!(reason));
            }
        }
        replicas.push(Value::Object(replica));
    }
    let leader = views
        .values()
        .find(|view| view.role == "leader")
        .map(|view| view.node)
        .or(placement.routed_leader.map(|id| id.0));
    let mut body = Map::new();
    name_json(&mut body, &name);
    body.insert("generation".into(), json!(placement.generation));
    body.insert("leader".into(), json!(leader));
    if let Some(view) = leader.and_then(|leader| views.get(&leader)) {
        body.insert("term".into(), json!(view.term));
        body.insert("commit_index".into(), json!(view.commit_index));
        body.insert("applied_index".into(), json!(view.applied_index));
    }
    match size {
        Ok(RoutedOutcome::Read(ClusterAnswer::Kv(ReadAnswer::Size { keys, bytes }))) => {
            body.insert("size".into(), json!({ "keys": keys, "bytes": bytes }));
        }
        Ok(other) => {
            body.insert("size_error".into(), json!(format!("{other:?}")));
        }
        Err(response) => {
            let status = response.status();
            body.insert(
                "size_error".into(),
                json!(format!("no linearizable read of the size ({status})")),
            );
        }
    }
    body.insert("replicas".into(), Value::Array(replicas));
    Json(Value::Object(body)).into_response()
}

async fn cluster(State(state): State<ApiState>) -> Response {
    match state.node.cluster().await {
        Ok(view) => {
            let mut body = match serde_json::to_value(&view) {
                Ok(Value::Object(body)) => body,
                _ => return error(StatusCode::INTERNAL_SERVER_ERROR, "the view did not encode"),
            };
            let partitions: Vec<Value> = view
                .partitions
                .iter()
                .map(|partition| {
                    let mut object = Map::new();
                    put_bytes(&mut object, "name", &partition.name);
                    object.insert("replicas".into(), json!(partition.replicas));
                    object.insert("generation".into(), json!(partition.generation));
                    object.insert("leader".into(), json!(partition.leader));
                    Value::Object(object)
                })
                .collect();
            body.insert("partitions".into(), Value::Array(partitions));
            // Readable from a page another node served: a browser client that moved to
            // this node learns the members here (the view is public to any client anyway).
            (
                [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
                Json(Value::Object(body)),
            )
                .into_response()
        }
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn scan_bounds_follow_leveldown_and_refuse_contradictions() {
        let range = range_query(&query(&[("start", "a"), ("lte", "z"), ("limit", "5")])).unwrap();
        assert_eq!(range.start, KeyBound::Included(b"a".to_vec()));
        assert_eq!(range.end, KeyBound::Included(b"z".to_vec()));
        assert_eq!(range.limit, 5);
        assert!(range_query(&query(&[("gt", "a"), ("gte", "b")])).is_err());
        assert!(range_query(&query(&[("limit", "0")])).is_err());
        assert!(range_query(&query(&[("reverse", "yes")])).is_err());
        assert!(range_query(&query(&[("bogus", "1")])).is_err());
        assert!(range_query(&query(&[("continue", "!!")])).is_err());
        let long = "k".repeat(KEY_BYTES_MAX + 1);
        assert!(range_query(&query(&[("start", &long)])).is_err());
        // A token round-trips.
        let token = URL_SAFE_NO_PAD.encode(postcard::to_allocvec(&range).unwrap());
        assert_eq!(range_query(&query(&[("continue", &token)])).unwrap(), range);
    }

    #[test]
    fn batches_are_checked_whole() {
        let operations = batch_operations(
            br#"[{"type":"put","key":"a","value":"1"},{"type":"del","key_base64":"/w=="}]"#,
        )
        .unwrap();
        assert_eq!(
            operations,
            vec![
                BatchOperation::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec()
                },
                BatchOperation::Delete { key: vec![0xff] },
            ]
        );
        for bad in [
            &br#"{"type":"put"}"#[..],
            br#"[]"#,
            br#"[{"type":"put","key":"a"}]"#,
            br#"[{"type":"del","key":"a","value":"1"}]"#,
            br#"[{"type":"get","key":"a"}]"#,
            br#"[{"type":"put","key":"a","key_base64":"YQ==","value":"1"}]"#,
            br#"[{"type":"put","key":"a","value":"1","extra":1}]"#,
            br#"[{"type":"put","key_base64":"not base64!","value":"1"}]"#,
            br#"[{"type":"put","value":"1"}]"#,
        ] {
            assert!(
                batch_operations(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

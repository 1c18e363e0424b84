//! The client HTTP API (axum) and, for the HTTP peer transport, the AllData peer endpoints.
//!
//! Client routes: `POST /events[?commit=]`, `GET /events/{key}`, `GET /events?from=&to=&limit=`
//! (merged across the cluster, or `scope=local`), `GET /health`, `GET /metrics`, and the
//! named partitions' and the cluster's (`kv_api`). Peer routes:
//! `POST {path}` (`{"key", "event"}`, 201 once durable), `POST /peer/confirm`,
//! `POST /peer/hello`.
//!
//! Invariants: a request is validated in full before it reaches the node, so bad input gets a
//! clear 4xx and changes nothing; an event is stored as the exact JSON bytes the client sent;
//! 201 is only answered once the commit level's replicas are durable; every response carries
//! a JSON error body when it is not a success.

use crate::coordinator::{CommitLevel, PutError};
use crate::events::{check_event_json, EventKey};
use crate::ids::NodeId;
use crate::placement::PlacementError;
use crate::production::config::parse_commit_level;
use crate::production::driver::{DriverError, NodeHandle, NodeInput};
use crate::production::http_client::HttpClient;
use crate::production::membership::{report, Membership, PEERS_MAX};
use crate::production::metrics::Metrics;
use crate::production::peer_frame::PeerInfo;
use crate::wire::{Message, RefusalReason};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Events answered by one scan, at most.
pub const SCAN_LIMIT_MAX: usize = 10_000;
const SCAN_LIMIT_DEFAULT: usize = 100;
const PEER_READ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct ApiState {
    pub node: NodeHandle,
    pub local_id: NodeId,
    pub membership: Arc<Membership>,
    pub metrics: Arc<Metrics>,
    pub client: HttpClient,
    pub body_bytes_max: usize,
    /// A put that is not answered by then gets 504 with its key; the write itself goes on
    /// ("get it done"). Shorter than the request timeout, so the key always reaches the client.
    pub put_answer_timeout: Duration,
    /// Where `POST /cluster/leave` records that the node drains ([`crate::production::rejoin`]).
    pub data_dir: std::path::PathBuf,
    /// What the node's feed subscribers have queued, against its bounds.
    pub feed_memory: Arc<crate::production::feed_sink::FeedMemory>,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// A refusal decided before the node is asked; small, so `Result`s carrying it stay small.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn driver_error(failure: DriverError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, failure)
}

pub fn client_router(state: ApiState) -> Router {
    let body_bytes_max = state.body_bytes_max;
    Router::new()
        .route("/events", post(put_event).get(scan_events))
        .route("/events/{key}", get(get_event))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::production::kv_api::kv_routes())
        .merge(crate::production::map_api::map_routes())
        .merge(crate::production::console::console_routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        // One byte over the limit is enough to know the body is too large.
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

/// Counts every request and its latency by route.
async fn observe(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Any token is a method to hyper; only the standard ones become metric labels, so
    // clients cannot grow the metrics without bound.
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS
        | Method::PATCH => request.method().to_string(),
        _ => "other".to_string(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let mut response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && response.headers().get(header::CONTENT_TYPE).is_none()
    {
        // axum answers 405 with an empty body (and adds `Allow` outside this layer); give it
        // the error text every other refusal has.
        response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {method} is not allowed on {route}; the Allow header lists those that are"
            ),
        );
    }
    state.metrics.observe_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The body, or the 400 that says why it cannot be taken: over the size limit, not UTF-8,
/// not one JSON document, or nested deeper than [`crate::events::JSON_DEPTH_MAX`].
fn json_body(
    body: Result<Bytes, BytesRejection>,
    body_bytes_max: usize,
) -> Result<Bytes, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("body is larger than the limit of {body_bytes_max} bytes"),
            )
        } else {
            ApiError(StatusCode::BAD_REQUEST, rejection.body_text())
        }
    })?;
    check_event_json(&body)
        .map_err(|invalid| ApiError(StatusCode::BAD_REQUEST, invalid.to_string()))?;
    Ok(body)
}

#[derive(Deserialize)]
struct PutQuery {
    commit: Option<String>,
}

async fn put_event(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let query = PutQuery {
        commit: query.get("commit").cloned(),
    };
    let commit_level: Option<CommitLevel> = match query.commit.as_deref() {
        None => None,
        Some(text) => match parse_commit_level(text) {
            Ok(level) => Some(level),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
    };
    let body = match json_body(body, state.body_bytes_max) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let pending = match state.node.start_put(body.to_vec(), commit_level) {
        Ok(pending) => pending,
        Err(failure) => return driver_error(failure),
    };
    let mut key = pending.key;
    let answer = tokio::time::timeout(state.put_answer_timeout, pending.answer).await;
    match answer {
        Err(_) => {
            // The write goes on ("get it done"): the client learns the key to check.
            let issued = key.try_recv().ok();
            let mut body = json!({
                "error": format!(
                    "no answer within {} ms; the event may still be stored",
                    state.put_answer_timeout.as_millis()
                ),
            });
            if let Some(issued) = issued {
                body["key"] = json!(issued.as_str());
            }
            (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response()
        }
        Ok(Err(_)) => driver_error(DriverError::Stopped),
        Ok(Ok(Ok(key))) => {
            let location = format!("/events/{key}");
            let mut response =
                (StatusCode::CREATED, Json(json!({ "key": key.as_str() }))).into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Ok(Ok(Err(put_error))) => {
            let status = match &put_error {
                PutError::EventTooLarge { .. } => StatusCode::BAD_REQUEST,
                PutError::Placement(PlacementError::ZeroReplicationFactor) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                PutError::Placement(PlacementError::NotEnoughPeers(_))
                | PutError::NotEnoughNodesUp { .. }
                | PutError::ReplicasNotCreated { .. }
                | PutError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut body = json!({ "error": put_error.to_string() });
            // The event may be stored: say under which key, so a retry can check first.
            if let PutError::ReplicasNotCreated { key, .. } = &put_error {
                body["key"] = json!(key.as_str());
            }
            (status, Json(body)).into_response()
        }
    }
}

#[derive(Deserialize)]
struct ScopeQuery {
    scope: Option<String>,
}

fn is_local(scope: Option<&str>) -> Result<bool, ApiError> {
    match scope {
        None | Some("cluster") => Ok(false),
        Some("local") => Ok(true),
        Some(other) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("scope {other:?} is not local or cluster"),
        )),
    }
}

/// The event as the JSON the client sent.
fn event_response(event: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        event,
    )
        .into_response()
}

async fn get_event(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(query): Query<ScopeQuery>,
) -> Response {
    let key = match EventKey::parse(&key) {
        Ok(key) => key,
        Err(malformed) => return error(StatusCode::BAD_REQUEST, malformed),
    };
    let local_only = match is_local(query.scope.as_deref()) {
        Ok(local_only) => local_only,
        Err(refusal) => return refusal.into_response(),
    };
    match state.node.get(key.clone()).await {
        Err(failure) => return driver_error(failure),
        Ok(Err(store_error)) => return error(StatusCode::INTERNAL_SERVER_ERROR, store_error),
        Ok(Ok(Some(event))) => return event_response(event),
        Ok(Ok(None)) => {}
    }
    if !local_only {
        for (_, address) in state.membership.up_http_addresses() {
            let url = format!("http://{address}/events/{key}?scope=local");
            if let Ok(response) = state.client.get(&url, PEER_READ_TIMEOUT).await {
                if response.status == StatusCode::OK {
                    return event_response(response.body.to_vec());
                }
            }
        }
    }
    error(StatusCode::NOT_FOUND, format!("no event under key {key}"))
}

/// One event of a scan answer: the event is embedded as the exact bytes stored.
#[derive(Serialize, Deserialize)]
struct ScannedEvent {
    key: String,
    event: Box<RawValue>,
}

/// Stored bytes as embeddable JSON. Every event is checked JSON before it is stored; bytes
/// that are not (written by an older build) are embedded as a JSON string instead, so an
/// answer is always valid JSON.
fn raw_event(event: Vec<u8>) -> Box<RawValue> {
    match String::from_utf8(event) {
        Ok(text) => match RawValue::from_string(text) {
            Ok(raw) => raw,
            Err(_) => as_json_string(b"(not JSON)"),
        },
        Err(error) => as_json_string(error.as_bytes()),
    }
}

fn as_json_string(bytes: &[u8]) -> Box<RawValue> {
    let text = serde_json::to_string(&String::from_utf8_lossy(bytes)).unwrap_or_default();
    RawValue::from_string(text)
        .unwrap_or_else(|_| RawValue::from_string("null".to_string()).expect("null is JSON"))
}

#[derive(Serialize, Deserialize)]
struct ScanAnswer {
    events: Vec<ScannedEvent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unreachable_peers: Vec<u32>,
}

async fn scan_events(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let parse_key = |name: &str| -> Result<Option<EventKey>, ApiError> {
        match query.get(name) {
            None => Ok(None),
            Some(text) if text.is_empty() => Ok(None),
            Some(text) => EventKey::parse(text).map(Some).map_err(|malformed| {
                ApiError(StatusCode::BAD_REQUEST, format!("{name}: {malformed}"))
            }),
        }
    };
    let (from, to_exclusive) = match (parse_key("from"), parse_key("to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(refusal), _) | (_, Err(refusal)) => return refusal.into_response(),
    };
    let limit = match query.get("limit").map(|text| text.parse::<usize>()) {
        None => SCAN_LIMIT_DEFAULT,
        Some(Ok(limit)) if (1..=SCAN_LIMIT_MAX).contains(&limit) => limit,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit must be a number in 1..={SCAN_LIMIT_MAX}"),
            )
        }
    };
    let local_only = match is_local(query.get("scope").map(String::as_str)) {
        Ok(local_only) => local_only,
        Err(refusal) => return refusal.into_response(),
    };
    let local = match state
        .node
        .scan(from.clone(), to_exclusive.clone(), limit)
        .await
    {
        Err(failure) => return driver_error(failure),
        Ok(Err(store_error)) => return error(StatusCode::INTERNAL_SERVER_ERROR, store_error),
        Ok(Ok(events)) => events,
    };
    // Keys are unique cluster-wide and write-once, so merging by key removes duplicates.
    let mut merged: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
    for (key, event) in local {
        merged.insert(key.as_str().to_string(), raw_event(event));
    }
    let mut unreachable_peers = Vec::new();
    if !local_only {
        // Peers known to be down are not asked, but the answer still says it lacks them.
        unreachable_peers.extend(state.membership.unreachable_peers().iter().map(|id| id.0));
        let mut query_string = format!("limit={limit}&scope=local");
        if let Some(from) = &from {
            query_string.push_str(&format!("&from={from}"));
        }
        if let Some(to) = &to_exclusive {
            query_string.push_str(&format!("&to={to}"));
        }
        let asks = state
            .membership
            .up_http_addresses()
            .into_iter()
            .map(|(id, address)| {
                let client = state.client.clone();
                let url = format!("http://{address}/events?{query_string}");
                async move { (id, client.get(&url, PEER_READ_TIMEOUT).await) }
            });
        for (id, answer) in futures_join_all(asks).await {
            let answer: Option<ScanAnswer> = match answer {
                Ok(response) if response.status == StatusCode::OK => {
                    serde_json::from_slice(&response.body).ok()
                }
                _ => None,
            };
            match answer {
                Some(answer) => merged.extend(
                    answer
                        .events
                        .into_iter()
                        .map(|scanned| (scanned.key, scanned.event)),
                ),
                None => unreachable_peers.push(id.0),
            }
        }
        unreachable_peers.sort_unstable();
        unreachable_peers.dedup();
    }
    let events = merged
        .into_iter()
        .take(limit)
        .map(|(key, event)| ScannedEvent { key, event })
        .collect();
    Json(ScanAnswer {
        events,
        unreachable_peers,
    })
    .into_response()
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(output) = handle.await {
            outputs.push(output);
        }
    }
    outputs
}

async fn health(State(state): State<ApiState>) -> Response {
    let status = match state.node.status().await {
        Ok(status) => status,
        Err(failure) => return driver_error(failure),
    };
    let peers: Vec<Value> = state
        .membership
        .views()
        .into_iter()
        .map(|view| {
            json!({
                "id": view.id.0,
                "peer_address": view.peer_address.to_string(),
                "http_address": view.http_address.map(|address| address.to_string()),
                "zone": view.location.as_ref().map(|location| location.zone.clone()),
                "region": view.location.as_ref().map(|location| location.region.clone()),
                "up": view.up,
            })
        })
        .collect();
    let peers_up: Vec<u32> = status.peers_up().iter().map(|id| id.0).collect();
    let body = json!({
        "status": if status.poisoned { "poisoned" } else { "ok" },
        "node_id": status.id.0,
        "zone": status.location.zone,
        "region": status.location.region,
        "peers_up": peers_up,
        "peers": peers,
        "active_writes": status.active_writes,
        "unconfirmed_events": status.unconfirmed_events,
    });
    let code = if status.poisoned {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let node = state
        .node
        .status()
        .await
        .ok()
        .map(|status| (status.counters, status.peers_up().len() as u64));
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            crate::production::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(node),
    )
        .into_response()
}

// ---- AllData HTTP peer protocol (server side) ----

#[derive(Debug, Serialize, Deserialize)]
pub struct PeerEventBody {
    pub key: String,
    /// The event's JSON exactly as the client sent it: a replica must hold the same bytes as
    /// the coordinator, or reads differ by node and the write-once check refuses repairs.
    pub event: Box<serde_json::value::RawValue>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PeerConfirmBody {
    pub keys: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PeerHelloBody {
    pub sender: PeerInfo,
    pub known_peers: Vec<(NodeId, SocketAddr)>,
}

/// The peer port's fixed routes, which the configurable replica path may not take.
pub const PEER_ROUTES: [&str; 2] = ["/peer/confirm", "/peer/hello"];

/// The peer-port router when the transport is HTTP. `event_path` and `event_method` are the
/// configured path and method of the replica endpoint (`POST /peer/events` by default).
pub fn peer_router(
    state: ApiState,
    event_path: &str,
    event_method: &str,
    local: PeerInfo,
) -> Router {
    let body_bytes_max = state.body_bytes_max;
    let event_method = match event_method {
        "PUT" => axum::routing::MethodFilter::PUT,
        "PATCH" => axum::routing::MethodFilter::PATCH,
        _ => axum::routing::MethodFilter::POST,
    };
    Router::new()
        .route(event_path, axum::routing::on(event_method, peer_event))
        .route("/peer/confirm", post(peer_confirm))
        .route(
            "/peer/hello",
            post(
                move |state: State<ApiState>, body: Result<Bytes, BytesRejection>| {
                    peer_hello(state, body, local.clone())
                },
            ),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        // A replica carries an event plus its key and JSON framing.
        .layer(DefaultBodyLimit::max(body_bytes_max * 2 + 4096))
        .with_state(state)
}

async fn peer_event(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match json_body(body, state.body_bytes_max * 2 + 4096) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let replica: PeerEventBody = match serde_json::from_slice(&body) {
        Ok(replica) => replica,
        Err(invalid) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"key\": ..., \"event\": ...}}: {invalid}"),
            )
        }
    };
    let key = match EventKey::parse(&replica.key) {
        Ok(key) => key,
        Err(malformed) => return error(StatusCode::BAD_REQUEST, malformed),
    };
    let event = replica.event.get().as_bytes().to_vec();
    if let Err(invalid) = check_event_json(&event) {
        return error(StatusCode::BAD_REQUEST, format!("event: {invalid}"));
    }
    match state.node.http_replica(key, event).await {
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, failure),
        Ok(Err(refusal)) => {
            // The sender's mistakes are 4xx; this node's troubles 5xx (503: try elsewhere).
            let status = match refusal.reason {
                RefusalReason::TooOld | RefusalReason::TooFarInFuture => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                RefusalReason::WriteOnceConflict => StatusCode::CONFLICT,
                RefusalReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                RefusalReason::Unavailable => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, refusal)
        }
        Ok(Ok(())) => (StatusCode::CREATED, Json(json!({}))).into_response(),
    }
}

async fn peer_confirm(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match json_body(body, state.body_bytes_max) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let confirm: PeerConfirmBody = match serde_json::from_slice(&body) {
        Ok(confirm) => confirm,
        Err(invalid) => return error(StatusCode::BAD_REQUEST, invalid),
    };
    let mut keys = Vec::with_capacity(confirm.keys.len());
    for key in confirm.keys {
        match EventKey::parse(&key) {
            Ok(key) => keys.push(key),
            Err(malformed) => return error(StatusCode::BAD_REQUEST, malformed),
        }
    }
    let input = NodeInput::PeerMessage {
        from: crate::production::driver::HTTP_PEER,
        message: Message::Confirm { keys },
    };
    match state.node.try_submit(input) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(failure) => driver_error(failure),
    }
}

async fn peer_hello(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
    local: PeerInfo,
) -> Response {
    let body = match json_body(body, state.body_bytes_max) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let hello: PeerHelloBody = match serde_json::from_slice(&body) {
        Ok(hello) => hello,
        Err(invalid) => return error(StatusCode::BAD_REQUEST, invalid),
    };
    if hello.known_peers.len() > PEERS_MAX {
        state.metrics.count_bad_frame();
        return error(
            StatusCode::BAD_REQUEST,
            format!("a hello may list at most {PEERS_MAX} peers"),
        );
    }
    match state.membership.hello(
        hello.sender.id,
        hello.sender.peer_address,
        hello.sender.http_address,
        hello.sender.location,
        Instant::now(),
    ) {
        Ok(Some(transition)) => report(&state.node, transition).await,
        Ok(None) => {}
        Err(refused) => {
            state.metrics.count_bad_frame();
            return error(StatusCode::CONFLICT, refused);
        }
    }
    for (id, address) in hello.known_peers {
        state.membership.learn(id, address);
    }
    Json(PeerHelloBody {
        sender: local,
        known_peers: state.membership.known_peers(),
    })
    .into_response()
}

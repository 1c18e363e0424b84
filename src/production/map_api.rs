//! The HTTP API of shared maps: any node takes any request, routes writes and reads to the
//! map's partition leader, and serves change feeds from its own replica when it has one.
//!
//! Routes:
//! - `GET /maps/{name}`: every entry and the revision, `{"map", "revision", "entries"}`;
//! - `GET`, `PUT`, `DELETE /maps/{name}/keys/{key}`: one value (JSON in, JSON out; the
//!   revision in the `borough-revision` header of a read, in the body of a write);
//! - `GET /maps/{name}/ws?from_revision=R`: the change feed as a WebSocket of JSON messages
//!   (`ready`, `resumed`, `set`, `delete`, `resync`); the client may send `set` and `delete`
//!   on it (`{"type": "set", "key", "value", "id"}`), answered by `ack` or `error` with the
//!   same `id`;
//! - `GET /maps/{name}/events?from_revision=R`: the same feed as Server-Sent Events (event
//!   name the message type, id the revision, so a browser's `EventSource` resumes by itself);
//! - `GET /maps/client.js`: the browser client (a map named `client.js` is reached through
//!   its feed and keys only).
//!
//! Invariants: every input is checked before the node sees it (names, keys, JSON values,
//! revisions, client messages), so bad input gets a 4xx or an `error` message and changes
//! nothing; a write whose outcome is unknown says so (504, or an `error` that says it),
//! never a success; a feed connection holds at most its bounded buffer, is pinged and
//! closed when its peer stops answering, and ends its subscription when it closes.

use crate::coordinator::cluster_machine::{
    ClusterAnswer, ClusterOperation, ClusterOutcome, ClusterQuery,
};
use crate::coordinator::router::{RouteError, RoutedOutcome, RoutedRequest};
use crate::directory::PartitionName;
use crate::feeds::{FeedError, SubscriptionId};
use crate::maps::{MapAnswer, MapEntries, MapKey, MapOperation, MapOutcome, MapQuery, MapValue};
use crate::partition::host::RequestError;
use crate::production::driver::NodeHandle;
use crate::production::feed_sink::FeedSink;
use crate::production::http_api::ApiState;
use crate::production::kv_api::{
    error, partition_name, path_bytes, read_body, refuse, routed, Refusal,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A feed connection is pinged this often...
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// ...and closed when nothing came from its peer for this long.
const PEER_SILENCE_MAX: Duration = Duration::from_secs(60);
/// Writes one WebSocket client may have in flight; one more is answered with an error.
const SOCKET_WRITES_IN_FLIGHT_MAX: usize = 64;
/// The Server-Sent Events comment that keeps an idle stream's connection open.
const EVENT_STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The browser client, a plain ES module.
const CLIENT_JS: &str = include_str!("web/client.js");

pub fn map_routes() -> Router<ApiState> {
    Router::new()
        .route("/maps/client.js", get(client_js))
        .route("/maps/{name}", get(get_map))
        .route(
            "/maps/{name}/keys/{key}",
            get(get_value).put(put_value).delete(delete_value),
        )
        .route("/maps/{name}/ws", get(websocket))
        .route("/maps/{name}/events", get(event_stream))
}

async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

fn map_key(uri: &Uri) -> Result<MapKey, Refusal> {
    let key = path_bytes(uri, 4)?;
    MapKey::from_bytes(key).map_err(|invalid| refuse(StatusCode::BAD_REQUEST, invalid))
}

fn name_and_key(uri: &Uri) -> Result<(PartitionName, MapKey), Refusal> {
    Ok((partition_name(uri)?, map_key(uri)?))
}

fn text_name(name: &PartitionName) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

/// `{"k": v, ...}` of a map's entries (values are JSON text already).
fn entries_json(entries: &MapEntries) -> String {
    let mut json = String::from("{");
    for (index, (key, value)) in entries.entries.iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(key.as_str()).expect("strings serialise"));
        json.push(':');
        json.push_str(value.as_json());
    }
    json.push('}');
    json
}

fn json_response(status: StatusCode, json: String, revision: Option<u64>) -> Response {
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], json).into_response();
    if let Some(revision) = revision {
        if let Ok(value) = header::HeaderValue::from_str(&revision.to_string()) {
            response.headers_mut().insert("borough-revision", value);
        }
    }
    response
}

fn unexpected(what: impl std::fmt::Debug) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the map's partition answered {what:?}"),
    )
}

async fn map_read(
    state: &ApiState,
    name: PartitionName,
    query: MapQuery,
) -> Result<MapAnswer, Response> {
    match routed(state, name, RoutedRequest::Read(ClusterQuery::Map(query))).await? {
        RoutedOutcome::Read(ClusterAnswer::Map(answer)) => Ok(answer),
        other => Err(unexpected(other)),
    }
}

async fn get_map(State(state): State<ApiState>, uri: Uri) -> Response {
    let name = match partition_name(&uri) {
        Ok(name) => name,
        Err(refusal) => return refusal.into_response(),
    };
    match map_read(&state, name.clone(), MapQuery::Entries).await {
        Ok(MapAnswer::Entries(entries)) => json_response(
            StatusCode::OK,
            format!(
                "{{\"map\":{},\"revision\":{},\"entries\":{}}}",
                serde_json::to_string(&text_name(&name)).expect("strings serialise"),
                entries.revision,
                entries_json(&entries)
            ),
            Some(entries.revision),
        ),
        Ok(other) => unexpected(other),
        Err(response) => response,
    }
}

async fn get_value(State(state): State<ApiState>, uri: Uri) -> Response {
    let (name, key) = match name_and_key(&uri) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    match map_read(&state, name, MapQuery::Get { key }).await {
        Ok(MapAnswer::Value {
            value: Some(value),
            revision,
        }) => json_response(StatusCode::OK, value.as_json().to_string(), Some(revision)),
        Ok(MapAnswer::Value {
            value: None,
            revision,
        }) => json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": "Key not found in database" }).to_string(),
            Some(revision),
        ),
        Ok(other) => unexpected(other),
        Err(response) => response,
    }
}

/// The answer to a map write, as JSON, with its HTTP status.
fn write_result(
    result: Result<RoutedOutcome<ClusterOutcome, ClusterAnswer>, RouteError>,
) -> (StatusCode, serde_json::Value) {
    match result {
        Ok(RoutedOutcome::Wrote(ClusterOutcome::Map(outcome))) => match outcome {
            MapOutcome::Changed { revision } => (StatusCode::OK, json!({ "revision": revision })),
            MapOutcome::Missing { revision } => (
                StatusCode::NOT_FOUND,
                json!({ "error": "Key not found in database", "revision": revision }),
            ),
            MapOutcome::Full { entries_bytes } => (
                StatusCode::INSUFFICIENT_STORAGE,
                json!({
                    "error": format!(
                        "the map is full: its entries count {entries_bytes} bytes of {}; delete \
                         keys or use another map",
                        crate::maps::machine::MAP_BYTES_MAX
                    )
                }),
            ),
        },
        Ok(other) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("the map's partition answered {other:?}") }),
        ),
        Err(failure) => {
            let status = match &failure {
                RouteError::Request(RequestError::Invalid(_)) => StatusCode::BAD_REQUEST,
                RouteError::Request(RequestError::OutcomeUnknown) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, json!({ "error": failure.to_string() }))
        }
    }
}

async fn map_write(
    node: &NodeHandle,
    name: PartitionName,
    operation: MapOperation,
) -> (StatusCode, serde_json::Value) {
    match node
        .routed(name, RoutedRequest::Write(ClusterOperation::Map(operation)))
        .await
    {
        Ok(result) => write_result(result),
        Err(failure) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": failure.to_string() }),
        ),
    }
}

async fn put_value(
    State(state): State<ApiState>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (name, key) = match name_and_key(&uri) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let body = match read_body(body, "value", state.body_bytes_max) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let value = match MapValue::from_json(&body) {
        Ok(value) => value,
        Err(invalid) => return error(StatusCode::BAD_REQUEST, invalid),
    };
    let (status, body) = map_write(&state.node, name, MapOperation::Set { key, value }).await;
    (status, Json(body)).into_response()
}

async fn delete_value(State(state): State<ApiState>, uri: Uri) -> Response {
    let (name, key) = match name_and_key(&uri) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let (status, body) = map_write(&state.node, name, MapOperation::Delete { key }).await;
    (status, Json(body)).into_response()
}

/// `from_revision` of a feed's query, or (for an event stream) a browser's `Last-Event-ID`.
fn from_revision(
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Result<Option<u64>, Refusal> {
    let text = match query.get("from_revision") {
        Some(text) => Some(text.as_str()),
        None => headers
            .get("last-event-id")
            .and_then(|value| value.to_str().ok()),
    };
    match text {
        None | Some("") => Ok(None),
        Some(text) => text.parse::<u64>().map(Some).map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("from_revision {text:?} is not a revision (a whole number)"),
            )
        }),
    }
}

fn feed_error(failure: FeedError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, failure)
}

/// Subscribes a new sink; the subscription and sink, or the answer to give instead.
async fn subscribe(
    state: &ApiState,
    name: PartitionName,
    from: Option<u64>,
) -> Result<(SubscriptionId, Arc<FeedSink>), Response> {
    let sink = FeedSink::new(&state.feed_memory);
    match state.node.subscribe(name, from, Arc::clone(&sink)).await {
        Ok(Ok(id)) => Ok((id, sink)),
        Ok(Err(failure)) => Err(feed_error(failure)),
        Err(failure) => Err(error(StatusCode::SERVICE_UNAVAILABLE, failure)),
    }
}

/// Ends a subscription when its connection goes, however it goes.
struct Subscribed {
    id: SubscriptionId,
    sink: Arc<FeedSink>,
    node: NodeHandle,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.sink.close();
        // A full inbox drops this; the node thread then ends it at its next event.
        let _ = self
            .node
            .try_submit(crate::production::driver::NodeInput::Unsubscribe { id: self.id });
    }
}

async fn event_stream(
    State(state): State<ApiState>,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let name = match partition_name(&uri) {
        Ok(name) => name,
        Err(refusal) => return refusal.into_response(),
    };
    let from = match from_revision(&query, &headers) {
        Ok(from) => from,
        Err(refusal) => return refusal.into_response(),
    };
    let (id, sink) = match subscribe(&state, name, from).await {
        Ok(subscribed) => subscribed,
        Err(response) => return response,
    };
    let subscribed = Subscribed {
        id,
        sink,
        node: state.node.clone(),
    };
    // Each step waits for the sink, then sends what it queued; the stream ends after a
    // resync.
    let stream = futures_util::stream::unfold(
        (subscribed, std::collections::VecDeque::new(), false),
        |(subscribed, mut queued, mut ended)| async move {
            loop {
                if let Some(event) = queued.pop_front() {
                    return Some((
                        Ok::<Event, std::convert::Infallible>(event),
                        (subscribed, queued, ended),
                    ));
                }
                if ended {
                    return None;
                }
                let (events, cut_off) = subscribed.sink.take();
                if events.is_empty() && !cut_off {
                    subscribed.sink.wait().await;
                    continue;
                }
                ended = cut_off;
                for rendered in events {
                    queued.push_back(
                        Event::default()
                            .event(rendered.kind)
                            .id(rendered.revision.to_string())
                            .data(rendered.json.as_str()),
                    );
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(EVENT_STREAM_KEEP_ALIVE))
        .into_response()
}

async fn websocket(
    State(state): State<ApiState>,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let name = match partition_name(&uri) {
        Ok(name) => name,
        Err(refusal) => return refusal.into_response(),
    };
    // Only the query: `Last-Event-ID` is the event stream's.
    let from = match from_revision(&query, &HeaderMap::new()) {
        Ok(from) => from,
        Err(refusal) => return refusal.into_response(),
    };
    // Subscribed before the upgrade, so a refusal is an HTTP answer the client can read.
    let (id, sink) = match subscribe(&state, name.clone(), from).await {
        Ok(subscribed) => subscribed,
        Err(response) => return response,
    };
    let subscribed = Subscribed {
        id,
        sink,
        node: state.node.clone(),
    };
    let message_bytes_max = state.body_bytes_max + 64 * 1024;
    upgrade
        .max_message_size(message_bytes_max)
        .max_frame_size(message_bytes_max)
        .on_upgrade(move |socket| serve_socket(socket, state.node.clone(), name, subscribed))
}

/// What a WebSocket client may send: `{"type": "set", "key", "value", "id"}` or
/// `{"type": "delete", "key", "id"}`. A plain struct, not a tagged enum: a tagged enum
/// buffers its fields, which a raw JSON value cannot go through.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    key: String,
    #[serde(default)]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    id: Option<u64>,
}

const CLIENT_MESSAGE_FORM: &str =
    "a message must be {\"type\": \"set\", \"key\", \"value\", \"id\"} or {\"type\": \"delete\", \"key\", \"id\"}";

/// The operation a client message asks for, checked, or the error to answer it with.
fn client_operation(text: &str) -> (Option<u64>, Result<MapOperation, String>) {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(failure) => {
            // The id, if the message has one, so the client can match the error.
            let id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|value| value.get("id").and_then(serde_json::Value::as_u64));
            return (id, Err(format!("{CLIENT_MESSAGE_FORM}: {failure}")));
        }
    };
    let id = message.id;
    let key = match MapKey::new(message.key) {
        Ok(key) => key,
        Err(invalid) => return (id, Err(invalid.to_string())),
    };
    let operation = match (message.kind.as_str(), message.value) {
        ("set", Some(value)) => MapValue::from_json(value.get().as_bytes())
            .map(|value| MapOperation::Set { key, value })
            .map_err(|invalid| invalid.to_string()),
        ("set", None) => Err(format!("{CLIENT_MESSAGE_FORM}: a set needs a value")),
        ("delete", None) => Ok(MapOperation::Delete { key }),
        ("delete", Some(_)) => Err(format!("{CLIENT_MESSAGE_FORM}: a delete takes no value")),
        (other, _) => Err(format!("{CLIENT_MESSAGE_FORM}: unknown type {other:?}")),
    };
    (id, operation)
}

fn reply_text(id: Option<u64>, status: StatusCode, body: serde_json::Value) -> Utf8Bytes {
    let mut reply = if status == StatusCode::OK {
        json!({ "type": "ack", "revision": body.get("revision") })
    } else {
        json!({
            "type": "error",
            "error": body.get("error").and_then(serde_json::Value::as_str).unwrap_or("failed"),
            "status": status.as_u16(),
        })
    };
    if let Some(id) = id {
        reply["id"] = json!(id);
    }
    Utf8Bytes::from(reply.to_string())
}

async fn serve_socket(
    mut socket: WebSocket,
    node: NodeHandle,
    name: PartitionName,
    subscribed: Subscribed,
) {
    let (replies, mut replies_in) =
        tokio::sync::mpsc::channel::<Utf8Bytes>(SOCKET_WRITES_IN_FLIGHT_MAX);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(SOCKET_WRITES_IN_FLIGHT_MAX));
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let close = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))
    };
    loop {
        tokio::select! {
            () = subscribed.sink.wait() => {
                let (events, cut_off) = subscribed.sink.take();
                for event in events {
                    if socket.send(Message::Text(event.json.clone())).await.is_err() {
                        return;
                    }
                }
                if cut_off {
                    let _ = socket.send(close(1008, "cut off: resume from the revision of the resync")).await;
                    return;
                }
            }
            Some(reply) = replies_in.recv() => {
                if socket.send(Message::Text(reply)).await.is_err() {
                    return;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > PEER_SILENCE_MAX {
                    let _ = socket.send(close(1001, "no answer to pings")).await;
                    return;
                }
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            message = socket.recv() => {
                last_heard = tokio::time::Instant::now();
                let text = match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        let reply = json!({"type": "error", "error": "messages are JSON text", "status": 400});
                        if socket.send(Message::Text(Utf8Bytes::from(reply.to_string()))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(Message::Text(text))) => text,
                };
                let (id, operation) = client_operation(text.as_str());
                let operation = match operation {
                    Ok(operation) => operation,
                    Err(problem) => {
                        let reply = reply_text(id, StatusCode::BAD_REQUEST, json!({ "error": problem }));
                        if socket.send(Message::Text(reply)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                    let reply = reply_text(
                        id,
                        StatusCode::TOO_MANY_REQUESTS,
                        json!({ "error": format!("{SOCKET_WRITES_IN_FLIGHT_MAX} writes are in flight on this connection already") }),
                    );
                    if socket.send(Message::Text(reply)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let (node, name, replies) = (node.clone(), name.clone(), replies.clone());
                tokio::spawn(async move {
                    let (status, body) = map_write(&node, name, operation).await;
                    let _ = replies.send(reply_text(id, status, body)).await;
                    drop(permit);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_checked_into_operations() {
        let (id, set) = client_operation(r#"{"type":"set","key":"a","value":{"n":[1,2]},"id":7}"#);
        assert_eq!(id, Some(7));
        assert_eq!(
            set,
            Ok(MapOperation::Set {
                key: MapKey::new("a").unwrap(),
                value: MapValue::from_json(br#"{"n":[1,2]}"#).unwrap(),
            })
        );
        assert_eq!(
            client_operation(r#"{"type":"delete","key":"a"}"#),
            (
                None,
                Ok(MapOperation::Delete {
                    key: MapKey::new("a").unwrap()
                })
            )
        );
        for bad in [
            r#"{"type":"set","key":"a","id":1}"#,
            r#"{"type":"delete","key":"a","value":1,"id":1}"#,
            r#"{"type":"swap","key":"a","value":1,"id":1}"#,
            r#"{"type":"set","key":"","value":1,"id":1}"#,
            r#"{"type":"set","key":"a","value":1,"id":1,"extra":true}"#,
            r#"{"type":"set","key":"a","value":1,"id":1"#,
        ] {
            let (_, operation) = client_operation(bad);
            assert!(operation.is_err(), "{bad} was taken");
        }
        // The id comes back with an error whenever the message has one.
        assert_eq!(
            client_operation(r#"{"type":"swap","key":"a","id":3}"#).0,
            Some(3)
        );
    }
}

//! `POST /partitions/{name}/requests`: the body goes to the request handler of partition
//! `name` (the one the node was started with, `--handler`), run on the partition's leader;
//! its reply is the response body. `?timeout_ms=` bounds the wait (default 5000, at most the
//! server's request timeout allows).
//!
//! Statuses: 200 the handler's reply; 422 the handler refused (its message); 500 it
//! panicked or failed an access; 504 no reply in time, or its leader changed after it wrote
//! (the outcome is unknown); 400 a bad name, body or timeout; 413 a body over the limit;
//! 503 no leader reachable, or no handler on the serving node.

use crate::coordinator::router::{RouteError, RoutedOutcome};
use crate::partition::host::RequestError;
use crate::production::http_api::ApiState;
use crate::production::kv_api::{error, partition_name, read_body};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// A request's wait when it names none.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestParams {
    timeout_ms: Option<u64>,
}

pub(super) async fn request(
    State(state): State<ApiState>,
    params: Uri,
    query: Result<Query<RequestParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let name = match partition_name(&params) {
        Ok(name) => name,
        Err(refusal) => return refusal.into_response(),
    };
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let body = match read_body(body, "the request body", state.body_bytes_max) {
        Ok(body) => body.to_vec(),
        Err(refusal) => return refusal.into_response(),
    };
    // The answer must reach the client before the server's own request timeout cuts it.
    let timeout_ms_max = u64::try_from(state.put_answer_timeout.as_millis()).unwrap_or(u64::MAX);
    let timeout_ms = query
        .timeout_ms
        .unwrap_or(DEFAULT_TIMEOUT_MS.min(timeout_ms_max));
    if timeout_ms == 0 || timeout_ms > timeout_ms_max {
        return error(
            StatusCode::BAD_REQUEST,
            format!("timeout_ms must be in 1..={timeout_ms_max} (this server's request timeout bounds it)"),
        );
    }
    let answer = state
        .node
        .request(name, body, timeout_ms.saturating_mul(1_000))
        .await;
    match answer {
        Ok(Ok(RoutedOutcome::Replied(reply))) => {
            let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&reply).is_ok() {
                "application/json"
            } else {
                "application/octet-stream"
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, content_type)],
                reply,
            )
                .into_response()
        }
        Ok(Ok(other)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the partition answered a handler request with {other:?}"),
        ),
        Ok(Err(failure)) => request_error(failure),
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, failure),
    }
}

fn request_error(failure: RouteError) -> Response {
    let status = match &failure {
        RouteError::Request(RequestError::HandlerRefused(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        RouteError::Request(RequestError::HandlerFailed(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        RouteError::Request(RequestError::OutcomeUnknown) => StatusCode::GATEWAY_TIMEOUT,
        RouteError::Request(RequestError::Invalid(_)) | RouteError::NotCreated { .. } => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, failure)
}

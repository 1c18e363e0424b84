//! A small HTTP/1 client for the shell: the CLI's `event` and `status` commands, the scan and
//! read fan-out to peers, the AllData HTTP peer transport and the benchmark all use it.
//!
//! One pooled `hyper` client per process; every call carries a timeout, so a silent peer costs
//! at most that long. Responses are read whole, up to `response_bytes_max`.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Responses larger than this are refused rather than buffered.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{method} {url}: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: no answer within {timeout_ms} ms")]
    Timeout {
        method: Method,
        url: String,
        timeout_ms: u64,
    },
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client }
    }

    /// Sends one request and reads the whole answer. Any status is an `Ok`: callers decide
    /// which statuses are errors for them.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let uri: hyper::Uri =
            url.parse().map_err(
                |error: hyper::http::uri::InvalidUri| HttpError::InvalidUrl {
                    url: url.to_string(),
                    reason: error.to_string(),
                },
            )?;
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| HttpError::InvalidUrl {
                url: url.to_string(),
                reason: error.to_string(),
            })?;
        let transport = |reason: String| HttpError::Transport {
            method: method.clone(),
            url: url.to_string(),
            reason,
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| transport(describe(&error)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|error| transport(error.to_string()))?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout {
                method,
                url: url.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Sends a GET and returns the status and the body as it streams (a change feed), once
    /// the head arrived within `timeout`.
    pub async fn open_stream(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<(StatusCode, hyper::body::Incoming), HttpError> {
        let uri: hyper::Uri =
            url.parse().map_err(
                |error: hyper::http::uri::InvalidUri| HttpError::InvalidUrl {
                    url: url.to_string(),
                    reason: error.to_string(),
                },
            )?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|error| HttpError::InvalidUrl {
                url: url.to_string(),
                reason: error.to_string(),
            })?;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => {
                let (parts, body) = response.into_parts();
                Ok((parts.status, body))
            }
            Ok(Err(error)) => Err(HttpError::Transport {
                method: Method::GET,
                url: url.to_string(),
                reason: describe(&error),
            }),
            Err(_) => Err(HttpError::Timeout {
                method: Method::GET,
                url: url.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    pub async fn get(&self, url: &str, timeout: Duration) -> Result<HttpResponse, HttpError> {
        self.request(Method::GET, url, None, Vec::new(), timeout)
            .await
    }

    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        self.request(Method::POST, url, Some("application/json"), body, timeout)
            .await
    }
}

/// The error with its causes, which hyper keeps in the source chain.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! The AllData peer protocol as a peer transport: a replica is a JSON `{"key", "event"}`
//! request to the peer (method, path and port configurable, each overridable per call), and
//! only a 201 is a success; any other status, a socket error or a timeout is a failure the
//! coordinator re-spreads. Confirmations go to `/peer/confirm`; membership is a periodic
//! `/peer/hello` exchange.
//!
//! Invariants: at most `REQUESTS_IN_FLIGHT_MAX` replica calls are outstanding; beyond that a
//! replica is failed at once (the coordinator re-spreads it) instead of queueing without bound.

use crate::ids::NodeId;
use crate::production::config::HttpPeerOptions;
use crate::production::driver::{NodeHandle, NodeInput, PeerSender};
use crate::production::http_api::{PeerConfirmBody, PeerEventBody, PeerHelloBody};
use crate::production::http_client::HttpClient;
use crate::production::membership::{report, Membership, PEERS_MAX};
use crate::production::metrics::Metrics;
use crate::production::peer_frame::PeerInfo;
use crate::wire::{Message, RefusalReason, ReplicaRefusal};
use hyper::{Method, StatusCode};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// One call's overrides of the configured options.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    pub method: Option<Method>,
    pub path: Option<String>,
    pub port: Option<u16>,
}

/// The AllData peer client: sends one event to one peer.
#[derive(Clone, Debug)]
pub struct HttpPeerClient {
    client: HttpClient,
    options: HttpPeerOptions,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerCallError {
    #[error("peer answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("{0}")]
    Transport(String),
}

impl HttpPeerClient {
    pub fn new(client: HttpClient, options: HttpPeerOptions) -> Self {
        Self { client, options }
    }

    /// Sends `{"key": key, "event": event}` to the peer at `address` (its peer port unless
    /// a port is configured or given). Only 201 is a success.
    pub async fn send_event(
        &self,
        address: SocketAddr,
        key: &str,
        event: Box<serde_json::value::RawValue>,
        overrides: &CallOptions,
    ) -> Result<(), PeerCallError> {
        let method = match &overrides.method {
            Some(method) => method.clone(),
            None => self
                .options
                .method
                .parse()
                .map_err(|_| PeerCallError::Transport("invalid configured method".into()))?,
        };
        let path = overrides.path.as_deref().unwrap_or(&self.options.path);
        let port = overrides
            .port
            .or(self.options.port)
            .unwrap_or(address.port());
        let url = format!("http://{}:{port}{path}", address.ip());
        let body = serde_json::to_vec(&PeerEventBody {
            key: key.to_string(),
            event,
        })
        .map_err(|error| PeerCallError::Transport(error.to_string()))?;
        let response = self
            .client
            .request(
                method,
                &url,
                Some("application/json"),
                body,
                Duration::from_millis(self.options.timeout_ms),
            )
            .await
            .map_err(|error| PeerCallError::Transport(error.to_string()))?;
        if response.status == StatusCode::CREATED {
            Ok(())
        } else {
            Err(PeerCallError::Status {
                status: response.status.as_u16(),
                body: response.body_text(),
            })
        }
    }
}

pub struct HttpTransport {
    peer_client: HttpPeerClient,
    local: PeerInfo,
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    node: OnceLock<NodeHandle>,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<Semaphore>,
    heartbeat_interval: Duration,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HttpTransport")
            .field("local", &self.local.id)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// Must be called inside the runtime the transport's tasks will run on.
    pub fn new(
        peer_client: HttpPeerClient,
        local: PeerInfo,
        membership: Arc<Membership>,
        metrics: Arc<Metrics>,
        heartbeat_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            peer_client,
            local,
            membership,
            metrics,
            node: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
            in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
            heartbeat_interval,
        })
    }

    /// Starts the hello exchange and the failure detector.
    pub fn start(self: &Arc<Self>, node: NodeHandle) {
        if self.node.set(node.clone()).is_err() {
            panic!("HttpTransport::start called twice");
        }
        let transport = Arc::clone(self);
        self.runtime.spawn(async move {
            let mut ticks = tokio::time::interval(transport.heartbeat_interval);
            loop {
                ticks.tick().await;
                // Second-hand peers too: a hello is how they get verified.
                let dialled = transport.membership.dialled_peers().into_iter();
                let addresses = dialled.filter_map(|id| {
                    transport
                        .membership
                        .peer_address(id)
                        .map(|address| (id, address))
                });
                for (id, address) in addresses.collect::<Vec<_>>() {
                    let transport = Arc::clone(&transport);
                    let node = node.clone();
                    tokio::spawn(async move { transport.hello(id, address, &node).await });
                }
                for transition in transport.membership.expire(Instant::now()) {
                    report(&node, transition).await;
                }
            }
        });
    }

    async fn hello(&self, id: NodeId, address: SocketAddr, node: &NodeHandle) {
        let body = PeerHelloBody {
            sender: self.local.clone(),
            known_peers: self.membership.known_peers(),
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return;
        };
        let url = format!("http://{address}/peer/hello");
        let answer = self
            .peer_client
            .client
            .post_json(&url, body, self.heartbeat_interval)
            .await;
        let Ok(response) = answer else {
            return;
        };
        if response.status != StatusCode::OK {
            return;
        }
        let Ok(hello) = serde_json::from_slice::<PeerHelloBody>(&response.body) else {
            return;
        };
        if hello.sender.id != id {
            tracing::warn!(expected = %id, answered = %hello.sender.id, %address, "a different node answers at this address");
            return;
        }
        match self.membership.hello(
            id,
            hello.sender.peer_address,
            hello.sender.http_address,
            hello.sender.location,
            Instant::now(),
        ) {
            Ok(Some(transition)) => report(node, transition).await,
            Ok(None) => {}
            Err(refused) => {
                tracing::warn!(peer = %id, %address, %refused, "hello answer refused");
                return;
            }
        }
        for (known, known_address) in hello.known_peers.into_iter().take(PEERS_MAX) {
            self.membership.learn(known, known_address);
        }
    }
}

impl PeerSender for HttpTransport {
    fn send(&self, to: NodeId, message: Message) {
        let (Some(node), Some(address)) =
            (self.node.get().cloned(), self.membership.peer_address(to))
        else {
            self.metrics.count_dropped_frame();
            return;
        };
        match message {
            Message::Replicate {
                write_id,
                key,
                event,
            } => {
                let answer_key = key.clone();
                let answer = move |outcome: Result<(), String>| NodeInput::PeerMessage {
                    from: to,
                    message: Message::ReplicateResult {
                        write_id,
                        key: answer_key,
                        // The coordinator only needs to know it failed, and the text for its log.
                        outcome: outcome
                            .map_err(|text| ReplicaRefusal::new(RefusalReason::Unavailable, text)),
                    },
                };
                let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
                    let _ = node.try_submit(answer(Err("too many replica calls in flight".into())));
                    return;
                };
                // Events are JSON checked at the client API; send their bytes unchanged.
                let event = match String::from_utf8(event)
                    .map_err(|error| error.to_string())
                    .and_then(|text| {
                        serde_json::value::RawValue::from_string(text)
                            .map_err(|error| error.to_string())
                    }) {
                    Ok(event) => event,
                    Err(error) => {
                        drop(permit);
                        let _ = node.try_submit(answer(Err(format!(
                            "event is not JSON, cannot send it over HTTP: {error}"
                        ))));
                        return;
                    }
                };
                let peer_client = self.peer_client.clone();
                self.runtime.spawn(async move {
                    let outcome = peer_client
                        .send_event(address, key.as_str(), event, &CallOptions::default())
                        .await
                        .map_err(|error| error.to_string());
                    drop(permit);
                    let _ = node.submit(answer(outcome)).await;
                });
            }
            Message::Confirm { keys } => {
                let body = PeerConfirmBody {
                    keys: keys.iter().map(|key| key.as_str().to_string()).collect(),
                };
                let Ok(body) = serde_json::to_vec(&body) else {
                    return;
                };
                let client = self.peer_client.client.clone();
                let url = format!("http://{address}/peer/confirm");
                let timeout = self.heartbeat_interval * 2;
                self.runtime.spawn(async move {
                    // Best effort: a lost confirm costs only a redundant repair.
                    let _ = client.post_json(&url, body, timeout).await;
                });
            }
            Message::ReplicateResult { .. } => {
                // Over HTTP a replica's answer is the response itself; nothing to send.
            }
            Message::Raft(_) | Message::Cluster(_) | Message::Route(_) => {
                // The AllData HTTP peer protocol carries events only; partitions run over TCP.
                tracing::warn!(peer = %to, kind = message.kind(), "a partition message cannot travel over the HTTP peer transport; dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::any;
    use axum::Router;

    /// A peer that answers each method and path with a fixed status.
    async fn fake_peer() -> SocketAddr {
        let router = Router::new()
            .route(
                "/peer/events",
                any(|method: Method| async move {
                    if method == Method::POST {
                        StatusCode::CREATED
                    } else {
                        StatusCode::METHOD_NOT_ALLOWED
                    }
                }),
            )
            .route("/refuses", any(|| async { StatusCode::OK }))
            .route(
                "/broken",
                any(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        address
    }

    #[tokio::test]
    async fn only_201_is_a_success_and_overrides_apply_per_call() {
        let address = fake_peer().await;
        let client = HttpPeerClient::new(HttpClient::new(), HttpPeerOptions::default());
        let event = serde_json::value::RawValue::from_string(r#"{"a": 1}"#.to_string()).unwrap();
        let key = "01700000000000000-00000001-00000000";
        let defaults = CallOptions::default();
        assert_eq!(
            client
                .send_event(address, key, event.clone(), &defaults)
                .await,
            Ok(())
        );
        let put = CallOptions {
            method: Some(Method::PUT),
            ..CallOptions::default()
        };
        assert!(matches!(
            client.send_event(address, key, event.clone(), &put).await,
            Err(PeerCallError::Status { status: 405, .. })
        ));
        let ok_is_not_created = CallOptions {
            path: Some("/refuses".into()),
            ..CallOptions::default()
        };
        assert!(matches!(
            client
                .send_event(address, key, event.clone(), &ok_is_not_created)
                .await,
            Err(PeerCallError::Status { status: 200, .. })
        ));
        let broken = CallOptions {
            path: Some("/broken".into()),
            ..CallOptions::default()
        };
        assert!(matches!(
            client
                .send_event(address, key, event.clone(), &broken)
                .await,
            Err(PeerCallError::Status { status: 500, .. })
        ));
        // A port with nobody listening is a socket error, not a hang.
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = unused.local_addr().unwrap().port();
        drop(unused);
        let elsewhere = CallOptions {
            port: Some(closed_port),
            ..CallOptions::default()
        };
        assert!(matches!(
            client.send_event(address, key, event, &elsewhere).await,
            Err(PeerCallError::Transport(_))
        ));
    }
}

//! The shell's metrics, in the OpenMetrics text format of `prometheus-client`.
//!
//! HTTP requests are counted per method, route and status, with a latency histogram per
//! route; transport events (dropped frames, refused frames, reconnects) are plain counters.
//! The node's own counters (replica failures, re-spreads, repairs, group commits = fsyncs,
//! refused messages) and its peers that are up are read from the node at scrape time, the same
//! numbers `/health` shows, so they are never stale, double-counted or out of step with it.
//!
//! Label values are bounded: methods outside the standard ones are counted as `other`, and
//! routes are the router's patterns (or `unmatched`), never the raw path a client sent.

use crate::node::NodeCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// What the node said at the last scrape.
#[derive(Clone, Copy, Debug, Default)]
struct NodeSnapshot {
    counters: NodeCounters,
    peers_up: u64,
}

/// Encodes the node's numbers at each scrape.
#[derive(Debug, Default)]
struct NodeCollector {
    snapshot: Mutex<Option<NodeSnapshot>>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = *self
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(NodeSnapshot { counters, peers_up }) = snapshot else {
            return Ok(());
        };
        let counters_and_help = [
            (
                "borough_replica_failures",
                "Replica writes to a peer that failed or timed out.",
                counters.replica_failures,
            ),
            (
                "borough_respreads",
                "Replica writes re-spread to a spare peer after a failure (get it done).",
                counters.respreads,
            ),
            (
                "borough_repairs",
                "Repairs of events held short of their replication factor.",
                counters.repairs,
            ),
            (
                "borough_fsyncs",
                "Group commits of the node's logs, each one append and one fsync.",
                counters.group_commits,
            ),
            (
                "borough_peer_messages_refused",
                "Peer messages the node refused: from a non-member, or contradicting what a \
                 partition committed.",
                counters.messages_refused,
            ),
            (
                "borough_handler_requests_started",
                "Requests whose handler started here, on the partition's leader.",
                counters.handlers.started,
            ),
            (
                "borough_handler_replies",
                "Handler requests answered with the handler's reply.",
                counters.handlers.replied,
            ),
            (
                "borough_handler_refusals",
                "Handler requests the handler refused, or whose access failed.",
                counters.handlers.refused,
            ),
            (
                "borough_handler_panics",
                "Handlers that panicked (their request failed; the node went on).",
                counters.handlers.panicked,
            ),
            (
                "borough_handler_timeouts",
                "Handlers dropped at their caller's deadline.",
                counters.handlers.timed_out,
            ),
            (
                "borough_handler_leadership_lost",
                "Handlers whose partition changed leader while they ran.",
                counters.handlers.lost_leadership,
            ),
            (
                "borough_handler_requests_turned_away",
                "Handler requests refused before starting: not the leader, busy, no handler.",
                counters.handlers.turned_away,
            ),
            (
                "borough_feed_subscriptions_started",
                "Change-feed subscriptions made on this node.",
                counters.feeds.subscribed,
            ),
            (
                "borough_feed_subscriptions_refused",
                "Change-feed subscriptions refused: the node serves its maximum already.",
                counters.feeds.refused,
            ),
            (
                "borough_feed_events",
                "Change-feed events handed to subscribers (one per subscriber reached).",
                counters.feeds.events,
            ),
            (
                "borough_feed_snapshots",
                "Whole maps sent to feed subscribers (a start, or a resume past the history).",
                counters.feeds.snapshots,
            ),
            (
                "borough_feed_resumes",
                "Feed subscriptions resumed from a revision still in the history.",
                counters.feeds.resumes,
            ),
            (
                "borough_feed_relay_reads",
                "Feed reads routed to a map's leader for subscribers this node has no replica for.",
                counters.feeds.relay_reads,
            ),
            (
                "borough_feed_relay_failures",
                "Relayed feed reads that failed (retried after a pause).",
                counters.feeds.relay_failures,
            ),
        ];
        for (name, help, value) in counters_and_help {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let subscriptions = ConstGauge::new(counters.feed_subscriptions as i64);
        let metric = encoder.encode_descriptor(
            "borough_feed_subscriptions",
            "Change-feed subscriptions this node serves now.",
            None,
            subscriptions.metric_type(),
        )?;
        subscriptions.encode(metric)?;
        let gauge = ConstGauge::new(peers_up as i64);
        let metric = encoder.encode_descriptor(
            "borough_peers_up",
            "Peers the node counts as up (the same as /health's peers_up).",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latencies: Family<RouteLabels, Histogram, fn() -> Histogram>,
    dropped_frames: Counter,
    refused_frames: Counter,
    refused_connections: Counter,
    reconnects: Counter,
    node: Arc<NodeCollector>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "borough_http_requests",
            "Client and peer HTTP requests",
            requests.clone(),
        );
        let latencies: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "borough_http_request_duration_seconds",
            "Time to answer an HTTP request",
            latencies.clone(),
        );
        let dropped_frames = Counter::default();
        registry.register(
            "borough_peer_frames_dropped",
            "Peer messages dropped because the peer's bounded queue was full or it was unknown",
            dropped_frames.clone(),
        );
        let refused_frames = Counter::default();
        registry.register(
            "borough_peer_frames_refused",
            "Inbound peer frames and hellos refused: oversized, malformed, invalid, of an \
             unknown version, or moving a peer that is up",
            refused_frames.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "borough_connections_refused",
            "HTTP and peer connections closed at once because their server had its maximum open",
            refused_connections.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "borough_peer_reconnects",
            "Peer connections lost and redialled",
            reconnects.clone(),
        );
        let node = Arc::new(NodeCollector::default());
        registry.register_collector(Box::new(Arc::clone(&node)));
        Self {
            registry,
            requests,
            latencies,
            dropped_frames,
            refused_frames,
            refused_connections,
            reconnects,
            node,
        }
    }
}

impl Metrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.latencies
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_dropped_frame(&self) {
        self.dropped_frames.inc();
    }

    pub fn count_bad_frame(&self) {
        self.refused_frames.inc();
    }

    pub fn count_refused_connection(&self) {
        self.refused_connections.inc();
    }

    pub fn count_reconnect(&self) {
        self.reconnects.inc();
    }

    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames.get()
    }

    pub fn refused_frames(&self) -> u64 {
        self.refused_frames.get()
    }

    /// The text exposition, with the node's numbers as of this scrape (`None` when the node
    /// did not answer: its metrics are left out rather than shown stale).
    pub fn render(&self, node: Option<(NodeCounters, u64)>) -> String {
        *self
            .node
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            node.map(|(counters, peers_up)| NodeSnapshot { counters, peers_up });
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_the_node_at_scrape_time() {
        let metrics = Metrics::default();
        metrics.observe_request("POST", "/events", 201, Duration::from_millis(3));
        metrics.count_dropped_frame();
        let text = metrics.render(Some((
            NodeCounters {
                group_commits: 7,
                messages_refused: 2,
                handlers: crate::application::HandlerCounters {
                    panicked: 3,
                    ..Default::default()
                },
                ..NodeCounters::default()
            },
            2,
        )));
        for line in [
            "borough_http_requests_total{method=\"POST\",route=\"/events\",status=\"201\"} 1",
            "borough_http_request_duration_seconds_bucket{le=\"0.005\",route=\"/events\"} 1",
            "borough_http_request_duration_seconds_bucket{le=\"0.001\",route=\"/events\"} 0",
            "borough_fsyncs_total 7",
            "borough_peer_messages_refused_total 2",
            "borough_handler_panics_total 3",
            "borough_peers_up 2",
            "borough_peer_frames_dropped_total 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let without_node = metrics.render(None);
        assert!(!without_node.contains("borough_fsyncs_total"));
    }
}

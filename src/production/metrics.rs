//! The shell's metrics and their Prometheus text rendering.
//!
//! HTTP requests are counted per method, route and status, with a latency histogram per
//! route; transport events (dropped frames, bad frames, reconnects) are plain counters. The
//! node's own counters (replica failures, re-spreads, repairs, group commits = fsyncs) are read
//! from the node at scrape time, so they are never stale or double-counted.

use crate::node::NodeCounters;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    bucket_counts: [u64; LATENCY_BUCKETS_SECONDS.len()],
    count: u64,
    sum_seconds: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latencies: Mutex<BTreeMap<String, Histogram>>,
    dropped_frames: AtomicU64,
    bad_frames: AtomicU64,
    reconnects: AtomicU64,
    peers_up: AtomicU64,
}

impl Metrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        drop(requests);
        let seconds = elapsed.as_secs_f64();
        let mut latencies = self
            .latencies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let histogram = latencies.entry(route.to_string()).or_default();
        histogram.count += 1;
        histogram.sum_seconds += seconds;
        for (bound, count) in LATENCY_BUCKETS_SECONDS
            .iter()
            .zip(histogram.bucket_counts.iter_mut())
        {
            if seconds <= *bound {
                *count += 1;
            }
        }
    }

    pub fn count_dropped_frame(&self) {
        self.dropped_frames.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_bad_frame(&self) {
        self.bad_frames.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_peers_up(&self, peers_up: u64) {
        self.peers_up.store(peers_up, Ordering::Relaxed);
    }

    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self, node: Option<NodeCounters>) -> String {
        let mut text = String::new();
        text.push_str("# HELP borough_http_requests_total Client and peer HTTP requests.\n");
        text.push_str("# TYPE borough_http_requests_total counter\n");
        for ((method, route, status), count) in self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            let _ = writeln!(
                text,
                "borough_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        text.push_str(
            "# HELP borough_http_request_duration_seconds Time to answer an HTTP request.\n",
        );
        text.push_str("# TYPE borough_http_request_duration_seconds histogram\n");
        for (route, histogram) in self
            .latencies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            for (bound, count) in LATENCY_BUCKETS_SECONDS
                .iter()
                .zip(histogram.bucket_counts.iter())
            {
                let _ = writeln!(
                    text,
                    "borough_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                text,
                "borough_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                text,
                "borough_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                histogram.sum_seconds
            );
            let _ = writeln!(
                text,
                "borough_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                histogram.count
            );
        }
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(text, "# HELP {name} {help}");
            let _ = writeln!(text, "# TYPE {name} counter");
            let _ = writeln!(text, "{name} {value}");
        };
        if let Some(node) = node {
            counter(
                "borough_replica_failures_total",
                "Replica writes to a peer that failed or timed out.",
                node.replica_failures,
            );
            counter(
                "borough_respreads_total",
                "Replica writes re-spread to a spare peer after a failure (get it done).",
                node.respreads,
            );
            counter(
                "borough_repairs_total",
                "Repairs of events held short of their replication factor.",
                node.repairs,
            );
            counter(
                "borough_fsyncs_total",
                "Group commits of the event log, each one append and one fsync.",
                node.group_commits,
            );
        }
        counter(
            "borough_peer_frames_dropped_total",
            "Peer messages dropped because the peer's bounded queue was full or it was unknown.",
            self.dropped_frames.load(Ordering::Relaxed),
        );
        counter(
            "borough_peer_frames_refused_total",
            "Inbound peer frames refused: oversized, malformed or of an unknown version.",
            self.bad_frames.load(Ordering::Relaxed),
        );
        counter(
            "borough_peer_reconnects_total",
            "Peer connections lost and redialled.",
            self.reconnects.load(Ordering::Relaxed),
        );
        let _ = writeln!(text, "# HELP borough_peers_up Peers currently heard from.");
        let _ = writeln!(text, "# TYPE borough_peers_up gauge");
        let _ = writeln!(
            text,
            "borough_peers_up {}",
            self.peers_up.load(Ordering::Relaxed)
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = Metrics::default();
        metrics.observe_request("POST", "/events", 201, Duration::from_millis(3));
        metrics.count_dropped_frame();
        let text = metrics.render(Some(NodeCounters {
            group_commits: 7,
            ..NodeCounters::default()
        }));
        assert!(text.contains(
            "borough_http_requests_total{method=\"POST\",route=\"/events\",status=\"201\"} 1"
        ));
        assert!(text.contains(
            "borough_http_request_duration_seconds_bucket{route=\"/events\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "borough_http_request_duration_seconds_bucket{route=\"/events\",le=\"0.001\"} 0"
        ));
        assert!(text.contains("borough_fsyncs_total 7"));
        assert!(text.contains("borough_peer_frames_dropped_total 1"));
    }
}

#!/usr/bin/env bash
# Change-feed fan-out against etcd's watch, same machine, same window: one writer at RATE
# sets/s (open loop) and SUBSCRIBERS subscribers spread over 3 nodes, measured DURATION_S
# seconds; ROUNDS rounds, Borough and etcd alternately. Borough: a fresh local 3-node
# cluster per run (`borough bench-feeds`), WebSocket subscribers of one map. etcd: a local
# 3-member cluster, watchers of one key prefix through its v3 JSON gateway. Each line:
# deliveries due and made, delivery latency p50 / p99 / max, and each node's resident memory
# now/peak in MiB (etcd's measured after its runs, so its peak covers them all).
#
# Usage: bench/feeds.sh
# Environment: SUBSCRIBERS (1000), RATE (1000), DURATION_S (15), WARMUP_S (3), ROUNDS (2),
#   BOROUGH (target/release/borough; built with cargo if missing), ETCD_BASE_PORT (23790).
set -euo pipefail
cd "$(dirname "$0")/.."

SUBSCRIBERS="${SUBSCRIBERS:-1000}"
RATE="${RATE:-1000}"
DURATION_S="${DURATION_S:-15}"
WARMUP_S="${WARMUP_S:-3}"
ROUNDS="${ROUNDS:-2}"
BOROUGH="${BOROUGH:-target/release/borough}"

source bench/etcd-cluster.sh
start_etcd_cluster feeds borough-feeds || exit 0

if [ ! -x "$BOROUGH" ]; then
    echo "feeds: $BOROUGH missing; building it" >&2
    cargo build --release --bin borough >&2
fi

# More sockets than the default limit of 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

etcd_flags=()
for url in "${client_urls[@]}"; do
    etcd_flags+=(--etcd "$url")
done
common=(--subscribers "$SUBSCRIBERS" --rate "$RATE" --duration-s "$DURATION_S" --warmup-s "$WARMUP_S")
for round in $(seq 1 "$ROUNDS"); do
    "$BOROUGH" bench-feeds "${common[@]}"
    echo "$("$BOROUGH" bench-feeds "${common[@]}" "${etcd_flags[@]}") node_rss_mib=$(etcd_memory)"
done

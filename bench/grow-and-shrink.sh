#!/usr/bin/env bash
# Nodes joining and leaving under load, with real processes on loopback: node 1 founds a
# cluster, nodes 2..NODES join one at a time, then nodes NODES..3 drain one at a time
# (`POST /cluster/leave`) and stop by themselves, while 3 clients put and get keys of
# PARTITIONS named partitions through random nodes. Every answer is recorded and checked:
# no failed request, the slowest one, the history's linearizability, and the replicas at
# the end. Prints the moves and settling time of every join and drain, and the kill -9 of
# node 2 during the last join (BOROUGH_MEMBERSHIP_KILL picks another node).
#
# It is the CI test `tests/membership_cluster.rs` (5 nodes there) at full size.
#
# Usage: bench/grow-and-shrink.sh
# Environment: NODES (15), PARTITIONS (32).
set -euo pipefail
cd "$(dirname "$0")/.."
BOROUGH_MEMBERSHIP_NODES="${NODES:-15}" BOROUGH_MEMBERSHIP_PARTITIONS="${PARTITIONS:-32}" \
    cargo test --release --test membership_cluster -- --nocapture 2>&1 \
    | grep -E "membership under load|^  (join|drain|node)|moves in all|test result|panicked|failed"

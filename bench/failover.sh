#!/usr/bin/env bash
# Failover of a named partition: a local 3-node cluster (formed with --join) under a steady
# write load; each trial kills the leader of partition "failover" with SIGKILL and measures
# the time from the kill until the next write to that partition, sent through a surviving
# node, succeeds; then restarts the killed node and lets it catch up. Prints each trial and
# the p50 / p99 / max over TRIALS trials.
#
# Usage: bench/failover.sh
# Environment: TRIALS (20), BOROUGH (target/release/borough; built with cargo if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

TRIALS="${TRIALS:-20}"
BOROUGH="${BOROUGH:-target/release/borough}"
if [ ! -x "$BOROUGH" ]; then
    echo "failover: $BOROUGH missing; building it" >&2
    cargo build --release --bin borough >&2
fi
command -v curl >/dev/null 2>&1 || { echo "failover: curl is needed" >&2; exit 1; }

work_directory="$(mktemp -d -t borough-failover.XXXXXX)"
declare -A process_ids=()
cleanup() {
    for process_id in "${process_ids[@]}"; do
        kill -9 "$process_id" 2>/dev/null || true
    done
    rm -rf "$work_directory"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base_port=$((20000 + RANDOM % 20000))
http_port() { echo $((base_port + 10 * $1)); }
peer_port() { echo $((base_port + 10 * $1 + 1)); }

start_node() {
    local node="$1" join=()
    if [ "$node" -ne 1 ]; then
        join=(--join "127.0.0.1:$(peer_port 1)")
    fi
    RUST_LOG=warn "$BOROUGH" start --node-id "$node" --http "127.0.0.1:$(http_port "$node")" \
        --listen "127.0.0.1:$(peer_port "$node")" --data-dir "$work_directory/node-$node" \
        --zone "zone-$node" "${join[@]}" >>"$work_directory/node-$node.log" 2>&1 &
    process_ids[$node]=$!
}

for node in 1 2 3; do
    start_node "$node"
done

put() { # node, key: prints the HTTP status
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT --data-binary v \
        "127.0.0.1:$(http_port "$1")/partitions/failover/keys/$2" || true
}

leader() { # the leader of the partition, as any running node's info says
    for node in 1 2 3; do
        local answer
        answer="$(curl -s --max-time 2 "127.0.0.1:$(http_port "$node")/partitions/failover" || true)"
        local id
        id="$(sed -n 's/.*"leader":\([0-9]*\).*/\1/p' <<<"$answer")"
        if [ -n "$id" ]; then
            echo "$id"
            return
        fi
    done
}

formed() { # every node a member of a cluster whose directory has 3 voters
    for node in 1 2 3; do
        curl -s --max-time 2 "127.0.0.1:$(http_port "$node")/cluster" \
            | grep -q '"directory_voters":\[[0-9]*,[0-9]*,[0-9]*\].*"membership":"member"' || return 1
    done
}

echo "failover: waiting for the cluster and the partition" >&2
for attempt in $(seq 1 300); do
    formed && [ "$(put 1 ready)" = 204 ] && [ -n "$(leader)" ] && break
    if [ "$attempt" -eq 300 ]; then
        echo "failover: the cluster did not form; logs:" >&2
        tail -n 20 "$work_directory"/node-*.log >&2
        exit 1
    fi
    sleep 0.1
done

milliseconds=()
for trial in $(seq 1 "$TRIALS"); do
    victim="$(leader)"
    survivor=$((victim % 3 + 1))
    # Load: a writer through the survivor, so the partition is busy when its leader dies.
    for warm in $(seq 1 20); do put "$survivor" "warm-$warm" >/dev/null; done
    killed_at="$(date +%s%N)"
    kill -9 "${process_ids[$victim]}"
    wait "${process_ids[$victim]}" 2>/dev/null || true
    attempt=0
    while true; do
        attempt=$((attempt + 1))
        if [ "$(put "$survivor" "trial-$trial-$attempt")" = 204 ]; then
            break
        fi
        if [ "$attempt" -eq 1 ] || [ "$((attempt % 200))" -eq 0 ]; then
            echo "failover: a write through n$survivor failed: $(curl -s --max-time 10 -X PUT \
                --data-binary v "127.0.0.1:$(http_port "$survivor")/partitions/failover/keys/probe")" >&2
        fi
        if [ "$attempt" -ge 2000 ]; then
            echo "failover: no write succeeded after the kill; logs:" >&2
            tail -n 20 "$work_directory"/node-*.log >&2
            exit 1
        fi
    done
    written_at="$(date +%s%N)"
    elapsed_ms=$(((written_at - killed_at) / 1000000))
    milliseconds+=("$elapsed_ms")
    echo "trial=$trial killed=n$victim through=n$survivor first_write_after_ms=$elapsed_ms attempts=$attempt"
    start_node "$victim"
    # Let it come back and catch up before the next kill.
    for wait_attempt in $(seq 1 100); do
        if curl -s --max-time 1 "127.0.0.1:$(http_port "$victim")/health" >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    sleep 2
done

sorted=($(printf '%s\n' "${milliseconds[@]}" | sort -n))
count=${#sorted[@]}
p50=${sorted[$(((count - 1) / 2))]}
p99=${sorted[$(((count * 99 + 99) / 100 - 1))]}
echo
echo "failover of a partition leader, $count trials on one machine ($(nproc) cores):" \
    "p50_ms=$p50 p99_ms=$p99 max_ms=${sorted[$((count - 1))]}"

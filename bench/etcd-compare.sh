#!/usr/bin/env bash
# Borough against etcd, same client, same load: QUORUM writes of V-byte values with C requests
# in flight (and again with 1 in flight), on a local 3-member etcd cluster and a local 3-node
# Borough cluster, one after the other on this machine. Prints both side by side with the
# ratios borough/etcd of events/s and of p99 latency.
#
# Usage: bench/etcd-compare.sh [CONCURRENCY [VALUE_BYTES]]
#        WORKLOAD=kv bench/etcd-compare.sh: named partitions instead of events: QUORUM puts and
#        linearizable gets of keys spread over PARTITIONS (1000) partitions, at concurrency 1,
#        64 and 256, etcd and Borough alternately, against etcd's put and linearizable range.
# Environment: CONCURRENCY (64), VALUE_BYTES (256), DURATION_S (10), WARMUP_S (1),
#   WORKLOAD (events), PARTITIONS (1000),
#   BOROUGH (target/release/borough; built with cargo if missing),
#   ETCD_BASE_PORT (23790: members take client ports BASE, BASE+1, BASE+2 and peer ports
#   BASE+10, BASE+11, BASE+12).
# etcd comes from Debian's etcd-server package; without it (and without apt-get as root) the
# script says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY="${1:-${CONCURRENCY:-64}}"
VALUE_BYTES="${2:-${VALUE_BYTES:-256}}"
DURATION_S="${DURATION_S:-10}"
WARMUP_S="${WARMUP_S:-1}"
BOROUGH="${BOROUGH:-target/release/borough}"
ETCD_BASE_PORT="${ETCD_BASE_PORT:-23790}"
MEMBER_COUNT=3

source bench/etcd-cluster.sh
start_etcd_cluster etcd-compare borough-etcd-compare || exit 0

if [ ! -x "$BOROUGH" ]; then
    echo "etcd-compare: $BOROUGH missing; building it" >&2
    cargo build --release --bin borough >&2
fi

etcd_flags=()
for url in "${client_urls[@]}"; do
    etcd_flags+=(--etcd "$url")
done

# Prints the value of NAME in a `name=value ...` result line.
field() {
    local line="$1" name="$2"
    sed -n "s/.*\\b$name=\\([^ ]*\\).*/\\1/p" <<<"$line"
}

ratio() {
    awk -v numerator="$1" -v denominator="$2" \
        'BEGIN { if (denominator > 0) printf "%.2f", numerator / denominator; else print "n/a" }'
}

# One row of the summary: two label columns, then rates, ratio, p99s, ratio and errors of
# the Borough line and the etcd line.
summary_row() {
    local first="$1" second="$2" borough_line="$3" etcd_line="$4" first_width="$5"
    local etcd_rate borough_rate etcd_p99 borough_p99
    etcd_rate="$(field "$etcd_line" events_per_s)"
    borough_rate="$(field "$borough_line" events_per_s)"
    etcd_p99="$(field "$etcd_line" p99_ms)"
    borough_p99="$(field "$borough_line" p99_ms)"
    printf "%-${first_width}s %-11s %14s %14s %8s %11s %11s %8s %7s %7s" \
        "$first" "$second" "$borough_rate" "$etcd_rate" \
        "$(ratio "$borough_rate" "$etcd_rate")" "$borough_p99" "$etcd_p99" \
        "$(ratio "$borough_p99" "$etcd_p99")" \
        "$(field "$borough_line" errors)" "$(field "$etcd_line" errors)"
}

if [ "${WORKLOAD:-events}" = "kv" ]; then
    PARTITIONS="${PARTITIONS:-1000}"
    summary=()
    for concurrency in 1 64 256; do
        common_flags=(--workload kv --partitions "$PARTITIONS" --concurrency "$concurrency"
            --value-bytes "$VALUE_BYTES" --duration-s "$DURATION_S" --warmup-s "$WARMUP_S")
        etcd_lines="$("$BOROUGH" bench "${common_flags[@]}" "${etcd_flags[@]}" | grep 'events_per_s=')"
        echo "$etcd_lines"
        borough_lines="$("$BOROUGH" bench "${common_flags[@]}" | grep 'events_per_s=')"
        echo "$borough_lines"
        for operation in kv-put kv-get; do
            etcd_line="$(grep "operation=$operation" <<<"$etcd_lines")"
            borough_line="$(grep "operation=$operation" <<<"$borough_lines")"
            summary+=("$(summary_row "$operation" "$concurrency" "$borough_line" "$etcd_line" 7)")
        done
    done
    echo
    echo "Named partitions: QUORUM puts and linearizable gets of ${VALUE_BYTES}-byte values over" \
        "$PARTITIONS partitions, 3 nodes on one machine ($(nproc) cores), ${DURATION_S} s measured per run"
    printf '%-7s %-11s %14s %14s %8s %11s %11s %8s %7s %7s\n' \
        op concurrency borough_op/s etcd_op/s ratio borough_p99 etcd_p99 ratio b_errors e_errors
    printf '%s\n' "${summary[@]}"
    echo "(ratio = borough / etcd; higher op/s is better, lower p99 ms is better)"
    exit 0
fi

summary=()
for concurrency in 1 "$CONCURRENCY"; do
    common_flags=(--commit-level QUORUM --concurrency "$concurrency" --value-bytes "$VALUE_BYTES"
        --duration-s "$DURATION_S" --warmup-s "$WARMUP_S")
    etcd_line="$("$BOROUGH" bench "${common_flags[@]}" "${etcd_flags[@]}" | grep 'events_per_s=' | tail -n 1)"
    echo "$etcd_line"
    borough_line="$("$BOROUGH" bench "${common_flags[@]}" | grep 'events_per_s=' | tail -n 1)"
    echo "$borough_line"
    summary+=("$(summary_row "$concurrency" "$VALUE_BYTES" "$borough_line" "$etcd_line" 11)")
    if [ "$concurrency" = "$CONCURRENCY" ]; then
        break
    fi
done

echo
echo "QUORUM writes, 3 nodes on one machine ($(nproc) cores), ${DURATION_S} s measured per run"
printf '%-11s %-11s %14s %14s %8s %11s %11s %8s %7s %7s\n' \
    concurrency value_bytes borough_ev/s etcd_ev/s ratio borough_p99 etcd_p99 ratio \
    b_errors e_errors
printf '%s\n' "${summary[@]}"
echo "(ratio = borough / etcd; higher events/s is better, lower p99 ms is better)"

#!/usr/bin/env bash
# Request handlers against the plain key-value path, on a local 3-node cluster each run
# (`borough bench` starts it): for each concurrency, alternately, the key-value path (puts,
# then linearizable gets), the built-in echo handler, and the kv handler's swap (one
# linearizable read and one write). Each line: requests/s and p50 / p90 / p99 / max.
#
# Usage: bench/handlers.sh
# Environment: CONCURRENCIES ("1 64 256"), DURATION_S (10), PARTITIONS (100),
#              BOROUGH (target/release/borough; built with cargo if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCIES="${CONCURRENCIES:-1 64 256}"
DURATION_S="${DURATION_S:-10}"
PARTITIONS="${PARTITIONS:-100}"
BOROUGH="${BOROUGH:-target/release/borough}"
if [ ! -x "$BOROUGH" ]; then
    echo "handlers: $BOROUGH missing; building it" >&2
    cargo build --release --bin borough >&2
fi

for concurrency in $CONCURRENCIES; do
    for workload in kv echo swap; do
        "$BOROUGH" bench --workload "$workload" --concurrency "$concurrency" \
            --duration-s "$DURATION_S" --partitions "$PARTITIONS" --value-bytes 64 2>/dev/null
    done
done

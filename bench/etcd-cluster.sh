# Sourced by the comparison scripts: `start_etcd_cluster LABEL TOKEN` starts a local
# 3-member etcd cluster (Debian's etcd-server, installed when missing and apt-get may run),
# waits until every member is healthy, and leaves its client URLs in `client_urls` and its
# member process ids in `etcd_process_ids`; an EXIT trap stops them and removes their data.
# Returns 1 (after saying why) when etcd or curl cannot be had, so the caller may skip.
# Uses ETCD_BASE_PORT (23790: client ports BASE..BASE+2, peer ports BASE+10..BASE+12) and
# MEMBER_COUNT (3).

start_etcd_cluster() {
    local label="$1" token="$2"
    ETCD_BASE_PORT="${ETCD_BASE_PORT:-23790}"
    MEMBER_COUNT="${MEMBER_COUNT:-3}"
    if ! command -v etcd >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        local install_prefix=()
        if [ "$(id -u)" -ne 0 ]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                install_prefix=(sudo -n)
            else
                install_prefix=(none)
            fi
        fi
        if [ "${install_prefix[*]-}" != "none" ]; then
            echo "$label: etcd not on PATH; installing Debian's etcd-server" >&2
            export DEBIAN_FRONTEND=noninteractive
            "${install_prefix[@]}" apt-get install -y etcd-server >&2 \
                || { "${install_prefix[@]}" apt-get update >&2 \
                    && "${install_prefix[@]}" apt-get install -y etcd-server >&2; } \
                || true
        fi
    fi
    if ! command -v etcd >/dev/null 2>&1; then
        echo "$label: etcd is not installed and could not be installed" \
            "(apt-get install etcd-server needs root or sudo); skipping the comparison."
        return 1
    fi
    if ! command -v curl >/dev/null 2>&1; then
        echo "$label: curl is needed to check etcd's health; skipping the comparison."
        return 1
    fi

    etcd_work_directory="$(mktemp -d -t borough-etcd.XXXXXX)"
    etcd_process_ids=()
    trap stop_etcd_cluster EXIT
    trap 'exit 130' INT TERM

    local initial_cluster="" member client_port peer_port
    for member in $(seq 0 $((MEMBER_COUNT - 1))); do
        peer_port=$((ETCD_BASE_PORT + 10 + member))
        initial_cluster+="${initial_cluster:+,}member-$member=http://127.0.0.1:$peer_port"
    done
    client_urls=()
    for member in $(seq 0 $((MEMBER_COUNT - 1))); do
        client_port=$((ETCD_BASE_PORT + member))
        peer_port=$((ETCD_BASE_PORT + 10 + member))
        client_urls+=("http://127.0.0.1:$client_port")
        etcd --name "member-$member" \
            --data-dir "$etcd_work_directory/member-$member" \
            --listen-client-urls "http://127.0.0.1:$client_port" \
            --advertise-client-urls "http://127.0.0.1:$client_port" \
            --listen-peer-urls "http://127.0.0.1:$peer_port" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
            --initial-cluster "$initial_cluster" \
            --initial-cluster-state new \
            --initial-cluster-token "$token" \
            --log-level error \
            >"$etcd_work_directory/member-$member.log" 2>&1 &
        etcd_process_ids+=("$!")
    done

    echo "$label: waiting for the etcd cluster" >&2
    local attempt healthy url
    for attempt in $(seq 1 300); do
        healthy=0
        for url in "${client_urls[@]}"; do
            if curl -fsS --max-time 1 "$url/health" 2>/dev/null | grep -q '"health":"true"'; then
                healthy=$((healthy + 1))
            fi
        done
        [ "$healthy" -eq "$MEMBER_COUNT" ] && return 0
        sleep 0.1
    done
    echo "$label: etcd not healthy after 30 s; member logs:" >&2
    tail -n 20 "$etcd_work_directory"/member-*.log >&2
    exit 1
}

stop_etcd_cluster() {
    local process_id
    for process_id in "${etcd_process_ids[@]}"; do
        kill "$process_id" 2>/dev/null || true
    done
    for process_id in "${etcd_process_ids[@]}"; do
        wait "$process_id" 2>/dev/null || true
    done
    rm -rf "$etcd_work_directory"
}

# Each etcd member's resident memory, now and at its peak, as `now/peak` MiB, comma-separated.
etcd_memory() {
    local process_id now peak out=""
    for process_id in "${etcd_process_ids[@]}"; do
        now="$(awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$process_id/status" 2>/dev/null || echo 0)"
        peak="$(awk '/^VmHWM:/ { print int($2 / 1024) }' "/proc/$process_id/status" 2>/dev/null || echo 0)"
        out+="${out:+,}$now/$peak"
    done
    echo "$out"
}

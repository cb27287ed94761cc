#!/usr/bin/env bash
# Errors clients see during a binary upgrade under load: wrk runs DURATION seconds against the
# proxy (keep-alive, then one request per connection with `Connection: close`) and, halfway,
# the proxy is upgraded:
#
#   switchyard   `switchyard run --takeover` from a copy of the binary at another path (the old
#                process hands its listening sockets over, stops accepting, drains, exits 0)
#   sy-restart   for contrast, what a takeover replaces: SIGTERM to the running Switchyard, then
#                the new binary starts and binds (clients are refused in between)
#   haproxy      HAProxy 2.6 seamless reload: master-worker (`-W -S`), SIGUSR2 to the master; the
#                new worker takes the listeners over the `stats socket ... expose-fd listeners`
#   haproxy+icr  the same with `option idle-close-on-response` (2.6+: an idle keep-alive connection
#                waits for one more request, answered with a close, instead of being closed)
#
# Counted: wrk's socket errors (connect, read, write, timeout) and non-2xx answers. The machine
# may be shared: throughput is printed but is not the point.
#
#   benches/load/upgrade.sh     # target/release/switchyard; writes benches/results/upgrade.txt
#
# Environment: BIN, DURATION (10), CONNS (32), THREADS (2), OUT (benches/results/upgrade.txt).
# Loopback only; what it starts is stopped by PID on exit.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
OUT=${OUT:-$ROOT/benches/results/upgrade.txt}

need_tools wrk nginx haproxy curl
need_bin
work_dir upgrade

UP=$(free_port)
start_nginx "$UP"

# --- switchyard ------------------------------------------------------------------------------
SY_PORT=$(free_port) SY_ADMIN=$(free_port)
cat >"$WORK/switchyard.toml" <<EOF
[global]
threads = 1
shutdown_grace = "10s"
upgrade_socket = "$WORK/upgrade.sock"
[admin]
listen = "127.0.0.1:$SY_ADMIN"
[[frontend]]
name = "web"
bind = "127.0.0.1:$SY_PORT"
backend = "up"
[[backend]]
name = "up"
servers = ["127.0.0.1:$UP"]
[backend.check]
type = "none"
EOF
# The "new version": the same build at another path, as a package upgrade installs it.
cp "$BIN" "$WORK/switchyard-next"
SY_BINS=("$BIN" "$WORK/switchyard-next")
SY_GEN=0
SY_PID=
start_switchyard() {   # [--takeover]
    local bin=${SY_BINS[$((SY_GEN % 2))]}
    SY_GEN=$((SY_GEN + 1))
    RUST_LOG=warn "$bin" run -c "$WORK/switchyard.toml" "$@" 2>>"$WORK/switchyard.log" &
    SY_PID=$!
    PIDS+=("$SY_PID")
}
start_switchyard
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$SY_ADMIN/readyz" >/dev/null 2>&1 && [[ -S $WORK/upgrade.sock ]] && break
    sleep 0.1
done

# Upgrades Switchyard: the next binary takes over; waits for the old process to exit and
# records its exit status.
upgrade_switchyard() {
    local old=$SY_PID t0 t1 rc=0
    t0=$(date +%s.%N)
    start_switchyard --takeover "$WORK/upgrade.sock"
    wait "$old" || rc=$?
    t1=$(date +%s.%N)
    UPGRADE_NOTE="old exited $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
}

# For contrast, the plain restart a takeover replaces: SIGTERM (the old process closes its
# listeners and drains), then the new binary starts and binds.
restart_switchyard() {
    local old=$SY_PID t0 rc=0
    t0=$(date +%s.%N)
    kill -TERM "$old"
    wait "$old" || rc=$?
    start_switchyard
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$SY_ADMIN/readyz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    UPGRADE_NOTE="old exited $rc; new serving after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s"
}

# --- haproxy ---------------------------------------------------------------------------------
write_haproxy() {   # dir port extra-defaults
    mkdir -p "$1"
    cat >"$1/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    stats socket $1/stats.sock mode 600 expose-fd listeners level admin
    hard-stop-after 30s
defaults
$3
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$2
    default_backend be
backend be
    server s1 127.0.0.1:$UP
EOF
}
HA_PID=
start_haproxy() {   # dir
    haproxy -c -q -f "$1/haproxy.cfg"
    haproxy -W -S "$1/master.sock" -f "$1/haproxy.cfg" -p "$1/haproxy.pid" >"$1/haproxy.log" 2>&1 &
    HA_PID=$!
    PIDS+=("$HA_PID")
    sleep 0.5
}
# Seamless reload: the master re-executes and starts a new worker, which takes the listeners
# from the old one over the stats socket; the old worker finishes its connections and exits.
upgrade_haproxy() {
    local t0 old_workers
    old_workers=$(pgrep -P "$HA_PID" | tr '\n' ' ' || true)
    t0=$(date +%s.%N)
    kill -USR2 "$HA_PID"
    for _ in $(seq 300); do
        local alive=0 w
        for w in $old_workers; do kill -0 "$w" 2>/dev/null && alive=1; done
        ((alive == 0)) && break
        sleep 0.1
    done
    UPGRADE_NOTE="old worker gone after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s"
}

HA_PORT=$(free_port)
write_haproxy "$WORK/haproxy" "$HA_PORT" ""
start_haproxy "$WORK/haproxy"
HA_MASTER=$HA_PID
HAI_PORT=$(free_port)
write_haproxy "$WORK/haproxy-icr" "$HAI_PORT" "    option idle-close-on-response"
start_haproxy "$WORK/haproxy-icr"
HAI_MASTER=$HA_PID

# --- the runs --------------------------------------------------------------------------------
# run_one NAME MODE PORT UPGRADE-FUNCTION: wrk for DURATION s, the upgrade at DURATION/2.
ROWS=()
run_one() {
    local name=$1 mode=$2 port=$3 upgrade=$4 hdr=() out
    [[ $mode == close ]] && hdr=(-H 'Connection: close')
    out=$WORK/wrk.$name.$mode
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "${hdr[@]}" "http://127.0.0.1:$port/" >"$out" 2>&1 &
    local wrk_pid=$!
    sleep "$(awk -v d="$DURATION" 'BEGIN {print d / 2}')"
    UPGRADE_NOTE=""
    "$upgrade"
    wait "$wrk_pid"
    local reqs errs non2xx
    reqs=$(awk '/requests in/ {print $1}' "$out")
    errs=$(grep -o 'Socket errors:.*' "$out" | sed 's/Socket errors: //' || true)
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out")
    ROWS+=("$(printf '%-12s %-10s %9s  %-44s %6s  %s' "$name" "$mode" "$reqs" \
        "${errs:-connect 0, read 0, write 0, timeout 0}" "${non2xx:-0}" "$UPGRADE_NOTE")")
    printf '%s\n' "${ROWS[-1]}"
}

header=$(printf '%-12s %-10s %9s  %-44s %6s  %s' proxy mode requests "socket errors" non2xx upgrade)
printf '%s\n' "$header"
for mode in keepalive close; do
    run_one switchyard "$mode" "$SY_PORT" upgrade_switchyard
    run_one sy-restart "$mode" "$SY_PORT" restart_switchyard
    HA_PID=$HA_MASTER
    run_one haproxy "$mode" "$HA_PORT" upgrade_haproxy
    HA_PID=$HAI_MASTER
    run_one haproxy+icr "$mode" "$HAI_PORT" upgrade_haproxy
done
# Each Switchyard generation must have exited 0 (checked in upgrade_switchyard's note) and
# the last one must still serve.
curl -fs "http://127.0.0.1:$SY_PORT/" >/dev/null && alive="the last Switchyard serves" ||
    alive="the last Switchyard DOES NOT serve"

{
    echo "# benches/load/upgrade.sh — $(date -u +%Y-%m-%dT%H:%MZ) — $(nproc) CPUs (shared with other jobs)"
    echo "# wrk -t$THREADS -c$CONNS -d${DURATION}s through one binary upgrade at $((DURATION / 2)) s;"
    echo "# mode close: -H 'Connection: close' (one request per connection). nginx upstream."
    echo "# switchyard: $("$BIN" --version 2>&1), --takeover from a copy of the binary;"
    echo "# sy-restart: SIGTERM, then the new binary starts (no takeover), for contrast;"
    echo "# haproxy: $(haproxy -v 2>&1 | head -n 1 | cut -d' ' -f1-3), master-worker, SIGUSR2 (seamless reload, expose-fd listeners);"
    echo "# haproxy+icr: the same with option idle-close-on-response."
    echo "# wrk counts a refused connection as a write error (its non-blocking connect fails at the write)."

    echo "$header"
    printf '%s\n' "${ROWS[@]}"
    echo "# $alive"
} >"$OUT"
echo "written to $OUT"

#!/usr/bin/env bash
# Soak (README "Reliability", the soak row): the release binary under steady load for SOAK_SECONDS
# with faults mixed in, and whether its memory, file descriptors and threads are back to their
# baseline afterwards.
#
#   benches/soak.sh                          # 10 minutes (SOAK_SECONDS=600), about 11 minutes in all
#   SOAK_SECONDS=60 benches/soak.sh          # a quick run
#
# What runs (loopback only, free ports picked at start, everything started here is stopped by PID
# on exit): one etcd 3.4 (v2 API), six nginx upstreams (one master + one worker each) answering
# `200 uN`, `target/release/switchyard run` watching /soak/backend, three `switchyard register`
# sidekicks keeping u1..u3 registered (TTL 10 s, --check-tcp), and wrk (-t2 -c32, keep-alive).
# Faults during the soak:
#   - churn: about every second (one loop turn) one of c4..c6 (upstreams u4..u6) is registered
#     or deregistered (curl);
#   - SIGHUP every 5 s, alternating two config files (they differ in retries, check timing and
#     etcd poll_timeout, so every reload also restarts discovery);
#   - etcd SIGKILLed and restarted (same data dir) every ETCD_RESTART_EVERY seconds (200);
#   - upstream u2 stopped (nginx SIGTERM) for 3 s and started again every UPSTREAM_RESTART_EVERY
#     seconds (150); its sidekick deregisters it meanwhile.
# Measured: VmRSS, open fds (ls /proc/PID/fd | wc -l) and threads (/proc/PID/status) of
# Switchyard idle after a warm-up (baseline), every SAMPLE_EVERY seconds under load, and idle
# again SETTLE seconds after the load stopped (end); wrk's requests and errors; Switchyard's own
# requests by status code; per-server `active` from /api/v1/backends and
# switchyard_connections_active at the end (in-flight work that should be 0). Passes if the end
# figures are within RSS_TOLERANCE_PCT % (+ RSS_SLACK_KB) / FD_TOLERANCE / THREAD_TOLERANCE of the
# baseline, nothing is left in flight, and the routed set equals what etcd holds.
#
# Environment: SOAK_SECONDS (600) WARMUP (20) SETTLE (10) SAMPLE_EVERY (10) CONNS (32) THREADS (2)
#   ETCD_RESTART_EVERY (200) UPSTREAM_RESTART_EVERY (150) OUT (benches/results/soak.txt)
#   KEEP=1 keeps the temp dir (configs, logs, samples)
#
# NOTE: tokio's task count is not observable from outside the process (it would need
# tokio-console / tokio_unstable); the closest signals are the fd count (every connection task
# holds a socket) and the in-flight counters above.
set -euo pipefail

SOAK_SECONDS=${SOAK_SECONDS:-600}
WARMUP=${WARMUP:-20}
SETTLE=${SETTLE:-15}
# nginx closes idle keep-alive connections after this (Switchyard's pool keeps idle upstream
# connections until the server closes them, so this is also how long the pool takes to empty).
UPSTREAM_KEEPALIVE=${UPSTREAM_KEEPALIVE:-5}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
ETCD_RESTART_EVERY=${ETCD_RESTART_EVERY:-200}
UPSTREAM_RESTART_EVERY=${UPSTREAM_RESTART_EVERY:-150}
RSS_TOLERANCE_PCT=${RSS_TOLERANCE_PCT:-20}
RSS_SLACK_KB=${RSS_SLACK_KB:-4096}
FD_TOLERANCE=${FD_TOLERANCE:-4}
THREAD_TOLERANCE=${THREAD_TOLERANCE:-2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/benches/results/soak.txt}
BIN=$ROOT/target/release/switchyard
ETCD=/usr/bin/etcd
PREFIX=/soak/backend

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
[ -x "$ETCD" ] || need_pkgs+=(etcd-server)
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 $SUDO apt-get install -y "${need_pkgs[@]}" >/dev/null 2>&1 || {
        timeout 300 $SUDO apt-get update >/dev/null
        timeout 600 $SUDO apt-get install -y "${need_pkgs[@]}" >/dev/null
    }
fi

log "cargo build --release"
(cd "$ROOT" && timeout 1800 cargo build --release --quiet)

WORK=$(mktemp -d /tmp/switchyard-soak.XXXXXX)
chmod 755 "$WORK"   # nginx workers may run as nobody
ETCD_PID=""
SY_PID=""
WRK_PID=""
declare -A NGX_PID=()
declare -A REG_PID=()

all_pids() {
    echo "$WRK_PID" "${REG_PID[@]}" "$SY_PID" "${NGX_PID[@]}" "$ETCD_PID"
}

cleanup() {
    local rc=$?
    set +e
    local pid
    # The load and the sidekicks first, while etcd still answers their deregistration.
    for pid in $WRK_PID "${REG_PID[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in $WRK_PID "${REG_PID[@]}"; do
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    # shellcheck disable=SC2046
    for pid in $(all_pids); do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 50); do
        local alive=0
        # shellcheck disable=SC2046
        for pid in $(all_pids); do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    # shellcheck disable=SC2046
    for pid in $(all_pids); do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_http() {   # url [seconds] [grep pattern]
    local url=$1 deadline=$((SECONDS + ${2:-10})) pat=${3:-}
    while [ $SECONDS -lt $deadline ]; do
        if [ -n "$pat" ]; then
            curl -s --max-time 1 "$url" 2>/dev/null | grep -q "$pat" && return 0
        else
            curl -s --max-time 1 -o /dev/null "$url" 2>/dev/null && return 0
        fi
        sleep 0.1
    done
    return 1
}

# shellcheck disable=SC2046
read -r ETCD_CLIENT ETCD_PEER HTTP_PORT ADMIN_PORT UP1 UP2 UP3 UP4 UP5 UP6 <<<"$(free_ports 10)"
UPS=("" "$UP1" "$UP2" "$UP3" "$UP4" "$UP5" "$UP6")
E=http://127.0.0.1:$ETCD_CLIENT
ADMIN=http://127.0.0.1:$ADMIN_PORT

# ---------------------------------------------------------------- etcd
start_etcd() {
    (
        for k in $(env | sed -n 's/^\(ETCD_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$k"; done
        exec "$ETCD" --name s1 --data-dir "$WORK/etcd/data" --enable-v2=true \
            --listen-client-urls "$E" --advertise-client-urls "$E" \
            --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
            --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
            --initial-cluster "s1=http://127.0.0.1:$ETCD_PEER" \
            --logger=zap --log-outputs="$WORK/etcd/etcd.log"
    ) 2>>"$WORK/etcd/stderr.log" &
    ETCD_PID=$!
    wait_http "$E/health" 20 '"health":"true"' || { log "etcd not healthy"; tail "$WORK/etcd/etcd.log" >&2; exit 1; }
}
mkdir -p "$WORK/etcd"
start_etcd
log "etcd $E (pid $ETCD_PID)"

# ---------------------------------------------------------------- upstreams
start_nginx() {   # n
    local n=$1 d=$WORK/nginx$1
    mkdir -p "$d/logs"
    cat > "$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout ${UPSTREAM_KEEPALIVE}s;
    keepalive_requests 10000000;
    client_body_temp_path $d/tmp_body;
    server { listen 127.0.0.1:${UPS[$n]}; location / { return 200 "u$n"; } }
}
EOF
    nginx -p "$d" -c "$d/nginx.conf" 2>>"$d/logs/stderr.log" &
    NGX_PID[$n]=$!
    wait_http "http://127.0.0.1:${UPS[$n]}/" 10 || { log "nginx u$n did not start"; cat "$d/logs/"*.log >&2; exit 1; }
}
stop_nginx() {   # n
    local n=$1 pid=${NGX_PID[$1]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    wait "$pid" 2>/dev/null || true
    NGX_PID[$n]=""
}
for n in 1 2 3 4 5 6; do start_nginx "$n"; done
log "nginx upstreams u1..u6 on ${UPS[*]:1}"

# ---------------------------------------------------------------- switchyard
write_config() {   # file variant(a|b)
    local retries=2 inter=1s etcd_extra=""
    if [ "$2" = b ]; then retries=3; inter=900ms; etcd_extra='poll_timeout = "30s"'; fi
    cat > "$1" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[etcd]
endpoints = ["$E"]
api = "v2"
backoff_max = "2s"
$etcd_extra

[[frontend]]
name = "soak"
bind = "127.0.0.1:$HTTP_PORT"
mode = "http"
backend = "soak"

[[backend]]
name = "soak"
etcd_prefix = "$PREFIX"
retries = $retries

[backend.check]
type = "tcp"
inter = "$inter"
fastinter = "200ms"
downinter = "1s"
timeout = "300ms"
rise = 2
fall = 3
EOF
}
CONF=$WORK/switchyard.toml
write_config "$WORK/a.toml" a
write_config "$WORK/b.toml" b
cp "$WORK/a.toml" "$CONF"
"$BIN" check -c "$CONF" >/dev/null

# The register sidekicks for the stable upstreams u1..u3.
for n in 1 2 3; do
    "$BIN" register --etcd "$E" --key "$PREFIX/u$n" --value "127.0.0.1:${UPS[$n]}" --ttl 10s \
        --check-tcp "127.0.0.1:${UPS[$n]}" --check-interval 1s 2>>"$WORK/register-u$n.log" &
    REG_PID[$n]=$!
done

RUST_LOG=${RUST_LOG:-info} "$BIN" run -c "$CONF" 2>>"$WORK/switchyard.log" &
SY_PID=$!
wait_http "$ADMIN/readyz" 20 || { log "switchyard not ready"; tail "$WORK/switchyard.log" >&2; exit 1; }

routed() {   # sorted "name=addr" of routed (not draining) servers
    curl -s --max-time 2 "$ADMIN/api/v1/backends" | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(" ".join(sorted(s["name"] + "=" + s["addr"] for b in v["backends"] for s in b["servers"]
                      if s["state"] != "draining")))'
}
in_etcd() {
    curl -s --max-time 2 "$E/v2/keys$PREFIX?recursive=true&quorum=true" | python3 -c '
import json, sys
v = json.load(sys.stdin)
out = []
def walk(n):
    for c in n.get("nodes", []):
        walk(c)
    if not n.get("dir") and "value" in n:
        out.append(n["key"].rsplit("/", 1)[1] + "=" + n["value"])
walk(v.get("node", {}))
print(" ".join(sorted(out)))'
}
in_flight() {   # sum of per-server active, and switchyard_connections_active
    local a c
    a=$(curl -s --max-time 2 "$ADMIN/api/v1/backends" | python3 -c '
import json, sys
v = json.load(sys.stdin)
print(sum(s.get("active", 0) for b in v["backends"] for s in b["servers"]))')
    c=$(curl -s --max-time 2 "$ADMIN/metrics" | awk '/^switchyard_connections_active/ {s += $2} END {print s + 0}')
    echo "$a $c"
}
deadline=$((SECONDS + 20))
until [ "$(routed)" = "$(in_etcd)" ] && [ "$(in_etcd | wc -w)" -eq 3 ]; do
    [ $SECONDS -lt $deadline ] || { log "initial set not routed: routed [$(routed)] etcd [$(in_etcd)]"; exit 1; }
    sleep 0.2
done
log "switchyard pid $SY_PID on 127.0.0.1:$HTTP_PORT, admin $ADMIN; routed: $(routed)"

sample() {   # label -> one line: label t rss_kb fds threads
    local st rss thr fds
    st=/proc/$SY_PID/status
    rss=$(awk '/^VmRSS:/ {print $2}' "$st")
    thr=$(awk '/^Threads:/ {print $2}' "$st")
    fds=$(ls "/proc/$SY_PID/fd" | wc -l)
    printf '%s %d %s %s %s\n' "$1" "$SECONDS" "$rss" "$fds" "$thr"
}

# Switchyard's fds by kind: listening sockets, client connections (frontend, admin), upstream
# connections, etcd connections, other sockets, and non-socket fds (epoll, eventfd, pipes, files).
fd_kinds() {
    python3 - "$SY_PID" "$HTTP_PORT" "$ADMIN_PORT" "$ETCD_CLIENT" "${UPS[@]:1}" <<'EOF'
import os, sys
pid, http, admin, etcd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ups = {int(p) for p in sys.argv[5:]}
socks = {}
for f in ("tcp", "tcp6"):
    try:
        lines = open(f"/proc/{pid}/net/{f}").read().splitlines()[1:]
    except OSError:
        continue
    for l in lines:
        p = l.split()
        lport = int(p[1].rsplit(":", 1)[1], 16)
        rport = int(p[2].rsplit(":", 1)[1], 16)
        socks[p[9]] = (lport, rport, p[3])
kinds = dict(listen=0, clients=0, upstream=0, etcd=0, other_sockets=0, non_socket=0)
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        t = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if not t.startswith("socket:["):
        kinds["non_socket"] += 1
        continue
    s = socks.get(t[8:-1])
    if s is None:
        kinds["other_sockets"] += 1
    elif s[2] == "0A":
        kinds["listen"] += 1
    elif s[0] in (http, admin):
        kinds["clients"] += 1
    elif s[1] in ups:
        kinds["upstream"] += 1
    elif s[1] == etcd:
        kinds["etcd"] += 1
    else:
        kinds["other_sockets"] += 1
print(" ".join(f"{k}={v}" for k, v in kinds.items()))
EOF
}

# ---------------------------------------------------------------- warm-up and baseline
log "warm-up: wrk ${WARMUP}s"
wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$HTTP_PORT/" > "$WORK/wrk-warmup.txt"
sleep "$SETTLE"
read -r _ _ B_RSS B_FDS B_THR <<<"$(sample baseline)"
B_KINDS=$(fd_kinds)
read -r B_ACTIVE B_CONNS <<<"$(in_flight)"
log "baseline (idle after warm-up): rss ${B_RSS} kB, fds $B_FDS, threads $B_THR"

# ---------------------------------------------------------------- soak
metric_codes() {   # "code=count ..." of switchyard_requests_total for the soak backend
    curl -s --max-time 2 "$ADMIN/metrics" | awk '
        /^switchyard_requests_total\{/ && /backend="soak"/ {
            match($0, /code="[^"]*"/); c = substr($0, RSTART + 6, RLENGTH - 7); n[c] += $NF }
        END { for (c in n) printf "%s=%d ", c, n[c] }'
}
CODES_BEFORE=$(metric_codes)
log "soak: wrk ${SOAK_SECONDS}s with faults"
wrk -t"$THREADS" -c"$CONNS" -d"${SOAK_SECONDS}s" --timeout 5s --latency \
    "http://127.0.0.1:$HTTP_PORT/" > "$WORK/wrk.txt" 2>&1 &
WRK_PID=$!
SAMPLES=$WORK/samples.txt
: > "$SAMPLES"
start=$SECONDS
tick=0
next_hup=5; next_etcd=$ETCD_RESTART_EVERY; next_up=$UPSTREAM_RESTART_EVERY; next_sample=$SAMPLE_EVERY
churn_ok=0; churn_err=0; hups=0; etcd_restarts=0; upstream_restarts=0
declare -A churn_on=([4]=0 [5]=0 [6]=0)
events=()
while kill -0 "$WRK_PID" 2>/dev/null; do
    sleep 1
    tick=$((tick + 1))
    now=$((SECONDS - start))
    # churn: one of c4..c6 registered or deregistered each second
    n=$((4 + tick % 3))
    if [ "${churn_on[$n]}" = 0 ]; then
        if curl -sf --max-time 2 -XPUT "$E/v2/keys$PREFIX/c$n" -d value="127.0.0.1:${UPS[$n]}" >/dev/null; then
            churn_ok=$((churn_ok + 1)); churn_on[$n]=1
        else churn_err=$((churn_err + 1)); fi
    else
        if curl -sf --max-time 2 -XDELETE "$E/v2/keys$PREFIX/c$n" >/dev/null; then
            churn_ok=$((churn_ok + 1)); churn_on[$n]=0
        else churn_err=$((churn_err + 1)); fi
    fi
    # SIGHUP every 5 s, alternating the two configs
    if [ "$now" -ge "$next_hup" ]; then
        next_hup=$((next_hup + 5))
        if [ $((hups % 2)) -eq 0 ]; then cp "$WORK/b.toml" "$CONF"; else cp "$WORK/a.toml" "$CONF"; fi
        kill -HUP "$SY_PID"; hups=$((hups + 1))
    fi
    # etcd killed and restarted (not in the last 10 s)
    if [ "$now" -ge "$next_etcd" ] && [ $((now + 10)) -lt "$SOAK_SECONDS" ]; then
        next_etcd=$((next_etcd + ETCD_RESTART_EVERY))
        t0=$SECONDS
        kill -KILL "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true
        sleep 1
        start_etcd
        etcd_restarts=$((etcd_restarts + 1))
        events+=("+${now}s etcd SIGKILLed, restarted 1 s later, healthy $((SECONDS - t0)) s after the kill")
        log "etcd restarted (pid $ETCD_PID)"
    fi
    # upstream u2 stopped for 3 s (not in the last 10 s)
    if [ "$now" -ge "$next_up" ] && [ $((now + 10)) -lt "$SOAK_SECONDS" ]; then
        next_up=$((next_up + UPSTREAM_RESTART_EVERY))
        stop_nginx 2
        sleep 3
        start_nginx 2
        upstream_restarts=$((upstream_restarts + 1))
        events+=("+${now}s nginx u2 stopped (SIGTERM) for 3 s, then started")
        log "u2 restarted (pid ${NGX_PID[2]})"
    fi
    if [ "$now" -ge "$next_sample" ]; then
        next_sample=$((next_sample + SAMPLE_EVERY))
        echo "$(sample "t+$now") $(fd_kinds)" >> "$SAMPLES"
    fi
done
wait "$WRK_PID" || true
WRK_PID=""
soak_secs=$((SECONDS - start))
log "load stopped after ${soak_secs}s; settling ${SETTLE}s"
# Leave the churn keys as they are (etcd decides the expected set); let everything go idle.
sleep "$SETTLE"
read -r _ _ E_RSS E_FDS E_THR <<<"$(sample end)"
E_KINDS=$(fd_kinds)
read -r E_ACTIVE E_CONNS <<<"$(in_flight)"
ROUTED=$(routed)
IN_ETCD=$(in_etcd)
CODES_AFTER=$(metric_codes)
HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$SY_PID/status")

# ---------------------------------------------------------------- SIGTERM
t0=$(date +%s.%N)
kill -TERM "$SY_PID"
sy_rc=0
wait "$SY_PID" || sy_rc=$?
term_secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
SY_PID=""

# ---------------------------------------------------------------- report
reloaded=$(grep -c "configuration reloaded" "$WORK/switchyard.log" || true)
disc_started=$(grep -c "discovery started" "$WORK/switchyard.log" || true)
w=$WORK/wrk.txt
requests=$(awk '/requests in/ {print $1}' "$w")
non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$w"); non2xx=${non2xx:-0}
sockerr=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$w")
read -r e_conn e_read e_write e_timeout <<<"${sockerr:-0 0 0 0}"
failures=$((non2xx + e_conn + e_read + e_write + e_timeout))
rps=$(awk '/^Requests\/sec:/ {print $2}' "$w")
lat=$(awk '/^     50%/ {p50=$2} /^     99%/ {p99=$2} END {print "p50 " p50 ", p99 " p99}' "$w")

rss_limit=$((B_RSS + B_RSS * RSS_TOLERANCE_PCT / 100 + RSS_SLACK_KB))
verdict=PASS
why=()
[ "$E_RSS" -le "$rss_limit" ] || { verdict=FAIL; why+=("RSS ${E_RSS} kB > ${rss_limit} kB"); }
[ "$E_FDS" -le $((B_FDS + FD_TOLERANCE)) ] || { verdict=FAIL; why+=("fds $E_FDS > $B_FDS + $FD_TOLERANCE"); }
[ "$E_THR" -le $((B_THR + THREAD_TOLERANCE)) ] || { verdict=FAIL; why+=("threads $E_THR > $B_THR + $THREAD_TOLERANCE"); }
[ "$E_ACTIVE" = 0 ] && [ "${E_CONNS%.*}" = 0 ] || { verdict=FAIL; why+=("in flight at the end: active $E_ACTIVE, connections $E_CONNS"); }
[ "$ROUTED" = "$IN_ETCD" ] || { verdict=FAIL; why+=("routed [$ROUTED] != etcd [$IN_ETCD]"); }
[ "$sy_rc" = 0 ] || { verdict=FAIL; why+=("exit code $sy_rc after SIGTERM"); }

{
    echo "switchyard soak: $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $("$ETCD" --version | head -1 | sed 's/etcd Version: /etcd /'), $(nproc) CPUs"
    echo "command: SOAK_SECONDS=$SOAK_SECONDS benches/soak.sh (wrk -t$THREADS -c$CONNS keep-alive GET /, release binary, etcd v2, nginx upstreams)"
    echo "faults: churn about 1/s ($churn_ok etcd writes ok, $churn_err failed), SIGHUP every 5 s ($hups sent, two configs in turn; $reloaded 'configuration reloaded' and $((disc_started - 1)) discovery restarts in Switchyard's log), etcd SIGKILL+restart x$etcd_restarts, upstream u2 stopped 3 s x$upstream_restarts"
    for ev in "${events[@]}"; do echo "  $ev"; done
    echo
    echo "load: $requests requests in ${soak_secs} s ($rps req/s), latency $lat"
    echo "failures: $failures (wrk: non-2xx $non2xx, socket errors connect $e_conn read $e_read write $e_write timeout $e_timeout)"
    echo "switchyard requests by code during the soak: before [$CODES_BEFORE] after [$CODES_AFTER]"
    echo
    printf '%-42s %10s %6s %8s\n' "" "VmRSS kB" "fds" "threads"
    printf '%-42s %10s %6s %8s\n' "baseline (idle, after ${WARMUP}s warm-up)" "$B_RSS" "$B_FDS" "$B_THR"
    first=$(head -1 "$SAMPLES"); last=$(tail -1 "$SAMPLES")
    # shellcheck disable=SC2086
    set -- $first; printf '%-42s %10s %6s %8s\n' "under load, first sample ($1)" "$3" "$4" "$5"
    # shellcheck disable=SC2086
    set -- $last; printf '%-42s %10s %6s %8s\n' "under load, last sample ($1)" "$3" "$4" "$5"
    printf '%-42s %10s %6s %8s\n' "end (idle, ${SETTLE}s after load)" "$E_RSS" "$E_FDS" "$E_THR"
    echo "fds by kind: baseline [$B_KINDS], end [$E_KINDS]"
    echo "peak RSS (VmHWM) $HWM kB; in flight at the end: per-server active $E_ACTIVE (baseline $B_ACTIVE), switchyard_connections_active $E_CONNS (baseline $B_CONNS)"
    echo "routed at the end: [$ROUTED]; etcd holds: [$IN_ETCD]"
    echo "SIGTERM: exit code $sy_rc after ${term_secs} s"
    echo "tolerances: RSS +${RSS_TOLERANCE_PCT}% + ${RSS_SLACK_KB} kB (limit $rss_limit kB), fds +$FD_TOLERANCE, threads +$THREAD_TOLERANCE"
    echo "tokio task count: not observable from outside the process (no tokio-console); fds and the in-flight counters above stand in for it"
    echo "verdict: $verdict${why[*]:+ (${why[*]})}"
    echo
    echo "samples under load (every ${SAMPLE_EVERY}s, one in 6 shown: label, script seconds, VmRSS kB, fds, threads, fds by kind):"
    awk 'NR % 6 == 1' "$SAMPLES" | sed 's/^/  /'
} > "$WORK/report.txt"
cat "$WORK/report.txt"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.txt" "$OUT"
log "written to $OUT"
[ "$verdict" = PASS ]

#!/usr/bin/env bash
# Memory per idle keep-alive connection: Switchyard vs HAProxy 2.6 vs nginx 1.22, in one run.
#
#   benches/load/idle.sh                     # SIZES="10000 50000" MODES="plain tls"
#   SIZES=2000 MODES=plain SETTLE=10 benches/load/idle.sh   # quick look
#
# For each mode (plain HTTP, TLS) and size N, the three proxies start fresh, each with one
# thread or worker (THREADS), in front of one nginx upstream. Then, one proxy after another:
# RSS before (after a warm-up of 100 connections), N connections that each send one `GET /`,
# read the answer and stay open and idle (benches/load/idle_client.rs, spread over 8 source
# addresses), RSS with the N held, then all N closed. SETTLE seconds (60) after each proxy's
# close, its RSS again. RSS is VmRSS from /proc (nginx: master plus workers).
#
#   KB/conn      = (RSS held - RSS before) / N
#   after close  = RSS SETTLE seconds after the close, and that as a percentage of RSS before
#
# Each held connection needs a file descriptor in the proxy: the script raises `ulimit -n` to
# the hard limit, and a size that does not fit under it is reported as not run (a container's
# hard limit is often lower than 50,000; deploy/systemd/switchyard.service sets LimitNOFILE).
# Environment: SIZES, MODES, THREADS (1), SETTLE (60), OUT (benches/results/idle.txt), BIN.
# Loopback only; everything started here is stopped by PID on exit.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SIZES=${SIZES:-"10000 50000"}
MODES=${MODES:-"plain tls"}
THREADS=${THREADS:-1}
SETTLE=${SETTLE:-60}
OUT=${OUT:-$ROOT/benches/results/idle.txt}
PROXIES=(switchyard haproxy nginx)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

need_tools haproxy nginx openssl curl
need_bin
(cd "$ROOT" && cargo build --release --quiet --example idle_client)
CLIENT=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/idle_client
COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"

ulimit -n "$(ulimit -Hn)"
FDS=$(ulimit -n)
work_dir idle

# An ECDSA certificate (the handshakes of 50,000 connections stay cheap for every proxy), not a
# CA: the client trusts it as it is, and webpki refuses a CA certificate as a server's.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/combined.pem"
chmod 644 "$WORK"/*.pem

UP=$(free_port)
start_nginx "$UP"

# pid and its children (nginx master + workers)
proc_tree() {
    local root=$1 f line rest
    echo "$root"
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        [ "$2" = "$root" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
    return 0
}

rss_kb() {   # VmRSS summed over a proxy's processes
    local total=0 pid v
    for pid in $(proc_tree "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

wait_http() {   # url
    for _ in $(seq 100); do
        curl -sk --max-time 1 -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

declare -A PID_OF PORT_OF
start_proxy() {   # name mode
    local name=$1 mode=$2 d=$WORK/$1 port admin scheme=http
    mkdir -p "$d/logs"
    port=$(free_port) admin=$(free_port)
    PORT_OF[$name]=$port
    [ "$mode" = tls ] && scheme=https
    case $name in
    switchyard)
        {
            printf '[global]\nthreads = %s\n[admin]\nlisten = "127.0.0.1:%s"\n' "$THREADS" "$admin"
            printf '[[frontend]]\nname = "idle"\nbind = "127.0.0.1:%s"\nbackend = "up"\n' "$port"
            printf 'maxconn = 100000\nidle_timeout = "600s"\n'
            [ "$mode" = tls ] && printf '[frontend.tls]\ncerts = [{ cert = "%s", key = "%s" }]\nalpn = ["http/1.1"]\n' \
                "$WORK/cert.pem" "$WORK/key.pem"
            printf '[[backend]]\nname = "up"\nservers = ["127.0.0.1:%s"]\n[backend.check]\ntype = "none"\n' "$UP"
        } >"$d/sy.toml"
        RUST_LOG=warn "$BIN" run -c "$d/sy.toml" >"$d/logs/out" 2>&1 &
        ;;
    haproxy)
        local ssl=""
        [ "$mode" = tls ] && ssl=" ssl crt $WORK/combined.pem alpn http/1.1"
        cat >"$d/haproxy.cfg" <<CFG
global
    nbthread $THREADS
    maxconn $((FDS - 200))
    # It asks for two descriptors per connection (client and server side); idle connections
    # hold one, so a lower hard limit is a warning here, not a refusal to start.
    no strict-limits
defaults
    mode http
    timeout connect 2s
    timeout client 600s
    timeout server 60s
    timeout http-keep-alive 600s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$port$ssl
    default_backend be
backend be
    server s1 127.0.0.1:$UP
CFG
        haproxy -db -f "$d/haproxy.cfg" >"$d/logs/out" 2>&1 &
        ;;
    nginx)
        local listen="listen 127.0.0.1:$port;"
        [ "$mode" = tls ] && listen="listen 127.0.0.1:$port ssl; ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;"
        cat >"$d/nginx.conf" <<CFG
worker_processes $THREADS;
worker_rlimit_nofile $FDS;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections $((FDS - 200)); }
http {
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 10000000;
    client_body_temp_path $d/tmp_body;
    proxy_temp_path $d/tmp_proxy;
    upstream be { server 127.0.0.1:$UP; keepalive 64; }
    server {
        $listen
        location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
CFG
        nginx -p "$d" -c "$d/nginx.conf" >"$d/logs/out" 2>&1 &
        ;;
    esac
    PID_OF[$name]=$!
    PIDS+=("$!")
    wait_http "$scheme://127.0.0.1:$port/" || { log "$name did not start:"; cat "$d/logs/"* >&2; exit 1; }
}

stop_proxy() {
    local pid=${PID_OF[$1]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# One burst: the client holds N connections until told to close them. Sets HELD, FAILED, SECS.
burst() {   # name mode n  -> prints "before held" in KB
    local name=$1 mode=$2 n=$3 tls=()
    [ "$mode" = tls ] && tls=(--tls "$WORK/cert.pem")
    coproc CL { "$CLIENT" "127.0.0.1:${PORT_OF[$name]}" "$n" "${tls[@]}" 2>>"$WORK/client.err"; }
    local line
    read -r line <&"${CL[0]}"
    read -r _ HELD FAILED SECS <<<"$line"
    sleep 2
    RSS_HELD=$(rss_kb "${PID_OF[$name]}")
    echo close >&"${CL[1]}"
    read -r line <&"${CL[0]}"
    CLOSED_AT=$SECONDS
    eval "exec ${CL[1]}>&-"
    wait "$CL_PID" 2>/dev/null || true
}

{
    echo "# benches/load/idle.sh, commit $COMMIT, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores,"
    echo "# THREADS=$THREADS (Switchyard threads, HAProxy nbthread, nginx worker_processes), SETTLE=${SETTLE}s, fd limit $FDS."
    echo "# haproxy $(haproxy -v | awk 'NR == 1 {print $3}'), nginx $(nginx -v 2>&1 | awk -F/ '{print $2}')."
    echo "# KB/conn = (RSS with N idle connections held - RSS before) / N; 'after close' is RSS SETTLE s"
    echo "# after the N closed, in MB and as a percentage of RSS before."
    printf '%-6s %7s %-11s %9s %9s %8s %12s %7s %s\n' \
        mode conns proxy "before MB" "held MB" KB/conn "after close" "% pre" note
} | tee "$OUT"

for mode in $MODES; do
    for n in $SIZES; do
        if ((n + 500 > FDS)); then
            for p in "${PROXIES[@]}"; do
                printf '%-6s %7d %-11s %9s %9s %8s %12s %7s %s\n' "$mode" "$n" "$p" - - - - - \
                    "not run: fd limit $FDS (ulimit -Hn) is below $n connections" | tee -a "$OUT"
            done
            continue
        fi
        declare -A BEFORE HELD_KB AFTER_AT NOTE
        for p in "${PROXIES[@]}"; do
            log "$mode $n: $p"
            start_proxy "$p" "$mode"
            burst "$p" "$mode" 100   # warm-up: upstream connections, TLS session state, pools
            sleep 1
            BEFORE[$p]=$(rss_kb "${PID_OF[$p]}")
            burst "$p" "$mode" "$n"
            HELD_KB[$p]=$RSS_HELD
            AFTER_AT[$p]=$((CLOSED_AT + SETTLE))
            NOTE[$p]="held $HELD/$n in ${SECS}s"
            ((FAILED == 0)) || NOTE[$p]+=" ($FAILED failed)"
        done
        for p in "${PROXIES[@]}"; do
            while ((SECONDS < AFTER_AT[$p])); do sleep 1; done
            after=$(rss_kb "${PID_OF[$p]}")
            awk -v m="$mode" -v n="$n" -v p="$p" -v b="${BEFORE[$p]}" -v h="${HELD_KB[$p]}" \
                -v a="$after" -v note="${NOTE[$p]}" 'BEGIN {
                printf "%-6s %7d %-11s %9.1f %9.1f %8.2f %12.1f %6.0f%% %s\n",
                    m, n, p, b / 1024, h / 1024, (h - b) / n, a / 1024, 100 * a / b, note }' | tee -a "$OUT"
            stop_proxy "$p"
        done
    done
done

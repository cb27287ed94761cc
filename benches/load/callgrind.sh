#!/usr/bin/env bash
# User-space instructions per request (callgrind), for the four load scenarios of compare.sh:
# HTTP keep-alive, one request per connection, TCP mode, HTTPS keep-alive. Instructions do not
# depend on what else the machine is doing, so two binaries can be compared on a noisy machine.
#
#   benches/load/callgrind.sh                          # target/release/switchyard
#   BIN=/path/to/other/switchyard benches/load/callgrind.sh   # another build, same harness
#
# Environment: BIN, SCENARIOS ("keepalive close tcp https"; also "newtls": HTTPS with a full
# handshake per request (Connection: close); "routed": keep-alive through
# ROUTES (1000; 0 for a binary without routes) host routes; and, unless POLICY=0 (a binary
# without traffic policy), "plainroute": keep-alive through one host route, "policy": the same
# route with three header rules and a rate limit that never refuses, "limited": the same with a
# rate limit of 1/s, so that nearly every request is refused with 429), DURATION (5, seconds measured),
# CONNS (8), KEEP (a directory: the callgrind output of each scenario is kept there as
# SCENARIO.cg, for callgrind_annotate), SY_THREADS (1: [global] threads; 2 counts what the
# work-stealing runtime adds, though valgrind runs one thread at a time, so cache-line contention
# between cores is not in the count), SY_WORK_STEALING (true; false: one runtime per thread).
# Switchyard runs under valgrind with instrumentation off; it is
# switched on (callgrind_control) after a warm-up and off after the measured wrk run, so the
# count is the requests' alone, divided by the requests wrk completed. One nginx upstream answers
# a 13-byte body. Loopback only; what it starts is stopped by PID on exit.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCENARIOS=${SCENARIOS:-"keepalive close tcp https"}
DURATION=${DURATION:-5}
CONNS=${CONNS:-8}

need_tools valgrind wrk nginx openssl curl
need_bin

work_dir callgrind


UP=$(free_port) WEB=$(free_port) TCP=$(free_port) TLS=$(free_port) ADMIN=$(free_port)
ROUTED=$(free_port)
ROUTES=${ROUTES:-1000}
PLAINROUTE=$(free_port) POLICYROUTE=$(free_port) LIMITED=$(free_port)
POLICY=${POLICY:-1}
start_nginx "$UP"

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1
cat >"$WORK/sy.toml" <<EOF
[global]
threads = ${SY_THREADS:-1}
work_stealing = ${SY_WORK_STEALING:-true}
[admin]
listen = "127.0.0.1:$ADMIN"
[[frontend]]
name = "web"
bind = "127.0.0.1:$WEB"
backend = "up"
[[frontend]]
name = "l4"
bind = "127.0.0.1:$TCP"
mode = "tcp"
backend = "up"
[[frontend]]
name = "tls"
bind = "127.0.0.1:$TLS"
backend = "up"
[frontend.tls]
certs = [{ cert = "$WORK/cert.pem", key = "$WORK/key.pem" }]
alpn = ["http/1.1"]
[[backend]]
name = "up"
servers = ["127.0.0.1:$UP"]
[backend.check]
type = "none"
EOF
# Scenario `routed`: keep-alive through a frontend with $ROUTES host routes (each to its own
# backend), to the last one. ROUTES=0 leaves it out (a binary older than routes).
((ROUTES == 0)) || {
    printf '[[frontend]]\nname = "routed"\nbind = "127.0.0.1:%s"\n' "$ROUTED"
    for i in $(seq 0 $((ROUTES - 1))); do
        printf '[[frontend.route]]\nhost = "svc%d.example.com"\nbackend = "svc%d"\n' "$i" "$i"
    done
    for i in $(seq 0 $((ROUTES - 1))); do
        printf '[[backend]]\nname = "svc%d"\nservers = ["127.0.0.1:%s"]\n[backend.check]\ntype = "none"\n' "$i" "$UP"
    done
} >>"$WORK/sy.toml"

# Scenarios `plainroute`, `policy` and `limited` (see above); POLICY=0 leaves them out.
((POLICY == 0)) || {
    rules='request_headers = { set = { "X-Env" = "prod" }, remove = ["X-Debug"] }
response_headers = { set = { "Strict-Transport-Security" = "max-age=31536000" } }'
    for f in "plainroute $PLAINROUTE" "policy $POLICYROUTE" "limited $LIMITED"; do
        set -- $f
        printf '[[frontend]]\nname = "%s"\nbind = "127.0.0.1:%s"\n[[frontend.route]]\nhost = "shop.example.com"\nbackend = "up"\n' "$1" "$2"
        case $1 in
            policy) printf '%s\nrate_limit = { rate = "100000000/s", burst = 100000000 }\n' "$rules" ;;
            limited) printf '%s\nrate_limit = { rate = "1/s", burst = 1 }\n' "$rules" ;;
        esac
    done
} >>"$WORK/sy.toml"

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
    "$BIN" run -c "$WORK/sy.toml" >"$WORK/sy.log" 2>&1 &
SY=$!
PIDS+=("$SY")
for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$WEB/" >/dev/null 2>&1 && break
    sleep 0.2
done

printf '%-10s %12s %14s %10s\n' scenario requests Ir Ir/request
for s in $SCENARIOS; do
    case $s in
        keepalive) url="http://127.0.0.1:$WEB/"; extra=() ;;
        close) url="http://127.0.0.1:$WEB/"; extra=(-H "Connection: close") ;;
        tcp) url="http://127.0.0.1:$TCP/"; extra=() ;;
        https) url="https://127.0.0.1:$TLS/"; extra=() ;;
        newtls) url="https://127.0.0.1:$TLS/"; extra=(-H "Connection: close") ;;
        routed) url="http://127.0.0.1:$ROUTED/"; extra=(-H "Host: svc$((ROUTES - 1)).example.com") ;;
        plainroute) url="http://127.0.0.1:$PLAINROUTE/"; extra=(-H "Host: shop.example.com") ;;
        policy) url="http://127.0.0.1:$POLICYROUTE/"; extra=(-H "Host: shop.example.com") ;;
        limited) url="http://127.0.0.1:$LIMITED/"; extra=(-H "Host: shop.example.com") ;;
        *) echo "unknown scenario $s" >&2; exit 1 ;;
    esac
    wrk -t1 -c"$CONNS" -d1s "${extra[@]}" "$url" >/dev/null 2>&1 || true
    callgrind_control -z "$SY" >/dev/null 2>&1
    callgrind_control -i on "$SY" >/dev/null 2>&1
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "${extra[@]}" "$url")
    callgrind_control -i off "$SY" >/dev/null 2>&1
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    rm -f "$WORK"/cg.out*
    callgrind_control -d "$SY" >/dev/null 2>&1
    # An idle process takes the command at its next wake-up: give it one.
    curl -fs "http://127.0.0.1:$WEB/" >/dev/null 2>&1 || true
    sleep 0.5
    ir=$(cat "$WORK"/cg.out* | awk '/^totals:/ {print $2; exit}')
    if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cat "$WORK"/cg.out* >"$KEEP/$s.cg"; fi
    awk -v s="$s" -v n="$n" -v ir="$ir" 'BEGIN { printf "%-10s %12d %14d %10.0f\n", s, n, ir, ir / n }'
done

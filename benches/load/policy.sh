#!/usr/bin/env bash
# What a route's traffic policy costs a keep-alive request, and what a refusal costs. One
# Switchyard, three frontends in front of the same nginx upstream, each with one host route:
#   plain    the route alone;
#   policy   the same route with three header rules (request set + remove, response set) and a
#            rate limit that never refuses (the bucket is consulted on every request);
#   limited  a rate limit of 1/s: all but a handful of requests are refused with 429.
# Rounds alternate plain and policy; each reports requests per proxy CPU-second (utime+stime
# deltas of the Switchyard process from /proc), and the result is the median of the per-round
# ratios policy / plain (target: within 5%). The limited runs report refused requests per proxy
# CPU-second, against plain's proxied ones in the same rounds.
# The same runs against HAProxy 2.6 (`nbthread 1`), with the same rules (http-request
# set-header/del-header, http-response set-header, and a stick table `http_req_rate` deny 429),
# give its ratio side by side.
#
#   benches/load/policy.sh            # target/release/switchyard, 5 rounds of 5 s each
#
# Environment: BIN, ROUNDS (5), DURATION (5), CONNS (32). Loopback only; what it starts is
# stopped by PID on exit. Writes a summary to stdout.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}

need_tools wrk nginx curl haproxy
need_bin

work_dir policy

UP=$(free_port) PLAIN=$(free_port) POLICY=$(free_port) LIMITED=$(free_port) ADMIN=$(free_port)
HP_PLAIN=$(free_port) HP_POLICY=$(free_port) HP_LIMITED=$(free_port)

start_nginx "$UP"

RULES='request_headers = { set = { "X-Env" = "prod" }, remove = ["X-Debug"] }
response_headers = { set = { "Strict-Transport-Security" = "max-age=31536000" } }'
cat >"$WORK/sy.toml" <<EOF
[global]
threads = 1
[admin]
listen = "127.0.0.1:$ADMIN"
[[frontend]]
name = "plain"
bind = "127.0.0.1:$PLAIN"
[[frontend.route]]
host = "shop.example.com"
backend = "one"
[[frontend]]
name = "policy"
bind = "127.0.0.1:$POLICY"
[[frontend.route]]
host = "shop.example.com"
backend = "one"
$RULES
rate_limit = { rate = "100000000/s", burst = 100000000, key = "source" }
[[frontend]]
name = "limited"
bind = "127.0.0.1:$LIMITED"
[[frontend.route]]
host = "shop.example.com"
backend = "one"
$RULES
rate_limit = { rate = "1/s", burst = 1, key = "source" }
[[backend]]
name = "one"
servers = ["127.0.0.1:$UP"]
[backend.check]
type = "none"
EOF

cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
backend one
    server s1 127.0.0.1:$UP
backend rates
    stick-table type ip size 1m expire 10s store http_req_rate(1s)
frontend plain
    bind 127.0.0.1:$HP_PLAIN
    use_backend one if { hdr(host) -i shop.example.com }
frontend policy
    bind 127.0.0.1:$HP_POLICY
    http-request track-sc0 src table rates
    http-request deny deny_status 429 if { sc_http_req_rate(0,rates) gt 100000000 }
    http-request set-header X-Env prod
    http-request del-header X-Debug
    http-response set-header Strict-Transport-Security max-age=31536000
    use_backend one if { hdr(host) -i shop.example.com }
frontend limited
    bind 127.0.0.1:$HP_LIMITED
    http-request track-sc0 src table rates
    http-request deny deny_status 429 if { sc_http_req_rate(0,rates) gt 1 }
    http-request set-header X-Env prod
    http-request del-header X-Debug
    http-response set-header Strict-Transport-Security max-age=31536000
    use_backend one if { hdr(host) -i shop.example.com }
EOF

"$BIN" run -c "$WORK/sy.toml" >"$WORK/sy.log" 2>&1 &
SY=$!
PIDS+=("$SY")
haproxy -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid"
sleep 0.3
HP=$(cat "$WORK/haproxy.pid")
PIDS+=("$HP")
for _ in $(seq 100); do
    curl -fs -H "Host: shop.example.com" "http://127.0.0.1:$POLICY/" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fs -H "Host: shop.example.com" "http://127.0.0.1:$POLICY/" >/dev/null || { cat "$WORK/sy.log"; exit 1; }
curl -fs -H "Host: shop.example.com" "http://127.0.0.1:$HP_POLICY/" >/dev/null || { echo "haproxy not answering"; exit 1; }

CLK_TCK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# "REQUESTS NON2XX CPU_SECONDS" of one wrk run against port $2, the proxy's PID $1.
run() {
    local t0 t1 out n bad
    t0=$(ticks "$1")
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: shop.example.com" "http://127.0.0.1:$2/")
    t1=$(ticks "$1")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "$n ${bad:-0} $(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}')"
}
per_cpu() { awk '{printf "%.0f", $1 / $3}' <<<"$1"; }

for p in "$SY $PLAIN" "$SY $POLICY" "$HP $HP_PLAIN" "$HP $HP_POLICY"; do
    # shellcheck disable=SC2086
    set -- $p
    wrk -t1 -c"$CONNS" -d1s -H "Host: shop.example.com" "http://127.0.0.1:$2/" >/dev/null
done
echo "benches/load/policy.sh: a route with 3 header rules + a rate limit vs a plain route, keep-alive, $ROUNDS rounds of ${DURATION}s, wrk -t1 -c$CONNS, one thread each"
echo "git $(cd "$ROOT" && git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(haproxy -v | head -1)"
printf '%-6s %-10s %14s %14s %8s %16s %12s\n' round proxy plain_req/cpu-s policy_req/cpu-s ratio refused_req/cpu-s refused_share
sy_ratios=() hp_ratios=()
for r in $(seq "$ROUNDS"); do
    for who in sy hp; do
        if [[ $who == sy ]]; then pid=$SY a=$PLAIN b=$POLICY c=$LIMITED; else pid=$HP a=$HP_PLAIN b=$HP_POLICY c=$HP_LIMITED; fi
        if ((r % 2)); then
            s=$(run "$pid" "$a"); t=$(run "$pid" "$b")
        else
            t=$(run "$pid" "$b"); s=$(run "$pid" "$a")
        fi
        l=$(run "$pid" "$c")
        ratio=$(awk -v a="$(per_cpu "$t")" -v b="$(per_cpu "$s")" 'BEGIN {printf "%.3f", a / b}')
        if [[ $who == sy ]]; then sy_ratios+=("$ratio"); else hp_ratios+=("$ratio"); fi
        share=$(awk '{printf "%.4f", $2 / $1}' <<<"$l")
        printf '%-6s %-10s %14s %14s %8s %16s %12s\n' "$r" "$who" "$(per_cpu "$s")" "$(per_cpu "$t")" "$ratio" "$(per_cpu "$l")" "$share"
    done
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%s (rounds: %s .. %s)", a[int((NR+1)/2)], a[1], a[NR]}'; }
echo "median ratio policy/plain: switchyard $(med "${sy_ratios[@]}"); haproxy $(med "${hp_ratios[@]}")"
awk -v hz="$CLK_TCK" '{printf "Switchyard CPU over the whole run: user %.1f s, system %.1f s (user %.0f%%): user-space instruction counts (benches/load/callgrind.sh) move CPU time by about that share\n", $14 / hz, $15 / hz, 100 * $14 / ($14 + $15)}' "/proc/$SY/stat"
echo "RSS: switchyard $(awk '/^VmRSS:/ {print $2, $3}' "/proc/$SY/status"), haproxy $(awk '/^VmRSS:/ {print $2, $3}' "/proc/$HP/status")"

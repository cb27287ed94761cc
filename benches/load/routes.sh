#!/usr/bin/env bash
# What a large routing table costs a keep-alive request: one Switchyard with two frontends in
# front of the same nginx upstream, `single` (one backend, no routes) and `routed` (1,000 host
# routes, each to its own backend; wrk asks for the last host). Rounds alternate the two; each
# round reports requests per proxy CPU-second (utime+stime deltas of the Switchyard process from
# /proc), and the result is the median of the per-round ratios routed / single. Target: within 3%.
#
#   benches/load/routes.sh            # target/release/switchyard, 5 rounds of 5 s each
#
# Environment: BIN, ROUNDS (5), DURATION (5), CONNS (32), ROUTES (1000). Loopback only; what it
# starts is stopped by PID on exit. Writes a summary to stdout.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
ROUTES=${ROUTES:-1000}

need_tools wrk nginx curl
need_bin

work_dir routes

UP=$(free_port) SINGLE=$(free_port) ROUTED=$(free_port) ADMIN=$(free_port)

start_nginx "$UP"

{
    cat <<EOF
[global]
threads = 1
[admin]
listen = "127.0.0.1:$ADMIN"
[[frontend]]
name = "single"
bind = "127.0.0.1:$SINGLE"
backend = "one"
[[frontend]]
name = "routed"
bind = "127.0.0.1:$ROUTED"
EOF
    for i in $(seq 0 $((ROUTES - 1))); do
        printf '[[frontend.route]]\nhost = "svc%d.example.com"\nbackend = "svc%d"\n' "$i" "$i"
    done
    printf '[[backend]]\nname = "one"\nservers = ["127.0.0.1:%s"]\n[backend.check]\ntype = "none"\n' "$UP"
    for i in $(seq 0 $((ROUTES - 1))); do
        printf '[[backend]]\nname = "svc%d"\nservers = ["127.0.0.1:%s"]\n[backend.check]\ntype = "none"\n' "$i" "$UP"
    done
} >"$WORK/sy.toml"

"$BIN" run -c "$WORK/sy.toml" >"$WORK/sy.log" 2>&1 &
SY=$!
PIDS+=("$SY")
LAST="svc$((ROUTES - 1)).example.com"
for _ in $(seq 100); do
    curl -fs -H "Host: $LAST" "http://127.0.0.1:$ROUTED/" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fs -H "Host: $LAST" "http://127.0.0.1:$ROUTED/" >/dev/null || { cat "$WORK/sy.log"; exit 1; }

CLK_TCK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$SY/stat"; }

# Requests per proxy CPU-second of one wrk run against port $1 with Host $2.
run() {
    local t0 t1 out n
    t0=$(ticks)
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: $2" "http://127.0.0.1:$1/")
    t1=$(ticks)
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v n="$n" -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" 'BEGIN {printf "%.0f", n / ((b - a) / hz)}'
}

wrk -t1 -c"$CONNS" -d1s -H "Host: x" "http://127.0.0.1:$SINGLE/" >/dev/null
wrk -t1 -c"$CONNS" -d1s -H "Host: $LAST" "http://127.0.0.1:$ROUTED/" >/dev/null
echo "benches/load/routes.sh: $ROUTES host routes vs one backend, keep-alive, $ROUNDS rounds of ${DURATION}s, wrk -t1 -c$CONNS, threads = 1"
echo "git $(cd "$ROOT" && git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs"
printf '%-6s %16s %16s %8s\n' round single_req/cpu-s routed_req/cpu-s ratio
ratios=()
for r in $(seq "$ROUNDS"); do
    if ((r % 2)); then
        s=$(run "$SINGLE" x); t=$(run "$ROUTED" "$LAST")
    else
        t=$(run "$ROUTED" "$LAST"); s=$(run "$SINGLE" x)
    fi
    ratio=$(awk -v a="$t" -v b="$s" 'BEGIN {printf "%.3f", a / b}')
    ratios+=("$ratio")
    printf '%-6s %16s %16s %8s\n' "$r" "$s" "$t" "$ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median ratio routed/single: %s (rounds: %s .. %s)\n", a[int((NR+1)/2)], a[1], a[NR]}'
echo "RSS: $(awk '/^VmRSS:/ {print $2, $3}' "/proc/$SY/status")"

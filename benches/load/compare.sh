#!/usr/bin/env bash
# Load comparison: Switchyard vs HAProxy vs nginx, one worker each, same two nginx upstreams.
#
#   benches/load/compare.sh                      # defaults: ROUNDS=3 DURATION=10 (about 8 minutes)
#   ROUNDS=1 DURATION=5 benches/load/compare.sh  # quick run
#
# Environment:
#   ROUNDS (3)  DURATION (10, seconds per measured run)  WARMUP (2, seconds before each run)
#   CONNS (64)  THREADS (1, wrk threads)
#   PROXY_THREADS (1: each proxy's workers: Switchyard [global] threads, HAProxy nbthread, nginx
#     worker_processes)  WRK_CPUS (unset: wrk runs on any CPU; e.g. "1" pins it with taskset)
#   SCENARIOS ("keepalive close tcp https newtls nagle")  KEEP=1 keeps the temp dir (configs, logs, raw wrk output)
#   OUT (benches/results/load.txt)
#
# Each scenario starts the three proxies fresh, then runs them interleaved (A B C, A B C, ...) for
# ROUNDS rounds; every measured run is preceded by a WARMUP-second wrk run. Each table cell is the
# median over the rounds of that column. CPU seconds are utime+stime deltas from /proc/PID/stat of the
# proxy's processes (for nginx the master plus its workers), peak RSS is VmHWM summed over them.
# Loopback only; everything started here is stopped by PID on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
PROXY_THREADS=${PROXY_THREADS:-1}
WRK_CPUS=${WRK_CPUS:-}
SCENARIOS=${SCENARIOS:-"keepalive close tcp https newtls nagle"}
# The `nagle` scenario's upstreams are Python's http.server, which writes a response's head and
# body in two sends with Nagle on; they are slow, so fewer connections load them.
NAGLE_CONNS=${NAGLE_CONNS:-8}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$ROOT/benches/results/load.txt}
BIN=$ROOT/target/release/switchyard
# Each entry is a proxy, optionally with its own worker count: "haproxy:2" is HAProxy with
# nbthread 2 whatever PROXY_THREADS says; "switchyard-tpc" is Switchyard with work_stealing =
# false (one current-thread runtime per thread). REF is the entry the ratios are taken against.
read -r -a PROXIES <<<"${PROXIES:-switchyard haproxy nginx}"
REF=${REF:-haproxy}
PT=$PROXY_THREADS
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy)
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
[ -e "$STREAM_MODULE" ] || need_pkgs+=(libnginx-mod-stream)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 $SUDO apt-get install -y "${need_pkgs[@]}" >/dev/null 2>&1 || {
        timeout 300 $SUDO apt-get update >/dev/null
        timeout 600 $SUDO apt-get install -y "${need_pkgs[@]}" >/dev/null
    }
fi

# Taken before anything is written: the results file itself is tracked.
COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' (working tree modified)' || true)"
log "cargo build --release"
(cd "$ROOT" && timeout 1200 cargo build --release --quiet)

CLK_TCK=$(getconf CLK_TCK)
WRK=(wrk)
[ -z "$WRK_CPUS" ] || WRK=(taskset -c "$WRK_CPUS" wrk)
WORK=$(mktemp -d /tmp/switchyard-load.XXXXXX)
chmod 755 "$WORK"   # nginx workers run as nobody
PIDS=()

cleanup() {
    local rc=$?
    set +e
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# n free loopback ports (all held open until every one is chosen, so they are distinct)
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_http() {   # url [seconds]
    local url=$1 deadline=$((SECONDS + ${2:-10}))
    while [ $SECONDS -lt $deadline ]; do
        curl -sk --max-time 1 -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# pid and its children (nginx master + workers); one level is enough for all three proxies
proc_tree() {
    local root=$1 f line rest
    echo "$root"
    for f in /proc/[0-9]*/stat; do
        read -r line < "$f" 2>/dev/null || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        [ "$2" = "$root" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
    return 0
}

cpu_ticks() {   # sum utime+stime over pids
    local total=0 pid line rest
    for pid in "$@"; do
        read -r line < "/proc/$pid/stat" 2>/dev/null || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

peak_rss_kb() {
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

to_ms() {   # wrk latency "1.23ms" / "456.00us" / "1.02s" -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "nan" }'
}

median() { sort -g | awk '{a[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# ---------------------------------------------------------------- certificate
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1
cat "$WORK/cert.pem" "$WORK/key.pem" > "$WORK/combined.pem"
chmod 644 "$WORK"/*.pem

# ---------------------------------------------------------------- upstreams
read -r UP1 UP2 <<<"$(free_ports 2)"
mkdir -p "$WORK/upstream/logs"
cat > "$WORK/upstream/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/upstream/nginx.pid;
error_log $WORK/upstream/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path $WORK/upstream/tmp_body;
    server { listen 127.0.0.1:$UP1; location / { add_header X-Up a; return 200 "ok"; } }
    server { listen 127.0.0.1:$UP2; location / { add_header X-Up b; return 200 "ok"; } }
}
EOF
nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" 2>"$WORK/upstream/logs/stderr.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP1/" && wait_http "http://127.0.0.1:$UP2/" || {
    log "upstream nginx did not start:"; cat "$WORK/upstream/logs/"*.log >&2; exit 1; }
log "upstreams on 127.0.0.1:$UP1 and 127.0.0.1:$UP2 (nginx pid ${PIDS[-1]})"

# The `nagle` scenario's upstreams: Python's threading http.server (HTTP/1.1 keep-alive), whose
# handler writes the head (one flush) and then the body (a second send), Nagle left on.
if [[ " $SCENARIOS " == *" nagle "* ]]; then
    read -r PY1 PY2 <<<"$(free_ports 2)"
    cat > "$WORK/upstream/py.py" <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("X-Up", sys.argv[2])
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
    python3 "$WORK/upstream/py.py" "$PY1" a & PIDS+=($!)
    python3 "$WORK/upstream/py.py" "$PY2" b & PIDS+=($!)
    wait_http "http://127.0.0.1:$PY1/" && wait_http "http://127.0.0.1:$PY2/" || { log "python upstreams did not start"; exit 1; }
    log "python two-send upstreams on 127.0.0.1:$PY1 and 127.0.0.1:$PY2"
fi

# ---------------------------------------------------------------- proxy configs
write_switchyard() {   # dir scenario port admin
    local d=$1 sc=$2 port=$3 admin=$4 mode=http
    [ "$sc" = tcp ] && mode=tcp
    {
        printf '[global]\nthreads = %s\n' "$PT"
        # "switchyard-tpc": one current-thread runtime per thread (thread per core)
        [ "$TPC" = 1 ] && echo "work_stealing = false"
        echo
        echo "[admin]"
        echo "listen = \"127.0.0.1:$admin\""
        echo
        echo "[[frontend]]"
        echo "name = \"bench\""
        echo "bind = \"127.0.0.1:$port\""
        echo "mode = \"$mode\""
        echo "backend = \"up\""
        if [ "$sc" = https ] || [ "$sc" = newtls ]; then
            echo
            echo "[frontend.tls]"
            echo "certs = [{ cert = \"$WORK/cert.pem\", key = \"$WORK/key.pem\" }]"
        fi
        echo
        echo "[[backend]]"
        echo "name = \"up\""
        echo "servers = [\"127.0.0.1:$UP1\", \"127.0.0.1:$UP2\"]"
        echo "balance = \"roundrobin\""
        echo
        echo "[backend.check]"
        echo "type = \"tcp\""
        echo "inter = \"2s\""
    } > "$d/switchyard.toml"
}

write_haproxy() {   # dir scenario port
    local d=$1 sc=$2 port=$3 mode=http bind_extra=""
    [ "$sc" = tcp ] && mode=tcp
    { [ "$sc" = https ] || [ "$sc" = newtls ]; } && bind_extra=" ssl crt $WORK/combined.pem alpn http/1.1"
    {
        echo "global"
        echo "    nbthread $PT"
        echo "    maxconn 4096"
        echo "defaults"
        echo "    mode $mode"
        echo "    timeout connect 2s"
        echo "    timeout client 60s"
        echo "    timeout server 60s"
        if [ "$mode" = http ]; then
            echo "    option http-keep-alive"
            echo "    http-reuse always"
            echo "    option forwardfor"
        fi
        echo "frontend fe"
        echo "    bind 127.0.0.1:$port$bind_extra"
        echo "    default_backend be"
        echo "backend be"
        echo "    balance roundrobin"
        echo "    server s1 127.0.0.1:$UP1 check inter 2s"
        echo "    server s2 127.0.0.1:$UP2 check inter 2s"
    } > "$d/haproxy.cfg"
}

write_nginx() {   # dir scenario port
    local d=$1 sc=$2 port=$3
    mkdir -p "$d/logs"
    {
        [ "$sc" = tcp ] && echo "load_module $STREAM_MODULE;"
        echo "worker_processes $PT;"
        echo "daemon off;"
        echo "pid $d/nginx.pid;"
        echo "error_log $d/logs/error.log warn;"
        echo "events { worker_connections 4096; }"
        if [ "$sc" = tcp ]; then
            cat <<EOF
stream {
    upstream be { server 127.0.0.1:$UP1; server 127.0.0.1:$UP2; }
    server { listen 127.0.0.1:$port; proxy_pass be; proxy_connect_timeout 2s; }
}
EOF
        else
            local listen="listen 127.0.0.1:$port;"
            { [ "$sc" = https ] || [ "$sc" = newtls ]; } && listen="listen 127.0.0.1:$port ssl; ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;"
            cat <<EOF
http {
    access_log off;
    keepalive_timeout 60s;
    keepalive_requests 10000000;
    client_body_temp_path $d/tmp_body;
    proxy_temp_path $d/tmp_proxy;
    upstream be {
        server 127.0.0.1:$UP1;
        server 127.0.0.1:$UP2;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        $listen
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
        fi
    } > "$d/nginx.conf"
}

# ---------------------------------------------------------------- start / stop one proxy
declare -A PID_OF PORT_OF NA_OF

start_proxy() {   # name scenario ; sets PID_OF, PORT_OF, NA_OF
    local name=$1 sc=$2 d=$WORK/$2/$1 port admin pid scheme=http out
    mkdir -p "$d"
    read -r port admin <<<"$(free_ports 2)"
    PORT_OF[$name]=$port; NA_OF[$name]=""; PID_OF[$name]=""
    { [ "$sc" = https ] || [ "$sc" = newtls ]; } && scheme=https
    local base=${name%%:*}
    PT=$PROXY_THREADS
    [[ $name != *:* ]] || PT=${name##*:}
    TPC=0
    [ "$base" = switchyard-tpc ] && TPC=1
    case $base in
    switchyard | switchyard-tpc)
        write_switchyard "$d" "$sc" "$port" "$admin"
        if ! out=$("$BIN" check -c "$d/switchyard.toml" 2>&1); then
            NA_OF[$name]="not working: switchyard check: $(echo "$out" | tr '\n' ' ' | cut -c1-160)"
            return 0
        fi
        RUST_LOG=${SWITCHYARD_LOG:-warn} \
            "$BIN" run -c "$d/switchyard.toml" >"$d/stdout.log" 2>"$d/stderr.log" &
        ;;
    haproxy)
        write_haproxy "$d" "$sc" "$port"
        haproxy -db -f "$d/haproxy.cfg" >"$d/stdout.log" 2>"$d/stderr.log" &
        ;;
    nginx)
        write_nginx "$d" "$sc" "$port"
        nginx -p "$d" -c "$d/nginx.conf" >"$d/stdout.log" 2>"$d/stderr.log" &
        ;;
    esac
    pid=$!
    PIDS+=("$pid"); PID_OF[$name]=$pid
    if ! wait_http "$scheme://127.0.0.1:$port/" 10; then
        out=$(curl -sk --max-time 2 -o /dev/null "$scheme://127.0.0.1:$port/" 2>&1 || true)
        [ -n "$out" ] || out="curl exit $?"
        NA_OF[$name]="not working: ${out:-no answer} $(tail -n 3 "$d/stderr.log" 2>/dev/null | tr '\n' ' ' | cut -c1-200)"
        stop_proxy "$name"
        return 0
    fi
    # sanity: four fresh connections, which upstreams answered, and the body
    local ups="" body i
    for i in 1 2 3 4; do
        ups+=$(curl -sk --max-time 2 -D - -o "$d/body" "$scheme://127.0.0.1:$port/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-up" {printf "%s", $2}')
    done
    body=$(cat "$d/body" 2>/dev/null || true)
    local threads
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "?")
    log "  $name ($sc) on :$port pid $pid threads=$threads procs=$(proc_tree "$pid" | wc -l) upstreams=$ups body=$body"
    if [ "$body" != ok ]; then
        NA_OF[$name]="not working: body '$body'"
        stop_proxy "$name"
    fi
}

stop_proxy() {
    local name=$1 pid=${PID_OF[$1]:-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    PID_OF[$name]=""
}

# ---------------------------------------------------------------- one measured run
run_one() {   # name scenario round
    local name=$1 sc=$2 round=$3 port=${PORT_OF[$1]} pid=${PID_OF[$1]} scheme=http
    local d=$WORK/$sc/$name hdr=()
    { [ "$sc" = https ] || [ "$sc" = newtls ]; } && scheme=https
    { [ "$sc" = close ] || [ "$sc" = newtls ]; } && hdr=(-H "Connection: close")
    local url="$scheme://127.0.0.1:$port/"
    local conns=$CONNS
    [ "$sc" = nagle ] && conns=$NAGLE_CONNS
    timeout $((WARMUP + 20)) "${WRK[@]}" -t"$THREADS" -c"$conns" -d"${WARMUP}s" "${hdr[@]}" "$url" >/dev/null 2>&1 || true
    local pids t0 t1
    mapfile -t pids < <(proc_tree "$pid")
    t0=$(cpu_ticks "${pids[@]}")
    timeout $((DURATION + 30)) "${WRK[@]}" -t"$THREADS" -c"$conns" -d"${DURATION}s" --timeout 5s --latency "${hdr[@]}" "$url" \
        > "$d/wrk.$round.txt" 2>&1 || true
    mapfile -t pids < <(proc_tree "$pid")
    t1=$(cpu_ticks "${pids[@]}")
    local w=$d/wrk.$round.txt reqs rps p50 p99 err non2xx rss cpu rpc
    reqs=$(awk '/requests in/ {print $1; exit}' "$w"); reqs=${reqs:-0}
    rps=$(awk '/^Requests\/sec:/ {print $2; exit}' "$w"); rps=${rps:-0}
    p50=$(to_ms "$(awk '$1 == "50%" {print $2; exit}' "$w")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2; exit}' "$w")")
    err=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10; exit}' "$w"); err=${err:-0}
    non2xx=$(awk '/Non-2xx/ {print $NF; exit}' "$w"); non2xx=${non2xx:-0}
    rss=$(peak_rss_kb "${pids[@]}")
    cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}')
    rpc=$(awk -v r="$reqs" -v c="$cpu" 'BEGIN {if (c > 0) printf "%.0f", r / c; else print "nan"}')
    echo "$rps $p50 $p99 $cpu $rpc $rss $reqs $((err + non2xx))" > "$d/row.$round"
    log "    round $round $name: $rps req/s p50 ${p50}ms p99 ${p99}ms cpu ${cpu}s req/cpu-s $rpc rss $((rss / 1024))MB errors $((err + non2xx))"
}

# ---------------------------------------------------------------- scenarios
declare -A TITLE=(
    [keepalive]="HTTP keep-alive"
    [close]="HTTP, one request per connection (Connection: close)"
    [tcp]="TCP mode (L4), HTTP keep-alive traffic through it"
    [https]="HTTPS keep-alive (TLS termination at the proxy)"
    [newtls]="HTTPS, a new TLS connection per request (full handshake, one request, close; RSA-2048 certificate)"
    [nagle]="HTTP keep-alive to upstreams that write head and body in two sends with Nagle on (Python http.server), wrk -c$NAGLE_CONNS"
)

TABLES=$WORK/tables.md
RAW=$WORK/raw.txt
: > "$TABLES"; : > "$RAW"

for sc in $SCENARIOS; do
    log "scenario $sc: ${TITLE[$sc]}"
    FAST_UPS="$UP1 $UP2"
    [ "$sc" = nagle ] && { UP1=$PY1; UP2=$PY2; }
    for p in "${PROXIES[@]}"; do start_proxy "$p" "$sc"; done
    read -r UP1 UP2 <<<"$FAST_UPS"
    for r in $(seq "$ROUNDS"); do
        for p in "${PROXIES[@]}"; do
            [ -z "${NA_OF[$p]}" ] || continue
            if ! kill -0 "${PID_OF[$p]}" 2>/dev/null; then
                NA_OF[$p]="not working: process exited during the run"; continue
            fi
            run_one "$p" "$sc" "$r"
        done
    done
    for p in "${PROXIES[@]}"; do stop_proxy "$p"; done

    # medians
    declare -A MED=()
    for p in "${PROXIES[@]}"; do
        [ -z "${NA_OF[$p]}" ] || continue
        for r in $(seq "$ROUNDS"); do
            [ -f "$WORK/$sc/$p/row.$r" ] && echo "$sc $p round $r: $(cat "$WORK/$sc/$p/row.$r")" >> "$RAW"
        done
        for col in 1 2 3 4 5 6 8; do
            MED[$p.$col]=$(cat "$WORK/$sc/$p"/row.* 2>/dev/null | awk -v c=$col '{print $c}' | median)
        done
        # The median of the per-round ratios: each round pairs runs made seconds apart, so a
        # slow spell of the shared machine weighs on both sides of a ratio, not on one median.
        MED[$p.ratio]=$(for r in $(seq "$ROUNDS"); do
            a=$WORK/$sc/$p/row.$r; b=$WORK/$sc/$REF/row.$r
            [ -f "$a" ] && [ -f "$b" ] && echo "$(awk '{print $5}' "$a") $(awk '{print $5}' "$b")"
        done | awk '$2 > 0 {printf "%.4f\n", $1 / $2}' | median)
    done
    {
        echo
        echo "### ${TITLE[$sc]}"
        echo
        echo "| proxy | req/s | p50 | p99 | CPU-s | req per CPU-s | ratio to $REF | per-round ratio | peak RSS MB | errors |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        for p in "${PROXIES[@]}"; do
            if [ -n "${NA_OF[$p]}" ]; then
                echo "| $p | n/a (${NA_OF[$p]}) | | | | | | | | |"
                continue
            fi
            ratio=n/a; pround=n/a
            if [ -z "${NA_OF[$REF]}" ]; then
                ratio=$(awk -v a="${MED[$p.5]}" -v b="${MED[$REF.5]}" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}')
                pround=$(awk -v a="${MED[$p.ratio]}" 'BEGIN {if (a != "") printf "%.2f", a; else print "n/a"}')
            fi
            awk -v p="$p" -v rps="${MED[$p.1]}" -v p50="${MED[$p.2]}" -v p99="${MED[$p.3]}" -v cpu="${MED[$p.4]}" \
                -v rpc="${MED[$p.5]}" -v ratio="$ratio" -v pround="$pround" -v rss="${MED[$p.6]}" -v err="${MED[$p.8]}" \
                'BEGIN {printf "| %s | %.0f | %.2f ms | %.2f ms | %.2f | %.0f | %s | %s | %.1f | %d |\n", p, rps, p50, p99, cpu, rpc, ratio, pround, rss / 1024, err}'
        done
    } | tee -a "$TABLES"
    unset MED
done

# ---------------------------------------------------------------- results file
mkdir -p "$(dirname "$OUT")"
{
    echo "# Switchyard load comparison (benches/load/compare.sh)"
    echo
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $COMMIT"
    echo "haproxy: $(haproxy -v 2>&1 | head -n 1)"
    echo "nginx: $(nginx -v 2>&1 | head -n 1)"
    echo "wrk: $(wrk --version 2>&1 | head -n 1 || true)"
    echo "nproc: $(nproc)   kernel: $(uname -r)   cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "parameters: ROUNDS=$ROUNDS DURATION=${DURATION}s WARMUP=${WARMUP}s wrk -t$THREADS -c$CONNS${WRK_CPUS:+ (wrk pinned to CPUs $WRK_CPUS)}; medians over rounds"
    echo "setup: one nginx (1 worker, two server blocks) as both upstreams on loopback; every proxy with $PROXY_THREADS"
    echo "worker(s)/thread(s) (Switchyard [global] threads = $PROXY_THREADS, HAProxy nbthread $PROXY_THREADS, nginx worker_processes $PROXY_THREADS),"
    echo "round-robin over the two upstreams, no access logs, X-Forwarded-For added by all three in http mode."
    echo "wrk, the proxy and the upstream nginx share the same $(nproc) CPUs, so req/s is bounded by contention;"
    echo "req per CPU-s (requests / proxy CPU seconds, master+workers for nginx) is the efficiency figure."
    echo "ratio to HAProxy: of the medians; per-round ratio: the median of each round's ratio (the steadier one)."
    cat "$TABLES"
    echo
    echo "raw rows (req/s p50ms p99ms cpu-s req/cpu-s peakRSS-kB requests errors):"
    sed 's/^/    /' "$RAW"
} > "$OUT"
log "wrote $OUT"

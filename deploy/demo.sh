#!/usr/bin/env bash
# deploy/demo.sh — the README's "run it" command: a local etcd (v2 API on), two demo upstreams
# registered the classic confd way (PUT ip:port with a TTL, refreshed every 10 s), and Switchyard
# routing between them on http://127.0.0.1:8080 (admin on :8404), as config/dev.toml describes.
#
# Usage: deploy/demo.sh [--once | --keep]
#   --once  run the walkthrough, check it, clean up, exit (default when stdout is not a terminal
#           or CI=true); exit status non-zero if Switchyard did not behave as shown.
#   --keep  run the walkthrough, then keep everything running until Ctrl-C.
# Env: DEMO_HTTP_PORT (default 8080) and DEMO_ADMIN_PORT (default 8404) if those are taken.
# Everything it starts is stopped by PID on exit; its temp dir is removed unless a step failed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=keep
if [[ ! -t 1 || "${CI:-}" == "true" ]]; then MODE=once; fi
for arg in "$@"; do
    case "$arg" in
    --once) MODE=once ;;
    --keep) MODE=keep ;;
    -h | --help)
        sed -n '2,11p' "$0"
        exit 0
        ;;
    *)
        echo "demo: unknown argument $arg (use --once or --keep)" >&2
        exit 1
        ;;
    esac
done

HTTP_PORT=${DEMO_HTTP_PORT:-8080}
ADMIN_PORT=${DEMO_ADMIN_PORT:-8404}
PREFIX=/testservice/backend
TTL=30

if [[ -t 1 ]]; then BOLD=$'\033[1m' RESET=$'\033[0m'; else BOLD="" RESET=""; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$RESET"; }
die() {
    echo "demo: FAILED: $*" >&2
    exit 1
}

# ---- 1. tools -----------------------------------------------------------------------------
need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server etcd-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]} (apt-get)"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_apt[@]}"
fi
ETCD_BIN=$(command -v etcd)

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for p in "$HTTP_PORT" "$ADMIN_PORT"; do
    if port_in_use "$p"; then
        die "127.0.0.1:$p is already in use; set DEMO_HTTP_PORT / DEMO_ADMIN_PORT to free ports"
    fi
done

# ---- cleanup: only what this script started, by PID ---------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-demo.XXXXXX")
PIDS=()   # in start order; stopped in reverse
OK=0
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || continue
        # Give each process (Switchyard drains, etcd syncs) up to 10 s, then SIGKILL.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ $OK == 1 ]]; then
        rm -rf "$WORK"
    else
        echo "demo: logs kept in $WORK (switchyard.log, etcd.log, upstream-*.log)" >&2
        [[ -f $WORK/switchyard.log ]] && { echo "--- tail of switchyard.log ---" >&2; tail -n 30 "$WORK/switchyard.log" >&2; }
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 2. build -----------------------------------------------------------------------------
say "cargo build --release"
cargo build --release
BIN=$ROOT/target/release/switchyard
[[ -x $BIN ]] || die "$BIN not built"

# ---- 3. etcd ------------------------------------------------------------------------------
ETCD_CLIENT=$(free_port)
ETCD_PEER=$(free_port)
while [[ $ETCD_PEER == "$ETCD_CLIENT" ]]; do ETCD_PEER=$(free_port); done
E=http://127.0.0.1:$ETCD_CLIENT
say "starting etcd on $E (v2 API enabled, data in $WORK/etcd)"
# etcd reads ETCD_* variables as flags; keep the caller's environment out of it.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^ETCD_' || true)
"$ETCD_BIN" --name demo --data-dir "$WORK/etcd" --enable-v2=true \
    --listen-client-urls "$E" --advertise-client-urls "$E" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER" \
    --logger=zap --log-outputs="$WORK/etcd.log" </dev/null >/dev/null 2>"$WORK/etcd.stderr" &
ETCD_PID=$!
PIDS+=("$ETCD_PID")
# etcd accepts TCP before it answers HTTP: short per-probe timeout, overall deadline 20 s.
for _ in $(seq 200); do
    curl -s -m 1 "$E/health" 2>/dev/null | grep -q '"health":"true"' && break
    kill -0 "$ETCD_PID" 2>/dev/null || { tail -n 20 "$WORK/etcd.log" >&2; die "etcd exited"; }
    sleep 0.1
done
curl -s -m 1 "$E/health" | grep -q '"health":"true"' || { tail -n 20 "$WORK/etcd.log" >&2; die "etcd not healthy in 20 s"; }
echo "etcd healthy: $(curl -s -m 2 "$E/version")"

# ---- 4. two demo upstreams ----------------------------------------------------------------
# Each answers every GET with its name; it binds port 0 itself and writes the port to a file.
cat >"$WORK/upstream.py" <<'PY'
import http.server, sys
name, portfile = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (name + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_HEAD = do_GET
    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (name, fmt % args))
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(portfile + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os; os.rename(portfile + ".tmp", portfile)
srv.serve_forever()
PY
declare -A UP_PORT
for n in A B; do
    python3 "$WORK/upstream.py" "upstream $n" "$WORK/upstream-$n.port" </dev/null >/dev/null 2>"$WORK/upstream-$n.log" &
    PIDS+=("$!")
done
for n in A B; do
    for _ in $(seq 100); do [[ -s $WORK/upstream-$n.port ]] && break; sleep 0.05; done
    [[ -s $WORK/upstream-$n.port ]] || die "upstream $n did not start"
    UP_PORT[$n]=$(cat "$WORK/upstream-$n.port")
    echo "upstream $n on 127.0.0.1:${UP_PORT[$n]}"
done

# ---- 5. register them the classic way -----------------------------------------------------
register() { # key-suffix port
    curl -sf -m 5 -XPUT "$E/v2/keys$PREFIX/$1" -d "value=127.0.0.1:$2" -d "ttl=$TTL" >/dev/null
}
say "registering: curl -XPUT $E/v2/keys$PREFIX/{1,2} -d value=127.0.0.1:PORT -d ttl=$TTL"
register 1 "${UP_PORT[A]}"
register 2 "${UP_PORT[B]}"
curl -s -m 5 "$E/v2/keys$PREFIX?recursive=true&sorted=true"
echo
# Heartbeat every 10 s: refresh=true&prevExist=true keeps the value and wakes no watcher; a key
# that was deleted stays deleted (404), as a real sidekick's refresh would find it.
(
    while sleep 10; do
        for k in 1 2; do
            curl -s -m 5 -XPUT "$E/v2/keys$PREFIX/$k" -d "ttl=$TTL" -d refresh=true -d prevExist=true || true
        done
    done
) </dev/null >"$WORK/refresh.log" 2>&1 &
PIDS+=("$!")

# ---- 6. Switchyard ------------------------------------------------------------------------
CONF=$WORK/switchyard.toml
if [[ -f config/dev.toml ]]; then
    sed -e "s#http://127.0.0.1:2379#$E#g" \
        -e "s#127.0.0.1:8080#127.0.0.1:$HTTP_PORT#g" \
        -e "s#127.0.0.1:8404#127.0.0.1:$ADMIN_PORT#g" config/dev.toml >"$CONF"
    grep -q "$E" "$CONF" || die "config/dev.toml has no http://127.0.0.1:2379 endpoint to replace"
else
    echo "(config/dev.toml not found; using the built-in equivalent)"
    cat >"$CONF" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[etcd]
endpoints = ["$E"]
api = "v2"

[[frontend]]
name = "testloadbalancer"
bind = "127.0.0.1:$HTTP_PORT"
mode = "http"
backend = "testservice"

[[backend]]
name = "testservice"
etcd_prefix = "$PREFIX"
balance = "roundrobin"

[backend.check]
type = "tcp"
inter = "2s"
timeout = "1s"
rise = 2
fall = 3
EOF
fi
say "switchyard run -c $CONF"
cat "$CONF"
RUST_LOG=${RUST_LOG:-info} "$BIN" run -c "$CONF" </dev/null >"$WORK/switchyard.log" 2>&1 &
SY_PID=$!
PIDS+=("$SY_PID")
A=http://127.0.0.1:$ADMIN_PORT
L=http://127.0.0.1:$HTTP_PORT
for _ in $(seq 150); do
    [[ $(curl -s -m 1 -o /dev/null -w '%{http_code}' "$A/readyz" 2>/dev/null) == 200 ]] && break
    kill -0 "$SY_PID" 2>/dev/null || die "switchyard exited"
    sleep 0.1
done
[[ $(curl -s -m 1 -o /dev/null -w '%{http_code}' "$A/readyz") == 200 ]] || die "/readyz not 200 within 15 s"
echo "ready: $A/readyz -> 200"

# ---- 7. walkthrough -----------------------------------------------------------------------
# Number of servers in the backends JSON whose name is $1 (0 or 1).
listed() {
    curl -s -m 2 "$A/api/v1/backends" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(sum(1 for b in d.get("backends", []) for s in b.get("servers", []) if s.get("name") == sys.argv[1]))' "$1"
}
wait_listed() { # name want(0|1)
    for _ in $(seq 100); do [[ $(listed "$1") == "$2" ]] && return 0; sleep 0.05; done
    die "server $1 listed=$2 not reached in 5 s"
}
ask() { # n -> prints answers, stores them in ANSWERS
    ANSWERS=()
    local i out
    for ((i = 1; i <= $1; i++)); do
        out=$(curl -s -m 5 "$L/") || out="(curl failed)"
        ANSWERS+=("$out")
        printf '  GET %s/ -> %s\n' "$L" "$out"
    done
}
count() { # word -> how many ANSWERS equal it
    local n=0 a
    for a in "${ANSWERS[@]}"; do [[ $a == "$1" ]] && n=$((n + 1)); done
    echo "$n"
}

say "six requests: round-robin over both registered upstreams"
ask 6
[[ $(count "upstream A") == 3 && $(count "upstream B") == 3 ]] || die "expected 3 x A and 3 x B"

say "curl -XDELETE $E/v2/keys$PREFIX/1   (A leaves the pool as soon as etcd says so)"
curl -sf -m 5 -XDELETE "$E/v2/keys$PREFIX/1" >/dev/null
wait_listed 1 0
ask 4
[[ $(count "upstream B") == 4 ]] || die "expected every answer from B after deleting key 1"

say "re-registering A: curl -XPUT $E/v2/keys$PREFIX/1 -d value=127.0.0.1:${UP_PORT[A]} -d ttl=$TTL"
register 1 "${UP_PORT[A]}"
wait_listed 1 1
ask 4
[[ $(count "upstream A") == 2 && $(count "upstream B") == 2 ]] || die "expected A back in rotation"

say "GET $A/api/v1/backends"
curl -s -m 5 "$A/api/v1/backends" | python3 -m json.tool

OK=1
if [[ $MODE == once ]]; then
    say "demo OK (--once): stopping everything"
    exit 0
fi
trap 'exit 0' INT
say "running: $L (Switchyard), $A/ (stats), $A/metrics; etcd at $E. Ctrl-C to stop."
echo "try:  curl $L/    curl -XDELETE $E/v2/keys$PREFIX/2    curl $A/api/v1/backends"
wait "$SY_PID" || true
OK=0
die "switchyard exited"
